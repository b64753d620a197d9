"""The driver's labelling step: the policies' requests sent to the oracle as single
points or short relaxations, each result stored as it arrives; the steps of a relaxation
whose task died are read back from its journal (:mod:`activedefect.oracle.journal`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ase import Atoms
from distributed import as_completed

from activedefect import faults
from activedefect.labels import LabelResult
from activedefect.oracle import journal
from activedefect.oracle.tasks import OracleRelaxation, label_frame, relax_with_oracle
from activedefect.spec import FIDELITIES


class LabellingStep:
    """Part of :class:`~activedefect.campaign.loop.Campaign`: it uses the driver's store,
    client and state."""

    def _label(self, requests: list[dict[str, Any]], generation: int) -> bool:
        """Label what is not labelled yet; each result is stored as it arrives. Requests
        with ``relax_steps`` > 0 are short oracle relaxations from the frame. The
        `labelling` event records what is sent to the oracle (a resume sends only the rest).

        Once ``budget.walltime_s`` is spent, the tasks running on a worker finish and are
        stored, the queued ones are cancelled, and this returns False (a resume labels the
        rest); True when every request was labelled (also when none was left to cancel)."""
        hashes = {f: self.settings_hash(f) for f in FIDELITIES}
        done_relaxations = set(self.state.setdefault("relaxations", []))
        singles = [
            r for r in requests if not r.get("relax_steps")
            and not self.store.has_label(r["fidelity"], r["frame"], hashes[r["fidelity"]])
            and self.store.failed_attempts(r["fidelity"], r["frame"], hashes[r["fidelity"]]) == 0
        ]
        relaxations = [r for r in requests if r.get("relax_steps") and _relax_key(r) not in done_relaxations]
        if not singles and not relaxations:
            return True
        self._save("label")
        self.ws.log_event("labelling", generation=generation, singles=len(singles), relaxations=len(relaxations))
        self.reporter.start("labelling", len(singles) + len(relaxations))
        calls = {f: self._share(self.backend_call(f)) for f in FIDELITIES}
        futures = {}
        for request in singles:
            fidelity = request["fidelity"]
            futures[self._client.submit(
                label_frame, calls[fidelity], self.store.get_frame(request["frame"]), resources={"label": 1},
                pure=False, key=f"label-{fidelity}-{request['frame']}-{hashes[fidelity]}",
            )] = request
        known = {f: self._share(self._known_labels(f))
                 for f in {r["fidelity"] for r in relaxations}}
        for request in relaxations:
            fidelity = request["fidelity"]
            key = relax_task_key(request, hashes[fidelity])
            futures[self._client.submit(
                relax_with_oracle, calls[fidelity], self.store.get_frame(request["frame"]),
                request["relax_fmax_eV_A"], request["relax_steps"], known[fidelity], self._journal(key),
                resources={"label": 1}, pure=False, key=key,
            )] = request
        checked, out_of_time = False, False  # out of time: tasks were cancelled, the rest waits for a resume
        for future in as_completed(futures):
            if future.cancelled():
                continue
            if not checked and self._walltime_passed():
                checked = True
                out_of_time = self._cancel_queued(futures) > 0
            request = futures[future]
            fidelity = request["fidelity"]
            try:
                outcome = future.result()
            except Exception as error:  # noqa: BLE001 - e.g. a worker lost too often
                outcome = LabelResult.failure("crashed", hashes[fidelity], f"task failed: {error}")
            if request.get("relax_steps"):
                start = self.store.get_frame(request["frame"])
                if isinstance(outcome, OracleRelaxation):
                    self._store_relaxation(fidelity, start, outcome.new, future.key)
                    ok = [frame for frame, result in outcome.path if result.ok]
                    if ok:  # where the oracle left off: a cut committee relaxation goes on from there
                        ends = self.state.setdefault("relaxation_ends", {})
                        ends[_relax_key(request)] = self.store.find_frame(ok[-1])
                else:  # the task died, but the steps it had computed are paid for
                    self._store_relaxation(fidelity, start, journal.load(self._journal(future.key)), future.key)
                self.state["relaxations"].append(_relax_key(request))
                self._write_state()
            else:
                self.store.add_labels(fidelity, [(request["frame"], outcome)])
            faults.crash_point("label")
            self.reporter.advance()  # the campaign page follows (throttled)
        if out_of_time:
            self.ws.log_event("walltime", generation=generation, phase="label")
        return not out_of_time

    def _cancel_queued(self, futures: dict) -> int:
        """Cancel the tasks no worker is running yet (tasks with resources are all assigned
        to workers at once, so the scheduler's ``processing`` would name them all); how many."""
        executing = self._client.run(_executing_keys, on_error="ignore")  # a worker lost now runs nothing
        running = {key for keys in executing.values() for key in keys}
        queued = [f for f in futures if not f.done() and f.key not in running]
        self._client.cancel(queued)
        return len(queued)

    def _journal(self, task_key: str) -> str:
        """Where the oracle relaxation run as ``task_key`` writes its steps as they come
        (:mod:`activedefect.oracle.journal`): a killed run's steps are replayed, not recomputed."""
        return str(journal.journal_path(self.ws.journal_dir, task_key))

    def _store_relaxation(self, fidelity: str, start: Atoms, evaluated: list[tuple[Atoms, LabelResult]],
                          task_key: str) -> int:
        """Frames and labels of an oracle relaxation from ``start``; steps keep its origin.
        Once they are stored, the relaxation's journal has served its purpose. Returns
        how many labels were new to the store."""
        settings_hash = self.settings_hash(fidelity)
        origin = dict(start.info.get("origin") or {})
        added = 0
        for step, (frame, result) in enumerate(evaluated):
            frame.info["origin"] = {**origin, "step": step}
            [index] = self.store.add_frames([frame])
            if not self.store.has_label(fidelity, index, settings_hash):
                self.store.add_labels(fidelity, [(index, result)])
                added += 1
        Path(self._journal(task_key)).unlink(missing_ok=True)
        return added

    def _known_labels(self, fidelity: str) -> dict[str, LabelResult]:
        """Every ok label of ``fidelity`` under its current settings, by frame hash, so a
        resumed oracle relaxation replays its finished steps instead of recomputing them."""
        settings_hash = self.settings_hash(fidelity)
        labels = self.store.label_table(fidelity)
        hashes = self.store.frame_table()["hash"]
        known = {}
        for row in labels.index[(labels["status"] == "ok") & (labels["settings_hash"] == settings_hash)]:
            known[hashes.iloc[int(labels.loc[row, "frame"])]] = LabelResult(
                status="ok", settings_hash=settings_hash, energy_eV=float(labels.loc[row, "energy_eV"]),
                forces_eV_A=self.store.label_forces(fidelity, row),
            )
        return known


def _relax_key(request: dict[str, Any]) -> str:
    return f"{request['fidelity']}:{request['frame']}"


def _executing_keys(dask_worker) -> list[str]:  # noqa: ANN001 - runs on a worker
    return [task.key for task in dask_worker.state.executing]


def relax_task_key(request: dict[str, Any], settings_hash: str) -> str:
    """The Dask key, and journal name, of a policy's oracle relaxation: the same on a resume."""
    return f"relax-{_relax_key(request)}-{settings_hash}"
