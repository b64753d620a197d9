"""Oracle relaxation steps on disk as they are computed, so a killed run keeps them.

An oracle relaxation (the confirm step, a baseline, a short policy relaxation) reaches
the store only when it ends: workers return plain data and only the driver writes the
store. With DFT at minutes per step, a run killed mid-relaxation used to lose every step
of it. Each computed step is therefore appended as one JSON line to the relaxation's
journal in the campaign directory (``journal/<task key>.jsonl``); the same relaxation
run again — by a resumed driver, or by Dask on another worker after one died — reads it
first and replays those steps instead of paying for them again. The driver deletes a
journal once its relaxation is stored. JSON keeps positions to the last bit, so a
replayed geometry has the same content hash as the computed one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from activedefect.labels import LabelResult

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def journal_path(directory: str | Path, task_key: str) -> Path:
    """The journal of the oracle relaxation run as Dask task ``task_key``."""
    return Path(directory) / f"{_UNSAFE.sub('_', task_key)}.jsonl"


def append(path: str | Path, frame: Atoms, label: LabelResult) -> None:
    """Write one computed step and push it to disk before the next one starts."""
    record = {
        "numbers": frame.numbers.tolist(), "positions": frame.positions.tolist(),
        "cell": frame.cell.array.tolist(), "pbc": frame.pbc.tolist(), "info": _plain(frame.info),
        "status": label.status, "settings_hash": label.settings_hash, "energy_eV": label.energy_eV,
        "forces_eV_A": None if label.forces_eV_A is None else np.asarray(label.forces_eV_A).tolist(),
        "stress_eV_A3": None if label.stress_eV_A3 is None else np.asarray(label.stress_eV_A3).tolist(),
        "reason": label.reason, "metadata": _plain(label.metadata),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def load(path: str | Path) -> list[tuple[Atoms, LabelResult]]:
    """The whole steps of a journal, oldest first (none when it does not exist). A line
    cut by a kill is dropped from the file too, so the next append starts a clean line."""
    path = Path(path)
    if not path.exists():
        return []
    steps, intact = [], 0
    with open(path, "rb") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n"):
                break
            steps.append(_step(record))
            intact += len(line)
    if intact < path.stat().st_size:
        os.truncate(path, intact)
    return steps


def _step(record: dict[str, Any]) -> tuple[Atoms, LabelResult]:
    frame = Atoms(numbers=record["numbers"], positions=record["positions"], cell=record["cell"], pbc=record["pbc"])
    frame.info.update(record["info"])
    optional = {k: np.asarray(record[k]) for k in ("forces_eV_A", "stress_eV_A3") if record[k] is not None}
    label = LabelResult(status=record["status"], settings_hash=record["settings_hash"], energy_eV=record["energy_eV"],
                        reason=record["reason"], metadata=record["metadata"], **optional)
    return frame, label


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with numpy scalars and arrays as JSON types."""
    return json.loads(json.dumps(data, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
