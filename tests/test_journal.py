"""Oracle relaxation journals: steps computed before a kill are replayed, not recomputed."""

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from campaign_support import KILL_SPEC, SPEC, Driver, run_cli, write_spec

from activedefect import Campaign
from activedefect.campaign.labelling import relax_task_key
from activedefect.geometry import content_hash
from activedefect.oracle import journal
from activedefect.oracle.tasks import BackendCall, relax_with_oracle
from activedefect.store.zarr_store import Store

XTB = BackendCall("xtb", {"method": "GFN1-xTB", "electronic_temperature": 1000}, None, 1)


def vacancy_cell():
    atoms = bulk("C", "diamond", a=3.549).repeat((2, 1, 1))
    del atoms[0]
    atoms.rattle(0.05, seed=1)
    atoms.info.update(total_charge=0, total_spin=1, defect="v_C")
    return atoms


def test_a_relaxation_killed_mid_write_resumes_from_its_journal(tmp_path: Path):
    path = tmp_path / "journal" / "confirm-v_C_0-7.jsonl"
    first = relax_with_oracle(XTB, vacancy_cell(), 0.05, 5, {}, str(path))
    written = journal.load(path)
    assert len(first.new) == 6 == len(written)
    for (frame, label), (back, label_back) in zip(first.new, written):
        assert content_hash(back) == content_hash(frame) and back.info["defect"] == "v_C"
        assert label_back.energy_eV == label.energy_eV and np.array_equal(label_back.forces_eV_A, label.forces_eV_A)
        assert label_back.metadata["wall_s"] == label.metadata["wall_s"]

    # killed while writing step 4: three whole lines and half of the fourth are left
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3]) + lines[3][:40])
    second = relax_with_oracle(XTB, vacancy_cell(), 0.05, 5, {}, str(path))
    assert [content_hash(f) for f, _ in second.path] == [content_hash(f) for f, _ in first.path]
    # the three journalled steps are returned as new (not in the store yet) with their
    # original labels; only the other three were computed and written down again
    assert [content_hash(f) for f, _ in second.new] == [content_hash(f) for f, _ in first.new]
    assert [label.metadata["wall_s"] for _, label in second.new[:3]] == [
        label.metadata["wall_s"] for _, label in first.new[:3]]
    assert len(path.read_bytes().splitlines()) == 6 and len(journal.load(path)) == 6


def test_steps_the_store_has_are_neither_new_nor_written_down(tmp_path: Path):
    path = tmp_path / "j.jsonl"
    first = relax_with_oracle(XTB, vacancy_cell(), 0.05, 5, {})
    known = {content_hash(frame): label for frame, label in first.new[:2]}
    again = relax_with_oracle(XTB, vacancy_cell(), 0.05, 5, known, str(path))
    assert [content_hash(f) for f, _ in again.new] == [content_hash(f) for f, _ in first.new[2:]]
    assert len(journal.load(path)) == 4


def test_a_campaign_stores_a_dead_relaxations_journal_and_removes_it(tmp_path: Path):
    """The driver resumes a policy relaxation whose earlier run was killed after two steps:
    those two come from the journal (same labels, same wall time), the rest are computed,
    all are stored once, and the journal is gone."""
    from activedefect.execution.cluster import open_cluster

    campaign = Campaign.create(write_spec(tmp_path / "spec.yaml", KILL_SPEC), tmp_path / "run")
    seed = campaign.store.get_frame(campaign.store.add_frames([vacancy_sic(campaign)])[0])
    request = {"fidelity": "high", "frame": int(seed.info["frame"]), "relax_steps": 4, "relax_fmax_eV_A": 0.01}
    path = Path(campaign._journal(relax_task_key(request, campaign.settings_hash("high"))))
    killed = relax_with_oracle(campaign.backend_call("high"), seed, 0.01, 1, {}, str(path))
    assert len(killed.new) == 2 and path.exists()

    with open_cluster(campaign.spec.cluster, workers=1, dashboard_address=":0") as handle:
        campaign._client = handle.client
        campaign._label([request], generation=0)
        campaign._client = None
    assert not path.exists()
    high = campaign.store.label_table("high")
    assert len(high) == 5 and (high["status"] == "ok").all() and high["frame"].is_unique
    for frame, label in killed.new:
        row = campaign.store.label_row("high", campaign.store.find_frame(frame), campaign.settings_hash("high"))
        assert high.loc[row, "energy_eV"] == pytest.approx(label.energy_eV, abs=0)
        assert high.loc[row, "metadata"]["wall_s"] == label.metadata["wall_s"]
    campaign._close_store()


