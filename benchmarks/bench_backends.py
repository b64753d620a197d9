"""Seconds per xTB label (energy + forces) on a 63-atom 3C-SiC Si-vacancy cell.

Two fidelity settings (GFN1-xTB at 5000 K and at 1000 K with 500 iterations), charges
0 and -2, in-process and in the child process that ``timeout_s`` uses. One thread,
as the workers run. CPU seconds are printed beside wall seconds because a shared
machine's load inflates the wall time. Usage: ``python benchmarks/bench_backends.py [--repeats N]``.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import resource
import statistics
import time

from ase.build import bulk

from activedefect.oracle.backends import get_backend

SETTINGS = {
    "low": {"method": "GFN1-xTB", "electronic_temperature": 5000.0},
    "high": {"method": "GFN1-xTB", "electronic_temperature": 1000.0, "max_iterations": 500},
}
CHARGES = ((0, 1), (-2, 1))  # (charge, multiplicity): 626 and 628 electrons


def si_vacancy_cell():
    atoms = bulk("SiC", "zincblende", 4.36, cubic=True).repeat(2)
    del atoms[0]  # a Si atom
    atoms.rattle(0.05, seed=0)
    return atoms


def cpu_seconds() -> float:
    """This process and its finished children: CPU time is robust to a busy machine."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def seconds_per_label(backend, atoms, charge, multiplicity, repeats):
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), cpu_seconds()
        label = backend.calculate(atoms, charge, multiplicity)
        wall.append(time.perf_counter() - start)
        cpu.append(cpu_seconds() - start_cpu)
        if not label.ok:
            raise RuntimeError(f"{label.status}: {label.reason}")
    return wall, cpu, label


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    atoms = si_vacancy_cell()
    print(f"cell: {atoms.get_chemical_formula()} ({len(atoms)} atoms), OMP_NUM_THREADS=1, repeats={args.repeats}")
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    header = ("fidelity", "charge", "mode", "first_s", "median_s", "median_cpu_s", "retries")
    print("{:8} {:>6} {:>10} {:>8} {:>9} {:>12} {:>7}".format(*header))
    for fidelity, settings in SETTINGS.items():
        for charge, multiplicity in CHARGES:
            for mode, timeout_s in (("in-process", None), ("child", 600.0)):
                backend = get_backend("xtb", settings, timeout_s=timeout_s)
                wall, cpu, label = seconds_per_label(backend, atoms, charge, multiplicity, args.repeats)
                print(
                    f"{fidelity:8} {charge:>6d} {mode:>10} {wall[0]:8.3f} {statistics.median(wall):9.3f} "
                    f"{statistics.median(cpu):12.3f} {label.metadata['retries']:>7d}"
                )


if __name__ == "__main__":
    main()
