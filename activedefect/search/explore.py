"""Committee relaxations: every seed relaxed on the committee mean of one head, in one
batch, with trajectory frames and their committee spread kept for the policies (:func:`relax`);
and new starts around each charge state's best structure (:func:`exploration_starts`).

Why a batched FIRE of our own: relaxing all seeds together makes one model call per
member per step for the whole batch (``ForceModel.predict(list)``) instead of one ASE
relaxation, and one graph build and call per member, per structure per step. That is what
pays on a GPU, where a 60-atom graph leaves the device idle. On one CPU thread the model's
arithmetic is ~90 % of a step and big batches lose cache locality: calls of 2-4
structures (``RelaxSettings.max_batch``) ran 1.16x faster than sequential ASE, one call
for 30 structures 0.93x (benchmarks/bench_explore.py, docs/policies.md). :class:`BatchFIRE`
reproduces ASE's FIRE (3.29, default parameters) step for step on each structure, so a
batched relaxation reaches the minima ``ase.optimize.FIRE`` reaches with the same model.
Why not torch-sim: its MACE wrapper (torch-sim-atomistic 0.3.0) passes neither
``total_charge``/``total_spin`` nor a head to the model and evaluates one model, not a
committee (see docs/policies.md, "Exploration").

Settings, stopping rules and results: :mod:`activedefect.search.relaxation`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY, displacement
from activedefect.search.fire import BatchFIRE
from activedefect.search.relaxation import (
    CONVERGED,
    CUT_UNTRUSTED,
    EXPLODED,
    HEAD_KEY,
    MAX_STEPS,
    ForceModel,
    Frame,
    Prediction,
    RelaxResult,
    RelaxSettings,
    seed_name,
)
from activedefect.store.zarr_store import ORIGIN_KEY


def _describe(atoms: Atoms, index: int) -> tuple[str, str, int, int]:
    info = atoms.info
    for key in (CHARGE_KEY, DEFECT_KEY):
        if key not in info:
            raise ValueError(
                f"seed {index} has no atoms.info[{key!r}]; every seed needs {CHARGE_KEY!r}, "
                f"{SPIN_KEY!r}, {DEFECT_KEY!r} and {ORIGIN_KEY!r}: {{'seed': name}} (defects.py sets them)"
            )
    name = seed_name(atoms) or f"start{index}"
    return name, str(info[DEFECT_KEY]), int(info[CHARGE_KEY]), int(info.get(SPIN_KEY, 1))


def shortest_distance(atoms: Atoms) -> float:
    """Shortest interatomic distance in Å, minimum image: pair vectors wrapped into the
    cell, then the 27 neighbouring images of each (exact unless the cell is extremely
    skewed). ~1 ms for 60 atoms, a tenth of ``ase.neighborlist``'s cost."""
    n = len(atoms)
    if n < 2:
        return float("inf")
    i, j = np.triu_indices(n, 1)
    delta = atoms.positions[j] - atoms.positions[i]
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return float(np.sqrt(np.einsum("ij,ij->i", delta, delta).min()))
    cell = np.asarray(atoms.cell)
    frac = np.linalg.solve(cell.T, delta.T).T
    frac[:, pbc] -= np.round(frac[:, pbc])
    delta = frac @ cell
    ranges = [(-1, 0, 1) if p else (0,) for p in pbc]
    shifts = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3) @ cell
    images = delta[:, None, :] + shifts[None, :, :]
    return float(np.sqrt(np.einsum("ijk,ijk->ij", images, images).min()))


def _too_close(atoms: Atoms, min_distance_A: float) -> float | None:
    """Shortest interatomic distance when below ``min_distance_A``, else None."""
    shortest = shortest_distance(atoms)
    return shortest if shortest < min_distance_A else None


