"""Wall-time estimate of a many-defect campaign on N single-thread workers, from the
per-task costs measured in docs/benchmarks.md (see docs/scaling.md for the model).

Each generation trains the committee (K members in parallel at most), explores (starts
split over the workers) and labels (independent tasks over the workers), one phase after
the other. Usage: ``python benchmarks/scaling_estimate.py [--states 40] [--t-low 3.3] ...``
(label seconds may be VASP costs: ``--t-low 1800 --t-high 21600``).
"""

from __future__ import annotations

import argparse
import math

# Measured (docs/benchmarks.md), 63-atom cells, one thread:
XTB_LOW_S = 3.3  # GFN1-xTB 5000 K label, CPU s
XTB_HIGH_S = 3.5  # GFN1-xTB 1000 K label, CPU s
TRAIN_CONF_EPOCHS_PER_S = 13.9  # default MACE model, per member
EXPLORE_STEPS_PER_S_K2 = 12.3  # committee relaxation structure-steps/s, K = 2


def predict_ms(members: int) -> float:
    """Committee prediction per 63-atom structure: 43, 83, 157 ms for K = 1, 2, 4 (measured)."""
    return 38.5 * members + 4.0
# Measured on the quickstart (3 charge states, 8 generations): labels per charge state.
LOW_PER_STATE = 600 / 3
HIGH_PER_STATE = 82 / 3


def campaign_wall_s(workers: int, states: int, generations: int, t_low_s: float, t_high_s: float,
                    members: int, starts_per_state: float, steps: float, epochs_cold: int,
                    epochs_warm: int) -> dict[str, float]:
    low_g = LOW_PER_STATE * states / generations
    high_g = HIGH_PER_STATE * states / generations
    rate = EXPLORE_STEPS_PER_S_K2 * predict_ms(2) / predict_ms(members)
    starts = starts_per_state * states
    phases = {"label": 0.0, "train": 0.0, "explore": 0.0}
    for g in range(generations):
        tasks = [t_low_s] * round(low_g) + [t_high_s] * round(high_g)
        phases["label"] += max(sum(tasks) / workers, max(tasks))
        if g == 0:
            continue  # generation 0 labels the bootstrap selection only
        configs = (low_g + high_g) * g
        member_s = configs * (epochs_cold if g == 1 else epochs_warm) / TRAIN_CONF_EPOCHS_PER_S
        phases["train"] += math.ceil(members / workers) * member_s
        total_steps = starts * steps
        phases["explore"] += total_steps / rate / min(workers, starts)
    phases["total"] = sum(phases.values())
    return phases


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--states", type=int, default=40, help="defect charge states (e.g. 10 defects x 4)")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--t-low", type=float, default=XTB_LOW_S, help="seconds per low label")
    parser.add_argument("--t-high", type=float, default=XTB_HIGH_S, help="seconds per high label")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--starts-per-state", type=float, default=13.0, help="seeds + rattled/cross-charge copies")
    parser.add_argument("--steps", type=float, default=100.0, help="mean committee relaxation steps per start")
    args = parser.parse_args()
    print(f"{args.states} charge states, {args.generations} generations, "
          f"{LOW_PER_STATE * args.states:.0f} low + {HIGH_PER_STATE * args.states:.0f} high labels")
    print("| workers | label h | train h | explore h | total h | speed-up |")
    print("|---|---|---|---|---|---|")
    base = None
    for n in (1, 2, 4, 8, 16, 32, 64, 128):
        p = campaign_wall_s(n, args.states, args.generations, args.t_low, args.t_high, args.members,
                            args.starts_per_state, args.steps, 60, 20)
        base = base or p["total"]
        print(f"| {n} | {p['label'] / 3600:.2f} | {p['train'] / 3600:.2f} | {p['explore'] / 3600:.2f} | "
              f"{p['total'] / 3600:.2f} | {base / p['total']:.1f}x |")


if __name__ == "__main__":
    main()
