"""One charge-embedded, multi-fidelity MACE model: its construction, its file, and the
head surgery that makes a head without data predict like a fitted one.

The model is the architecture of arXiv 2603.05238: a ``ScaleShiftMACE`` whose species
embedding is summed with a categorical ``total_charge`` embedding (and optionally a
``total_spin`` one, the multiplicity 2S+1), with ``use_embedding_readout=True`` for the
geometry-independent charge energy, and one readout head per fidelity (``low``,
``high``) with its own E0s and force scale.

The file is ``torch.save`` of the whole model, as mace writes it, so
``mace.calculators.MACECalculator(model_paths=..., head="high",
info_keys={"total_charge": "total_charge", "total_spin": "total_spin"})`` loads it
without this package; our metadata rides along as a plain dict attribute
(``model.activedefect``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mace  # noqa: F401  (import before e3nn: mace sets torch load flags)
import numpy as np
import torch
from e3nn import o3
from mace import modules
from mace.tools.torch_tools import default_dtype

from activedefect.model.config import ModelConfig

#: Name of the metadata attribute stored on saved models.
META_ATTR = "activedefect"
META_FORMAT = 1


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
