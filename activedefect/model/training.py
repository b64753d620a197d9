"""From the spec and the store to what committee members train on: the model
configuration (fixed for the whole campaign so warm starts always match), the optimiser
settings, and the train / held-out split of every label."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from ase import Atoms

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY
from activedefect.labels import LabelResult
from activedefect.model.committee import (
    ModelConfig,
    TrainSettings,
    split_holdout,
    train_member,
)
from activedefect.model.graphs import LOSS_WEIGHT_KEY, REF_ENERGY_KEY, REF_FORCES_KEY
from activedefect.spec import FIDELITIES, CampaignSpec
from activedefect.store.records import ORIGIN_KEY
from activedefect.store.zarr_store import Store


def committee_config(spec: CampaignSpec, seeds: list[dict], elements: list[str]) -> ModelConfig:
    """Elements, charge states and heads of the campaign with the spec's architecture.

    ``seeds`` are the campaign's seed records (``defect``, ``charge``, ``multiplicity``)."""
    model = spec.committee.model
    multiplicities = sorted({int(s["multiplicity"]) for s in seeds}) if model.spin_embedding else None
    return ModelConfig(
        elements=tuple(sorted(set(elements))),
        charges=tuple(sorted({int(s["charge"]) for s in seeds})),
        heads=FIDELITIES,
        multiplicities=tuple(multiplicities) if multiplicities else None,
        num_channels=model.num_channels,
        max_L=model.max_L,
        max_ell=model.max_ell,
        correlation=model.correlation,
        num_interactions=model.num_interactions,
        r_max=model.r_max_A,
        MLP_irreps=model.mlp_irreps,
        embedding_dim=model.charge_embedding_dim,
    )


def train_settings(spec: CampaignSpec) -> TrainSettings:
    committee = spec.committee
    return TrainSettings(lr=committee.learning_rate, batch_size=committee.batch_size,
                         hot_force_eV_A=committee.hot_force_eV_A, ema_decay=committee.ema_decay,
                         sparse_head_ratio=committee.sparse_head_ratio, sample_by_weight=committee.sample_by_weight)


def training_data(
    store: Store, settings_hashes: dict[str, str], valid_fraction: float, minimum_weight: float = 0.0,
    minimum_window_eV: float = 0.1, trajectory_stride: int = 1,
) -> tuple[dict[str, list[Atoms]], dict[str, list[Atoms]]]:
    """Every ok label under the current settings (oracle relaxations thinned to every
    ``trajectory_stride``-th step, :func:`thin_trajectories`), split by content hash into
    (train, held-out) per head; the same frame is held out in every generation. Frames
    near each charge state's lowest label carry extra loss weight (:func:`emphasize_minima`)."""
    train, valid = {}, {}
    for fidelity in FIDELITIES:
        frames = thin_trajectories(store.labelled_atoms(fidelity, settings_hashes[fidelity]), trajectory_stride)
        emphasize_minima(frames, minimum_weight, minimum_window_eV)
        train[fidelity], valid[fidelity] = split_holdout(frames, valid_fraction)
    return train, valid


def thin_trajectories(frames: list[Atoms], stride: int) -> list[Atoms]:
    """Every ``stride``-th step of each oracle relaxation from a seed, a confirm start or a
    frame without a committee trajectory (VASP ``all_steps`` imports too), and the last and
    the lowest-energy step of each such lineage (relaxations from one lineage share its
    origin, so "last" alone could miss the end of a shorter one: its minimum is the lowest);
    every other frame (committee trajectory frames and what the oracle did from them,
    single-point imports) stays.

    Consecutive FIRE steps near a minimum are near-duplicates: training on all of them
    costs time in proportion and adds little (measured on the paper's case,
    docs/benchmarks.md), while the minimum itself is what the ground state needs."""
    if stride <= 1:
        return frames
    last: dict[tuple, int] = {}
    lowest: dict[tuple, int] = {}
    lineage = []
    for i, atoms in enumerate(frames):
        origin = dict(atoms.info.get(ORIGIN_KEY) or {})
        step = origin.pop("step", None) if origin.get("trajectory") is None else None
        key = (str(atoms.info.get(DEFECT_KEY)), int(atoms.info.get(CHARGE_KEY, 0)), tuple(sorted(origin.items())))
        lineage.append((key, step))
        if step is not None:
            last[key] = max(last.get(key, 0), int(step))
            if key not in lowest or atoms.info[REF_ENERGY_KEY] < frames[lowest[key]].info[REF_ENERGY_KEY]:
                lowest[key] = i
    return [a for i, (a, (key, step)) in enumerate(zip(frames, lineage))
            if step is None or int(step) % stride == 0 or int(step) == last[key] or lowest[key] == i]


def labelled_frame(atoms: Atoms, label: LabelResult) -> Atoms:
    """A copy of ``atoms`` carrying an ok oracle label where MACE training reads it."""
    if not label.ok:
        raise ValueError(f"a {label.status} label carries no energy or forces: {label.reason}")
    frame = atoms.copy()
    frame.calc = None
    frame.info[REF_ENERGY_KEY] = float(label.energy_eV)
    frame.arrays[REF_FORCES_KEY] = np.array(label.forces_eV_A)
    return frame


def emphasize_minima(frames: list[Atoms], weight: float, window_eV: float) -> None:
    """Set each frame's loss weight to ``1 + weight * exp(-ΔE / window_eV)``, ΔE being its
    energy above the lowest labelled frame of the same defect and charge state.

    The convergence test asks the committee for forces of a few hundredths of an eV/Å at
    each minimum, far below its error averaged over hot, rattled frames; weighting the
    labels near the minima (which the loop adds there every generation) spends the
    model's accuracy where the ground states are decided."""
    groups: dict[tuple[str, int], list[Atoms]] = {}
    for atoms in frames:
        groups.setdefault((str(atoms.info.get(DEFECT_KEY)), int(atoms.info.get(CHARGE_KEY, 0))), []).append(atoms)
    for members in groups.values():
        energies = np.array([a.info[REF_ENERGY_KEY] for a in members])
        boost = weight * np.exp(-(energies - energies.min()) / window_eV)
        for atoms, extra in zip(members, boost):
            atoms.info[LOSS_WEIGHT_KEY] = 1.0 + float(extra)


def train_member_task(**kwargs: Any) -> dict[str, Any]:
    """The Dask task that trains one member (:func:`~activedefect.model.committee.train_member`)
    with one thread; returns its training report with the wall time."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    report = train_member(**kwargs)
    data = report.as_dict()
    data.setdefault("wall_s", time.perf_counter() - start)
    return data
