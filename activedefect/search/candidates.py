"""Candidate frames for the policies: the candidate table of committee relaxations'
kept frames, mean-pooled committee descriptors, and farthest-point order over them (so
near-duplicates are not labelled twice)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from ase import Atoms

from activedefect.geometry import content_hash
from activedefect.search.basins import Basin, basin_of_results
from activedefect.search.relaxation import RelaxResult

#: Candidate table columns; ``defect`` and ``charge`` are required, the rest as a kind needs.
CANDIDATE_COLUMNS = (
    "frame",  # store index, -1 when the frame is not stored (then ctx.atoms holds it)
    "hash",  # geometry.content_hash, to recognise frames labelled under another index
    "defect",
    "charge",
    "seed",
    "step",
    "energy_eV",
    "energy_std_eV",
    "max_force_std_eV_A",
    "cut",  # True: the frame where a relaxation left the trusted region
    "basin",  # rank of the basin its trajectory relaxed into, -1 for none
    "head",  # the committee head that predicted it ("" where not recorded)
)


def candidate_table(
    results: Sequence[RelaxResult], basins: Mapping[tuple[str, int], list[Basin]] | None = None
) -> tuple[pd.DataFrame, list[Atoms]]:
    """Candidate rows (and their atoms) from every kept frame of ``results``; ``basin`` is
    the rank of the basin the frame's trajectory relaxed into (-1 for none)."""
    ranks = basin_of_results(basins, len(results)) if basins is not None else [None] * len(results)
    rows, atoms = [], []
    for result, rank in zip(results, ranks):
        for f in result.frames:
            rows.append(
                {
                    "frame": -1,
                    "hash": content_hash(f.atoms),
                    "defect": result.defect,
                    "charge": result.charge,
                    "seed": result.seed,
                    "step": f.step,
                    "energy_eV": f.energy_eV,
                    "energy_std_eV": f.energy_std_eV,
                    "max_force_std_eV_A": f.max_force_std_eV_A,
                    "cut": f.cut,
                    "basin": -1 if rank is None else rank,
                    "head": f.head or "",
                }
            )
            atoms.append(f.atoms)
    return pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS)), atoms


def mean_pooled(descriptors: Sequence[np.ndarray]) -> np.ndarray:
    """One vector per structure: the mean of its per-atom descriptors ``(N, D)``."""
    return np.stack([np.asarray(d, dtype=np.float64).mean(axis=0) for d in descriptors])


def farthest_point_order(points: np.ndarray, first: int, n: int) -> list[int]:
    """Up to ``n`` indices: ``first``, then repeatedly the point farthest (Euclidean) from
    those chosen; ties go to the lower index."""
    n = min(n, len(points))
    if n <= 0:
        return []
    chosen = [first]
    dist = np.linalg.norm(points - points[first], axis=1)
    while len(chosen) < n:
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0.0:  # only duplicates of chosen points remain
            break
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return chosen
