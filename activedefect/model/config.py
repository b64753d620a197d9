"""What a committee member is and how it trains, as plain data: the architecture
(:class:`ModelConfig`, fixed at generation 0), the optimiser settings
(:class:`TrainSettings`) and the record of one training run (:class:`TrainReport`, saved
with the model). Plain dataclasses, no torch, persisted through ``as_dict``/``from_dict``.

Defaults (:class:`ModelConfig`) are the small CPU model that trains in seconds per epoch
on 10-60-atom cells: 32 channels, max_L 0 (invariant messages), max_ell 2, correlation 2,
2 interactions, r_max 5 Å, MLP 16x0e, float32 (measured: ~13 configurations x epochs
per second per member on 63-atom cells, one thread; see benchmarks/bench_committee.py).
float32 carries total energies to ~1e-7 relative: ~0.04 meV for a 400 eV xTB cell,
~0.5 meV for a 5000 eV one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ase.data import atomic_numbers as ATOMIC_NUMBERS

from activedefect.geometry import CHARGE_KEY, SPIN_KEY


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of every member of a campaign, fixed at generation 0 so that warm
    starts always match: elements, charge and multiplicity ranges, heads.

    The charge embedding covers ``min(charges) - charge_margin`` … ``max(charges) +
    charge_margin``; the margin rows are never trained unless such charges get data,
    so predictions there are not meaningful until then. ``multiplicities=None`` means no
    spin embedding (the multiplicity then has no effect on the model).
    """

    elements: tuple[str, ...]
    charges: tuple[int, ...]
    heads: tuple[str, ...] = ("low", "high")
    multiplicities: tuple[int, ...] | None = None
    charge_margin: int = 1
    num_channels: int = 32
    max_L: int = 0
    max_ell: int = 2
    correlation: int = 2
    num_interactions: int = 2
    r_max: float = 5.0
    MLP_irreps: str = "16x0e"
    num_radial_basis: int = 8
    num_cutoff_basis: int = 5
    radial_MLP: tuple[int, ...] = (64, 64, 64)
    embedding_dim: int = 16
    dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "elements", tuple(self.elements))
        object.__setattr__(self, "charges", tuple(int(q) for q in self.charges))
        object.__setattr__(self, "heads", tuple(self.heads))
        object.__setattr__(self, "radial_MLP", tuple(self.radial_MLP))
        if self.multiplicities is not None:
            object.__setattr__(self, "multiplicities", tuple(int(m) for m in self.multiplicities))
        unknown = [s for s in self.elements if s not in ATOMIC_NUMBERS]
        if not self.elements or unknown:
            raise ValueError(f"ModelConfig.elements must be chemical symbols; got {self.elements!r}")
        if not self.charges:
            raise ValueError("ModelConfig.charges is empty; give the campaign's charge states, e.g. [0, -2]")
        if not self.heads or len(set(self.heads)) != len(self.heads):
            raise ValueError(f"ModelConfig.heads must be unique and non-empty; got {self.heads!r}")
        if self.multiplicities is not None and (not self.multiplicities or min(self.multiplicities) < 1):
            raise ValueError(f"ModelConfig.multiplicities are 2S+1 >= 1; got {self.multiplicities!r}")
        if self.charge_margin < 0:
            raise ValueError("ModelConfig.charge_margin must be >= 0")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"ModelConfig.dtype must be 'float32' or 'float64'; got {self.dtype!r}")

    @property
    def charge_range(self) -> tuple[int, int]:
        """Lowest and highest charge the embedding can index."""
        return min(self.charges) - self.charge_margin, max(self.charges) + self.charge_margin

    @property
    def multiplicity_range(self) -> tuple[int, int] | None:
        if self.multiplicities is None:
            return None
        return max(1, min(self.multiplicities) - self.charge_margin), max(self.multiplicities) + self.charge_margin

    def embedding_specs(self) -> dict[str, dict[str, Any]]:
        lo, hi = self.charge_range
        specs = {
            CHARGE_KEY: {
                "type": "categorical",
                "per": "graph",
                "num_classes": hi - lo + 1,
                "offset": -lo,
                "emb_dim": self.embedding_dim,
            }
        }
        if self.multiplicity_range is not None:
            mlo, mhi = self.multiplicity_range
            specs[SPIN_KEY] = {
                "type": "categorical",
                "per": "graph",
                "num_classes": mhi - mlo + 1,
                "offset": -mlo,
                "emb_dim": self.embedding_dim,
            }
        return specs

    @property
    def atomic_numbers(self) -> list[int]:
        return sorted(ATOMIC_NUMBERS[s] for s in set(self.elements))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser settings of one training run (may differ between generations).

    Loss per frame: ``energy_weight * ((E - E_ref) / N_atoms)^2`` plus
    ``forces_weight * mean_atoms_components (F - F_ref)^2``; with ``balance_heads`` each
    head with data carries the same total weight (a sparse ``high`` head is not
    drowned by a dense ``low`` one). Learning rate decays by a cosine from ``lr`` to
    ``lr * lr_final_factor``; warm starts begin at ``lr * warm_lr_factor``.

    ``hot_force_eV_A`` scales each frame's weight by ``1 / (1 + (F_rms / hot_force_eV_A)^2)``,
    ``F_rms`` its RMS reference force: a distorted ShakeNBreak seed at 10-25 eV/Å would
    otherwise own the squared-error loss (a 5 % error there outweighs a 100 % error at
    a minimum), and ground states are decided where forces are near zero (None: off).
    ``ema_decay`` keeps an exponential moving average of the weights over optimiser
    steps and saves it (MACE's own training does the same; None: the last weights).

    ``sample_by_weight`` draws each epoch's frames with replacement in proportion to
    their weight and lets each count once, instead of visiting every frame once with its
    weight: the same expected loss, but the optimiser steps go where the weight is (the
    minima) rather than to hot frames weighted down to a few percent. Measured on the
    quickstart's 970 labels, one member, 40 epochs: in-sample `low` error 78 → 38
    meV/atom in the same 5 minutes (docs/benchmarks.md).

    ``hot_force_eV_A``, ``ema_decay`` and ``sparse_head_ratio`` below are off here (a
    bare optimiser) and on in a campaign by default; ``sample_by_weight`` is opt-in in both
    (``CommitteeSpec``: measured on the paper's case, docs/benchmarks.md).

    With ``sparse_head_ratio``, a fresh model whose heads differ in size (a head with
    data but fewer than ``1 / sparse_head_ratio`` of the largest head's frames: ``high``
    beside dense ``low``) trains in two stages: the dense heads alone for
    ``1 - sparse_epochs_fraction`` of the epochs, then every head, the sparse ones
    starting from a copy of a dense head's readout (their own E0s), at
    ``lr * warm_lr_factor``. Trained together from scratch, a
    sparse head's readout overfits its few labels; started from the dense head's, it
    learns the correction (None: one stage).
    """

    lr: float = 0.01
    warm_lr_factor: float = 0.3
    lr_final_factor: float = 0.05
    batch_size: int = 8
    energy_weight: float = 10.0
    forces_weight: float = 1.0
    balance_heads: bool = True
    clip_grad_norm: float = 10.0
    weight_decay: float = 0.0
    hot_force_eV_A: float | None = None
    ema_decay: float | None = None
    sparse_head_ratio: float | None = None
    sparse_epochs_fraction: float = 0.25
    sample_by_weight: bool = False
    num_threads: int = 1
    device: str = "auto"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainSettings":
        return cls(**d)


@dataclass
class TrainReport:
    """What one ``train_member`` call did: JSON-ready through ``as_dict``.

    ``start`` is ``"fresh"`` or ``"warm"``; ``reused`` is true when the model file
    already existed and was not retrained (the report is the one saved with it).
    RMSEs per head: ``{"energy_meV_per_atom": ..., "forces_eV_A": ..., "n": ...}``;
    ``initial_*`` are measured before the first optimiser step (for a warm start: the
    previous generation's weights on the new data).
    """

    seed: int
    epochs: int
    start: str
    out_path: str
    init_from: str | None = None
    reused: bool = False
    bootstrap: bool = False
    wall_s: float = 0.0
    n_train: dict[str, int] = field(default_factory=dict)
    n_valid: dict[str, int] = field(default_factory=dict)
    final_loss: float | None = None
    loss_history: list[float] = field(default_factory=list)
    initial_train_rmse: dict[str, dict[str, float]] = field(default_factory=dict)
    train_rmse: dict[str, dict[str, float]] = field(default_factory=dict)
    valid_rmse: dict[str, dict[str, float]] = field(default_factory=dict)
    fitted_heads: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainReport":
        return cls(**d)
