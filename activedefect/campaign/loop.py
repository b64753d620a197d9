"""Campaign: create, open, run, resume and report on one active-learning campaign.

One generation = train → explore → select → label → converge (generation 0 only labels
the bootstrap selection of the ShakeNBreak seeds). Every expensive step runs as Dask
tasks; the driver is the only writer of the campaign directory and records each step
before moving on, so a resume repeats no finished label and retrains no finished member.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

from distributed import Client

from activedefect.campaign.confirm import ConfirmStep
from activedefect.campaign.generation import GenerationStep
from activedefect.campaign.labelling import LabellingStep
from activedefect.campaign.live import LivePage, PublishingReporter
from activedefect.execution.cluster import open_cluster
from activedefect.execution.dashboard import serve_from_driver
from activedefect.execution.reporting import LogReporter, Reporter
from activedefect.oracle.tasks import shared_data
from activedefect.results.directory import CampaignDirectory
from activedefect.spec import FIDELITIES, CampaignSpec, load_spec
from activedefect.store.workspace import Workspace
from activedefect.store.zarr_store import Store

#: What the driver prints when a generation changed nothing the next one would start from.
NO_NEW_LABELS = (
    "generation {generation} selected no label and no relaxation will go on further: the next generation "
    "would retrain on the same data and explore the same way, so the loop stops (no_new_labels). Where every "
    "committee relaxation was cut, raise the uncertainty policy's trust_hi or cut_relax_steps (or "
    "exploration.trust_relative); where budgets cut the requests, raise budget.low / budget.high."
)
STOP_REASONS = ("converged", "budget_low", "budget_high", "no_new_labels", "max_generations", "walltime", "error")


class Campaign(CampaignDirectory, GenerationStep, LabellingStep, ConfirmStep, LivePage):
    """A campaign directory and the loop that fills it.

    >>> campaign = Campaign.create("campaigns/quickstart.yaml", "runs/quickstart")  # doctest: +SKIP
    >>> campaign.run()                                                              # doctest: +SKIP
    >>> Campaign.open("runs/quickstart").resume()                                   # doctest: +SKIP
    """

    #: Driver class per ``mode`` (a subclass registers itself), so :meth:`open` returns a
    #: baseline directory's :class:`~activedefect.campaign.baseline.Baseline`.
    kinds: ClassVar[dict[str, type["Campaign"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Campaign.kinds[cls.mode] = cls

    def __init__(self, workspace: Workspace, spec: CampaignSpec):
        super().__init__(workspace, spec)
        self.state: dict[str, Any] = workspace.read_state() or self._initial_state()
        self._store: Store | None = None
        self._client: Client | None = None
        self._run_started = time.monotonic()
        self._wall_before = float(self.state.get("wall_s", 0.0))
        self.reporter: Reporter = LogReporter()
        self._landscape: dict[str, list[dict[str, Any]]] = {}  # the campaign page's energy-vs-distortion plot
        self._published: dict[str, Any] | None = None
        self._revision = 0  # of the pushes: the page redraws when it changes
        self._page_errors: set[str] = set()  # logged once each (activedefect.campaign.live)

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
        kind = Campaign.kinds.get(workspace.read_state().get("mode"), Campaign)
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
        return self._store if self._store is not None else super()._read_store()

    def current_state(self) -> dict[str, Any]:
        """While the loop runs, the state in memory (newer than ``state.json`` between saves)."""
        return self.state if self._client is not None else super().current_state()

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
        self.reporter = PublishingReporter(reporter or LogReporter(), self._publish)
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
                    page, stop_page = serve_from_driver(lambda: self._published)
                    handle.campaign_page = page
                    if page is None:
                        self.ws.log_event("page-error", error="the driver could not serve the campaign page")
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
                        if self.state["stop_reason"] == "no_new_labels":
                            self.reporter.message(NO_NEW_LABELS.format(generation=generation))
                        self._save("generation-done")
                    self._finish()
                    if self.state["stop_reason"] != "converged" or self._stop_reason() == "converged":
                        break
                    # a confirmed minimum failed the tests its committee candidate passed: learn on
                    # (confirm added labels, so the loop has not stalled), unless a limit was reached
                    self.state["stalled"] = False
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
                stop_page()  # never raises: the page's server thread is stopped and joined
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

    # --- when to stop -------------------------------------------------------------------
    def _stop_reason(self) -> str | None:
        gs = self.state["ground_states"]
        if gs and len(gs) == self._n_states() and all(r["converged"] for r in gs.values()):
            return "converged"
        oracle = self.oracle_totals()
        if oracle["low"]["calls"] >= self.spec.budget.low:
            return "budget_low"
        if oracle["high"]["calls"] >= self.spec.budget.high:
            return "budget_high"
        if self.state.get("stalled"):
            return "no_new_labels"  # the next generation would repeat this one
        if self.state["generation"] + 1 >= self.spec.budget.generations:
            return "max_generations"
        if self._walltime_passed():
            return "walltime"
        return None

    def _walltime_passed(self) -> bool:
        """``budget.walltime_s`` is spent — per run: a resume gets a fresh allocation."""
        walltime = self.spec.budget.walltime_s
        return walltime is not None and time.monotonic() - self._run_started >= walltime

    def _n_states(self) -> int:
        return len({(s["defect"], s["charge"]) for s in self.state["seeds"]})

    # --- the end: confirm and write the ground states -----------------------------------

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
