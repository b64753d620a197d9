"""Speed-up of labelling with Dask workers, and the cost of the pyiron executor.

Labels N rattled copies of a 63-atom 3C-SiC Si-vacancy cell with GFN1-xTB (the quickstart's
`high` settings) through the campaign's own cluster code (`open_cluster`, `label_frame`,
Dask resources), with 1 and then 2 single-thread workers; then a few labels with
`executor: pyiron` on one worker (each a pyiron job run in a subprocess). Prints wall
seconds, labels/s, the speed-up and the load average (a shared machine inflates wall time).
Usage: ``python benchmarks/bench_scaling.py [--labels N] [--pyiron M]``.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import tempfile
import time

from ase.build import bulk
from distributed import wait

from activedefect.execution.cluster import open_cluster
from activedefect.geometry import CHARGE_KEY, SPIN_KEY
from activedefect.oracle.tasks import BackendCall, label_frame
from activedefect.spec_blocks import ClusterSpec

SETTINGS = {"method": "GFN1-xTB", "electronic_temperature": 1000.0, "max_iterations": 500}


def frames(n: int) -> list:
    base = bulk("SiC", "zincblende", 4.36, cubic=True).repeat(2)
    del base[0]
    out = []
    for i in range(n):
        atoms = base.copy()
        atoms.rattle(0.05, seed=i)
        atoms.info.update({CHARGE_KEY: 0, SPIN_KEY: 1})
        out.append(atoms)
    return out


def label_all(workers: int, call: BackendCall, atoms_list: list) -> float:
    """Wall seconds to label every frame, workers already started and warmed up."""
    with open_cluster(ClusterSpec(workers=workers, dashboard_address="127.0.0.1:0")) as handle:
        client = handle.client
        client.wait_for_workers(workers)
        warm = [client.submit(label_frame, BackendCall("xtb", SETTINGS, None, 1), atoms_list[0],
                              resources={"label": 1}, pure=False, workers=[w])
                for w in client.scheduler_info()["workers"]]
        wait(warm)  # imports (tblite, torch via activedefect) done on every worker
        start = time.perf_counter()
        futures = [client.submit(label_frame, call, a, resources={"label": 1}, pure=False) for a in atoms_list]
        results = client.gather(futures)
        elapsed = time.perf_counter() - start
    failed = [r.reason for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} labels failed: {failed[0]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", type=int, default=16)
    parser.add_argument("--pyiron", type=int, default=4)
    args = parser.parse_args()
    atoms_list = frames(args.labels)
    call = BackendCall("xtb", SETTINGS, None, 1)
    times = {}
    for workers in (1, 2):
        times[workers] = label_all(workers, call, atoms_list)
        print(f"{workers} worker(s): {args.labels} labels in {times[workers]:.1f} s "
              f"({args.labels / times[workers]:.2f} labels/s), load average {os.getloadavg()[0]:.1f}")
    print(f"speed-up 2 vs 1 workers: {times[1] / times[2]:.2f}x")
    if args.pyiron:
        with tempfile.TemporaryDirectory() as root:
            pyiron_call = BackendCall("xtb", SETTINGS, None, 1, pyiron_root=root)
            subset = atoms_list[: args.pyiron]
            dask_s = label_all(1, call, subset)
            pyiron_s = label_all(1, pyiron_call, subset)
            resumed_s = label_all(1, pyiron_call, subset)
        print(f"1 worker, {args.pyiron} labels: dask {dask_s:.1f} s, pyiron {pyiron_s:.1f} s "
              f"(+{(pyiron_s - dask_s) / args.pyiron:.1f} s/label), pyiron resume {resumed_s:.2f} s "
              f"(finished jobs read back), load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
