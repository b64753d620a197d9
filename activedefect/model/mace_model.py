"""One charge-embedded, multi-fidelity MACE model: its configuration, construction and
training (one committee member).

The model is the architecture of arXiv 2603.05238: a ``ScaleShiftMACE`` whose species
embedding is summed with a categorical ``total_charge`` embedding (and optionally a
``total_spin`` one, the multiplicity 2S+1), with ``use_embedding_readout=True`` for the
geometry-independent charge energy, and one readout head per fidelity (``low``,
``high``) with its own E0s and force scale.

Why an in-memory training loop and not ``mace.cli.run_train``:
``run_train`` only reads files, adds root-logger handlers on every call, writes
checkpoint and results folders, picks float64 unless told otherwise, and rebuilds a
model from a foundation's config when fine-tuning (dropping ``embedding_specs``), so a
warm start of our own charge-embedded model would go through its checkpoint machinery.
Here the member is built with ``ScaleShiftMACE(..., heads=..., embedding_specs=...,
use_embedding_readout=True)`` from mace's own data path (``config_from_atoms`` →
``AtomicData.from_config``), trained by a short Adam loop (energy-per-atom + force
squared errors, heads balanced), warm-started by loading the previous generation's
weights, with bootstrap resampling and a hash-based hold-out, in float32 on one thread,
with no side effects but the model file. The file is ``torch.save`` of the whole model,
as mace writes it, so ``mace.calculators.MACECalculator(model_paths=..., head="high",
info_keys={"total_charge": "total_charge", "total_spin": "total_spin"})`` loads it
without this package; our metadata rides along as a plain dict attribute
(``model.activedefect``).

Defaults (:class:`ModelConfig`) are the small CPU model that trains in seconds per epoch
on 10-60-atom cells: 32 channels, max_L 0 (invariant messages), max_ell 2, correlation 2,
2 interactions, r_max 5 Å, MLP 16x0e, float32 (measured: ~13 configurations x epochs
per second per member on 63-atom cells, one thread; see benchmarks/bench_committee.py).
float32 carries total energies to ~1e-7 relative: ~0.04 meV for a 400 eV xTB cell,
~0.5 meV for a 5000 eV one.

Heads: per-head E0s are a least-squares fit of that head's reference energies on element
counts (xTB and DFT references differ by tens to hundreds of eV); per-head force scale
is the RMS reference force. A head that has never had data predicts exactly like the
first fitted head (readouts copied); when its first labels arrive in a warm start, it
fine-tunes from that copy. Measured on SiC V_Si cells with GFN1-xTB as ``low`` and
IPEA1-xTB as ``high`` (8 high labels): this route beat both the low head and a
high-only model on held-out IPEA1 forces, whereas a fresh model trained on both heads
at once overfits a sparse high head (its high forces were worse than the low head's).
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import mace  # noqa: F401  (import before e3nn: mace sets torch load flags)
import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers as ATOMIC_NUMBERS
from e3nn import o3
from mace import data as mace_data
from mace import modules
from mace.tools import torch_geometric
from mace.tools.torch_tools import default_dtype
from mace.tools.utils import AtomicNumberTable

from activedefect.geometry import CHARGE_KEY, SPIN_KEY, content_hash

log = logging.getLogger(__name__)

#: ``atoms.info`` key of the reference (oracle) energy in eV, as MACE's extxyz files name it.
REF_ENERGY_KEY = "REF_energy"
#: ``atoms.arrays`` key of the reference forces in eV/Å.
REF_FORCES_KEY = "REF_forces"
#: Optional per-frame loss weight (``atoms.info``; default 1), on top of head balancing:
#: lets a campaign fit the frames near each minimum more tightly than the rest.
LOSS_WEIGHT_KEY = "loss_weight"
#: Name of the metadata attribute stored on saved models.
META_ATTR = "activedefect"
META_FORMAT = 1


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

    The three are off by default (measured on the paper's case, docs/benchmarks.md; not
    yet inside the loop). With ``sparse_head_ratio``, a fresh model whose heads differ in
    size (a head with data but fewer than ``1 / sparse_head_ratio`` of the largest head's
    frames: ``high`` beside dense ``low``) trains in two stages: the dense heads alone for
    ``1 - sparse_epochs_fraction`` of the epochs, then every head, the sparse ones starting from a copy of a dense head's
    readout (their own E0s), at ``lr * warm_lr_factor``. Trained together from scratch, a
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


# ----------------------------------------------------------------------------- data


def split_holdout(frames: Sequence[Atoms], valid_fraction: float) -> tuple[list[Atoms], list[Atoms]]:
    """Split frames into (train, valid) by their content hash, not by a seed.

    A frame is held out when the first 48 bits of its :func:`content_hash` (geometry,
    charge, multiplicity) fall below ``valid_fraction``: every member and every
    generation holds out the same frames, a frame never moves between the sets as data
    grow, and the same geometry labelled by two fidelities lands on the same side.
    Callers evaluate the committee on ``split_holdout(...)[1]`` for honest held-out
    errors. Never returns an empty train set for a non-empty input: if every frame
    would be held out, none is.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1); got {valid_fraction}")
    train: list[Atoms] = []
    valid: list[Atoms] = []
    for atoms in frames:
        u = int(content_hash(atoms)[:12], 16) / float(16**12)
        (valid if u < valid_fraction else train).append(atoms)
    if not train:
        return list(frames), []
    return train, valid


