"""Append and read throughput of activedefect.store.zarr_store for 60-atom frames.

    OMP_NUM_THREADS=1 python benchmarks/bench_store.py [--frames 2000] [--batch 50]

Prints frames/s and labels/s appended in batches, reads of all frames and of all
labelled frames, single-frame reads, and the time to reopen (index rebuild).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

from activedefect.labels import LabelResult, settings_hash
from activedefect.store.zarr_store import Store


def make_frames(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    host = bulk("Si", "diamond", 5.43, cubic=True).repeat((2, 2, 2))
    frames = []
    for i in range(n):
        atoms = host[1:61].copy()  # 60 atoms
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
        atoms.info.update(total_charge=int(i % 3) - 1, total_spin=1 + i % 2, defect="v_Si",
                          origin={"seed": "Bond_Distortion_-30.0%", "generation": i // 100, "trajectory": i % 7, "step": i})
        frames.append(atoms)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    frames = make_frames(args.frames)
    sh = settings_hash("xtb", {"method": "GFN1-xTB"})
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        store = Store.open(path)
        t0 = time.perf_counter()
        for start in range(0, len(frames), args.batch):
            store.add_frames(frames[start : start + args.batch])
        t_frames = time.perf_counter() - t0

        results = [(i, LabelResult("ok", sh, -100.0 - i, rng.normal(size=(60, 3)), metadata={"code": "tblite", "version": "0.8.0", "wall_s": 0.2, "retries": 0, "settings": {"method": "GFN1-xTB"}})) for i in range(len(frames))]
        t0 = time.perf_counter()
        for start in range(0, len(results), args.batch):
            store.add_labels("xtb", results[start : start + args.batch])
        t_labels = time.perf_counter() - t0
        store.close()

        t0 = time.perf_counter()
        store = Store.open(path, mode="r")
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        all_frames = store.get_frames()
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        labelled = store.labelled_atoms("xtb")
        t_labelled = time.perf_counter() - t0
        picks = rng.integers(0, len(frames), 200)
        t0 = time.perf_counter()
        for i in picks:
            store.get_frame(int(i))
        t_single = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
        n, b = len(frames), args.batch
        print(f"{n} frames of 60 atoms, batches of {b}, store on disk {size_mb:.1f} MB")
        print(f"append frames : {n / t_frames:8.0f} frames/s ({1e3 * t_frames / (n / b):.1f} ms per batch)")
        print(f"append labels : {n / t_labels:8.0f} labels/s ({1e3 * t_labels / (n / b):.1f} ms per batch)")
        print(f"reopen (index): {1e3 * t_open:8.1f} ms")
        print(f"read frames   : {len(all_frames) / t_read:8.0f} frames/s (get_frames, all)")
        print(f"read labelled : {len(labelled) / t_labelled:8.0f} frames/s (labelled_atoms)")
        print(f"read single   : {len(picks) / t_single:8.0f} frames/s (get_frame, random)")


if __name__ == "__main__":
    main()
