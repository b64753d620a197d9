"""ASE's FIRE on many structures at once (:class:`BatchFIRE`), so that a batch of
committee relaxations (:mod:`activedefect.search.explore`, which says why) makes one
model call per member per step. It reproduces ``ase.optimize.FIRE`` (3.29, default
parameters) step for step on each structure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FireParams:
    """``ase.optimize.FIRE`` parameters, with its defaults (``a`` is alpha's start value,
    ``astart`` the value alpha is reset to after an uphill step)."""

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    Nmin: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99
    a: float = 0.1


def _seg_sum(values: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(seg, weights=values, minlength=n)


class BatchFIRE:
    """ASE's FIRE on many structures at once, each with its own state (velocity, dt,
    alpha, count of downhill steps); atoms of all structures lie in one flat array.

    Same operations as ``ase.optimize.FIRE.step`` (3.29): the first step starts from zero
    velocity; ``maxstep`` bounds the norm of each structure's whole displacement vector.
    """

    def __init__(self, n_atoms: Sequence[int], params: FireParams = FireParams()):
        self.params = params
        counts = np.asarray(n_atoms, dtype=np.int64)
        self.n = len(counts)
        self.seg = np.repeat(np.arange(self.n), counts)
        self.vel = np.zeros((int(counts.sum()), 3))
        self.started = np.zeros(self.n, dtype=bool)
        self.dt = np.full(self.n, params.dt)
        self.a = np.full(self.n, params.a)
        self.n_downhill = np.zeros(self.n, dtype=np.int64)

    def step(self, positions: np.ndarray, forces: np.ndarray) -> np.ndarray:
        """New flat positions after one FIRE step from ``positions`` with ``forces``."""
        p, seg, n = self.params, self.seg, self.n
        vel = self.vel
        vf = _seg_sum(np.einsum("ij,ij->i", forces, vel), seg, n)
        f2 = _seg_sum(np.einsum("ij,ij->i", forces, forces), seg, n)
        v2 = _seg_sum(np.einsum("ij,ij->i", vel, vel), seg, n)
        up = self.started & (vf > 0.0)
        down = self.started & ~(vf > 0.0)
        if up.any():
            mix = np.where(up, self.a, 0.0)
            scale = np.where(up, self.a * np.sqrt(v2) / np.sqrt(np.where(up, f2, 1.0)), 0.0)
            vel = (1.0 - mix[seg])[:, None] * vel + scale[seg][:, None] * forces
            grow = up & (self.n_downhill > p.Nmin)
            self.dt = np.where(grow, np.minimum(self.dt * p.finc, p.dtmax), self.dt)
            self.a = np.where(grow, self.a * p.fa, self.a)
            self.n_downhill = np.where(up, self.n_downhill + 1, self.n_downhill)
        if down.any():
            vel = np.where(down[seg][:, None], 0.0, vel)
            self.a = np.where(down, p.astart, self.a)
            self.dt = np.where(down, self.dt * p.fdec, self.dt)
            self.n_downhill = np.where(down, 0, self.n_downhill)
        self.started[:] = True
        vel = vel + self.dt[seg][:, None] * forces
        dr = self.dt[seg][:, None] * vel
        norm = np.sqrt(_seg_sum(np.einsum("ij,ij->i", dr, dr), seg, n))
        factor = np.where(norm > p.maxstep, p.maxstep / np.where(norm > 0, norm, 1.0), 1.0)
        self.vel = vel
        return positions + factor[seg][:, None] * dr

    def restart(self, mask: np.ndarray) -> None:
        """Start the structures where ``mask`` is true afresh (zero velocity, initial dt
        and alpha), as a new ``ase.optimize.FIRE`` would: their forces changed under them."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        self.vel[mask[self.seg]] = 0.0
        self.started[mask] = False
        self.dt[mask] = self.params.dt
        self.a[mask] = self.params.a
        self.n_downhill[mask] = 0

    def keep(self, mask: np.ndarray) -> None:
        """Drop the structures where ``mask`` is false (finished ones leave the batch)."""
        mask = np.asarray(mask, dtype=bool)
        atom_mask = mask[self.seg]
        self.vel = self.vel[atom_mask]
        self.seg = (np.cumsum(mask) - 1)[self.seg[atom_mask]]
        self.started, self.dt, self.a, self.n_downhill = (
            x[mask] for x in (self.started, self.dt, self.a, self.n_downhill)
        )
        self.n = int(mask.sum())
