"""Run independent pieces of work on a few threads, as many at once as a budget asked before each piece allows.

Inference in OpenCV (and onnxruntime) releases the GIL, so tiles on Python threads use several cores. A lane
is a slot for one piece at a time; its number picks the lane's own session (a `Net` is not thread-safe).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")


def run_in_lanes(items: Iterable[T], work: Callable[[T, int], None], budget: Callable[[], int], most: int) -> int:
    """Call `work(item, lane)` for every item, with at most `min(budget(), most)` calls running at once.

    The budget is asked again before each item starts, so a shrinking budget takes effect at the next item:
    no new item starts until the running ones fit it. With a budget of one, items run on the calling thread.
    The first error raised by `work` is raised here, once the items already running have ended.

    Returns:
        The most items that ran at once.
    """
    widest = 0
    free = list(range(most - 1, -1, -1))  # lane 0 is used first, so serial work always has the same session
    running: dict[Future[None], int] = {}
    threads: ThreadPoolExecutor | None = None

    def settle(until: int) -> None:
        while len(running) > until:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                free.append(running.pop(future))
                future.result()  # raises the piece's error

    try:
        for item in items:
            allowed = max(1, min(most, budget()))
            settle(allowed - 1)
            if allowed == 1:
                widest = max(widest, 1)
                work(item, 0)
                continue
            threads = threads or ThreadPoolExecutor(most, thread_name_prefix="srd-tile")
            lane = free.pop()
            running[threads.submit(work, item, lane)] = lane
            widest = max(widest, len(running))
        settle(0)
    finally:
        if threads is not None:
            threads.shutdown(wait=True, cancel_futures=True)
    return widest
