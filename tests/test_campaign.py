"""The campaign end to end on real parts (LocalCluster, tblite, MACE, zarr): status and
directory of a finished campaign, the dashboard page and the lock while one runs, bad
specs that stop before any work, and resumes after the driver is killed at named points
and at a random time.

One tiny campaign (15-atom v_Si in 3C-SiC, charges 0 and -2, 2 members, 3 generations)
runs once per session as the CLI in a subprocess; the lock and dashboard tests watch it
while it runs and the other tests read what it leaves. The kill tests run a still
smaller one (one charge state, 2 generations, no host check).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from campaign_support import (
    CLI,
    KILL_SPEC,
    PYTHON_RESUME,
    RUN_TIMEOUT_S,
    SPEC,
    Driver,
    cli_env,
    fetch,
    fetch_json,
    flat,
    label_tables,
    model_files,
    run_cli,
    status_json,
    write_spec,
)
from page_browser import PageBrowser, chromium_available
from typer.testing import CliRunner

from activedefect.campaign.loop import STOP_REASONS, Campaign
from activedefect.cli import app
from activedefect.geometry import CHARGE_KEY
from activedefect.results.directory import GENERATION_PHASES, ground_state_frames
from activedefect.seeds.host import bundled_structure
from activedefect.spec_blocks import ConfirmSpec
from activedefect.store.workspace import Workspace
from activedefect.store.zarr_store import Store


@pytest.mark.slow
def test_second_driver_is_refused_while_a_campaign_runs(shared_run: Driver):
    shared_run.wait_for("the driver's `run` event", lambda: any(e["event"] == "run" for e in shared_run.events()))
    labels_before = status_json(shared_run.directory)["oracle"]
    result = run_cli(["campaign", "resume", str(shared_run.directory)], timeout=120)
    message = flat(result.stdout + result.stderr)
    assert result.returncode == 2, message
    assert "already running" in message and str(shared_run.proc.pid) in message, message
    assert shared_run.alive, "the refused second driver stopped the running one"
    after = status_json(shared_run.directory)["oracle"]
    assert all(after[f]["calls"] >= labels_before[f]["calls"] for f in after)


def _compared(status: dict) -> dict[str, str]:
    """The numbers the campaign page shows (element id -> text) for a status object."""
    shown = {"generation": str(status["generation"]), "phase": str(status["phase"]),
             "converged": str(status["converged"]), "stop_reason": str(status["stop_reason"])}
    shown.update({f"calls-{f}": str(status["oracle"][f]["calls"]) for f in ("low", "high")})
    for g in status["ground_states"]:
        for key, column in (("high", "high_energy_eV"), ("predicted", "predicted_energy_eV")):
            shown[f"gs-{g['state']}-{key}"] = "—" if g[column] is None else f"{g[column]:.4f}"
        shown[f"gs-{g['state']}-converged"] = str(g["converged"])
    return shown


@pytest.mark.slow
@pytest.mark.skipif(not chromium_available(), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_dashboard_page_follows_the_running_campaign(shared_run: Driver):
    """The page in headless Chromium, opened once while the campaign runs: its plots
    render, it follows the campaign by pushes (never reloaded), and whenever the driver's
    last push is what `status --json` says, the page shows exactly those numbers."""
    page = shared_run.campaign_page()
    assert page.startswith("http://") and page.endswith("/activedefect")
    assert 'href="activedefect"' in (fetch(page.replace("/activedefect", "/status")) or ""), "not in the dashboard menu"
    browser = PageBrowser()
    seen: list[dict] = []
    matched: list[dict] = []  # pushes the page was compared against status --json at
    try:
        browser.open(page)
        browser.driver.execute_script("window.openedOnce = true")
        deadline = time.monotonic() + 400
        while shared_run.alive and time.monotonic() < deadline:
            before = fetch_json(page + "/json")
            status = status_json(shared_run.directory)
            time.sleep(1.5)  # the page checks for pushes every 0.5 s
            shown = browser.texts()
            after = fetch_json(page + "/json")
            if before is None or after is None:  # not published yet, or the cluster closed
                continue
            assert before["generation"] <= status["generation"] <= after["generation"] + 1
            assert after["name"] == status["name"] == SPEC["name"]
            seen.append(after)
            if before["revision"] == after["revision"] and _compared(after) == _compared(status):
                expected = _compared(status)
                assert {k: shown.get(k) for k in expected} == expected, f"page {shown} vs status --json {status}"
                if after["phase"] in GENERATION_PHASES:
                    assert shown.get("working_on") == str(after["generation"] + 1)
                matched.append(after)
            # the landscape comes after exploration, the history after labelling: wait for both
            if matched and matched[-1]["landscape"] and matched[-1]["history"] and len({s["generation"] for s in seen}) >= 2:
                break
        assert matched and matched[-1]["landscape"] and matched[-1]["history"], \
            f"never a moment with a landscape and a history where page and status agree: {seen[-1:]}"
        last = matched[-1]
        assert browser.drawn_plots() == 4 + len(last["landscape"]), "not every plot rendered"
        for state, points in last["landscape"].items():
            drawn = sum(browser.source_length(f"landscape-{state}-{part}") or 0 for part in ("relaxed", "stopped"))
            assert drawn == len(points), f"{state}: {drawn} points drawn, {len(points)} pushed"
        assert browser.source_length("committee") == len(last["committee"]) >= 1
        assert browser.driver.execute_script("return window.openedOnce === true"), "the page was reloaded"
    finally:
        browser.close()
    generations = [s["generation"] for s in seen]
    assert len(set(generations)) >= 2, f"the page never changed generation: {generations}"
    assert generations == sorted(generations)
    calls = [sum(s["oracle"][f]["calls"] for f in ("low", "high")) for s in seen]
    assert calls[-1] > calls[0], f"the page's oracle calls never grew: {calls}"
    assert matched[-1]["timeline"], "no oracle timeline after generation 1"


@pytest.mark.slow
def test_status_json_of_a_finished_campaign(finished: Path):
    result = run_cli(["campaign", "status", str(finished), "--json"], timeout=120)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["name"] == SPEC["name"]
    assert status["stop_reason"] in STOP_REASONS and status["stop_reason"] != "error"
    assert status["converged"] is (status["stop_reason"] == "converged") and status["working_on"] is None
    done = [e["generation"] for e in Workspace(finished).events() if e["event"] == "generation"]
    assert status["generation"] == max(done) and sorted(done) == list(range(max(done) + 1))
    if status["stop_reason"] == "max_generations":
        assert status["generation"] == SPEC["budget"]["generations"] - 1
    assert set(status["oracle"]) == {"low", "high"}
    for fidelity, totals in status["oracle"].items():
        assert set(totals) >= {"calls", "failures", "seconds"}
        assert totals["calls"] > 0 and totals["seconds"] > 0
    expected = sorted(("v_Si", q) for d in SPEC["defects"] for q in d["charges"])
    assert sorted((g["defect"], g["charge"]) for g in status["ground_states"]) == expected
    if status["converged"]:
        assert all(g["converged"] for g in status["ground_states"])


@pytest.mark.slow
def test_oracle_totals_are_the_store_labels(finished: Path):
    status = status_json(finished)
    for fidelity, table in label_tables(finished).items():
        retries = sum(int(m.get("retries", 0)) for m in table["metadata"])
        assert status["oracle"][fidelity]["calls"] == len(table) + retries
        assert status["oracle"][fidelity]["failures"] == int((table["status"] != "ok").sum())
        assert not table["wall_s"].isna().any(), "a label without its wall time"
        assert status["oracle"][fidelity]["seconds"] == pytest.approx(table["wall_s"].sum())
        assert table.groupby(["frame", "settings_hash"]).size().max() == 1, "a frame labelled twice"


@pytest.mark.slow
def test_ground_states_read_back(finished: Path):
    """The written ground state is the lowest end of the confirm relaxations, which
    started from the committee's candidate and from distinct `low` minima."""
    status = status_json(finished)
    state = Workspace(finished).read_state()
    store = Store.open(finished / "data.zarr", mode="r")
    high_hash = Campaign.open(finished).settings_hash("high")
    high = store.label_table("high")
    for gs in status["ground_states"]:
        assert gs["structure"] is not None and not Path(gs["structure"]).is_absolute()
        atoms = ase.io.read(finished / gs["structure"])
        assert atoms.info[CHARGE_KEY] == gs["charge"]
        assert len(atoms) == 15
        name = f"{gs['defect']}_{gs['charge']}"
        record, confirm = state["ground_states"].get(name), state["confirm"][name]
        # a state whose committee relaxations all stopped short has no prediction (and
        # its ground state comes from the `low` minima), never a stale one
        assert isinstance(gs["converged"], bool)
        assert isinstance(gs["predicted_energy_eV"], float) if record else gs["predicted_energy_eV"] is None
        candidates = confirm["candidates"]
        committee = [c["start_frame"] for c in candidates if c["source"] == "committee"]
        own = [h for h in state["history"] if h["state"] == name and h.get("confirmed_from") is None]
        assert committee == ([own[-1]["frame"]] if record else [])
        if record is not None and "frame" in confirm:  # the record describes the confirmed structure
            assert record["frame"] == confirm["frame"] and record["confirmed_from"] == confirm["source"]
            assert record["high_energy_eV"] == confirm["final_energy_eV"]
            assert record["high_max_force_eV_A"] == confirm["final_max_force_eV_A"]
            assert np.isfinite(record["predicted_energy_eV"]) and record["generation"] == own[-1]["generation"]
            assert record["converged"] is (not record["reasons"])
        starts = [store.get_frame(c["start_frame"]) for c in candidates]
        assert len({c["start_frame"] for c in candidates}) == len(candidates), "a start relaxed twice"
        assert all(a.info[CHARGE_KEY] == gs["charge"] for a in starts)
        assert confirm["final_energy_eV"] == min(c["final_energy_eV"] for c in candidates)
        assert store.get_frame(confirm["frame"]).get_positions() == pytest.approx(atoms.get_positions(), abs=1e-5)
        assert gs["seed"] == confirm["seed"] == atoms.info["seed"]
        row = store.label_row("high", confirm["frame"], high_hash)
        assert gs["high_energy_eV"] == pytest.approx(high.loc[row, "energy_eV"]) == confirm["final_energy_eV"]
        assert atoms.info["high_energy_eV"] == pytest.approx(confirm["final_energy_eV"])


