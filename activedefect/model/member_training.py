"""Training one committee member: :func:`train_member` (hold-out, bootstrap resampling,
warm start, per-head references, the two-stage schedule of a sparse head) writes one
model file and reports what it did.

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
with no side effects but the model file (its format: :mod:`activedefect.model.mace_model`).

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
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from mace import data as mace_data

from activedefect.model.config import ModelConfig, TrainReport, TrainSettings
from activedefect.model.graphs import (
    LOSS_WEIGHT_KEY,
    REF_ENERGY_KEY,
    REF_FORCES_KEY,
    atoms_to_graphs,
    split_holdout,
)
from activedefect.model.mace_model import (
    META_ATTR,
    META_FORMAT,
    build_model,
    copy_head_readouts,
    load_model,
    model_meta,
    resolve_device,
    save_model_atomic,
)
from activedefect.model.optimiser import optimise, rmse_by_head

log = logging.getLogger(__name__)


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

    initial = rmse_by_head(model, train_graphs, config.heads, settings.device)
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
        train_rmse=rmse_by_head(model, train_graphs, config.heads, settings.device),
        valid_rmse=rmse_by_head(model, valid_graphs, config.heads, settings.device),
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
