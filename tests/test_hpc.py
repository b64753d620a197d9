"""HPC execution: dask-jobqueue job scripts from the spec, a real external scheduler and
workers started with the `dask` CLI, and the generated job scripts run as the batch
system would run them (SLURM itself cannot run here: a stand-in `sbatch` runs the script
with bash, so dask-jobqueue's real submission code drives it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from campaign_support import worker_command
from distributed import Client, get_worker

from activedefect.execution.cluster import open_cluster, workers_offering
from activedefect.execution.jobqueue import job_scripts
from activedefect.geometry import CHARGE_KEY, SPIN_KEY
from activedefect.oracle.backends import get_backend
from activedefect.oracle.tasks import BackendCall, label_frame
from activedefect.spec import SpecError, parse_spec
from activedefect.spec_blocks import ClusterSpec, JobqueueSpec

pytest.importorskip("dask_jobqueue", reason="the hpc extra (dask-jobqueue) is not installed")

DASK = str(Path(sys.executable).parent / "dask")
POOLS = {
    "dft": {"resources": ["label", "explore"], "queue": "cpu", "cores": 2, "jobs": 1,
            "job_script_prologue": ["module load vasp/6.4"]},
    "gpu": {"resources": ["train"], "queue": "gpu", "cores": 1, "memory": "32GB", "jobs": 1,
            "job_extra_directives": ["--gres=gpu:1"]},
}


def jobqueue(kind: str = "slurm", **extra) -> JobqueueSpec:
    block = {"kind": kind, "account": "proj42", "memory": "8GB", "walltime": "02:30:00",
             "job_script_prologue": ["source ~/venvs/ad/bin/activate"]}
    return JobqueueSpec(**{**block, **extra})


@pytest.fixture(scope="module")
def vacancy():
    atoms = bulk("C", "diamond", 3.567, cubic=True)
    del atoms[0]
    atoms.info.update({CHARGE_KEY: 0, SPIN_KEY: 3})
    return atoms


def _stop(process: subprocess.Popen) -> None:
    """End a process group this test started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_workers(client: Client, condition, timeout_s: float = 90) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        if condition(workers):
            return workers
        time.sleep(0.5)
    raise AssertionError(f"workers never matched; have {list(workers)}")


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """`dask scheduler` in its own process; yields its address."""
    root = tmp_path_factory.mktemp("scheduler")
    file = root / "scheduler.json"
    process = _start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                      "--scheduler-file", str(file)], root / "scheduler.log")
    deadline = time.monotonic() + 60
    while not file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert file.exists(), (root / "scheduler.log").read_text()
    time.sleep(0.2)  # the file is written whole by the scheduler, but give it a beat
    yield json.loads(file.read_text())["address"]
    _stop(process)


# --------------------------------------------------------------------- job scripts
def test_slurm_job_scripts_carry_every_setting_per_pool():
    scripts = job_scripts(jobqueue(pools=POOLS), "tcp://10.0.0.1:8786")
    assert set(scripts) == {"dft", "gpu"}
    dft, gpu = scripts["dft"], scripts["gpu"]
    for line in ("#SBATCH -p cpu", "#SBATCH -A proj42", "#SBATCH --cpus-per-task=2", "#SBATCH -t 02:30:00",
                 "source ~/venvs/ad/bin/activate", "module load vasp/6.4", "export OMP_NUM_THREADS=1",
                 "export DASK_DISTRIBUTED__WORKER__DAEMON=False"):
        assert line in dft, line
    for line in ("#SBATCH -p gpu", "#SBATCH --gres=gpu:1", "#SBATCH --mem=30G"):
        assert line in gpu, line
    assert "module load vasp/6.4" not in gpu and "--gres" not in dft
    assert "--resources label=1,explore=1" in worker_command(dft)
    assert "--resources train=1" in worker_command(gpu)
    assert "--nworkers 2" in worker_command(dft) and "--nthreads 1" in worker_command(dft)
    assert "tcp://10.0.0.1:8786" in worker_command(gpu)
    # the prologue runs before the worker starts
    assert dft.index("module load vasp/6.4") < dft.index("distributed.cli.dask_worker")


