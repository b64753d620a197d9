"""The result of one oracle (DFT/xTB) calculation, as backends return it and the store keeps it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The two levels of theory a campaign labels with (the model's heads, the spec's ``fidelities``).
FIDELITIES = ("low", "high")
OK = "ok"
#: Failure codes a backend may return (``LabelResult.status``).
FAILURE_CODES = (
    "scf_not_converged",
    "crashed",
    "timeout",
    "non_finite",
    "wrong_atom_count",
    "bad_input",
)


def settings_hash(backend: str, settings: dict[str, Any]) -> str:
    """Stable hash of a backend name and its level-of-theory settings (JSON, sorted keys)."""
    text = json.dumps({"backend": backend, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class LabelResult:
    """Energy (eV), forces (eV/Å) and optional stress (eV/Å^3, Voigt order) of one
    calculation, or a failure: ``status`` is ``"ok"`` or one of :data:`FAILURE_CODES`,
    and a failure carries no numbers, only its ``reason``.

    ``metadata`` holds at least ``code``, ``version``, ``wall_s``, ``retries`` and the
    ``settings`` actually used.
    """

    status: str
    settings_hash: str
    energy_eV: float | None = None
    forces_eV_A: np.ndarray | None = None
    stress_eV_A3: np.ndarray | None = None
    reason: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def wall_s(self) -> float:
        return float(self.metadata.get("wall_s", 0.0))

    @classmethod
    def failure(cls, status: str, settings_hash: str, reason: str, **metadata: Any) -> "LabelResult":
        if status not in FAILURE_CODES:
            raise ValueError(f"unknown failure code {status!r}; expected one of {FAILURE_CODES}")
        return cls(status=status, settings_hash=settings_hash, reason=reason, metadata=dict(metadata))
