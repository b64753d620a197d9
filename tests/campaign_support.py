"""Support for tests that run real campaigns: the tiny specs, the CLI driver in a
subprocess (with every process it spawns), and readers of what a campaign leaves."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from activedefect.cli import app
from activedefect.faults import ENV as KILL_ENV
from activedefect.seeds.host import bundled_structure
from activedefect.store.workspace import Workspace
from activedefect.store.zarr_store import Store

CLI = [str(Path(sys.executable).with_name("activedefect"))]
if not Path(CLI[0]).exists():
    CLI = [sys.executable, "-m", "activedefect.cli"]

SPEC = {
    "name": "tiny-sic-v-si",
    "host": {
        "structure": str(bundled_structure("SiC_conv")),
        "supercell": [[0, 1, 1], [1, 0, 1], [1, 1, 0]],  # 16 atoms, 15 with the vacancy
        "oxidation_states": {"Si": 4, "C": -4},
    },
    "defects": [{"vacancy": "Si", "charges": [0, -2]}],
    "distortions": {"bond_distortions": [-0.3, 0.0, 0.3], "seed": 42},
    "fidelities": {
        "low": {"backend": "xtb", "settings": {"method": "GFN1-xTB", "electronic_temperature": 5000}},
        "high": {"backend": "xtb", "settings": {"method": "GFN1-xTB", "electronic_temperature": 1000}},
    },
    "committee": {"size": 2, "epochs": 15, "finetune_epochs": 5, "bootstrap": False, "model": {"num_channels": 16}},
    # Unperturbed relaxes to 0.01 eV/Å in ~26 committee steps (a candidate per charge
    # state); distorted seeds need ~50, so generation 2 continues them where they stopped.
    # On the `high` head throughout: with the default `start_head: low` every v_Si-2
    # relaxation spent its 40 steps on the `low` head (no committee minimum, measured);
    # the two-head path is tested in test_explore.py
    "exploration": {"max_steps": 40, "start_head": None},
    # generation 0 labels single points: the default `low` screen (150 steps per seed) is
    # a minute more per campaign here, and the tests' campaigns are about the loop
    "policies": [{"kind": "bootstrap", "low_relax_steps": 0}, {"kind": "uncertainty", "cut_relax_steps": 2},
                 {"kind": "stratified", "ground_state_relax_steps": 3}],
    "budget": {"generations": 3},
    "convergence": {"confirm": {"fmax": 0.05, "steps": 10}},
    "cluster": {"workers": 2, "dashboard_address": ":0"},
}

#: The kill tests' campaign: one charge state, two generations, no host check.
KILL_SPEC = {
    **SPEC,
    "name": "tiny-sic-v-si-kill",
    "defects": [{"vacancy": "Si", "charges": [0]}],
    "budget": {"generations": 2},
    "host_check": {"enabled": False},
}

RUN_TIMEOUT_S = 600


def write_spec(path: Path, spec: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli_env(kill_at: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "COLUMNS": "200"}  # no line wrapping of messages and links by rich
    env.pop(KILL_ENV, None)
    if kill_at is not None:
        env[KILL_ENV] = kill_at
    return env


def flat(text: str) -> str:
    return " ".join(text.split())


#: `Campaign.open(DIR).resume()` from Python, as a notebook user would run it.
PYTHON_RESUME = [sys.executable, "-c", "import sys; from activedefect import Campaign; "
                 "Campaign.open(sys.argv[1]).resume()"]


class Driver:
    """The CLI (or ``program``) running a campaign in a subprocess, and every process it spawned (polled
    while it runs, so the test can check that none outlives a killed driver)."""

    def __init__(self, args: list[str], directory: Path, log: Path, kill_at: str | None = None,
                 program: list[str] = CLI):
        self.directory, self.log = directory, log
        self._log_handle = open(log, "w")
        self.proc = subprocess.Popen(program + args, stdout=self._log_handle, stderr=subprocess.STDOUT,
                                     env=cli_env(kill_at), start_new_session=True)
        self.descendants: dict[int, psutil.Process] = {}
        self._watch = threading.Thread(target=self._collect_descendants, daemon=True)
        self._watch.start()

    def _collect_descendants(self) -> None:
        try:
            parent = psutil.Process(self.proc.pid)
            while self.proc.poll() is None:
                for child in parent.children(recursive=True):
                    self.descendants.setdefault(child.pid, child)
                time.sleep(0.3)
        except psutil.NoSuchProcess:
            pass

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"campaign driver ran past {timeout} s; log:\n{self.output()[-3000:]}")
        self._watch.join()
        self._log_handle.close()
        return rc

    def kill(self) -> None:
        if self.alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self) -> list[dict]:
        return Workspace(self.directory).events()

    def wait_for(self, what: str, condition, timeout: float = 300) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not condition():
            if not self.alive:
                pytest.fail(f"driver exited (rc {self.proc.returncode}) before {what}; log:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout} s")
            time.sleep(0.5)

    def campaign_page(self, timeout: float = 180) -> str:
        found: list[str] = []

        def printed() -> bool:
            found[:] = re.findall(r"Campaign page:\s+(http://\S+)", self.output())
            return bool(found)

        self.wait_for("campaign page link on stdout", printed, timeout)
        return found[0]

    def survivors(self, grace_s: float = 20.0) -> list[str]:
        """Processes the driver spawned that are still alive (zombies count as dead)."""
        deadline = time.monotonic() + grace_s
        while True:
            alive = []
            for proc in self.descendants.values():
                try:
                    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
                except psutil.NoSuchProcess:
                    continue
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.5)


def run_cli(args: list[str], timeout: float = 300, kill_at: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, capture_output=True, text=True, env=cli_env(kill_at), timeout=timeout)


def status_json(directory: Path) -> dict:
    """`activedefect campaign status DIR --json`, in this process (fast enough to poll)."""
    result = CliRunner().invoke(app, ["campaign", "status", str(directory), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def fetch(url: str) -> str | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def fetch_json(url: str) -> dict | None:
    text = fetch(url)
    return json.loads(text) if text else None


def label_tables(directory: Path) -> dict:
    store = Store.open(directory / "data.zarr", mode="r")
    return {f: store.label_table(f) for f in ("low", "high")}


def model_files(directory: Path) -> dict[Path, tuple[int, int]]:
    """Every committee member file with (inode, mtime): a retrained member changes both."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(directory.glob("models/gen-*/member-*.model"))}


def worker_command(script: str) -> str:
    """The ``dask worker`` command line of a job script (what the batch job executes)."""
    lines = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    if len(lines) != 1:
        raise ValueError("the job script has no single `distributed.cli.dask_worker` line")
    return lines[0].strip()