def vacancy_sic(campaign: Campaign):
    """The campaign's first seed, rattled so that a relaxation has steps to take."""
    from activedefect.seeds.preparation import build_campaign_seeds

    atoms = build_campaign_seeds(campaign.spec)[0].atoms.copy()
    atoms.rattle(0.05, seed=3)
    return atoms


@pytest.mark.slow
def test_a_baseline_killed_mid_relaxation_replays_its_journals_on_resume(tmp_path: Path):
    """SIGKILL the driver of a real baseline while a relaxation has written at least 10
    steps; `campaign resume` stores every journalled step with the label computed before
    the kill (same energy, same wall time: replayed, not recomputed) and leaves no journal."""
    spec = write_spec(tmp_path / "tiny.yaml", {**SPEC, "host_check": {"enabled": False},
                                               "convergence": {"confirm": {"fmax": 0.01, "steps": 60}}})
    run = tmp_path / "run"
    journals = run / "journal"

    def whole_lines(path: Path) -> int:  # read only: the worker is still appending
        return path.read_bytes().count(b"\n")

    driver = Driver(["campaign", "baseline", str(spec), "--dir", str(run)], run, tmp_path / "driver.log")
    driver.wait_for("a relaxation with 10 journalled steps",
                    lambda: any(whole_lines(p) >= 10 for p in journals.glob("*.jsonl")), timeout=300)
    driver.kill()
    time.sleep(2)  # the workers die with the driver
    shutil.copytree(journals, tmp_path / "at-kill")
    saved = [step for p in (tmp_path / "at-kill").glob("*.jsonl") for step in journal.load(p)]
    assert len(saved) >= 10

    resumed = run_cli(["campaign", "resume", str(run)], timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not list(journals.iterdir())
    store = Store.open(run / "data.zarr", mode="r")
    labels = store.label_table("high")
    assert labels["frame"].is_unique and (labels["status"] == "ok").all()
    for frame, label in saved:
        row = store.label_row("high", store.find_frame(frame), label.settings_hash)
        assert labels.loc[row, "energy_eV"] == label.energy_eV
        assert labels.loc[row, "metadata"]["wall_s"] == label.metadata["wall_s"]


def test_bfgs_confirms_fires_minimum_with_fewer_calls_and_replays_its_path(tmp_path: Path):
    """The confirm step's optimiser: from near a minimum, BFGS ends where FIRE ends with
    fewer `high` calls, and a resumed BFGS relaxation replays its journal step for step."""
    near = relax_with_oracle(XTB, vacancy_cell(), 0.5, 200, {})
    start = near.path[-1][0]
    fire = relax_with_oracle(XTB, start, 0.02, 200, {})
    path = tmp_path / "bfgs.jsonl"
    bfgs = relax_with_oracle(XTB, start, 0.02, 200, {}, str(path), optimizer="bfgs", bfgs_alpha_eV_A2=30.0)
    (_, fire_end), (_, bfgs_end) = fire.path[-1], bfgs.path[-1]
    for end in (fire_end, bfgs_end):
        assert np.linalg.norm(end.forces_eV_A, axis=1).max() < 0.02
    assert bfgs_end.energy_eV == pytest.approx(fire_end.energy_eV, abs=2e-3)
    assert len(bfgs.path) < len(fire.path), f"BFGS {len(bfgs.path)} calls, FIRE {len(fire.path)}"
    again = relax_with_oracle(XTB, start, 0.02, 200, {}, str(path), optimizer="bfgs", bfgs_alpha_eV_A2=30.0)
    assert [content_hash(f) for f, _ in again.path] == [content_hash(f) for f, _ in bfgs.path]
    assert [label.metadata["wall_s"] for _, label in again.path] == [label.metadata["wall_s"] for _, label in bfgs.path]
