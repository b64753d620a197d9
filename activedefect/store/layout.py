"""The store directory as it lies on disk: the format marker in the root attributes, the
columns of the frames and label tables (the layout drawn in :mod:`activedefect.store.zarr_store`),
opening the root group with its format checked, and the lock that keeps one writer per store."""

from __future__ import annotations

import fcntl
import math
import os
from pathlib import Path

import zarr

from activedefect.store.tables import Column, damaged

FORMAT_KEY = "activedefect_store"
FORMAT_VERSION = 1

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


def open_root(path: Path, mode: str) -> zarr.Group:
    try:
        root = zarr.open_group(path, mode=mode)
    except Exception as error:  # zarr raises JSON, value or type errors
        if (path / "zarr.json").is_file():
            raise damaged(path / "zarr.json", error) from error
        raise
    if mode == "r" or FORMAT_KEY in root.attrs:
        check_format(root, path)
    return root


def check_format(root: zarr.Group, path: Path) -> None:
    version = dict(root.attrs).get(FORMAT_KEY, {}).get("version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} is not an activedefect store of version {FORMAT_VERSION} (found {version!r})")


def writer_lock(path: Path) -> int:
    """Exclusive advisory lock on the store directory: one writer per store (released
    when the process dies; a lock file inside would upset zarr's listing)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"store {path} is open for writing elsewhere (one writer only); open it with mode='r'") from None
    return fd
