"""Writing a big file from the compaction thread with little dirty data at any time.

A generation is hundreds of megabytes. Left to the kernel's writeback, its pages pile up dirty and are written
in bursts (and all of them at its closing fsync); the loop's fsync of each journal record then queues behind
that burst (ext4 commits the journal's metadata only once the data it orders is on disk), which stalled the
loop for over 100 ms. So the writer pushes out and waits for what it wrote every `DIRTY_LIMIT` bytes, from its
own thread: `sync_file_range` writes the pages without a journal commit, unlike `fdatasync`, which would make
every few megabytes a commit the loop's fsync has to wait for too.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from srd.ledger.files import write_all

# Bytes written before they are pushed to disk and waited for: a few milliseconds of a disk's writing.
DIRTY_LIMIT = 1024 * 1024
# Small writes (single records) are gathered into one write of this size.
_BUFFER = 256 * 1024
# sync_file_range(2) flags: wait for pages already being written, start the writing, wait for it.
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4


def _find_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range  # Linux only
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _find_sync_file_range()


def write_back(fd: int, offset: int, length: int) -> None:
    """Write the file's bytes at `offset` … `offset + length` to disk and wait for them (not its metadata: the
    file's closing fsync makes it durable)."""
    if _sync_file_range is None or _sync_file_range(fd, offset, length, _WAIT_BEFORE | _WRITE | _WAIT_AFTER):
        # Not Linux, or a filesystem that refuses it: a data sync bounds the dirty pages too, at a cost.
        os.fdatasync(fd)


class PacedFile:
    """A new file, written sequentially, whose dirty data stays under `DIRTY_LIMIT`; `finish` writes the rest.

    Use it as a context manager: leaving it closes the file (after `finish` or not).
    """

    def __init__(self, path: Path) -> None:
        """Create `path`, which must not exist."""
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._buffer = bytearray()
        self._written = 0  # bytes handed to the kernel
        self._synced = 0  # bytes written to disk

    def __enter__(self) -> PacedFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def tell(self) -> int:
        """The file's length so far (where the next write lands)."""
        return self._written + len(self._buffer)

    def write(self, data: bytes) -> None:
        """Append `data`."""
        if len(self._buffer) + len(data) < _BUFFER:
            self._buffer += data
            return
        self._flush()
        if len(data) < _BUFFER:
            self._buffer += data
        else:
            self._hand_over(data)

    def finish(self) -> None:
        """Write what is left and wait for it to reach the disk; the caller fsyncs the file (its metadata)."""
        self._flush()
        if self._written > self._synced:
            write_back(self._fd, self._synced, self._written - self._synced)
            self._synced = self._written

    def _flush(self) -> None:
        if self._buffer:
            self._hand_over(bytes(self._buffer))
            self._buffer.clear()

    def _hand_over(self, data: bytes) -> None:
        write_all(self._fd, data)
        self._written += len(data)
        if self._written - self._synced >= DIRTY_LIMIT:
            write_back(self._fd, self._synced, self._written - self._synced)
            self._synced = self._written