@pytest.mark.slow
def test_confirm_starts_from_low_minima_where_the_committee_found_no_minimum(finished: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    campaign = Campaign.open(copy)
    state = campaign.state
    dropped = sorted(state["ground_states"])[0]
    del state["ground_states"][dropped]
    state["confirm"] = {}
    starts = campaign._confirm_starts(ConfirmSpec(low_minima=2))
    assert set(starts) == {f"{s['defect']}_{s['charge']}" for s in state["seeds"]}
    assert {c["source"] for c in starts[dropped]} == {"low minimum"} and len(starts[dropped]) >= 1
    for name, candidates in starts.items():
        if name in state["ground_states"]:  # the committee's minimum first, where it has one
            assert candidates[0] == {"source": "committee", "start_frame": state["ground_states"][name]["frame"],
                                     "seed": state["ground_states"][name]["seed"]}
        else:
            assert {c["source"] for c in candidates} == {"low minimum"}
        low = [c["low_energy_eV"] for c in candidates if c["source"] == "low minimum"]
        assert low == sorted(low) and len(low) <= 2
    assert all(c["source"] == "committee" for cs in campaign._confirm_starts(ConfirmSpec(low_minima=0)).values()
               for c in cs)
    campaign._close_store()


@pytest.mark.slow
def test_the_confirm_step_keeps_to_its_budget_and_records_a_crashed_task(finished: Path, tmp_path: Path):
    """On a copy of the finished campaign, with a real Dask worker: a confirm budget of 3
    calls per start cuts every relaxation at 3 evaluations; none left skips the step; a
    confirm task that dies in its worker is a recorded failure, not a stopped campaign."""
    from distributed import Client, LocalCluster

    from activedefect.oracle.tasks import BackendCall

    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    campaign = Campaign.open(copy)
    confirm = ConfirmSpec(fmax=0.001, steps=50, low_minima=1)

    def with_budget(calls: int) -> None:
        campaign.spec = campaign.spec.model_copy(
            update={"budget": campaign.spec.budget.model_copy(update={"confirm_high": calls})})
        campaign.state.update(confirm={}, confirm_calls=0)

    with LocalCluster(n_workers=1, threads_per_worker=1, resources={"label": 1}, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        campaign._client = client
        with_budget(0)
        n_starts = sum(len(c) for c in campaign._confirm_starts(confirm).values())
        assert n_starts >= 2
        with_budget(3 * n_starts)
        campaign._confirm(confirm)
        candidates = [c for done in campaign.state["confirm"].values() for c in done["candidates"]]
        assert len(candidates) == n_starts and all(c["steps"] <= 3 for c in candidates)
        assert 0 <= campaign.state["confirm_calls"] <= 3 * n_starts

        with_budget(n_starts - 1)
        campaign._confirm(confirm)
        assert campaign.state["confirm"] == {}
        assert campaign.ws.events()[-1]["event"] == "confirm-skipped"

        with_budget(300)
        hashes = {f: campaign.settings_hash(f) for f in ("low", "high")}
        campaign.settings_hash = hashes.__getitem__  # the task dies on the worker, where it builds the backend
        campaign.backend_call = lambda fidelity: BackendCall("no-such-backend", {}, None, 0)
        campaign._confirm(confirm)
    failed = [e for e in campaign.ws.events() if e["event"] == "confirm-failed"]
    assert len(failed) == n_starts and all("no-such-backend" in e["error"] for e in failed)
    for name, done in campaign.state["confirm"].items():
        assert all("error" in c for c in done["candidates"])
        assert "final_energy_eV" not in done  # nothing relaxed: the state keeps its candidate
    assert campaign.status()["confirm_calls"] == 0
    campaign._client = None
    campaign._close_store()


def test_ground_state_frames_prefer_the_confirmed_minimum():
    state = {
        "ground_states": {"v_Si_0": {"frame": 3}, "v_Si_-1": {"frame": 5}},
        "confirm": {"v_Si_0": {"frame": 40}, "v_Si_-1": {"source": "committee"}, "v_Si_-2": {"frame": 77}},
    }
    # v_Si_-1's confirm relaxations all failed (no frame): the committee's candidate stays
    assert ground_state_frames(state) == {"v_Si_-1": 5, "v_Si_-2": 77, "v_Si_0": 40}
    assert ground_state_frames({"ground_states": {"v_Si_0": {"frame": 3}}}) == {"v_Si_0": 3}


@pytest.mark.slow
def test_campaign_directory_layout(finished: Path):
    assert (finished / "campaign.yaml").is_file() and (finished / "state.json").is_file()
    assert (finished / "data.zarr" / "zarr.json").is_file()
    inputs = {p.name for p in (finished / "inputs").iterdir()}
    assert "SiC_conv.vasp" in inputs and "original-tiny.yaml" in inputs
    frozen = yaml.safe_load((finished / "campaign.yaml").read_text())
    assert frozen["host"]["structure"] == "inputs/SiC_conv.vasp"
    # every oracle relaxation was stored, so no journal of one in flight is left
    assert (finished / "journal").is_dir() and not list((finished / "journal").iterdir())
    last = status_json(finished)["generation"]
    for generation in range(1, last + 1):
        members = sorted(p.name for p in (finished / "models" / f"gen-{generation:03d}").glob("*.model"))
        assert members == [f"member-{i}.model" for i in range(SPEC["committee"]["size"])]
    events = Workspace(finished).events()
    assert [e["event"] for e in events][:2] == ["created", "run"] and events[-1]["event"] == "stopped"
    trained = [(e["generation"], e["member"]) for e in events if e["event"] == "trained"]
    assert sorted(trained) == [(g, m) for g in range(1, last + 1) for m in range(SPEC["committee"]["size"])]


@pytest.mark.slow
def test_resuming_a_finished_campaign_changes_nothing(finished: Path):
    before = {f: len(t) for f, t in label_tables(finished).items()}
    models = model_files(finished)
    result = run_cli(["campaign", "resume", str(finished)], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "already stopped" in flat(result.stdout)
    assert {f: len(t) for f, t in label_tables(finished).items()} == before
    assert model_files(finished) == models


@pytest.mark.slow
def test_assessing_a_generation_again_changes_nothing(finished: Path, tmp_path: Path):
    """A kill between a generation's assessment and its `generation-done` save makes the
    resume assess it again: the records must not count themselves as their predecessor."""
    import pickle

    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    campaign = Campaign.open(copy)
    generation = campaign.state["generation"]
    exploration = pickle.loads((copy / "generations" / f"gen-{generation:03d}" / "exploration.pkl").read_bytes())
    records = json.loads(json.dumps(campaign.state["ground_states"]))
    history = len(campaign.state["history"])
    campaign._assess(generation, exploration)
    assert campaign.state["ground_states"] == records
    assert len(campaign.state["history"]) == history


@pytest.mark.slow
def test_unfinished_seed_relaxations_go_on_where_they_stopped(finished: Path):
    """Generation 2 starts each seed whose generation-1 committee relaxation was cut (or
    ran out of steps) where it stopped, or where the oracle relaxation from there ended."""
    campaign = Campaign.open(finished)
    explored = [pickle.loads((finished / "generations" / f"gen-{g:03d}" / "exploration.pkl").read_bytes()).results
                for g in (1, 2)]
    store = campaign.store
    ends = {int(key.split(":")[1]): end for key, end in campaign.state.get("relaxation_ends", {}).items()}
    seeds = {s["seed"] for s in campaign.state["seeds"]}
    went_on = 0
    for before, after in zip(explored[0], explored[1]):  # seeds come first, in the same order
        if before.seed not in seeds or before.status not in ("cut_untrusted", "max_steps"):
            continue
        assert (after.seed, after.charge) == (before.seed, before.charge)
        stop = store.find_frame(before.atoms)
        expected = store.get_frame(ends[stop]) if stop in ends else before.atoms
        np.testing.assert_allclose(after.frames[0].atoms.positions, expected.positions, atol=1e-5)
        went_on += 1
    assert went_on, "no seed relaxation of generation 1 stopped unfinished: nothing went on"


# --------------------------------------------------------------------- small parts
def test_log_lines_cut_by_a_kill_cost_only_themselves(tmp_path: Path):
    """A kill mid-append leaves a line without its newline: the next event or metric
    record must still read back, and the cut one is skipped."""
    ws = Workspace(tmp_path)
    ws.log_event("first")
    ws.append_metrics({"kind": "a"})
    for path in (ws.events_path, ws.metrics_path):
        with open(path, "a") as handle:
            handle.write('{"time": 1, "event": "cu')
    ws.log_event("after")
    ws.append_metrics({"kind": "b"})
    assert [e["event"] for e in ws.events()] == ["first", "after"]
    assert ws.metrics() == [{"kind": "a"}, {"kind": "b"}]


# --------------------------------------------------------------------- bad specs
@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda s: s["fidelities"]["high"].update(backend="nosuch"), ["fidelities.high.backend", "nosuch"]),
        (lambda s: s.update(multiplicity={"v_Si_0": 2}), ["multiplicity", "v_Si_0=2", "odd multiplicity"]),
        (lambda s: s["defects"][0].update(vacancy="Ga"), ["vacancy", "Ga", "host elements"]),
    ],
    ids=["unknown-backend", "impossible-multiplicity", "element-not-in-host"],
)
def test_bad_spec_fails_before_any_work(change, words, tmp_path: Path):
    spec = json.loads(json.dumps(SPEC))
    change(spec)
    path = write_spec(tmp_path / "bad.yaml", spec)
    directory = tmp_path / "run"
    result = run_cli(["campaign", "start", str(path), "--dir", str(directory)], timeout=120)
    message = flat(result.stdout + result.stderr)
    assert result.returncode == 2, message
    assert "error" in message and all(word in message for word in words), message
    assert not directory.exists(), "a campaign directory was created for a bad spec"


