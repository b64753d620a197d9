"""Policies by name: a preset (``policies/*.yaml`` at the top of the repository) names a
kind and its parameters; campaign specs list policies by preset name, by path to a YAML
file, or inline as a mapping. Importing this module registers the built-in kinds
(:mod:`activedefect.search.builtin_policies`), so every kind a spec may name is known
when a spec is loaded. The policy framework: :mod:`activedefect.search.policy_framework`.
See docs/policies.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from activedefect.search import builtin_policies  # noqa: F401  (importing it registers the built-in kinds)
from activedefect.search.policy_framework import Policy, policy_kinds, registered_kind

#: The top-level ``policies/`` folder, installed as this package.
PRESET_PACKAGE = "activedefect.policy_presets"


def preset_names() -> list[str]:
    root = resources.files(PRESET_PACKAGE)
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"policy file {source} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"policy file {source} must be a mapping with `kind:` and parameters")
    return data


def load_policy(ref: str | Path | Mapping[str, Any], base_dir: str | Path | None = None) -> Policy:
    """A policy from a preset name (``committee-uncertainty``), a YAML file path
    (relative to ``base_dir``), or an inline mapping ``{kind: ..., <param>: ...}``.

    Parameters not given take the kind's defaults; unknown kinds or parameters raise a
    ``ValueError`` naming them and what is allowed.
    """
    if isinstance(ref, Mapping):
        data, source, default_name = dict(ref), "inline policy", None
    else:
        text = str(ref)
        if isinstance(ref, Path) or text.endswith((".yaml", ".yml")) or "/" in text:
            path = Path(text)
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            if not path.is_file():
                raise ValueError(f"policy file {path} does not exist")
            data, source, default_name = _read_yaml(path.read_text(), str(path)), str(path), path.stem
        else:
            preset = resources.files(PRESET_PACKAGE).joinpath(f"{text}.yaml")
            if not preset.is_file():
                raise ValueError(
                    f"unknown policy preset {text!r}; presets: {preset_names()} "
                    "(or give a path to a YAML file, or an inline mapping with `kind:`)"
                )
            data, source, default_name = _read_yaml(preset.read_text(), f"preset {text}"), f"preset {text}", text
    kind = data.pop("kind", None)
    spec = registered_kind(kind)
    if spec is None:
        kinds = "; ".join(f"{name} ({', '.join(f'{k}={v!r}' for k, v in params.items())})"
                          for name, params in policy_kinds().items())
        raise ValueError(f"{source}: `kind` must be one of the registered kinds, got {kind!r}; "
                         f"kinds (parameters with defaults): {kinds}")
    name = str(data.pop("name", default_name or kind))
    description = str(data.pop("description", ""))
    unknown = sorted(set(data) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"{source}: unknown parameter(s) {unknown} for kind {kind!r}; allowed: {sorted(spec.defaults)}"
        )
    params = {**spec.defaults, **data}
    if spec.check is not None:
        try:
            spec.check(params)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
    return Policy(name=name, kind=kind, params=params, description=description)
