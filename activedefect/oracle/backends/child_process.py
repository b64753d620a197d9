"""The child process that enforces ``timeout_s`` for codes that run in this Python
process: the calculation runs in a child process that is killed at the deadline, and a
child that dies without an answer is a ``crashed`` label, not a lost worker."""

from __future__ import annotations

import multiprocessing
import threading
import traceback
from typing import Callable

from activedefect.labels import LabelResult

#: Start method of the child process that enforces ``timeout_s`` for in-process codes.
#: "fork" costs ~0.05 s per call. "forkserver" avoids forking a parent with threads but
#: cost ~0.4 s per call in a script that imports ase.build, because Python 3.11's
#: forkserver does not preload ``__main__`` and every child re-imports it (a CLI that
#: imports torch would pay seconds). A child that inherits a held lock and hangs is
#: still killed at the deadline; keep OMP_NUM_THREADS=1 so no OpenMP pool is forked.
CHILD_START_METHOD = "fork"
#: Imported once in the forkserver, not again in every child.
FORKSERVER_PRELOAD = ["activedefect.oracle.backends"]
_preload_lock = threading.Lock()
_preloaded = False


def run_in_child(
    fn: Callable[..., LabelResult], args: tuple, timeout_s: float, start_method: str = CHILD_START_METHOD
) -> LabelResult:
    """Run ``fn(*args)`` in a child process; kill it after ``timeout_s`` seconds.

    A child that dies without an answer (segfault, out of memory) is ``crashed``.
    """
    global _preloaded
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        with _preload_lock:
            if not _preloaded:
                context.set_forkserver_preload(FORKSERVER_PRELOAD)
                _preloaded = True
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(sender, fn, args), daemon=True)
    try:
        process.start()
    except AssertionError as exc:  # "daemonic processes are not allowed to have children"
        raise RuntimeError(
            "timeout_s needs a child process, which a daemonic process (e.g. a Dask worker with "
            "distributed.worker.daemon=True) cannot start; set distributed.worker.daemon to False "
            "or use timeout_s=None"
        ) from exc
    sender.close()
    try:
        if receiver.poll(timeout_s):
            try:
                return receiver.recv()
            except EOFError:
                process.join(5)
                return LabelResult("crashed", "", reason=f"calculation process died (exit code {process.exitcode})")
        return LabelResult("timeout", "", reason="calculation process killed")
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
        process.join()


def _child_main(sender, fn: Callable[..., LabelResult], args: tuple) -> None:
    try:
        attempt = fn(*args)
    except BaseException as exc:
        attempt = LabelResult(
            "crashed", "", reason=f"{type(exc).__name__}: {exc}", metadata={"traceback": traceback.format_exc(limit=8)}
        )
    sender.send(attempt)
    sender.close()

