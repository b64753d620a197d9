"""The campaign directory: frozen spec and inputs, atomic state, event log, lock.

Everything a campaign needs lives here, so it can be moved, resumed or reported on
without any file outside it::

    DIR/campaign.yaml        frozen spec (paths rewritten to inputs/)
    DIR/inputs/              copies of every input file
    DIR/data.zarr            the store (frames and labels)
    DIR/models/gen-NNN/      committee members, member-I.model
    DIR/generations/gen-NNN/ exploration results and selections of one generation
    DIR/state.json           where the loop is (atomic rename)
    DIR/events.jsonl         what happened, one JSON object per line
    DIR/metrics.jsonl        training and evaluation metrics per generation
    DIR/ground_states/       <defect>_<charge>.extxyz and .vasp
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from activedefect.spec import CampaignSpec, load_spec


class CampaignLockedError(RuntimeError):
    """Another driver is running this campaign."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync; a last line cut by a kill is ended first, so it costs
    only itself and never merges with (and spoils) the line written after it."""
    with open(path, "ab+") as handle:
        if handle.seek(0, os.SEEK_END) > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write(line.encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a file written by :func:`append_line`, skipping lines cut by a kill."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class Workspace:
    """Paths and small files of one campaign directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self._lock_handle = None

    spec_path = property(lambda self: self.root / "campaign.yaml")
    store_path = property(lambda self: self.root / "data.zarr")
    state_path = property(lambda self: self.root / "state.json")
    events_path = property(lambda self: self.root / "events.jsonl")
    metrics_path = property(lambda self: self.root / "metrics.jsonl")
    ground_states_dir = property(lambda self: self.root / "ground_states")
    pyiron_dir = property(lambda self: self.root / "pyiron")
    journal_dir = property(lambda self: self.root / "journal")  # oracle steps in flight

    def model_path(self, generation: int, member: int) -> Path:
        return self.root / "models" / f"gen-{generation:03d}" / f"member-{member}.model"

    def generation_dir(self, generation: int) -> Path:
        return self.root / "generations" / f"gen-{generation:03d}"

    # --- creation -------------------------------------------------------------------
    @classmethod
    def create(cls, spec: CampaignSpec, spec_source: Path, root: str | Path) -> "Workspace":
        """Freeze ``spec`` into a new directory, copying every input file into ``inputs/``.

        Done under the directory's lock, so of two `campaign start` on one directory the
        second refuses (locked, or the campaign exists) and writes nothing. The returned
        workspace still holds the lock: release it once the first state is written."""
        ws = cls(root)
        ws.root.mkdir(parents=True, exist_ok=True)
        ws.acquire_lock()
        try:
            if ws.spec_path.exists():
                raise FileExistsError(
                    f"{ws.root} already holds a campaign; resume it with `activedefect campaign resume {ws.root}` "
                    "or choose another --dir"
                )
            inputs = ws.root / "inputs"
            inputs.mkdir(parents=True, exist_ok=True)
            shutil.copy2(spec.host.structure, inputs / spec.host.structure.name)
            shutil.copy2(spec_source, inputs / f"original-{spec_source.name}")
            frozen = spec.as_dict()
            frozen["host"]["structure"] = f"inputs/{spec.host.structure.name}"
            atomic_write_text(ws.spec_path, yaml.safe_dump(frozen, sort_keys=False))
        except BaseException:
            ws.release_lock()
            raise
        return ws

    def load_spec(self) -> CampaignSpec:
        if not self.spec_path.exists():
            raise FileNotFoundError(f"{self.root} is not a campaign directory (no campaign.yaml)")
        return load_spec(self.spec_path)

    # --- state and logs ---------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {}
        return json.loads(self.state_path.read_text())

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.state_path, state)

    def log_event(self, kind: str, **data: Any) -> dict[str, Any]:
        event = {"time": time.time(), "event": kind, **data}
        append_line(self.events_path, json.dumps(event, default=str))
        return event

    def events(self) -> list[dict[str, Any]]:
        return read_lines(self.events_path)

    def append_metrics(self, record: dict[str, Any]) -> None:
        append_line(self.metrics_path, json.dumps(record, default=float))

    def metrics(self) -> list[dict[str, Any]]:
        return read_lines(self.metrics_path)

    # --- one driver at a time ---------------------------------------------------------
    def acquire_lock(self) -> None:
        """Hold an exclusive lock for the life of this process (released by the kernel,
        also on kill -9)."""
        handle = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise CampaignLockedError(
                f"campaign {self.root} is already running (driver pid {owner}); "
                "wait for it to finish or stop it before starting or resuming it again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_handle = handle

    def release_lock(self) -> None:
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None
