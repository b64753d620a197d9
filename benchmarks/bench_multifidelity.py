"""Does the multi-fidelity committee find the `high` ground states? Measured on real xTB
data of a campaign spec (default: the paper's case, campaigns/paper-sic-v-si.yaml).

    OMP_NUM_THREADS=1 python benchmarks/bench_multifidelity.py [SPEC] --data runs/mf-data
        [--epochs 40] [--members 2] [--high-fraction 0.1] [--variants plain,robust,staged,high-only]

Data (benchmarks/mf_data.py, cached): every seed relaxed at `low` (the dense screen) and
at `high` (the brute force). Training: every ``--stride``-th `low` frame of each
relaxation and its minimum (less a hash-held-out 10 %) plus
`high` single points on a stratified ``--high-fraction`` of them (the paper's recipe).
Printed, per training variant, side by side:

- held-out errors of the committee mean near the minima (frames within 1 eV of each
  charge state's lowest label; `high`: brute-force trajectory frames, never trained on)
  and over the full range, with the force error/spread ratio;
- the search: every seed relaxed on the committee (`low` head first, then `high`), each
  charge state's lowest committee minimum relaxed at `high` (the confirm step): its
  energy against the brute force's ground state, RMSD to that ground state, and `high`
  calls; beside it the two-stage screen (the lowest 2 distinct `low` minima relaxed at
  `high`) and the brute force's own `high` calls.

Variants: ``plain`` (squared-error loss, last weights, both heads from the start),
``robust`` (hot frames down-weighted, EMA weights), ``staged`` (robust, and the sparse
`high` head joins after the dense `low` one has trained; the spec's
``committee: {hot_force_eV_A: 1, ema_decay: 0.99, sparse_head_ratio: 5}``), ``high-only`` (a
model trained on the `high` single points alone, no `low` head data). ``NAME+field=value``
changes a TrainSettings field of a variant (``staged+energy_weight=100``), ``model.field=value``
a ModelConfig field (``staged+model.num_interactions=1``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))

import mf_data  # noqa: E402
import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402

from activedefect.geometry import CHARGE_KEY, SPIN_KEY, displacement  # noqa: E402
from activedefect.model.committee import (  # noqa: E402
    Committee,
    ModelConfig,
    TrainSettings,
    evaluate,
    split_holdout,
    train_member,
)
from activedefect.model.graphs import REF_ENERGY_KEY  # noqa: E402
from activedefect.model.training import emphasize_minima, labelled_frame  # noqa: E402
from activedefect.search.basins import group_basins  # noqa: E402
from activedefect.search.explore import relax  # noqa: E402
from activedefect.search.relaxation import RelaxSettings  # noqa: E402
from activedefect.spec import load_spec  # noqa: E402
from activedefect.spec_blocks import CommitteeSpec  # noqa: E402

NEAR_MINIMUM_EV = 1.0
ROBUST = TrainSettings(hot_force_eV_A=1.0, ema_decay=0.99)
VARIANTS = {
    "plain": TrainSettings(),
    "robust": ROBUST,
    "staged": replace(ROBUST, sparse_head_ratio=5.0),
    "high-only": ROBUST,
}


def near_minima(frames: list[Atoms], window_eV: float = NEAR_MINIMUM_EV) -> list[Atoms]:
    lowest = mf_data.lowest(frames)
    return [a for a in frames if a.info[REF_ENERGY_KEY] - lowest[int(a.info[CHARGE_KEY])].info[REF_ENERGY_KEY]
            <= window_eV]


def thinned(frames: list[Atoms], stride: int) -> list[Atoms]:
    """Every ``stride``-th step of each relaxation and its last (the campaign keeps every
    ``exploration.frame_interval``-th committee frame the same way)."""
    ends = {id(a) for a in mf_data.minima(frames).values()}
    return [a for a in frames if int(a.info["step"]) % stride == 0 or id(a) in ends]


def stratified(frames: list[Atoms], fraction: float, seed: int = 0) -> list[Atoms]:
    """``fraction`` of the frames, spread over (charge, seed) lineages and along each path,
    always with each lineage's last frame (its minimum)."""
    rng = np.random.default_rng(seed)
    lineages: dict[tuple[int, str], list[Atoms]] = {}
    for atoms in frames:
        lineages.setdefault((int(atoms.info[CHARGE_KEY]), str(atoms.info["seed"])), []).append(atoms)
    per_lineage = max(1, round(fraction * len(frames) / len(lineages)))
    picked = []
    for path in lineages.values():
        rest = path[:-1]
        take = rng.choice(len(rest), size=min(len(rest), per_lineage - 1), replace=False) if rest else []
        picked += [rest[i] for i in sorted(take)] + [path[-1]]
    return picked


