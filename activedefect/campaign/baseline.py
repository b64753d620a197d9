"""The brute-force reference: every ShakeNBreak distortion of every charge state relaxed
with the `high` backend directly, as in the standard ShakeNBreak workflow.

A baseline is a campaign directory whose loop is one generation of oracle relaxations
(the same seeds, the same Dask cluster, the same store, lock and resume as a campaign;
the confirm step's ``fmax`` and ``steps``, with FIRE: every seed relaxes from far from a
minimum, as in ShakeNBreak's screen, not from near one as the confirm step's BFGS does).
Its ground state per defect × charge is the lowest-energy `high` label of any of its
relaxations; its status JSON and ``ground_states/`` files have a campaign's format, with
``predicted_energy_eV`` equal to the `high` energy (there is no model). Budgets do not apply: a baseline runs everything.
"""

from __future__ import annotations

import numpy as np

from activedefect.campaign.convergence import GroundStateRecord
from activedefect.campaign.loop import Campaign
from activedefect.seeds.defects import charged_name
from activedefect.spec_blocks import ConfirmSpec


class Baseline(Campaign):
    """``Baseline.create(spec, dir).run()``; ``Campaign.open(dir)`` reopens it as one."""

    mode = "baseline"

    @property
    def relaxation(self) -> ConfirmSpec:
        return self.spec.convergence.confirm or ConfirmSpec()

    def _run_generation(self, generation: int) -> None:
        self.reporter.message("baseline: relaxing every seed with the high-fidelity backend")
        settings = self.relaxation
        requests = [
            {"frame": seed["frame"], "fidelity": "high", "policy": "baseline", "reason": seed["seed"],
             "relax_steps": settings.steps, "relax_fmax_eV_A": settings.fmax}
            for seed in self.state["seeds"]
        ]
        if not self._label(requests, generation):
            return  # out of walltime: a resume relaxes the rest
        self._assess_relaxations(generation)
        self.state["generation"] = generation
        self.ws.log_event("generation", generation=generation, labels=len(requests))

    def _assess_relaxations(self, generation: int) -> None:
        """Per defect × charge, the lowest-energy `high` label of all relaxations; it is
        converged when its largest force is within the relaxation's fmax."""
        settings_hash = self.settings_hash("high")
        labels = self.store.label_table("high")
        labels = labels[(labels["status"] == "ok") & (labels["settings_hash"] == settings_hash)]
        frames = self.store.frame_table().set_index("frame").loc[labels["frame"]]
        labels = labels.assign(defect=frames["defect"].to_numpy(), charge=frames["charge"].to_numpy(),
                               seed=frames["seed"].to_numpy())
        for (defect, charge), group in labels.groupby(["defect", "charge"]):
            row = group["energy_eV"].idxmin()
            max_force = float(np.linalg.norm(self.store.label_forces("high", row), axis=1).max())
            energy = float(group.loc[row, "energy_eV"])
            record = GroundStateRecord(
                defect=str(defect), charge=int(charge), generation=generation, frame=int(group.loc[row, "frame"]),
                seed=str(group.loc[row, "seed"]), predicted_energy_eV=energy, max_force_spread_eV_A=0.0,
                high_energy_eV=energy, high_max_force_eV_A=max_force,
                converged=max_force <= self.relaxation.fmax,
                reasons=() if max_force <= self.relaxation.fmax
                else (f"max |F_high| = {max_force:.3f} eV/Å after {self.relaxation.steps} steps",),
            )
            name = charged_name(record.defect, record.charge)
            self.state["ground_states"][name] = record.as_dict()
            self.state["history"].append({"state": name, **record.as_dict()})
        self._save("assessed")

    def _stop_reason(self) -> str | None:
        if self.state["generation"] < 0:
            return "walltime" if self._walltime_passed() else None
        records = self.state["ground_states"].values()
        return "converged" if records and all(r["converged"] for r in records) else "max_generations"

    def _finish(self) -> None:
        self._write_ground_states()
