"""Moving inbox files out after their job: archive, delete, or into the failed folder with a reason.

Moves never use ``shutil.move``: across filesystems it copies then deletes non-atomically, so a crash
could leave a half-copied file under its final name. Here a cross-device move is an atomic copy (temp
file, fsync, rename) followed by deleting the source, so the destination is complete or absent.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import shutil
from datetime import UTC, datetime
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from srd.atomic import open_atomic, write_bytes_atomic

log = structlog.get_logger(__name__)

_COPY_CHUNK = 1 << 20
_NAME_MAX = 255
_REPORT_SUFFIX = ".error.json"


def numbered_names(folder: Path, name: str) -> Iterator[Path]:
    """`folder/name`, then `name-1`, `name-2` … before the suffix: srd's one naming policy for collisions."""
    yield folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    for n in itertools.count(1):
        yield folder / f"{stem}-{n}{suffix}"


def free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or `name-1`, `name-2` … before the suffix, whichever doesn't exist yet."""
    return next(path for path in numbered_names(folder, name) if not os.path.lexists(path))


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
    write_bytes_atomic(report_path(target), (json.dumps(report, indent=2) + "\n").encode())
    return target


def report_path(failed_file: Path) -> Path:
    """Where the reason file for `failed_file` goes: ``<name>.error.json`` beside it.

    A name already near the 255-byte limit can't take the suffix (the write would fail with
    ENAMETOOLONG), so its tail is cut and replaced by a short hash of the full name; the report's
    ``moved_to`` still names the file exactly.
    """
    name = failed_file.name
    if len(os.fsencode(name + _REPORT_SUFFIX)) <= _NAME_MAX:
        return failed_file.with_name(name + _REPORT_SUFFIX)
    tag = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    keep = _NAME_MAX - len(_REPORT_SUFFIX) - len(tag)
    head = os.fsencode(name)[:keep].decode("utf-8", errors="ignore")
    return failed_file.with_name(head + tag + _REPORT_SUFFIX)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