def label_high(frames: list[Atoms], spec, cache) -> list[Atoms]:
    """`high` single points on ``frames`` (cached by file)."""
    from ase.io import read, write

    if cache.exists() and len(read(cache, ":")) == len(frames):
        return list(read(cache, ":"))
    from activedefect.oracle.backends import get_backend

    fid = spec.fidelities["high"]
    backend = get_backend(fid.backend, dict(fid.settings))
    labels = [backend.calculate(atoms, int(atoms.info[CHARGE_KEY]), int(atoms.info[SPIN_KEY])) for atoms in frames]
    out = [labelled_frame(atoms, label) for atoms, label in zip(frames, labels) if label.ok]
    write(cache, out)
    return out


def train_committee(data: dict, config: ModelConfig, settings: TrainSettings, members: int, epochs: int,
                    folder: Path) -> tuple[list[Path], float]:
    start = time.perf_counter()
    paths = [folder / f"member-{k}.model" for k in range(members)]
    with ProcessPoolExecutor(members) as pool:
        jobs = [pool.submit(train_member, data, config, seed=k, epochs=epochs, out_path=p, settings=settings)
                for k, p in enumerate(paths)]
        for job in jobs:
            job.result()
    return paths, time.perf_counter() - start


def errors(committee: Committee, head: str, frames: list[Atoms]) -> dict:
    result = evaluate(committee, {head: frames})["per_head"][head]
    return {"meV_atom": round(result["energy_rmse_meV_per_atom"], 2), "eV_A": round(result["force_rmse_eV_A"], 3),
            "err/spread": round(result["calibration"]["force_error_to_spread"] or float("nan"), 2), "n": result["n"]}


def oracle_relax(atoms: Atoms, spec, fmax: float = 0.02, steps: int = 150) -> tuple[Atoms, float, int]:
    frames, _ = mf_data.relax_seed(spec.fidelities["high"].backend, dict(spec.fidelities["high"].settings),
                                   atoms, fmax, steps)
    if not frames:  # no ok `high` label on the committee's structure (SCF failed): nothing found
        return atoms, float("nan"), 0
    last = frames[-1]
    return last, float(last.info[REF_ENERGY_KEY]), len(frames)


def committee_search(paths: list[Path], seeds: list[Atoms], spec, start_head: str | None) -> dict:
    committee = Committee.load(paths, "cpu")
    settings = RelaxSettings(fmax_eV_A=0.01, max_steps=300, trust_hi_eV_A=None, start_head=start_head, max_batch=4)
    t0 = time.perf_counter()
    results = relax(seeds, committee, settings)
    seconds = time.perf_counter() - t0
    basins = group_basins(results, rmsd_A=0.05)
    out = {"relax_s": round(seconds, 1), "converged": sum(r.is_minimum for r in results), "n": len(results)}
    for (defect, charge), states in sorted(basins.items()):
        best = states[0].atoms.copy()
        best.info.update({CHARGE_KEY: charge, SPIN_KEY: states[0].atoms.info.get(SPIN_KEY, 1)})
        best.info["origin"] = {"seed": "committee"}
        best.info["defect"] = defect
        confirmed, energy, calls = oracle_relax(best, spec)
        out[charge] = {"confirmed_eV": energy, "calls": calls, "atoms": confirmed,
                       "moved_A": displacement(best, confirmed).rmsd_A}
    return out


