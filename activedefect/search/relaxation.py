"""What a committee relaxation is given and gives back: its settings, the committee it
calls (:class:`ForceModel`), the frames it keeps and its result per trajectory.

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

from activedefect.search.fire import FireParams
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
    head: str | None = None  # the head that predicted it (None: the settings' final head)


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


def seed_name(atoms: Atoms) -> str | None:
    """The seed name in ``info["origin"]["seed"]`` (``Unperturbed``,
    ``Bond_Distortion_-30.0%``, ``Unperturbed~rattle0``, ...), unique within a defect ×
    charge state."""
    origin = atoms.info.get(ORIGIN_KEY)
    return origin.get("seed") if isinstance(origin, dict) else None