def embedding_range(spec: Mapping[str, Any]) -> tuple[int, int]:
    """Lowest and highest value a categorical embedding (:meth:`ModelConfig.embedding_specs`)
    can index: charges, or multiplicities 2S+1."""
    lo = -int(spec.get("offset", 0))
    return lo, lo + int(spec["num_classes"]) - 1


def _charge_and_spin(atoms: Atoms, config_specs: Mapping[str, Mapping[str, Any]], where: str) -> None:
    """Raise unless ``atoms.info`` holds every embedded quantity (charge; multiplicity
    when the model embeds it) as an integer the embedding can index."""
    for key, spec in config_specs.items():
        if key not in atoms.info:
            what = "total charge" if key == CHARGE_KEY else "spin multiplicity 2S+1"
            raise KeyError(
                f"{where}: atoms.info has no {key!r}; set atoms.info[{key!r}] to the {what} "
                "(the model never assumes a neutral singlet)"
            )
        value = atoms.info[key]
        if float(value) != int(value):
            raise ValueError(f"{where}: atoms.info[{key!r}] = {value!r} is not an integer")
        lo, hi = embedding_range(spec)
        if not lo <= int(value) <= hi:
            raise ValueError(
                f"{where}: atoms.info[{key!r}] = {int(value)} is outside the model's embedding range "
                f"{lo}..{hi}; the charges (and margin) are fixed at generation 0 in ModelConfig"
            )


def _check_elements(atoms: Atoms, zs: Sequence[int], where: str) -> None:
    missing = sorted(set(int(z) for z in atoms.numbers) - set(int(z) for z in zs))
    if missing:
        raise ValueError(
            f"{where}: atomic numbers {missing} are not in the model's elements (Z = {list(zs)}); "
            "add them to ModelConfig.elements at generation 0"
        )


