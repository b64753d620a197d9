"""The blocks of a campaign spec (host, defects, fidelities, committee, exploration, budget,
convergence, levels, cluster): frozen pydantic models whose validators name the bad field and
the fix. :class:`activedefect.spec.CampaignSpec` puts them together."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"
#: Largest |charge| of a defect state accepted: point defects in semiconductors hold a few
#: electrons or holes (doped guesses stay within the oxidation states); tens is a typo,
#: and ShakeNBreak fails on such charges with an IndexError.
MAX_ABS_CHARGE = 10


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostSpec(Block):
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


class SubstitutionSpec(Block):
    site: str = Field(description="host element replaced")
    element: str = Field(description="element put on the site")


class InterstitialSpec(Block):
    element: str
    frac_coords: tuple[float, float, float] = Field(description="fractional coordinates in the supercell")


class DefectSpec(Block):
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


class RetrySpec(Block):
    attempts: int = Field(default=1, ge=0, le=5, description="extra attempts after an SCF failure")


class FidelitySpec(Block):
    backend: str = Field(description="xtb, gpaw, vasp or ase")
    settings: dict[str, Any] = Field(default_factory=dict, description="passed to the backend's calculator")
    executor: Literal["dask", "pyiron"] = Field(
        default="dask", description="pyiron: each label is a pyiron job in the campaign's pyiron project"
    )
    timeout_s: float | None = Field(default=None, gt=0)
    retry: RetrySpec = RetrySpec()


class HostCheckSpec(Block):
    enabled: bool = True
    max_drop_eV_per_atom: float = Field(default=0.01, gt=0)
    rattle_stdev_A: float = Field(default=0.1, gt=0)
    max_displacement_A: float = Field(default=0.5, gt=0)
    fmax_eV_A: float = Field(default=0.05, gt=0)
    max_steps: int = Field(default=300, gt=0)


class ModelSpec(Block):
    """MACE architecture; the defaults (16 channels, r_max 4.5 Å) train 16-atom SiC cells at
    122-135 configurations x epochs per second on one CPU core, 1.9-2.0x 32 channels at 5 Å."""

    num_channels: int = Field(default=16, gt=0)
    max_L: int = Field(default=0, ge=0, le=3)
    max_ell: int = Field(default=2, ge=1, le=4)
    correlation: int = Field(default=2, ge=1, le=4)
    num_interactions: int = Field(default=2, ge=1, le=4)
    r_max_A: float = Field(default=4.5, gt=1.0)
    mlp_irreps: str = "16x0e"
    charge_embedding_dim: int = Field(default=16, gt=0)
    spin_embedding: bool = False


class CommitteeSpec(Block):
    """The committee and how it trains. The defaults are the recipe measured best on the paper's
    case and the V_Si/V_C benchmarks (docs/benchmarks.md, "Defaults"): two members side by side
    (one per worker on two cores), each seeing every label near the minima, trained robustly on
    every third step of the dense `low` screen, the sparse `high` head after the dense one."""

    size: int = Field(default=2, ge=1, le=32)
    epochs: int = Field(default=30, gt=0)
    finetune_epochs: int = Field(default=10, gt=0)
    bootstrap: bool = Field(
        default=False, description="resample each member's labels with replacement (False: members differ by seed "
        "only, so each sees every label near the minima)"
    )
    valid_fraction: float = Field(default=0.1, ge=0.0, lt=0.5)
    batch_size: int = Field(default=8, gt=0)
    learning_rate: float = Field(default=0.01, gt=0)
    minimum_weight: float = Field(
        default=100.0, ge=0,
        description="extra loss weight of labels near each charge state's lowest: 1 + w·exp(-ΔE/minimum_window_eV)",
    )
    minimum_window_eV: float = Field(default=0.1, gt=0)
    trajectory_stride: int = Field(
        default=3, ge=1, description="train on every n-th step (and the last) of each oracle relaxation from a seed "
        "or a confirm start: its consecutive steps are near-duplicates"
    )
    hot_force_eV_A: float | None = Field(
        default=1.0, gt=0, description="frames weigh 1/(1 + (F_rms/hot_force_eV_A)^2): distorted seeds at 10-25 eV/Å "
        "do not own the loss (None: off)"
    )
    ema_decay: float | None = Field(default=0.99, gt=0, lt=1, description="saved weights are this moving average")
    sparse_head_ratio: float | None = Field(
        default=5.0, gt=1, description="a fresh model trains a head with < 1/ratio of the largest head's labels "
        "after the dense heads (None: all heads at once)"
    )
    sample_by_weight: bool = Field(
        default=False, description="each epoch draws frames in proportion to their loss weight (minima emphasis, "
        "hot-force factor) instead of visiting every frame once: optimiser steps go where the weight is; opt-in "
        "(the tests' 15-epoch campaign found no committee minimum with it, docs/benchmarks.md)"
    )
    model: ModelSpec = ModelSpec()


class ExplorationSpec(Block):
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
        default=0.5, ge=0, description="cut a relaxation only where the force spread is also above this fraction "
        "of the largest force (0: the uncertainty policy's trust_hi alone)"
    )
    start_head: Literal["low", "high"] | None = Field(
        default="low", description="relax each start on this head to a minimum first, then on `high` (None: on "
        "`high` throughout): the dense `low` labels know the way down from a distorted seed"
    )
    continue_unfinished: bool = Field(
        default=True, description="a seed relaxation cut or out of steps goes on from there next generation"
    )


class BudgetSpec(Block):
    low: int = Field(default=10000, ge=0, description="`low` calls; the screen reserves 151 per seed (45 seeds: 6795) and uses ~70")
    high: int = Field(default=200, ge=0)
    confirm_high: int = Field(
        default=600, ge=0,
        description="`high` calls the confirm step may make on top of `high`; its relaxations share them evenly",
    )
    generations: int = Field(default=20, ge=1)
    walltime_s: float | None = Field(default=None, gt=0)


#: BFGS's initial Hessian (× identity, eV/Å²) for `high` relaxations from near a minimum:
#: 61 calls for the paper case's nine confirm starts at 30, 89 at ASE's 70 (docs/benchmarks.md).
BFGS_ALPHA_EV_A2 = 30.0


class ConfirmSpec(Block):
    fmax: float = Field(default=0.02, gt=0, description="eV/Å")
    steps: int = Field(default=200, gt=0)
    optimizer: Literal["bfgs", "fire"] = Field(
        default="bfgs",
        description="ASE optimiser of the `high` relaxations; they start near a minimum, where BFGS needs a "
        "third of FIRE's calls (docs/benchmarks.md)",
    )
    bfgs_alpha_eV_A2: float = Field(
        default=BFGS_ALPHA_EV_A2, gt=0, description="eV/Å², BFGS's initial Hessian (× identity)"
    )
    low_minima: int = Field(
        default=2, ge=0,
        description="also relax the lowest N distinct `low` minima (each seed lineage's lowest `low` frame) per "
        "charge state; the lowest confirmed minimum is the ground state",
    )


class ConvergenceSpec(Block):
    rmsd: float = Field(default=0.05, gt=0, description="Å, ground state vs previous generation")
    energy: float = Field(default=0.01, gt=0, description="eV, |high label - prediction|")
    max_force: float = Field(default=0.05, gt=0, description="eV/Å, max |F| on the high label")
    max_spread: float | None = Field(default=None, gt=0, description="eV/Å; default: uncertainty trust_lo")
    patience: int = Field(default=2, ge=1)
    finished_seeds: bool = Field(
        default=True, description="converged only once every seed's committee relaxation has reached a minimum"
    )
    confirm: ConfirmSpec | None = ConfirmSpec()


class LevelsSpec(Block):
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


class PoolSpec(Block):
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


class JobqueueSpec(Block):
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


class ClusterSpec(Block):
    workers: int = Field(default=2, ge=1)
    address: str | None = Field(default=None, description="existing scheduler, e.g. tcp://host:8786")
    dashboard_address: str = ":8787"
    jobqueue: JobqueueSpec | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "ClusterSpec":
        if self.address and self.jobqueue:
            raise ValueError("give either `address` (existing scheduler) or `jobqueue`, not both")
        return self

