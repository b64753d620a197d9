"""One generation's exploration and selection, as the campaign runs them: committee
relaxations spread over the Dask workers, basins per charge state, and the policies'
label requests — each written to ``generations/gen-NNN/`` before the loop moves on, so a
resumed generation reuses them instead of exploring or selecting again."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ase import Atoms
from distributed import Client

from activedefect.execution.cluster import workers_offering
from activedefect.execution.reporting import Reporter
from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY
from activedefect.search.basins import Basin, group_basins
from activedefect.search.candidates import candidate_table, mean_pooled
from activedefect.search.explore import exploration_starts, relax
from activedefect.search.policies import load_policy
from activedefect.search.policy_framework import SelectionContext, select
from activedefect.search.relaxation import (
    HEAD_KEY,
    UNFINISHED,
    RelaxResult,
    RelaxSettings,
    seed_name,
)
from activedefect.seeds.defects import charged_name
from activedefect.spec import FIDELITIES, CampaignSpec
from activedefect.store.workspace import Workspace, atomic_write_json
from activedefect.store.zarr_store import ORIGIN_KEY, Store

#: Structures per committee call on CPU: large batches fall out of cache (docs/benchmarks.md).
CPU_BATCH = 4


@dataclass
class GenerationContext:
    """What one generation's explore and select steps read and report to: the campaign's
    directory, spec, store and state (seeds, ground states, where oracle relaxations
    ended), the Dask client, and the oracle calls made so far (budget left)."""

    ws: Workspace
    spec: CampaignSpec
    store: Store
    state: dict[str, Any]
    client: Client | None
    reporter: Reporter
    save_phase: Callable[[str], None]
    settings_hashes: dict[str, str]
    oracle_calls: dict[str, int]


@dataclass
class Exploration:
    """What one generation's committee relaxations found."""

    results: list[RelaxResult]
    basins: dict[tuple[str, int], list[Basin]]
    descriptors: dict[str, np.ndarray]  # frame hash -> mean-pooled descriptor (candidates only)

    def ground_state_candidates(self) -> dict[tuple[str, int], Basin]:
        """Each defect × charge state's lowest basin."""
        return {key: basin for key, states in sorted(self.basins.items()) for basin in states if basin.is_ground_state}

    def unfinished(self, seeds: set[str], statuses: tuple[str, ...] = UNFINISHED) -> dict[tuple[str, int], int]:
        """Per defect × charge state, how many relaxations from ``seeds`` (or their
        continuations) stopped with one of ``statuses`` (default: before a minimum)."""
        counts: dict[tuple[str, int], int] = {}
        for r in self.results:
            if r.status in statuses and r.seed in seeds:
                counts[(r.defect, r.charge)] = counts.get((r.defect, r.charge), 0) + 1
        return counts


def policies(spec: CampaignSpec):  # noqa: ANN201 - list[Policy]
    """The spec's policies (file entries were inlined when the spec was loaded)."""
    return [load_policy(entry) for entry in spec.policies]


def trust_window(spec: CampaignSpec) -> tuple[float, float | None]:
    """(trust_lo, trust_hi) of the spec's uncertainty policy; (0.05, None) without one."""
    for policy in policies(spec):
        if policy.kind == "uncertainty":
            return float(policy.params["trust_lo"]), float(policy.params["trust_hi"])
    return 0.05, None


def relax_settings(spec: CampaignSpec, trust_hi: float | None) -> RelaxSettings:
    e = spec.exploration
    return RelaxSettings(fmax_eV_A=e.fmax_eV_A, max_steps=e.max_steps, frame_interval=e.frame_interval,
                         trust_hi_eV_A=trust_hi, trust_relative=e.trust_relative, min_distance_A=e.min_distance_A,
                         head="high", start_head=e.start_head, max_batch=CPU_BATCH)