def test_multiplicity_beyond_xtb_valence_electrons_is_refused(tmp_path: Path):
    from activedefect.seeds.preparation import validate_seeds
    from activedefect.spec import SpecError, load_spec

    path = write_spec(tmp_path / "bad.yaml", {**SPEC, "multiplicity": {"v_Si_0": 63}})
    with pytest.raises(SpecError, match="fidelities.low"):
        validate_seeds(load_spec(path))


# --------------------------------------------------------------------- kills and resumes
@pytest.fixture
def kill_spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path / "spec" / "kill.yaml", KILL_SPEC)


def killed(driver: Driver, what: str) -> None:
    """The driver died by SIGKILL and took every process it had spawned with it."""
    rc = driver.wait()
    assert rc == -signal.SIGKILL, f"{what}: expected SIGKILL, rc {rc}; log:\n{driver.output()[-3000:]}"
    assert driver.descendants, "no worker processes were seen"
    survivors = driver.survivors()
    assert not survivors, f"{what}: processes outlived the killed driver: {survivors}"


def resume(directory: Path, log: Path, kill_at: str | None = None) -> Driver:
    return Driver(["campaign", "resume", str(directory)], directory, log, kill_at=kill_at)


def snapshot(directory: Path) -> dict:
    """What a killed campaign had finished: the generation it was in, the (fidelity,
    frame) pairs with a stored label, the finished oracle relaxations, the model files."""
    state = Workspace(directory).read_state()
    stored = (directory / "data.zarr" / "zarr.json").exists()
    tables = label_tables(directory) if stored else {}
    return {
        "generation": state.get("generation", -1) + 1,
        "labelled": {(f, int(frame)) for f, table in tables.items() for frame in table["frame"]},
        "relaxations": set(state.get("relaxations", [])),
        "models": model_files(directory),
    }


