"""Campaign: create, open, run, resume and report on one active-learning campaign.

One generation = train → explore → select → label → converge (generation 0 only labels
the bootstrap selection of the ShakeNBreak seeds). Every expensive step runs as Dask
tasks; the driver is the only writer of the campaign directory and records each step
before moving on, so a resume repeats no finished label and retrains no finished member.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from distributed import Client, as_completed

from activedefect import faults

from activedefect.oracle import journal
from activedefect.execution.cluster import open_cluster
from activedefect.campaign.convergence import GroundStateRecord, assess, assess_confirmed, mark_stale
from activedefect.execution.dashboard import METADATA_KEY, serve_from_driver
from activedefect.search.explore import EXPLODED
from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, displacement
from activedefect.labels import LabelResult
from activedefect.execution.reporting import LogReporter, Reporter
from activedefect.spec import FIDELITIES, CampaignSpec, ConfirmSpec, load_spec
from activedefect.store.zarr_store import Store
from activedefect.oracle.tasks import (
    BackendCall,
    OracleRelaxation,
    label_frame,
    relax_with_oracle,
    shared_data,
    train_member_task,
)
from activedefect.store.workspace import Workspace

STOP_REASONS = ("converged", "budget_low", "budget_high", "max_generations", "walltime", "error")


class Campaign:
    """A campaign directory and the loop that fills it.

    >>> campaign = Campaign.create("campaigns/quickstart.yaml", "runs/quickstart")  # doctest: +SKIP
    >>> campaign.run()                                                              # doctest: +SKIP
    >>> Campaign.open("runs/quickstart").resume()                                   # doctest: +SKIP
    """

    #: What the directory holds: ``"campaign"`` (active learning) or ``"baseline"`` (the
    #: brute-force reference of :mod:`activedefect.campaign.baseline`); kept in ``state.json``.
    mode = "campaign"

    def __init__(self, workspace: Workspace, spec: CampaignSpec):
        self.ws = workspace
        self.spec = spec
        self.state: dict[str, Any] = workspace.read_state() or self._initial_state()
        self._store: Store | None = None
        self._client: Client | None = None
        self._run_started = time.monotonic()
        self._wall_before = float(self.state.get("wall_s", 0.0))
        self.reporter: Reporter = LogReporter()

    # --- construction -----------------------------------------------------------------
    @classmethod
    def create(cls, spec_path: str | Path, directory: str | Path | None = None) -> "Campaign":
        """Validate the spec, check every charge state against the backends, and freeze
        spec and inputs into a new campaign directory (nothing expensive runs here)."""
        spec_path = Path(spec_path)
        spec = load_spec(spec_path)
        from activedefect.seeds.preparation import validate_seeds

        validate_seeds(spec)
        workspace = Workspace.create(spec, spec_path, directory or Path("runs") / spec.name)
        try:
            campaign = cls(workspace, workspace.load_spec())
            workspace.write_state(campaign.state)
            workspace.log_event("created", spec=str(spec_path))
        finally:
            workspace.release_lock()
        return campaign

    @classmethod
    def open(cls, directory: str | Path) -> "Campaign":
        """The campaign (or baseline) in ``directory``, as it was left."""
        workspace = Workspace(directory)
        from activedefect.campaign.baseline import Baseline

        kind = Baseline if workspace.read_state().get("mode") == Baseline.mode else Campaign
        return kind(workspace, workspace.load_spec())

    def _initial_state(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "mode": self.mode,
            "generation": -1,
            "phase": "created",
            "stop_reason": None,
            "error": None,
            "wall_s": 0.0,
            "host_check": {},
            "seeds": [],
            "ground_states": {},
            "history": [],
            "confirm": {},
        }

    # --- store ------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.ws.store_path, mode="a")
        return self._store

    def _close_store(self) -> None:
        """Give up the writer's hold on the store (another process or object may write next)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def _read_store(self) -> Store | None:
        if self._store is not None:
            return self._store
        try:
            return Store.open(self.ws.store_path, mode="r")
        except FileNotFoundError:  # not created yet, or being created by the driver right now
            return None

    def backend_call(self, fidelity: str) -> BackendCall:
        block = self.spec.fidelities[fidelity]
        pyiron_root = str(self.ws.pyiron_dir) if block.executor == "pyiron" else None
        return BackendCall(block.backend, dict(block.settings), block.timeout_s, block.retry.attempts, pyiron_root)

    def settings_hash(self, fidelity: str) -> str:
        return self.backend_call(fidelity).build().settings_hash

    # --- the loop -----------------------------------------------------------------------
    def run(
        self,
        *,
        workers: int | None = None,
        scheduler: str | None = None,
        dashboard_address: str | None = None,
        reporter: Reporter | None = None,
        on_cluster=None,  # noqa: ANN001 - callback(ClusterHandle), e.g. to print the dashboard link
    ) -> dict[str, Any]:
        """Run (or continue) the campaign until it converges or a budget stops it.
        Returns :meth:`status`."""
        self.reporter = reporter or LogReporter()
        self.ws.acquire_lock()
        self._run_started = time.monotonic()
        self._wall_before = float(self.state.get("wall_s", 0.0))
        stop_page = None
        try:
            if self.state.get("phase") == "stopped" and self.state.get("stop_reason") not in (None, "error", "walltime"):
                self.reporter.message(f"campaign already stopped: {self.state['stop_reason']}")
                return self.status()
            if self.state.get("stop_reason") in ("error", "walltime"):
                self.state["stop_reason"] = None  # else: stopped, but killed before the end (confirm) finished
            with open_cluster(
                self.spec.cluster, workers=workers, scheduler_address=scheduler, dashboard_address=dashboard_address
            ) as handle:
                self._client = handle.client
                if handle.campaign_page is None:
                    page, stop_page = serve_from_driver(self._status_with_history)
                    handle.campaign_page = page
                if on_cluster is not None:
                    on_cluster(handle)
                self.ws.log_event("run", dashboard=handle.dashboard_link, page=handle.campaign_page)
                self._publish()
                self._prepare()
                while True:
                    while self.state["stop_reason"] is None:
                        generation = self.state["generation"] + 1
                        self._run_generation(generation)
                        self.state["stop_reason"] = self._stop_reason()
                        self._save("generation-done")
                    self._finish()
                    if self.state["stop_reason"] != "converged" or self._stop_reason() == "converged":
                        break
                    # a confirmed minimum failed the tests its committee candidate passed: learn on,
                    # unless a limit was reached meanwhile
                    self.state["stop_reason"] = self._stop_reason()
                    self.ws.log_event("confirm-not-converged", generation=self.state["generation"],
                                      then=self.state["stop_reason"])
                    if self.state["stop_reason"] is not None:
                        break
                self._save("stopped")
                self.ws.log_event("stopped", reason=self.state["stop_reason"])
        except KeyboardInterrupt:
            self.ws.log_event("interrupted")
            raise
        except Exception as error:
            self.state["stop_reason"] = "error"
            self.state["error"] = f"{type(error).__name__}: {error}"
            self._save("error")
            self.ws.log_event("error", error=self.state["error"])
            raise
        finally:
            if self.ws.state_path.exists():
                self._write_state()
            if stop_page is not None:
                stop_page()
            self._client = None
            self._close_store()
            self.ws.release_lock()
        return self.status()

    resume = run

    def _share(self, data: Any):  # noqa: ANN202 - a Future
        """Send ``data`` to the cluster once for many tasks, as the result of a task rather
        than with ``scatter``: the scheduler keeps the task, so a worker lost while holding
        the data costs a recompute. Scattered data dies with its last replica, and Dask
        then forgets every task waiting on it (seen in the worker-kill test: a whole
        generation's labels cancelled)."""
        return self._client.submit(shared_data, data, pure=False)

    def _save(self, phase: str) -> None:
        self.state["phase"] = phase
        self._write_state()
        self._publish()

    def _write_state(self) -> None:
        """Write ``state.json`` with the wall time so far, so a killed driver keeps it."""
        self.state["wall_s"] = self._wall_before + time.monotonic() - self._run_started
        self.ws.write_state(self.state)

    def _publish(self) -> None:
        if self._client is not None:
            try:
                self._client.set_metadata(METADATA_KEY, self._status_with_history())
            except Exception:  # noqa: BLE001 - the dashboard must never stop the campaign
                pass

    # --- preparation: host check and seeds ----------------------------------------------
    def _prepare(self) -> None:
        from activedefect.seeds.preparation import build_campaign_seeds, host_check_task

        if self.spec.host_check.enabled:
            from activedefect.seeds.hostcheck import HostCheckResult, require_stable

            for fidelity in FIDELITIES:
                if fidelity in self.state["host_check"]:  # a resume: a refused host stays refused
                    require_stable(HostCheckResult.from_dict(self.state["host_check"][fidelity]))
                    continue
                self._save(f"host-check-{fidelity}")
                self.reporter.message(f"host check ({fidelity})")
                future = self._client.submit(
                    host_check_task, self.backend_call(fidelity), self.spec, fidelity, pure=False,
                    resources={"label": 1}, key=f"host-check-{fidelity}",
                )
                result = future.result()
                self.state["host_check"][fidelity] = result.as_dict()
                self.store.set_bulk_energy(
                    fidelity, result.relaxed_energy_eV, result.n_atoms, self.settings_hash(fidelity)
                )
                self.ws.log_event("host-check", **result.as_dict())
                self._save(f"host-check-{fidelity}")
                require_stable(result)
        if not self.state["seeds"]:
            seeds = build_campaign_seeds(self.spec)
            frames = self.store.add_frames([seed.atoms for seed in seeds])
            self.state["seeds"] = [
                {"frame": int(frame), "defect": s.defect, "charge": s.charge, "multiplicity": s.multiplicity,
                 "seed": s.distortion}
                for frame, s in zip(frames, seeds)
            ]
            self._save("seeded")
            self.ws.log_event("seeded", n_seeds=len(seeds))

    # --- one generation -------------------------------------------------------------------
    def _run_generation(self, generation: int) -> None:
        from activedefect.search import selection

        self.reporter.message(f"generation {generation}")
        gen_dir = self.ws.generation_dir(generation)
        if generation == 0:
            exploration = None
            requests = selection.cached_or_select(self, generation, exploration=None)
        else:
            model_paths = self._train(generation)
            exploration = selection.cached_or_explore(self, generation, model_paths)
            requests = selection.cached_or_select(self, generation, exploration=exploration)
        self._label(requests, generation)
        if exploration is not None:
            self._assess(generation, exploration)
        self.state["generation"] = generation
        self.ws.log_event("generation", generation=generation, labels=len(requests), dir=str(gen_dir))

    def _train(self, generation: int) -> list[Path]:
        """Train (or warm-start) every committee member not yet written for this generation."""
        from activedefect.model.committee import Committee, evaluate
        from activedefect.model.training import committee_config, train_settings, training_data

        committee_spec = self.spec.committee
        size = committee_spec.size
        paths = [self.ws.model_path(generation, i) for i in range(size)]
        missing = [i for i, path in enumerate(paths) if not path.exists()]
        hashes = {f: self.settings_hash(f) for f in FIDELITIES}
        train, valid = training_data(self.store, hashes, committee_spec.valid_fraction,
                                     committee_spec.minimum_weight, committee_spec.minimum_window_eV)
        if missing:
            self._save("train")
            self.reporter.start("training", len(missing))
            elements = sorted({str(e) for a in self.store.get_frames([r["frame"] for r in self.state["seeds"]])
                               for e in a.get_chemical_symbols()})
            config = committee_config(self.spec, self.state["seeds"], elements)
            data = self._share(train)
            futures = {}
            for member in missing:
                previous = self.ws.model_path(generation - 1, member) if generation > 1 else None
                warm = previous is not None and previous.exists()
                futures[
                    self._client.submit(
                        train_member_task,
                        data_by_head=data,
                        config=config,
                        seed=self.spec.seed * 1000 + member,
                        epochs=committee_spec.finetune_epochs if warm else committee_spec.epochs,
                        out_path=paths[member],
                        init_from=previous if warm else None,
                        bootstrap=committee_spec.bootstrap,
                        settings=train_settings(self.spec),
                        resources={"train": 1},
                        pure=False,
                        key=f"train-{generation:03d}-{member}",
                    )
                ] = member
            for future in as_completed(futures):
                report = future.result()
                faults.crash_point("train")
                self.ws.log_event("trained", generation=generation, member=futures[future], **report)
                self.reporter.advance()
        if not any(m.get("generation") == generation and m.get("kind") == "evaluation" for m in self.ws.metrics()):
            committee = Committee.load(paths)
            metrics = evaluate(committee, valid)
            self.ws.append_metrics({"kind": "evaluation", "generation": generation,
                                    "n_train": {h: len(a) for h, a in train.items()},
                                    "n_valid": {h: len(a) for h, a in valid.items()}, **metrics})
        return paths

    def _label(self, requests: list[dict[str, Any]], generation: int) -> None:
        """Label what is not labelled yet; each result is stored as it arrives. Requests
        with ``relax_steps`` > 0 are short oracle relaxations from the frame. The
        `labelling` event records what is sent to the oracle (a resume sends only the rest)."""
        hashes = {f: self.settings_hash(f) for f in FIDELITIES}
        done_relaxations = set(self.state.setdefault("relaxations", []))
        singles = [
            r for r in requests if not r.get("relax_steps")
            and not self.store.has_label(r["fidelity"], r["frame"], hashes[r["fidelity"]])
            and self.store.failed_attempts(r["fidelity"], r["frame"], hashes[r["fidelity"]]) == 0
        ]
        relaxations = [r for r in requests if r.get("relax_steps") and _relax_key(r) not in done_relaxations]
        if not singles and not relaxations:
            return
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
        for future in as_completed(futures):
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
            self.reporter.advance()
            self._publish()

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

    # --- convergence ------------------------------------------------------------------
    def _assess(self, generation: int, exploration) -> None:  # noqa: ANN001
        """Record each charge state's ground-state candidate and whether it converged."""
        from activedefect.search import selection
        from activedefect.seeds.defects import charged_name

        high_hash = self.settings_hash("high")
        labels = self.store.label_table("high")
        trust_lo, _ = selection.trust_window(self.spec)
        seeds = {s["seed"] for s in self.state["seeds"]}
        unfinished, exploded = exploration.unfinished(seeds), exploration.unfinished(seeds, (EXPLODED,))
        self.state["confirm"] = {}  # a confirm step before a resume confirmed older candidates
        for key, candidate in exploration.ground_state_candidates().items():
            defect, charge = key
            state = charged_name(defect, charge)
            previous = self.state["ground_states"].get(state)
            if previous and previous["generation"] == generation:
                continue  # assessed before a kill cut this generation short: not its own predecessor
            previous_record = GroundStateRecord.from_dict(previous) if previous else None
            record = GroundStateRecord(
                defect=defect, charge=charge, generation=generation, frame=int(candidate.frame),
                seed=candidate.members[0], predicted_energy_eV=candidate.energy_eV,
                max_force_spread_eV_A=candidate.max_force_std_eV_A, unfinished_seeds=unfinished.get(key, 0),
                exploded_seeds=exploded.get(key, 0),
            )
            rows = labels[(labels["frame"] == candidate.frame) & (labels["settings_hash"] == high_hash)
                          & (labels["status"] == "ok")]
            if len(rows):
                row = rows.index[-1]
                record.high_energy_eV = float(rows.loc[row, "energy_eV"])
                forces = self.store.label_forces("high", row)
                record.high_max_force_eV_A = float(np.linalg.norm(forces, axis=1).max())
            if previous_record is not None:
                shift = displacement(self.store.get_frame(previous_record.frame), self.store.get_frame(candidate.frame))
                record.rmsd_to_previous_A = shift.rmsd_A
                record.max_displacement_to_previous_A = shift.max_displacement_A
            assess(record, previous_record, self.spec.convergence, trust_lo)
            self.state["ground_states"][state] = record.as_dict()
            self.state["history"].append({"state": state, **record.as_dict()})
        for state, previous in self.state["ground_states"].items():
            self.state["ground_states"][state] = mark_stale(GroundStateRecord.from_dict(previous), generation).as_dict()
        self._save("assessed")

    def _stop_reason(self) -> str | None:
        gs = self.state["ground_states"]
        if gs and len(gs) == self._n_states() and all(r["converged"] for r in gs.values()):
            return "converged"
        oracle = self.oracle_totals()
        if oracle["low"]["calls"] >= self.spec.budget.low:
            return "budget_low"
        if oracle["high"]["calls"] >= self.spec.budget.high:
            return "budget_high"
        if self.state["generation"] + 1 >= self.spec.budget.generations:
            return "max_generations"
        walltime = self.spec.budget.walltime_s  # per run: a resume gets a fresh allocation
        if walltime is not None and time.monotonic() - self._run_started >= walltime:
            return "walltime"
        return None

    def _n_states(self) -> int:
        return len({(s["defect"], s["charge"]) for s in self.state["seeds"]})

    # --- the end: confirm and write the ground states -----------------------------------
    def _finish(self) -> None:
        """Confirm the ground states with `high` and write them (the loop has stopped)."""
        if self.spec.convergence.confirm is not None:  # also without any committee minimum: `low` minima
            self._confirm(self.spec.convergence.confirm)
        self._write_ground_states()

    def _confirm_starts(self, confirm: ConfirmSpec) -> dict[str, list[dict[str, Any]]]:
        """Per unconfirmed charge state, where its `high` relaxations start: the committee's
        ground state where it has one, then the lowest distinct `low` minima
        (:mod:`activedefect.search.screening`) — a state whose committee relaxations all stopped
        short is confirmed from its `low` minima alone."""
        from activedefect.search import screening
        from activedefect.seeds.defects import charged_name

        minima = screening.lineage_minima(self.store, self.settings_hash("low")) if confirm.low_minima else {}
        starts = {}
        for defect, charge in sorted({(s["defect"], s["charge"]) for s in self.state["seeds"]}):
            state = charged_name(defect, charge)
            if state in self.state["confirm"]:
                continue
            record = self.state["ground_states"].get(state)
            committee = [{"source": "committee", "start_frame": int(record["frame"]), "seed": record["seed"]}
                         ] if record else []
            others = screening.distinct_low_minima(
                self.store, minima.get((defect, int(charge)), []), confirm.low_minima,
                exclude_frames=[c["start_frame"] for c in committee],
            )
            candidates = committee + [
                {"source": "low minimum", "start_frame": m.frame, "seed": m.seed, "low_energy_eV": m.low_energy_eV}
                for m in others
            ]
            if candidates:
                starts[state] = candidates
        return starts

    def _confirm(self, confirm: ConfirmSpec) -> None:
        """Relax each ground-state candidate with `high` (:meth:`_confirm_starts`); the
        lowest final energy is the confirmed ground state. Every call is stored as a
        `high` label, so it counts in the oracle totals and feeds later training; a
        resume replays the steps already labelled."""
        starts = self._confirm_starts(confirm)
        if not starts:
            return
        n_starts = sum(len(s) for s in starts.values())
        calls_each = (self.spec.budget.confirm_high - self.state.get("confirm_calls", 0)) // n_starts
        if calls_each < 1:
            self.ws.log_event("confirm-skipped", reason="budget.confirm_high spent", starts=n_starts)
            self.reporter.message(f"confirm skipped: budget.confirm_high ({self.spec.budget.confirm_high}) spent")
            return
        steps = min(confirm.steps, calls_each - 1)  # FIRE evaluates the start and then once per step
        self._save("confirm")
        self.reporter.start("confirm (high-fidelity relaxations)", n_starts)
        call = self.backend_call("high")
        known = self._share(self._known_labels("high"))
        high_hash = self.settings_hash("high")
        futures = {}
        for state, candidates in starts.items():
            for candidate in candidates:
                atoms = self.store.get_frame(candidate["start_frame"])
                atoms.info["origin"] = {"seed": candidate["seed"], "generation": self.state["generation"],
                                        "trajectory": -1, "step": 0}
                key = f"confirm-{state}-{candidate['start_frame']}-{high_hash}"  # a journal per level of theory
                futures[self._client.submit(
                    relax_with_oracle, call, atoms, confirm.fmax, steps, known, self._journal(key),
                    resources={"label": 1}, pure=False, key=key,
                )] = (state, candidate, atoms)
        done: dict[str, list[dict[str, Any]]] = {state: [] for state in starts}
        for future in as_completed(futures):
            state, candidate, start = futures[future]
            try:
                relaxation = future.result()
            except Exception as error:  # noqa: BLE001 - e.g. a worker lost too often: a failed start, not a stop
                self._count_confirm_calls(
                    self._store_relaxation("high", start, journal.load(self._journal(future.key)), future.key))
                failure = f"task failed: {type(error).__name__}: {error}"
                done[state].append({**candidate, "error": failure})
                self.ws.log_event("confirm-failed", state=state, start_frame=candidate["start_frame"], error=failure)
            else:
                self._count_confirm_calls(self._store_relaxation("high", start, relaxation.new, future.key))
                done[state].append({**candidate, **self._relaxation_summary(start, relaxation)})
            self.reporter.advance()
            if len(done[state]) < len(starts[state]):
                continue
            relaxed = [c for c in done[state] if "final_energy_eV" in c]
            # none relaxed (every start failed): the committee's candidate stays the ground state
            best = min(relaxed, key=lambda c: c["final_energy_eV"]) if relaxed else starts[state][0]
            self.state["confirm"][state] = {**best, "candidates": sorted(done[state], key=lambda c: c["start_frame"])}
            if "frame" in best and state in self.state["ground_states"]:
                self._record_confirmed(state, best)
            self.ws.log_event("confirmed", state=state, **best)
            self._save("confirm")

    def _record_confirmed(self, state: str, best: dict[str, Any]) -> None:
        """The ground-state record becomes the confirmed minimum's: its `high` energy and
        forces, the last committee's prediction there, and the convergence tests on it."""
        from activedefect.search import selection
        from activedefect.model.committee import Committee

        candidate = GroundStateRecord.from_dict(self.state["ground_states"][state])
        atoms = self.store.get_frame(best["frame"])
        paths = [self.ws.model_path(candidate.generation, i) for i in range(self.spec.committee.size)]
        [prediction] = Committee.load(paths).predict([atoms], head="high")
        shift = displacement(self.store.get_frame(candidate.frame), atoms)
        record = GroundStateRecord(
            defect=candidate.defect, charge=candidate.charge, generation=candidate.generation, frame=int(best["frame"]),
            seed=best["seed"], predicted_energy_eV=prediction.energy_mean_eV,
            max_force_spread_eV_A=prediction.max_force_std_eV_A, high_energy_eV=best["final_energy_eV"],
            high_max_force_eV_A=best["final_max_force_eV_A"], rmsd_to_previous_A=shift.rmsd_A,
            max_displacement_to_previous_A=shift.max_displacement_A, unfinished_seeds=candidate.unfinished_seeds,
            exploded_seeds=candidate.exploded_seeds, confirmed_from=best["source"],
        )
        assess_confirmed(record, candidate, self.spec.convergence, selection.trust_window(self.spec)[0])
        self.state["ground_states"][state] = record.as_dict()
        self.state["history"].append({"state": state, **record.as_dict()})

    def _count_confirm_calls(self, n_labels: int) -> None:
        """The confirm step's `high` calls so far, against ``budget.confirm_high``."""
        self.state["confirm_calls"] = self.state.get("confirm_calls", 0) + n_labels

    def _relaxation_summary(self, start: Atoms, relaxation: OracleRelaxation) -> dict[str, Any]:
        """Where a confirm relaxation went; steps labelled before are replayed, not recomputed."""
        summary: dict[str, Any] = {"steps": len(relaxation.path), "new_calls": len(relaxation.new)}
        ok = [(f, r) for f, r in relaxation.path if r.ok]
        if ok:
            final, final_label = ok[-1]
            shift = displacement(start, final)
            summary.update(
                rmsd_A=shift.rmsd_A, max_displacement_A=shift.max_displacement_A,
                start_energy_eV=ok[0][1].energy_eV, final_energy_eV=final_label.energy_eV,
                final_max_force_eV_A=float(np.linalg.norm(final_label.forces_eV_A, axis=1).max()),
                frame=self.store.find_frame(final),
            )
        return summary

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

    def _write_ground_states(self) -> None:
        """``ground_states/<state>.extxyz`` and ``.vasp`` of every state with a ground state
        (:func:`ground_state_frames`)."""
        from ase.io import write

        self.ws.ground_states_dir.mkdir(exist_ok=True)
        records, confirmed = self.state["ground_states"], self.state.get("confirm", {})
        for state, frame in ground_state_frames(self.state).items():
            atoms = self.store.get_frame(frame)
            record, confirm = records.get(state), confirmed.get(state, {})
            atoms.info = {CHARGE_KEY: int(atoms.info[CHARGE_KEY]), "total_spin": atoms.info["total_spin"],
                          DEFECT_KEY: atoms.info[DEFECT_KEY], "seed": confirm.get("seed") or record["seed"],
                          "generation": record["generation"] if record else self.state["generation"]}
            if "frame" in confirm:
                atoms.info.update(high_energy_eV=confirm["final_energy_eV"],
                                  confirmed_from=confirm.get("source", "committee"))
            else:
                atoms.info["predicted_energy_eV"] = record["predicted_energy_eV"]
            write(self.ws.ground_states_dir / f"{state}.extxyz", atoms, format="extxyz")
            write(self.ws.ground_states_dir / f"{state}.vasp", atoms, format="vasp", direct=True, sort=False)

    # --- data in and out ------------------------------------------------------------------
    def import_labels(self, source: str | Path, fidelity: str) -> int:
        """Import past labelled work (an extxyz file or a ShakeNBreak VASP output folder) as
        labels of ``fidelity``; they count as that fidelity's level of theory."""
        from activedefect.oracle.importers import import_shakenbreak_vasp

        source = Path(source)
        self.ws.acquire_lock()
        try:
            settings_hash = self.settings_hash(fidelity)
            if source.is_dir():
                summary = import_shakenbreak_vasp(source, self.store, fidelity, settings_hash)
                for path, reason in summary.skipped:
                    self.reporter.message(f"skipped {path}: {reason}")
                added = summary.labels_added
            else:
                added = self.store.import_extxyz(source, fidelity, settings_hash, metadata={"imported_from": str(source)})
            self.ws.log_event("imported", source=str(source), fidelity=fidelity, labels=added)
            return added
        finally:
            self._close_store()
            self.ws.release_lock()

    def export(self, out: str | Path) -> list[Path]:
        """Labelled data per fidelity (extxyz MACE trains on), the ground states, the
        last generation's committee as MACE model files (with ``calculator.json``), the
        ShakeNBreak folder layout and every minimum (:mod:`activedefect.results.takeaways`)."""
        import shutil

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        store = self._read_store()
        written = []
        for fidelity in FIDELITIES:
            path = out / f"labels-{fidelity}.extxyz"
            if store is not None and store.export_extxyz(path, fidelity):
                written.append(path)
        if self.ws.ground_states_dir.exists():
            target = out / "ground_states"
            shutil.copytree(self.ws.ground_states_dir, target, dirs_exist_ok=True)
            written.append(target)
        from activedefect.results import takeaways
        from activedefect.results.campaign_results import CampaignResults

        results = CampaignResults(self)
        if takeaways.write_models(results, out / "models"):
            written.append(out / "models")
        if store is not None and results.has_ground_states:
            takeaways.write_shakenbreak(results, out / "shakenbreak")
            takeaways.write_minima(results, out / "minima")
            written += [out / "shakenbreak", out / "minima"]
        return written

    # --- results for notebooks -------------------------------------------------------------
    def results(self):  # noqa: ANN201 - CampaignResults
        from activedefect.results.campaign_results import CampaignResults

        return CampaignResults(self)

    def ground_states(self):  # noqa: ANN201 - pandas.DataFrame
        """One row per defect × charge state (see :meth:`CampaignResults.ground_states`)."""
        return self.results().ground_states()

    def minima(self):  # noqa: ANN201 - pandas.DataFrame
        """Every minimum of the last exploration, rank 0 the ground state."""
        return self.results().minima()

    def transition_levels(self):  # noqa: ANN201 - pandas.DataFrame
        """eps(q/q') of adjacent charge states, eV above the VBM."""
        return self.results().transition_levels()

    def history(self):  # noqa: ANN201 - pandas.DataFrame
        """Per generation and charge state: ground-state record and committee evaluation."""
        return self.results().history()

    def report(self, out: str | Path | None = None) -> Path:
        """Figures, their data and ``index.html`` in ``DIR/report`` (or ``out``)."""
        from activedefect.results.report import write_report

        return write_report(self.results(), Path(out) if out is not None else None)

    # --- what users read ------------------------------------------------------------------
    def oracle_totals(self, store: Store | None = None) -> dict[str, dict[str, float]]:
        """Backend calculations actually run per fidelity (failures and retries included)
        and their summed wall seconds, from the store (the single source of truth)."""
        store = store or self._read_store()
        totals = {}
        for fidelity in FIDELITIES:
            table = store.label_table(fidelity) if store is not None else None
            if table is None or not len(table):
                totals[fidelity] = {"calls": 0, "failures": 0, "seconds": 0.0}
                continue
            retries = sum(int(m.get("retries", 0)) for m in table["metadata"])
            totals[fidelity] = {
                "calls": int(len(table) + retries),
                "failures": int((table["status"] != "ok").sum()),
                "seconds": float(table["wall_s"].sum()),
            }
        return totals

    def status(self) -> dict[str, Any]:
        """The object `activedefect campaign status --json` prints."""
        state = self.ws.read_state() if self._client is None else self.state
        from activedefect.seeds.defects import charged_name

        ground_states = []
        recorded = state.get("ground_states", {})
        confirmed = state.get("confirm", {})
        frames = ground_state_frames(state)
        store = self._read_store()
        high_energies = self._high_energies(store, list(frames.values()))
        for defect, charge in sorted({(s["defect"], s["charge"]) for s in state.get("seeds", [])}):
            name = charged_name(defect, charge)
            record = recorded.get(name)
            path = self.ws.ground_states_dir / f"{name}.extxyz"
            ground_states.append({
                "defect": defect,
                "charge": charge,
                "converged": bool(record and record["converged"]),
                "seed": confirmed.get(name, {}).get("seed") or (record["seed"] if record else None),
                "predicted_energy_eV": record["predicted_energy_eV"] if record else None,
                "high_energy_eV": high_energies.get(frames[name]) if name in frames else None,
                "max_force_spread_eV_A": record["max_force_spread_eV_A"] if record else None,
                "structure": str(path.relative_to(self.ws.root)) if path.exists() else None,
            })
        return {
            "name": self.spec.name,
            "mode": self.mode,
            "generation": state.get("generation", -1),
            "phase": state.get("phase"),
            "converged": state.get("stop_reason") == "converged",
            "stop_reason": state.get("stop_reason"),
            "oracle": self.oracle_totals(store),
            "budget": {"low": self.spec.budget.low, "high": self.spec.budget.high,
                       "confirm_high": self.spec.budget.confirm_high},
            "confirm_calls": state.get("confirm_calls", 0),
            "ground_states": ground_states,
            "confirm": state.get("confirm", {}),
            "wall_s": state.get("wall_s", 0.0),
        }

    def _high_energies(self, store: Store | None, frames: list[int]) -> dict[int, float]:
        """Energy of the ok `high` label (current settings) of each of ``frames`` that has
        one — from the store, so a label the confirm step added after the last assessment
        counts too."""
        if store is None or not frames:
            return {}
        settings_hash = self.settings_hash("high")
        rows = {f: store.label_row("high", f, settings_hash) for f in frames}
        if all(row is None for row in rows.values()):
            return {}
        energies = store.label_table("high")["energy_eV"]
        return {f: float(energies.loc[row]) for f, row in rows.items() if row is not None}

    def _status_with_history(self) -> dict[str, Any]:
        status = self.status()
        status["history"] = [
            {k: row.get(k) for k in ("generation", "state", "predicted_energy_eV", "max_force_spread_eV_A",
                                      "rmsd_to_previous_A", "converged")}
            for row in self.state.get("history", [])
        ]
        return status


def ground_state_frames(state: dict[str, Any]) -> dict[str, int]:
    """Per charge state (of a campaign's ``state.json``), the frame its ground state is:
    the end of the lowest confirm relaxation, else the committee's candidate."""
    confirmed = state.get("confirm", {})
    frames = {name: int(record["frame"]) for name, record in state.get("ground_states", {}).items()}
    frames.update({name: int(c["frame"]) for name, c in confirmed.items() if c.get("frame") is not None})
    return dict(sorted(frames.items()))


def _relax_key(request: dict[str, Any]) -> str:
    return f"{request['fidelity']}:{request['frame']}"


def relax_task_key(request: dict[str, Any], settings_hash: str) -> str:
    """The Dask key, and journal name, of a policy's oracle relaxation: the same on a resume."""
    return f"relax-{_relax_key(request)}-{settings_hash}"
