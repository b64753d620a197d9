"""Backends whose code runs in this Python process as an ASE calculator (xTB, GPAW, any
ASE calculator): one calculation in-process or in a child process killed at the deadline,
and the native calculator for relaxations behind the same charge check and failure typing."""

from __future__ import annotations

import copy
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import (
    CalculationFailed,
    Calculator,
    InputError,
    PropertyNotImplementedError,
    all_changes,
)

from activedefect.labels import OK, LabelResult
from activedefect.oracle.backends.base import Backend, failure_message
from activedefect.oracle.backends.child_process import CHILD_START_METHOD, run_in_child


class CalculatorBackend(Backend):
    """A backend whose code runs in this Python process as an ASE calculator.

    Without ``timeout_s`` the calculation runs in-process; with it, in a child process
    that is killed at the deadline.
    """

    start_method: ClassVar[str] = CHILD_START_METHOD

    @abstractmethod
    def make_calculator(self, charge: int, multiplicity: int, settings: dict[str, Any]) -> Calculator:
        """A fresh native calculator; may raise for bad settings."""

    def prepare_atoms(self, atoms: Atoms, charge: int, multiplicity: int) -> None:
        """Set what the calculator reads from the atoms (e.g. initial magnetic moments)."""

    def _wants_stress(self, settings: dict[str, Any], calc: Calculator) -> bool:
        return "stress" in calc.implemented_properties

    def classify_failure(self, exc: BaseException) -> tuple[str, str]:
        """Failure code and reason for an exception raised by the calculator."""
        status = "bad_input" if isinstance(exc, (ValueError, InputError)) else "crashed"
        return status, f"{type(exc).__name__}: {exc}"

    def attempt(self, atoms, charge, multiplicity, settings, timeout_s):
        if timeout_s is None:
            return self._compute(atoms, charge, multiplicity, settings)
        return run_in_child(self._compute, (atoms, charge, multiplicity, settings), timeout_s, self.start_method)

    def _compute(self, atoms: Atoms, charge: int, multiplicity: int, settings: dict[str, Any]) -> LabelResult:
        work = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        try:
            self.prepare_atoms(work, charge, multiplicity)
            calc = self.make_calculator(charge, multiplicity, settings)
            work.calc = calc
            energy, kind = _free_energy(work)
            forces = work.get_forces()
            stress = None
            if work.pbc.all() and self._wants_stress(settings, calc):
                try:
                    stress = work.get_stress()
                except PropertyNotImplementedError:
                    stress = None
        except Exception as exc:
            status, reason = self.classify_failure(exc)
            return LabelResult(status, "", reason=reason)
        stress = None if stress is None else np.array(stress)
        return LabelResult(OK, "", energy, np.array(forces), stress, metadata={"energy_kind": kind})

    def calculator(self, charge: int, multiplicity: int) -> Calculator:
        return GuardedCalculator(self, charge, multiplicity)


def _free_energy(atoms: Atoms) -> tuple[float, str]:
    """The force-consistent (free) energy where the calculator gives one: forces are
    its derivative, which is what a force-matched model needs."""
    energy = atoms.get_potential_energy()
    free = atoms.calc.results.get("free_energy")
    return (float(free), "free_energy") if free is not None else (float(energy), "energy")


class GuardedCalculator(Calculator):
    """The backend's native calculator for relaxations, with the same charge check and
    failure typing as :meth:`Backend.calculate`: every failure is a
    :class:`CalculationFailed` whose message starts with the failure code."""

    def __init__(self, backend: CalculatorBackend, charge: int, multiplicity: int):
        super().__init__()
        self.backend = backend
        self.charge = charge
        self.multiplicity = multiplicity
        self.inner = backend.make_calculator(charge, multiplicity, copy.deepcopy(backend.settings))
        self.implemented_properties = list(dict.fromkeys([*self.inner.implemented_properties, "free_energy"]))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        try:
            self.backend.check_charge(self.atoms, self.charge, self.multiplicity)
        except ValueError as exc:
            raise CalculationFailed(failure_message("bad_input", str(exc))) from exc
        self.backend.prepare_atoms(self.atoms, self.charge, self.multiplicity)
        try:
            for prop in dict.fromkeys(["energy", *properties]):
                if prop != "free_energy":
                    self.results[prop] = self.inner.get_property(prop, self.atoms)
            if "free_energy" in self.inner.results:
                self.results["free_energy"] = self.inner.results["free_energy"]
        except Exception as exc:
            status, reason = self.backend.classify_failure(exc)
            raise CalculationFailed(failure_message(status, reason)) from exc
        for prop in properties:
            if prop in self.results and not np.all(np.isfinite(self.results[prop])):
                raise CalculationFailed(failure_message("non_finite", f"non-finite {prop}"))
