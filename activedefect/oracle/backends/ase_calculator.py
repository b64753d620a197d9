"""Any ASE calculator, given as an import path and keyword arguments.

``{"calculator": "ase.calculators.emt.EMT", "kwargs": {...}}``. The total charge is
passed as ``charge=`` when the calculator takes it (an ``__init__`` argument or a
``default_parameters`` key); a calculator that does not cannot label a charged cell.
``multiplicity=`` is passed the same way; a calculator without it has no spin and
ignores the multiplicity.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar

from activedefect.oracle.backends.base import SettingsError
from activedefect.oracle.backends.calculator_backend import CalculatorBackend

_PER_CALCULATION = ("charge", "multiplicity")


def import_calculator(path: str) -> type:
    """The class (or factory) at ``"package.module.Name"``."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise SettingsError(f"ase backend: calculator {path!r} is not an import path like 'ase.calculators.emt.EMT'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"ase backend: cannot import calculator {path!r}: {exc}") from exc


def accepts_keyword(factory: Any, keyword: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    return keyword in parameters or keyword in getattr(factory, "default_parameters", {})


class AseBackend(CalculatorBackend):
    name = "ase"
    code = "ase"
    defaults: ClassVar[dict[str, Any]] = {"calculator": None, "kwargs": {}}

    def __init__(self, settings: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(settings, **kwargs)
        self.code = self.settings["calculator"]

    @classmethod
    def check_values(cls, given: dict[str, Any], merged: dict[str, Any]) -> None:
        if not isinstance(merged["calculator"], str):
            raise SettingsError("ase backend: 'calculator' must be an import path such as 'ase.calculators.emt.EMT'")
        if not isinstance(merged["kwargs"], dict):
            raise SettingsError(f"ase backend: 'kwargs' must be a dict, got {type(merged['kwargs']).__name__}")
        for key in _PER_CALCULATION:
            if key in merged["kwargs"]:
                raise SettingsError(
                    f"ase backend: {key!r} is not a keyword argument; pass it to calculate()/calculator()"
                )
        import_calculator(merged["calculator"])

    def version(self) -> str:
        package = self.settings["calculator"].split(".")[0]
        try:
            return version(package)
        except PackageNotFoundError:
            return str(getattr(importlib.import_module(package), "__version__", "unknown"))

    def make_calculator(self, charge, multiplicity, settings):
        factory = import_calculator(settings["calculator"])
        kwargs = dict(settings["kwargs"])
        if accepts_keyword(factory, "charge"):
            kwargs["charge"] = charge
        elif charge != 0:
            raise ValueError(f"{settings['calculator']} takes no charge; it cannot label charge {charge:+d}")
        if accepts_keyword(factory, "multiplicity"):
            kwargs["multiplicity"] = multiplicity
        return factory(**kwargs)
