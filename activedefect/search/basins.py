"""Distinct minima per defect × charge state, from committee relaxations.

Two relaxed structures are one basin when ``geometry.displacement`` between them (same
atom order, minimum image, mean shift removed) is within ``rmsd_A`` and
``max_displacement_A`` — Å, not ShakeNBreak's (V/N)^(1/3)-normalised units. RMSD over a
60-atom cell dilutes a local distortion (0.3 Å on 4 atoms is 0.08 Å RMSD), so the
maximum displacement is checked too.

Grouping is greedy by energy: structures are taken lowest first and each joins the first
basin whose representative (its lowest member) is within tolerance, else it opens a
new basin. A basin's energy is its lowest member's; basins are sorted by energy and the
lowest is the state's ground-state candidate.

Symmetry-equivalent minima (the same distortion around a different neighbour) differ in
atom order, so the same-order comparison keeps them apart as separate basins of equal
energy; that costs a few redundant labels, never a wrong ground state. The `low`-minima
screen (:mod:`activedefect.search.screening`) merges them with :func:`equivalent`
(pymatgen's ``StructureMatcher``, permutations and lattice symmetry allowed, distances in Å).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ase import Atoms

from activedefect.geometry import displacement
from activedefect.search.relaxation import CONVERGED, RelaxResult


@dataclass
class Basin:
    """One minimum of one defect × charge state; ``rank`` 0 is the ground-state candidate.

    ``atoms`` and the committee numbers are those of the lowest member; ``members`` are
    seed names and ``result_indices`` positions in the results given to
    :func:`group_basins`, lowest energy first. ``frame`` is the store index of ``atoms``
    once the campaign has stored it.
    """

    defect: str
    charge: int
    rank: int
    energy_eV: float
    energy_std_eV: float
    max_force_std_eV_A: float
    atoms: Atoms
    members: list[str] = field(default_factory=list)
    member_energies_eV: list[float] = field(default_factory=list)
    result_indices: list[int] = field(default_factory=list)
    frame: int | None = None

    @property
    def is_ground_state(self) -> bool:
        return self.rank == 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready description without the structure."""
        return {
            "defect": self.defect,
            "charge": self.charge,
            "rank": self.rank,
            "energy_eV": self.energy_eV,
            "energy_std_eV": self.energy_std_eV,
            "max_force_std_eV_A": self.max_force_std_eV_A,
            "members": list(self.members),
            "member_energies_eV": list(self.member_energies_eV),
            "frame": self.frame,
        }


def _same(a: Atoms, b: Atoms, rmsd_A: float, max_displacement_A: float | None) -> bool:
    return displacement(a, b).within(rmsd_A, max_displacement_A)


def equivalent(a: Atoms, b: Atoms, rmsd_A: float, max_displacement_A: float | None) -> bool:
    """The same structure up to atom order and lattice symmetry (pymatgen's StructureMatcher,
    distances converted to Å)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    sa, sb = AseAtomsAdaptor.get_structure(a), AseAtomsAdaptor.get_structure(b)
    unit_A = (sa.volume / len(sa)) ** (1 / 3)  # StructureMatcher's distance unit
    matcher = StructureMatcher(
        ltol=0.05, stol=0.5, angle_tol=2, primitive_cell=False, scale=False, attempt_supercell=False
    )
    dist = matcher.get_rms_dist(sa, sb)
    if dist is None:
        return False
    rms_A, max_A = dist[0] * unit_A, dist[1] * unit_A
    return rms_A <= rmsd_A and (max_displacement_A is None or max_A <= max_displacement_A)


def group_basins(
    results: Sequence[RelaxResult],
    *,
    rmsd_A: float = 0.05,
    max_displacement_A: float | None = 0.25,
    statuses: Iterable[str] = (CONVERGED,),
) -> dict[tuple[str, int], list[Basin]]:
    """Basins per ``(defect, charge)``, sorted by energy (rank 0 lowest).

    Only results whose status is in ``statuses`` count (converged minima by default;
    cut, exploded and unfinished trajectories are not minima).
    """
    allowed = set(statuses)
    order = sorted(
        (i for i, r in enumerate(results) if r.status in allowed),
        key=lambda i: results[i].energy_eV,
    )
    by_state: dict[tuple[str, int], list[Basin]] = {}
    for i in order:
        r = results[i]
        basins = by_state.setdefault((r.defect, r.charge), [])
        home = next((b for b in basins if _same(b.atoms, r.atoms, rmsd_A, max_displacement_A)), None)
        if home is None:
            home = Basin(
                defect=r.defect,
                charge=r.charge,
                rank=len(basins),
                energy_eV=r.energy_eV,
                energy_std_eV=r.energy_std_eV,
                max_force_std_eV_A=r.max_force_std_eV_A,
                atoms=r.atoms.copy(),
            )
            basins.append(home)
        home.members.append(r.seed)
        home.member_energies_eV.append(r.energy_eV)
        home.result_indices.append(i)
    return by_state


def basin_of_results(basins: dict[tuple[str, int], list[Basin]], n_results: int) -> list[int | None]:
    """For each result index, the rank of the basin it relaxed into (None: no basin)."""
    out: list[int | None] = [None] * n_results
    for states in basins.values():
        for basin in states:
            for i in basin.result_indices:
                out[i] = basin.rank
    return out
