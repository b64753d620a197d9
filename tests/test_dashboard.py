"""The campaign page: what the driver pushes (timeline, committee errors, time left), the
page in the Dask dashboard's menu, and the page in a real headless Chromium following
pushes without a reload. The page on a running campaign: test_campaign.py."""

from __future__ import annotations

import copy

import pytest
from campaign_support import fetch, fetch_json
from page_browser import PageBrowser, chromium_available, wait_for

from activedefect.campaign import live
from activedefect.execution.cluster import open_cluster
from activedefect.execution.dashboard import METADATA_KEY, serve_from_driver
from activedefect.spec import load_spec
from activedefect.spec_blocks import ClusterSpec

needs_chromium = pytest.mark.skipif(
    not chromium_available(), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


def pushed_status(revision: int = 1, high_calls: int = 40) -> dict:
    """A live status as the driver pushes it: two charge states, two generations."""
    points = [
        {"seed": seed, "x_percent": x, "head": head, "status": status, "reference_eV": -800.0,
         "energy_eV": energy, "energy_rel_eV": None if head == "low" else energy + 800.0, "std_eV": 0.02,
         "high_eV": None if high is None else -800.0 + high, "high_rel_eV": high,
         "low_eV": None if low is None else -790.0 + low, "low_rel_eV": low}
        for seed, x, head, energy, status, high, low in [
            ("Bond_Distortion_-30.0%", -30.0, "high", -800.4, "converged", -0.35, -0.1),
            ("Unperturbed", 0.0, "high", -800.0, "converged", 0.02, 0.0),
            ("Bond_Distortion_30.0%", 30.0, "high", -799.5, "max_steps", None, None),
            ("Dimer", 45.0, "low", -790.3, "cut_untrusted", None, None),  # another head: not drawn
        ]]
    ground = [
        {"state": "v_Si_0", "defect": "v_Si", "charge": 0, "seed": "Bond_Distortion_-30.0%", "converged": False,
         "predicted_energy_eV": -800.4, "high_energy_eV": -800.35, "high_max_force_eV_A": 0.03,
         "max_force_spread_eV_A": 0.2, "not_converged_because": ["stable for 0/2 generations"], "structure": None},
        {"state": "v_Si_-2", "defect": "v_Si", "charge": -2, "seed": None, "converged": False,
         "predicted_energy_eV": None, "high_energy_eV": None, "high_max_force_eV_A": None,
         "max_force_spread_eV_A": None, "not_converged_because": ["no ground state yet"], "structure": None},
    ]
    return {
        "name": "page-test", "mode": "campaign", "generation": 1, "working_on": 2, "phase": "label",
        "converged": False, "stop_reason": None, "revision": revision,
        "oracle": {"low": {"calls": 120, "failures": 1, "seconds": 60.0},
                   "high": {"calls": high_calls, "failures": 0, "seconds": 30.0}},
        "budget": {"low": 3000, "high": 150, "confirm_high": 600}, "confirm_calls": 0,
        "ground_states": ground, "confirm": {}, "wall_s": 300.0, "history": [],
        "timeline": [{"wall_s": 10.0 * i, "low_calls": 10 * i, "high_calls": 3 * i, "low_oracle_s": 5.0 * i,
                      "high_oracle_s": 2.0 * i} for i in range(1, 6)],
        "committee": [{"generation": g, "low_force_error_eV_A": 0.5 / g, "low_force_spread_eV_A": 0.2,
                       "low_error_to_spread": 2.5 / g, "high_force_error_eV_A": 0.6 / g,
                       "high_force_spread_eV_A": 0.25, "high_error_to_spread": 2.4 / g} for g in (1, 2)],
        "landscape": {"v_Si_0": points, "v_Si_-2": copy.deepcopy(points)},
        "progress": {"phase": "labelling", "done": 3, "total": 8, "started": 0.0},
        "failures": [{"fidelity": "low", "frame": 7, "status": "scf_failed", "reason": "SCF did not converge"}],
        "time_left": {"seconds": 600.0, "limited_by": "budget_high"},
    }


# --- what the driver pushes ---------------------------------------------------------------
def test_timeline_keeps_changes_only_and_thins_old_samples():
    state: dict = {}
    oracle = {"low": {"calls": 1, "seconds": 1.0}, "high": {"calls": 0, "seconds": 0.0}}
    live.record_sample(state, oracle, 1.0)
    live.record_sample(state, oracle, 2.0)  # nothing new: no sample
    assert [s["wall_s"] for s in state["timeline"]] == [1.0]
    for i in range(2, live.MAX_TIMELINE_SAMPLES + 5):
        live.record_sample(state, {**oracle, "low": {"calls": i, "seconds": float(i)}}, float(i))
    timeline = state["timeline"]
    assert len(timeline) <= live.MAX_TIMELINE_SAMPLES
    assert timeline[0]["wall_s"] == 1.0 and timeline[-1]["low_calls"] == live.MAX_TIMELINE_SAMPLES + 4
    assert [s["wall_s"] for s in timeline] == sorted(s["wall_s"] for s in timeline)


def test_progress_is_pushed_at_a_phases_start_and_end_and_throttled_between():
    from activedefect.execution.reporting import LogReporter

    pushed = []
    reporter = live.PublishingReporter(LogReporter(), lambda: pushed.append(dict(reporter.progress)), interval_s=3600)
    reporter.start("labelling", 4)
    for _ in range(4):
        reporter.advance()
    assert pushed == [{"phase": "labelling", "done": 0, "total": 4}, {"phase": "labelling", "done": 4, "total": 4}]
    eager = live.PublishingReporter(LogReporter(), lambda: pushed.append(eager.progress["done"]), interval_s=0)
    eager.start("training", 3)
    eager.advance()
    assert pushed[-2:] == [0, 1]


def test_committee_history_keeps_each_generations_last_evaluation():
    def evaluation(generation: int, error: float) -> dict:
        calibration = {"mean_force_error_eV_A": error, "mean_force_spread_eV_A": error / 2, "force_error_to_spread": 2.0}
        return {"kind": "evaluation", "generation": generation, "n_valid": {"low": 4, "high": 1},
                "per_head": {"low": {"energy_rmse_meV_per_atom": 9.0, "calibration": calibration}}}

    rows = live.committee_history([evaluation(1, 0.9), {"kind": "other", "generation": 1},
                                   evaluation(2, 0.5), evaluation(1, 0.7)])
    assert [r["generation"] for r in rows] == [1, 2]
    assert rows[0]["low_force_error_eV_A"] == 0.7 and rows[1]["low_force_spread_eV_A"] == 0.25
    assert rows[0]["low_held_out"] == 4 and rows[0]["high_force_error_eV_A"] is None


def test_failures_keep_the_campaign_error_and_each_fidelitys_newest():
    import pandas as pd

    n = live.MAX_FAILURES_SHOWN + 3
    low = pd.DataFrame({"frame": range(n), "status": ["scf_failed"] * n, "reason": [f"r{i}" for i in range(n)]})
    high = pd.DataFrame({"frame": [1, 2], "status": ["ok", "timeout"], "reason": ["", "slow"]})
    failures = live.recent_failures({"low": low, "high": high}, "RuntimeError: boom")
    assert failures[0] == {"fidelity": "campaign", "frame": None, "status": "error", "reason": "RuntimeError: boom"}
    assert [f["frame"] for f in failures if f["fidelity"] == "low"] == list(range(3, n))
    assert [(f["frame"], f["reason"]) for f in failures if f["fidelity"] == "high"] == [(2, "slow")]


def test_time_left_is_the_nearest_limit_at_the_rate_so_far():
    spec = load_spec("campaigns/quickstart.yaml")
    spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"low": 1000, "high": 100, "generations": 10})})
    status = {"wall_s": 100.0, "generation": 1, "stop_reason": None,
              "oracle": {"low": {"calls": 100}, "high": {"calls": 50}}, "budget": {"low": 1000, "high": 100}}
    left = live.time_left(status, spec, run_elapsed_s=100.0)
    # high: 50 more calls at 0.5 per s = 100 s; low: 900 s; generations: 8 more at 50 s = 400 s
    assert left == {"seconds": 100.0, "limited_by": "budget_high"}
    assert live.time_left({**status, "stop_reason": "converged"}, spec, 100.0)["seconds"] == 0.0


