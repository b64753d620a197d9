"""The optimiser loop of one member and the errors a training reports: Adam (amsgrad)
over frame-weighted squared errors of energy per atom and forces, the rate cosine-decayed,
optionally ending on the moving average of the weights; per-head RMSEs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from mace.tools import torch_geometric

from activedefect.model.config import TrainSettings


def optimise(model: torch.nn.Module, graphs: Sequence[Any], epochs: int, lr0: float, settings: TrainSettings,
             seed: int) -> list[float]:
    """``epochs`` of Adam (amsgrad) over ``graphs`` (each with its ``weight``, or drawn in
    proportion to it with ``sample_by_weight``), the rate
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
    generator = torch.Generator().manual_seed(seed)
    weigh_loss = not settings.sample_by_weight  # drawn in proportion to its weight, a frame then weighs 1
    if settings.sample_by_weight:
        weights = torch.stack([g.weight for g in graphs]).double()
        sampler = torch.utils.data.WeightedRandomSampler(weights, len(graphs), replacement=True, generator=generator)
        loader = torch_geometric.DataLoader(graphs, batch_size=settings.batch_size, sampler=sampler)
    else:
        loader = torch_geometric.DataLoader(graphs, batch_size=settings.batch_size, shuffle=True, generator=generator)
    history: list[float] = []
    ema = [p.detach().clone() for p in model.parameters()] if settings.ema_decay else None
    n_updates = 0
    model.train()
    for _ in range(epochs):
        total, count = 0.0, 0
        for batch in loader:
            batch = batch.to(settings.device)
            optimizer.zero_grad(set_to_none=True)
            loss, _, _ = _loss_terms(model, batch, batch.weight if weigh_loss else torch.ones_like(batch.weight), settings)
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


def rmse_by_head(
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
