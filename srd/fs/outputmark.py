"""A mark on each output naming the source srd wrote it for, so srd knows its own files without its ledger.

The ledger's owner table is the first answer to "may srd replace this output?". The mark, an extended
attribute on the output file itself, answers it when the ledger forgot: entries lost with a damaged journal,
or a state dir started afresh. Without it, reprocessing ``a.jpg`` would write ``a-1.jpg`` beside srd's own
earlier ``a.jpg``. It needs no sidecar file; where the filesystem has no user xattrs (some NAS shares) it is
simply absent and only the ledger answers.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import structlog

from srd.fs import safefs

log = structlog.get_logger(__name__)

MARK = "user.srd.source"


def mark_value(inbox: str, source: PurePosixPath) -> bytes:
    """The mark naming inbox file `source` of `inbox`."""
    return os.fsencode(inbox) + b"\0" + os.fsencode(source.as_posix())


def set_mark(fd: int, value: bytes, output: Path) -> None:
    """Put mark `value` on the open file `fd` (the output, or its temp file before the rename; best effort)."""
    try:
        os.setxattr(fd, MARK, value)
    except OSError as exc:  # ENOTSUP and the like: the ledger still knows
        log.debug("output_mark_failed", output=str(output), error=str(exc))


def mark_output(outbox: Path, output: Path, inbox: str, source: PurePosixPath) -> None:
    """Record on `output` (below `outbox`) which inbox file it was written for (best effort)."""
    try:
        fd = safefs.open_regular(outbox, output)[0]
    except OSError as exc:
        log.debug("output_mark_failed", output=str(output), error=str(exc))
        return
    try:
        set_mark(fd, mark_value(inbox, source), output)
    finally:
        os.close(fd)


def marked_for(outbox: Path, output: Path) -> tuple[str, str] | None:
    """The (inbox, source) the mark on `output` (below `outbox`) names, or None if it has none."""
    try:
        fd = safefs.open_regular(outbox, output)[0]
    except OSError:
        return None
    return _read_mark(fd)


def marked_at(folder: int, name: str, output: Path) -> tuple[str, str] | None:
    """`marked_for` of the file `name` in the open folder `folder` (`output` names it in messages)."""
    try:
        fd = safefs.open_regular_at(folder, name, output)[0]
    except OSError:
        return None
    return _read_mark(fd)


def _read_mark(fd: int) -> tuple[str, str] | None:
    """The mark on the open file `fd`, which this closes."""
    try:
        value = os.getxattr(fd, MARK)
    except OSError:
        return None
    finally:
        os.close(fd)
    inbox, sep, source = value.partition(b"\0")
    return (os.fsdecode(inbox), os.fsdecode(source)) if sep else None
