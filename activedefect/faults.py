"""Test-only crash points: ``ACTIVEDEFECT_KILL_AT=name[:n]`` makes the process SIGKILL
itself the n-th time (default 1st) it passes ``crash_point(name)``.

The reliability tests use this to stop a driver at exact places (mid label batch, mid
training, between a store's data and its commit marker) and then resume it. Unset, it
costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "ACTIVEDEFECT_KILL_AT"
_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    target = os.environ.get(ENV)
    if not target:
        return
    point, _, count = target.rpartition(":")
    if not count.isdigit():
        point, count = target, "1"
    if point != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= int(count):
        os.kill(os.getpid(), signal.SIGKILL)
