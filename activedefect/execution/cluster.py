"""Where the work runs: a LocalCluster of single-thread workers, an existing scheduler,
or a dask-jobqueue cluster (:mod:`activedefect.execution.jobqueue`) — chosen by the spec's
``cluster`` block.

Tasks ask for Dask resources (``label``, ``train``, ``explore``); the LocalCluster started
here offers one of each on every worker, and an external cluster's workers must offer
them too (``dask worker ... --resources "label=1,train=1,explore=1"``).
"""

from __future__ import annotations

import ctypes
import logging
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import dask
from distributed import Client, LocalCluster, WorkerPlugin

from activedefect.spec_blocks import TASK_RESOURCES, ClusterSpec

log = logging.getLogger(__name__)

RESOURCES = {name: 1 for name in TASK_RESOURCES}
DASHBOARD_MODULE = "activedefect.execution.dashboard"
_PR_SET_PDEATHSIG = 1


class WorkerSetup(WorkerPlugin):
    """Ask the kernel to SIGKILL a worker process when the process that spawned it dies,
    so that a killed driver leaves no orphan worker writing into a resumed campaign (the
    model libraries' noise is silenced where the model is imported: ``activedefect.model``)."""

    name = "activedefect-worker-setup"

    def setup(self, worker) -> None:  # noqa: ANN001 - dask's signature
        die_with_parent()


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the one that spawned it dies (Linux;
    elsewhere nothing): workers, and processes workers start, must not outlive the driver."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: best effort only
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")


class _WorkerKilledAtShutdown(logging.Filter):
    """Drop the nanny's "Worker process still alive after 4.0 seconds, killing" when our
    own LocalCluster closes at the end of a run: every task is done by then, and a worker
    busy releasing its model's memory is stopped as intended (logged at debug instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Worker process still alive after"):
            log.debug("at shutdown: %s", record.getMessage())
            return False
        return True


@contextmanager
def _quiet_worker_shutdown() -> Iterator[None]:
    nanny_log, quiet = logging.getLogger("distributed.nanny"), _WorkerKilledAtShutdown()
    nanny_log.addFilter(quiet)
    try:
        yield
    finally:
        nanny_log.removeFilter(quiet)


@dataclass
class ClusterHandle:
    client: Client
    dashboard_link: str
    campaign_page: str | None


@contextmanager
def open_cluster(
    spec: ClusterSpec,
    *,
    workers: int | None = None,
    scheduler_address: str | None = None,
    dashboard_address: str | None = None,
) -> Iterator[ClusterHandle]:
    """Start (or connect to) the cluster the spec describes; command-line overrides win."""
    address = scheduler_address or spec.address
    if address:
        client = Client(address)
        has_page = _scheduler_serves_campaign_page(client)
        link = client.dashboard_link
        page = link.replace("/status", "/activedefect") if has_page else None
        try:
            yield ClusterHandle(client, link, page)
        finally:
            client.close()
        return
    # Non-daemonic workers: a backend with a timeout runs its calculation in a child process.
    with dask.config.set({
        "distributed.scheduler.http.routes": _default_routes() + [DASHBOARD_MODULE],
        "distributed.worker.daemon": False,
    }):
        if spec.jobqueue is not None:
            from activedefect.execution.jobqueue import start_cluster

            cluster = start_cluster(spec.jobqueue, dashboard_address or spec.dashboard_address)
        else:
            cluster = LocalCluster(
                n_workers=workers or spec.workers,
                threads_per_worker=1,
                processes=True,
                resources=dict(RESOURCES),
                dashboard_address=dashboard_address or spec.dashboard_address,
                env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
            )
    client = Client(cluster)
    client.register_plugin(WorkerSetup())
    link = client.dashboard_link
    try:
        yield ClusterHandle(client, link, link.replace("/status", "/activedefect"))
    finally:
        client.close()
        with _quiet_worker_shutdown():
            cluster.close()


def workers_offering(client: Client, resource: str) -> int:
    """Workers that can run tasks asking for ``resource`` (with pools, not every worker)."""
    workers = client.scheduler_info()["workers"].values()
    return sum(1 for worker in workers if worker.get("resources", {}).get(resource, 0) > 0)


def _default_routes() -> list[str]:
    return list(dask.config.get("distributed.scheduler.http.routes"))


def _scheduler_serves_campaign_page(client: Client) -> bool:
    def check(dask_scheduler) -> bool:  # noqa: ANN001 - runs on the scheduler
        return DASHBOARD_MODULE in dask.config.get("distributed.scheduler.http.routes", [])

    try:
        return bool(client.run_on_scheduler(check))
    except Exception:  # noqa: BLE001 - an old or locked-down scheduler: serve from the driver
        return False
