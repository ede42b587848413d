"""Blocking file work off the daemon's loop: a few threads, each inbox limited to a share of them.

Hashing a 10 GB file or reading from a hung NFS share can take minutes or forever. Done in the loop, it
stalls every other inbox and starves the systemd watchdog. `Offloader` runs such calls in daemon threads
(a thread stuck in the kernel can't be stopped, and must not keep the process alive at exit) and hands
their results back to the loop, which alone decides what they mean and writes the ledger. Each group
(an inbox) may occupy at most `per_group` threads, so one slow or hung share can't take all of them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Done:
    """A finished call: its `value`, or the exception it raised in `error`."""

    token: Any  # whatever the caller submitted it under
    value: Any = None
    error: BaseException | None = None


@dataclass(frozen=True)
class _Task:
    group: Hashable
    token: Hashable
    call: Callable[[], Any]


class Offloader:
    """Runs calls in `threads` daemon threads, at most `per_group` of them for one group at a time.

    Args:
        threads: Threads in all (started on first use).
        per_group: Most calls of one group running at once; the rest of that group waits its turn.
        wake: Called from a worker thread after each call, to cut the loop's sleep short.
    """

    def __init__(self, threads: int, per_group: int, wake: Callable[[], None]) -> None:
        if not 1 <= per_group <= threads:
            raise ValueError(f"per_group must be between 1 and threads ({threads}), got {per_group}")
        self._threads = threads
        self._per_group = per_group
        self._wake = wake
        self._cond = threading.Condition()
        self._waiting: dict[Hashable, deque[_Task]] = {}
        self._running: dict[Hashable, int] = {}
        self._done: list[Done] = []
        self._started = 0
        self._closed = False

    def submit(self, group: Hashable, token: Hashable, call: Callable[[], Any]) -> None:
        """Queue `call`; its `Done` comes back from `collect`, under `token`."""
        with self._cond:
            self._waiting.setdefault(group, deque()).append(_Task(group, token, call))
            if self._started < self._threads:
                self._started += 1
                threading.Thread(target=self._serve, name=f"srd-offload-{self._started}", daemon=True).start()
            self._cond.notify()

    def collect(self) -> list[Done]:
        """The calls finished since the last `collect`."""
        with self._cond:
            done, self._done = self._done, []
        return done

    def busy(self, group: Hashable) -> int:
        """Calls of `group` queued or running."""
        with self._cond:
            return len(self._waiting.get(group, ())) + self._running.get(group, 0)

    def close(self) -> None:
        """Start nothing more; calls still running are abandoned with their threads."""
        with self._cond:
            self._closed = True
            self._waiting.clear()
            self._cond.notify_all()

    def _next(self) -> _Task | None:
        """The oldest task of a group that has room (call with the lock held); round-robin over groups."""
        for group in list(self._waiting):
            queue = self._waiting[group]
            if queue and self._running.get(group, 0) < self._per_group:
                task = queue.popleft()
                # Move the group to the back, so a group with a long queue doesn't starve the others.
                del self._waiting[group]
                if queue:
                    self._waiting[group] = queue
                return task
        return None

    def _serve(self) -> None:
        while True:
            with self._cond:
                while (task := self._next()) is None:
                    if self._closed:
                        return
                    self._cond.wait()
                self._running[task.group] = self._running.get(task.group, 0) + 1
            try:
                done = Done(task.token, value=task.call())
            # Whatever the call raised belongs to the loop, which decides what it means for the file.
            except BaseException as exc:
                done = Done(task.token, error=exc)
            with self._cond:
                self._running[task.group] -= 1
                self._done.append(done)
                self._cond.notify_all()
            try:
                self._wake()
            except Exception:
                log.exception("offload_wake_failed")
