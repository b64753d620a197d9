"""Shared structure definitions used everywhere: info keys, content hash, RMSD.

One function each, so that the store, the policies, the convergence checks and the
results agree on what "the same structure" and "how far apart" mean.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from ase import Atoms

#: ``atoms.info`` key holding the total charge (the key MACE trains on).
CHARGE_KEY = "total_charge"
#: ``atoms.info`` key holding the spin multiplicity 2S+1 (the key MACE trains on).
SPIN_KEY = "total_spin"
#: ``atoms.info`` key holding the doped-style defect name without charge (``v_Si``).
DEFECT_KEY = "defect"



def format_charge(charge: int) -> str:
    """``-1``, ``0``, ``+1``: signed, as doped and ShakeNBreak write charges."""
    return f"{int(charge):+d}" if charge else "0"


def _quantize(values: np.ndarray) -> np.ndarray:
    """Values on a 1e-5 Å grid, computed from their 1e-8 Å rounding first: extxyz writes
    8 decimals, and rounding straight to 1e-5 would flip ~1 in 10 60-atom frames after a
    round trip (a value near a half-step boundary); this way the round trip is exact."""
    fine = np.rint(values * 1e8).astype(np.int64)
    return (fine + 500) // 1000


def content_hash(atoms: Atoms, charge: int | None = None, multiplicity: int | None = None) -> str:
    """Hash of what defines a calculation: numbers, positions and cell (rounded to
    1e-5 Å), pbc, total charge and multiplicity.

    Charge and multiplicity default to ``atoms.info[CHARGE_KEY]`` / ``[SPIN_KEY]``
    (0 and 1 when absent), so an extxyz round trip finds the same hash.
    """
    if charge is None:
        charge = int(atoms.info.get(CHARGE_KEY, 0))
    if multiplicity is None:
        multiplicity = int(atoms.info.get(SPIN_KEY, 1))
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    for array in (atoms.positions, np.asarray(atoms.cell)):
        h.update(_quantize(np.asarray(array, dtype=np.float64)).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.bool_).tobytes())
    h.update(np.array([charge, multiplicity], dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Displacement:
    """How far apart two structures are, in Å."""

    rmsd_A: float
    max_displacement_A: float

    def within(self, rmsd_A: float, max_displacement_A: float | None = None) -> bool:
        ok = self.rmsd_A <= rmsd_A
        if max_displacement_A is not None:
            ok = ok and self.max_displacement_A <= max_displacement_A
        return ok


def minimum_image_displacements(a: Atoms, b: Atoms) -> np.ndarray:
    """Per-atom displacement vectors from ``a`` to ``b`` (same atom order), minimum image
    in the cell of ``a``, with the mean displacement removed."""
    if len(a) != len(b) or not np.array_equal(a.numbers, b.numbers):
        raise ValueError(
            "structures differ in atoms or atom order; RMSD needs the same defect with the same atom order"
        )
    delta = b.positions - a.positions
    if a.pbc.any():
        cell = np.asarray(a.cell)
        frac = np.linalg.solve(cell.T, delta.T).T
        frac[:, a.pbc] -= np.round(frac[:, a.pbc])
        delta = frac @ cell
    return delta - delta.mean(axis=0)


def displacement(a: Atoms, b: Atoms) -> Displacement:
    """RMSD (Å) over all atoms of the minimum-image displacement after removing the mean
    displacement, with the maximum single-atom displacement.

    Not ShakeNBreak's normalised measure, which divides by (V/N)^(1/3).
    """
    delta = minimum_image_displacements(a, b)
    norms = np.linalg.norm(delta, axis=1)
    return Displacement(float(np.sqrt((norms**2).mean())), float(norms.max()))
