"""Real xTB data for the multi-fidelity benchmarks: every ShakeNBreak seed of a campaign
spec relaxed with each fidelity (ASE FIRE on GFN1-xTB through tblite), every step kept
with its label. Cached: a second run with the same spec and settings reads the files.

    OMP_NUM_THREADS=1 python benchmarks/mf_data.py SPEC --out runs/mf-data [--workers 2]

Writes ``OUT/<fidelity>.extxyz``: one frame per relaxation step with ``REF_energy``,
``REF_forces``, ``total_charge``, ``total_spin``, ``defect`` and ``origin`` (seed,
step), and ``OUT/summary.json`` (calls and seconds per fidelity). The ``high`` file is
the brute-force search (every seed relaxed at ``high``); the ``low`` file is the dense
cheap screen the two-stage workflow and the committee start from.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.io import read, write  # noqa: E402

from activedefect.geometry import CHARGE_KEY  # noqa: E402
from activedefect.model.graphs import REF_ENERGY_KEY  # noqa: E402
from activedefect.model.training import labelled_frame  # noqa: E402
from activedefect.oracle.tasks import BackendCall, relax_with_oracle  # noqa: E402
from activedefect.seeds.preparation import build_campaign_seeds  # noqa: E402
from activedefect.spec import FIDELITIES, load_spec  # noqa: E402


def relax_seed(backend: str, settings: dict, atoms: Atoms, fmax: float, steps: int) -> tuple[list[Atoms], float]:
    """Every step of the backend's FIRE relaxation of ``atoms`` (the campaign's oracle
    relaxation), labelled, with ``seed`` and ``step`` in info; wall seconds."""
    start = time.perf_counter()
    relaxation = relax_with_oracle(BackendCall(backend, settings, timeout_s=None, retries=1), atoms, fmax, steps,
                                   known={})
    seed = atoms.info["seed"] if "seed" in atoms.info else atoms.info["origin"]["seed"]
    frames = []
    for step, (frame, label) in enumerate(path for path in relaxation.path if path[1].ok):
        frame = labelled_frame(frame, label)
        frame.info.pop("origin", None)
        frame.info.update({"seed": seed, "step": step})
        frames.append(frame)
    return frames, time.perf_counter() - start


def generate(spec_path: str, out: Path, workers: int, fmax: float, steps: int) -> dict:
    spec = load_spec(spec_path)
    out.mkdir(parents=True, exist_ok=True)
    # the data depend on the seeds and the levels of theory, not on the loop's settings
    key = {"spec": spec.model_dump(mode="json", include={"host", "defects", "distortions", "fidelities"}),
           "fmax": fmax, "steps": steps}
    summary_path = out / "summary.json"
    if summary_path.exists() and json.loads(summary_path.read_text()).get("key") == key:
        return json.loads(summary_path.read_text())
    seeds = build_campaign_seeds(spec)
    summary: dict = {"key": key, "seeds": len(seeds)}
    with ProcessPoolExecutor(workers) as pool:
        for fidelity in FIDELITIES:
            fid = spec.fidelities[fidelity]
            t0 = time.perf_counter()
            jobs = [pool.submit(relax_seed, fid.backend, dict(fid.settings), s.atoms, fmax, steps) for s in seeds]
            frames, seconds = [], 0.0
            for job in jobs:
                path, wall = job.result()
                frames += path
                seconds += wall
            write(out / f"{fidelity}.extxyz", frames)
            summary[fidelity] = {"calls": len(frames), "oracle_s": round(seconds, 1),
                                 "wall_s": round(time.perf_counter() - t0, 1)}
            print(f"{fidelity}: {len(frames)} calls, {seconds:.0f} oracle s", flush=True)
    summary_path.write_text(json.dumps(summary, indent=1))
    return summary


def load(out: Path, fidelity: str) -> list[Atoms]:
    """The frames of one fidelity, labels under mace's keys."""
    return list(read(out / f"{fidelity}.extxyz", ":"))


def minima(frames: list[Atoms]) -> dict[tuple[int, str], Atoms]:
    """Last frame of each (charge, seed) relaxation."""
    last: dict[tuple[int, str], Atoms] = {}
    for atoms in frames:
        last[(int(atoms.info[CHARGE_KEY]), str(atoms.info["seed"]))] = atoms
    return last


def lowest(frames: list[Atoms]) -> dict[int, Atoms]:
    """Each charge state's lowest-energy frame."""
    best: dict[int, Atoms] = {}
    for atoms in frames:
        q = int(atoms.info[CHARGE_KEY])
        if q not in best or atoms.info[REF_ENERGY_KEY] < best[q].info[REF_ENERGY_KEY]:
            best[q] = atoms
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fmax", type=float, default=0.02)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    summary = generate(args.spec, args.out, args.workers, args.fmax, args.steps)
    for fidelity in FIDELITIES:
        best = lowest(load(args.out, fidelity))
        print(fidelity, {q: (a.info["seed"], round(float(a.info[REF_ENERGY_KEY]), 3)) for q, a in sorted(best.items())})
    print(json.dumps({k: v for k, v in summary.items() if k != "key"}))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
