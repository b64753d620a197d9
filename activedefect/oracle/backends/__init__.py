"""Labelling backends (oracles): xTB (tblite), GPAW, VASP and any ASE calculator.

``get_backend("xtb", {"electronic_temperature": 1000.0}, timeout_s=60)`` returns a
:class:`Backend`; ``backend.calculate(atoms, charge, multiplicity)`` returns a
:class:`~activedefect.labels.LabelResult`.
"""

from __future__ import annotations

from typing import Any

from activedefect.oracle.backends.ase_calculator import AseBackend
from activedefect.oracle.backends.base import Backend, SettingsError
from activedefect.oracle.backends.gpaw import GpawBackend
from activedefect.oracle.backends.vasp import VaspBackend
from activedefect.oracle.backends.xtb import XtbBackend

#: Backend name (as in presets and label metadata) -> class.
BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (XtbBackend, GpawBackend, VaspBackend, AseBackend)}


def get_backend(
    name: str, settings: dict[str, Any] | None = None, *, timeout_s: float | None = None, retries: int = 1
) -> Backend:
    """A configured backend; unknown names and settings raise :class:`SettingsError`."""
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise SettingsError(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}") from None
    return cls(settings, timeout_s=timeout_s, retries=retries)


__all__ = ["BACKENDS", "Backend", "SettingsError", "get_backend"]
