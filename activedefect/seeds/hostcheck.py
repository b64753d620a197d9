"""Does the labelling method hold the perfect host together? Check before any defect work.

A defect search on a host the method cannot describe measures the host's collapse, not
the defect: under GFN1-xTB at the Γ point, a rattled 16-atom Si cell relaxes ~6 eV below
the perfect crystal, so every "defect ground state" found there would be an artefact
(the 64-atom cell holds: the verdict depends on the supercell, so check the one you use).
``check_host`` relaxes a rattled copy of the perfect supercell with the caller's ASE
calculator (one per fidelity) and compares it with the perfect cell.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculationFailed, Calculator
from ase.optimize import BFGS

from activedefect.geometry import displacement


class HostUnstableError(RuntimeError):
    """The method does not hold the perfect host stable; defect results would be artefacts."""


@dataclass
class HostCheckResult:
    """Outcome of ``check_host``; energies in eV, distances in Å.

    ``drop_eV_per_atom`` is (relaxed perfect energy - relaxed rattled energy) / n_atoms:
    positive when the rattled cell found something lower than the perfect crystal.
    ``max_displacement_A`` compares the relaxed rattled cell with the perfect positions
    (minimum image, mean displacement removed). ``stopped_early``: the rattled relaxation
    was stopped once the drop passed the limit (a collapse needs no full relaxation to be
    refused), so the drop is a lower bound. ``steps`` counts the rattled relaxation's
    optimizer steps. ``reasons`` says why it failed.
    """

    fidelity: str
    n_atoms: int
    perfect_energy_eV: float
    relaxed_energy_eV: float
    rattled_relaxed_energy_eV: float
    drop_eV_per_atom: float
    max_displacement_A: float
    passed: bool
    steps: int
    wall_s: float
    converged: bool = True
    stopped_early: bool = False
    max_drop_eV_per_atom: float = 0.01
    max_displacement_limit_A: float = 0.5
    reasons: list[str] = field(default_factory=list)

    @property
    def drop_eV(self) -> float:
        return self.drop_eV_per_atom * self.n_atoms

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostCheckResult:
        return cls(**data)


def check_host(
    atoms: Atoms,
    calculator: Calculator,
    *,
    fidelity: str,
    max_drop_eV_per_atom: float = 0.01,
    rattle_stdev_A: float = 0.1,
    seed: int = 0,
    fmax: float = 0.05,
    max_steps: int = 300,
    max_displacement_A: float = 0.5,
    stop_on_collapse: bool = True,
) -> HostCheckResult:
    """Relax the perfect and a rattled copy of ``atoms`` (positions only, fixed cell) with
    BFGS and decide whether the method holds the host stable.

    BFGS, not FIRE: a stable host is near-harmonic, and BFGS brings a rattled 8-atom SiC
    cell back in 8 steps where FIRE needs 34.

    Fails when the rattled cell relaxes more than ``max_drop_eV_per_atom`` below the
    relaxed perfect cell, when any atom ends more than ``max_displacement_A`` from its
    perfect position, when the rattled relaxation does not reach ``fmax`` within
    ``max_steps``, or when the calculator fails. With ``stop_on_collapse`` the rattled
    relaxation stops as soon as the drop passes the limit (the verdict is then certain;
    the full collapse of a 64-atom cell can take minutes); turn it off to measure the
    whole drop. Does not raise: see ``require_stable``.
    """
    if not isinstance(fidelity, str) or not fidelity:
        raise ValueError("fidelity must name the level of theory checked (e.g. 'low')")
    for name, value in (
        ("max_drop_eV_per_atom", max_drop_eV_per_atom),
        ("rattle_stdev_A", rattle_stdev_A),
        ("fmax", fmax),
        ("max_displacement_A", max_displacement_A),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    if int(max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps!r}")
    if not np.all(atoms.pbc):
        raise ValueError("the host must be periodic in all three directions")

    start = time.perf_counter()
    perfect = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
    rattled = perfect.copy()
    rattled.rattle(stdev=rattle_stdev_A, seed=seed)
    nan = float("nan")
    result = HostCheckResult(
        fidelity=fidelity,
        n_atoms=len(perfect),
        perfect_energy_eV=nan,
        relaxed_energy_eV=nan,
        rattled_relaxed_energy_eV=nan,
        drop_eV_per_atom=nan,
        max_displacement_A=nan,
        passed=False,
        steps=0,
        wall_s=nan,
        converged=False,
        max_drop_eV_per_atom=max_drop_eV_per_atom,
        max_displacement_limit_A=max_displacement_A,
    )
    try:
        relaxed = perfect.copy()
        relaxed.calc = calculator
        result.perfect_energy_eV = float(relaxed.get_potential_energy())
        _relax(relaxed, fmax, max_steps)  # zero steps for an ideal crystal; records the relaxed bulk
        result.relaxed_energy_eV = float(relaxed.get_potential_energy())
        reference = min(result.perfect_energy_eV, result.relaxed_energy_eV)
        rattled.calc = calculator
        collapse_below = reference - max_drop_eV_per_atom * len(perfect) if stop_on_collapse else None
        result.steps, result.converged, result.stopped_early = _relax(rattled, fmax, max_steps, collapse_below)
        result.rattled_relaxed_energy_eV = float(rattled.get_potential_energy())
    except CalculationFailed as error:
        result.reasons.append(f"the calculator failed on the host: {error}")
    else:
        result.drop_eV_per_atom = (reference - result.rattled_relaxed_energy_eV) / len(perfect)
        result.max_displacement_A = displacement(perfect, rattled).max_displacement_A
        if result.drop_eV_per_atom > max_drop_eV_per_atom:
            at_least = "at least " if result.stopped_early else ""
            result.reasons.append(
                f"the rattled cell relaxed {at_least}{result.drop_eV_per_atom:.3f} eV/atom ({result.drop_eV:.2f} eV) "
                f"below the perfect crystal (limit {max_drop_eV_per_atom} eV/atom)"
            )
        if result.max_displacement_A > max_displacement_A:
            result.reasons.append(
                f"an atom ended {result.max_displacement_A:.2f} Å from its perfect position "
                f"(limit {max_displacement_A} Å)"
            )
        if not result.converged and not result.stopped_early:
            result.reasons.append(
                f"the rattled relaxation did not reach fmax={fmax} eV/Å in {max_steps} steps "
                "(a slow collapse looks like this; raise max_steps to tell)"
            )
    result.passed = not result.reasons
    result.wall_s = time.perf_counter() - start
    return result


def require_stable(result: HostCheckResult) -> None:
    """Raise ``HostUnstableError`` with the measured numbers when the check failed."""
    if result.passed:
        return
    drop = (
        f"drop {result.drop_eV_per_atom:.3f} eV/atom ({result.drop_eV:.2f} eV over {result.n_atoms} atoms)"
        if math.isfinite(result.drop_eV_per_atom)
        else "no energy drop measured"
    )
    raise HostUnstableError(
        f"fidelity {result.fidelity!r} does not hold the host stable: {'; '.join(result.reasons)} [{drop}]. "
        "A defect search on a host the method cannot describe measures the host's collapse, not the defect. "
        "Try a bigger supercell, another method for this fidelity, or another host."
    )


def _relax(atoms: Atoms, fmax: float, max_steps: int, stop_below_eV: float | None = None) -> tuple[int, bool, bool]:
    """BFGS relaxation; returns (steps, converged, stopped because the energy fell below
    ``stop_below_eV``)."""
    optimizer = BFGS(atoms, logfile=None)
    converged = False
    for converged in optimizer.irun(fmax=fmax, steps=int(max_steps)):
        if stop_below_eV is not None and not converged and atoms.get_potential_energy() < stop_below_eV:
            return int(optimizer.nsteps), False, True
    return int(optimizer.nsteps), bool(converged), False
