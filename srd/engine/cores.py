"""How many tiles a job may run at once: its share of the machine's cores, given how many jobs run now.

A lone photo should have the whole machine; a full queue one core per job, as before. The pool (main
process) writes how many jobs its workers hold into one shared integer; each worker reads it before every
tile, so a job that started alone drops back to its share at its next tile once other jobs start, and the
machine is oversubscribed for at most one tile's time.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.context import BaseContext
from typing import Protocol


class Count(Protocol):
    """A shared integer (a `multiprocessing` `RawValue`); one writer, the pool."""

    value: int


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under a systemd `CPUAffinity=`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def shared_count(context: BaseContext | None = None) -> Count:
    """A fresh shared integer at 0, to hand to worker processes when they start (it can't travel with a job)."""
    return (context or multiprocessing.get_context("forkserver")).RawValue("i", 0)


class CoreShare:
    """A job's share of `cores`: the cores split evenly among the jobs running now, at least one.

    With no `running` count the share is all of `cores` (one process on its own, or `cores=1` for a fixed
    thread count: today's one tile at a time). `widest` records the most tiles one job ran at once, for
    its result.
    """

    def __init__(self, cores: int = 1, running: Count | None = None) -> None:
        self.cores = max(1, cores)
        self._running = running
        self.widest = 0

    def lanes(self) -> int:
        """How many tiles the job may run at once now."""
        if self._running is None:
            return self.cores
        return max(1, self.cores // max(1, self._running.value))

    def publish(self, running: int) -> None:
        """Pool side: `running` jobs are held by workers now."""
        if self._running is not None:
            self._running.value = running

    def begin_job(self) -> None:
        self.widest = 0

    def note(self, in_flight: int) -> None:
        self.widest = max(self.widest, in_flight)