def assert_resume_sent_only_the_rest(directory: Path, killed_at: dict, run: int) -> None:
    """The ``run``-th driver (0: start) sent the oracle exactly the requests of the
    generation that was cut short which had no label at the kill — none twice."""
    events = Workspace(directory).events()
    starts = [i for i, e in enumerate(events) if e["event"] == "run"] + [len(events)]
    generation = killed_at["generation"]
    sent = next((e for e in events[starts[run]:starts[run + 1]]
                 if e["event"] == "labelling" and e["generation"] == generation), None)
    selection = directory / "generations" / f"gen-{generation:03d}" / "selection.json"
    requests = json.loads(selection.read_text())["requests"] if selection.exists() else []
    singles = [r for r in requests
               if not r.get("relax_steps") and (r["fidelity"], r["frame"]) not in killed_at["labelled"]]
    relaxations = [r for r in requests if r.get("relax_steps")
                   and f"{r['fidelity']}:{r['frame']}" not in killed_at["relaxations"]]
    got = (sent["singles"], sent["relaxations"]) if sent else (0, 0)
    assert got == (len(singles), len(relaxations)), (
        f"generation {generation}: resume sent {got} (singles, relaxations), "
        f"{(len(singles), len(relaxations))} had no label at the kill")


def assert_nothing_done_twice(directory: Path, models_at_kill: dict[Path, tuple[int, int]]) -> dict:
    """After the last resume: a stop reason, each (frame, settings) labelled once and
    counted once, and no committee member written twice."""
    status = status_json(directory)
    assert status["stop_reason"] in STOP_REASONS and status["stop_reason"] != "error", status
    for fidelity, table in label_tables(directory).items():
        ok = table[table["status"] == "ok"]
        assert not ok.duplicated(["frame", "settings_hash"]).any(), f"{fidelity}: an ok label stored twice"
        distinct = len(table.drop_duplicates(["frame", "settings_hash"]))
        retries = sum(int(m.get("retries", 0)) for m in table["metadata"])
        assert status["oracle"][fidelity]["calls"] == distinct + retries, f"{fidelity}: a frame computed twice"
    models = model_files(directory)
    size = KILL_SPEC["committee"]["size"]
    assert len(models) == size * status["generation"], sorted(models)
    for path, identity in models_at_kill.items():
        assert models[path] == identity, f"{path} was written again after the kill"
    trained = [(e["generation"], e["member"]) for e in Workspace(directory).events() if e["event"] == "trained"]
    assert len(trained) == len(set(trained)), f"a member trained twice: {trained}"
    return status


