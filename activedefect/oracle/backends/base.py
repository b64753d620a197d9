"""The backend contract: (structure, charge, multiplicity, settings) -> LabelResult.

One base class holds what every backend must do the same way, so that labels from
xTB, GPAW, VASP or any ASE calculator are comparable in the store: the charge/spin
check, the settings hash (level of theory only, so a retry with other numerical
settings is found again), retries on SCF failure, the timeout, the validation of
the numbers and the metadata.
"""

from __future__ import annotations

import copy
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.stress import full_3x3_to_voigt_6_stress

from activedefect.labels import OK, LabelResult, settings_hash


class SettingsError(ValueError):
    """A backend setting is unknown or has an invalid value."""


def failure_message(status: str, reason: str) -> str:
    return f"{status}: {reason}" if reason else status


class Backend(ABC):
    """A labelling oracle. Subclasses declare their settings and implement
    :meth:`attempt` (one calculation with given settings) and :meth:`calculator`.

    ``settings`` are merged over :attr:`defaults`; keys in :attr:`numerical_keys`
    (SCF iteration limits, mixers, algorithms) may change on a retry and, like
    :attr:`runtime_keys` (where and how to run), are not part of the level of
    theory, so they do not enter :attr:`settings_hash`.
    """

    name: ClassVar[str]
    #: Program that produces the numbers (metadata ``code``).
    code: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    numerical_keys: ClassVar[frozenset[str]] = frozenset()
    runtime_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: dict[str, Any] | None = None, *, timeout_s: float | None = None, retries: int = 1):
        settings = dict(settings or {})
        self.check_settings(settings)
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive or None (no timeout), got {timeout_s!r}")
        if int(retries) != retries or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
        self.settings: dict[str, Any] = copy.deepcopy({**self.defaults, **settings})
        self.timeout_s = timeout_s
        self.retries = int(retries)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings!r}, timeout_s={self.timeout_s}, retries={self.retries})"

    # --- settings -------------------------------------------------------------------

    @classmethod
    def accepted_keys(cls) -> set[str]:
        return set(cls.defaults)

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        """Raise :class:`SettingsError` naming the first unknown key (with the accepted
        ones) or the first invalid value."""
        accepted = cls.accepted_keys()
        unknown = sorted(set(settings) - accepted)
        if unknown:
            raise SettingsError(
                f"{cls.name} backend: unknown setting {unknown[0]!r}; accepted settings: {', '.join(sorted(accepted))}"
            )
        cls.check_values(settings, {**copy.deepcopy(cls.defaults), **settings})

    @classmethod
    def check_values(cls, given: dict[str, Any], merged: dict[str, Any]) -> None:
        """Check values; ``given`` is what the user set, ``merged`` includes defaults."""

    def unused_keys(self, settings: dict[str, Any]) -> set[str]:
        """Keys that do not apply to these settings (e.g. a plane-wave cutoff in LCAO
        mode), left out of the level of theory."""
        return set()

    def level_of_theory(self, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        settings = self.settings if settings is None else settings
        skip = self.numerical_keys | self.runtime_keys | self.unused_keys(settings)
        return {k: v for k, v in settings.items() if k not in skip}

    @property
    def settings_hash(self) -> str:
        return settings_hash(self.name, self.level_of_theory())

    def retry_settings(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        """Settings for the next attempt after an SCF failure with ``settings``; only
        :attr:`numerical_keys` may differ. ``None``: no retry is possible."""
        return None

    def version(self) -> str:
        return "unknown"

    def band_edges_eV(self, atoms: Atoms) -> tuple[float, float] | None:
        """(VBM, CBM) of a perfect host cell at this level of theory, or None where the
        backend cannot say (the spec's ``levels.vbm_eV`` is then needed)."""
        return None

    # --- charge and spin ------------------------------------------------------------

    def electron_count(self, atoms: Atoms) -> float:
        """Electrons of the neutral cell (all-electron here; valence for pseudopotential
        codes). Core electrons come in pairs, so the parity is the same either way."""
        return float(np.sum(atoms.numbers))

    def check_charge(self, atoms: Atoms, charge: int, multiplicity: int) -> None:
        """Raise ValueError when no state with this charge and multiplicity 2S+1 exists."""
        if isinstance(charge, bool) or int(charge) != charge:
            raise ValueError(f"charge must be an integer, got {charge!r}")
        if isinstance(multiplicity, bool) or int(multiplicity) != multiplicity or multiplicity < 1:
            raise ValueError(f"multiplicity (2S+1) must be an integer >= 1, got {multiplicity!r}")
        charge, multiplicity = int(charge), int(multiplicity)
        neutral = self.electron_count(atoms)
        n_electrons = neutral - charge
        formula = atoms.get_chemical_formula()
        if n_electrons < 0:
            raise ValueError(
                f"charge {charge:+d} removes more electrons than {formula} has ({neutral:g}); "
                f"use a charge <= {neutral:g}"
            )
        n_unpaired = multiplicity - 1
        if n_unpaired > n_electrons:
            raise ValueError(
                f"multiplicity {multiplicity} needs {n_unpaired} unpaired electrons but {formula} "
                f"at charge {charge:+d} has only {n_electrons:g}"
            )
        if float(n_electrons).is_integer() and (int(n_electrons) - n_unpaired) % 2:
            parity = "odd" if int(n_electrons) % 2 else "even"
            allowed = "2, 4, ..." if parity == "odd" else "1, 3, ..."
            raise ValueError(
                f"charge {charge:+d} leaves {formula} with {n_electrons:g} electrons ({parity}), which "
                f"needs multiplicity {allowed}; got {multiplicity}. Use multiplicity "
                f"{multiplicity + 1 if multiplicity == 1 else multiplicity - 1} or change the charge by one"
            )

    # --- calculation ----------------------------------------------------------------

    @abstractmethod
    def attempt(
        self, atoms: Atoms, charge: int, multiplicity: int, settings: dict[str, Any], timeout_s: float | None
    ) -> LabelResult:
        """One calculation with ``settings``, within ``timeout_s`` when not None: a status
        from :data:`activedefect.labels.FAILURE_CODES` or ``"ok"``, the numbers, and extra
        metadata of the attempt (job folder, SCF steps, parsed code version). Its
        ``settings_hash`` is left empty; :meth:`calculate` sets it."""

    @abstractmethod
    def calculator(self, charge: int, multiplicity: int) -> Calculator:
        """An ASE calculator for relaxations with this backend's settings; it raises
        :class:`~ase.calculators.calculator.CalculationFailed` on any failure."""

    def calculate(self, atoms: Atoms, charge: int, multiplicity: int) -> LabelResult:
        """Energy and forces of ``atoms`` at this charge and multiplicity, or a typed
        failure; never raises for a failed calculation. ``timeout_s`` bounds the whole
        call, retries included."""
        start = time.perf_counter()
        settings = copy.deepcopy(self.settings)
        retries = 0
        try:
            self.check_charge(atoms, charge, multiplicity)
        except ValueError as exc:
            attempt = LabelResult("bad_input", "", reason=str(exc))
        else:
            charge, multiplicity = int(charge), int(multiplicity)
            while True:
                attempt = self._guarded_attempt(atoms, charge, multiplicity, settings, start)
                if attempt.status != "scf_not_converged" or retries >= self.retries:
                    break
                retry = self.retry_settings(settings)
                if retry is None or retry == settings:
                    break
                settings, retries = retry, retries + 1
        metadata = {
            "backend": self.name,
            "code": self.code,
            "version": self.version(),
            "settings": settings,
            "settings_hash": self.settings_hash,
            "charge": charge,
            "multiplicity": multiplicity,
            "retries": retries,
            **attempt.metadata,
            "wall_s": time.perf_counter() - start,
        }
        if attempt.ok:
            return replace(attempt, settings_hash=self.settings_hash, metadata=metadata)
        result = LabelResult.failure(attempt.status, self.settings_hash, attempt.reason)
        result.metadata.update(metadata)  # not as **kwargs: metadata has a "settings_hash" key
        return result

    def _guarded_attempt(
        self, atoms: Atoms, charge: int, multiplicity: int, settings: dict[str, Any], start: float
    ) -> LabelResult:
        remaining = None
        if self.timeout_s is not None:
            remaining = self.timeout_s - (time.perf_counter() - start)
            if remaining <= 0:
                return LabelResult("timeout", "", reason=f"no time left of timeout_s={self.timeout_s:g} for a retry")
        try:
            attempt = self.attempt(atoms, charge, multiplicity, copy.deepcopy(settings), remaining)
        except Exception as exc:  # the contract: a failure is returned, never raised
            return LabelResult(
                "crashed",
                "",
                reason=f"{type(exc).__name__}: {exc}",
                metadata={"traceback": traceback.format_exc(limit=8)},
            )
        if attempt.status == "timeout":
            detail = f"; {attempt.reason}" if attempt.reason else ""
            attempt.reason = f"no result within timeout_s={self.timeout_s:g} s{detail}"
        return validate(attempt, len(atoms))


def validate(attempt: LabelResult, n_atoms: int) -> LabelResult:
    """Turn a successful attempt with wrong-shaped or non-finite numbers into a failure,
    and normalise arrays (float64; stress in Voigt order)."""
    if attempt.status != OK:
        return attempt

    def failed(status: str, reason: str) -> LabelResult:
        return LabelResult(status, attempt.settings_hash, reason=reason, metadata=attempt.metadata)

    if attempt.energy_eV is None or attempt.forces_eV_A is None:
        return failed("crashed", "calculation returned no energy or no forces")
    forces = np.asarray(attempt.forces_eV_A, dtype=np.float64)
    if forces.shape != (n_atoms, 3):
        return failed("wrong_atom_count", f"forces have shape {forces.shape}, expected ({n_atoms}, 3)")
    stress = attempt.stress_eV_A3
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.shape == (3, 3):
            stress = full_3x3_to_voigt_6_stress(stress)
    energy = float(attempt.energy_eV)
    bad = [
        name
        for name, value in (("energy", energy), ("forces", forces), ("stress", stress))
        if value is not None and not np.all(np.isfinite(value))
    ]
    if bad:
        return failed("non_finite", f"non-finite {' and '.join(bad)}")
    return LabelResult(OK, attempt.settings_hash, energy, forces, stress, metadata=attempt.metadata)
