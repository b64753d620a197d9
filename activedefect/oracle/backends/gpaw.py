"""GPAW: real DFT (PBE by default) in plane-wave or LCAO mode, in this Python process.

Optional extra (``pip install activedefect[gpaw]``); imported only when a calculation
runs. A multiplicity above 1 runs spin-polarised with the total moment fixed to
2S = multiplicity - 1 (Fermi–Dirac occupations with ``fixmagmom``), so the requested
spin state is the one computed, not whatever the SCF falls into.
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from activedefect.oracle.backends.base import SettingsError
from activedefect.oracle.backends.calculator_backend import CalculatorBackend

MODES = ("pw", "lcao")
#: β of GPAW 26's default density mixer (MSR1), halved on a retry when none is set.
GPAW_DEFAULT_MIXER_BETA = 0.05


class GpawBackend(CalculatorBackend):
    """Settings: ``xc``; ``mode`` "pw" (``ecut``, eV) or "lcao" (``basis``); ``kpts``
    (Monkhorst–Pack grid, Γ by default); ``width`` (Fermi–Dirac smearing, eV);
    ``maxiter`` and ``mixer_beta`` (None: GPAW's default mixer) are numerical."""

    name = "gpaw"
    code = "gpaw"
    defaults: ClassVar[dict[str, Any]] = {
        "xc": "PBE",
        "mode": "pw",
        "ecut": 400.0,
        "basis": "dzp",
        "kpts": [1, 1, 1],
        "width": 0.05,
        "maxiter": 333,
        "mixer_beta": None,
    }
    numerical_keys = frozenset({"maxiter", "mixer_beta"})

    @classmethod
    def check_values(cls, given: dict[str, Any], merged: dict[str, Any]) -> None:
        if merged["mode"] not in MODES:
            raise SettingsError(f"gpaw backend: mode must be one of {MODES}, got {merged['mode']!r}")
        if not isinstance(merged["ecut"], (int, float)) or merged["ecut"] <= 0:
            raise SettingsError(f"gpaw backend: ecut must be a positive number (eV), got {merged['ecut']!r}")
        if not isinstance(merged["width"], (int, float)) or merged["width"] < 0:
            raise SettingsError(f"gpaw backend: width must be a number >= 0 (eV), got {merged['width']!r}")
        kpts = merged["kpts"]
        if len(kpts) != 3 or any(int(k) != k or k < 1 for k in kpts):
            raise SettingsError(f"gpaw backend: kpts must be three integers >= 1, got {kpts!r}")
        if not isinstance(merged["maxiter"], int) or merged["maxiter"] < 1:
            raise SettingsError(f"gpaw backend: maxiter must be an integer >= 1, got {merged['maxiter']!r}")
        beta = merged["mixer_beta"]
        if beta is not None and not 0 < beta <= 1:
            raise SettingsError(f"gpaw backend: mixer_beta must be in (0, 1] or None, got {beta!r}")

    def __init__(self, settings: dict[str, Any] | None = None, **kwargs: Any):
        if importlib.util.find_spec("gpaw") is None:
            raise ImportError("the gpaw backend needs GPAW: pip install 'activedefect[gpaw]'")
        super().__init__(settings, **kwargs)

    def unused_keys(self, settings: dict[str, Any]) -> set[str]:
        return {"basis"} if settings["mode"] == "pw" else {"ecut"}

    def version(self) -> str:
        import gpaw

        return gpaw.__version__

    def retry_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Twice the iterations and half the density-mixing step."""
        beta = settings["mixer_beta"] or GPAW_DEFAULT_MIXER_BETA
        return {**settings, "maxiter": 2 * settings["maxiter"], "mixer_beta": beta / 2}

    def prepare_atoms(self, atoms: Atoms, charge: int, multiplicity: int) -> None:
        # With fixmagmom the total moment stays at the sum of the initial moments.
        moments = np.full(len(atoms), (multiplicity - 1) / len(atoms)) if multiplicity > 1 else np.zeros(len(atoms))
        atoms.set_initial_magnetic_moments(moments)

    def _wants_stress(self, settings: dict[str, Any], calc: Calculator) -> bool:
        return settings["mode"] == "pw"  # LCAO mode has no stress

    def make_calculator(self, charge: int, multiplicity: int, settings: dict[str, Any]) -> Calculator:
        from gpaw import GPAW, PW

        occupations = {"name": "fermi-dirac", "width": settings["width"]}
        if multiplicity > 1:
            occupations["fixmagmom"] = True
        kwargs: dict[str, Any] = {
            "xc": settings["xc"],
            "kpts": tuple(int(k) for k in settings["kpts"]),
            "charge": charge,
            "spinpol": multiplicity > 1,
            "occupations": occupations,
            "maxiter": settings["maxiter"],
            # a defect relaxation breaks the start's symmetry: GPAW refuses a calculator whose
            # symmetry the new positions break (SymmetryBrokenError), so it uses none
            "symmetry": "off",
            "txt": None,
        }
        if settings["mode"] == "pw":
            kwargs["mode"] = PW(settings["ecut"])
        else:
            kwargs.update(mode="lcao", basis=settings["basis"])
        if settings["mixer_beta"] is not None:
            kwargs["mixer"] = {"beta": settings["mixer_beta"]}
        return GPAW(**kwargs)

    def classify_failure(self, exc: BaseException) -> tuple[str, str]:
        from gpaw import KohnShamConvergenceError

        if isinstance(exc, KohnShamConvergenceError):
            return "scf_not_converged", f"GPAW SCF did not converge within maxiter {exc}".rstrip()
        return super().classify_failure(exc)
