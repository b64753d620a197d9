"""What a defect scientist reads from a campaign directory: ground states and metastable
minima per defect × charge state, transition levels, and the per-generation history.

Everything is read from what the campaign left (state.json, metrics.jsonl,
generations/gen-NNN/exploration.*, the store, the models); nothing here writes into the
campaign directory. Energies are on the `high` level of theory (committee predictions on
the `high` head, or `high` labels), in eV.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from ase.geometry import get_distances

from activedefect.results import levels
from activedefect.results.defect_site import (
    DefectSite,
    coordination_shell,
    local_bonding,
    root_distortion,
)
from activedefect.results.directory import CampaignDirectory, ground_state_frames
from activedefect.seeds.defects import charged_name, split_charged_name

if TYPE_CHECKING:
    from activedefect.search.selection import Exploration


class CampaignResults:
    """Results of one campaign directory, read lazily and cached per instance."""

    def __init__(self, directory: CampaignDirectory):
        self.directory = directory
        self.ws = directory.ws
        self.spec = directory.spec
        self.state = directory.ws.read_state()

    # --- raw material ------------------------------------------------------------------
    @cached_property
    def store(self):
        from activedefect.store.zarr_store import Store

        return Store.open(self.ws.store_path, mode="r")

    @cached_property
    def last_exploration_generation(self) -> int | None:
        found = sorted(self.ws.root.glob("generations/gen-*/exploration.pkl"))
        return int(found[-1].parent.name.split("-")[1]) if found else None

    @cached_property
    def exploration(self) -> Exploration | None:
        generation = self.last_exploration_generation
        if generation is None:
            return None
        return pickle.loads((self.ws.generation_dir(generation) / "exploration.pkl").read_bytes())

    @cached_property
    def final_model_paths(self) -> list[Path]:
        """The committee of the last generation whose members are all written."""
        size = self.spec.committee.size
        for directory in sorted(self.ws.root.glob("models/gen-*"), reverse=True):
            paths = [directory / f"member-{i}.model" for i in range(size)]
            if all(p.exists() for p in paths):
                return paths
        return []

    @cached_property
    def committee(self):
        from activedefect.model.committee import Committee

        if not self.final_model_paths:
            raise FileNotFoundError(f"{self.ws.root} has no complete committee under models/ yet")
        return Committee.load(self.final_model_paths)

    @cached_property
    def high_hash(self) -> str:
        return self.directory.settings_hash("high")

    def high_label(self, frame: int) -> float | None:
        """Energy of the ok `high` label (current settings) of ``frame``, or None."""
        return self.store.label_energy("high", int(frame), self.high_hash)

    @cached_property
    def seed_frames(self) -> dict[tuple[str, int, str], int]:
        return {(s["defect"], int(s["charge"]), s["seed"]): int(s["frame"]) for s in self.state.get("seeds", [])}

    @cached_property
    def seed_metadata(self) -> dict[str, dict[str, Any]]:
        """ShakeNBreak's metadata of every charged defect (site, distorted atoms), rebuilt
        from the spec: seeds are deterministic, and the state keeps only their frames."""
        from activedefect.seeds.preparation import build_campaign_seeds

        out: dict[str, dict[str, Any]] = {}
        for seed in build_campaign_seeds(self.spec):
            out.setdefault(seed.name, {**seed.metadata, "distortions": []})["distortions"].append(seed.distortion)
        return out

    def defect_site(self, defect: str, charge: int) -> DefectSite:
        meta = self.seed_metadata[charged_name(defect, charge)]
        unperturbed = self.store.get_frame(self.seed_frames[(defect, charge, "Unperturbed")])
        frac = np.asarray(meta["defect_frac_coords"], dtype=float)
        index = None
        if meta["kind"] != "vacancy":
            _, dist = get_distances(np.asarray([frac @ np.asarray(unperturbed.cell)]), unperturbed.positions,
                                    cell=unperturbed.cell, pbc=unperturbed.pbc)
            index = int(np.argmin(dist[0]))
        site = DefectSite(meta["kind"], frac, index, [])
        site.neighbours = coordination_shell(unperturbed, site.position_A(unperturbed), exclude=index)
        return site

    # --- ground states and minima ----------------------------------------------------------
    def minima(self) -> pd.DataFrame:
        """Every minimum of the last exploration, rank 0 the ground state (columns: see ``_minima``)."""
        return self._minima.copy()

    def ground_states(self) -> pd.DataFrame:
        """One row per defect × charge state (columns: see ``_ground_states``)."""
        return self._ground_states.copy()

    @property
    def has_ground_states(self) -> bool:
        """Whether any charge state has a ground state yet (the committee's or a confirmed one)."""
        return bool(ground_state_frames(self.state))

    @cached_property
    def _minima(self) -> pd.DataFrame:
        """Every basin of the last exploration (rank 0 = ground state), one row each
        (computed once per instance; :meth:`minima` returns copies).

        Columns: state, defect, charge, rank, is_ground_state, frame, predicted_energy_eV,
        relative_energy_eV (to the state's ground state), energy_std_eV,
        max_force_spread_eV_A, high_energy_eV (label at the frame, or NaN), distortion
        (the ShakeNBreak seed the lowest member descends from), distortions (all seeds
        that relaxed into the basin), start_names, neighbour_elements,
        neighbour_distances_A, neighbour_pair_distances_A, min_neighbour_distance_A.
        """
        rows = []
        exploration = self.exploration
        basins = exploration.basins if exploration is not None else {}
        for (defect, charge), states in sorted(basins.items()):
            site = self.defect_site(defect, charge)
            frames = self.store.get_frames([b.frame for b in states])
            for basin, atoms in zip(states, frames):
                bonding = local_bonding(atoms, site.position_A(atoms), site.neighbours)
                high = self.high_label(basin.frame)
                rows.append({
                    "state": charged_name(defect, charge), "defect": defect, "charge": charge, "rank": basin.rank,
                    "is_ground_state": basin.is_ground_state, "frame": int(basin.frame),
                    "predicted_energy_eV": float(basin.energy_eV),
                    "relative_energy_eV": float(basin.energy_eV - states[0].energy_eV),
                    "energy_std_eV": float(basin.energy_std_eV),
                    "max_force_spread_eV_A": float(basin.max_force_std_eV_A),
                    "high_energy_eV": np.nan if high is None else high,
                    "distortion": root_distortion(basin.members[0]),
                    "distortions": sorted({root_distortion(m) for m in basin.members}),
                    "start_names": list(basin.members),
                    "neighbour_elements": bonding.elements,
                    "neighbour_distances_A": bonding.distances_A,
                    "neighbour_pair_distances_A": bonding.pair_distances_A,
                    "min_neighbour_distance_A": min(bonding.distances_A) if bonding.distances_A else np.nan,
                })
        return pd.DataFrame(rows)

    @cached_property
    def _ground_states(self) -> pd.DataFrame:
        """(Computed once per instance; :meth:`ground_states` returns copies.) One row per defect × charge state: the ground state as the campaign recorded
        it (structure files, committee prediction and spread on the `high` head, `high`
        label, the confirm relaxation), how it was found, its local bonding, and the
        energy the transition levels use (``level_energy_eV`` from ``level_energy_source``:
        the lowest `high` energy of the confirm relaxation and the label, else the
        prediction). ``frame`` is the confirmed minimum when the confirm step ran
        (:func:`~activedefect.results.directory.ground_state_frames`), ``seed`` the lineage it came
        from; the committee columns (prediction, spread, convergence) describe that same
        structure (after the confirm step, the committee's prediction at the confirmed
        minimum), and are NaN/False for a state only the confirm step's `low` minima found."""
        minima = self.minima()
        confirm = self.state.get("confirm", {})
        records = self.state.get("ground_states", {})
        rows = []
        for name, frame in ground_state_frames(self.state).items():
            defect, charge = split_charged_name(name)
            record = records.get(name) or {
                "generation": self.state.get("generation", -1), "converged": False, "predicted_energy_eV": np.nan,
                "max_force_spread_eV_A": np.nan, "reasons": ["no committee minimum (its relaxations stopped short)"],
            }
            seed = confirm.get(name, {}).get("seed") or record["seed"]
            match = minima[(minima["state"] == name) & (minima["frame"] == frame)] if len(minima) else minima
            extra = match.iloc[0].to_dict() if len(match) else self._bonding(defect, charge, frame)
            high = self.high_label(frame)
            confirmed = confirm.get(name, {}).get("final_energy_eV")
            highs = [e for e in (high, confirmed) if e is not None]
            structure = self.ws.ground_states_dir / f"{name}.extxyz"
            rows.append({
                "state": name, "defect": defect, "charge": charge, "generation": record["generation"],
                "frame": frame, "seed": seed, "converged": bool(record["converged"]),
                "predicted_energy_eV": float(record["predicted_energy_eV"]),
                "energy_std_eV": extra.get("energy_std_eV", np.nan),
                "max_force_spread_eV_A": float(record["max_force_spread_eV_A"]),
                "high_energy_eV": np.nan if high is None else high,
                "confirmed_energy_eV": np.nan if confirmed is None else float(confirmed),
                "level_energy_eV": min(highs) if highs else float(record["predicted_energy_eV"]),
                "level_energy_source": "high" if highs else "predicted",
                "distortion": extra.get("distortion", root_distortion(seed)),
                "distortions": extra.get("distortions", [root_distortion(seed)]),
                "neighbour_elements": extra.get("neighbour_elements", []),
                "neighbour_distances_A": extra.get("neighbour_distances_A", []),
                "neighbour_pair_distances_A": extra.get("neighbour_pair_distances_A", []),
                "n_minima": int((minima["state"] == name).sum()) if len(minima) else 0,
                "extxyz": str(structure) if structure.exists() else None,
                "poscar": str(structure.with_suffix(".vasp")) if structure.exists() else None,
                "not_converged_because": "; ".join(record.get("reasons", [])),
            })
        return pd.DataFrame(rows)

    def _bonding(self, defect: str, charge: int, frame: int) -> dict[str, Any]:
        """Local bonding of a ground state that is not one of the committee's minima."""
        atoms = self.store.get_frame(frame)
        site = self.defect_site(defect, charge)
        bonding = local_bonding(atoms, site.position_A(atoms), site.neighbours)
        return {"neighbour_elements": bonding.elements, "neighbour_distances_A": bonding.distances_A,
                "neighbour_pair_distances_A": bonding.pair_distances_A}

    # --- transition levels --------------------------------------------------------------
    @cached_property
    def band_edges(self) -> dict[str, Any]:
        """VBM and gap (eV) and where they come from: the spec, else the `high` backend
        on the host supercell (xtb: Γ-point orbital energies), else a VBM of 0."""
        given = self.spec.levels
        vbm, gap, source = given.vbm_eV, given.band_gap_eV, "spec"
        if vbm is None or gap is None:
            from activedefect.seeds.preparation import host_supercell

            edges = self.directory.backend_call("high").build().band_edges_eV(host_supercell(self.spec))
            if edges is not None:
                if vbm is None:
                    vbm, source = edges[0], f"computed ({self.spec.fidelities['high'].backend}, host supercell, Γ)"
                gap = gap if gap is not None else edges[1] - edges[0]
        if vbm is None:
            vbm, source = 0.0, "not given: levels are relative to E_VBM = 0; set levels.vbm_eV"
        return {"vbm_eV": float(vbm), "band_gap_eV": None if gap is None else float(gap), "vbm_source": source}

    def corrections(self, defect: str) -> dict[int, float]:
        out = {}
        for name, value in self.spec.levels.corrections_eV.items():
            d, q = split_charged_name(name)
            if d == defect:
                out[q] = float(value)
        return out

    def transition_levels(self) -> pd.DataFrame:
        """eps(q/q') per defect (eV above the VBM): every pair of adjacent computed
        charges, and the kinks of the lower envelope inside the gap that are not adjacent
        (a negative-U state in between: (0/-2) when -1 is never most stable).

        Columns: defect, charge, charge_prime, label, level_eV, adjacent, stable (a kink of
        the lower envelope within the gap, i.e. crossed by a Fermi-level sweep),
        energy_sources, vbm_eV, vbm_source, corrections_eV."""
        gs = self.ground_states()
        edges = self.band_edges
        rows = []
        for defect, group in gs.groupby("defect", sort=True):
            energies = dict(zip(group["charge"].astype(int), group["level_energy_eV"]))
            sources = dict(zip(group["charge"].astype(int), group["level_energy_source"]))
            corrections = self.corrections(defect)
            window = self.fermi_window(defect)
            stable = levels.stable_levels(defect, energies, edges["vbm_eV"], window, corrections)
            adjacent = levels.adjacent_levels(defect, energies, edges["vbm_eV"], corrections)
            kinks = {(lv.charge, lv.charge_prime) for lv in stable}
            pairs = {(lv.charge, lv.charge_prime) for lv in adjacent}
            for level in adjacent + [lv for lv in stable if (lv.charge, lv.charge_prime) not in pairs]:
                key = (level.charge, level.charge_prime)
                rows.append({**level.as_dict(), "adjacent": key in pairs, "stable": key in kinks,
                             "energy_sources": f"{sources[level.charge]}/{sources[level.charge_prime]}",
                             "vbm_eV": edges["vbm_eV"], "vbm_source": edges["vbm_source"],
                             "corrections_eV": {q: corrections.get(q, 0.0) for q in key}})
        columns = ["defect", "charge", "charge_prime", "label", "level_eV", "adjacent", "stable", "energy_sources", "vbm_eV",
                   "vbm_source", "corrections_eV"]
        return pd.DataFrame(rows, columns=columns)

    def fermi_window(self, defect: str) -> tuple[float, float]:
        """E_F range of the diagrams: 0 to the band gap, or around the levels without one."""
        gap = self.band_edges["band_gap_eV"]
        if gap is not None:
            return 0.0, gap
        gs = self.ground_states()
        group = gs[gs["defect"] == defect]
        energies = dict(zip(group["charge"].astype(int), group["level_energy_eV"]))
        found = [lv.level_eV for lv in levels.adjacent_levels(defect, energies, self.band_edges["vbm_eV"])]
        return (min([0.0, *found]) - 0.5, max([1.0, *found]) + 0.5)

    def formation_reference_eV(self, defect: str) -> float | None:
        """E_bulk + sum_i n_i mu_i of ``defect``, or None without chemical potentials or
        a bulk energy (then only the transition-level diagram can be drawn)."""
        from activedefect.seeds.preparation import host_supercell

        mu = self.spec.levels.chemical_potentials_eV
        if mu is None:
            return None
        bulk = self.spec.levels.bulk_energy_eV
        if bulk is None:
            stored = self.store.bulk_energies().get("high")
            if stored is None or stored.settings_hash != self.high_hash:
                return None
            bulk = stored.energy_eV
        host = Counter(host_supercell(self.spec).get_chemical_symbols())
        frame = next(f for (d, _, _), f in self.seed_frames.items() if d == defect)
        change = Counter(self.store.get_frame(frame).get_chemical_symbols())
        change.subtract(host)
        missing = sorted(el for el, n in change.items() if n and el not in mu)
        if missing:
            raise ValueError(f"levels.chemical_potentials_eV has no entry for {missing} (needed by {defect})")
        return float(bulk + sum(n * mu[el] for el, n in change.items() if n))

    # --- history -------------------------------------------------------------------------
    def history(self) -> pd.DataFrame:
        """One row per generation × charge state: the ground-state record of that
        generation (prediction, spread, `high` label, RMSD to the previous one,
        converged) joined with that generation's committee evaluation (labels it was
        trained and held out on, held-out RMSE per head)."""
        records = pd.DataFrame(self.state.get("history", []))
        evaluation = pd.DataFrame([self._evaluation_row(m) for m in self.ws.metrics() if m.get("kind") == "evaluation"])
        if records.empty:
            return evaluation
        keep = ["generation", "state", "defect", "charge", "frame", "seed", "predicted_energy_eV",
                "max_force_spread_eV_A", "high_energy_eV", "rmsd_to_previous_A", "converged"]
        records = records[[c for c in keep if c in records]].drop_duplicates(["generation", "state"], keep="last")
        if evaluation.empty:
            return records
        return records.merge(evaluation.drop_duplicates("generation", keep="last"), on="generation", how="left")

    @staticmethod
    def _evaluation_row(metric: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {"generation": metric["generation"]}
        for head in ("low", "high"):
            row[f"labels_{head}"] = metric.get("n_train", {}).get(head, 0) + metric.get("n_valid", {}).get(head, 0)
            result = metric.get("per_head", {}).get(head, {})
            row[f"energy_rmse_{head}_eV"] = result.get("energy_rmse_eV", np.nan)
            row[f"force_rmse_{head}_eV_A"] = result.get("force_rmse_eV_A", np.nan)
        return row


def to_json(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Records of a results table with NaN as null (for JSON files and the report)."""
    return json.loads(frame.to_json(orient="records"))