def test_pbs_default_pool_offers_every_resource():
    [script] = job_scripts(jobqueue("pbs", queue="workq", cores=4, processes=2)).values()
    assert "#PBS -q workq" in script and "#PBS -A proj42" in script and "walltime=02:30:00" in script
    assert "ncpus=4" in script
    command = worker_command(script)
    assert "--resources label=1,train=1,explore=1" in command and "--nworkers 2" in command
    assert "--nthreads 2" in command  # 4 cores over 2 processes


@pytest.mark.parametrize("block, match", [
    ({"pools": {"cpu": {"resources": ["label", "explore"]}}}, "offers \\['train'\\]"),
    ({"pools": {"cpu": {"resources": ["label", "explore", "train"], "jobs": 0},
                "gpu": {"resources": ["train"]}}}, "offers \\['label', 'explore'\\]"),
    ({"pools": {"cpu": {"resources": ["dft"]}}}, "cluster.jobqueue.pools.cpu.resources"),
    ({"minimum_jobs": 5, "maximum_jobs": 2}, "minimum_jobs 5 exceeds maximum_jobs 2"),
])
def test_bad_jobqueue_blocks_are_refused_with_the_field(block, match):
    from campaign_support import SPEC

    with pytest.raises(SpecError, match=match):
        parse_spec({**SPEC, "cluster": {"jobqueue": block}}, Path(__file__).parent)


