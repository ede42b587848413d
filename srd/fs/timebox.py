"""Run a call that may block on a share that stops answering, waiting for it only so long.

A system call on a hung NFS, SMB or FUSE mount does not return and can't be interrupted; the only way
not to wait with it is to make it in another thread. `timeboxed` does that and gives up after a
deadline, leaving the thread behind (a daemon thread, so it never keeps the process alive). For calls
that are made once or rarely (checking a config's folders, releasing claims at exit); the daemon's
recurring file work goes through `srd.daemon.offload`.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class NoAnswer(TimeoutError):
    """The call did not return in time (its thread is still waiting)."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(errno.ETIMEDOUT, f"{what} did not answer within {seconds:g} s (a hung share?)")


def timeboxed(call: Callable[[], T], seconds: float, what: str) -> T:
    """`call()`'s result, or what it raised, if it returns within `seconds`.

    Raises:
        NoAnswer: It did not (`what` names it in the message).
    """
    outcome: list[tuple[bool, object]] = []
    finished = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the caller, who decides what it means
            outcome.append((False, exc))
        finished.set()

    threading.Thread(target=run, name=f"srd-timebox-{what}"[:60], daemon=True).start()
    if not finished.wait(seconds):
        raise NoAnswer(what, seconds)
    returned, value = outcome[0]
    if not returned:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]
