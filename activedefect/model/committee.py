"""MACE committee: train members (re-exported from :mod:`activedefect.model.member_training`),
predict the committee mean and spread in one batched call per member, descriptors for
farthest-point sampling, an ASE calculator, and held-out evaluation.

Charge and multiplicity always come from ``atoms.info["total_charge"]`` /
``["total_spin"]``, the keys training reads. Where mace would quietly substitute
(a missing charge becomes 0, an unknown head becomes the last head), this module
raises, naming the structure and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mace  # noqa: F401  (import before e3nn: mace sets torch load flags)
import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from e3nn import o3
from mace.modules.utils import extract_invariant
from mace.tools import torch_geometric
from scipy import stats

from activedefect.geometry import CHARGE_KEY, SPIN_KEY
from activedefect.model.config import ModelConfig, TrainReport, TrainSettings
from activedefect.model.graphs import (
    REF_ENERGY_KEY,
    REF_FORCES_KEY,
    atoms_to_graphs,
    embedding_range,
    split_holdout,
)
from activedefect.model.mace_model import load_model, resolve_device
from activedefect.model.member_training import train_member, undo_worker_malloc_trim

__all__ = [
    "Committee",
    "CommitteeCalculator",
    "CommitteePrediction",
    "ModelConfig",
    "REF_ENERGY_KEY",
    "REF_FORCES_KEY",
    "TrainReport",
    "TrainSettings",
    "evaluate",
    "split_holdout",
    "train_member",
]


@dataclass
class CommitteePrediction:
    """Committee mean and spread for one structure.

    ``energy_std_eV`` is the population standard deviation over members;
    ``forces_std_eV_A`` (N,) is per atom ``sqrt(mean_k |F_k - F_mean|^2)``, the spread
    of the force vectors; ``max_force_std_eV_A`` its maximum (DP-GEN's model deviation).
    ``descriptors`` (N, D) are member 0's invariant node features when asked for.
    """

    energy_mean_eV: float
    energy_std_eV: float
    forces_mean_eV_A: np.ndarray
    forces_std_eV_A: np.ndarray
    max_force_std_eV_A: float
    member_energies_eV: np.ndarray
    descriptors: np.ndarray | None = None


class Committee:
    """K MACE models with the same heads, elements, cutoff and charge embedding.

    Prediction builds the graphs once and makes one batched model call per member for
    the whole list (``n_model_calls`` counts them). Threads are the caller's business
    (``torch.set_num_threads``); one thread per process is fastest on small CPUs.
    """

    def __init__(self, models: Sequence[torch.nn.Module], paths: Sequence[Path] | None = None, device: str = "cpu"):
        if not models:
            raise ValueError("a committee needs at least one model")
        self.models = list(models)
        self.paths = [Path(p) for p in paths] if paths is not None else []
        self.device = device
        first = self.models[0]
        self.heads: list[str] = list(getattr(first, "heads", ["Default"]))
        self.zs: list[int] = [int(z) for z in first.atomic_numbers]
        self.r_max = float(first.r_max)
        self.embedding_specs: dict[str, dict[str, Any]] = dict(getattr(first, "embedding_specs", {}) or {})
        self.dtype = "float64" if next(first.parameters()).dtype == torch.float64 else "float32"
        for i, model in enumerate(self.models[1:], start=1):
            mine = (
                list(getattr(model, "heads", ["Default"])),
                [int(z) for z in model.atomic_numbers],
                float(model.r_max),
                dict(getattr(model, "embedding_specs", {}) or {}),
            )
            if mine != (self.heads, self.zs, self.r_max, self.embedding_specs):
                raise ValueError(
                    f"committee member {i} differs from member 0 in heads, elements, r_max or embeddings: "
                    f"{mine} vs {(self.heads, self.zs, self.r_max, self.embedding_specs)}"
                )
        undo_worker_malloc_trim()  # explore tasks predict in Dask workers too
        for model in self.models:
            model.to(device)
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
        self.n_model_calls = 0

    @classmethod
    def load(cls, paths: Sequence[str | Path], device: str = "auto") -> "Committee":
        paths = [Path(p) for p in paths]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"committee member files not found: {missing}")
        device = resolve_device(device)  # the GPU where this process sees one
        return cls([load_model(p, device) for p in paths], paths=paths, device=device)

    @property
    def size(self) -> int:
        return len(self.models)

    def charge_range(self) -> tuple[int, int] | None:
        spec = self.embedding_specs.get(CHARGE_KEY)
        return None if spec is None else embedding_range(spec)

    def _check_head(self, head: str) -> None:
        if head not in self.heads:
            raise ValueError(f"unknown head {head!r}; this committee has heads {self.heads}")

    def _batch(self, atoms_list: Sequence[Atoms], head: str) -> Any:
        graphs = atoms_to_graphs(
            atoms_list, head=head, heads=self.heads, zs=self.zs, r_max=self.r_max,
            embedding_specs=self.embedding_specs, dtype=self.dtype, with_labels=False,
        )
        return torch_geometric.Batch.from_data_list(graphs).to(self.device)

    def _call(self, model: torch.nn.Module, batch: Any, compute_force: bool) -> dict[str, Any]:
        data = batch.to_dict()
        data["positions"] = batch.positions.detach().clone()
        self.n_model_calls += 1
        return model(data, training=False, compute_force=compute_force)

    def _invariants(self, model: torch.nn.Module, node_feats: torch.Tensor) -> np.ndarray:
        irreps_out = o3.Irreps(str(model.products[0].linear.irreps_out))
        l_max = irreps_out.lmax
        num_features = irreps_out.dim // (l_max + 1) ** 2
        inv = extract_invariant(node_feats, num_layers=int(model.num_interactions), num_features=num_features, l_max=l_max)
        return inv.detach().cpu().numpy()

    def predict(
        self, atoms_list: Sequence[Atoms], head: str, descriptors: bool = False
    ) -> list[CommitteePrediction]:
        """Committee mean and spread on ``head`` for every structure, one model call per
        member for the whole list."""
        self._check_head(head)
        if not atoms_list:
            return []
        batch = self._batch(atoms_list, head)
        ptr = batch.ptr.cpu().numpy()
        energies, forces, desc = [], [], None
        for k, model in enumerate(self.models):
            out = self._call(model, batch, compute_force=True)
            energies.append(out["energy"].detach().cpu().double().numpy())
            forces.append(out["forces"].detach().cpu().double().numpy())
            if descriptors and k == 0:
                desc = self._invariants(model, out["node_feats"])
        e = np.stack(energies)  # (K, n_structures)
        f = np.stack(forces)  # (K, n_atoms, 3)
        f_mean = f.mean(axis=0)
        f_std = np.sqrt(((f - f_mean) ** 2).sum(axis=-1).mean(axis=0))
        results = []
        for i in range(len(atoms_list)):
            sl = slice(ptr[i], ptr[i + 1])
            results.append(
                CommitteePrediction(
                    energy_mean_eV=float(e[:, i].mean()),
                    energy_std_eV=float(e[:, i].std()),
                    forces_mean_eV_A=f_mean[sl].copy(),
                    forces_std_eV_A=f_std[sl].copy(),
                    max_force_std_eV_A=float(f_std[sl].max()),
                    member_energies_eV=e[:, i].copy(),
                    descriptors=desc[sl].copy() if desc is not None else None,
                )
            )
        return results

    def descriptors(self, atoms_list: Sequence[Atoms]) -> list[np.ndarray]:
        """Per-atom invariant descriptors (N, D) of committee member 0, one call for the
        list. Member 0 only: feature spaces of differently seeded members are not aligned,
        so averaging them would mix unrelated channels. They depend on the charge (the
        embedding is added before message passing), not on the head."""
        if not atoms_list:
            return []
        batch = self._batch(atoms_list, self.heads[0])
        out = self._call(self.models[0], batch, compute_force=False)
        desc = self._invariants(self.models[0], out["node_feats"])
        ptr = batch.ptr.cpu().numpy()
        return [desc[ptr[i] : ptr[i + 1]].copy() for i in range(len(atoms_list))]


class CommitteeCalculator(Calculator):
    """ASE calculator on the committee mean of one head; the spread lands in
    ``results["energy_std"]``, ``["forces_std"]`` (per atom) and ``["max_force_std"]``.

    Charge and multiplicity come from ``atoms.info``; changing only them triggers a new
    calculation (ASE's own state check looks at positions, numbers, cell and pbc only).
    """

    implemented_properties = ["energy", "forces", "free_energy"]

    def __init__(self, committee: Committee, head: str, **kwargs: Any):
        super().__init__(**kwargs)
        committee._check_head(head)
        self.committee = committee
        self.head = head

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and any(
            self.atoms.info.get(key) != atoms.info.get(key) for key in (CHARGE_KEY, SPIN_KEY)
        ):
            changes.append("info")
        return changes

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        (pred,) = self.committee.predict([self.atoms], self.head)
        self.results = {
            "energy": pred.energy_mean_eV,
            "free_energy": pred.energy_mean_eV,
            "forces": pred.forces_mean_eV_A,
            "energy_std": pred.energy_std_eV,
            "forces_std": pred.forces_std_eV_A,
            "max_force_std": pred.max_force_std_eV_A,
        }


# ------------------------------------------------------------------------ evaluation


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _correlations(std: np.ndarray, err: np.ndarray) -> dict[str, float | None]:
    if len(std) < 3 or np.ptp(std) == 0 or np.ptp(err) == 0:
        return {"spearman": None, "pearson": None}
    return {
        "spearman": _finite(stats.spearmanr(std, err).statistic),
        "pearson": _finite(stats.pearsonr(std, err).statistic),
    }


def _errors(frames: Sequence[Atoms], preds: Sequence[CommitteePrediction]) -> dict[str, float | int]:
    n_atoms = np.array([len(a) for a in frames])
    de = np.array([p.energy_mean_eV - float(a.info[REF_ENERGY_KEY]) for a, p in zip(frames, preds)])
    df = np.concatenate([p.forces_mean_eV_A - np.asarray(a.arrays[REF_FORCES_KEY]) for a, p in zip(frames, preds)])
    return {
        "n": len(frames),
        "energy_rmse_eV": float(np.sqrt(np.mean(de**2))),
        "energy_rmse_meV_per_atom": 1000.0 * float(np.sqrt(np.mean((de / n_atoms) ** 2))),
        "force_rmse_eV_A": float(np.sqrt(np.mean(df**2))),
    }


def evaluate(committee: Committee, atoms_by_head: Mapping[str, Sequence[Atoms]]) -> dict[str, Any]:
    """Held-out errors of the committee mean and calibration of its spread, per head and
    per charge state; JSON-serialisable (charges as string keys, undefined values None).

    Per head: ``energy_rmse_eV`` (per structure), ``energy_rmse_meV_per_atom``,
    ``force_rmse_eV_A`` (per Cartesian component), ``per_charge``, and ``calibration``:
    Spearman and Pearson correlation of the per-atom force spread with the per-atom force
    error norm (and of the energy spread with the absolute energy error), and
    ``force_error_to_spread`` = mean error norm / mean spread (≈1 when the spread is
    calibrated, >1 when the committee is overconfident). Frames need ``REF_energy`` and
    ``REF_forces``; the caller passes frames the members did not train on.
    """
    out: dict[str, Any] = {"committee_size": committee.size, "per_head": {}}
    for head, frames in atoms_by_head.items():
        frames = list(frames)
        committee._check_head(head)
        if not frames:
            continue
        for i, a in enumerate(frames):
            if REF_ENERGY_KEY not in a.info or REF_FORCES_KEY not in a.arrays:
                raise KeyError(f"evaluation frame {i} of head {head!r} lacks info[{REF_ENERGY_KEY!r}] or arrays[{REF_FORCES_KEY!r}]")
        preds = committee.predict(frames, head)
        result: dict[str, Any] = _errors(frames, preds)
        per_charge: dict[str, Any] = {}
        charges = [int(a.info[CHARGE_KEY]) for a in frames]
        for q in sorted(set(charges)):
            idx = [i for i, c in enumerate(charges) if c == q]
            per_charge[str(q)] = _errors([frames[i] for i in idx], [preds[i] for i in idx])
        result["per_charge"] = per_charge
        f_err = np.concatenate(
            [np.linalg.norm(p.forces_mean_eV_A - np.asarray(a.arrays[REF_FORCES_KEY]), axis=1) for a, p in zip(frames, preds)]
        )
        f_std = np.concatenate([p.forces_std_eV_A for p in preds])
        e_err = np.array([abs(p.energy_mean_eV - float(a.info[REF_ENERGY_KEY])) for a, p in zip(frames, preds)])
        e_std = np.array([p.energy_std_eV for p in preds])
        force_corr = _correlations(f_std, f_err)
        energy_corr = _correlations(e_std, e_err)
        result["calibration"] = {
            "force_spread_error_spearman": force_corr["spearman"],
            "force_spread_error_pearson": force_corr["pearson"],
            "energy_spread_error_spearman": energy_corr["spearman"],
            "energy_spread_error_pearson": energy_corr["pearson"],
            "force_error_to_spread": _finite(f_err.mean() / f_std.mean()) if f_std.mean() > 0 else None,
            "mean_force_spread_eV_A": float(f_std.mean()),
            "mean_force_error_eV_A": float(f_err.mean()),
        }
        out["per_head"][head] = result
    return out
