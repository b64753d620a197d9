"""xTB through tblite: the embedded, periodic (Γ-point), charge- and spin-aware oracle.

Settings are the keyword arguments of ``tblite.ase.TBLite`` (read from its
``default_parameters``, so a tblite upgrade that adds a keyword is accepted), except
``charge`` and ``multiplicity``, which are arguments of every calculation. tblite 0.8.0
documents ``initial_guess`` but reads ``guess``; only ``guess`` is accepted here.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import version
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculationFailed, Calculator
from ase.units import Bohr, Hartree, kB
from tblite.ase import TBLite
from tblite.interface import Calculator as TBLiteAPI

from activedefect.oracle.backends.base import SettingsError
from activedefect.oracle.backends.calculator_backend import CalculatorBackend

#: tblite's built-in parametrisations, as its documentation names them (it has no public
#: list; a parametrisation file is given as ``method: {param: path}``).
TBLITE_METHODS = ("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB")


@cache
def _tblite_version() -> str:
    return version("tblite")  # ~20 ms per look-up, once per label otherwise


#: Set per calculation, not in settings.
_PER_CALCULATION = ("charge", "multiplicity")


_NOBLE_GAS_CORES = (0, 2, 10, 18, 36, 54, 86)


def xtb_valence_electrons(z: int) -> int:
    """Valence electrons of element ``z`` in GFN-xTB: outside the noble-gas core, without a
    filled d shell in the p block (Ga-Kr, In-Xe, Tl-Rn) or the 4f shell after the
    lanthanides. Removed shells hold even counts, so the parity equals that of Z."""
    valence = z - max(core for core in _NOBLE_GAS_CORES if core < z)
    if z >= 72:
        valence -= 14
    if 31 <= z <= 36 or 49 <= z <= 54 or 81 <= z <= 86:
        valence -= 10
    return valence


class XtbBackend(CalculatorBackend):
    """GFN1-xTB by default: on charged and neutral II–VI/III–V vacancy cells GFN2-xTB
    and IPEA1-xTB lost SCF convergence within a few relaxation steps, GFN1-xTB did not.
    Other defaults are tblite's (electronic_temperature 300 K, max_iterations 250)."""

    name = "xtb"
    code = "tblite"
    defaults: ClassVar[dict[str, Any]] = {
        **{k: v for k, v in TBLite.default_parameters.items() if k not in _PER_CALCULATION},
        "method": "GFN1-xTB",
        "verbosity": 0,
    }
    #: Convergence aids; changing them does not change a converged answer.
    numerical_keys = frozenset({"max_iterations", "mixer", "mixer_memory", "mixer_damping", "guess"})
    runtime_keys = frozenset({"verbosity", "cache_api"})

    def electron_count(self, atoms: Atoms) -> float:
        """Valence electrons of the neutral cell, as xTB counts them."""
        return float(sum(xtb_valence_electrons(int(z)) for z in atoms.numbers))

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        for key in _PER_CALCULATION:
            if key in settings:
                raise SettingsError(f"xtb backend: {key!r} is not a setting; pass it to calculate()/calculator()")
        super().check_settings(settings)

    @classmethod
    def check_values(cls, given: dict[str, Any], merged: dict[str, Any]) -> None:
        method = merged["method"]
        if not isinstance(method, dict) and method not in TBLITE_METHODS:
            raise SettingsError(f"xtb backend: unknown method {method!r}; tblite knows {', '.join(TBLITE_METHODS)}")
        for key in ("electronic_temperature", "accuracy", "mixer_damping"):
            value = merged[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise SettingsError(f"xtb backend: {key} must be a positive number, got {value!r}")
        iterations = merged["max_iterations"]
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise SettingsError(f"xtb backend: max_iterations must be an integer >= 1, got {iterations!r}")
        if merged["guess"] not in ("sad", "eeq", "eeqbc"):
            raise SettingsError(f"xtb backend: guess must be 'sad', 'eeq' or 'eeqbc', got {merged['guess']!r}")

    def version(self) -> str:
        return _tblite_version()

    def retry_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Twice the iterations and half the Broyden damping (smaller, steadier steps)."""
        return {
            **settings,
            "max_iterations": 2 * settings["max_iterations"],
            "mixer_damping": settings["mixer_damping"] / 2,
        }

    def band_edges_eV(self, atoms: Atoms) -> tuple[float, float]:
        """Highest occupied and lowest empty orbital energy (eV) of the neutral host cell
        at the Γ point, from tblite's orbital energies and occupations (an orbital is
        occupied above half filling): the band edges of a Γ-only supercell calculation,
        the same sampling the defect energies have."""
        settings = self.settings
        calc = TBLiteAPI(settings["method"], atoms.numbers, atoms.positions / Bohr, 0.0, 0,
                         np.asarray(atoms.cell) / Bohr, np.asarray(atoms.pbc))
        calc.set("accuracy", settings["accuracy"])
        calc.set("temperature", settings["electronic_temperature"] * kB / Hartree)
        calc.set("max-iter", settings["max_iterations"])
        calc.set("verbosity", 0)
        result = calc.singlepoint()
        energies_eV = np.asarray(result.get("orbital-energies")) * Hartree
        occupations = np.asarray(result.get("orbital-occupations"))  # 0..2 per orbital (closed shell)
        return float(energies_eV[occupations > 1.0].max()), float(energies_eV[occupations <= 1.0].min())

    def make_calculator(self, charge: int, multiplicity: int, settings: dict[str, Any]) -> Calculator:
        return TBLite(charge=charge, multiplicity=multiplicity, **settings)

    def classify_failure(self, exc: BaseException) -> tuple[str, str]:
        if isinstance(exc, CalculationFailed) and "not converged" in str(exc):
            return "scf_not_converged", str(exc)
        return super().classify_failure(exc)
