"""The driver's generation step: train the committee (or warm-start it), explore from the
seeds and select what to label; after labelling, record each charge state's ground-state
candidate and whether it converged. Generation 0 only labels the bootstrap selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from distributed import as_completed

from activedefect import faults
from activedefect.campaign.convergence import GroundStateRecord, assess, mark_stale
from activedefect.geometry import displacement
from activedefect.search import selection
from activedefect.search.relaxation import EXPLODED, MAX_STEPS
from activedefect.spec import FIDELITIES


class GenerationStep:
    """Part of :class:`~activedefect.campaign.loop.Campaign`: it uses the driver's store,
    client and state."""

    def _run_generation(self, generation: int) -> None:
        self.reporter.message(f"generation {generation}")
        gen_dir = self.ws.generation_dir(generation)
        context = self._generation_context()
        if generation == 0:
            exploration = None
            requests = selection.cached_or_select(context, generation, exploration=None)
        else:
            model_paths = self._train(generation)
            exploration = selection.cached_or_explore(context, generation, model_paths)
            requests = selection.cached_or_select(context, generation, exploration=exploration)
            self._show_landscape(exploration)
        if not self._label(requests, generation):
            return  # out of walltime: a resume labels the rest of this generation
        if exploration is not None:
            self._assess(generation, exploration)
        # stalled: no label and no relaxation that will go on further next generation
        going_on = exploration is not None and self.spec.exploration.continue_unfinished and any(
            r.status == MAX_STEPS for r in exploration.results)
        self.state["stalled"] = exploration is not None and not requests and not going_on
        self.state["generation"] = generation
        self.ws.log_event("generation", generation=generation, labels=len(requests), dir=str(gen_dir))

    def _generation_context(self) -> selection.GenerationContext:
        return selection.GenerationContext(
            ws=self.ws, spec=self.spec, store=self.store, state=self.state, client=self._client,
            reporter=self.reporter, save_phase=self._save,
            settings_hashes={f: self.settings_hash(f) for f in FIDELITIES},
            oracle_calls={f: int(t["calls"]) for f, t in self.oracle_totals().items()},
        )

    def _train(self, generation: int) -> list[Path]:
        """Train (or warm-start) every committee member not yet written for this generation."""
        from activedefect.model.committee import Committee, evaluate
        from activedefect.model.training import (
            committee_config,
            train_member_task,
            train_settings,
            training_data,
        )

        committee_spec = self.spec.committee
        size = committee_spec.size
        paths = [self.ws.model_path(generation, i) for i in range(size)]
        missing = [i for i, path in enumerate(paths) if not path.exists()]
        hashes = {f: self.settings_hash(f) for f in FIDELITIES}
        train, valid = training_data(self.store, hashes, committee_spec.valid_fraction,
                                     committee_spec.minimum_weight, committee_spec.minimum_window_eV,
                                     committee_spec.trajectory_stride)
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

    # --- convergence ------------------------------------------------------------------
    def _assess(self, generation: int, exploration) -> None:  # noqa: ANN001
        """Record each charge state's ground-state candidate and whether it converged."""
        from activedefect.seeds.defects import charged_name

        high_hash = self.settings_hash("high")
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
            row = self.store.label_row("high", candidate.frame, high_hash)
            if row is not None:
                record.high_energy_eV = self.store.label_energy("high", candidate.frame, high_hash)
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
        self._show_landscape(exploration)  # with the labels this generation added
        self._save("assessed")
