"""What one row of the store holds, in memory: a frame's record (positions on the extxyz grid,
charge, multiplicity, provenance), the index of a fidelity's labels, the bulk energy of
the host; values checked on the way in."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY, content_hash
from activedefect.labels import OK
from activedefect.store.tables import Table

#: Positions and cells are stored on this grid (Å): what extxyz writes (``%.8f``).
GRID_A = 1e-8
#: ``atoms.info`` key of a frame's provenance: ``{seed, generation, trajectory, step}``.
ORIGIN_KEY = "origin"
ORIGIN_INTS = ("generation", "trajectory", "step")


@dataclass(frozen=True)
class BulkEnergy:
    """Relaxed host (bulk) energy at one fidelity: the reference of formation energies."""

    energy_eV: float
    n_atoms: int
    settings_hash: str

    @property
    def energy_per_atom_eV(self) -> float:
        return self.energy_eV / self.n_atoms

    def as_dict(self) -> dict[str, Any]:
        return {"energy_eV": self.energy_eV, "n_atoms": self.n_atoms, "settings_hash": self.settings_hash}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BulkEnergy":
        return cls(float(d["energy_eV"]), int(d["n_atoms"]), str(d["settings_hash"]))


def on_grid(values: np.ndarray) -> np.ndarray:
    """Values (Å) rounded to the storage grid of :data:`GRID_A`: the same doubles that
    reading their ``%.8f`` text gives (hence the division by the exact 1e8)."""
    scale = round(1 / GRID_A)
    return np.rint(np.asarray(values, dtype=np.float64) * scale) / scale


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def as_int(value: Any, what: str) -> int:
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(number)


@dataclass(frozen=True)
class FrameRecord:
    atoms: Atoms  # on the storage grid
    hash: str
    charge: int
    multiplicity: int
    defect: str
    seed: str
    origin_ints: tuple[int, int, int]

    @classmethod
    def from_atoms(cls, atoms: Atoms, where: str) -> "FrameRecord":
        info = atoms.info
        charge = as_int(info.get(CHARGE_KEY, 0), f"{where}: info[{CHARGE_KEY!r}]")
        multiplicity = as_int(info.get(SPIN_KEY, 1), f"{where}: info[{SPIN_KEY!r}] (multiplicity 2S+1)")
        if multiplicity < 1:
            raise ValueError(f"{where}: info[{SPIN_KEY!r}] is the multiplicity 2S+1 >= 1, got {multiplicity}")
        defect = info.get(DEFECT_KEY, "")
        if not isinstance(defect, str):
            raise ValueError(f"{where}: info[{DEFECT_KEY!r}] must be a doped-style name string like 'v_Si'")
        origin = info.get(ORIGIN_KEY) or {}
        unknown = set(origin) - {"seed", *ORIGIN_INTS}
        if not isinstance(origin, dict) or unknown:
            raise ValueError(
                f"{where}: info[{ORIGIN_KEY!r}] must be a dict with keys seed, generation, "
                f"trajectory, step; unknown keys {sorted(unknown)}"
            )
        seed = origin.get("seed") or ""
        ints = tuple(-1 if origin.get(k) is None else as_int(origin[k], f"{where}: origin[{k!r}]") for k in ORIGIN_INTS)
        if min(ints) < -1:
            raise ValueError(f"{where}: origin generation/trajectory/step must be >= 0 (-1 or None: unknown), got {ints}")
        if len(atoms) == 0:
            raise ValueError(f"{where}: a frame needs at least one atom")
        grid = Atoms(numbers=atoms.numbers, positions=on_grid(atoms.positions), cell=on_grid(atoms.cell), pbc=atoms.pbc)
        return cls(grid, content_hash(grid, charge, multiplicity), charge, multiplicity, defect, str(seed), ints)


class LabelIndex:
    """In-memory copy of one fidelity's per-row columns and its lookup indexes."""

    def __init__(self, table: Table):
        self.table = table
        self.frame = table.read("frame").astype(np.int64)
        self.energy = table.read("energy")
        self.stress = table.read("stress")
        self.status: list[str] = table.read("status").tolist()
        self.settings_hash: list[str] = table.read("settings_hash").tolist()
        self.metadata: list[str] = table.read("metadata").tolist()
        self.ok_row: dict[tuple[int, str], int] = {}
        self.failures: Counter[tuple[int, str]] = Counter()
        self._index(0)

    def _index(self, start: int) -> None:
        for row in range(start, len(self.status)):
            key = (int(self.frame[row]), self.settings_hash[row])
            if self.status[row] == OK:
                self.ok_row.setdefault(key, row)
            else:
                self.failures[key] += 1

    def extend(self, rows: dict[str, np.ndarray]) -> None:
        start = len(self.status)
        self.frame = np.concatenate([self.frame, rows["frame"]])
        self.energy = np.concatenate([self.energy, rows["energy"]])
        self.stress = np.concatenate([self.stress, rows["stress"]])
        self.status += rows["status"].tolist()
        self.settings_hash += rows["settings_hash"].tolist()
        self.metadata += rows["metadata"].tolist()
        self._index(start)
