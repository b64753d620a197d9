"""Labels as pyiron jobs, for real: tblite xTB inside a pyiron PythonFunctionContainerJob
run by `pyiron_base.cli wrapper` in a subprocess, the database in the campaign directory,
resume from finished jobs, the same failures as the Dask path, and Dask workers running
the jobs."""

from __future__ import annotations

import fcntl
import multiprocessing
import subprocess
import sys

import h5py
import numpy as np
import pytest
from ase.build import bulk

from activedefect.execution.cluster import open_cluster
from activedefect.geometry import CHARGE_KEY, SPIN_KEY
from activedefect.oracle.backends import get_backend
from activedefect.oracle.pyiron_exec import (
    DATABASE,
    job_name,
    open_project,
    run_label_job,
)
from activedefect.oracle.tasks import BackendCall, label_frame
from activedefect.spec_blocks import ClusterSpec


def _diamond_vacancy():
    atoms = bulk("C", "diamond", 3.567, cubic=True)
    del atoms[0]
    return atoms


@pytest.fixture(scope="module")
def vacancy():
    """7-atom diamond vacancy cell; 28 valence electrons in xTB: triplet allowed, doublet not."""
    return _diamond_vacancy()


@pytest.fixture(scope="module")
def xtb():
    return get_backend("xtb", {"electronic_temperature": 1000.0})


def _jobs(root) -> dict[str, str]:
    table = open_project(root).job_table()
    return dict(zip(table["job"], table["status"]))


def test_label_job_gives_the_backend_result_and_lives_in_the_campaign(tmp_path, vacancy, xtb):
    root = tmp_path / "campaign" / "pyiron"
    result = run_label_job(root, xtb, vacancy, 0, 3)
    direct = xtb.calculate(vacancy, 0, 3)
    assert result.ok, result.reason
    assert result.energy_eV == pytest.approx(direct.energy_eV, abs=1e-8)
    np.testing.assert_allclose(result.forces_eV_A, direct.forces_eV_A, atol=1e-8)
    assert result.settings_hash == direct.settings_hash
    assert result.metadata["settings"] == direct.metadata["settings"]
    name = job_name(vacancy, 0, 3, xtb.settings_hash)
    assert result.metadata["pyiron_job"] == name
    assert (root / DATABASE).is_file()
    assert _jobs(root) == {name: "finished"}
    # the job's HDF5 file keeps the forces as an array
    job = open_project(root).load(name)
    np.testing.assert_allclose(job.output["result"]["forces_eV_A"], direct.forces_eV_A, atol=1e-8)


def test_resume_reads_finished_jobs_without_running_them(tmp_path, vacancy, xtb, monkeypatch):
    root = tmp_path / "pyiron"
    first = run_label_job(root, xtb, vacancy, 0, 3)

    def no_run(*args, **kwargs):
        raise AssertionError("a finished job was run again")

    monkeypatch.setattr(subprocess, "run", no_run)
    again = run_label_job(root, xtb, vacancy, 0, 3)
    assert again.energy_eV == first.energy_eV
    assert again.metadata["pyiron_job_id"] == first.metadata["pyiron_job_id"]
    assert len(_jobs(root)) == 1
    # another level of theory is another job
    monkeypatch.undo()
    hot = get_backend("xtb", {"electronic_temperature": 3000.0})
    other = run_label_job(root, hot, vacancy, 0, 3)
    assert other.ok and other.energy_eV != first.energy_eV
    assert len(_jobs(root)) == 2


def test_unfinished_job_from_a_killed_run_is_run_again(tmp_path, vacancy, xtb):
    root = tmp_path / "pyiron"
    from activedefect.oracle.pyiron_exec import compute_label

    name = job_name(vacancy, 0, 3, xtb.settings_hash)
    job = open_project(root).wrap_python_function(compute_label, "{}", job_name=name, automatically_rename=False)
    job.save()  # saved, never executed: what a killed driver leaves
    assert _jobs(root)[name] != "finished"
    result = run_label_job(root, xtb, vacancy, 0, 3)
    assert result.ok, result.reason
    assert _jobs(root) == {name: "finished"}


