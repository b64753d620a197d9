"""Committee relaxations: every seed relaxed on the committee mean of one head, in one
batch, with trajectory frames and their committee spread kept for the policies.

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

Where a trajectory stops (``RelaxResult.status``):

- ``converged``: max per-atom |mean force| < ``fmax_eV_A`` (ASE's test);
- ``max_steps``: ``max_steps`` FIRE steps taken without converging;
- ``cut_untrusted``: the committee's max force spread exceeded ``trust_hi_eV_A`` and
  ``trust_relative`` times the largest mean force (far from a minimum, where forces are
  many eV/Å, members that differ by 1 eV/Å still agree on the way down; a distorted
  ShakeNBreak seed starts at 8-25 eV/Å); the frame there is kept and marked ``cut`` (a
  labelling candidate) and the model is not followed further;
- ``exploded``: two atoms closer than ``min_distance_A`` (minimum image), a non-finite
  prediction, the energy more than ``max_energy_drop_eV_per_atom`` below the start, or
  one step dropping it by more than ``max_step_drop_eV_per_atom``. The offending geometry
  is not kept; the result holds the last sound one and is never a minimum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from ase import Atoms

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY, displacement
from activedefect.store.zarr_store import ORIGIN_KEY

#: ``atoms.info`` key of a start that continues a relaxation: the head it had reached.
HEAD_KEY = "relax_head"

CONVERGED = "converged"
MAX_STEPS = "max_steps"
CUT_UNTRUSTED = "cut_untrusted"
EXPLODED = "exploded"
STATUSES = (CONVERGED, MAX_STEPS, CUT_UNTRUSTED, EXPLODED)
#: Stopped before a minimum, with somewhere sound to go on from.
UNFINISHED = (CUT_UNTRUSTED, MAX_STEPS)


class Prediction(Protocol):
    """Committee mean and spread for one structure (``committee.CommitteePrediction``)."""

    energy_mean_eV: float
    energy_std_eV: float
    forces_mean_eV_A: np.ndarray
    forces_std_eV_A: np.ndarray
    max_force_std_eV_A: float


class ForceModel(Protocol):
    """What the relaxer needs from a committee: one batched prediction per call."""

    def predict(self, atoms_list: Sequence[Atoms], head: str) -> list[Prediction]: ...


@dataclass(frozen=True)
class FireParams:
    """``ase.optimize.FIRE`` parameters, with its defaults (``a`` is alpha's start value,
    ``astart`` the value alpha is reset to after an uphill step)."""

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    Nmin: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99
    a: float = 0.1


@dataclass(frozen=True)
class RelaxSettings:
    """How committee relaxations run and when they stop (units in the names).

    ``trust_hi_eV_A=None`` never cuts; ``trust_relative=0`` cuts on the absolute spread
    alone; ``frame_interval`` keeps steps 0, n, 2n, ... and
    always the last frame. ``start_head`` (e.g. ``"low"``, the densely labelled head)
    relaxes each structure on that head first, until its forces fall below ``fmax_eV_A``,
    then goes on from there on ``head`` with a fresh FIRE state: far from a minimum,
    where forces are many eV/Å and only ``low`` labels exist, the dense head knows the
    way down; near the minimum, where the sparse ``high`` labels lie, ``head`` decides
    where it ends (the screen-then-refine of ShakeNBreak, on the model; ``max_steps``
    counts both stretches). ``max_batch=None`` evaluates all running structures in one
    ``predict`` call per step (one model call per member: best on a GPU); a number splits
    them into calls of at most that many structures (on one CPU thread, 2-4 structures of
    ~60 atoms per call run fastest, see docs/policies.md).
    """

    fmax_eV_A: float = 0.05
    max_steps: int = 200
    frame_interval: int = 5
    trust_hi_eV_A: float | None = 0.3
    trust_relative: float = 0.0
    min_distance_A: float = 0.7
    max_energy_drop_eV_per_atom: float = 1.0
    max_step_drop_eV_per_atom: float = 0.5
    head: str = "high"
    start_head: str | None = None
    max_batch: int | None = None
    fire: FireParams = FireParams()

    def __post_init__(self) -> None:
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"RelaxSettings.max_batch must be >= 1 or None, got {self.max_batch}")
        if self.fmax_eV_A <= 0:
            raise ValueError(f"RelaxSettings.fmax_eV_A must be > 0, got {self.fmax_eV_A}")
        if self.max_steps < 0:
            raise ValueError(f"RelaxSettings.max_steps must be >= 0, got {self.max_steps}")
        if self.frame_interval < 1:
            raise ValueError(f"RelaxSettings.frame_interval must be >= 1, got {self.frame_interval}")
        if self.trust_relative < 0:
            raise ValueError(f"RelaxSettings.trust_relative must be >= 0, got {self.trust_relative}")

    def trust_limit_eV_A(self, fmax_eV_A: float) -> float | None:
        """The force spread above which a frame at max |mean force| ``fmax_eV_A`` is cut."""
        if self.trust_hi_eV_A is None:
            return None
        return max(self.trust_hi_eV_A, self.trust_relative * fmax_eV_A)


@dataclass
class Frame:
    """One kept trajectory frame: structure (info carries charge, spin, defect and
    ``origin`` = seed, generation, trajectory, step) with the committee's prediction there."""

    atoms: Atoms
    step: int
    energy_eV: float
    energy_std_eV: float
    max_force_std_eV_A: float
    fmax_eV_A: float
    cut: bool = False


