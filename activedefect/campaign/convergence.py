"""Ground-state tracking and the per charge-state convergence test.

A defect × charge state is converged when its ground-state candidate has stayed put
(RMSD ≤ ``rmsd`` to the previous generation's) for ``patience`` generations, its `high`
label exists and agrees with the prediction (|ΔE| ≤ ``energy``, max |F| ≤ ``max_force``),
and the committee agrees there (max force spread ≤ ``max_spread``) — and, with
``finished_seeds``, once no seed's committee relaxation is still under way: a distorted
seed cut short may yet reach a lower basin, and one that exploded on the committee
reached none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from activedefect.spec_blocks import ConvergenceSpec


@dataclass
class GroundStateRecord:
    """One charge state's ground-state candidate in one generation: the committee's, or
    after the confirm step the confirmed minimum (``confirmed_from`` says where its `high`
    relaxation started), every number describing that structure."""

    defect: str
    charge: int
    generation: int
    frame: int
    seed: str
    predicted_energy_eV: float
    max_force_spread_eV_A: float
    high_energy_eV: float | None = None
    high_max_force_eV_A: float | None = None
    rmsd_to_previous_A: float | None = None
    max_displacement_to_previous_A: float | None = None
    unfinished_seeds: int = 0
    exploded_seeds: int = 0
    confirmed_from: str | None = None
    stable_generations: int = 0
    converged: bool = False
    reasons: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GroundStateRecord":
        return cls(**{**data, "reasons": tuple(data.get("reasons", ()))})


def assess(
    record: GroundStateRecord,
    previous: GroundStateRecord | None,
    spec: ConvergenceSpec,
    max_spread_default: float,
) -> GroundStateRecord:
    """Fill in ``stable_generations``, ``converged`` and the reasons it is not (yet)."""
    stable = False
    if previous is not None and record.rmsd_to_previous_A is not None:
        stable = record.rmsd_to_previous_A <= spec.rmsd
    record.stable_generations = (previous.stable_generations + 1) if (stable and previous) else 0
    return _test(record, spec, max_spread_default)


def assess_confirmed(
    record: GroundStateRecord, candidate: GroundStateRecord, spec: ConvergenceSpec, max_spread_default: float
) -> GroundStateRecord:
    """The tests for the confirm step's minimum ``record`` (its ``rmsd_to_previous_A`` is
    the distance to the committee's ``candidate`` it replaces): it inherits the
    candidate's stability only where the confirm relaxation stayed within ``spec.rmsd``."""
    near = record.rmsd_to_previous_A is not None and record.rmsd_to_previous_A <= spec.rmsd
    record.stable_generations = candidate.stable_generations if near else 0
    return _test(record, spec, max_spread_default)


def _test(record: GroundStateRecord, spec: ConvergenceSpec, max_spread_default: float) -> GroundStateRecord:
    reasons: list[str] = []
    if record.stable_generations < spec.patience:
        reasons.append(f"stable for {record.stable_generations}/{spec.patience} generations")
    if record.high_energy_eV is None:
        reasons.append("no high label yet")
    else:
        delta = abs(record.high_energy_eV - record.predicted_energy_eV)
        if delta > spec.energy:
            reasons.append(f"|E_high - E_pred| = {delta:.4f} eV > {spec.energy}")
        if record.high_max_force_eV_A is not None and record.high_max_force_eV_A > spec.max_force:
            reasons.append(f"max |F_high| = {record.high_max_force_eV_A:.3f} eV/Å > {spec.max_force}")
    max_spread = spec.max_spread if spec.max_spread is not None else max_spread_default
    if record.max_force_spread_eV_A > max_spread:
        reasons.append(f"force spread {record.max_force_spread_eV_A:.3f} eV/Å > {max_spread}")
    if spec.finished_seeds and record.unfinished_seeds:
        reasons.append(f"{record.unfinished_seeds} seed relaxations not at a minimum yet")
    if spec.finished_seeds and record.exploded_seeds:
        reasons.append(f"{record.exploded_seeds} seed relaxations exploded on the committee (no minimum from them)")
    record.reasons = tuple(reasons)
    record.converged = not reasons
    return record


def mark_stale(record: GroundStateRecord, generation: int) -> GroundStateRecord:
    """A record no minimum of ``generation`` renewed (every committee relaxation of its
    charge state stopped short): kept as the best known structure, but never converged —
    the committee that predicted it is gone."""
    if record.generation >= generation:
        return record
    record.converged = False
    record.stable_generations = 0
    record.reasons = (f"no committee minimum in generation {generation} (record from generation {record.generation})",)
    return record