class _Trajectory:
    def __init__(self, seed_atoms: Atoms, index: int, settings: RelaxSettings, generation: int | None):
        self.seed, self.defect, self.charge, self.multiplicity = _describe(seed_atoms, index)
        # only what defines the structure travels on: a seed read from the store also
        # carries its own frame index and hash, which its trajectory's frames must not
        self.atoms = Atoms(
            seed_atoms.numbers, positions=seed_atoms.positions, cell=seed_atoms.cell, pbc=seed_atoms.pbc
        )
        self.atoms.info.update({CHARGE_KEY: self.charge, SPIN_KEY: self.multiplicity, DEFECT_KEY: self.defect})
        self.index = index
        self.generation = generation
        self.settings = settings
        self.frames: list[Frame] = []
        self.status: str | None = None
        self.message = ""
        self.step = 0
        self.e0: float | None = None
        self.e_prev: float | None = None
        self.forces: np.ndarray | None = None
        self.last: Frame | None = None
        # a relaxation continued from where an earlier one stopped goes on on that one's head
        self.head = seed_atoms.info.get(HEAD_KEY) or settings.start_head or settings.head
        self.switched = False

    def _frame(self, pred: Prediction, fmax: float) -> Frame:
        atoms = self.atoms.copy()
        atoms.info[ORIGIN_KEY] = {
            "seed": self.seed,
            "generation": self.generation,
            "trajectory": self.index,
            "step": self.step,
        }
        return Frame(
            atoms=atoms,
            step=self.step,
            energy_eV=float(pred.energy_mean_eV),
            energy_std_eV=float(pred.energy_std_eV),
            max_force_std_eV_A=float(pred.max_force_std_eV_A),
            fmax_eV_A=fmax,
            head=self.head,
        )

    def _keep_last(self) -> None:
        if self.last is not None and (not self.frames or self.frames[-1].step != self.last.step):
            self.frames.append(self.last)

    def explode(self, message: str) -> None:
        self.status, self.message = EXPLODED, message
        self._keep_last()

    def observe(self, pred: Prediction) -> None:
        """Take the prediction at the current geometry; decide whether to go on."""
        s = self.settings
        n_atoms = len(self.atoms)
        energy = float(pred.energy_mean_eV)
        forces = np.asarray(pred.forces_mean_eV_A, dtype=np.float64)
        if not (np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(pred.max_force_std_eV_A)):
            return self.explode(f"non-finite prediction at step {self.step}")
        if self.e0 is None:
            self.e0 = energy
        drop_total = (self.e0 - energy) / n_atoms
        if drop_total > s.max_energy_drop_eV_per_atom:
            return self.explode(
                f"energy fell {drop_total:.3f} eV/atom below the start at step {self.step} "
                f"(limit {s.max_energy_drop_eV_per_atom})"
            )
        if self.e_prev is not None and (self.e_prev - energy) / n_atoms > s.max_step_drop_eV_per_atom:
            return self.explode(
                f"energy fell {(self.e_prev - energy) / n_atoms:.3f} eV/atom in one step at step {self.step} "
                f"(limit {s.max_step_drop_eV_per_atom})"
            )
        self.e_prev = energy
        fmax = float(np.linalg.norm(forces, axis=1).max())
        frame = self._frame(pred, fmax)
        self.last = frame
        self.forces = forces
        if self.frames and self.frames[-1].step == self.step:
            self.frames[-1] = frame  # the same geometry seen again on the final head
        elif self.step % s.frame_interval == 0:
            self.frames.append(frame)
        limit = s.trust_limit_eV_A(fmax)
        if limit is not None and frame.max_force_std_eV_A > limit:
            frame.cut = True
            self.status = CUT_UNTRUSTED
            self.message = f"max force spread {frame.max_force_std_eV_A:.3f} eV/Å > {limit:.3f} (trust limit)"
        elif fmax < s.fmax_eV_A and self.head != s.head:
            self.switch_head()
        elif fmax < s.fmax_eV_A:
            self.status = CONVERGED
        elif self.step >= s.max_steps:
            self.status = MAX_STEPS
        if self.status is not None:
            self._keep_last()

    def switch_head(self) -> None:
        """Go on from here on the final head: its energies have another reference, so
        the explosion tests restart from its first prediction."""
        self.head = self.settings.head
        self.e0 = self.e_prev = None
        self.switched = True

    def result(self) -> RelaxResult:
        last = self.last
        if last is None:  # exploded on the very first prediction
            return RelaxResult(
                self.seed, self.defect, self.charge, self.multiplicity, EXPLODED,
                self.atoms.copy(), float("nan"), float("nan"), float("nan"), float("nan"), self.step, [], self.message,
            )
        return RelaxResult(
            seed=self.seed,
            defect=self.defect,
            charge=self.charge,
            multiplicity=self.multiplicity,
            status=self.status or MAX_STEPS,
            atoms=last.atoms,
            energy_eV=last.energy_eV,
            energy_std_eV=last.energy_std_eV,
            max_force_std_eV_A=last.max_force_std_eV_A,
            fmax_eV_A=last.fmax_eV_A,
            n_steps=self.step,
            frames=self.frames,
            message=self.message,
            head=self.head,
        )