@pytest.mark.slow
def test_resume_after_kills_at_named_points(kill_spec: Path, tmp_path: Path):
    """One campaign killed three times — after the 3rd stored label, after the first
    committee member finished, inside a label write — and resumed to the end; each
    resume sends the oracle only what had no label and trains only missing members."""
    directory = tmp_path / "run"
    driver = Driver(["campaign", "start", str(kill_spec), "--dir", str(directory)], directory,
                    tmp_path / "start.log", kill_at="label:3")
    killed(driver, "label:3")
    at_label = snapshot(directory)
    assert at_label["generation"] == 0 and len(at_label["labelled"]) == 3, at_label

    driver = resume(directory, tmp_path / "resume-1.log", kill_at="train")
    killed(driver, "train")
    assert_resume_sent_only_the_rest(directory, at_label, run=1)
    at_train = snapshot(directory)
    # The point is after a member's file is written and before the driver records it.
    assert not [e for e in Workspace(directory).events() if e["event"] == "trained"]
    assert at_train["generation"] == 1
    assert 1 <= len(at_train["models"]) <= KILL_SPEC["committee"]["size"], sorted(at_train["models"])
    assert all(path.parent.name == "gen-001" for path in at_train["models"])

    driver = resume(directory, tmp_path / "resume-2.log", kill_at="store:labels:before_commit")
    killed(driver, "store:labels:before_commit")
    assert_resume_sent_only_the_rest(directory, at_train, run=2)
    at_write = snapshot(directory)  # the cut write is rolled back; the store still reads
    assert at_write["labelled"] == at_train["labelled"]

    driver = resume(directory, tmp_path / "resume-3.log")
    assert driver.wait() == 0, driver.output()[-3000:]
    assert_resume_sent_only_the_rest(directory, at_write, run=3)
    status = assert_nothing_done_twice(directory, at_train["models"])
    assert status["generation"] == KILL_SPEC["budget"]["generations"] - 1 or status["converged"]


