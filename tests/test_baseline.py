"""The brute-force baseline (every seed relaxed with `high`) and `bench compare` against a
campaign, on the session's tiny finished campaign and a baseline of the same spec."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from campaign_support import SPEC, run_cli, status_json, write_spec

from activedefect import Campaign
from activedefect.campaign.compare import FOUND_RMSD_A, FOUND_WITHIN_eV, compare
from activedefect.geometry import CHARGE_KEY
from activedefect.store.zarr_store import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("baseline")
    spec = write_spec(root / "tiny.yaml", {**SPEC, "host_check": {"enabled": False}})
    result = run_cli(["campaign", "baseline", str(spec), "--dir", str(root / "run")], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "run"


def test_baseline_relaxes_every_seed_with_high_only(baseline: Path):
    run = Campaign.open(baseline)
    assert run.mode == "baseline"
    status = status_json(baseline)
    assert status["mode"] == "baseline"
    assert status["oracle"]["low"]["calls"] == 0
    steps = SPEC["convergence"]["confirm"]["steps"]
    n_seeds = len(run.state["seeds"])
    assert n_seeds < status["oracle"]["high"]["calls"] <= n_seeds * (steps + 1)
    assert sorted(run.state["relaxations"]) == sorted(f"high:{s['frame']}" for s in run.state["seeds"])
    events = [e for e in run.ws.events() if e["event"] == "labelling"]
    assert events and events[0]["relaxations"] == n_seeds and events[0]["singles"] == 0


def test_baseline_ground_state_is_the_lowest_high_label_of_its_charge_state(baseline: Path):
    status = status_json(baseline)
    store = Store.open(baseline / "data.zarr", mode="r")
    labels = store.label_table("high")
    frames = store.frame_table().set_index("frame")
    labels["charge"] = frames.loc[labels["frame"], "charge"].to_numpy()
    charges = SPEC["defects"][0]["charges"]
    assert sorted(g["charge"] for g in status["ground_states"]) == sorted(charges)
    for ground_state in status["ground_states"]:
        lowest = labels[labels["charge"] == ground_state["charge"]]["energy_eV"].min()
        assert ground_state["high_energy_eV"] == pytest.approx(lowest, abs=1e-9)
        assert ground_state["predicted_energy_eV"] == ground_state["high_energy_eV"]
        atoms = ase.io.read(baseline / ground_state["structure"])
        assert atoms.info[CHARGE_KEY] == ground_state["charge"]


def test_compare_campaign_with_baseline(finished: Path, baseline: Path, tmp_path: Path):
    comparison = compare(finished, baseline)
    campaign, base = status_json(finished), status_json(baseline)
    assert [(s.defect, s.charge) for s in comparison.states] == [
        (g["defect"], g["charge"]) for g in campaign["ground_states"]]
    for state, reference in zip(comparison.states, base["ground_states"]):
        assert state.baseline_energy_eV == pytest.approx(reference["high_energy_eV"])
        assert 0 < state.check_steps <= SPEC["convergence"]["confirm"]["steps"] + 1
        assert state.energy_above_baseline_eV == pytest.approx(
            state.campaign_checked_energy_eV - state.baseline_energy_eV)
        assert state.found == (state.energy_above_baseline_eV <= FOUND_WITHIN_eV
                               and state.rmsd_to_checked_A <= FOUND_RMSD_A)
        assert np.isfinite(state.rmsd_to_checked_A) and state.rmsd_to_checked_A >= 0
    assert comparison.campaign_cost.high_calls == campaign["oracle"]["high"]["calls"]
    assert comparison.baseline_cost.high_calls == base["oracle"]["high"]["calls"]
    assert comparison.ratios["high_calls"] == pytest.approx(
        base["oracle"]["high"]["calls"] / campaign["oracle"]["high"]["calls"])
    assert comparison.check_calls == sum(s.check_steps for s in comparison.states)
    # the check relaxations are stored in neither run
    assert status_json(finished)["oracle"] == campaign["oracle"]
    assert status_json(baseline)["oracle"] == base["oracle"]

    result = run_cli(["bench", "compare", str(finished), str(baseline), "--out", str(tmp_path)])
    assert result.returncode == 0, result.stdout + result.stderr
    written = json.loads((tmp_path / "comparison.json").read_text())
    assert [s["charge"] for s in written["states"]] == [s.charge for s in comparison.states]
    assert written["baseline_cost"]["high_calls"] == base["oracle"]["high"]["calls"]
    table = (tmp_path / "comparison.md").read_text()
    assert table.count("| v_Si_") == len(comparison.states)


def test_compare_refuses_two_campaigns(finished: Path):
    with pytest.raises(ValueError, match="not a baseline"):
        compare(finished, finished)


def test_a_later_baseline_replays_exported_labels_instead_of_recomputing(baseline: Path, tmp_path: Path):
    """What keeps a long DFT baseline across sessions: its exported `high` labels, imported
    into a new baseline created with --create-only, are replayed by its relaxations."""
    exported = tmp_path / "exported"
    assert run_cli(["campaign", "export", str(baseline), "--out", str(exported)], timeout=300).returncode == 0
    spec = write_spec(tmp_path / "tiny.yaml", {**SPEC, "host_check": {"enabled": False}})
    again = tmp_path / "again"
    created = run_cli(["campaign", "baseline", str(spec), "--dir", str(again), "--create-only"], timeout=300)
    assert created.returncode == 0 and not (again / "status.json").exists()
    imported = run_cli(["campaign", "import", str(again), str(exported / "labels-high.extxyz"), "--fidelity", "high"],
                       timeout=300)
    assert imported.returncode == 0, imported.stdout[-2000:] + imported.stderr[-2000:]
    resumed = run_cli(["campaign", "resume", str(again)], timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    first, second = status_json(baseline), status_json(again)
    assert second["mode"] == "baseline" and second["stop_reason"] == first["stop_reason"]
    # extxyz keeps 8 decimals, so a replayed FIRE path can land across the 1e-5 Å grid of
    # the content hash now and then and compute that one step anew; the rest is replayed
    n_labels = [len(Store.open(run / "data.zarr", mode="r").label_table("high")) for run in (baseline, again)]
    assert n_labels[0] <= n_labels[1] <= 1.05 * n_labels[0], f"labels, first and replaying baseline: {n_labels}"
    for a, b in zip(first["ground_states"], second["ground_states"]):
        assert (a["defect"], a["charge"]) == (b["defect"], b["charge"])
        assert b["high_energy_eV"] == pytest.approx(a["high_energy_eV"], abs=1e-3)