def test_job_left_running_by_a_killed_worker_is_run_again(tmp_path, vacancy, xtb, monkeypatch):
    """A job whose row says `running` (its wrapper was killed) is not reused, even with a
    readable HDF5 file: it is removed and run again, and the label is not `crashed`."""
    root = tmp_path / "pyiron"
    first = run_label_job(root, xtb, vacancy, 0, 3)
    project = open_project(root)
    project.db.item_update({"status": "running"}, first.metadata["pyiron_job_id"])
    assert _jobs(root) == {first.metadata["pyiron_job"]: "running"}
    real_run, wrapper_runs = subprocess.run, []

    def counted_run(command, *args, **kwargs):
        wrapper_runs.append(command)
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counted_run)
    again = run_label_job(root, xtb, vacancy, 0, 3)
    assert again.ok, again.reason
    assert len(wrapper_runs) == 1
    assert again.energy_eV == pytest.approx(first.energy_eV, abs=1e-10)
    assert _jobs(root) == {first.metadata["pyiron_job"]: "finished"}


def test_half_written_job_file_from_a_killed_run_is_run_again(tmp_path, vacancy, xtb):
    root = tmp_path / "pyiron"
    first = run_label_job(root, xtb, vacancy, 0, 3)
    name = first.metadata["pyiron_job"]
    h5 = root / "labels" / f"{name}.h5"
    h5.write_bytes(h5.read_bytes()[:48])  # what a SIGKILL during the HDF5 write leaves
    again = run_label_job(root, xtb, vacancy, 0, 3)
    assert again.ok, again.reason
    assert again.energy_eV == pytest.approx(first.energy_eV, abs=1e-10)
    assert h5.stat().st_size > 48  # written again by a new run (SQLite may reuse the id)
    assert _jobs(root) == {name: "finished"}


def _label_in_process(root, runs, out, paused=None, go=None) -> None:  # noqa: ANN001
    """run_label_job in a process of its own, as a Dask worker runs it. Counts the pyiron
    wrapper runs in ``runs``. With ``paused``: the job is saved, its lock held, and the
    wrapper waits for ``go``. Without: ``go`` is set once this process waits for a lock
    held by another process (or, if it never waits, once its label is done)."""
    real_run, real_flock = subprocess.run, fcntl.flock

    def counted_run(command, *args, **kwargs):
        if "pyiron_base.cli" not in command:
            return real_run(command, *args, **kwargs)
        with runs.get_lock():
            runs.value += 1
        if paused is not None:
            paused.set()
            go.wait(300)
        return real_run(command, *args, **kwargs)

    def noted_flock(fd, operation):  # noqa: ANN001
        if operation == fcntl.LOCK_EX:
            try:
                return real_flock(fd, operation | fcntl.LOCK_NB)
            except BlockingIOError:
                go.set()
        return real_flock(fd, operation)

    subprocess.run = counted_run
    if paused is None:
        fcntl.flock = noted_flock
    xtb = get_backend("xtb", {"electronic_temperature": 1000.0})
    try:
        result = run_label_job(root, xtb, _diamond_vacancy(), 0, 3)
        out.put((result.status, result.reason, result.energy_eV, result.metadata.get("pyiron_job_id")))
    finally:
        if go is not None:
            go.set()


def test_two_processes_labelling_one_geometry_run_one_job(tmp_path, vacancy, xtb):
    """The second task for a geometry whose job another process is running waits and reads
    that job back; before, it removed the running job or met its open HDF5 file
    (BlockingIOError), a `crashed` label without its job."""
    root = tmp_path / "pyiron"
    spawn = multiprocessing.get_context("spawn")
    runs, out = spawn.Value("i", 0), spawn.Queue()
    paused, go = spawn.Event(), spawn.Event()
    first = spawn.Process(target=_label_in_process, args=(root, runs, out, paused, go))
    first.start()
    assert paused.wait(300), "the first job never reached its run"
    second = spawn.Process(target=_label_in_process, args=(root, runs, out, None, go))
    second.start()
    results = [out.get(timeout=300) for _ in range(2)]
    first.join(60)
    second.join(60)
    assert [r[0] for r in results] == ["ok", "ok"], results
    assert runs.value == 1, "the job ran twice"
    assert results[0][2:] == results[1][2:]  # one energy, one job id
    assert results[0][2] == pytest.approx(xtb.calculate(vacancy, 0, 3).energy_eV, abs=1e-8)
    assert _jobs(root) == {job_name(vacancy, 0, 3, xtb.settings_hash): "finished"}