@pytest.mark.slow
def test_resume_after_sigkill_at_a_random_time(kill_spec: Path, tmp_path: Path):
    """SIGKILL from outside at a random moment of generation 1: a random step to reach
    (generation 0 done, a member trained, exploration done, selection done), then a
    random delay, so the kill lands in training, exploring or labelling; resumed from
    Python with ``Campaign.open(DIR).resume()``."""
    rng = random.Random()
    anchor, delay = rng.choice(["generation", "trained", "explored", "selected"]), rng.uniform(0.0, 3.0)
    when = f"{delay:.1f} s after the first `{anchor}` event"
    directory = tmp_path / "run"
    driver = Driver(["campaign", "start", str(kill_spec), "--dir", str(directory)], directory, tmp_path / "start.log")
    driver.wait_for(f"a `{anchor}` event", lambda: any(e["event"] == anchor for e in driver.events()), timeout=300)
    time.sleep(delay)
    os.kill(driver.proc.pid, signal.SIGKILL)
    killed(driver, f"SIGKILL {when}")
    at_kill = snapshot(directory)
    phase = Workspace(directory).read_state()["phase"]
    assert "stopped" not in [e["event"] for e in driver.events()], f"the campaign had finished {when}"

    driver = Driver([str(directory)], directory, tmp_path / "resume.log", program=PYTHON_RESUME)  # from Python
    assert driver.wait() == 0, f"resume after a SIGKILL {when} (phase {phase}):\n{driver.output()[-3000:]}"
    assert [e["event"] for e in driver.events()].count("run") == 2
    assert_resume_sent_only_the_rest(directory, at_kill, run=1)
    assert_nothing_done_twice(directory, at_kill["models"])


