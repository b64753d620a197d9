"""The driver's last step: relax each charge state's ground-state candidates with
`high` (the committee's minimum and the lowest distinct `low` minima), within
``budget.confirm_high``; the lowest is the confirmed ground state and its record is
re-assessed on that structure. Then the ground-state files are written."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from distributed import as_completed

from activedefect.campaign.convergence import GroundStateRecord, assess_confirmed
from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, displacement
from activedefect.oracle import journal
from activedefect.oracle.tasks import OracleRelaxation, relax_with_oracle
from activedefect.results.directory import ground_state_frames
from activedefect.spec_blocks import ConfirmSpec


class ConfirmStep:
    """Part of :class:`~activedefect.campaign.loop.Campaign`: it uses the driver's store,
    client and state."""

    def _finish(self) -> None:
        """Confirm the ground states with `high` and write them (the loop has stopped; out of
        walltime, confirmation waits for a resume)."""
        # also without any committee minimum (from `low` minima)
        if self.spec.convergence.confirm is not None and self.state["stop_reason"] != "walltime":
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
        steps = min(confirm.steps, calls_each - 1)  # the optimiser evaluates the start and then once per step
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
                    confirm.optimizer, confirm.bfgs_alpha_eV_A2, resources={"label": 1}, pure=False, key=key,
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
        from activedefect.model.committee import Committee
        from activedefect.search import selection

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