def atoms_to_graphs(
    atoms_list: Sequence[Atoms],
    *,
    head: str,
    heads: Sequence[str],
    zs: Sequence[int],
    r_max: float,
    embedding_specs: Mapping[str, Mapping[str, Any]],
    dtype: str,
    with_labels: bool,
) -> list[mace_data.AtomicData]:
    """mace graphs for ``atoms_list`` on ``head``, after checking what mace would
    silently replace: an unknown head (mace: the last head), a missing charge (mace: 0),
    a charge outside the embedding (mace: IndexError or a wrong row), unknown elements."""
    if head not in heads:
        raise ValueError(f"unknown head {head!r}; the model has heads {list(heads)}")
    info_keys = {name: name for name in embedding_specs}
    arrays_keys = {}
    if with_labels:
        info_keys["energy"] = REF_ENERGY_KEY
        arrays_keys["forces"] = REF_FORCES_KEY
    keyspec = mace_data.KeySpecification(info_keys=info_keys, arrays_keys=arrays_keys)
    z_table = AtomicNumberTable([int(z) for z in zs])
    graphs = []
    with default_dtype(dtype):
        for i, atoms in enumerate(atoms_list):
            where = f"structure {i} ({atoms.get_chemical_formula()}, head {head!r})"
            _check_elements(atoms, zs, where)
            _charge_and_spin(atoms, embedding_specs, where)
            if with_labels:
                if REF_ENERGY_KEY not in atoms.info or REF_FORCES_KEY not in atoms.arrays:
                    raise KeyError(
                        f"{where}: training frames need atoms.info[{REF_ENERGY_KEY!r}] (eV) and "
                        f"atoms.arrays[{REF_FORCES_KEY!r}] (eV/Å)"
                    )
            config = mace_data.config_from_atoms(atoms, key_specification=keyspec, head_name=head)
            graphs.append(mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=r_max, heads=list(heads)))
    return graphs


# ---------------------------------------------------------------------------- model


def fit_e0s(frames: Sequence[Atoms], zs: Sequence[int]) -> np.ndarray:
    """Per-element reference energies (eV) by least squares of E_ref on element counts
    (minimum-norm solution, so one stoichiometry still gives finite E0s)."""
    counts = np.array([[np.count_nonzero(a.numbers == z) for z in zs] for a in frames], dtype=float)
    energies = np.array([float(a.info[REF_ENERGY_KEY]) for a in frames])
    e0s, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return e0s


def _hot_force_factor(atoms: Atoms, hot_force_eV_A: float | None) -> float:
    """``1 / (1 + (F_rms / hot_force_eV_A)^2)`` of a labelled frame (1 when off)."""
    if not hot_force_eV_A:
        return 1.0
    rms = float(np.sqrt(np.mean(np.square(atoms.arrays[REF_FORCES_KEY]))))
    return 1.0 / (1.0 + (rms / hot_force_eV_A) ** 2)


def _rms_forces(frames: Sequence[Atoms]) -> float:
    forces = np.concatenate([np.asarray(a.arrays[REF_FORCES_KEY]).ravel() for a in frames])
    rms = float(np.sqrt(np.mean(forces**2)))
    return rms if rms > 1e-6 else 1.0


def _avg_num_neighbors(graphs: Sequence[mace_data.AtomicData]) -> float:
    counts = [torch.bincount(g.edge_index[1], minlength=g.num_nodes).float() for g in graphs]
    return float(torch.cat(counts).mean()) if counts else 1.0