@dataclass
class RelaxResult:
    """One trajectory. ``atoms``/``energy_eV``/spreads are those of the last sound
    frame (for ``exploded``: the last geometry before the explosion)."""

    seed: str
    defect: str
    charge: int
    multiplicity: int
    status: str
    atoms: Atoms
    energy_eV: float
    energy_std_eV: float
    max_force_std_eV_A: float
    fmax_eV_A: float
    n_steps: int
    frames: list[Frame] = field(default_factory=list)
    message: str = ""
    head: str | None = None  # the head of its last step (None: the settings' final head)

    @property
    def is_minimum(self) -> bool:
        return self.status == CONVERGED


def _seg_sum(values: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(seg, weights=values, minlength=n)


class BatchFIRE:
    """ASE's FIRE on many structures at once, each with its own state (velocity, dt,
    alpha, count of downhill steps); atoms of all structures lie in one flat array.

    Same operations as ``ase.optimize.FIRE.step`` (3.29): the first step starts from zero
    velocity; ``maxstep`` bounds the norm of each structure's whole displacement vector.
    """

    def __init__(self, n_atoms: Sequence[int], params: FireParams = FireParams()):
        self.params = params
        counts = np.asarray(n_atoms, dtype=np.int64)
        self.n = len(counts)
        self.seg = np.repeat(np.arange(self.n), counts)
        self.vel = np.zeros((int(counts.sum()), 3))
        self.started = np.zeros(self.n, dtype=bool)
        self.dt = np.full(self.n, params.dt)
        self.a = np.full(self.n, params.a)
        self.n_downhill = np.zeros(self.n, dtype=np.int64)

    def step(self, positions: np.ndarray, forces: np.ndarray) -> np.ndarray:
        """New flat positions after one FIRE step from ``positions`` with ``forces``."""
        p, seg, n = self.params, self.seg, self.n
        vel = self.vel
        vf = _seg_sum(np.einsum("ij,ij->i", forces, vel), seg, n)
        f2 = _seg_sum(np.einsum("ij,ij->i", forces, forces), seg, n)
        v2 = _seg_sum(np.einsum("ij,ij->i", vel, vel), seg, n)
        up = self.started & (vf > 0.0)
        down = self.started & ~(vf > 0.0)
        if up.any():
            mix = np.where(up, self.a, 0.0)
            scale = np.where(up, self.a * np.sqrt(v2) / np.sqrt(np.where(up, f2, 1.0)), 0.0)
            vel = (1.0 - mix[seg])[:, None] * vel + scale[seg][:, None] * forces
            grow = up & (self.n_downhill > p.Nmin)
            self.dt = np.where(grow, np.minimum(self.dt * p.finc, p.dtmax), self.dt)
            self.a = np.where(grow, self.a * p.fa, self.a)
            self.n_downhill = np.where(up, self.n_downhill + 1, self.n_downhill)
        if down.any():
            vel = np.where(down[seg][:, None], 0.0, vel)
            self.a = np.where(down, p.astart, self.a)
            self.dt = np.where(down, self.dt * p.fdec, self.dt)
            self.n_downhill = np.where(down, 0, self.n_downhill)
        self.started[:] = True
        vel = vel + self.dt[seg][:, None] * forces
        dr = self.dt[seg][:, None] * vel
        norm = np.sqrt(_seg_sum(np.einsum("ij,ij->i", dr, dr), seg, n))
        factor = np.where(norm > p.maxstep, p.maxstep / np.where(norm > 0, norm, 1.0), 1.0)
        self.vel = vel
        return positions + factor[seg][:, None] * dr

    def restart(self, mask: np.ndarray) -> None:
        """Start the structures where ``mask`` is true afresh (zero velocity, initial dt
        and alpha), as a new ``ase.optimize.FIRE`` would: their forces changed under them."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        self.vel[mask[self.seg]] = 0.0
        self.started[mask] = False
        self.dt[mask] = self.params.dt
        self.a[mask] = self.params.a
        self.n_downhill[mask] = 0

    def keep(self, mask: np.ndarray) -> None:
        """Drop the structures where ``mask`` is false (finished ones leave the batch)."""
        mask = np.asarray(mask, dtype=bool)
        atom_mask = mask[self.seg]
        self.vel = self.vel[atom_mask]
        self.seg = (np.cumsum(mask) - 1)[self.seg[atom_mask]]
        self.started, self.dt, self.a, self.n_downhill = (
            x[mask] for x in (self.started, self.dt, self.a, self.n_downhill)
        )
        self.n = int(mask.sum())


def seed_name(atoms: Atoms) -> str | None:
    """The seed name in ``info["origin"]["seed"]`` (``Unperturbed``,
    ``Bond_Distortion_-30.0%``, ``Unperturbed~rattle0``, ...), unique within a defect ×
    charge state."""
    origin = atoms.info.get(ORIGIN_KEY)
    return origin.get("seed") if isinstance(origin, dict) else None


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
