"""`campaign start --dry-run`: validate, host-check, count the seeds and estimate the
oracle cost from one timed calculation per fidelity — without starting the loop."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from activedefect.oracle.tasks import BackendCall
from activedefect.seeds.defects import charged_name
from activedefect.seeds.hostcheck import HostCheckResult
from activedefect.seeds.preparation import host_check_task, validate_seeds
from activedefect.spec import FIDELITIES, load_spec


@dataclass
class DryRunReport:
    name: str
    seeds_per_state: dict[str, int]
    seconds_per_label: dict[str, float]
    expected_labels: dict[str, int]
    host_checks: list[HostCheckResult] = field(default_factory=list)

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
    expected = {"low": spec.budget.low, "high": spec.budget.high}
    return DryRunReport(spec.name, dict(counts), seconds, expected, checks)