def explore_task(model_paths: list[Path], starts: list[Atoms], settings: RelaxSettings, generation: int,
                 trust_lo: float) -> tuple[list[RelaxResult], dict[str, np.ndarray]]:
    """Runs on a worker: relax ``starts`` on the committee, and describe the frames a
    policy may pick (spread ≥ ``trust_lo`` or cut) for farthest-point sampling."""
    import torch

    from activedefect.geometry import content_hash
    from activedefect.model.committee import Committee

    torch.set_num_threads(1)
    committee = Committee.load(model_paths)
    results = relax(starts, committee, settings, generation=generation)
    picked = [f.atoms for r in results for f in r.frames if f.cut or f.max_force_std_eV_A >= trust_lo]
    pooled = mean_pooled(committee.descriptors(picked)) if picked else np.zeros((0, 0))
    return results, {content_hash(a): v for a, v in zip(picked, pooled)}


def cached_or_explore(context: GenerationContext, generation: int, model_paths: list[Path]) -> Exploration:
    path = context.ws.generation_dir(generation) / "exploration.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    spec, store, client = context.spec, context.store, context.client
    trust_lo, trust_hi = trust_window(spec)
    starts = store.get_frames([s["frame"] for s in context.state["seeds"]])
    if spec.exploration.continue_unfinished and generation > 1:
        previous = _previous_results(context, generation)
        starts = continued_starts(starts, previous, _oracle_ends(context, previous))
    best = [store.get_frame(r["frame"]) for r in context.state["ground_states"].values()]
    if best:
        e = spec.exploration
        starts += exploration_starts(best, n_rattled=e.rattled_copies, stdev_A=e.rattle_stdev_A,
                                     seed=spec.seed + generation, cross_charge=e.cross_charge, generation=generation)
    for atoms in starts:
        atoms.info.pop("frame", None)
        atoms.info.pop("hash", None)
    n_chunks = max(1, min(len(starts), workers_offering(client, "explore")))
    chunks = [list(range(i, len(starts), n_chunks)) for i in range(n_chunks)]
    settings = relax_settings(spec, trust_hi)
    context.save_phase("explore")
    context.reporter.start("exploring (committee relaxations)", len(chunks))
    futures = [
        client.submit(explore_task, model_paths, [starts[i] for i in chunk], settings, generation, trust_lo,
                      resources={"explore": 1}, pure=False, key=f"explore-{generation:03d}-{k}")
        for k, chunk in enumerate(chunks)
    ]
    results: list[RelaxResult | None] = [None] * len(starts)
    descriptors: dict[str, np.ndarray] = {}
    for chunk, future in zip(chunks, futures):
        chunk_results, chunk_descriptors = future.result()
        for i, result in zip(chunk, chunk_results):
            results[i] = result
        descriptors.update(chunk_descriptors)
        context.reporter.advance()
    _store_frames(context, results)
    basins = group_basins(results, rmsd_A=spec.convergence.rmsd)
    for states in basins.values():
        for basin in states:
            [basin.frame] = store.add_frames([basin.atoms])
    exploration = Exploration(results, basins, descriptors)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path.with_suffix(".json"), _summary(exploration))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(exploration))
    tmp.replace(path)
    context.ws.log_event("explored", generation=generation, **_summary(exploration)["counts"])
    return exploration


def _previous_results(context: GenerationContext, generation: int) -> list[RelaxResult]:
    path = context.ws.generation_dir(generation - 1) / "exploration.pkl"
    return pickle.loads(path.read_bytes()).results if path.exists() else []


def _oracle_ends(context: GenerationContext, previous: list[RelaxResult]) -> dict[tuple[str, int, str], Atoms]:
    """Per lineage (defect, charge, seed), where an oracle relaxation from the frame its
    committee relaxation stopped at left off."""
    store = context.store
    ends = {int(key.split(":")[1]): end for key, end in context.state.get("relaxation_ends", {}).items()}
    found = {}
    for r in previous:
        start = store.find_frame(r.atoms) if r.status in UNFINISHED else None
        if start in ends:
            found[(r.defect, r.charge, r.seed)] = store.get_frame(ends[start])
    return found


