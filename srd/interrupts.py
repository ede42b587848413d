"""Stopping a command by signal: SIGTERM ends a batch like Ctrl-C, and neither cuts a critical step in half."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so that a batch stops the way Ctrl-C stops it (its pool
    closed, its summary printed). A BaseException, like KeyboardInterrupt, so per-job ``except Exception``
    boundaries let it through."""


def raise_on_sigterm() -> None:
    """Make SIGTERM raise `Terminated` in the main thread (its default action would end the process at once,
    without a summary and with the exit status of a killed process)."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Run the ``with`` body to its end even if SIGINT or SIGTERM arrives, then act on it as it would have been.

    A KeyboardInterrupt raised halfway through starting a worker process leaves a child that the pool
    doesn't know of: nothing kills it, and once this process exits and its semaphores are gone, the child
    fails to start with a traceback on the shared stderr. Python runs signal handlers in the main thread
    only, so elsewhere the body can't be interrupted and nothing is changed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, FrameType | None]] = []
    held: dict[int, Callable[[int, FrameType | None], Any]] = {}
    for stop in _STOP_SIGNALS:
        handler = signal.getsignal(stop)
        # Only Python handlers are held back: one installed outside Python (getsignal gives None) could not be
        # put back, and SIG_DFL/SIG_IGN act at once as they always did.
        if callable(handler):
            held[stop] = handler
            signal.signal(stop, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        for number, handler in held.items():
            signal.signal(number, handler)
    for number, frame in caught[:1]:
        held[number](number, frame)  # raises KeyboardInterrupt or Terminated; the daemon's handler sets its stop flag
