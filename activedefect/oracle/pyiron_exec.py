"""Labels as pyiron jobs (``fidelities.<f>.executor: pyiron``).

Each label is a ``PythonFunctionContainerJob`` in the pyiron project ``<campaign>/pyiron/``
with its SQLite database beside it (``<campaign>/pyiron/pyiron.db``, never ``~/pyiron.db``),
so the job table, the HDF5 files and pyiron's tools work on a campaign's labels. The Dask
task saves the job in manual mode and runs it with ``python -m pyiron_base.cli wrapper``
in a subprocess: ``job.run()`` inside a Dask task fails (pyiron installs signal handlers,
which need the main thread).

The job name is the frame's content hash (geometry, charge, multiplicity) and the
backend's settings hash, so a resumed campaign finds a finished job and reads its result
instead of computing it again. Inside the job the backend's own ``calculate`` runs, so a
label and its failure codes are the same as on the Dask path.

Two tasks may label one geometry at one level of theory at the same time (a single label
and an oracle relaxation starting from that frame): one job name, one HDF5 file. A lock
file per job name (``<root>/locks/<name>.lock``) lets one task create and run the job while
the other waits and then reads the finished job back; without it, the second task's
``job.save()`` met the first one's open HDF5 file (``BlockingIOError: unable to lock
file``) or removed the first one's unfinished job under it. Under the lock, a job is
reused only when finished and readable; everything else of that name (a row left
``submitted``/``running``, a file cut short or left flagged open-for-write by a worker
killed inside ``job.save()``, even without a row) is removed and the job run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from activedefect.execution.cluster import die_with_parent
from activedefect.geometry import content_hash
from activedefect.labels import LabelResult
from activedefect.oracle.backends.base import Backend

DATABASE = "pyiron.db"
PROJECT = "labels"
#: Seconds for the job subprocess to start (imports) and write its HDF5 file, on top of
#: the backend's ``timeout_s``.
STARTUP_MARGIN_S = 300.0


def environment(root: Path) -> dict[str, str]:
    """pyiron's settings for a campaign: its SQLite file and project path, not the user's."""
    return {
        "PYIRONSQLFILE": str(root / DATABASE),
        "PYIRONPROJECTPATHS": f"{root}/",
        "PYIRONRESOURCEPATHS": f"{root}/",
        "PYIRONPROJECTCHECKENABLED": "False",
    }


def open_project(root: str | Path):  # noqa: ANN201 - a pyiron Project
    """The campaign's pyiron project, with pyiron pointed at the campaign's database
    (also when this process used pyiron before with other settings)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ.update(environment(root))
    from pyiron_base import Project, state

    state.update({"sql_file": str(root / DATABASE), "project_paths": [f"{root}/"],
                  "resource_paths": [f"{root}/"], "project_check_enabled": False})
    return Project(str(root / PROJECT))


def job_name(atoms: Atoms, charge: int, multiplicity: int, settings_hash: str) -> str:
    """``label_<content hash>_<settings hash>``: one job per geometry and level of theory."""
    return f"label_{content_hash(atoms, charge, multiplicity)[:20]}_{settings_hash}"


@contextlib.contextmanager
def job_lock(root: str | Path, name: str) -> Iterator[None]:
    """Hold the lock of job ``name``: one process at a time checks, creates, runs or
    removes it. The kernel drops a ``flock`` when its holder dies, so a killed worker
    leaves no stale lock."""
    locks = Path(root) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def compute_label(request: str) -> dict[str, Any]:
    """The pyiron job's function: one ``Backend.calculate`` from a JSON request, returned
    as arrays and scalars that pyiron's HDF5 storage keeps."""
    from activedefect.oracle.backends import get_backend

    data = json.loads(request)
    backend = get_backend(data["backend"], data["settings"], timeout_s=data["timeout_s"], retries=data["retries"])
    atoms = Atoms(numbers=data["numbers"], positions=data["positions_A"], cell=data["cell_A"], pbc=data["pbc"])
    result = backend.calculate(atoms, data["charge"], data["multiplicity"])
    output: dict[str, Any] = {
        "status": result.status,
        "settings_hash": result.settings_hash,
        "reason": result.reason,
        "metadata_json": json.dumps(result.metadata, default=str),
    }
    for key in ("energy_eV", "forces_eV_A", "stress_eV_A3"):
        if getattr(result, key) is not None:
            output[key] = getattr(result, key)
    return output


def result_from_output(output: dict[str, Any]) -> LabelResult:
    def array(key: str) -> np.ndarray | None:
        return None if output.get(key) is None else np.asarray(output[key], dtype=np.float64)

    energy = output.get("energy_eV")
    return LabelResult(
        status=str(output["status"]),
        settings_hash=str(output["settings_hash"]),
        energy_eV=None if energy is None else float(energy),
        forces_eV_A=array("forces_eV_A"),
        stress_eV_A3=array("stress_eV_A3"),
        reason=str(output.get("reason", "")),
        metadata=json.loads(output["metadata_json"]),
    )


