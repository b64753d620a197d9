"""The campaign spec: a YAML file validated by pydantic before any work starts.

Every error names the field (``defects.0.vacancy``) and says how to fix it; paths are
relative to the spec file and are resolved once, here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from activedefect.labels import FIDELITIES

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"
#: Largest |charge| of a defect state accepted: point defects in semiconductors hold a few
#: electrons or holes (doped guesses stay within the oxidation states); tens is a typo,
#: and ShakeNBreak fails on such charges with an IndexError.
MAX_ABS_CHARGE = 10


class SpecError(ValueError):
    """A campaign spec that cannot run; the message names the field and the fix."""


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostSpec(_Block):
    structure: Path = Field(description="host crystal file (any format ASE/pymatgen read), relative to the spec")
    supercell: list[int] | list[list[int]] = Field(
        default=[1, 1, 1], description="supercell multiples [a, b, c] or a 3x3 integer matrix"
    )
    oxidation_states: dict[str, int] | None = Field(default=None, description="guessed when absent")

    @field_validator("supercell")
    @classmethod
    def _supercell_shape(cls, value: list) -> list:
        if isinstance(value[0], list):
            if len(value) != 3 or any(len(row) != 3 for row in value):
                raise ValueError("a supercell matrix must be 3x3, e.g. [[2,0,0],[0,2,0],[0,0,2]]")
        elif len(value) != 3 or any(v < 1 for v in value):
            raise ValueError("supercell must be three positive integers, e.g. [2, 2, 2]")
        return value


class SubstitutionSpec(_Block):
    site: str = Field(description="host element replaced")
    element: str = Field(description="element put on the site")


class InterstitialSpec(_Block):
    element: str
    frac_coords: tuple[float, float, float] = Field(description="fractional coordinates in the supercell")


class DefectSpec(_Block):
    vacancy: str | None = None
    substitution: SubstitutionSpec | None = None
    interstitial: InterstitialSpec | None = None
    charges: list[int] | None = Field(default=None, min_length=1, description="default: ShakeNBreak/doped's guess")

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> "DefectSpec":
        kinds = [k for k in ("vacancy", "substitution", "interstitial") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "each defect needs exactly one of `vacancy: El`, `substitution: {site, element}` "
                f"or `interstitial: {{element, frac_coords}}` (got {kinds or 'none'})"
            )
        if self.charges is not None and len(set(self.charges)) != len(self.charges):
            raise ValueError(f"charges {self.charges} repeat a charge state")
        return self

    @field_validator("charges")
    @classmethod
    def _charges_in_range(cls, value: list[int] | None) -> list[int] | None:
        out_of_range = [q for q in value or [] if abs(q) > MAX_ABS_CHARGE]
        if out_of_range:
            raise ValueError(
                f"charges {out_of_range} are out of range: a defect charge state lies within "
                f"±{MAX_ABS_CHARGE} (leave `charges` out to use doped's guess)"
            )
        return value


class RetrySpec(_Block):
    attempts: int = Field(default=1, ge=0, le=5, description="extra attempts after an SCF failure")


class FidelitySpec(_Block):
    backend: str = Field(description="xtb, gpaw, vasp or ase")
    settings: dict[str, Any] = Field(default_factory=dict, description="passed to the backend's calculator")
    executor: Literal["dask", "pyiron"] = Field(
        default="dask", description="pyiron: each label is a pyiron job in the campaign's pyiron project"
    )
    timeout_s: float | None = Field(default=None, gt=0)
    retry: RetrySpec = RetrySpec()


class HostCheckSpec(_Block):
    enabled: bool = True
    max_drop_eV_per_atom: float = Field(default=0.01, gt=0)
    rattle_stdev_A: float = Field(default=0.1, gt=0)
    max_displacement_A: float = Field(default=0.5, gt=0)
    fmax_eV_A: float = Field(default=0.05, gt=0)
    max_steps: int = Field(default=300, gt=0)


class ModelSpec(_Block):
    """MACE architecture; the defaults train in seconds per epoch on one CPU core."""

    num_channels: int = Field(default=32, gt=0)
    max_L: int = Field(default=0, ge=0, le=3)
    max_ell: int = Field(default=2, ge=1, le=4)
    correlation: int = Field(default=2, ge=1, le=4)
    num_interactions: int = Field(default=2, ge=1, le=4)
    r_max_A: float = Field(default=5.0, gt=1.0)
    mlp_irreps: str = "16x0e"
    charge_embedding_dim: int = Field(default=16, gt=0)
    spin_embedding: bool = False


class CommitteeSpec(_Block):
    size: int = Field(default=4, ge=1, le=32)
    epochs: int = Field(default=60, gt=0)
    finetune_epochs: int = Field(default=20, gt=0)
    bootstrap: bool = True
    valid_fraction: float = Field(default=0.1, ge=0.0, lt=0.5)
    batch_size: int = Field(default=8, gt=0)
    learning_rate: float = Field(default=0.01, gt=0)
    minimum_weight: float = Field(
        default=100.0, ge=0,
        description="extra loss weight of labels near each charge state's lowest: 1 + w·exp(-ΔE/minimum_window_eV)",
    )
    minimum_window_eV: float = Field(default=0.1, gt=0)
    hot_force_eV_A: float | None = Field(
        default=None, gt=0, description="frames weigh 1/(1 + (F_rms/hot_force_eV_A)^2): distorted seeds at 10-25 eV/Å "
        "do not own the loss (None: off)"
    )
    ema_decay: float | None = Field(default=None, gt=0, lt=1, description="saved weights are this moving average")
    sparse_head_ratio: float | None = Field(
        default=None, gt=1, description="a fresh model trains a head with < 1/ratio of the largest head's labels "
        "after the dense heads (None: all heads at once)"
    )
    model: ModelSpec = ModelSpec()


class ExplorationSpec(_Block):
    fmax_eV_A: float = Field(
        default=0.01, gt=0, description="force threshold of committee relaxations; below convergence.max_force"
    )
    max_steps: int = Field(default=200, gt=0)
    frame_interval: int = Field(default=5, gt=0, description="keep every n-th trajectory frame")
    rattled_copies: int = Field(default=2, ge=0, description="rattled copies of each charge state's best structure")
    rattle_stdev_A: float = Field(default=0.05, gt=0)
    cross_charge: bool = True
    min_distance_A: float = Field(default=0.7, gt=0)
    trust_relative: float = Field(
        default=0.25, ge=0, description="cut a relaxation only where the force spread is also above this fraction "
        "of the largest force (0: the uncertainty policy's trust_hi alone)"
    )
    start_head: Literal["low", "high"] | None = Field(
        default=None, description="relax each start on this head to a minimum first, then on `high` (None: on "
        "`high` throughout): the dense `low` labels know the way down from a distorted seed"
    )
    continue_unfinished: bool = Field(
        default=True, description="a seed relaxation cut or out of steps goes on from there next generation"
    )


class BudgetSpec(_Block):
    low: int = Field(default=2000, ge=0)
    high: int = Field(default=200, ge=0)
    confirm_high: int = Field(
        default=600, ge=0,
        description="`high` calls the confirm step may make on top of `high`; its relaxations share them evenly",
    )
    generations: int = Field(default=20, ge=1)
    walltime_s: float | None = Field(default=None, gt=0)


class ConfirmSpec(_Block):
    fmax: float = Field(default=0.02, gt=0, description="eV/Å")
    steps: int = Field(default=200, gt=0)
    low_minima: int = Field(
        default=2, ge=0,
        description="also relax the lowest N distinct `low` minima (each seed lineage's lowest `low` frame) per "
        "charge state; the lowest confirmed minimum is the ground state",
    )


class ConvergenceSpec(_Block):
    rmsd: float = Field(default=0.05, gt=0, description="Å, ground state vs previous generation")
    energy: float = Field(default=0.01, gt=0, description="eV, |high label - prediction|")
    max_force: float = Field(default=0.05, gt=0, description="eV/Å, max |F| on the high label")
    max_spread: float | None = Field(default=None, gt=0, description="eV/Å; default: uncertainty trust_lo")
    patience: int = Field(default=2, ge=1)
    finished_seeds: bool = Field(
        default=True, description="converged only once every seed's committee relaxation has reached a minimum"
    )
    confirm: ConfirmSpec | None = ConfirmSpec()


class LevelsSpec(_Block):
    """Inputs of transition levels and formation energies, all at the `high` level of theory."""

    vbm_eV: float | None = Field(default=None, description="VBM; default: computed where the high backend can (xtb)")
    band_gap_eV: float | None = Field(default=None, gt=0, description="Fermi-level range of the diagrams")
    corrections_eV: dict[str, float] = Field(
        default_factory=dict, description="finite-size correction per charged defect, e.g. {v_Si_-2: 0.4}"
    )
    chemical_potentials_eV: dict[str, float] | None = Field(
        default=None, description="absolute energy per atom of each element's reservoir, e.g. {Si: -5.4, C: -9.2}"
    )
    bulk_energy_eV: float | None = Field(default=None, description="host supercell energy; default: the host check's")

    @field_validator("corrections_eV")
    @classmethod
    def _correction_keys(cls, value: dict[str, float]) -> dict[str, float]:
        for key in value:
            if not re.match(r"^.+_(0|[+-]\d+)$", key):
                raise ValueError(f"corrections_eV key {key!r} should be a charged defect name such as `v_Si_-1`")
        return value


TASK_RESOURCES = ("label", "train", "explore")


class PoolSpec(_Block):
    """One kind of batch job (e.g. CPU nodes for labels, GPU nodes for training); unset
    keys take the `jobqueue` block's values."""

    resources: list[Literal["label", "train", "explore"]] = Field(
        min_length=1, description="Dask resources its workers offer, i.e. the tasks they run"
    )
    jobs: int = Field(default=1, ge=0, description="batch jobs started with the campaign (fixed, not adaptive)")
    queue: str | None = None
    cores: int | None = Field(default=None, ge=1)
    processes: int | None = Field(default=None, ge=1)
    memory: str | None = None
    walltime: str | None = None
    job_extra_directives: list[str] = Field(default_factory=list, description="added to the shared ones")
    job_script_prologue: list[str] = Field(default_factory=list, description="run after the shared prologue")