# --------------------------------------------------------------------- past data in
def test_past_labels_are_imported_into_a_new_campaign(tmp_path: Path):
    """`start --create-only`, then `import` an extxyz of labelled frames: they land as
    labels of the named fidelity (under its settings hash) and count as oracle calls."""
    from ase.build import bulk

    frames = []
    for i in range(3):
        atoms = bulk("SiC", "zincblende", a=4.485).repeat((2, 1, 1))
        atoms.rattle(0.02, seed=i)
        atoms.info.update({"REF_energy": -100.0 - i, "total_charge": 0, "total_spin": 1})
        atoms.arrays["REF_forces"] = atoms.positions * 0.01
        frames.append(atoms)
    source = tmp_path / "past.extxyz"
    ase.io.write(source, frames, format="extxyz")
    directory = tmp_path / "run"
    spec = write_spec(tmp_path / "spec.yaml", SPEC)
    runner = CliRunner()
    created = runner.invoke(app, ["campaign", "start", str(spec), "--dir", str(directory), "--create-only"])
    assert created.exit_code == 0, created.output
    imported = runner.invoke(app, ["campaign", "import", str(directory), str(source), "--fidelity", "low"])
    assert imported.exit_code == 0, imported.output
    assert "imported 3 low labels" in imported.output
    campaign = Campaign.open(directory)
    table = Store.open(directory / "data.zarr", mode="r").label_table("low")
    assert sorted(table["energy_eV"]) == [-102.0, -101.0, -100.0]
    assert set(table["settings_hash"]) == {campaign.settings_hash("low")}
    again = runner.invoke(app, ["campaign", "import", str(directory), str(source), "--fidelity", "low"])
    assert "imported 0 low labels" in again.output
    bad = runner.invoke(app, ["campaign", "import", str(directory), str(source), "--fidelity", "medium"])
    assert bad.exit_code == 2 and "--fidelity" in flat(bad.output)


@pytest.mark.slow
def test_a_host_the_oracle_cannot_hold_stops_the_campaign_and_stays_refused(tmp_path: Path):
    """GFN1-xTB collapses an 8-atom Si cell: the campaign stops before any defect work,
    says why, and a resume refuses again instead of carrying on."""
    spec = {**KILL_SPEC, "name": "si-host", "host_check": {"enabled": True},
            "host": {"structure": str(bundled_structure("Si_conv")), "supercell": [1, 1, 1]}}
    path = write_spec(tmp_path / "si.yaml", spec)
    directory = tmp_path / "run"
    for command in (["campaign", "start", str(path), "--dir", str(directory)], ["campaign", "resume", str(directory)]):
        result = subprocess.run(CLI + command, capture_output=True, text=True, env=cli_env(), timeout=RUN_TIMEOUT_S)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "collapse" in flat(result.stdout)
    store = Store.open(directory / "data.zarr", mode="r")
    assert store.n_frames == 0 and store.n_labels("low") == 0


