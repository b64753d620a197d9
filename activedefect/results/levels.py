"""Charge transition levels and formation energies from ground-state energies.

The usual convention (Freysoldt et al., Rev. Mod. Phys. 86, 253 (2014)): the formation
energy of defect X in charge q at Fermi level E_F (measured from the VBM) is

    E_f(X^q; E_F) = E(X^q) + E_corr(q) - E_bulk - sum_i n_i mu_i + q (E_VBM + E_F)

with n_i the atoms of element i added (> 0) or removed (< 0). The level eps(q/q') is the
E_F at which charges q and q' have equal formation energy; it needs neither the bulk
energy nor chemical potentials:

    eps(q/q') = [E(X^q) + E_corr(q) - E(X^q') - E_corr(q')] / (q' - q) - E_VBM

All energies in eV, all at one level of theory (the `high` fidelity).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np


@dataclass(frozen=True)
class TransitionLevel:
    """eps(q/q') of one defect, in eV above the VBM (``q`` > ``q_prime``)."""

    defect: str
    charge: int
    charge_prime: int
    level_eV: float

    @property
    def label(self) -> str:
        return f"({_signed(self.charge)}/{_signed(self.charge_prime)})"

    def as_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


def _signed(charge: int) -> str:
    return f"{charge:+d}" if charge else "0"


def transition_level(energy_q_eV: float, q: int, energy_qp_eV: float, q_prime: int, vbm_eV: float,
                     correction_q_eV: float = 0.0, correction_qp_eV: float = 0.0) -> float:
    """eps(q/q') in eV above the VBM (see the module docstring)."""
    if q == q_prime:
        raise ValueError(f"a transition level needs two different charges, got {q} twice")
    return (energy_q_eV + correction_q_eV - energy_qp_eV - correction_qp_eV) / (q_prime - q) - vbm_eV


def adjacent_levels(defect: str, energies_eV: Mapping[int, float], vbm_eV: float,
                    corrections_eV: Mapping[int, float] | None = None) -> list[TransitionLevel]:
    """eps(q/q') for every pair of adjacent computed charges (q > q'), highest q first.

    Adjacent in the list of charges that have an energy: with charges 0, -1, -2 this gives
    (0/-1) and (-1/-2), also where -1 is never the most stable state (negative U); see
    :func:`stable_levels` for the levels a Fermi-level sweep actually crosses."""
    corrections = corrections_eV or {}
    charges = sorted(energies_eV, reverse=True)
    return [
        TransitionLevel(defect, q, qp, transition_level(energies_eV[q], q, energies_eV[qp], qp, vbm_eV,
                                                        corrections.get(q, 0.0), corrections.get(qp, 0.0)))
        for q, qp in pairwise(charges)
    ]


def formation_energy(energy_eV: float, charge: int, fermi_eV: np.ndarray | float, vbm_eV: float,
                     reference_eV: float = 0.0, correction_eV: float = 0.0) -> np.ndarray:
    """E_f at Fermi level(s) ``fermi_eV`` above the VBM; ``reference_eV`` is
    E_bulk + sum_i n_i mu_i (zero gives formation energies up to a constant per defect)."""
    return energy_eV + correction_eV - reference_eV + charge * (vbm_eV + np.asarray(fermi_eV, dtype=float))


def stable_charges(energies_eV: Mapping[int, float], fermi_eV: np.ndarray, vbm_eV: float,
                   corrections_eV: Mapping[int, float] | None = None) -> np.ndarray:
    """The most stable charge at each Fermi level (the lower envelope)."""
    corrections = corrections_eV or {}
    charges = sorted(energies_eV)
    table = np.stack([formation_energy(energies_eV[q], q, fermi_eV, vbm_eV, 0.0, corrections.get(q, 0.0))
                      for q in charges])
    return np.array(charges)[np.argmin(table, axis=0)]


def stable_levels(defect: str, energies_eV: Mapping[int, float], vbm_eV: float, fermi_range_eV: tuple[float, float],
                  corrections_eV: Mapping[int, float] | None = None) -> list[TransitionLevel]:
    """The levels at the kinks of the lower envelope inside ``fermi_range_eV``: where the
    most stable charge changes, lowest E_F first (a negative-U state that is never most
    stable is skipped, giving e.g. (0/-2))."""
    corrections = corrections_eV or {}
    lo, hi = fermi_range_eV
    levels = []
    current = int(stable_charges(energies_eV, np.array([lo]), vbm_eV, corrections)[0])
    while True:
        crossings = [
            (transition_level(energies_eV[current], current, energies_eV[q], q, vbm_eV,
                              corrections.get(current, 0.0), corrections.get(q, 0.0)), q)
            for q in energies_eV if q < current
        ]
        ahead = [(level, q) for level, q in crossings if level >= lo]
        if not ahead:
            return levels
        level, q = min(ahead, key=lambda item: (item[0], item[1]))
        if level > hi:
            return levels
        levels.append(TransitionLevel(defect, current, q, level))
        current, lo = q, level
