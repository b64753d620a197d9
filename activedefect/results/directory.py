"""A campaign directory as the results, the CLI and the dashboard read it: its spec,
state, store and oracle totals, and the ``status --json`` object. The driver
(:class:`~activedefect.campaign.loop.Campaign`) is one of these that also runs the loop,
so everything here reads the directory and never needs the loop."""

from __future__ import annotations

from typing import Any

from activedefect.oracle.tasks import BackendCall
from activedefect.seeds.defects import charged_name
from activedefect.spec import FIDELITIES, CampaignSpec
from activedefect.store.workspace import Workspace
from activedefect.store.zarr_store import Store


class CampaignDirectory:
    """Read access to one campaign (or baseline) directory."""

    #: ``"campaign"`` (active learning) or ``"baseline"`` (the brute-force reference of
    #: :mod:`activedefect.campaign.baseline`); kept in ``state.json``.
    mode = "campaign"

    def __init__(self, workspace: Workspace, spec: CampaignSpec):
        self.ws = workspace
        self.spec = spec

    def current_state(self) -> dict[str, Any]:
        """The campaign's state as last written to ``state.json``."""
        return self.ws.read_state()

    def _read_store(self) -> Store | None:
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
        state = self.current_state()

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
                "state": name,
                "defect": defect,
                "charge": charge,
                "converged": bool(record and record["converged"]),
                "seed": confirmed.get(name, {}).get("seed") or (record["seed"] if record else None),
                "predicted_energy_eV": record["predicted_energy_eV"] if record else None,
                "high_energy_eV": high_energies.get(frames[name]) if name in frames else None,
                "max_force_spread_eV_A": record["max_force_spread_eV_A"] if record else None,
                "high_max_force_eV_A": record.get("high_max_force_eV_A") if record else None,
                "not_converged_because": list(record.get("reasons", [])) if record else ["no ground state yet"],
                "structure": str(path.relative_to(self.ws.root)) if path.exists() else None,
            })
        return {
            "name": self.spec.name,
            "mode": self.mode,
            "generation": state.get("generation", -1),
            "working_on": state.get("generation", -1) + 1 if state.get("phase") in GENERATION_PHASES else None,
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
        if store is None:
            return {}
        settings_hash = self.settings_hash("high")
        energies = {f: store.label_energy("high", f, settings_hash) for f in frames}
        return {f: e for f, e in energies.items() if e is not None}

    def _status_with_history(self) -> dict[str, Any]:
        status = self.status()
        status["history"] = [
            {k: row.get(k) for k in ("generation", "state", "predicted_energy_eV", "max_force_spread_eV_A",
                                      "rmsd_to_previous_A", "converged")}
            for row in self.current_state().get("history", [])
        ]
        return status


#: Phases inside a generation: ``generation`` is the last one finished, the next is at work.
GENERATION_PHASES = ("train", "explore", "label", "assessed")


def ground_state_frames(state: dict[str, Any]) -> dict[str, int]:
    """Per charge state (of a campaign's ``state.json``), the frame its ground state is:
    the end of the lowest confirm relaxation, else the committee's candidate."""
    confirmed = state.get("confirm", {})
    frames = {name: int(record["frame"]) for name, record in state.get("ground_states", {}).items()}
    frames.update({name: int(c["frame"]) for name, c in confirmed.items() if c.get("frame") is not None})
    return dict(sorted(frames.items()))
