"""Campaign against baseline: did active learning find every ground state the brute-force
search found, and for how many oracle calls?

Each campaign ground state gets a check relaxation with the `high` backend (the baseline's
optimiser settings, run here in-process and stored nowhere, so it counts for neither
run); its energy is compared with the baseline's ground state and its structure with the
campaign's prediction.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ase.io import read

from activedefect.campaign.baseline import Baseline
from activedefect.campaign.loop import Campaign
from activedefect.geometry import displacement
from activedefect.oracle.tasks import relax_with_oracle
from activedefect.seeds.defects import charged_name

#: A campaign ground state counts as found when its checked energy is at most this
#: much above the baseline's and it sits this close to its checked relaxation.
FOUND_WITHIN_eV = 0.010
FOUND_RMSD_A = 0.05


@dataclass
class StateComparison:
    """One defect × charge state."""

    defect: str
    charge: int
    campaign_predicted_energy_eV: float | None
    campaign_checked_energy_eV: float | None
    baseline_energy_eV: float | None
    energy_above_baseline_eV: float | None
    rmsd_to_checked_A: float | None
    max_displacement_to_checked_A: float | None
    check_steps: int
    campaign_seed: str | None
    baseline_seed: str | None
    found: bool


@dataclass
class RunCost:
    """What one run spent: oracle calls and seconds per fidelity, wall seconds."""

    high_calls: int
    low_calls: int
    high_seconds: float
    low_seconds: float
    wall_seconds: float

    @property
    def oracle_seconds(self) -> float:
        return self.high_seconds + self.low_seconds

    @classmethod
    def of(cls, status: dict[str, Any]) -> "RunCost":
        oracle = status["oracle"]
        return cls(high_calls=int(oracle["high"]["calls"]), low_calls=int(oracle["low"]["calls"]),
                   high_seconds=float(oracle["high"]["seconds"]), low_seconds=float(oracle["low"]["seconds"]),
                   wall_seconds=float(status["wall_s"]))


@dataclass
class Comparison:
    campaign: str
    baseline: str
    states: list[StateComparison]
    campaign_cost: RunCost
    baseline_cost: RunCost
    check_seconds: float
    check_calls: int
    ratios: dict[str, float | None] = field(default_factory=dict)

    @property
    def all_found(self) -> bool:
        return bool(self.states) and all(s.found for s in self.states)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("campaign_cost", "baseline_cost"):
            data[key]["oracle_seconds"] = getattr(self, key).oracle_seconds
        data["all_found"] = self.all_found
        data["criteria"] = {"energy_within_eV": FOUND_WITHIN_eV, "rmsd_A": FOUND_RMSD_A}
        return data

    def markdown(self) -> str:
        def num(value: float | None, fmt: str) -> str:
            return "—" if value is None else format(value, fmt)

        lines = [
            f"# Campaign `{self.campaign}` against baseline `{self.baseline}`",
            "",
            f"Found = checked energy ≤ baseline + {FOUND_WITHIN_eV * 1000:.0f} meV and RMSD ≤ {FOUND_RMSD_A} Å "
            "between the campaign's predicted structure and its high-fidelity check relaxation.",
            "",
            "| state | campaign E checked (eV) | baseline E (eV) | ΔE (meV) | RMSD (Å) | max disp. (Å) "
            "| check steps | campaign seed | baseline seed | found |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in self.states:
            delta = None if s.energy_above_baseline_eV is None else 1000 * s.energy_above_baseline_eV
            lines.append(
                f"| {charged_name(s.defect, s.charge)} | {num(s.campaign_checked_energy_eV, '.4f')} "
                f"| {num(s.baseline_energy_eV, '.4f')} | {num(delta, '+.1f')} | {num(s.rmsd_to_checked_A, '.4f')} "
                f"| {num(s.max_displacement_to_checked_A, '.4f')} | {s.check_steps} | {s.campaign_seed or '—'} "
                f"| {s.baseline_seed or '—'} | {'yes' if s.found else 'no'} |"
            )
        c, b = self.campaign_cost, self.baseline_cost
        lines += [
            "",
            "| | campaign | baseline | baseline / campaign |",
            "|---|---|---|---|",
            f"| high-fidelity calls | {c.high_calls} | {b.high_calls} | {num(self.ratios['high_calls'], '.1f')} |",
            f"| low-fidelity calls | {c.low_calls} | {b.low_calls} | {num(self.ratios['low_calls'], '.1f')} |",
            f"| oracle seconds | {c.oracle_seconds:.1f} | {b.oracle_seconds:.1f} "
            f"| {num(self.ratios['oracle_seconds'], '.2f')} |",
            f"| wall seconds | {c.wall_seconds:.1f} | {b.wall_seconds:.1f} | {num(self.ratios['wall_seconds'], '.2f')} |",
            "",
            f"Check relaxations (counted in neither run): {self.check_calls} high-fidelity calls, "
            f"{self.check_seconds:.1f} s. All ground states found: {'yes' if self.all_found else 'no'}.",
        ]
        return "\n".join(lines) + "\n"

    def write(self, out: str | Path) -> list[Path]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        md, js = out / "comparison.md", out / "comparison.json"
        md.write_text(self.markdown())
        js.write_text(json.dumps(self.as_dict(), indent=2))
        return [md, js]


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def compare(campaign_dir: str | Path, baseline_dir: str | Path) -> Comparison:
    """Check-relax every campaign ground state and compare with the baseline's."""
    campaign, baseline = Campaign.open(campaign_dir), Campaign.open(baseline_dir)
    if not isinstance(baseline, Baseline):
        raise ValueError(f"{baseline_dir} is not a baseline (run `activedefect campaign baseline SPEC --dir ...`)")
    if isinstance(campaign, Baseline):
        raise ValueError(f"{campaign_dir} is a baseline, not an active-learning campaign")
    if campaign.spec.fidelities["high"] != baseline.spec.fidelities["high"]:
        raise ValueError("the campaign and the baseline use different `high` fidelities; their energies do not compare")
    settings = baseline.relaxation
    call = baseline.backend_call("high")
    ours, theirs = campaign.status(), baseline.status()
    reference = {(g["defect"], g["charge"]): g for g in theirs["ground_states"]}
    baseline_seeds = {(g["defect"], g["charge"]): g["seed"] for g in theirs["ground_states"]}
    states, check_calls, started = [], 0, time.perf_counter()
    for ground_state in ours["ground_states"]:
        defect, charge = ground_state["defect"], ground_state["charge"]
        base = reference.get((defect, charge), {})
        base_energy = base.get("high_energy_eV")
        checked = rmsd = max_disp = None
        steps = 0
        if ground_state["structure"]:
            predicted = read(campaign.ws.root / ground_state["structure"])
            relaxation = relax_with_oracle(call, predicted, settings.fmax, settings.steps, {})
            check_calls += len(relaxation.new)
            steps = len(relaxation.path)
            ok = [(a, r) for a, r in relaxation.path if r.ok]
            if ok:
                final, label = min(ok, key=lambda pair: pair[1].energy_eV)
                checked = float(label.energy_eV)
                shift = displacement(predicted, final)
                rmsd, max_disp = shift.rmsd_A, shift.max_displacement_A
        delta = None if checked is None or base_energy is None else checked - base_energy
        found = delta is not None and delta <= FOUND_WITHIN_eV and rmsd is not None and rmsd <= FOUND_RMSD_A
        states.append(StateComparison(
            defect=defect, charge=charge, campaign_predicted_energy_eV=ground_state["predicted_energy_eV"],
            campaign_checked_energy_eV=checked, baseline_energy_eV=base_energy, energy_above_baseline_eV=delta,
            rmsd_to_checked_A=rmsd, max_displacement_to_checked_A=max_disp, check_steps=steps,
            campaign_seed=ground_state["seed"], baseline_seed=baseline_seeds.get((defect, charge)), found=found,
        ))
    ours_cost, theirs_cost = RunCost.of(ours), RunCost.of(theirs)
    ratios = {
        "high_calls": _ratio(theirs_cost.high_calls, ours_cost.high_calls),
        "low_calls": _ratio(theirs_cost.low_calls, ours_cost.low_calls),
        "oracle_seconds": _ratio(theirs_cost.oracle_seconds, ours_cost.oracle_seconds),
        "wall_seconds": _ratio(theirs_cost.wall_seconds, ours_cost.wall_seconds),
    }
    return Comparison(
        campaign=str(campaign.ws.root), baseline=str(baseline.ws.root), states=states,
        campaign_cost=ours_cost, baseline_cost=theirs_cost, check_seconds=time.perf_counter() - started,
        check_calls=check_calls, ratios=ratios,
    )
