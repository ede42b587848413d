"""Moving inbox files out after their job: archive, delete, or into the failed folder with a reason.

Moves never use ``shutil.move``: across filesystems it copies then deletes non-atomically, so a crash
could leave a half-copied file under its final name. Here a cross-device move is an atomic copy (temp
file, fsync, rename) followed by deleting the source, so the destination is complete or absent.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from srd.atomic import open_atomic, write_bytes_atomic

log = structlog.get_logger(__name__)

_COPY_CHUNK = 1 << 20


def free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or `name-1`, `name-2` … before the suffix, whichever doesn't exist yet."""
    candidate = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 0
    while os.path.lexists(candidate):
        n += 1
        candidate = folder / f"{stem}-{n}{suffix}"
    return candidate


def copy_atomic(source: Path, target: Path) -> None:
    """Copy `source` to `target` so that `target` appears complete or not at all."""
    with source.open("rb") as src, open_atomic(target) as dst:
        while chunk := src.read(_COPY_CHUNK):
            dst.write(chunk)
    shutil.copystat(source, target)


def move_file(source: Path, target: Path) -> None:
    """Move `source` to `target` (which must not exist), atomically even across filesystems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_atomic(source, target)
        source.unlink()


def link_or_copy(source: Path, target: Path) -> str:
    """Give `target` the content of `source`: a hard link where possible, else an atomic copy.

    Returns:
        ``linked`` or ``copied``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return "linked"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    copy_atomic(source, target)
    return "copied"


def archive_source(source: Path, archive: Path, rel: PurePosixPath) -> Path:
    """Move a processed source into the archive folder, mirroring its subfolder; returns where it went."""
    target = free_name(archive / rel.parent, rel.name)
    move_file(source, target)
    return target


def fail_source(source: Path, failed: Path, rel: PurePosixPath, details: dict[str, Any]) -> Path:
    """Move a failed input into the failed folder with ``<name>.error.json`` beside it.

    The original file is *moved*, not copied: left in the inbox, a failed file would look pending
    forever and be retried at every restart. The reason file is written even if the source is gone.

    Returns:
        The path of the moved file (or where it would have gone).
    """
    folder = failed / rel.parent
    folder.mkdir(parents=True, exist_ok=True)
    target = free_name(folder, rel.name)
    try:
        move_file(source, target)
    except FileNotFoundError:
        log.warning("failed_source_vanished", src=str(source))
    report = {"source": str(source), "moved_to": str(target), "failed_at": _now(), **details}
    write_bytes_atomic(target.with_name(target.name + ".error.json"), (json.dumps(report, indent=2) + "\n").encode())
    return target


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
