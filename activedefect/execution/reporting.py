"""Progress reporting from the loop to whoever watches it (the CLI's rich bars, a notebook,
or nobody). The loop only calls these three methods."""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("activedefect")


class Reporter(Protocol):
    def start(self, phase: str, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def message(self, text: str) -> None: ...


class LogReporter:
    """Reports through :mod:`logging` (the default outside the CLI)."""

    def start(self, phase: str, total: int) -> None:
        log.info("%s: %d tasks", phase, total)

    def advance(self, n: int = 1) -> None:
        return

    def message(self, text: str) -> None:
        log.info(text)