class JobqueueSpec(_Block):
    kind: Literal["slurm", "pbs"] = "slurm"
    queue: str | None = None
    account: str | None = None
    cores: int = Field(default=1, ge=1)
    processes: int | None = Field(default=None, ge=1, description="worker processes per job; default `cores`")
    memory: str = "4GB"
    walltime: str = "01:00:00"
    interface: str | None = Field(default=None, description="network interface of workers and scheduler, e.g. ib0")
    job_extra_directives: list[str] = Field(default_factory=list, description="extra #SBATCH / #PBS lines")
    job_script_prologue: list[str] = Field(default_factory=list)
    minimum_jobs: int = Field(default=0, ge=0)
    maximum_jobs: int = Field(default=4, ge=1)
    pools: dict[str, PoolSpec] = Field(
        default_factory=dict, description="separate worker pools; empty: one adaptive pool offering every resource"
    )

    @model_validator(mode="after")
    def _pools_cover_tasks(self) -> "JobqueueSpec":
        if self.minimum_jobs > self.maximum_jobs:
            raise ValueError(f"minimum_jobs {self.minimum_jobs} exceeds maximum_jobs {self.maximum_jobs}")
        for name in self.pools:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"pool name {name!r}: use letters, digits, _ . + -")
        offered = {r for pool in self.pools.values() if pool.jobs > 0 for r in pool.resources}
        missing = [r for r in TASK_RESOURCES if r not in offered]
        if self.pools and missing:
            raise ValueError(
                f"no pool with jobs > 0 offers {missing}; every task kind needs workers: add "
                f"{missing[0]!r} to some pool's `resources`"
            )
        return self


class ClusterSpec(_Block):
    workers: int = Field(default=2, ge=1)
    address: str | None = Field(default=None, description="existing scheduler, e.g. tcp://host:8786")
    dashboard_address: str = ":8787"
    jobqueue: JobqueueSpec | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "ClusterSpec":
        if self.address and self.jobqueue:
            raise ValueError("give either `address` (existing scheduler) or `jobqueue`, not both")
        return self


class CampaignSpec(_Block):
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