def test_cli_writes_the_job_scripts_of_a_spec(tmp_path):
    from typer.testing import CliRunner

    from activedefect.cli import app

    spec = Path(__file__).parent.parent / "campaigns" / "vasp-cdte-v-cd.yaml"
    result = CliRunner().invoke(app, ["campaign", "job-scripts", str(spec), "--scheduler", "tcp://10.1.2.3:8786",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dft.sh", "ml.sh"]
    assert "tcp://10.1.2.3:8786" in worker_command((tmp_path / "dft.sh").read_text())
    result = CliRunner().invoke(app, ["campaign", "job-scripts", str(Path(__file__).parent.parent / "campaigns" /
                                                                     "quickstart.yaml")])
    assert result.exit_code == 2 and "no cluster.jobqueue block" in " ".join(result.output.split())  # rich wraps


def test_processes_beyond_cores_is_an_error():
    with pytest.raises(ValueError, match="processes 4 exceeds cores 2"):
        job_scripts(jobqueue(cores=2, processes=4))


# --------------------------------------------------------------------- external scheduler
def test_labels_run_on_workers_started_with_the_dask_cli(scheduler, vacancy, tmp_path):
    worker = _start([DASK, "worker", scheduler, "--nthreads", "1", "--no-dashboard", "--name", "cli-worker",
                     "--resources", "label=1,train=1,explore=1"], tmp_path / "worker.log")
    try:
        with open_cluster(ClusterSpec(address=scheduler)) as handle:
            client = handle.client
            _wait_for_workers(client, lambda ws: any(w["id"] == "cli-worker" for w in ws.values()))
            call = BackendCall("xtb", {}, None, 1)
            future = client.submit(label_frame, call, vacancy, resources={"label": 1}, pure=False)
            result = future.result(timeout=120)
            where = client.who_has(future)
            [[address]] = where.values()
            assert client.scheduler_info()["workers"][address]["id"] == "cli-worker"
    finally:
        _stop(worker)
    local = get_backend("xtb").calculate(vacancy, 0, 3)
    assert result.ok, result.reason
    assert result.energy_eV == pytest.approx(local.energy_eV, abs=1e-8)
    np.testing.assert_allclose(result.forces_eV_A, local.forces_eV_A, atol=1e-8)


#: A lambda travels by value: the scheduler cannot import this test module.
_worker_name = lambda: get_worker().name  # noqa: E731 - see above


def test_generated_job_script_joins_the_scheduler_with_its_pool_resources(scheduler, tmp_path):
    script = job_scripts(jobqueue(pools=POOLS), scheduler)["gpu"]
    path = tmp_path / "gpu.sh"
    path.write_text(script.replace("module load", "true module load"))
    job = _start(["bash", str(path)], tmp_path / "gpu.log")
    try:
        with Client(scheduler) as client:
            workers = _wait_for_workers(client, lambda ws: any(w["id"].startswith("gpu-0") for w in ws.values()))
            [info] = [w for w in workers.values() if w["id"].startswith("gpu-0")]
            assert info["resources"] == {"train": 1}
            assert info["nthreads"] == 1
            name = client.submit(_worker_name, resources={"train": 1}, pure=False).result(timeout=60)
            assert name.startswith("gpu-0")
    finally:
        _stop(job)


# --------------------------------------------------------------------- the whole jobqueue path
FAKE_SBATCH = """#!/bin/bash
# Stand-in for sbatch: run the job script with bash in its own session; the job id is its pid.
script="{jobs}/job-$RANDOM$RANDOM.sh"
cp "$1" "$script"
setsid bash "$script" > "$script.log" 2>&1 < /dev/null &
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = """#!/bin/bash
# Stand-in for scancel: end the job's process group.
for id in "$@"; do kill -TERM -- "-$id" 2>/dev/null; done
exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """`sbatch`/`scancel` stand-ins first on PATH; yields the folder of submitted scripts."""
    bin_dir, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir()
    jobs.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH.format(jobs=jobs)), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return jobs


def test_adaptive_jobqueue_cluster_submits_jobs_and_labels(vacancy, fake_slurm):
    spec = ClusterSpec(dashboard_address="127.0.0.1:0",
                       jobqueue=jobqueue(cores=2, minimum_jobs=1, maximum_jobs=1, interface="lo",
                                         job_script_prologue=[]))
    with open_cluster(spec) as handle:
        client = handle.client
        workers = _wait_for_workers(client, lambda ws: len(ws) == 2)
        assert all(w["resources"] == {"label": 1, "train": 1, "explore": 1} for w in workers.values())
        result = client.submit(label_frame, BackendCall("xtb", {}, None, 1), vacancy,
                               resources={"label": 1}, pure=False).result(timeout=120)
    assert result.ok, result.reason
    assert len(list(fake_slurm.glob("job-*.sh"))) == 1  # one job of two worker processes


def test_jobqueue_cluster_with_pools_runs_labels_and_training_on_their_pools(vacancy, fake_slurm):
    jobs = fake_slurm
    pools = {"dft": {**POOLS["dft"], "job_script_prologue": []}, "gpu": POOLS["gpu"]}
    spec = ClusterSpec(dashboard_address="127.0.0.1:0",
                       jobqueue=jobqueue(pools=pools, interface="lo", job_script_prologue=[]))
    with open_cluster(spec) as handle:
        client = handle.client
        workers = _wait_for_workers(client, lambda ws: len(ws) == 3)
        resources = sorted((w["id"], w["resources"]) for w in workers.values())
        assert resources == [("dft-0-0", {"label": 1, "explore": 1}), ("dft-0-1", {"label": 1, "explore": 1}),
                             ("gpu-0", {"train": 1})]
        assert (workers_offering(client, "explore"), workers_offering(client, "train")) == (2, 1)
        result = client.submit(label_frame, BackendCall("xtb", {}, 30.0, 1), vacancy,
                               resources={"label": 1}, pure=False).result(timeout=120)
        trained_on = client.submit(_worker_name, resources={"train": 1}, pure=False).result(timeout=60)
    assert result.ok, result.reason  # with a timeout: the child process needs a non-daemonic worker
    assert trained_on == "gpu-0"
    assert len(list(jobs.glob("job-*.sh"))) == 2


def _start_then_sleep(marker: str) -> None:
    Path(marker).touch()
    time.sleep(60)


def test_closing_our_cluster_on_a_busy_worker_prints_no_nanny_warning(caplog, tmp_path):
    """A worker still inside a task when the campaign's LocalCluster closes is killed by its
    nanny after 4 s, as intended; the nanny's warning about it is kept out of the terminal
    (our logger records it at debug)."""
    import logging

    caplog.set_level(logging.DEBUG, logger="activedefect.execution.cluster")
    with open_cluster(ClusterSpec(workers=1, dashboard_address=":0")) as handle:
        marker = tmp_path / "started"
        handle.client.submit(_start_then_sleep, str(marker), pure=False)
        deadline = time.time() + 120
        while not marker.exists():  # the worker is inside the task
            assert time.time() < deadline, "the task never started"
            time.sleep(0.1)
    shown = [r for r in caplog.records if r.name == "distributed.nanny" and "still alive" in r.getMessage()]
    debug = [r for r in caplog.records if r.name == "activedefect.execution.cluster" and "still alive" in r.getMessage()]
    assert shown == [] and len(debug) >= 1, [r.getMessage() for r in caplog.records]