# --- the page -------------------------------------------------------------------------------
def test_the_dashboard_lists_the_campaign_page_and_serves_its_json():
    with open_cluster(ClusterSpec(workers=1, dashboard_address="127.0.0.1:0")) as handle:
        menu = fetch(handle.dashboard_link)
        assert menu is not None and 'href="activedefect"' in menu, "no campaign page in the dashboard's menu"
        assert handle.campaign_page == handle.dashboard_link.replace("/status", "/activedefect")
        assert fetch_json(handle.campaign_page + "/json") is None  # nothing pushed yet: JSON null
        handle.client.set_metadata(METADATA_KEY, pushed_status())
        assert fetch_json(handle.campaign_page + "/json")["oracle"]["high"]["calls"] == 40
        page = fetch(handle.campaign_page)
        assert page is not None and "Bokeh" in page and "Activedefect" in page  # a Bokeh document in dask's template


@needs_chromium
def test_the_page_shows_the_pushed_numbers_and_follows_pushes_without_reloading(tmp_path):
    held = {"status": pushed_status()}
    url, stop = serve_from_driver(lambda: held["status"])
    browser = PageBrowser()
    try:
        browser.open(url)
        browser.driver.execute_script("window.openedOnce = true")
        wait_for("six drawn plots", lambda: browser.drawn_plots() == 6)  # 2 landscapes, calls, seconds, errors, ratio
        shown = browser.texts()
        assert shown["generation"] == "1" and shown["working_on"] == "2" and shown["phase"] == "label"
        assert shown["calls-low"] == "120" and shown["calls-high"] == "40"
        assert shown["gs-v_Si_0-high"] == "-800.3500" and shown["gs-v_Si_-2-high"] == "—"
        assert shown["progress-done"] == "3" and shown["progress-total"] == "8" and shown["time-left"] == "10.0 min"
        assert browser.source_length("landscape-v_Si_0-relaxed") == 2  # two relaxed, one stopped early
        assert browser.source_length("landscape-v_Si_0-stopped") == 1
        assert browser.source_length("landscape-v_Si_0-ground") == 1
        assert browser.source_length("landscape-v_Si_-2-ground") == 0  # no ground state to mark
        assert browser.source_length("timeline") == 5 and browser.source_length("committee") == 2
        assert "SCF did not converge" in shown["failures"] and "stable for 0/2" in browser.texts()["ground-states-table"]

        held["status"] = pushed_status(revision=2, high_calls=41)
        wait_for("the pushed call count", lambda: browser.texts().get("calls-high") == "41", timeout=10)
        assert browser.driver.execute_script("return window.openedOnce === true"), "the page reloaded"
        browser.screenshot(tmp_path / "page.png")
        assert (tmp_path / "page.png").stat().st_size > 10_000
        assert "1 stopped on the low head" in browser.driver.execute_script(
            "return Bokeh.documents[0].get_model_by_name('landscape-v_Si_0').title.text")
    finally:
        browser.close()
        stop()
    assert fetch(url) is None, "the driver's page server still answers after stop()"
    stop()  # a second stop does nothing