def build_model(
    config: ModelConfig,
    e0s: np.ndarray,
    scales: Sequence[float],
    avg_num_neighbors: float,
) -> modules.ScaleShiftMACE:
    """A fresh ScaleShiftMACE for ``config``; ``e0s`` is (n_heads, n_elements) in eV,
    ``scales`` the per-head force scale (RMS force, eV/Å), shift 0 (mace's default)."""
    hidden_irreps = o3.Irreps(
        "+".join(f"{config.num_channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(config.max_L + 1))
    )
    with default_dtype(config.dtype):
        model = modules.ScaleShiftMACE(
            r_max=config.r_max,
            num_bessel=config.num_radial_basis,
            num_polynomial_cutoff=config.num_cutoff_basis,
            max_ell=config.max_ell,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=config.num_interactions,
            num_elements=len(config.atomic_numbers),
            hidden_irreps=hidden_irreps,
            MLP_irreps=o3.Irreps(config.MLP_irreps),
            atomic_energies=np.asarray(e0s, dtype=float),
            avg_num_neighbors=avg_num_neighbors,
            atomic_numbers=config.atomic_numbers,
            correlation=config.correlation,
            gate=torch.nn.functional.silu,
            radial_MLP=list(config.radial_MLP),
            heads=list(config.heads),
            embedding_specs=config.embedding_specs(),
            use_embedding_readout=True,
            atomic_inter_scale=[float(s) for s in scales],
            atomic_inter_shift=[0.0] * len(config.heads),
        )
    return model


def resolve_device(device: str) -> str:
    """``"auto"``: the GPU where torch sees one (a lent GPU machine, a GPU worker of the
    cluster), else the CPU; any other value (``"cpu"``, ``"cuda:1"``) as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(path: str | Path, device: str = "auto") -> torch.nn.Module:
    """Load a saved member (a whole pickled mace model, as mace itself saves them)."""
    return torch.load(path, map_location=resolve_device(device), weights_only=False)


def model_meta(model: torch.nn.Module) -> dict[str, Any]:
    """The metadata dict ``train_member`` stores on a model (empty for foreign models)."""
    return dict(getattr(model, META_ATTR, {}) or {})


def save_model_atomic(model: torch.nn.Module, out_path: str | Path) -> None:
    """``torch.save`` to a temporary file in the target folder, then ``os.replace``: a
    reader (or a resumed campaign) sees the old file, the new file or none, never half."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        torch.save(model, tmp)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ------------------------------------------------------------------------- training


def undo_worker_malloc_trim() -> bool:
    """Undo the malloc setting Dask gives its worker processes, which halves MACE speed.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; setting it also
    pins glibc's mmap threshold at 128 KiB, so every large tensor is a fresh mmap with
    page faults. Measured here: one-thread training of 30 x 63-atom cells for 2 epochs
    took 21.8 s with the variable and 10.3 s without. If the variable is set, raise both
    thresholds again with ``mallopt`` (trim 256 MiB, mmap 32 MiB); glibc only, else a
    no-op. Returns whether it changed anything.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_trim_threshold, 1 << 28)) and bool(libc.mallopt(m_mmap_threshold, 1 << 25))



def _loss_terms(
    model: torch.nn.Module, batch: Any, weights: torch.Tensor, settings: TrainSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, per-graph squared energy-per-atom error, per-atom squared force error)."""
    out = model(batch.to_dict(), training=True, compute_force=True)
    n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
    e_err = torch.square((out["energy"] - batch.energy) / n_atoms)
    f_err = torch.square(out["forces"] - batch.forces).mean(dim=-1)
    w_atoms = weights[batch.batch]
    loss = settings.energy_weight * (weights * e_err).mean() + settings.forces_weight * (w_atoms * f_err).mean()
    return loss, e_err.detach(), f_err.detach()


def _rmse_by_head(
    model: torch.nn.Module, graphs: Sequence[Any], head_names: Sequence[str], device: str, batch_size: int = 32
) -> dict[str, dict[str, float]]:
    """Energy (meV/atom) and force (eV/Å, per component) RMSE per head over ``graphs``."""
    if not graphs:
        return {}
    e_sq: dict[str, list[float]] = {}
    f_sq: dict[str, list[float]] = {}
    for start in range(0, len(graphs), batch_size):
        batch = torch_geometric.Batch.from_data_list(list(graphs[start : start + batch_size])).to(device)
        out = model(batch.to_dict(), training=False, compute_force=True)
        n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
        e = ((out["energy"].detach() - batch.energy) / n_atoms).cpu().numpy()
        f = torch.square(out["forces"].detach() - batch.forces).mean(dim=-1).cpu().numpy()
        heads = batch.head.cpu().numpy()
        atom_heads = heads[batch.batch.cpu().numpy()]
        for h in np.unique(heads):
            name = head_names[int(h)]
            e_sq.setdefault(name, []).extend((e[heads == h] ** 2).tolist())
            f_sq.setdefault(name, []).extend(f[atom_heads == h].tolist())
    return {
        name: {
            "energy_meV_per_atom": 1000.0 * float(np.sqrt(np.mean(e_sq[name]))),
            "forces_eV_A": float(np.sqrt(np.mean(f_sq[name]))),
            "n": len(e_sq[name]),
        }
        for name in e_sq
    }


def _check_compatible(init_meta: Mapping[str, Any], config: ModelConfig, init_from: Path) -> None:
    if not init_meta:
        raise ValueError(f"{init_from} was not written by train_member (no {META_ATTR!r} metadata); cannot warm start")
    old = ModelConfig.from_dict(init_meta["config"])
    if old != config:
        diff = {k: (v, getattr(config, k)) for k, v in old.as_dict().items() if v != config.as_dict()[k]}
        raise ValueError(
            f"cannot warm start from {init_from}: its ModelConfig differs in {diff} (old, new); "
            "heads, charges and architecture are fixed at generation 0"
        )


def train_member(
    data_by_head: Mapping[str, Sequence[Atoms]],
    config: ModelConfig,
    seed: int,
    epochs: int,
    out_path: str | Path,
    init_from: str | Path | None = None,
    bootstrap: bool = False,
    valid_fraction: float = 0.0,
    settings: TrainSettings | None = None,
) -> TrainReport:
    """Train one committee member and write it atomically to ``out_path``.

    ``data_by_head`` maps head name → labelled frames (``info[REF_energy]``, ``arrays[REF_forces]``,
    ``info[total_charge]``, and ``info[total_spin]`` when the config embeds spin). A head
    may be empty or absent. One that has never had data (``high`` at generation 0) gets
    a copy of the first fitted head's E0s, scale and readouts, so it predicts exactly
    like that fidelity until it has labels of its own; its E0s and scale are fitted the
    first round it has data (also in a warm start). One that had data before keeps its
    own readout. ``valid_fraction`` > 0 holds frames out by
    :func:`split_holdout` (content hash, the same for every member and generation) and
    reports their RMSE; the default 0 trains on everything, for callers (the campaign)
    that split once themselves and evaluate the committee on the held-out part; ``bootstrap`` resamples the training part with
    replacement using ``seed``. ``init_from`` (the previous generation's member) gives a
    warm start from its weights and E0s at ``lr * warm_lr_factor``.

    Pure and self-contained so it can run as a Dask task in another process; sets
    torch to ``settings.num_threads`` threads for its duration. If ``out_path`` exists it
    is not retrained: the report saved with it comes back with ``reused=True``.
    """
    settings = settings or TrainSettings()
    out_path = Path(out_path)
    if out_path.exists():
        meta = model_meta(load_model(out_path, "cpu"))
        if meta.get("config") is not None and ModelConfig.from_dict(meta["config"]) != config:
            raise ValueError(
                f"{out_path} exists but was trained with a different ModelConfig; remove it or write elsewhere"
            )
        report = TrainReport.from_dict(meta["report"]) if "report" in meta else TrainReport(
            seed=seed, epochs=0, start="unknown", out_path=str(out_path)
        )
        report.reused = True
        log.info("member %s exists; not retrained", out_path)
        return report
    unknown = set(data_by_head) - set(config.heads)
    if unknown:
        raise ValueError(f"training data has heads {sorted(unknown)} that the model lacks; heads: {list(config.heads)}")
    if not any(len(v) for v in data_by_head.values()):
        raise ValueError("train_member got no training frames in any head")

    t0 = time.perf_counter()
    undo_worker_malloc_trim()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(settings.num_threads)
    try:
        return _train(data_by_head, config, seed, epochs, out_path, init_from, bootstrap, valid_fraction, settings, t0)
    finally:
        torch.set_num_threads(threads_before)


def _train(
    data: Mapping[str, Sequence[Atoms]],
    config: ModelConfig,
    seed: int,
    epochs: int,
    out_path: Path,
    init_from: str | Path | None,
    bootstrap: bool,
    valid_fraction: float,
    settings: TrainSettings,
    t0: float,
) -> TrainReport:
    settings = replace(settings, device=resolve_device(settings.device))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    zs = config.atomic_numbers
    specs = config.embedding_specs()
    train_frames: dict[str, list[Atoms]] = {}
    valid_frames: dict[str, list[Atoms]] = {}
    for head in config.heads:
        frames = list(data.get(head, []))
        tr, va = split_holdout(frames, valid_fraction)
        if bootstrap and tr:
            tr = [tr[i] for i in rng.integers(0, len(tr), size=len(tr))]
        train_frames[head], valid_frames[head] = tr, va

    def graphs_of(frames_by_head: Mapping[str, list[Atoms]]) -> list[Any]:
        out: list[Any] = []
        for head, frames in frames_by_head.items():
            out += atoms_to_graphs(
                frames, head=head, heads=config.heads, zs=zs, r_max=config.r_max,
                embedding_specs=specs, dtype=config.dtype, with_labels=True,
            )
        return out

    train_graphs = graphs_of(train_frames)
    frame_weights = [float(a.info.get(LOSS_WEIGHT_KEY, 1.0)) * _hot_force_factor(a, settings.hot_force_eV_A)
                     for frames in train_frames.values() for a in frames]
    valid_graphs = graphs_of(valid_frames)
    heads_with_data = [h for h in config.heads if train_frames[h]]

    init_meta: dict[str, Any] = {}
    if init_from is not None:
        init_from = Path(init_from)
        model = load_model(init_from, settings.device)
        init_meta = model_meta(model)
        _check_compatible(init_meta, config, init_from)
        fitted = list(init_meta.get("fitted_heads", []))
        start, lr0 = "warm", settings.lr * settings.warm_lr_factor
    else:
        fitted = []
        e0s = np.zeros((len(config.heads), len(zs)))
        model = build_model(config, e0s, [1.0] * len(config.heads), _avg_num_neighbors(train_graphs))
        start, lr0 = "fresh", settings.lr
    model.to(settings.device)
    _set_head_references(model, config, train_frames, fitted, fresh=init_from is None)
    fitted = sorted(set(fitted) | set(heads_with_data), key=config.heads.index)
    log.info(
        "training member %s: %s start%s, seed %d, %d epochs, train frames %s",
        out_path, start, f" from {init_from}" if init_from else "", seed, epochs,
        {h: len(v) for h, v in train_frames.items()},
    )

    # each head with data carries the same total weight (frame weights shift it between
    # the frames of a head, not between heads); mean weight 1
    head_totals = {h: 0.0 for h in heads_with_data}
    for g, frame_weight in zip(train_graphs, frame_weights):
        head_totals[config.heads[int(g.head)]] += frame_weight
    total = sum(head_totals.values())
    for g, frame_weight in zip(train_graphs, frame_weights):
        head_total = head_totals[config.heads[int(g.head)]]
        share = total / (len(heads_with_data) * head_total) if settings.balance_heads else 1.0
        g.weight = torch.tensor(frame_weight * share * len(train_graphs) / total, dtype=g.positions.dtype)

    initial = _rmse_by_head(model, train_graphs, config.heads, settings.device)
    sparse = _sparse_heads(train_frames, settings) if init_from is None else []
    if sparse:  # dense heads first, the sparse ones then start from their readouts
        dense_graphs = [g for g in train_graphs if config.heads[int(g.head)] not in sparse]
        dense_epochs = max(1, round(epochs * (1 - settings.sparse_epochs_fraction)))
        history = optimise(model, dense_graphs, dense_epochs, lr0, settings, seed)
        source = config.heads.index(next(h for h in heads_with_data if h not in sparse))
        e0 = model.atomic_energies_fn.atomic_energies
        for index in (config.heads.index(head) for head in sparse):
            own_e0 = e0[index].clone()  # fitted to the head's own labels (_set_head_references)
            copy_head_readouts(model, source, index)
            with torch.no_grad():
                e0[index] = own_e0
        history += optimise(model, train_graphs, epochs - dense_epochs, lr0 * settings.warm_lr_factor, settings, seed)
    else:
        history = optimise(model, train_graphs, epochs, lr0, settings, seed)
    model.eval()
    for p in model.parameters():
        p.grad = None
    for head in config.heads:
        if head not in fitted:
            copy_head_readouts(model, config.heads.index(fitted[0]), config.heads.index(head))

    report = TrainReport(
        seed=seed,
        epochs=epochs,
        start=start,
        out_path=str(out_path),
        init_from=str(init_from) if init_from is not None else None,
        bootstrap=bootstrap,
        n_train={h: len(v) for h, v in train_frames.items()},
        n_valid={h: len(v) for h, v in valid_frames.items()},
        final_loss=history[-1] if history else None,
        loss_history=history,
        initial_train_rmse=initial,
        train_rmse=_rmse_by_head(model, train_graphs, config.heads, settings.device),
        valid_rmse=_rmse_by_head(model, valid_graphs, config.heads, settings.device),
        fitted_heads=fitted,
    )
    report.wall_s = time.perf_counter() - t0
    model.to("cpu")
    setattr(model, META_ATTR, {"format": META_FORMAT, "config": config.as_dict(), "fitted_heads": fitted, "report": report.as_dict()})
    save_model_atomic(model, out_path)
    log.info("member %s written (%s start, %.1f s, train RMSE %s)", out_path, start, report.wall_s, report.train_rmse)
    return report


def _sparse_heads(train_frames: Mapping[str, Sequence[Atoms]], settings: TrainSettings) -> list[str]:
    """Heads with data but fewer than ``1 / sparse_head_ratio`` of the largest head's frames."""
    sizes = {head: len(frames) for head, frames in train_frames.items() if frames}
    if not settings.sparse_head_ratio or len(sizes) < 2:
        return []
    return [head for head, n in sizes.items() if n * settings.sparse_head_ratio < max(sizes.values())]


def optimise(model: torch.nn.Module, graphs: Sequence[Any], epochs: int, lr0: float, settings: TrainSettings,
             seed: int) -> list[float]:
    """``epochs`` of Adam (amsgrad) over ``graphs`` (each with its ``weight``), the rate
    cosine-decayed from ``lr0`` to ``lr0 * lr_final_factor``; with ``ema_decay`` the model
    ends holding the moving average. Returns the mean loss of every epoch."""
    if epochs < 1 or not graphs:
        return []
    optimizer = torch.optim.Adam(model.parameters(), lr=lr0, amsgrad=True, weight_decay=settings.weight_decay)
    n_batches = max(1, math.ceil(len(graphs) / settings.batch_size))
    total_steps = max(1, epochs * n_batches)
    final_factor = settings.lr_final_factor
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    loader = torch_geometric.DataLoader(
        graphs, batch_size=settings.batch_size, shuffle=True, drop_last=False,
        generator=torch.Generator().manual_seed(seed),
    )
    history: list[float] = []
    ema = [p.detach().clone() for p in model.parameters()] if settings.ema_decay else None
    n_updates = 0
    model.train()
    for _ in range(epochs):
        total, count = 0.0, 0
        for batch in loader:
            batch = batch.to(settings.device)
            optimizer.zero_grad(set_to_none=True)
            loss, _, _ = _loss_terms(model, batch, batch.weight, settings)
            loss.backward()
            if settings.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            if ema is not None:  # decay warms up (TensorFlow's num_updates rule): short runs still move
                n_updates += 1
                decay = min(settings.ema_decay, (1 + n_updates) / (10 + n_updates))
                with torch.no_grad():
                    for average, p in zip(ema, model.parameters()):
                        average.lerp_(p.detach(), 1.0 - decay)
            total += float(loss.detach()) * batch.num_graphs
            count += batch.num_graphs
        history.append(total / max(count, 1))
    if ema is not None:
        with torch.no_grad():
            for average, p in zip(ema, model.parameters()):
                p.copy_(average)
    return history


def copy_head_readouts(model: torch.nn.Module, src: int, dst: int) -> None:
    """Make head ``dst`` predict exactly what head ``src`` predicts: copy E0s, scale,
    shift and the head's slice of every readout (linear, non-linear and embedding).

    Used for heads that have never had data (``high`` at generation 0), so that they
    behave like the fidelity that has data instead of like random readouts. Relies on
    mace's layout: each readout is an e3nn ``Linear`` to ``n_heads x 0e`` (weights
    ``(mul_in, n_heads)``), and the non-linear readout's hidden channels are
    ``n_heads`` contiguous blocks masked per head.
    """
    n_heads = len(model.heads)
    with torch.no_grad():
        model.atomic_energies_fn.atomic_energies[dst] = model.atomic_energies_fn.atomic_energies[src]
        model.scale_shift.scale[dst] = model.scale_shift.scale[src]
        model.scale_shift.shift[dst] = model.scale_shift.shift[src]
        blocks = list(model.readouts) + ([model.embedding_readout] if hasattr(model, "embedding_readout") else [])
        for block in blocks:
            if hasattr(block, "linear_1"):
                hidden = _linear_weight(block.linear_1)  # (mul_in, n_heads * k)
                k = hidden.shape[1] // n_heads
                hidden[:, dst * k : (dst + 1) * k] = hidden[:, src * k : (src + 1) * k]
                out = _linear_weight(block.linear_2)  # (n_heads * k, n_heads)
                out[dst * k : (dst + 1) * k, dst] = out[src * k : (src + 1) * k, src]
            else:
                w = _linear_weight(block.linear)  # (mul_in, n_heads)
                w[:, dst] = w[:, src]


def _linear_weight(linear: torch.nn.Module) -> torch.Tensor:
    """The (mul_in, mul_out) weight view of a one-path, bias-free e3nn Linear."""
    instructions = getattr(linear, "instructions", None)
    if not instructions or len(instructions) != 1 or getattr(linear, "bias", torch.empty(0)).numel():
        raise NotImplementedError(f"unexpected readout layout {linear}; cannot copy a head's readout")
    return linear.weight.view(instructions[0].path_shape)


def _set_head_references(
    model: torch.nn.Module,
    config: ModelConfig,
    train_frames: Mapping[str, list[Atoms]],
    fitted: Sequence[str],
    fresh: bool,
) -> None:
    """Fit E0s for heads that have data and were not fitted before (and, in a fresh
    model, their force scale: RMS force); heads without data borrow both from the first
    head that has them. A warm start never changes a scale: a head getting its first
    data carries the readout and scale copied from a fitted head, which match."""
    zs = config.atomic_numbers
    e0 = model.atomic_energies_fn.atomic_energies
    scale = model.scale_shift.scale
    with torch.no_grad():
        for i, head in enumerate(config.heads):
            if head not in fitted and train_frames[head]:
                e0[i] = torch.as_tensor(fit_e0s(train_frames[head], zs), dtype=e0.dtype)
                if not fresh:
                    continue  # readouts were copied with their scale: keep it, or forces jump
                scale[i] = _rms_forces(train_frames[head])
        known = [i for i, h in enumerate(config.heads) if h in fitted or train_frames[h]]
        for i, head in enumerate(config.heads):
            if i not in known:
                e0[i] = e0[known[0]]
                scale[i] = scale[known[0]]
