"""The state directory's files: their names, the owner's lock, and how bytes reach them."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from srd.errors import LockedError, StateDirError

SNAPSHOT_NAME = "ledger.json"
PREVIOUS_SNAPSHOT_NAME = "ledger.json.prev"
JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = "lock"


def journal_line(record: dict[str, Any]) -> bytes:
    """A record as one journal line: compact JSON and its newline, the mark of a whole write."""
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def write_all(fd: int, payload: bytes) -> None:
    """Write all of `payload`, however many writes it takes."""
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def acquire_lock(path: Path) -> int:
    """Take the state-dir lock and write our pid into it; the kernel releases it if we die."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = pid_in_lock(os.pread(fd, 32, 0))
        os.close(fd)
        by = "" if holder is None else f" (pid {holder})"
        raise LockedError(f"state directory {path.parent} is in use by another srd instance{by}") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, lock_text(), 0)
    return fd


def pid_in_lock(content: bytes) -> int | None:
    """The pid a lock file's first bytes name (its last holder's), or None if they name none."""
    text = content[:32].decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def lock_text() -> bytes:
    """What the lock file of a state directory this process holds says: its pid."""
    return f"{os.getpid()}\n".encode()


def require_state_dir(state_dir: Path) -> None:
    """Refuse a state directory that is missing or not a folder: reading or editing a ledger never makes one,
    so a wrong config is an error, not an empty ledger or a new folder left behind.

    Raises:
        StateDirError: `state_dir` is missing, not a folder, or can't be looked at.
    """
    try:
        if Path(state_dir).is_dir():
            return
        os.stat(state_dir)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise StateDirError(f"no ledger in {state_dir}: the folder does not exist (srd run makes it when it "
                                "first runs with this state_dir; is this the config it runs with?)") from exc
        raise StateDirError(f"cannot read the ledger in {state_dir}: {exc.strerror or exc}") from exc
    raise StateDirError(f"no ledger in {state_dir}: it is not a folder")


@contextlib.contextmanager
def reading(state_dir: Path) -> Iterator[None]:
    """Report a file of the ledger that can't be read (no permission, a folder in its place) as the state
    directory's fault, in one line."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise StateDirError(f"cannot read the ledger in {state_dir}: {exc.strerror or exc}{where}") from exc