def test_job_file_left_open_for_write_without_its_row_is_replaced(tmp_path, vacancy, xtb):
    """A worker killed inside ``job.save()`` leaves the job's HDF5 file flagged as open for
    write and no database row: the next label of that geometry removes the file and runs
    the job, instead of `crashed` (OSError: file is already open for write)."""
    root = tmp_path / "pyiron"
    labels = root / "labels"
    labels.mkdir(parents=True)
    h5 = labels / f"{job_name(vacancy, 0, 3, xtb.settings_hash)}.h5"
    killed_writer = ("import h5py, os, sys; f = h5py.File(sys.argv[1], 'w', libver='latest'); "
                     "f.create_group('job'); f.flush(); os._exit(0)")  # exits without closing the file
    subprocess.run([sys.executable, "-c", killed_writer, str(h5)], check=True)
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(h5, "a", libver="latest")
    result = run_label_job(root, xtb, vacancy, 0, 3)
    assert result.ok, result.reason
    assert _jobs(root) == {result.metadata["pyiron_job"]: "finished"}


def test_failures_are_the_backends_typed_failures(tmp_path, vacancy, xtb):
    root = tmp_path / "pyiron"
    direct = xtb.calculate(vacancy, 0, 2)  # doublet with an even electron count
    result = run_label_job(root, xtb, vacancy, 0, 2)
    assert direct.status == result.status == "bad_input"
    assert result.reason == direct.reason
    assert result.energy_eV is None and result.forces_eV_A is None


@pytest.mark.slow
def test_dask_workers_run_pyiron_jobs_side_by_side(tmp_path, vacancy, xtb):
    """label_frame on two single-thread worker processes writing one SQLite database."""
    root = tmp_path / "pyiron"
    call = BackendCall("xtb", {"electronic_temperature": 1000.0}, 60.0, 1, pyiron_root=str(root))
    frames = []
    for shift in (0.0, 0.05):
        atoms = vacancy.copy()
        atoms.positions[0] += shift
        atoms.info.update({CHARGE_KEY: 0, SPIN_KEY: 3})
        frames.append(atoms)
    with open_cluster(ClusterSpec(workers=2, dashboard_address="127.0.0.1:0")) as handle:
        futures = [handle.client.submit(label_frame, call, a, resources={"label": 1}, pure=False) for a in frames]
        results = handle.client.gather(futures)
    for atoms, result in zip(frames, results):
        assert result.ok, result.reason
        assert result.energy_eV == pytest.approx(xtb.calculate(atoms, 0, 3).energy_eV, abs=1e-8)
    assert sorted(_jobs(root).values()) == ["finished", "finished"]


@pytest.mark.slow
def test_campaign_with_pyiron_labels_resumes_from_finished_jobs(tmp_path):
    """A campaign labelling through pyiron, SIGKILLed after its 2nd stored label and
    resumed: every label has its pyiron job, no job ran twice, and jobs finished before
    the kill keep their ids (read back, not recomputed)."""
    import signal

    from campaign_support import KILL_SPEC, Driver, label_tables, write_spec

    spec = {**KILL_SPEC, "name": "pyiron-kill", "budget": {"generations": 1}, "convergence": {"confirm": None},
            "fidelities": {f: {**block, "executor": "pyiron"} for f, block in KILL_SPEC["fidelities"].items()}}
    path = write_spec(tmp_path / "spec" / "pyiron.yaml", spec)
    directory = tmp_path / "run"
    driver = Driver(["campaign", "start", str(path), "--dir", str(directory)], directory, tmp_path / "start.log",
                    kill_at="label:2")
    assert driver.wait() == -signal.SIGKILL, driver.output()[-3000:]
    assert not driver.survivors(), "a worker or pyiron job outlived the killed driver"
    root = directory / "pyiron"
    table = open_project(root).job_table()
    finished_at_kill = dict(zip(table["job"][table["status"] == "finished"], table["id"][table["status"] == "finished"]))
    assert finished_at_kill

    driver = Driver(["campaign", "resume", str(directory)], directory, tmp_path / "resume.log")
    assert driver.wait() == 0, driver.output()[-3000:]
    table = open_project(root).job_table()
    final = dict(zip(table["job"], table["id"]))
    assert set(table["status"]) == {"finished"}
    stored = [m for t in label_tables(directory).values() for m in t["metadata"]]
    assert len(stored) == len(final), "a label without its job, or a job without its label"
    assert {m["pyiron_job"]: m["pyiron_job_id"] for m in stored} == final
    for name, job_id in finished_at_kill.items():
        assert final[name] == job_id, f"{name} was run again after the kill"