def relax(
    seeds: Sequence[Atoms],
    model: ForceModel,
    settings: RelaxSettings = RelaxSettings(),
    generation: int | None = None,
) -> list[RelaxResult]:
    """Relax all ``seeds`` together on the committee mean of ``settings.head``.

    Each iteration makes one ``model.predict`` call for every structure still running,
    so a committee of K members makes K model calls per step for the whole batch;
    finished structures leave the batch. Results come back in the order of ``seeds``;
    frames carry ``info["origin"] = {seed, generation, trajectory (index in seeds), step}``.
    """
    trajs = [_Trajectory(atoms, i, settings, generation) for i, atoms in enumerate(seeds)]
    for traj in trajs:
        shortest = _too_close(traj.atoms, settings.min_distance_A)
        if shortest is not None:
            traj.explode(f"atoms {shortest:.2f} Å apart in the seed (limit {settings.min_distance_A} Å)")
    active = [t for t in trajs if t.status is None]
    fire = BatchFIRE([len(t.atoms) for t in active], settings.fire)
    chunk = settings.max_batch or max(len(trajs), 1)
    while active:
        preds: list[Prediction | None] = [None] * len(active)
        for head in sorted({t.head for t in active}):
            on_head = [i for i, t in enumerate(active) if t.head == head]
            for start in range(0, len(on_head), chunk):
                batch = on_head[start : start + chunk]
                got = model.predict([active[i].atoms for i in batch], head)
                if len(got) != len(batch):
                    raise RuntimeError(f"model.predict returned {len(got)} predictions for {len(batch)} structures")
                for i, pred in zip(batch, got):
                    preds[i] = pred
        for traj, pred in zip(active, preds):
            traj.observe(pred)
        running = np.array([t.status is None for t in active])
        fire.keep(running)
        active = [t for t, keep in zip(active, running) if keep]
        if not active:
            break
        positions = np.concatenate([t.atoms.positions for t in active])
        forces = np.concatenate([t.forces for t in active])
        new_positions = fire.step(positions, forces)
        # a structure that has just switched heads stays where it is, to be asked on its new
        # head with the rest of the batch next iteration, and starts FIRE afresh
        switched = np.array([t.switched for t in active])
        fire.restart(switched)
        start = 0
        sound = np.ones(len(active), dtype=bool)
        for i, traj in enumerate(active):
            n = len(traj.atoms)
            start += n
            if traj.switched:
                traj.switched = False
                continue
            traj.atoms.positions = new_positions[start - n : start]
            traj.step += 1
            shortest = _too_close(traj.atoms, settings.min_distance_A)
            if shortest is not None:
                traj.explode(f"atoms {shortest:.2f} Å apart at step {traj.step} (limit {settings.min_distance_A} Å)")
                sound[i] = False
        if not sound.all():
            fire.keep(sound)
            active = [t for t, keep in zip(active, sound) if keep]
    return [t.result() for t in trajs]


def exploration_starts(
    best: Sequence[Atoms],
    *,
    n_rattled: int = 2,
    stdev_A: float = 0.05,
    seed: int = 0,
    cross_charge: bool = True,
    skip_within_rmsd_A: float = 0.05,
    generation: int | None = None,
) -> list[Atoms]:
    """New starts around the current best structure of each defect × charge state.

    ``best`` holds one structure per defect × charge (info: charge, spin, defect, origin
    seed). Returns ``n_rattled`` Gaussian-rattled copies of each (``stdev_A`` per
    Cartesian component, numpy ``default_rng(seed)``), named ``<seed>~rattle<i>``, and,
    with ``cross_charge``, each best structure re-charged to every other charge state of
    its defect (as ShakeNBreak tries one charge state's ground-state distortion in the
    others), with the target state's multiplicity, named ``<seed>~from_q<charge>``. A
    re-charged start within ``skip_within_rmsd_A`` of the target's own best adds nothing
    and is left out. The name is ``info["origin"]["seed"]``, so the store keeps where each
    start came from.
    """
    rng = np.random.default_rng(seed)
    by_state: dict[tuple[str, int], tuple[str, Atoms]] = {}
    for i, atoms in enumerate(best):
        name, defect, charge, _ = _describe(atoms, i)
        if (defect, charge) in by_state:
            raise ValueError(f"two best structures for {defect} charge {charge}; give one per defect × charge")
        by_state[(defect, charge)] = (name, atoms)

    def start(atoms: Atoms, name: str, positions: np.ndarray) -> Atoms:
        copy = Atoms(atoms.numbers, positions=positions, cell=atoms.cell, pbc=atoms.pbc)
        copy.info.update({k: atoms.info[k] for k in (CHARGE_KEY, SPIN_KEY, DEFECT_KEY) if k in atoms.info})
        copy.info[ORIGIN_KEY] = {"seed": name, "generation": generation, "trajectory": None, "step": None}
        return copy

    starts: list[Atoms] = []
    for (defect, charge), (name, atoms) in by_state.items():
        for i in range(n_rattled):
            noise = rng.normal(0.0, stdev_A, size=atoms.positions.shape)
            starts.append(start(atoms, f"{name}~rattle{i}", atoms.positions + noise))
        if not cross_charge:
            continue
        for (other_defect, other_charge), (_, target) in by_state.items():
            if other_defect != defect or other_charge == charge:
                continue
            if len(target) != len(atoms) or not np.array_equal(target.numbers, atoms.numbers):
                raise ValueError(
                    f"{defect} charge {charge} and charge {other_charge} differ in atoms or atom order; "
                    "re-charging needs the same supercell for every charge state of a defect"
                )
            if displacement(target, atoms).rmsd_A <= skip_within_rmsd_A:
                continue
            copy = start(atoms, f"{name}~from_q{charge:+d}", atoms.positions)
            copy.info[CHARGE_KEY] = other_charge
            copy.info[SPIN_KEY] = int(target.info.get(SPIN_KEY, 1))
            starts.append(copy)
    return starts
