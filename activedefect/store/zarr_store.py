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

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from ase import Atoms
from zarr.core.sync import sync

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY
from activedefect.store.layout import (
    FORMAT_KEY,
    FORMAT_VERSION,
    FRAME_COLUMNS,
    LABEL_COLUMNS,
    check_format,
    open_root,
    writer_lock,
)
from activedefect.store.records import (
    ORIGIN_INTS,
    ORIGIN_KEY,
    BulkEnergy,
    FrameRecord,
    LabelIndex,
)
from activedefect.store.store_labels import StoreLabels
from activedefect.store.tables import (
    StoreCorruptedError,
    Table,
    contains,
    gather,
    node,
    table_exists,
)

#: ``atoms.info`` keys the store sets on frames it returns.
HASH_KEY = "hash"
FRAME_KEY = "frame"


class Store(StoreLabels):
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
            root = open_root(path, "r")
            if not table_exists(root, "frames", "offsets", path):
                raise FileNotFoundError(f"the store at {path} is still being created; open it again")
            return cls(path, root, mode, None)
        if mode != "a":
            raise ValueError(f"mode must be 'a' (read/write, create if missing) or 'r' (read-only), got {mode!r}")
        if path.exists() and not (path / "zarr.json").exists() and any(path.iterdir()):
            raise FileExistsError(f"{path} exists and is not a store; choose an empty or new directory")
        path.mkdir(parents=True, exist_ok=True)
        lock = writer_lock(path)
        try:
            for partial in path.rglob("*.partial"):  # temp files of writes cut by a kill
                partial.unlink(missing_ok=True)
            root = open_root(path, "a")
            if FORMAT_KEY not in root.attrs:
                if len(root.attrs) or "frames" in root:
                    raise FileExistsError(f"{path} is a zarr group but not an activedefect store")
                root.attrs.update({FORMAT_KEY: {"version": FORMAT_VERSION}, "bulk_energies": {}})
            check_format(root, path)
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
