"""Append-only ragged tables in Zarr v3, the layer the store's frames and labels sit on.

A table is per-atom arrays, per-row arrays and an offsets array written last (its commit
marker, fill value -1): a torn append reads as -1 entries, so a table's committed rows are
the longest written prefix of its offsets, and opening it for writing cuts every array back
to that prefix. Every chunk carries a zstd checksum; a damaged file is named in a
:class:`StoreCorruptedError`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.array import AsyncArray
from zarr.core.sync import sync

from activedefect.faults import crash_point

#: Chunk lengths: the fastest appends of 50 60-atom frames in benchmarks/bench_store.py
#: among 4k-64k atoms x 256-4k rows; 256-row chunks made reopening 6x slower.
ATOM_CHUNK = 1 << 14
ROW_CHUNK = 1 << 10
#: A checksum in every chunk: a flipped byte is an error on read, not a wrong number.
COMPRESSOR = ZstdCodec(level=0, checksum=True)


class StoreCorruptedError(RuntimeError):
    """The store breaks an invariant that its own writes cannot produce, or one of its
    files cannot be read; the message names the file."""


def damaged(file: Path, error: BaseException) -> StoreCorruptedError:
    return StoreCorruptedError(
        f"store file {file} is damaged ({type(error).__name__}: {error}); restore it from a backup. "
        "The rest of the store still reads with Store.open(path, mode='r') "
        "(`activedefect campaign status` / `export`)"
    )


def node(parent: zarr.Group, name: str, root: Path) -> Any:
    """``parent[name]``, or an error naming its metadata file when that cannot be read."""
    try:
        return parent[name]
    except KeyError:
        raise
    except Exception as error:  # zarr raises JSON, value or type errors
        raise damaged(root / parent.path / name / "zarr.json", error) from error


def _chunk_file(array: zarr.Array, index: int, root: Path) -> Path:
    key = array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))
    return root / array.path / key


def _damaged_chunks(array: zarr.Array, start: int, stop: int, root: Path) -> dict[int, StoreCorruptedError]:
    """The chunks overlapping rows [start, stop) that cannot be decoded, each with an
    error naming its file (decoded concurrently: as fast as reading the rows once)."""
    length = array.chunks[0]
    indices = list(range(start // length, -(-stop // length))) if stop > start else []

    async def check(index: int) -> BaseException | None:
        try:
            await array.async_array.getitem(slice(index * length, min((index + 1) * length, array.shape[0])))
        except Exception as error:  # noqa: BLE001 - any decode failure is damage
            return error
        return None

    errors = sync(gather([check(i) for i in indices]))
    return {i: damaged(_chunk_file(array, i, root), e) for i, e in zip(indices, errors) if e is not None}


@dataclass(frozen=True)
class Column:
    name: str
    dtype: Any
    tail: tuple[int, ...] = ()
    per_atom: bool = False
    fill: Any = None


def _committed_offsets(raw: np.ndarray, where: str) -> np.ndarray:
    """Longest written prefix of an offsets array (unwritten entries read -1)."""
    unwritten = np.flatnonzero(raw < 0)
    offsets = raw[: unwritten[0]] if unwritten.size else raw
    if offsets.size == 0:
        return np.zeros(1, dtype=np.int64)
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise StoreCorruptedError(f"{where}: offsets must start at 0 and never decrease")
    return offsets.astype(np.int64)


class Table:
    """Per-atom columns, per-row columns and an offsets array (commit marker) in one group."""

    def __init__(
        self, group: zarr.Group, kind: str, columns: Sequence[Column], offsets: str, writable: bool, root: Path
    ):
        self.kind = kind
        self.columns = columns
        self.root = root
        # The offsets first: every other array's metadata is then at least as new as
        # the commit we read, so the committed prefix lies inside their shapes.
        self.offsets_array = node(group, offsets, root)
        self.offsets = _committed_offsets(self._read_rows(self.offsets_array, 0, self.offsets_array.shape[0]),
                                          f"{group.path}/{offsets}")
        self.arrays = {c.name: node(group, c.name, root) for c in columns}
        for c in columns:
            need = self.n_atoms if c.per_atom else self.n_rows
            if self.arrays[c.name].shape[0] < need:
                raise StoreCorruptedError(
                    f"{group.path}/{c.name} has {self.arrays[c.name].shape[0]} rows but the "
                    f"committed offsets need {need}"
                )
        #: Per-atom chunks that cannot be decoded: (column, chunk index) -> error.
        self.damaged = {
            (c.name, index): error
            for c in columns if c.per_atom
            for index, error in _damaged_chunks(self.arrays[c.name], 0, self.n_atoms, root).items()
        }
        if writable and self.damaged:
            raise next(iter(self.damaged.values()))
        if writable:
            self._roll_back()

    def _read_rows(self, array: zarr.Array, start: int, stop: int) -> np.ndarray:
        """``array[start:stop]``; a chunk that cannot be decoded is an error naming its file."""
        try:
            return array[start:stop]
        except Exception as error:  # a chunk that cannot be decoded, or another error
            bad = _damaged_chunks(array, start, stop, self.root)
            if bad:
                raise next(iter(bad.values())) from error
            raise

    def check_atoms(self, start: int, stop: int) -> None:
        """Raise the error naming the file when atom rows [start, stop) touch a damaged chunk."""
        for (name, index), error in self.damaged.items():
            length = self.arrays[name].chunks[0]
            if index * length < stop and start < (index + 1) * length:
                raise error

    @staticmethod
    def create(parent: zarr.Group, name: str, columns: Sequence[Column], offsets: str) -> None:
        """Create the group; the offsets array last, so a table without it was never created."""
        group = parent.require_group(name)
        for c in columns:
            chunk = ATOM_CHUNK if c.per_atom else ROW_CHUNK
            if c.name in group:
                del group[c.name]
            group.create_array(
                c.name, shape=(0, *c.tail), chunks=(chunk, *c.tail), dtype=c.dtype,
                fill_value=c.fill, compressors=COMPRESSOR,
            )
        array = group.create_array(offsets, shape=(1,), chunks=(ROW_CHUNK,), dtype="int64", fill_value=-1,
                                   compressors=COMPRESSOR)
        array[:] = 0

    @property
    def n_rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_atoms(self) -> int:
        return int(self.offsets[-1])

    def _roll_back(self) -> None:
        """Cut every array back to the committed prefix (undo a partial append)."""
        for c in self.columns:
            array, keep = self.arrays[c.name], self.n_atoms if c.per_atom else self.n_rows
            if array.shape[0] != keep:
                array.resize((keep, *c.tail))
        if self.offsets_array.shape[0] != self.n_rows + 1 or self.n_rows == 0:
            self.offsets_array.resize((self.n_rows + 1,))
            if self.n_rows == 0:
                self.offsets_array[:] = 0

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        column = next(c for c in self.columns if c.name == name)
        limit = self.n_atoms if column.per_atom else self.n_rows
        stop = limit if stop is None else stop
        if stop <= start:
            return np.empty((0, *column.tail), dtype=object if column.dtype is str else column.dtype)
        if column.per_atom:
            self.check_atoms(start, stop)
        data = self._read_rows(self.arrays[name], start, stop)
        return np.array(data.tolist(), dtype=object) if column.dtype is str else data

    def append(self, rows: dict[str, np.ndarray], atoms: dict[str, np.ndarray], counts: np.ndarray) -> None:
        """Write one batch: per-atom arrays, per-row arrays, then the offsets (commit)."""
        writes = []
        for c in self.columns:
            data, start = (atoms[c.name], self.n_atoms) if c.per_atom else (rows[c.name], self.n_rows)
            if len(data):
                writes.append(_grow(self.arrays[c.name].async_array, start, data, c.tail))
        # All columns at once (the commit comes after every one has landed): ~10x faster
        # than one blocking call per array.
        sync(gather(writes))
        crash_point(f"store:{self.kind}:before_commit")
        new = self.n_atoms + np.cumsum(counts, dtype=np.int64)
        self.offsets_array.resize((self.n_rows + 1 + len(new),))
        crash_point(f"store:{self.kind}:mid_commit")
        self.offsets_array[self.n_rows + 1 :] = new
        self.offsets = np.concatenate([self.offsets, new])


def contains(parent: zarr.Group, name: str, root: Path) -> bool:
    try:
        return name in parent
    except Exception as error:  # zarr reads the member's metadata to answer
        raise damaged(root / parent.path / name / "zarr.json", error) from error


def table_exists(parent: zarr.Group, name: str, offsets: str, root: Path) -> bool:
    return contains(parent, name, root) and contains(node(parent, name, root), offsets, root)


async def gather(coroutines: list) -> list:
    return await asyncio.gather(*coroutines)


async def _grow(array: AsyncArray, start: int, data: np.ndarray, tail: tuple[int, ...]) -> None:
    # Resize from the committed length, not the array's: a failed append in this
    # process may have left the array longer.
    await array.resize((start + len(data), *tail))
    await array.setitem(slice(start, start + len(data)), data)
