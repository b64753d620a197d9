"""Where a defect sits and how it is bonded: the coordination shell of the defect site
in a structure, and the ShakeNBreak distortion names a start descends from. The results
tables describe each minimum by these."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.geometry import get_distances

#: A coordination shell: atoms within this factor of the nearest distance to the site.
SHELL_FACTOR = 1.15
_DISTORTION_RE = re.compile(r"^Bond_Distortion_(-?\d+(?:\.\d+)?)%$")


def root_distortion(seed: str) -> str:
    """The ShakeNBreak distortion a start descends from: ``Dimer~rattle0~from_q-1`` -> ``Dimer``."""
    return seed.split("~", 1)[0]


def distortion_percent(name: str) -> float | None:
    """``Bond_Distortion_-30.0%`` -> -30.0; other names (Unperturbed, Dimer, Rattled) -> None."""
    match = _DISTORTION_RE.match(name)
    return float(match.group(1)) if match else None


@dataclass
class LocalBonding:
    """The coordination shell of the defect site in one structure (Å, minimum image)."""

    site_A: np.ndarray
    neighbours: list[int]
    elements: list[str]
    distances_A: list[float]
    pair_distances_A: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"neighbours": self.neighbours, "elements": self.elements, "distances_A": self.distances_A,
                "pair_distances_A": self.pair_distances_A}


def local_bonding(atoms: Atoms, site_A: np.ndarray, neighbours: list[int]) -> LocalBonding:
    """Distances from ``site_A`` to the ``neighbours`` atoms and between them (for a
    vacancy the neighbour-neighbour distances show pairing and dimers)."""
    _, to_site = get_distances(np.asarray([site_A]), atoms.positions[neighbours], cell=atoms.cell, pbc=atoms.pbc)
    _, pairs = get_distances(atoms.positions[neighbours], cell=atoms.cell, pbc=atoms.pbc)
    upper = pairs[np.triu_indices(len(neighbours), 1)]
    return LocalBonding(np.asarray(site_A, dtype=float), list(neighbours),
                        [atoms[i].symbol for i in neighbours], [float(d) for d in to_site[0]],
                        [float(d) for d in np.sort(upper)])


def coordination_shell(atoms: Atoms, site_A: np.ndarray, exclude: int | None = None) -> list[int]:
    """Indices of the atoms within :data:`SHELL_FACTOR` x the nearest distance of the site."""
    _, dist = get_distances(np.asarray([site_A]), atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    dist = dist[0].copy()
    if exclude is not None:
        dist[exclude] = np.inf
    return [int(i) for i in np.argsort(dist) if dist[i] <= SHELL_FACTOR * dist.min()]


@dataclass
class DefectSite:
    """Where a defect sits: a vacant position (Å) or the index of the defect atom."""

    kind: str
    frac_coords: np.ndarray
    atom_index: int | None
    neighbours: list[int]

    def position_A(self, atoms: Atoms) -> np.ndarray:
        if self.atom_index is not None:
            return atoms.positions[self.atom_index]
        return self.frac_coords @ np.asarray(atoms.cell)
