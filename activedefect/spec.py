"""The campaign spec: a YAML file validated by pydantic before any work starts.

Every error names the field (``defects.0.vacancy``) and says how to fix it; paths are
relative to the spec file and are resolved once, here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from activedefect.labels import FIDELITIES
from activedefect.spec_blocks import (
    NAME_PATTERN,
    Block,
    BudgetSpec,
    ClusterSpec,
    CommitteeSpec,
    ConvergenceSpec,
    DefectSpec,
    ExplorationSpec,
    FidelitySpec,
    HostCheckSpec,
    HostSpec,
    LevelsSpec,
)


class SpecError(ValueError):
    """A campaign spec that cannot run; the message names the field and the fix."""


class CampaignSpec(Block):
    name: str = Field(pattern=NAME_PATTERN, description="letters, digits, _ . + -; no paths")
    host: HostSpec
    defects: list[DefectSpec] = Field(min_length=1)
    distortions: dict[str, Any] = Field(default_factory=dict)
    fidelities: dict[str, FidelitySpec]
    multiplicity: dict[str, int] = Field(default_factory=dict)
    host_check: HostCheckSpec = HostCheckSpec()
    committee: CommitteeSpec = CommitteeSpec()
    exploration: ExplorationSpec = ExplorationSpec()
    policies: list[str | dict[str, Any]] = Field(
        default_factory=lambda: ["bootstrap", "committee-uncertainty", "stratified-high"]
    )
    budget: BudgetSpec = BudgetSpec()
    convergence: ConvergenceSpec = ConvergenceSpec()
    cluster: ClusterSpec = ClusterSpec()
    levels: LevelsSpec = LevelsSpec()
    seed: int = 0

    @field_validator("fidelities")
    @classmethod
    def _low_and_high(cls, value: dict[str, FidelitySpec]) -> dict[str, FidelitySpec]:
        if set(value) != set(FIDELITIES):
            raise ValueError(
                f"fidelities must be exactly `low` and `high` (got {sorted(value)}); "
                "use the same backend twice for a single-fidelity campaign"
            )
        return value

    @field_validator("multiplicity")
    @classmethod
    def _multiplicity_keys(cls, value: dict[str, int]) -> dict[str, int]:
        for key, mult in value.items():
            if not re.match(r"^.+_[+-]?\d+$", key) or mult < 1:
                raise ValueError(
                    f"multiplicity entry {key}: {mult} should map a charged defect name such as "
                    "`v_Si_-1` to a multiplicity 2S+1 >= 1"
                )
        return value

    @model_validator(mode="after")
    def _relaxations_tighter_than_convergence(self) -> "CampaignSpec":
        fmax, max_force = self.exploration.fmax_eV_A, self.convergence.max_force
        if fmax >= max_force:
            raise ValueError(
                f"exploration.fmax_eV_A ({fmax}) must be below convergence.max_force ({max_force}): a committee "
                f"minimum relaxed only to {fmax} eV/Å cannot pass the force test; use e.g. {max_force / 5:g}"
            )
        return self

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid campaign spec {source}:"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against docs/spec.md"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def parse_spec(data: dict[str, Any], base_dir: Path, source: str = "") -> CampaignSpec:
    """Validate a spec dict; relative paths are resolved against ``base_dir``."""
    if not isinstance(data, dict):
        raise SpecError(f"campaign spec {source} must be a mapping of keys to values, got {type(data).__name__}")
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_format_validation_error(error, source)) from None
    structure = spec.host.structure
    if not structure.is_absolute():
        structure = (base_dir / structure).resolve()
    if not structure.is_file():
        raise SpecError(
            f"invalid campaign spec {source}:\n  host.structure: file {structure} does not exist "
            "(paths are relative to the spec file)"
        )
    spec = spec.model_copy(update={
        "host": spec.host.model_copy(update={"structure": structure}),
        "policies": _resolve_policies(spec.policies, base_dir, source),
    })
    _check_backends(spec, source)
    return spec


def _resolve_policies(entries: list, base_dir: Path, source: str) -> list:
    """Check every policy now, and inline the ones given as files (relative to the spec),
    so a frozen spec never depends on a file outside its campaign directory."""
    from activedefect.search.policies import load_policy, preset_names

    resolved = []
    for i, entry in enumerate(entries):
        try:
            policy = load_policy(entry, base_dir=base_dir)
        except ValueError as error:
            raise SpecError(f"invalid campaign spec {source}:\n  policies.{i}: {error}") from None
        if isinstance(entry, str) and entry in preset_names():
            resolved.append(entry)
        else:
            resolved.append(json.loads(json.dumps(policy.as_dict())))
    return resolved


def _check_backends(spec: CampaignSpec, source: str) -> None:
    from activedefect.oracle.backends import BACKENDS

    for fidelity, block in spec.fidelities.items():
        where = f"fidelities.{fidelity}"
        if block.backend not in BACKENDS:
            raise SpecError(
                f"invalid campaign spec {source}:\n  {where}.backend: unknown backend {block.backend!r}; "
                f"available: {', '.join(sorted(BACKENDS))}"
            )
        try:
            BACKENDS[block.backend].check_settings(block.settings)
        except ValueError as error:
            raise SpecError(f"invalid campaign spec {source}:\n  {where}.settings: {error}") from None


def load_spec(path: str | Path) -> CampaignSpec:
    """Read and validate a campaign spec YAML file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"campaign spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SpecError(f"campaign spec {path} is not valid YAML: {error}") from None
    return parse_spec(data, path.parent.resolve(), source=str(path))
