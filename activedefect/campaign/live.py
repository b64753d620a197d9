"""What the campaign page shows beyond ``status --json``, kept by the driver and pushed to
the scheduler at phase changes and (throttled) as work comes back: oracle calls over wall
time, the committee's held-out error and spread per generation, the current generation's
energy-vs-distortion landscape, the phase's progress, recent failures and an estimate of
the time left. The page (:mod:`activedefect.execution.campaign_page`) only draws this."""

from __future__ import annotations

import time
from typing import Any, Callable

from activedefect.execution.dashboard import METADATA_KEY
from activedefect.execution.reporting import Reporter
from activedefect.spec import FIDELITIES, CampaignSpec

#: Samples of the oracle timeline kept in ``state.json`` (older ones are thinned out).
MAX_TIMELINE_SAMPLES = 400
#: Failed labels listed on the page per fidelity (the newest).
MAX_FAILURES_SHOWN = 10


class LivePage:
    """Part of :class:`~activedefect.campaign.loop.Campaign`: what it pushes to the page
    (it uses the driver's store, client, state and reporter)."""

    def _publish(self) -> None:
        """Push what the campaign page shows to the scheduler (at phase changes, and as
        work comes back through the reporter); the page never computes anything itself."""
        if self._client is None:
            return
        try:
            self._revision += 1
            self._published = {**self.live_status(), "revision": self._revision}
            self._client.set_metadata(METADATA_KEY, self._published)
        except Exception as error:  # noqa: BLE001 - the dashboard must never stop the campaign
            self._page_error(error)

    def live_status(self) -> dict[str, Any]:
        """``status --json`` plus the history, oracle timeline, committee errors, landscape,
        progress, failures and time left: the campaign page's data (``…/activedefect/json``)."""
        status = self._status_with_history()
        status["wall_s"] = self._wall_before + time.monotonic() - self._run_started
        record_sample(self.state, status["oracle"], status["wall_s"])
        progress = getattr(self.reporter, "progress", None)
        status.update(
            timeline=list(self.state["timeline"]),
            committee=committee_history(self.ws.metrics()),
            landscape=self._landscape,
            progress=progress if self.state.get("phase") != "stopped" else None,
            # label tables are read again only where a label failed: most pushes read none
            failures=recent_failures({f: self.store.label_table(f) for f in FIDELITIES if status["oracle"][f]["failures"]},
                                     self.state.get("error")),
            time_left=time_left(status, self.spec, time.monotonic() - self._run_started),
        )
        return status

    def _show_landscape(self, exploration) -> None:  # noqa: ANN001 - selection.Exploration
        """The energy-vs-distortion landscape of ``exploration`` for the campaign page."""
        from activedefect.results.figure_data import distortion_points

        try:
            self._landscape = distortion_points(exploration, self.store, {f: self.settings_hash(f) for f in FIDELITIES})
        except Exception as error:  # noqa: BLE001 - the dashboard must never stop the campaign
            self._page_error(error)

    def _page_error(self, error: Exception) -> None:
        """Record (once per kind of error) that the page could not be updated."""
        text = f"{type(error).__name__}: {error}"
        if text not in self._page_errors:
            self._page_errors.add(text)
            self.ws.log_event("page-error", error=text)


class PublishingReporter:
    """A :class:`Reporter` that forwards to another and keeps the running phase's progress
    (members trained, relaxations done, labels back) for the campaign page; ``push`` is
    called at a phase's start and end and at most every ``interval_s`` in between."""

    def __init__(self, inner: Reporter, push: Callable[[], None], interval_s: float = 2.0):
        self.inner = inner
        self.push = push
        self.interval_s = interval_s
        self.progress: dict[str, Any] | None = None
        self._pushed_at = 0.0

    def start(self, phase: str, total: int) -> None:
        self.inner.start(phase, total)
        self.progress = {"phase": phase, "done": 0, "total": int(total)}
        self._push()

    def advance(self, n: int = 1) -> None:
        self.inner.advance(n)
        if self.progress is None:
            return
        self.progress["done"] += n
        if self.progress["done"] >= self.progress["total"] or time.monotonic() - self._pushed_at >= self.interval_s:
            self._push()

    def message(self, text: str) -> None:
        self.inner.message(text)

    def _push(self) -> None:
        self._pushed_at = time.monotonic()
        self.push()


