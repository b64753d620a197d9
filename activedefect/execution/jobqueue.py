"""Batch-system workers (SLURM, PBS) through dask-jobqueue, from the spec's
``cluster.jobqueue`` block.

Without ``pools`` every job runs workers offering all task resources and the cluster
adapts between ``minimum_jobs`` and ``maximum_jobs``. With ``pools`` each pool is its
own kind of job (queue, cores, memory, extra directives) whose workers offer only the
pool's resources, so e.g. labels go to CPU nodes and training to GPU nodes; each pool
starts a fixed number of jobs, because dask-jobqueue adapts one kind of job only.

:func:`job_scripts` writes the scripts without submitting anything (review them, or
submit them by hand against a running scheduler).
"""

from __future__ import annotations

from typing import Any

from activedefect.spec_blocks import TASK_RESOURCES, JobqueueSpec, PoolSpec

#: Put in front of every job's prologue: one thread per numerical library, and
#: non-daemonic workers so a backend's timeout can run the calculation in a child process.
WORKER_ENVIRONMENT = (
    "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1",
    "export DASK_DISTRIBUTED__WORKER__DAEMON=False",
)
DEFAULT_POOL = "all"


def _import_dask_jobqueue():  # noqa: ANN202 - optional dependency
    try:
        import dask_jobqueue
    except ImportError as error:
        raise RuntimeError("cluster.jobqueue needs the `hpc` extra: pip install 'activedefect[hpc]'") from error
    return dask_jobqueue


def job_class(jq: JobqueueSpec) -> type:
    """dask-jobqueue's Job class for the batch system (SLURMJob, PBSJob)."""
    dask_jobqueue = _import_dask_jobqueue()
    return {"slurm": dask_jobqueue.slurm.SLURMJob, "pbs": dask_jobqueue.pbs.PBSJob}[jq.kind]


def cluster_class(jq: JobqueueSpec) -> type:
    dask_jobqueue = _import_dask_jobqueue()
    return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[jq.kind]


def pools(jq: JobqueueSpec) -> dict[str, PoolSpec]:
    """The pools of the block; without ``pools``, one pool offering every resource."""
    if jq.pools:
        return dict(jq.pools)
    return {DEFAULT_POOL: PoolSpec(resources=list(TASK_RESOURCES), jobs=jq.minimum_jobs)}


def workers_per_resource(jq: JobqueueSpec) -> dict[str, int]:
    """How many worker processes run each task kind once the jobs are up (an adaptive
    default pool at ``maximum_jobs``): what a cost estimate divides by."""
    counts = dict.fromkeys(TASK_RESOURCES, 0)
    for pool in pools(jq).values():
        jobs = pool.jobs if jq.pools else jq.maximum_jobs
        processes = pool.processes or jq.processes or pool.cores or jq.cores
        for resource in pool.resources:
            counts[resource] += jobs * processes
    return counts


def job_kwargs(jq: JobqueueSpec, pool: PoolSpec) -> dict[str, Any]:
    """Keyword arguments of a dask-jobqueue Job (or Cluster) for one pool."""
    cores = pool.cores or jq.cores
    processes = pool.processes or jq.processes or cores
    if processes > cores:
        raise ValueError(f"processes {processes} exceeds cores {cores}: each worker process needs a core")
    resources = ",".join(f"{name}=1" for name in pool.resources)
    return {
        "queue": pool.queue or jq.queue,
        "account": jq.account,
        "cores": cores,
        "processes": processes,
        "memory": pool.memory or jq.memory,
        "walltime": pool.walltime or jq.walltime,
        "interface": jq.interface,
        "job_extra_directives": [*jq.job_extra_directives, *pool.job_extra_directives],
        "job_script_prologue": [*WORKER_ENVIRONMENT, *jq.job_script_prologue, *pool.job_script_prologue],
        "worker_extra_args": ["--resources", resources],
    }


def job_scripts(jq: JobqueueSpec, scheduler_address: str = "tcp://SCHEDULER:8786") -> dict[str, str]:
    """Pool name -> the batch script one of its jobs runs (nothing is submitted)."""
    cls = job_class(jq)
    return {
        name: cls(scheduler=scheduler_address, name=f"{name}-0", **job_kwargs(jq, pool)).job_script()
        for name, pool in pools(jq).items()
    }


def start_cluster(jq: JobqueueSpec, dashboard_address: str):  # noqa: ANN201 - a JobQueueCluster
    """Start the scheduler here and submit (or adapt) the jobs the block asks for."""
    if not jq.pools:
        cluster = cluster_class(jq)(
            **job_kwargs(jq, pools(jq)[DEFAULT_POOL]),
            scheduler_options={"dashboard_address": dashboard_address},
        )
        cluster.adapt(minimum_jobs=jq.minimum_jobs, maximum_jobs=jq.maximum_jobs)
        return cluster
    first = next(iter(jq.pools.values()))
    cluster = cluster_class(jq)(**job_kwargs(jq, first), scheduler_options={"dashboard_address": dashboard_address})
    cls = job_class(jq)
    for name, pool in jq.pools.items():
        options = {**cluster._job_kwargs, **job_kwargs(jq, pool)}
        for index in range(pool.jobs):
            spec: dict[str, Any] = {"cls": cls, "options": options}
            if options["processes"] > 1:
                spec["group"] = [f"-{i}" for i in range(options["processes"])]
            cluster.worker_spec[f"{name}-{index}"] = spec
    cluster.sync(cluster._correct_state)
    return cluster
