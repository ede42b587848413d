"""Hold a Ctrl-C back until a step that must not be cut in half is done."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Run the ``with`` body to its end even if SIGINT arrives, then act on that SIGINT as it would have been.

    A KeyboardInterrupt raised halfway through starting a worker process leaves a child that the pool
    doesn't know of: nothing kills it, and once this process exits and its semaphores are gone, the child
    fails to start with a traceback on the shared stderr. Python runs signal handlers in the main thread
    only, so elsewhere the body can't be interrupted and nothing is changed.
    """
    # A handler installed outside Python (getsignal gives None) could not be put back.
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    caught: list[tuple[int, FrameType | None]] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):
        previous(*caught[0])  # default_int_handler raises KeyboardInterrupt; the daemon's sets its stop flag
