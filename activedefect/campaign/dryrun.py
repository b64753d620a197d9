"""`campaign start --dry-run`: validate, host-check, count the seeds and estimate what the
campaign costs — oracle calls timed once per fidelity, committee training and
relaxations timed on a short run of the spec's own model — without starting the loop.

On a CPU, training is most of a campaign's wall time, so an estimate without it misleads.
It assumes the whole label budget is spent, evenly over the G trained generations
(generation g trains on g/G of it), and every committee relaxation runs ``exploration.max_steps``; a
campaign that converges early costs less, ``budget.walltime_s`` caps it."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from math import ceil
from pathlib import Path

import numpy as np
from rich.table import Table

from activedefect.oracle.tasks import BackendCall
from activedefect.seeds.defects import Seed, charged_name
from activedefect.seeds.hostcheck import HostCheckResult
from activedefect.seeds.preparation import host_check_task, validate_seeds
from activedefect.spec import FIDELITIES, CampaignSpec, load_spec

#: Frames (seeds, repeated) the timing run trains on; labels are zeros: only the time counts.
TIMING_FRAMES = 32
#: Epochs of the two timed runs: their difference is the cost of the epochs without the set-up.
TIMING_EPOCHS = (1, 6)


@dataclass
class ModelTiming:
    """Seconds per configuration × epoch of one member, and per structure × step of one
    member's relaxation (a forward and backward pass), measured on the spec's model."""

    train_s_per_config_epoch: float
    relax_s_per_structure_step: float


@dataclass
class DryRunReport:
    name: str
    seeds_per_state: dict[str, int]
    seconds_per_label: dict[str, float]
    expected_labels: dict[str, int]
    host_checks: list[HostCheckResult] = field(default_factory=list)
    workers: dict[str, int] = field(default_factory=dict)
    hours: dict[str, float] = field(default_factory=dict)
    timing: ModelTiming | None = None

    @property
    def walltime_capped(self) -> bool:
        """``budget.walltime_s`` ends the campaign before the work priced here."""
        parts = ("oracle", "training", "exploration")
        return bool(self.hours) and self.hours["campaign"] < sum(self.hours[p] for p in parts)

    def table(self) -> Table:
        table = Table(title=f"Dry run of {self.name}")
        table.add_column("item")
        table.add_column("value")
        for check in self.host_checks:
            verdict = "passed" if check.passed else "FAILED"
            table.add_row(f"host check ({check.fidelity})",
                          f"{verdict}: drop {check.drop_eV_per_atom:.4f} eV/atom, max displacement "
                          f"{check.max_displacement_A:.3f} Å")
        for state, n in self.seeds_per_state.items():
            table.add_row(f"seeds {state}", str(n))
        for fidelity in FIDELITIES:
            labels = self.expected_labels[fidelity]
            seconds = self.seconds_per_label[fidelity]
            table.add_row(f"{fidelity}: s per label", f"{seconds:.2f}")
            table.add_row(f"{fidelity}: labels (budget)", f"≤ {labels} → ≤ {labels * seconds / 3600:.2f} core-hours")
        if self.timing is not None:
            table.add_row("training: s per configuration·epoch", f"{self.timing.train_s_per_config_epoch:.4f}")
            table.add_row("relaxation: s per structure·step", f"{self.timing.relax_s_per_structure_step:.4f}")
        for part, hours in self.hours.items():
            resource = {"oracle": "label", "training": "train", "exploration": "explore"}.get(part)
            on = f" on {self.workers[resource]} workers" if resource else ""
            capped = " (budget.walltime_s)" if part == "campaign" and self.walltime_capped else ""
            table.add_row(f"wall time ({part}{on})", f"{hours:.2f} h ({60 * hours:.0f} min){capped}")
        return table


def dry_run(spec_path: str | Path) -> DryRunReport:
    """Everything but the loop; raises the same errors `campaign start` would."""
    spec = load_spec(spec_path)
    seeds = validate_seeds(spec)
    counts = Counter(charged_name(s.defect, s.charge) for s in seeds)
    seconds, checks = {}, []
    for fidelity in FIDELITIES:
        block = spec.fidelities[fidelity]
        call = BackendCall(block.backend, dict(block.settings), block.timeout_s, block.retry.attempts)
        if spec.host_check.enabled:
            checks.append(host_check_task(call, spec, fidelity))
        result = call.build().calculate(seeds[0].atoms, seeds[0].charge, seeds[0].multiplicity)
        seconds[fidelity] = result.wall_s
    expected = {"low": spec.budget.low, "high": spec.budget.high + spec.budget.confirm_high}
    timing = time_model(spec, seeds)
    workers = cluster_workers(spec)
    starts = exploration_starts_per_generation(spec, seeds)
    hours = wall_hours(spec, starts, seconds, timing, workers)
    return DryRunReport(spec.name, dict(counts), seconds, expected, checks, workers, hours, timing)


def cluster_workers(spec: CampaignSpec) -> dict[str, int]:
    """Workers per task kind on the cluster the campaign would start."""
    if spec.cluster.jobqueue is not None:
        from activedefect.execution.jobqueue import workers_per_resource

        return workers_per_resource(spec.cluster.jobqueue)
    return dict.fromkeys(("label", "train", "explore"), spec.cluster.workers)


def exploration_starts_per_generation(spec: CampaignSpec, seeds: list[Seed]) -> int:
    """Seeds, ``rattled_copies`` of each state's best structure and, with ``cross_charge``,
    each best structure re-charged to every other charge state of its defect (at most)."""
    charges = Counter(s.defect for s in {(s.defect, s.charge): s for s in seeds}.values())
    recharged = sum(n * (n - 1) for n in charges.values()) if spec.exploration.cross_charge else 0
    return len(seeds) + sum(charges.values()) * spec.exploration.rattled_copies + recharged


def time_model(spec: CampaignSpec, seeds: list[Seed]) -> ModelTiming:
    """Train one member of the spec's model for :data:`TIMING_EPOCHS` on a few seed frames
    (the difference is the cost of the epochs without the set-up), and time a relaxation
    step of a few structures on it."""
    import torch

    from activedefect.model.committee import Committee, train_member
    from activedefect.model.graphs import REF_ENERGY_KEY, REF_FORCES_KEY
    from activedefect.model.training import committee_config, train_settings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on a worker
    frames = []
    for i in range(TIMING_FRAMES):
        atoms = seeds[i % len(seeds)].atoms.copy()
        atoms.info[REF_ENERGY_KEY] = 0.0
        atoms.arrays[REF_FORCES_KEY] = np.zeros((len(atoms), 3))
        frames.append(atoms)
    records = [{"charge": s.charge, "multiplicity": s.multiplicity} for s in seeds]
    elements = sorted({e for s in seeds for e in s.atoms.get_chemical_symbols()})
    config = committee_config(spec, records, elements)
    settings = train_settings(spec)
    with tempfile.TemporaryDirectory() as tmp:
        walls = {}
        for run, epochs in enumerate((1, *TIMING_EPOCHS)):  # the first run pays for imports and compilation
            start = time.perf_counter()
            train_member({"low": frames}, config, 0, epochs, Path(tmp) / f"timing-{run}.model", settings=settings)
            walls[run] = time.perf_counter() - start
        committee = Committee.load([Path(tmp) / "timing-2.model"])
        batch = frames[:4]
        committee.predict(batch, "high")  # the first call compiles
        start = time.perf_counter()
        committee.predict(batch, "high")
        relax_s = (time.perf_counter() - start) / len(batch)
    torch.set_num_threads(threads)
    train_s = max(walls[2] - walls[1], 0.0) / ((TIMING_EPOCHS[1] - TIMING_EPOCHS[0]) * len(frames))
    return ModelTiming(train_s, relax_s)


def wall_hours(spec: CampaignSpec, starts: int, seconds_per_label: dict[str, float], timing: ModelTiming,
               workers: dict[str, int]) -> dict[str, float]:
    """Wall time (hours) of the oracle calls, the training and the committee relaxations
    (``starts`` per generation: seeds and rattled copies) of the whole campaign, and
    their sum (see the module docstring for the assumptions)."""
    budget, committee, exploration = spec.budget, spec.committee, spec.exploration
    oracle_s = (budget.low * seconds_per_label["low"]
                + (budget.high + budget.confirm_high) * seconds_per_label["high"]) / max(1, workers["label"])
    generations = budget.generations - 1  # generation 0 trains nothing
    labels = budget.low + budget.high
    config_epochs = sum((committee.epochs if g == 1 else committee.finetune_epochs) * labels * g / generations
                        for g in range(1, generations + 1))
    member_s = config_epochs * timing.train_s_per_config_epoch
    training_s = ceil(committee.size / max(1, workers["train"])) * member_s
    exploration_s = (generations * starts * exploration.max_steps * committee.size
                     * timing.relax_s_per_structure_step / max(1, workers["explore"]))
    hours = {"oracle": oracle_s / 3600, "training": training_s / 3600, "exploration": exploration_s / 3600}
    hours["campaign"] = sum(hours.values())
    if budget.walltime_s is not None:
        hours["campaign"] = min(hours["campaign"], budget.walltime_s / 3600)
    return hours