def continued_starts(
    seeds: list[Atoms], previous: list[RelaxResult], oracle_ends: dict[tuple[str, int, str], Atoms]
) -> list[Atoms]:
    """Each seed, or where its last committee relaxation stopped unfinished (cut where the
    committee disagreed, or out of steps): the structure it stopped at or, when an oracle
    relaxation went on from there, where that one left off (``oracle_ends``, by lineage
    defect, charge, seed). Labels taken there teach the next committee that stretch, so
    the relaxation goes on rather than walking the same path from the seed and being cut
    again: a distorted seed reaches its basin over generations, however far it lies."""
    stopped = {(r.defect, r.charge, r.seed): r for r in previous if r.status in UNFINISHED}
    starts = []
    for seed in seeds:
        lineage = _lineage(seed)
        if lineage not in stopped:
            starts.append(seed)
            continue
        end = oracle_ends.get(lineage, stopped[lineage].atoms)
        start = Atoms(end.numbers, positions=end.positions, cell=end.cell, pbc=end.pbc)
        start.info.update({k: seed.info[k] for k in (CHARGE_KEY, SPIN_KEY, DEFECT_KEY, ORIGIN_KEY) if k in seed.info})
        if stopped[lineage].head is not None:  # on the head it had reached (exploration.start_head)
            start.info[HEAD_KEY] = stopped[lineage].head
        starts.append(start)
    return starts


def _lineage(atoms: Atoms) -> tuple[str, int, str | None]:
    return str(atoms.info[DEFECT_KEY]), int(atoms.info[CHARGE_KEY]), seed_name(atoms)


def _store_frames(context: GenerationContext, results: list[RelaxResult]) -> None:
    """Every kept trajectory frame goes to the store (the policies refer to frames by index)."""
    frames = []
    for trajectory, result in enumerate(results):
        for frame in result.frames:
            frame.atoms.info["origin"] = {**frame.atoms.info["origin"], "trajectory": trajectory}
            frames.append(frame.atoms)
    context.store.add_frames(frames)


def _summary(exploration: Exploration) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for result in exploration.results:
        counts[result.status] = counts.get(result.status, 0) + 1
    return {
        "counts": counts,
        "basins": {charged_name(d, q): [b.summary() for b in states] for (d, q), states in exploration.basins.items()},
    }


def cached_or_select(context: GenerationContext, generation: int, exploration: Exploration | None) -> list[dict[str, Any]]:
    """The label requests of this generation (JSON records: frame, fidelity, policy,
    reason, relax_steps, relax_fmax_eV_A), selected once and then read back."""
    path = context.ws.generation_dir(generation) / "selection.json"
    if path.exists():
        import json

        return json.loads(path.read_text())["requests"]
    store, spec = context.store, context.spec
    frames = store.frame_table()
    budget_left = {f: getattr(spec.budget, f) - context.oracle_calls[f] for f in FIDELITIES}
    hashes = context.settings_hashes
    labels = {f: store.label_table(f) for f in FIDELITIES}
    if exploration is None:
        phase = "bootstrap"
        seed_frames = [s["frame"] for s in context.state["seeds"]]
        candidates = frames.set_index("frame").loc[seed_frames].reset_index()
        descriptors, basins = None, []
    else:
        phase = "select"
        candidates, atoms = candidate_table(exploration.results, exploration.basins)
        candidates["frame"] = [store.find_frame(a) for a in atoms]
        width = next((len(v) for v in exploration.descriptors.values()), 0)
        descriptors = np.stack([exploration.descriptors.get(h, np.zeros(width)) for h in candidates["hash"]]) \
            if width else None
        basin_rank = dict(zip(candidates["frame"], candidates["basin"]))
        frames["basin"] = frames["frame"].map(basin_rank).fillna(-1).astype(int)
        basins = [basin for _, states in sorted(exploration.basins.items()) for basin in states]
    choice = SelectionContext(budget_left=budget_left, candidates=candidates, descriptors=descriptors,
                              frames=frames, labels=labels, settings_hashes=hashes, basins=basins,
                              seed=spec.seed + generation)
    result = select(policies(spec), choice, phase)
    requests = []
    for request in result.requests:
        record = request.as_dict()
        if record["frame"] is None:
            [record["frame"]] = store.add_frames([request.atoms])
        requests.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"requests": requests, "budget_exhausted": result.budget_exhausted,
                             "dropped": result.dropped})
    context.ws.log_event("selected", generation=generation,
                          counts={f: sum(r["fidelity"] == f for r in requests) for f in FIDELITIES},
                          budget_exhausted=result.budget_exhausted)
    return requests
