"""Giving the C heap's free pages back to the system after a compaction's big temporary arrays.

glibc serves allocations above its mmap threshold from mapped memory and returns them when freed, but raises
that threshold to the size of each such block freed; after that, a compaction's working arrays come from the
heap and their pages stay with the process when they are freed, unless it is asked to trim.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import cast


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return cast("Callable[[int], int]", ctypes.CDLL(None).malloc_trim)
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _find_malloc_trim()


def give_back_free_memory() -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim``; nothing elsewhere). Takes ~10 ms at a
    million entries' worth of freed arrays: call it off the loop."""
    if _malloc_trim is not None:
        _malloc_trim(0)
