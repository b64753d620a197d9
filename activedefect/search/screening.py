"""Which structures the confirm step relaxes with `high`, besides the committee's ground state.

Dense `low` labels already hold a ShakeNBreak-style screening at the cheap level: every
seed lineage (a seed, the committee relaxations and oracle relaxations that continued
it) has a lowest `low` frame. The committee can miss a basin the `low` relaxations
found (measured on the SiC benchmark, docs/benchmarks.md), so the lowest few distinct
lineage minima are relaxed with `high` too, and the lowest confirmed minimum wins.

Two frames are one structure when ``geometry.displacement`` between them is within the
basin tolerances of :func:`activedefect.search.basins.group_basins` (Å), or when their `low`
energies agree within ``EQUIVALENT_ENERGY_eV`` and they map onto each other with atoms
permuted (:func:`activedefect.search.basins.equivalent`): the same distortion around another
neighbour, measured on the SiC benchmark as two lineages 1 meV apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from ase import Atoms

from activedefect.geometry import displacement
from activedefect.search.basins import equivalent
from activedefect.store.zarr_store import Store

SAME_RMSD_A = 0.05
SAME_MAX_DISPLACEMENT_A = 0.25
EQUIVALENT_ENERGY_eV = 0.005


@dataclass(frozen=True)
class LowMinimum:
    """The lowest `low` frame of one seed lineage of one defect × charge state."""

    frame: int
    seed: str
    low_energy_eV: float


def lineage_minima(store: Store, low_settings_hash: str) -> dict[tuple[str, int], list[LowMinimum]]:
    """Per ``(defect, charge)``, each seed lineage's lowest ok `low` label, lowest first."""
    labels = store.label_table("low")
    labels = labels[(labels["status"] == "ok") & (labels["settings_hash"] == low_settings_hash)]
    if not len(labels):
        return {}
    frames = store.frame_table()[["frame", "defect", "charge", "seed"]]
    rows = labels[["frame", "energy_eV"]].merge(frames, on="frame")
    lowest = rows.loc[rows.groupby(["defect", "charge", "seed"])["energy_eV"].idxmin()]
    out: dict[tuple[str, int], list[LowMinimum]] = {}
    for (defect, charge), group in lowest.sort_values("energy_eV").groupby(["defect", "charge"], sort=False):
        out[(str(defect), int(charge))] = [
            LowMinimum(int(r.frame), str(r.seed), float(r.energy_eV))
            for r in group.itertuples() if pd.notna(r.seed) and r.seed  # frames of unknown origin: no lineage
        ]
    return out


def distinct_low_minima(
    store: Store, minima: list[LowMinimum], n: int, exclude_frames: Sequence[int] = ()
) -> list[LowMinimum]:
    """The ``n`` lowest of ``minima`` that differ from each other and from ``exclude_frames``
    (the committee's candidate: it is relaxed anyway)."""
    picked: list[tuple[LowMinimum, Atoms]] = []
    excluded = [store.get_frame(f) for f in exclude_frames]
    for minimum in minima:
        if len(picked) >= n:
            break
        atoms = store.get_frame(minimum.frame)
        if any(displacement(other, atoms).within(SAME_RMSD_A, SAME_MAX_DISPLACEMENT_A)
               for other in excluded + [a for _, a in picked]):
            continue
        if any(abs(other.low_energy_eV - minimum.low_energy_eV) <= EQUIVALENT_ENERGY_eV
               and equivalent(a, atoms, SAME_RMSD_A, SAME_MAX_DISPLACEMENT_A) for other, a in picked):
            continue
        picked.append((minimum, atoms))
    return [minimum for minimum, _ in picked]
