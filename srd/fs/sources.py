"""Moving inbox files out after their job: archive, delete, or into the failed folder with a reason.

Moves never use ``shutil.move``: across filesystems it copies then deletes non-atomically, so a crash
could leave a half-copied file under its final name. Here a cross-device move is an atomic copy (temp
file, fsync, rename) followed by deleting the source, so the destination is complete or absent, and a
source that can't be deleted takes its copy back. Every access goes through `srd.fs.safefs`.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import secrets
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import structlog

from srd.errors import OutputError
from srd.fs import safefs
from srd.fs.atomic import TEMP_PREFIX, open_atomic, write_bytes_atomic

log = structlog.get_logger(__name__)

_COPY_CHUNK = 1 << 20
_REPORT_SUFFIX = ".error.json"


def _exists_at(folder: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _numbered(name: str) -> Iterator[str]:
    stem, suffix = Path(name).stem, Path(name).suffix
    yield safefs.fit_name(stem, suffix)
    for n in itertools.count(1):
        yield safefs.fit_name(f"{stem}-{n}", suffix)


def numbered_names(folder: Path, name: str) -> Iterator[Path]:
    """`folder/name`, then `name-1`, `name-2` … before the suffix, each cut to fit NAME_MAX: srd's one
    naming policy for collisions."""
    return (folder / candidate for candidate in _numbered(name))


def free_name(folder: int, name: str) -> str:
    """The first of `numbered_names` free in the open folder `folder` together with its reason-file name:
    so a reason file never lands on a moved input (one named ``a.png.error.json``), nor a moved input on
    a reason file."""
    return next(candidate for candidate in _numbered(name)
                if not _exists_at(folder, candidate) and not _exists_at(folder, report_name(candidate)))


def _copy_into(src: int, src_stat: os.stat_result, folder: int, name: str, target: Path) -> None:
    """Copy the open file `src` to `name` in the open folder `folder`, complete or not at all."""
    with open_atomic(target, folder=folder, mode=stat.S_IMODE(src_stat.st_mode)) as out:
        while chunk := os.read(src, _COPY_CHUNK):
            out.write(chunk)
    os.utime(name, ns=(src_stat.st_atime_ns, src_stat.st_mtime_ns), dir_fd=folder, follow_symlinks=False)


def move_file(src_root: Path, source: PurePath, dst_root: Path, folder: PurePosixPath, *,
              name: str | None = None) -> Path:
    """Move the regular file `source` (below `src_root`) into `folder` (below `dst_root`, created if
    missing) under a free name (its own, or `name`, numbered if taken); returns where it went.

    Both sides are reached through `srd.fs.safefs`, so no symlink is followed on either. The move is
    all-or-nothing even across filesystems: a rename where it can, else an atomic copy, then the source
    is unlinked, and if that fails (a read-only inbox) the copy is removed again, so that a retry never
    leaves a second copy behind.

    Raises:
        OSError: The move did not happen (the source is where it was, nothing was left in `folder`).
    """
    where = src_root / safefs.relative(src_root, source)
    wanted = name
    with safefs.parent_of(src_root, source) as (src_dir, name):
        src, src_stat = safefs.open_regular_at(src_dir, name, where)
        try:
            with safefs.opened_dir(dst_root, folder, create=True) as dst_dir:
                target_name = free_name(dst_dir, wanted or name)
                target = dst_root / folder / target_name
                try:
                    os.rename(name, target_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
                    return target
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise OSError(exc.errno, exc.strerror, str(where)) from exc
                try:
                    _copy_into(src, src_stat, dst_dir, target_name, target)
                except OutputError as exc:
                    raise OSError(exc.errno or errno.EIO, str(exc), str(target)) from exc
                _unlink_source_or_undo(src_dir, name, src_stat, where, dst_dir, target_name)
                return target
        finally:
            os.close(src)


def _unlink_source_or_undo(src_dir: int, name: str, copied: os.stat_result, where: Path, dst_dir: int,
                           target_name: str) -> None:
    """Finish a cross-filesystem move: unlink the source, or remove the copy if the source can't go (or
    is no longer the file that was copied)."""
    try:
        now = os.stat(name, dir_fd=src_dir, follow_symlinks=False)
        if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) != (
                copied.st_dev, copied.st_ino, copied.st_size, copied.st_mtime_ns):
            raise safefs.ChangedWhileOpening(where)
        os.unlink(name, dir_fd=src_dir)
    except OSError as exc:
        try:
            os.unlink(target_name, dir_fd=dst_dir)
        except OSError as undo:
            log.error("move_undo_failed", src=str(where), copy=target_name, error=str(undo))
        if isinstance(exc, safefs.ChangedWhileOpening):
            raise
        raise OSError(exc.errno, f"cannot remove the source after copying it: {exc.strerror}", str(where)) from exc


def link_or_copy(src_root: Path, source: Path, dst_root: Path, target: Path, *, replace: bool = False) -> str:
    """Give `target` (below `dst_root`) the content of `source` (below `src_root`): a hard link where
    possible, else an atomic copy; neither side follows a symlink.

    Args:
        replace: `target` may exist and is replaced atomically (linked under a temp name, then renamed
            over it), so a reader sees the old file or the new one, never none.

    Returns:
        ``linked`` or ``copied``.
    """
    with safefs.parent_of(src_root, source) as (src_dir, name):
        src, src_stat = safefs.open_regular_at(src_dir, name, source)
        try:
            with safefs.parent_of(dst_root, target, create=True) as (dst_dir, target_name):
                link = f"{TEMP_PREFIX}{target_name[:48]}.{secrets.token_hex(6)}" if replace else target_name
                try:
                    os.link(name, link, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
                    if replace:
                        os.replace(link, target_name, src_dir_fd=dst_dir, dst_dir_fd=dst_dir)
                    return "linked"
                except OSError as exc:
                    if replace:
                        with contextlib.suppress(OSError):
                            os.unlink(link, dir_fd=dst_dir)
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                        raise
                _copy_into(src, src_stat, dst_dir, target_name, target)
                return "copied"
        finally:
            os.close(src)


def archive_source(inbox: Path, rel: PurePosixPath, archive: Path) -> Path:
    """Move a processed source (`rel` in `inbox`) into the archive folder, mirroring its subfolder."""
    return move_file(inbox, rel, archive, rel.parent)


def fail_source(inbox: Path, rel: PurePosixPath, failed: Path, details: dict[str, Any]) -> Path:
    """Move a failed input (`rel` in `inbox`) into the failed folder with ``<name>.error.json`` beside it.

    The original file is *moved*, not copied: left in the inbox, a failed file would look pending
    forever and be retried at every restart. The reason file is written even if the source is gone.

    Returns:
        The path of the moved file (or where it would have gone).

    Raises:
        OSError, OutputError: The file could not be moved (it is still in the inbox) or the reason file
            not written.
    """
    source = inbox / rel
    try:
        target = move_file(inbox, rel, failed, rel.parent)
    except FileNotFoundError:
        if safefs.lexists(inbox, rel):
            raise  # it is the failed folder that is missing
        log.warning("failed_source_vanished", src=str(source))
        with safefs.opened_dir(failed, rel.parent, create=True) as folder:
            target = failed / rel.parent / free_name(folder, rel.name)
    report = {"source": str(source), "moved_to": str(target), "failed_at": _now(), **details}
    write_bytes_atomic(report_path(target), (json.dumps(report, indent=2) + "\n").encode(), root=failed)
    return target


def report_name(name: str) -> str:
    """The reason file's name for a failed file called `name`: ``<name>.error.json``, cut to fit NAME_MAX."""
    return safefs.fit_name(name, _REPORT_SUFFIX)


def report_path(failed_file: Path) -> Path:
    """Where the reason file for `failed_file` goes: ``<name>.error.json`` beside it.

    A name already near the 255-byte limit can't take the suffix, so its tail is cut and replaced by a
    short hash of the full name; the report's ``moved_to`` still names the file exactly.
    """
    return failed_file.with_name(report_name(failed_file.name))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
