"""The spec's ``distortions`` block: ShakeNBreak's distortion and rattle options, checked
and completed with ShakeNBreak's defaults before any seed is built."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from activedefect.seeds.defects import check_element

#: Distortion options passed through from the spec, with ShakeNBreak's meaning.
DISTORTION_OPTIONS = (
    "bond_distortions",  # list of fractions, e.g. [-0.3, 0.0, 0.3]; replaces the increment
    "distortion_increment",  # ShakeNBreak default 0.1: -60 % ... +60 % in these steps
    "dimer",  # bool, default True: add ShakeNBreak's Dimer seed for vacancies
    "dimer_bond_length",  # Å; default: ShakeNBreak's estimate
    "local_rattle",  # bool, default False
    "stdev",  # Å, rattle standard deviation; default 10 % of the bulk bond length
    "d_min",  # Å, rattle minimum distance; default 80 % of the bulk bond length
    "seed",  # int >= 1, one rattle seed for all distortions; default: ShakeNBreak's (from the first distortion)
    "n_iter",
    "max_attempts",
    "max_disp",
    "nbr_cutoff",
    "width",
    "distorted_elements",  # {defect name: element or [elements]} to distort
)
_DEFAULT_BOND_DISTORTION_LIMIT = 0.6


def validate_distortion_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Check the spec's distortion options; return them with ShakeNBreak's defaults filled in."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DISTORTION_OPTIONS))
    if unknown:
        raise ValueError(f"unknown distortion option(s) {unknown}; accepted: {list(DISTORTION_OPTIONS)}")
    if "bond_distortions" in options and "distortion_increment" in options:
        raise ValueError("give either `bond_distortions` or `distortion_increment`, not both")
    if "bond_distortions" in options:
        values = options["bond_distortions"]
        if isinstance(values, (str, bytes)) or not values or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values
        ):
            raise ValueError(
                f"bond_distortions must be a non-empty list of fractions like [-0.3, 0.0, 0.3], got {values!r}"
                " (the dimer seed is switched by the `dimer` option)"
            )
        if any(v <= -1 for v in values):
            raise ValueError(f"bond_distortions must be > -1 (a -100 % bond has zero length), got {values!r}")
        options["bond_distortions"] = [round(float(v), 3) for v in values]
    else:
        increment = options.pop("distortion_increment", 0.1)
        if not isinstance(increment, numbers.Real) or isinstance(increment, bool) or not 0 < increment <= 0.6:
            raise ValueError(f"distortion_increment must be in (0, 0.6], got {increment!r}")
        steps = np.around(np.arange(0, _DEFAULT_BOND_DISTORTION_LIMIT + 1e-3, float(increment)), 3)
        options["bond_distortions"] = [float(-v) for v in steps[::-1][:-1]] + [float(v) for v in steps]
    options.setdefault("dimer", True)
    options.setdefault("local_rattle", False)
    for key in ("dimer", "local_rattle"):
        if not isinstance(options[key], bool):
            raise ValueError(f"distortion option {key} must be true or false, got {options[key]!r}")
    for key in ("dimer_bond_length", "d_min", "max_disp", "nbr_cutoff", "width"):
        if key in options and not _positive_real(options[key]):
            raise ValueError(f"distortion option {key} must be a positive number (Å), got {options[key]!r}")
    if "stdev" in options and not (_positive_real(options["stdev"]) or options["stdev"] == 0):
        raise ValueError(f"distortion option stdev must be >= 0 Å, got {options['stdev']!r}")
    for key in ("n_iter", "max_attempts"):
        if key in options and not positive_int(options[key]):
            raise ValueError(f"distortion option {key} must be a positive integer, got {options[key]!r}")
    if "seed" in options and not positive_int(options["seed"]):
        raise ValueError(
            f"distortion option seed must be an integer >= 1, got {options['seed']!r} "
            "(ShakeNBreak treats 0 as 'use the default seeds'; omit seed for that)"
        )
    distorted = options.get("distorted_elements")
    if distorted is not None:
        if not isinstance(distorted, dict):
            raise ValueError("distorted_elements must map defect names to an element or a list of elements")
        for name, els in distorted.items():
            for el in [els] if isinstance(els, str) else list(els):
                check_element(el, f"distorted_elements[{name!r}]")
    return options


def _positive_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0


def positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1

