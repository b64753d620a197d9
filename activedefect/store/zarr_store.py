"""Zarr v3 store of frames (structures) and their labels, append-only, one writer.

Layout (every table is append-only; its offsets array is its commit marker)::

    zarr.json                 attrs: {"activedefect_store": {"version": 1}, "bulk_energies": {...}}
    frames/
        numbers (A,) int32, positions (A, 3) float64 Å               per atom
        cell (N, 3, 3), pbc (N, 3), charge, multiplicity, defect,
        seed, generation, trajectory, step (-1: unknown), hash      per frame
        offsets (N + 1,) int64                                       written last
    labels/<fidelity>/
        forces (F, 3) float64 eV/Å (ok labels only)                  per atom
        frame, energy (eV, NaN for failures), status, settings_hash,
        metadata (JSON), stress (M, 6) eV/Å^3 Voigt (NaN: absent)    per label
        force_offsets (M + 1,) int64                                 written last

Why it survives a SIGKILL at any instant: an append writes the per-atom arrays, then the
per-row arrays, then the offsets. LocalStore writes every chunk and metadata file
atomically (temp file + rename), and offsets use fill value -1, so a torn offsets append
reads as -1 entries. A table's committed rows are the longest prefix of offsets that is
written (>= 0). Opening with mode "a" cuts every array back to that prefix. Readers
("r") open the offsets before the other arrays and read only the committed prefix, so
they see a consistent snapshot while the writer appends. Only one writer may hold a
store at a time; ``Store.open(mode="a")`` takes an exclusive lock and fails fast.

Damaged files (a chunk or metadata file cut short or overwritten: a failing disk, a
copy interrupted) are found on open: every chunk is decoded (chunks carry a zstd
checksum) and the error names the file. A reader skips a damaged label table (with a
warning) and refuses only the frames whose atoms lie in a damaged chunk, so the rest stays
readable; the writer refuses a damaged store, so nothing is appended to it.

Positions and cells are kept on a 1e-8 Å grid (the precision extxyz writes) and hashed
there: a frame exported to extxyz and read back hashes the same, so re-imports dedupe.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from ase import Atoms
from ase.stress import full_3x3_to_voigt_6_stress
from zarr.core.sync import sync

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY
from activedefect.labels import FAILURE_CODES, OK, LabelResult
from activedefect.store.records import (
    ORIGIN_INTS,
    ORIGIN_KEY,
    BulkEnergy,
    FrameRecord,
    LabelIndex,
    as_int,
    json_default,
)
from activedefect.store.tables import (
    Column,
    StoreCorruptedError,
    Table,
    contains,
    damaged,
    gather,
    node,
    table_exists,
)

FORMAT_KEY = "activedefect_store"
FORMAT_VERSION = 1
#: ``atoms.info`` keys the store sets on frames it returns.
HASH_KEY = "hash"
FRAME_KEY = "frame"
#: Keys MACE trains on (``--energy_key REF_energy --forces_key REF_forces``).
REF_ENERGY_KEY = "REF_energy"
REF_FORCES_KEY = "REF_forces"
REF_STRESS_KEY = "REF_stress"


_FIDELITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


FRAME_COLUMNS = (
    Column("numbers", "int32", per_atom=True),
    Column("positions", "float64", (3,), per_atom=True),
    Column("cell", "float64", (3, 3)),
    Column("pbc", "bool", (3,)),
    Column("charge", "int32"),
    Column("multiplicity", "int32"),
    Column("defect", str),
    Column("seed", str),
    Column("generation", "int32", fill=-1),
    Column("trajectory", "int32", fill=-1),
    Column("step", "int32", fill=-1),
    Column("hash", str),
)
LABEL_COLUMNS = (
    Column("forces", "float64", (3,), per_atom=True),
    Column("frame", "int64"),
    Column("energy", "float64", fill=math.nan),
    Column("status", str),
    Column("settings_hash", str),
    Column("metadata", str),
    Column("stress", "float64", (6,), fill=math.nan),
)


class Store:
    """Frames and labels of one campaign in a Zarr v3 directory.

    Open with :meth:`open`. Mode ``"a"`` (the single writer: the driver) creates the store
    if missing, takes an exclusive lock and rolls back any partial append; mode ``"r"``
    reads a consistent snapshot as of opening (reopen to see later commits).

    Frames are deduplicated by :func:`activedefect.geometry.content_hash` of the frame on
    the 1e-8 Å storage grid; labels are keyed by (frame index, settings hash). Failures are
    kept as rows (NaN energy, no forces) so callers can count attempts.
    """

    def __init__(self, path: Path, root: zarr.Group, mode: str, lock: int | None):
        self.path, self.mode, self._root, self._lock = path, mode, root, lock
        writable = mode == "a"
        self._frames = Table(node(root, "frames", path), "frames", FRAME_COLUMNS, "offsets", writable, path)
        for error in self._frames.damaged.values():
            warnings.warn(f"{error} Frames with atoms in it cannot be read.", stacklevel=3)
        t = self._frames
        self._cell = t.read("cell")
        self._pbc = t.read("pbc")
        self._ints = {k: t.read(k).astype(np.int64) for k in ("charge", "multiplicity", *ORIGIN_INTS)}
        self._strs: dict[str, list[str]] = {k: t.read(k).tolist() for k in ("defect", "seed", "hash")}
        self._hash_index = {h: i for i, h in enumerate(self._strs["hash"])}
        if len(self._hash_index) != t.n_rows:
            raise StoreCorruptedError(f"{path}: frames/hash holds duplicate hashes")
        self._labels: dict[str, LabelIndex] = {}
        #: Label tables a reader skipped because a file of theirs is damaged: fidelity -> error.
        self.damaged: dict[str, StoreCorruptedError] = {}
        labels = node(root, "labels", path) if contains(root, "labels", path) else None
        for name in sorted(labels.group_keys()) if labels is not None else []:
            try:
                if table_exists(labels, name, "force_offsets", path):
                    table = Table(node(labels, name, path), "labels", LABEL_COLUMNS, "force_offsets", writable, path)
                    if table.damaged:  # a label table is used whole (training, export): skip it
                        raise next(iter(table.damaged.values()))
                    self._labels[name] = LabelIndex(table)
            except StoreCorruptedError as error:
                if writable:
                    raise
                self.damaged[name] = error
                warnings.warn(f"{error} Labels at fidelity {name!r} are left out.", stacklevel=3)

    # ----------------------------------------------------------------- open / close
    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "a") -> "Store":
        """Open (mode "a": create if missing, lock, roll back partial appends) or read ("r")."""
        path = Path(path)
        if mode == "r":
            if not (path / "zarr.json").is_file():
                raise FileNotFoundError(f"no store at {path}: create it with Store.open(path, mode='a')")
            root = _open_root(path, "r")
            if not table_exists(root, "frames", "offsets", path):
                raise FileNotFoundError(f"the store at {path} is still being created; open it again")
            return cls(path, root, mode, None)
        if mode != "a":
            raise ValueError(f"mode must be 'a' (read/write, create if missing) or 'r' (read-only), got {mode!r}")
        if path.exists() and not (path / "zarr.json").exists() and any(path.iterdir()):
            raise FileExistsError(f"{path} exists and is not a store; choose an empty or new directory")
        path.mkdir(parents=True, exist_ok=True)
        lock = _lock(path)
        try:
            for partial in path.rglob("*.partial"):  # temp files of writes cut by a kill
                partial.unlink(missing_ok=True)
            root = _open_root(path, "a")
            if FORMAT_KEY not in root.attrs:
                if len(root.attrs) or "frames" in root:
                    raise FileExistsError(f"{path} is a zarr group but not an activedefect store")
                root.attrs.update({FORMAT_KEY: {"version": FORMAT_VERSION}, "bulk_energies": {}})
            _check_format(root, path)
            if not table_exists(root, "frames", "offsets", path):
                Table.create(root, "frames", FRAME_COLUMNS, "offsets")
            labels = root.require_group("labels")
            for name in list(labels.group_keys()):
                if not table_exists(labels, name, "force_offsets", path):
                    del labels[name]  # creation was cut before its commit marker: never used
            return cls(path, root, mode, lock)
        except BaseException:
            os.close(lock)
            raise

    def close(self) -> None:
        """Release the writer lock (a no-op for readers)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writable(self) -> None:
        if self.mode != "a" or (self._lock is None):
            raise PermissionError(f"store {self.path} is not open for writing; use Store.open(path, mode='a')")

    # ----------------------------------------------------------------- frames
    @property
    def n_frames(self) -> int:
        return self._frames.n_rows

    def add_frames(self, frames: Sequence[Atoms]) -> list[int]:
        """Append frames in one batch; return each frame's index (an existing one for a
        duplicate hash). Reads ``atoms.info``: ``total_charge`` (0), ``total_spin``
        (multiplicity, 1), ``defect`` (""), optional ``origin`` dict
        ``{seed, generation, trajectory, step}``."""
        self._writable()
        indices: list[int] = []
        new: dict[str, int] = {}
        records: list[FrameRecord] = []
        for k, atoms in enumerate(frames):
            record = FrameRecord.from_atoms(atoms, f"frames[{k}]")
            index = self._hash_index.get(record.hash, new.get(record.hash))
            if index is None:
                index = new[record.hash] = self.n_frames + len(records)
                records.append(record)
            indices.append(index)
        if not records:
            return indices
        counts = np.array([len(r.atoms) for r in records], dtype=np.int64)
        rows = {
            "cell": np.array([r.atoms.cell.array for r in records]),
            "pbc": np.array([r.atoms.pbc for r in records], dtype=bool),
            "charge": np.array([r.charge for r in records], dtype=np.int32),
            "multiplicity": np.array([r.multiplicity for r in records], dtype=np.int32),
            "defect": np.array([r.defect for r in records], dtype=object),
            "seed": np.array([r.seed for r in records], dtype=object),
            "hash": np.array([r.hash for r in records], dtype=object),
        }
        for j, key in enumerate(ORIGIN_INTS):
            rows[key] = np.array([r.origin_ints[j] for r in records], dtype=np.int32)
        atoms_columns = {
            "numbers": np.concatenate([r.atoms.numbers for r in records]).astype(np.int32),
            "positions": np.concatenate([r.atoms.positions for r in records]),
        }
        self._frames.append({k: v.astype(str) if v.dtype == object else v for k, v in rows.items()}, atoms_columns, counts)
        self._cell = np.concatenate([self._cell, rows["cell"]])
        self._pbc = np.concatenate([self._pbc, rows["pbc"]])
        for key in self._ints:
            self._ints[key] = np.concatenate([self._ints[key], rows[key].astype(np.int64)])
        for key in self._strs:
            self._strs[key] += rows[key].tolist()
        self._hash_index.update(new)
        return indices

    def frame_index(self, hash: str) -> int | None:
        """Index of the frame with this content hash (as in ``info["hash"]`` of frames from
        this store or any extxyz file), or None."""
        return self._hash_index.get(hash)

    def find_frame(self, atoms: Atoms) -> int | None:
        """Index of a frame equal to ``atoms`` (hash taken on the storage grid), or None."""
        return self._hash_index.get(FrameRecord.from_atoms(atoms, "atoms").hash)

    def get_frame(self, i: int) -> Atoms:
        """Frame ``i`` with info total_charge, total_spin, defect and origin (when known),
        hash and frame (its index)."""
        return self.get_frames([i])[0]

    def get_frames(self, indices: Iterable[int] | None = None) -> list[Atoms]:
        """Frames by index (all when None), reading the atom arrays once."""
        indices = list(range(self.n_frames)) if indices is None else [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < self.n_frames:
                raise IndexError(f"frame {i} out of range: the store holds {self.n_frames} frames")
        if not indices:
            return []
        offsets = self._frames.offsets
        if self._frames.damaged:  # frame by frame: only those with atoms in a damaged chunk fail
            return [self._atoms(i, *(self._frames.read(k, int(offsets[i]), int(offsets[i + 1]))
                                     for k in ("numbers", "positions"))) for i in indices]
        lo, hi = int(min(offsets[i] for i in indices)), int(max(offsets[i + 1] for i in indices))
        arrays = self._frames.arrays
        numbers, positions = sync(gather([arrays[k].async_array.getitem(slice(lo, hi)) for k in ("numbers", "positions")]))
        return [self._atoms(i, numbers[offsets[i] - lo : offsets[i + 1] - lo], positions[offsets[i] - lo : offsets[i + 1] - lo]) for i in indices]

    def _atoms(self, i: int, numbers: np.ndarray, positions: np.ndarray) -> Atoms:
        atoms = Atoms(numbers=numbers, positions=positions, cell=self._cell[i], pbc=self._pbc[i])
        atoms.info[CHARGE_KEY] = int(self._ints["charge"][i])
        atoms.info[SPIN_KEY] = int(self._ints["multiplicity"][i])
        if self._strs["defect"][i]:  # absent rather than "": extxyz cannot write an empty value
            atoms.info[DEFECT_KEY] = self._strs["defect"][i]
        origin = {k: int(self._ints[k][i]) for k in ORIGIN_INTS}
        if self._strs["seed"][i] or any(v >= 0 for v in origin.values()):
            atoms.info[ORIGIN_KEY] = {"seed": self._strs["seed"][i] or None, **{k: (v if v >= 0 else None) for k, v in origin.items()}}
        atoms.info[HASH_KEY] = self._strs["hash"][i]
        atoms.info[FRAME_KEY] = i
        return atoms

    def frame_table(self) -> pd.DataFrame:
        """One row per frame: frame, hash, defect, charge, multiplicity, n_atoms, seed,
        generation, trajectory, step (unknown origin fields are NA)."""
        origin = {k: pd.array(self._ints[k], dtype="Int64") for k in ORIGIN_INTS}
        for k in ORIGIN_INTS:
            origin[k][self._ints[k] < 0] = pd.NA
        return pd.DataFrame(
            {
                "frame": np.arange(self.n_frames),
                "hash": self._strs["hash"],
                "defect": self._strs["defect"],
                "charge": self._ints["charge"],
                "multiplicity": self._ints["multiplicity"],
                "n_atoms": np.diff(self._frames.offsets),
                "seed": [s or None for s in self._strs["seed"]],
                **origin,
            }
        )

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

    # ----------------------------------------------------------------- attributes
    def set_bulk_energy(self, fidelity: str, energy_eV: float, n_atoms: int, settings_hash: str) -> None:
        """Record the relaxed bulk (host) energy at a fidelity (root attrs)."""
        self._writable()
        if not np.isfinite(energy_eV) or int(n_atoms) < 1:
            raise ValueError(f"bulk energy needs a finite energy_eV and n_atoms >= 1, got {energy_eV}, {n_atoms}")
        bulk = {k: v for k, v in self._root.attrs["bulk_energies"].items()}
        bulk[fidelity] = BulkEnergy(float(energy_eV), int(n_atoms), settings_hash).as_dict()
        self._root.attrs.update({"bulk_energies": bulk})

    def bulk_energies(self) -> dict[str, BulkEnergy]:
        return {k: BulkEnergy.from_dict(v) for k, v in self._root.attrs["bulk_energies"].items()}


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


def _open_root(path: Path, mode: str) -> zarr.Group:
    try:
        root = zarr.open_group(path, mode=mode)
    except Exception as error:  # zarr raises JSON, value or type errors
        if (path / "zarr.json").is_file():
            raise damaged(path / "zarr.json", error) from error
        raise
    if mode == "r" or FORMAT_KEY in root.attrs:
        _check_format(root, path)
    return root


def _check_format(root: zarr.Group, path: Path) -> None:
    version = dict(root.attrs).get(FORMAT_KEY, {}).get("version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} is not an activedefect store of version {FORMAT_VERSION} (found {version!r})")


def _lock(path: Path) -> int:
    """Exclusive advisory lock on the store directory: one writer per store (released
    when the process dies; a lock file inside would upset zarr's listing)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"store {path} is open for writing elsewhere (one writer only); open it with mode='r'") from None
    return fd