def two_stage(low_frames: list[Atoms], spec, keep: int = 2) -> dict:
    ends = mf_data.minima(low_frames)
    out = {}
    for charge in sorted({q for q, _ in ends}):
        ranked = sorted((a for (q, _), a in ends.items() if q == charge), key=lambda a: a.info[REF_ENERGY_KEY])
        distinct: list[Atoms] = []
        for atoms in ranked:
            if all(displacement(atoms, d).rmsd_A > 0.05 for d in distinct):
                distinct.append(atoms)
            if len(distinct) == keep:
                break
        relaxed = [oracle_relax(a, spec) for a in distinct]
        atoms, energy, _ = min(relaxed, key=lambda r: r[1])
        out[charge] = {"confirmed_eV": energy, "calls": sum(r[2] for r in relaxed), "atoms": atoms}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default=str(Path(__file__).parents[1] / "campaigns/paper-sic-v-si.yaml"))
    parser.add_argument("--data", type=Path, default=Path("runs/mf-data"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--high-fraction", type=float, default=0.1)
    parser.add_argument("--stride", type=int, default=3, help="keep every n-th `low` relaxation step")
    parser.add_argument("--variants", default="plain,robust,staged,high-only")
    parser.add_argument("--minimum-weight", type=float, default=0.0,
                        help="the campaign's committee.minimum_weight (100 there; 0: the runs in docs/benchmarks.md before it)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    summary = mf_data.generate(args.spec, args.data, workers=2, fmax=0.02, steps=150)
    low, high = mf_data.load(args.data, "low"), mf_data.load(args.data, "high")
    low_train, low_test = split_holdout(thinned(low, args.stride), 0.1)
    high_train = label_high(stratified(low_train, args.high_fraction), spec, args.data / "high_on_low.extxyz")
    for frames in (low_train, high_train):  # per head, as the campaign's training_data
        emphasize_minima(frames, args.minimum_weight, CommitteeSpec().minimum_window_eV)
    truth = mf_data.lowest(high)
    print(f"data: {len(low_train)} low train, {len(low_test)} low held out, {len(high_train)} high train "
          f"({len(high_train) / len(low_train):.0%}), {len(high)} high brute-force frames held out")
    elements = sorted({s for a in low for s in a.get_chemical_symbols()})
    charges = sorted({int(a.info[CHARGE_KEY]) for a in low})
    base_config = ModelConfig(elements=tuple(elements), charges=tuple(charges), num_channels=16, r_max=4.5)
    first = {}
    for atoms in low:
        first.setdefault((int(atoms.info[CHARGE_KEY]), str(atoms.info["seed"])), atoms)
    seeds = []
    for (charge, name), atoms in sorted(first.items()):
        seed = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        seed.info.update({CHARGE_KEY: charge, SPIN_KEY: atoms.info[SPIN_KEY], "defect": atoms.info["defect"],
                          "origin": {"seed": name}})
        seeds.append(seed)
    report: dict = {"data": {k: v for k, v in summary.items() if k != "key"}, "variants": {}}
    cache = args.data / "two_stage.json"  # the screen depends on the data alone
    if not cache.exists():
        screen = two_stage(low, spec)
        cache.write_text(json.dumps({q: {"dE_meV": round(1000 * (r["confirmed_eV"] - truth[q].info[REF_ENERGY_KEY]), 1),
                                         "calls": r["calls"]} for q, r in screen.items()}))
    report["two_stage"] = json.loads(cache.read_text())
    print("two-stage screen", report["two_stage"], "brute force calls", summary["high"]["calls"], flush=True)
    report["brute_force_calls"] = summary["high"]["calls"]
    for variant in args.variants.split(","):
        name, *changes = variant.split("+")
        changed = {k: json.loads(v) for k, v in (c.split("=") for c in changes)}
        settings = replace(VARIANTS[name], **{k: v for k, v in changed.items() if not k.startswith("model.")})
        config = replace(base_config, **{k[6:]: v for k, v in changed.items() if k.startswith("model.")})
        data = {"high": high_train} if name == "high-only" else {"low": low_train, "high": high_train}
        with tempfile.TemporaryDirectory() as tmp:
            paths, train_s = train_committee(data, config, settings, args.members, args.epochs, Path(tmp))
            committee = Committee.load(paths, "cpu")
            row: dict = {"train_s": round(train_s, 1),
                         "high_near_min": errors(committee, "high", near_minima(high)),
                         "high_full": errors(committee, "high", high)}
            if name != "high-only":
                row["low_near_min"] = errors(committee, "low", near_minima(low_test))
                row["low_full"] = errors(committee, "low", low_test)
            print(variant, "errors", json.dumps(row), flush=True)
            for start_head in (("low", None) if name != "high-only" else (None,)):
                found = committee_search(paths, seeds, spec, start_head)
                row[f"search_start_{start_head}"] = {
                    "relax_s": found.pop("relax_s"), "converged": f"{found.pop('converged')}/{found.pop('n')}",
                    **{q: {"dE_meV": round(1000 * (r["confirmed_eV"] - truth[q].info[REF_ENERGY_KEY]), 1),
                           "rmsd_A": round(displacement(r["atoms"], truth[q]).rmsd_A, 3),
                           "moved_A": round(r["moved_A"], 3), "calls": r["calls"]} for q, r in found.items()}}
        report["variants"][variant] = row
        print(variant, json.dumps(row), flush=True)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