class PyironLabeller:
    """A backend whose ``calculate`` runs as pyiron jobs under ``root``; what
    :func:`activedefect.oracle.tasks.label_frame` and oracle relaxations call."""

    def __init__(self, backend: Backend, root: str | Path):
        self.backend = backend
        self.root = Path(root)
        self.name = backend.name

    @property
    def settings_hash(self) -> str:
        return self.backend.settings_hash

    def calculate(self, atoms: Atoms, charge: int, multiplicity: int) -> LabelResult:
        return run_label_job(self.root, self.backend, atoms, charge, multiplicity)


def run_label_job(root: str | Path, backend: Backend, atoms: Atoms, charge: int, multiplicity: int) -> LabelResult:
    """The label of ``atoms`` from the finished pyiron job of that name, or from a new job
    run now in a subprocess. Never raises for a failed job: it is a ``crashed`` (or
    ``timeout``) LabelResult, as on the Dask path."""
    name = job_name(atoms, charge, multiplicity, backend.settings_hash)
    with job_lock(root, name):
        return _label_locked(root, name, backend, atoms, charge, multiplicity)


def _label_locked(root: str | Path, name: str, backend: Backend, atoms: Atoms, charge: int,
                  multiplicity: int) -> LabelResult:
    """:func:`run_label_job` while holding the job's lock: reuse a job only when it is
    finished and its output reads back; anything else a killed run left is removed and
    run again."""
    project = open_project(root)
    settings_hash, timeout_s = backend.settings_hash, backend.timeout_s
    job_id = project.get_job_id(name)
    if job_id is not None:
        finished = _finished_result(project, name)
        if finished is not None:
            return finished
    _discard(project, name, job_id)  # what a killed run left: an unfinished job, or files without a row
    request = json.dumps({
        "backend": backend.name, "settings": backend.settings, "timeout_s": timeout_s, "retries": backend.retries,
        "numbers": atoms.numbers.tolist(), "positions_A": atoms.positions.tolist(),
        "cell_A": np.asarray(atoms.cell).tolist(), "pbc": atoms.pbc.tolist(),
        "charge": int(charge), "multiplicity": int(multiplicity),
    }, default=str)
    job = project.wrap_python_function(compute_label, request, job_name=name, automatically_rename=False)
    # job.run() would install signal handlers, which fails outside the main thread (a Dask
    # task): save the job and hand it to pyiron's wrapper as a manual job would be.
    job.server.run_mode.manual = True
    with contextlib.redirect_stdout(io.StringIO()):  # pyiron prints the new job's id
        job.save()
    job.status.submitted = True
    command = [sys.executable, "-m", "pyiron_base.cli", "wrapper", "-p", job.working_directory, "-j", str(job.job_id)]
    limit = None if timeout_s is None else timeout_s + STARTUP_MARGIN_S
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, check=False,
                              preexec_fn=die_with_parent,
                              env={**os.environ, **environment(Path(root).resolve())})
        detail = f"exit code {done.returncode}; output ends: {(done.stdout + done.stderr)[-400:]}"
    except subprocess.TimeoutExpired:
        return LabelResult.failure("timeout", settings_hash, f"pyiron job {name} still running after {limit:g} s",
                                   pyiron_job=name)
    result = _finished_result(project, name)
    if result is None:
        return LabelResult.failure("crashed", settings_hash, f"pyiron job {name} did not finish: {detail}",
                                   pyiron_job=name)
    return result


def _finished_result(project, name: str) -> LabelResult | None:  # noqa: ANN001 - a pyiron Project
    """The label of a finished job; None when the job is not finished or its HDF5 file
    cannot be read (a process killed while writing it)."""
    try:
        job = project.load(name)
        if job is None or not job.status.finished:
            return None
        result = result_from_output(job.output["result"])
    except Exception:  # noqa: BLE001 - whatever a half-written file raises, the job is run again
        return None
    result.metadata.update(pyiron_job=job.job_name, pyiron_job_id=int(job.job_id))
    return result


def _discard(project, name: str, job_id: int | None) -> None:  # noqa: ANN001 - a pyiron Project
    """Remove a job pyiron may not be able to load: its database row and its files. The
    files go even without a row: a worker killed inside ``job.save()`` leaves an HDF5 file
    flagged open-for-write (before the row exists), which the next save cannot open."""
    if job_id is not None:
        try:
            project.remove_job(job_id)
        except (OSError, KeyError, ValueError):
            project.db.delete_item(job_id)
    Path(project.path, f"{name}.h5").unlink(missing_ok=True)
    shutil.rmtree(Path(project.path, f"{name}_hdf5"), ignore_errors=True)
