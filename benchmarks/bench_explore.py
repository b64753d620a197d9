"""Committee relaxation throughput: batched FIRE (``explore.relax``) against one
``ase.optimize.FIRE`` per structure on ``CommitteeCalculator``, same committee, same seeds.

Seeds: 30 ShakeNBreak distortions of a 63-atom 3C-SiC supercell with a Si vacancy
(bond distortions -40 % ... +50 % of the 4 C neighbours, rattled as ShakeNBreak does),
in charge states -1, 0, +1. Committee: K untrained (randomly initialised) members of the
default small model (32 channels, max_L 0, 2 interactions, r_max 5 Å, float32) — the
cost of a step does not depend on the weights. Every relaxation runs exactly ``--steps``
FIRE steps (fmax 1e-6 is never reached), so both routes do the same structure-steps.

    OMP_NUM_THREADS=1 python benchmarks/bench_explore.py [--members 2] [--steps 20] [--seeds 30]

Prints structure-steps per second of each route, the speed-up over sequential ASE, and
the largest RMSD between the routes' final structures (same algorithm, same model).
``--max-batch 0 4`` runs the batched route with all structures in one call per member
per step (0) and in calls of 4 structures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.optimize import FIRE  # noqa: E402

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY, displacement  # noqa: E402
from activedefect.search.explore import relax  # noqa: E402
from activedefect.search.relaxation import RelaxSettings  # noqa: E402
from activedefect.store.zarr_store import ORIGIN_KEY  # noqa: E402


def sic_vacancy_seeds(n: int) -> list[Atoms]:
    """``n`` ShakeNBreak-style seeds of V_Si in 63-atom 3C-SiC, charges -1, 0, +1."""
    from pymatgen.io.ase import AseAtomsAdaptor
    from shakenbreak.distortions import distort_and_rattle

    host = bulk("SiC", "zincblende", a=4.36, cubic=True) * (2, 2, 2)
    vacancy = host.get_scaled_positions()[0]
    del host[0]
    structure = AseAtomsAdaptor.get_structure(host)
    seeds = []
    factors = [1 + d / 100 for d in range(-40, 60, 10)]
    for i in range(n):
        charge = (-1, 0, 1)[i % 3]
        factor = factors[(i // 3) % len(factors)]
        out = distort_and_rattle(
            structure, factor, num_nearest_neighbours=4, frac_coords=vacancy, stdev=0.19, d_min=1.5, seed=i + 1
        )
        atoms = AseAtomsAdaptor.get_atoms(out["distorted_structure"])
        atoms.info = {
            CHARGE_KEY: charge,
            SPIN_KEY: 1 if charge % 2 == 0 else 2,
            DEFECT_KEY: "v_Si",
            ORIGIN_KEY: {"seed": f"Bond_Distortion_{round((factor - 1) * 100)}.0%-{i}"},
        }
        seeds.append(atoms)
    return seeds


def untrained_committee(members: int, folder: Path):
    """K randomly initialised members saved as model files and loaded as a Committee."""
    from activedefect.model.committee import Committee
    from activedefect.model.config import ModelConfig
    from activedefect.model.mace_model import build_model, save_model_atomic

    config = ModelConfig(elements=("Si", "C"), charges=(-1, 0, 1), multiplicities=(1, 2))
    paths = []
    for k in range(members):
        import torch

        torch.manual_seed(k)
        model = build_model(config, np.zeros((len(config.heads), 2)), [1.0] * len(config.heads), 16.0)
        path = folder / f"member-{k}.model"
        save_model_atomic(model, path)
        paths.append(path)
    return Committee.load(paths)


def sequential(seeds: list[Atoms], committee, steps: int) -> list[Atoms]:
    from activedefect.model.committee import CommitteeCalculator

    finals = []
    for seed in seeds:
        atoms = seed.copy()
        atoms.calc = CommitteeCalculator(committee, "high")
        FIRE(atoms, logfile=None).run(fmax=1e-6, steps=steps)
        finals.append(atoms)
    return finals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2, help="runs per route; the fastest counts")
    parser.add_argument("--max-batch", type=int, nargs="*", default=[0, 4],
                        help="structures per predict call for the batched route; 0 = all")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    seeds = sic_vacancy_seeds(args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        committee = untrained_committee(args.members, Path(tmp))
        committee.predict(seeds[:2], "high")  # warm-up (lazy imports, first-call costs)
        # routes interleaved, each repeated; the best wall time counts (shared machine)
        times: dict[object, list[float]] = {}
        calls_of: dict[object, int] = {}
        results_of: dict[object, list] = {}
        for _ in range(args.repeat):
            for max_batch in args.max_batch:
                settings = RelaxSettings(fmax_eV_A=1e-6, max_steps=args.steps, trust_hi_eV_A=None,
                                         max_batch=max_batch or None)
                calls = committee.n_model_calls
                start = time.perf_counter()
                results_of[max_batch] = relax(seeds, committee, settings)
                times.setdefault(max_batch, []).append(time.perf_counter() - start)
                calls_of[max_batch] = committee.n_model_calls - calls
            calls = committee.n_model_calls
            start = time.perf_counter()
            finals = sequential(seeds, committee, args.steps)
            times.setdefault("sequential", []).append(time.perf_counter() - start)
            sequential_calls = committee.n_model_calls - calls
        sequential_s = min(times["sequential"])
        rows = [
            (f"batched, {b or 'all'} per call", min(times[b]), calls_of[b], results_of[b]) for b in args.max_batch
        ]

    structure_steps = sum(r.n_steps for r in rows[0][3])
    print(f"seeds: {len(seeds)} x {len(seeds[0])} atoms; committee: {args.members} untrained members; "
          f"{args.steps} FIRE steps each; torch threads {torch.get_num_threads()}; best of {args.repeat}")
    print(f"{'sequential ASE FIRE':26s}: {sequential_s:8.2f} s  {structure_steps / sequential_s:7.2f} "
          f"structure-steps/s  model calls {sequential_calls}")
    for name, wall_s, calls, results in rows:
        rmsd = max(displacement(f, r.atoms).rmsd_A for f, r in zip(finals, results) if r.status != "exploded")
        print(f"{name:26s}: {wall_s:8.2f} s  {structure_steps / wall_s:7.2f} structure-steps/s  model calls "
              f"{calls}  speed-up {sequential_s / wall_s:.2f}x  statuses {sorted({r.status for r in results})}  "
              f"max RMSD to sequential {rmsd:.1e} Å")


if __name__ == "__main__":
    main()
