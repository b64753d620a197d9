"""Keep a baseline's work in the repository: ``baseline.json`` (calls, seconds, one entry per
finished relaxation) and ``labels-high.extxyz`` (every `high` label), small enough to commit.
A later session replays it instead of recomputing (docs/benchmarks.md, GPAW section):

    activedefect campaign baseline SPEC --dir DIR --create-only
    activedefect campaign import DIR OUT/labels-high.extxyz --fidelity high
    activedefect campaign resume DIR

Usage: python benchmarks/baseline_snapshot.py BASELINE_DIR OUT_DIR --spec campaigns/X.yaml --machine "..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from activedefect import Campaign
from activedefect.store.zarr_store import Store


def relaxations(campaign: Campaign, store: Store) -> tuple[list[dict], list[dict]]:
    """(finished relaxations with their energies, seeds whose relaxation has not finished).
    A baseline stores a relaxation's steps when it ends, each frame carrying its seed."""
    settings_hash = campaign.settings_hash("high")
    labels = store.label_table("high")
    labels = labels[(labels["status"] == "ok") & (labels["settings_hash"] == settings_hash)]
    frames = store.frame_table().set_index("frame")
    labels = labels.assign(charge=frames.loc[labels["frame"], "charge"].to_numpy(),
                           seed=frames.loc[labels["frame"], "seed"].to_numpy(),
                           step=frames.loc[labels["frame"], "step"].to_numpy())
    done = set(campaign.state.get("relaxations", []))
    finished, pending = [], []
    for seed in campaign.state["seeds"]:
        if f"high:{seed['frame']}" not in done:
            pending.append({"charge": seed["charge"], "seed": seed["seed"]})
            continue
        steps = labels[(labels["charge"] == seed["charge"]) & (labels["seed"] == seed["seed"])].sort_values("step")
        last = steps.index[-1]
        finished.append({
            "charge": int(seed["charge"]), "seed": seed["seed"], "calls": int(len(steps)),
            "start_energy_eV": float(steps["energy_eV"].iloc[0]), "final_energy_eV": float(steps.loc[last, "energy_eV"]),
            "lowest_energy_eV": float(steps["energy_eV"].min()),
            "final_max_force_eV_A": float(np.linalg.norm(store.label_forces("high", last), axis=1).max()),
        })
    return finished, pending


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--spec", required=True, help="the spec the baseline ran, as a repository path")
    parser.add_argument("--machine", required=True, help="where and how it ran (cores, load, workers)")
    args = parser.parse_args()

    campaign = Campaign.open(args.baseline_dir)
    store = Store.open(campaign.ws.store_path, mode="r")
    finished, pending = relaxations(campaign, store)
    totals = campaign.oracle_totals(store)["high"]
    relax = campaign.spec.convergence.confirm
    high = campaign.spec.fidelities["high"]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    store.export_extxyz(args.out_dir / "labels-high.extxyz", "high")
    snapshot = {
        "spec": args.spec,
        "what": f"activedefect campaign baseline: every seed relaxed with high ({high.backend} {high.settings}) "
                f"by FIRE to {relax.fmax} eV/A, <= {relax.steps} steps",
        "complete": not pending,
        "machine": args.machine,
        "high_calls": totals["calls"],
        "high_oracle_s": round(totals["seconds"], 1),
        "seconds_per_call": round(totals["seconds"] / max(totals["calls"], 1), 1),
        "finished_relaxations": finished,
        "seeds_not_relaxed": pending,
        "labels": "labels-high.extxyz (every high label; import into a baseline created with --create-only "
                  "to replay them)",
    }
    (args.out_dir / "baseline.json").write_text(json.dumps(snapshot, indent=2) + "\n")
    print(f"{len(finished)} relaxations finished, {len(pending)} to go; {totals['calls']} high calls, "
          f"{totals['seconds']:.0f} s -> {args.out_dir}")


if __name__ == "__main__":
    main()
