"""The label half of the store: appending labels (ok ones deduplicated by frame and
settings hash, failures kept as rows), reading them back as tables, forces and MACE-ready
frames, and the extxyz files MACE trains on."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from ase import Atoms
from ase.stress import full_3x3_to_voigt_6_stress

from activedefect.labels import FAILURE_CODES, OK, LabelResult
from activedefect.store.layout import LABEL_COLUMNS
from activedefect.store.records import LabelIndex, as_int, json_default
from activedefect.store.tables import Table

#: Keys MACE trains on (``--energy_key REF_energy --forces_key REF_forces``).
REF_ENERGY_KEY = "REF_energy"
REF_FORCES_KEY = "REF_forces"
REF_STRESS_KEY = "REF_stress"

_FIDELITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StoreLabels:
    """The label methods of :class:`~activedefect.store.zarr_store.Store`, which holds the
    frames (``_frames``, ``n_frames``, ``get_frames``, ``add_frames``), the root group, the
    label tables by fidelity (``_labels``) and the writer check (``_writable``)."""

    path: Path
    _root: zarr.Group
    _frames: Table
    _labels: dict[str, LabelIndex]

    # ----------------------------------------------------------------- labels
    def fidelities(self) -> list[str]:
        return sorted(self._labels)

    def n_labels(self, fidelity: str) -> int:
        return len(self._labels[fidelity].status) if fidelity in self._labels else 0

    def _fidelity(self, fidelity: str) -> LabelIndex:
        if fidelity not in self._labels:
            raise KeyError(f"no labels at fidelity {fidelity!r}; the store has {self.fidelities()}")
        return self._labels[fidelity]

    def add_labels(self, fidelity: str, items: Sequence[tuple[int, LabelResult]]) -> list[int]:
        """Append (frame index, result) pairs in one batch; return each one's label row.

        An ok result for a (frame, settings hash) that already has an ok label is not
        written again: its existing row is returned. Failures are always appended (one
        row per attempt, NaN energy, no forces)."""
        self._writable()
        if not _FIDELITY_RE.match(fidelity):
            raise ValueError(f"fidelity {fidelity!r}: use letters, digits, '_', '-', '.' (e.g. 'xtb', 'pbe')")
        if fidelity not in self._labels:
            Table.create(self._root["labels"], fidelity, LABEL_COLUMNS, "force_offsets")
            table = Table(self._root["labels"][fidelity], "labels", LABEL_COLUMNS, "force_offsets", True, self.path)
            self._labels[fidelity] = LabelIndex(table)
        labels = self._labels[fidelity]
        start = len(labels.status)
        out: list[int] = []
        new_ok: dict[tuple[int, str], int] = {}
        rows: dict[str, list[Any]] = {c.name: [] for c in LABEL_COLUMNS if not c.per_atom}
        forces: list[np.ndarray] = []
        for k, (frame, result) in enumerate(items):
            where = f"{fidelity} label {k} (frame {frame})"
            frame = as_int(frame, f"{where}: frame")
            if not 0 <= frame < self.n_frames:
                raise IndexError(f"{where}: frame out of range; add the frame first ({self.n_frames} frames)")
            if not isinstance(result.settings_hash, str) or not result.settings_hash:
                raise ValueError(f"{where}: settings_hash must be a non-empty string (labels.settings_hash)")
            key = (frame, result.settings_hash)
            if result.ok:
                energy, f, stress = self._checked_numbers(frame, result, where)
                existing = labels.ok_row.get(key, new_ok.get(key))
                if existing is not None:
                    out.append(existing)
                    continue
                forces.append(f)
                new_ok[key] = start + len(rows["frame"])
            elif result.status in FAILURE_CODES:
                if result.energy_eV is not None or result.forces_eV_A is not None:
                    raise ValueError(f"{where}: a failure ({result.status}) carries no energy or forces")
                energy, stress = math.nan, np.full(6, np.nan)
            else:
                raise ValueError(f"{where}: status {result.status!r} is neither 'ok' nor one of {FAILURE_CODES}")
            out.append(start + len(rows["frame"]))
            rows["frame"].append(frame)
            rows["energy"].append(energy)
            rows["status"].append(result.status)
            rows["settings_hash"].append(result.settings_hash)
            metadata = {**result.metadata, "reason": result.reason}
            rows["metadata"].append(json.dumps(metadata, sort_keys=True, default=json_default))
            rows["stress"].append(stress)
        if not rows["frame"]:
            return out
        arrays = {
            "frame": np.array(rows["frame"], dtype=np.int64),
            "energy": np.array(rows["energy"], dtype=np.float64),
            "stress": np.array(rows["stress"], dtype=np.float64).reshape(-1, 6),
            **{k: np.array(rows[k], dtype=str) for k in ("status", "settings_hash", "metadata")},
        }
        # Force rows per label: an ok label owns its frame's atoms, a failure none.
        counts = np.zeros(len(arrays["frame"]), dtype=np.int64)
        counts[arrays["status"] == OK] = [len(f) for f in forces]
        force_rows = np.concatenate(forces) if forces else np.empty((0, 3))
        labels.table.append(arrays, {"forces": force_rows}, counts)
        labels.extend(arrays)
        return out

    def _checked_numbers(self, frame: int, result: LabelResult, where: str) -> tuple[float, np.ndarray, np.ndarray]:
        n_atoms = int(self._frames.offsets[frame + 1] - self._frames.offsets[frame])
        if result.energy_eV is None or not np.isfinite(result.energy_eV):
            raise ValueError(f"{where}: an ok label needs a finite energy_eV, got {result.energy_eV!r} (use status 'non_finite')")
        forces = np.asarray(result.forces_eV_A, dtype=np.float64) if result.forces_eV_A is not None else None
        if forces is None or forces.shape != (n_atoms, 3) or not np.isfinite(forces).all():
            shape = None if forces is None else forces.shape
            raise ValueError(f"{where}: an ok label needs finite forces_eV_A of shape ({n_atoms}, 3), got {shape}")
        stress = np.full(6, np.nan)
        if result.stress_eV_A3 is not None:
            s = np.asarray(result.stress_eV_A3, dtype=np.float64)
            if s.shape == (3, 3):
                s = full_3x3_to_voigt_6_stress(s)
            if s.shape != (6,) or not np.isfinite(s).all():
                raise ValueError(f"{where}: stress_eV_A3 must be finite, Voigt (6,) or (3, 3), got shape {s.shape}")
            stress = s
        return float(result.energy_eV), forces, stress

    def label_row(self, fidelity: str, frame: int, settings_hash: str) -> int | None:
        """Row of the ok label of (frame, settings hash), or None."""
        labels = self._labels.get(fidelity)
        return None if labels is None else labels.ok_row.get((int(frame), settings_hash))

    def label_energy(self, fidelity: str, frame: int, settings_hash: str) -> float | None:
        """Energy (eV) of the ok label of (frame, settings hash), or None."""
        row = self.label_row(fidelity, frame, settings_hash)
        return None if row is None else float(self._labels[fidelity].energy[row])

    def has_label(self, fidelity: str, frame: int, settings_hash: str) -> bool:
        """True when (frame, settings hash) has an ok label at this fidelity."""
        return self.label_row(fidelity, frame, settings_hash) is not None

    def failed_attempts(self, fidelity: str, frame: int, settings_hash: str) -> int:
        """Number of failed labels of (frame, settings hash): callers cap retries with it."""
        labels = self._labels.get(fidelity)
        return 0 if labels is None else labels.failures[(int(frame), settings_hash)]

    def label_table(self, fidelity: str) -> pd.DataFrame:
        """One row per label (index: label row): frame, energy_eV, status, settings_hash,
        reason, wall_s, metadata (dict); empty for a fidelity without labels yet."""
        labels = self._labels.get(fidelity)
        if labels is None:
            columns = {"frame": "int64", "energy_eV": "float64", "status": object, "settings_hash": object,
                       "reason": object, "wall_s": "float64", "metadata": object}
            table = pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})
            table.index.name = "row"
            return table
        metadata = [json.loads(m) for m in labels.metadata]
        table = pd.DataFrame(
            {
                "frame": labels.frame,
                "energy_eV": labels.energy,
                "status": labels.status,
                "settings_hash": labels.settings_hash,
                "reason": [m.get("reason", "") for m in metadata],
                "wall_s": [float(m.get("wall_s", math.nan)) for m in metadata],
                "metadata": metadata,
            }
        )
        table.index.name = "row"
        return table

    def label_forces(self, fidelity: str, row: int) -> np.ndarray:
        """Forces (eV/Å, (n_atoms, 3)) of an ok label row."""
        labels = self._fidelity(fidelity)
        if not 0 <= row < len(labels.status):
            raise IndexError(f"label row {row} out of range ({len(labels.status)} rows at {fidelity!r})")
        if labels.status[row] != OK:
            raise ValueError(f"label row {row} at {fidelity!r} is a failure ({labels.status[row]}): it has no forces")
        offsets = labels.table.offsets
        return labels.table.read("forces", int(offsets[row]), int(offsets[row + 1]))

    def label_stress(self, fidelity: str, row: int) -> np.ndarray | None:
        """Stress (eV/Å^3, Voigt) of a label row, or None when absent."""
        stress = self._fidelity(fidelity).stress[row]
        return None if np.isnan(stress).any() else stress.copy()

    def labelled_atoms(self, fidelity: str, settings_hash: str | None = None) -> list[Atoms]:
        """Frames with ok labels, ready for MACE: info REF_energy, total_charge, total_spin,
        frame, hash (defect, origin, REF_stress when known), arrays REF_forces.

        One fidelity is one level of theory; when its labels come from several settings
        hashes, pass the one to use. Empty for a fidelity without labels yet."""
        labels = self._labels.get(fidelity)
        if labels is None:
            return []
        rows = [r for r in range(len(labels.status)) if labels.status[r] == OK]
        hashes = {labels.settings_hash[r] for r in rows}
        if settings_hash is None and len(hashes) > 1:
            raise ValueError(f"fidelity {fidelity!r} has ok labels from settings {sorted(hashes)}; pass settings_hash")
        if settings_hash is not None:
            rows = [r for r in rows if labels.settings_hash[r] == settings_hash]
        frames = self.get_frames(labels.frame[rows])
        forces = labels.table.read("forces")
        offsets = labels.table.offsets
        out = []
        for row, atoms in zip(rows, frames):
            atoms.info = {REF_ENERGY_KEY: float(labels.energy[row]), **atoms.info}
            if not np.isnan(labels.stress[row]).any():
                atoms.info[REF_STRESS_KEY] = labels.stress[row].copy()
            atoms.arrays[REF_FORCES_KEY] = forces[offsets[row] : offsets[row + 1]].copy()
            out.append(atoms)
        return out

    # ----------------------------------------------------------------- extxyz
    def export_extxyz(self, path: str | os.PathLike, fidelity: str, settings_hash: str | None = None) -> int:
        """Write the ok labels of a fidelity as extxyz that MACE trains on
        (``--energy_key REF_energy --forces_key REF_forces``); return the frame count."""
        import ase.io

        atoms = self.labelled_atoms(fidelity, settings_hash)
        ase.io.write(path, atoms, format="extxyz")
        return len(atoms)

    def import_extxyz(
        self,
        path: str | os.PathLike,
        fidelity: str,
        settings_hash: str,
        energy_key: str = REF_ENERGY_KEY,
        forces_key: str = REF_FORCES_KEY,
        stress_key: str = REF_STRESS_KEY,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Add the labelled frames of an extxyz file; return the number of labels added.

        Frames are deduplicated by hash; frames that already have an ok label for
        ``settings_hash`` are skipped. Keys named ``energy``/``forces``/``stress`` are read
        from the calculator ASE attaches for them."""
        import ase.io

        self._writable()
        read = ase.io.read(path, index=":", format="extxyz")
        items: list[tuple[Atoms, LabelResult]] = []
        for k, atoms in enumerate(read):
            where = f"{path} frame {k}"
            energy = _extxyz_value(atoms, energy_key, "info", where, required=True)
            forces = _extxyz_value(atoms, forces_key, "arrays", where, required=True)
            stress = _extxyz_value(atoms, stress_key, "info", where, required=False)
            if stress is not None and np.size(stress) == 9:
                stress = np.reshape(stress, (3, 3))
            meta = {"code": "extxyz", "source": str(path), "index": k, **(metadata or {})}
            items.append((atoms, LabelResult(OK, settings_hash, float(energy), np.asarray(forces, dtype=float), stress, metadata=meta)))
        indices = self.add_frames([a for a, _ in items])
        before = self.n_labels(fidelity)
        todo = [(i, r) for i, (_, r) in zip(indices, items) if not self.has_label(fidelity, i, settings_hash)]
        if todo:
            self.add_labels(fidelity, todo)
        return self.n_labels(fidelity) - before


def _extxyz_value(atoms: Atoms, key: str, where_kind: str, where: str, required: bool) -> Any:
    store = atoms.info if where_kind == "info" else atoms.arrays
    if key in store:
        return store[key]
    calc_key = {"energy": "energy", "free_energy": "free_energy", "forces": "forces", "stress": "stress"}.get(key)
    if calc_key and atoms.calc is not None and calc_key in atoms.calc.results:
        return atoms.calc.results[calc_key]
    if required:
        raise KeyError(f"{where}: no {where_kind} key {key!r}; pass energy_key/forces_key naming the file's keys")
    return None
