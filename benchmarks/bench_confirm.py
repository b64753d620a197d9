"""How many `high` calls the confirm step's relaxations take, per optimiser, from the
starts a finished campaign confirmed (the committee's minimum and the `low` minima of
each charge state; ``state.json``'s ``confirm`` block).

    OMP_NUM_THREADS=1 python benchmarks/bench_confirm.py RUN_DIR [--optimizers fire,bfgs:70,bfgs:30]

Each start is relaxed afresh (nothing replayed) with the campaign's `high` backend to the
spec's ``convergence.confirm.fmax``; printed per start and optimiser: calls, final
energy and max force, and the totals.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from activedefect.campaign.loop import Campaign
from activedefect.oracle.tasks import relax_with_oracle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--optimizers", default="fire,bfgs:70,bfgs:30",
                        help="comma-separated: fire, or bfgs:ALPHA (initial Hessian, eV/Å²; bfgs alone: the spec's)")
    args = parser.parse_args()
    campaign = Campaign.open(args.run_dir)
    store, call = campaign.results().store, campaign.backend_call("high")
    confirm = campaign.spec.convergence.confirm
    optimizers = args.optimizers.split(",")
    totals = dict.fromkeys(optimizers, 0)
    print(f"{'state':10s} {'start':22s} " + " ".join(f"{o:>26s}" for o in optimizers))
    for state, record in sorted(campaign.state["confirm"].items()):
        for candidate in record["candidates"]:
            start = store.get_frame(candidate["start_frame"])
            cells, seconds = [], []
            for name in optimizers:
                kind, _, alpha = name.partition(":")
                began = time.perf_counter()
                relaxation = relax_with_oracle(call, start, confirm.fmax, confirm.steps, {}, optimizer=kind,
                                               bfgs_alpha_eV_A2=float(alpha or confirm.bfgs_alpha_eV_A2))
                _, end = relaxation.path[-1]
                totals[name] += len(relaxation.path)
                cells.append(f"{len(relaxation.path):3d} calls {end.energy_eV:11.4f} eV "
                             f"{np.linalg.norm(end.forces_eV_A, axis=1).max():.3f}")
                seconds.append(f"{time.perf_counter() - began:.0f}")
            print(f"{state:10s} {candidate['source'][:9] + ' ' + str(candidate['start_frame']):22s} "
                  + " ".join(f"{c:>26s}" for c in cells) + f"   ({'/'.join(seconds)} s)", flush=True)
    print("total calls: " + ", ".join(f"{name} {n}" for name, n in totals.items()))


if __name__ == "__main__":
    main()
