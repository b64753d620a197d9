"""MACE committee throughput on ~60-atom defect cells (default ModelConfig, float32, CPU).

    OMP_NUM_THREADS=1 python benchmarks/bench_committee.py [--configs 60] [--epochs 3] [--xtb]

Cells: 64-atom 3C-SiC (2x2x2 cubic, a = 4.36 Å) with a Si vacancy (63 atoms), rattled
0.05 Å, charges 0 and -2, ~10 % of them also on the ``high`` head. Labels come from an
analytic stand-in (ASE Lennard-Jones) unless ``--xtb`` (GFN1-xTB, ~1 s per frame):
training cost does not depend on label values.

Prints: training throughput (configurations x epochs per second per member, graph
building and saving excluded, measured as the difference between an E-epoch and a
0-epoch run); committee prediction time per structure for K = 1, 2, 4, single and
batched; the speed-up of training two members in parallel (Dask LocalCluster, two
single-thread worker processes, Dask's default worker environment) over one after the
other; the throughput of a smaller model (16 channels, r_max 4 Å); and an estimate of
a warm-start retraining of 4 members on 500 configurations on 2 cores.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.lj import LennardJones  # noqa: E402

from activedefect.geometry import CHARGE_KEY, SPIN_KEY  # noqa: E402
from activedefect.model.committee import (  # noqa: E402
    REF_ENERGY_KEY,
    REF_FORCES_KEY,
    Committee,
    ModelConfig,
    train_member,
)

CONFIG = ModelConfig(elements=("Si", "C"), charges=(0, -2))


def make_frames(n: int, xtb: bool, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    host = bulk("SiC", "zincblende", a=4.36, cubic=True).repeat((2, 2, 2))
    del host[0]
    frames = []
    for i in range(n):
        atoms = host.copy()
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        charge = 0 if i % 2 == 0 else -2
        atoms.info.update({CHARGE_KEY: charge, SPIN_KEY: 1})
        if xtb:
            from tblite.ase import TBLite

            atoms.calc = TBLite(method="GFN1-xTB", charge=charge, multiplicity=1, verbosity=0)
        else:
            atoms.calc = LennardJones(sigma=1.7, epsilon=0.1, rc=4.5, smooth=True)
        atoms.info[REF_ENERGY_KEY] = float(atoms.get_potential_energy()) - 3.0 * charge
        atoms.arrays[REF_FORCES_KEY] = atoms.get_forces().copy()
        atoms.calc = None
        frames.append(atoms)
    return frames


def split_heads(frames: list) -> dict[str, list]:
    return {"low": frames, "high": frames[:: 10]}


def timed_train(data: dict, epochs: int, out: Path, seed: int = 0, init_from: Path | None = None,
                config: ModelConfig = CONFIG) -> float:
    t0 = time.perf_counter()
    train_member(data, config, seed=seed, epochs=epochs, out_path=out, init_from=init_from)
    return time.perf_counter() - t0


def _dask_train(kwargs: dict) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    train_member(**kwargs)
    return time.perf_counter() - t0, time.process_time() - c0


def _warm_import() -> bool:
    import activedefect.model.committee  # noqa: F401

    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--xtb", action="store_true", help="label with GFN1-xTB instead of the analytic stand-in")
    parser.add_argument("--repeats", type=int, default=2, help="repeats of the sequential/parallel comparison")
    parser.add_argument("--finetune-epochs", type=int, default=20, help="warm-start epochs in the 4 x 500 estimate")
    args = parser.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    frames = make_frames(args.configs, args.xtb)
    data = split_heads(frames)
    n_configs = sum(len(v) for v in data.values())
    print(f"data: {args.configs} x {len(frames[0])}-atom SiC V_Si cells (+{len(data['high'])} high), "
          f"labels {'GFN1-xTB' if args.xtb else 'Lennard-Jones stand-in'}, {time.perf_counter() - t0:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # --- training throughput (one member, one thread)
        overhead = timed_train(data, 0, tmp / "e0.model")
        wall = timed_train(data, args.epochs, tmp / "fresh.model")
        per_epoch = (wall - overhead) / args.epochs
        throughput = n_configs / per_epoch
        print(f"train: {n_configs} configs, {per_epoch:.2f} s/epoch -> {throughput:.1f} configs*epochs/s per member "
              f"(fixed cost per run {overhead:.1f} s: graphs, evaluation, save = {overhead / n_configs * 1000:.0f} ms/config)")
        warm = timed_train(data, args.epochs, tmp / "warm.model", init_from=tmp / "fresh.model")
        print(f"train: warm start, {args.epochs} epochs: {warm:.1f} s (fresh {wall:.1f} s)")

        # --- prediction
        single, batch = frames[0], frames[:16]
        for k in (1, 2, 4):
            committee = Committee.load([tmp / "fresh.model"] * k)
            committee.predict([single], "high")  # first call pays one-off costs
            reps = 5
            t0 = time.perf_counter()
            for _ in range(reps):
                committee.predict([single], "high")
            t_single = (time.perf_counter() - t0) / reps
            t0 = time.perf_counter()
            committee.predict(batch, "high")
            t_batch = (time.perf_counter() - t0) / len(batch)
            print(f"predict K={k}: {t_single * 1000:.0f} ms/structure single, {t_batch * 1000:.0f} ms/structure "
                  f"batched x{len(batch)} ({k} model calls per predict)")

        # --- two members: one after the other vs two Dask worker processes (repeated, best
        # of each, interleaved: the box is shared, so single timings swing with its load)
        from dask.distributed import Client, LocalCluster

        t_seq, t_par, cpu_seq, cpu_par = [], [], [], []
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
            client.run(_warm_import)  # imports (torch, mace, e3nn) are not training time
            scattered = client.scatter(data, broadcast=True)
            for rep in range(args.repeats):
                t0 = time.perf_counter()
                for m in range(2):
                    c0 = time.process_time()
                    timed_train(data, args.epochs, tmp / f"seq-{rep}-{m}.model", seed=m)
                    cpu_seq.append(time.process_time() - c0)
                t_seq.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                futures = [
                    client.submit(_dask_train, {"data_by_head": scattered, "config": CONFIG, "seed": m, "epochs": args.epochs,
                                                "out_path": tmp / f"par-{rep}-{m}.model"}, pure=False)
                    for m in range(2)
                ]
                cpu_par += [cpu for _, cpu in client.gather(futures)]
                t_par.append(time.perf_counter() - t0)
        t_seq, t_par = min(t_seq), min(t_par)
        print(f"2 members x {args.epochs} epochs: sequential {t_seq:.1f} s, parallel (2 workers x 1 thread) {t_par:.1f} s "
              f"-> speed-up {t_seq / t_par:.2f}x (best of {args.repeats}; CPU s per member: sequential "
              f"{np.median(cpu_seq):.1f}, parallel {np.median(cpu_par):.1f})")

        # --- a smaller model for comparison (the tests' config)
        small = ModelConfig(elements=("Si", "C"), charges=(0, -2), num_channels=16, r_max=4.0, radial_MLP=(32, 32))
        small_overhead = timed_train(data, 0, tmp / "s0.model", config=small)
        small_wall = timed_train(data, args.epochs, tmp / "s.model", config=small)
        small_throughput = n_configs * args.epochs / (small_wall - small_overhead)
        print(f"train (small model: 16 channels, r_max 4 Å): {small_throughput:.1f} configs*epochs/s per member")

        # --- estimate: warm start of 4 members on 500 configurations, 2 cores
        efficiency = min(1.0, (t_seq / t_par) / 2)
        for name, rate, fixed in (("default", throughput, overhead), ("small", small_throughput, small_overhead)):
            fixed_500 = 500 * fixed / n_configs
            per_member = (500 * args.finetune_epochs / rate + fixed_500) / efficiency
            estimate = math.ceil(4 / 2) * per_member
            fit_epochs = max(0.0, (300 * efficiency / math.ceil(4 / 2) - fixed_500) * rate / 500)
            print(f"estimate ({name} model): 4 members x 500 configs x {args.finetune_epochs} warm epochs on 2 cores = "
                  f"{estimate / 60:.1f} min (2 rounds of 2 parallel members, parallel efficiency {efficiency:.2f}); "
                  f"{fit_epochs:.1f} warm epochs fit in 5 min")

if __name__ == "__main__":
    main()