def record_sample(state: dict[str, Any], oracle: dict[str, dict[str, float]], wall_s: float) -> None:
    """Append (wall time, calls and oracle seconds per fidelity) to ``state["timeline"]``
    when the counts changed since the last sample."""
    sample = {"wall_s": round(float(wall_s), 2)}
    for fidelity in FIDELITIES:
        sample[f"{fidelity}_calls"] = int(oracle[fidelity]["calls"])
        sample[f"{fidelity}_oracle_s"] = round(float(oracle[fidelity]["seconds"]), 2)
    timeline = state.setdefault("timeline", [])
    if timeline and all(timeline[-1][k] == v for k, v in sample.items() if k != "wall_s"):
        return
    timeline.append(sample)
    if len(timeline) > MAX_TIMELINE_SAMPLES:  # keep the first and last, every other one between
        timeline[:] = timeline[:1] + timeline[1:-1][1::2] + timeline[-1:]


def committee_history(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per generation and head: the committee's held-out energy and force errors, its mean
    force spread on those frames and their ratio (≈1 when the spread is calibrated)."""
    latest = {m["generation"]: m for m in metrics if m.get("kind") == "evaluation"}
    rows = []
    for generation, metric in sorted(latest.items()):
        row: dict[str, Any] = {"generation": generation}
        for head in FIDELITIES:
            result = metric.get("per_head", {}).get(head, {})
            calibration = result.get("calibration", {})
            row[f"{head}_energy_rmse_meV_atom"] = result.get("energy_rmse_meV_per_atom")
            row[f"{head}_force_error_eV_A"] = calibration.get("mean_force_error_eV_A")
            row[f"{head}_force_spread_eV_A"] = calibration.get("mean_force_spread_eV_A")
            row[f"{head}_error_to_spread"] = calibration.get("force_error_to_spread")
            row[f"{head}_held_out"] = metric.get("n_valid", {}).get(head, 0)
        rows.append(row)
    return rows


def recent_failures(label_tables: dict[str, Any], campaign_error: str | None) -> list[dict[str, Any]]:
    """The campaign's own error (always) and its newest failed labels per fidelity
    (fidelity, frame, status, reason), at most ``MAX_FAILURES_SHOWN`` of each."""
    failures = [{"fidelity": "campaign", "frame": None, "status": "error", "reason": campaign_error}] \
        if campaign_error else []
    for fidelity, table in label_tables.items():
        failed = table[table["status"] != "ok"].tail(MAX_FAILURES_SHOWN)
        failures += [{"fidelity": fidelity, "frame": int(row.frame), "status": str(row.status),
                      "reason": str(row.reason)} for row in failed.itertuples()]
    return failures


def time_left(status: dict[str, Any], spec: CampaignSpec, run_elapsed_s: float) -> dict[str, Any]:
    """When the campaign will stop if nothing converges: each limit extrapolated at the
    rate so far (calls per wall second, seconds per generation), the nearest one wins.
    The confirm step at the end is not included."""
    wall = float(status.get("wall_s") or 0.0)
    limits: dict[str, float] = {}
    if wall > 0:
        for fidelity in FIDELITIES:
            calls = status["oracle"][fidelity]["calls"]
            if calls:
                limits[f"budget_{fidelity}"] = max(0.0, (status["budget"][fidelity] - calls) * wall / calls)
        done = status["generation"] + 1
        if done > 0:
            limits["max_generations"] = max(0.0, (spec.budget.generations - done) * wall / done)
    if spec.budget.walltime_s is not None:
        limits["walltime"] = max(0.0, spec.budget.walltime_s - run_elapsed_s)
    if status.get("stop_reason") or not limits:
        return {"seconds": 0.0 if status.get("stop_reason") else None, "limited_by": status.get("stop_reason")}
    limited_by = min(limits, key=limits.get)
    return {"seconds": round(limits[limited_by], 1), "limited_by": limited_by}