@pytest.mark.slow
def test_a_generation_that_selects_no_label_stops_the_loop_and_says_why(tmp_path: Path):
    """Without a policy for generations ≥ 1 and with relaxations that do not go on where they
    stopped, generation 1 changes nothing: the loop stops there (`no_new_labels`) instead of
    retraining on the same data until budget.generations."""
    spec = write_spec(tmp_path / "spec.yaml", {**KILL_SPEC, "name": "no-policy-after-bootstrap",
                                              "policies": [SPEC["policies"][0]], "budget": {"generations": 4},
                                              "exploration": {"max_steps": 40, "continue_unfinished": False},
                                              "convergence": {"confirm": None}})
    directory = tmp_path / "run"
    result = run_cli(["campaign", "start", str(spec), "--dir", str(directory)], timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    status = status_json(directory)
    assert status["stop_reason"] == "no_new_labels" and status["generation"] == 1
    output = result.stdout + result.stderr
    assert "generation 1 selected no label" in flat(output)
    # the model libraries' noise stays out of the terminal (driver and workers)
    assert "cuequivariance" not in output and "warning" not in output.lower(), output[-3000:]
    assert not (directory / "generations" / "gen-002").exists()


def test_dry_run_prices_training_and_relaxations_on_the_specs_own_model(tmp_path: Path):
    """The estimate times the spec's model (training and a relaxation step) besides the
    oracle, and prices the whole campaign from those timings on the cluster's workers."""
    from math import ceil

    from activedefect.campaign.dryrun import dry_run
    from activedefect.spec_blocks import BudgetSpec

    spec = write_spec(tmp_path / "spec.yaml", {**SPEC, "host_check": {"enabled": False}})
    report = dry_run(spec)
    timing, committee, budget = report.timing, SPEC["committee"], SPEC["budget"]
    assert 1e-5 < timing.train_s_per_config_epoch < 1.0 and 1e-5 < timing.relax_s_per_structure_step < 1.0
    assert report.workers == {"label": 2, "train": 2, "explore": 2}
    # the default label budgets spent evenly: generation 1 of 2 trains fresh on half
    labels = BudgetSpec().low + BudgetSpec().high
    config_epochs = committee["epochs"] * labels / 2 + committee["finetune_epochs"] * labels
    member_s = config_epochs * timing.train_s_per_config_epoch
    assert report.hours["training"] * 3600 == pytest.approx(ceil(committee["size"] / 2) * member_s)
    assert report.hours["campaign"] == pytest.approx(
        report.hours["oracle"] + report.hours["training"] + report.hours["exploration"])
    assert report.hours["exploration"] > 0 and report.expected_labels["high"] == 200 + 600
    # 2 charge states × 5 seeds, 2 rattled copies of each state's best, each best re-charged to the other state
    starts = 10 + 2 * 2 + 2
    assert report.hours["exploration"] * 3600 == pytest.approx(
        (budget["generations"] - 1) * starts * SPEC["exploration"]["max_steps"] * committee["size"]
        * timing.relax_s_per_structure_step / 2)
    result = CliRunner().invoke(app, ["campaign", "start", str(spec), "--dry-run"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "training: s per configuration·epoch" in result.output and "wall time (campaign)" in result.output
    capped = dry_run(write_spec(tmp_path / "capped.yaml", {**SPEC, "host_check": {"enabled": False},
                                                           "budget": {**budget, "walltime_s": 60}}))
    assert capped.hours["campaign"] == pytest.approx(60 / 3600) and capped.walltime_capped


@pytest.mark.slow
def test_walltime_stops_inside_a_generation_and_a_resume_labels_the_rest(tmp_path: Path):
    """budget.walltime_s spent while generation 0 labels: the running oracle relaxations
    finish and are stored, the queued ones are cancelled, confirm does not start, and the
    campaign stops `walltime`; a resume (a fresh allocation) relaxes only what is left."""
    spec = write_spec(tmp_path / "spec.yaml", {
        **KILL_SPEC, "name": "walltime", "budget": {"generations": 2, "walltime_s": 1},
        "policies": [{"kind": "bootstrap", "low_relax_steps": 25}, "committee-uncertainty", "stratified-high"]})
    directory = tmp_path / "run"
    first = run_cli(["campaign", "start", str(spec), "--dir", str(directory)], timeout=RUN_TIMEOUT_S)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    state = Workspace(directory).read_state()
    n_seeds = len(state["seeds"])
    assert state["stop_reason"] == "walltime" and state["generation"] == -1 and state["confirm"] == {}
    assert 1 <= len(state["relaxations"]) < n_seeds, state["relaxations"]
    relaxed_before = set(state["relaxations"])
    assert any(e["event"] == "walltime" and e["phase"] == "label" for e in Workspace(directory).events())
    low_before = label_tables(directory)["low"]
    again = run_cli(["campaign", "resume", str(directory)], timeout=RUN_TIMEOUT_S)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert set(Workspace(directory).read_state()["relaxations"]) > relaxed_before
    low_after = label_tables(directory)["low"]
    assert len(low_after) > len(low_before) and not low_after["frame"].duplicated().any()
