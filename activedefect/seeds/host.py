"""The host supercell: a bundled or user cell read by pymatgen (or ASE), checked for
overlapping atoms and partial occupancies, and multiplied into the supercell the defects sit in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

#: Closest two host atoms may be (Å); the shortest bond in a crystal (H-H, 0.74 Å) is longer.
MIN_HOST_DISTANCE_A = 0.5


def bundled_structure(name: str) -> Path:
    """Path of a host cell shipped with the package, e.g. ``bundled_structure("SiC_conv")``.

    Each file's first line says where its lattice constant comes from.
    """
    from importlib.resources import files

    folder = Path(str(files("activedefect") / "data" / "structures"))
    path = folder / (name if name.endswith(".vasp") else f"{name}.vasp")
    if not path.is_file():
        available = sorted(p.stem for p in folder.glob("*.vasp"))
        raise FileNotFoundError(f"no bundled structure {name!r}; available: {available}")
    return path


def load_host(path: str | Path, supercell: Any = (1, 1, 1)) -> Structure:
    """Read a host cell (any format pymatgen or ASE reads) and return its supercell.

    ``supercell``: three integers (diagonal) or a 3x3 integer matrix; e.g.
    ``[[0, 1, 1], [1, 0, 1], [1, 1, 0]]`` turns an 8-atom conventional zincblende cell
    into the 16-atom 2x2x2 primitive-fcc supercell. Use at least 16 atoms: ShakeNBreak's
    Monte Carlo rattle keeps retrying in 8-atom cells (~30 s per vacancy vs 0.3 s at 16).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"host structure file {path} does not exist")
    try:
        structure = Structure.from_file(path)
    except Exception as pmg_error:  # noqa: BLE001 - fall back to ASE's readers
        structure = _read_with_ase(path, pmg_error)
    if not structure.is_ordered:
        raise ValueError(f"host structure {path} has partial occupancies; give an ordered cell")
    _check_no_overlap(structure, path)
    structure.remove_oxidation_states()
    structure = Structure(structure.lattice, [s.specie for s in structure], structure.frac_coords)
    return structure.make_supercell(_supercell_matrix(supercell), in_place=False)


def _read_with_ase(path: Path, pmg_error: Exception) -> Structure:
    """A host file pymatgen cannot read (e.g. extxyz), read by ASE; it must be a 3D crystal."""
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        atoms = read(path)
    except Exception as ase_error:  # noqa: BLE001
        raise ValueError(
            f"cannot read host structure {path}: pymatgen said {pmg_error!r}; ASE said {ase_error!r}"
        ) from ase_error
    if not atoms.pbc.all() or atoms.cell.rank < 3:
        raise ValueError(
            f"host structure {path} is not a periodic crystal (pbc {atoms.pbc.tolist()}, cell rank "
            f"{atoms.cell.rank}); give a cell periodic in 3D, e.g. POSCAR, CIF, or extxyz with "
            'Lattice= and pbc="T T T"'
        )
    return AseAtomsAdaptor.get_structure(atoms)


def _check_no_overlap(structure: Structure, path: Path) -> None:
    """Refuse atoms closer than :data:`MIN_HOST_DISTANCE_A` (periodic images included):
    a duplicated or misplaced atom, which no oracle can label."""
    distances = structure.distance_matrix + np.diag(np.full(len(structure), np.inf))
    i, j = np.unravel_index(np.argmin(distances), distances.shape)
    if distances[i, j] < MIN_HOST_DISTANCE_A:
        raise ValueError(
            f"host structure {path}: atoms {i} ({structure[i].specie}) and {j} ({structure[j].specie}) are "
            f"{distances[i, j]:.2f} Å apart (overlapping); atoms must be >= {MIN_HOST_DISTANCE_A} Å apart"
        )


def _supercell_matrix(supercell: Any) -> np.ndarray:
    matrix = np.asarray(supercell)
    if matrix.shape == (3,):
        matrix = np.diag(matrix)
    if matrix.shape != (3, 3) or not np.all(np.equal(np.mod(matrix, 1), 0)):
        raise ValueError(f"supercell must be three integers or a 3x3 integer matrix, got {supercell!r}")
    matrix = matrix.astype(int)
    if round(np.linalg.det(matrix)) <= 0:
        raise ValueError(f"supercell matrix {matrix.tolist()} must have a positive determinant")
    return matrix

