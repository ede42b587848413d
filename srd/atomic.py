"""Durable atomic file writes (docs/design.md §4).

A reader of the target (a user, the ledger loader, the folder watcher) must see either the old file or the
complete new one, never a partial write, even across a crash or power loss. So every write goes to a temp
file in the target's own folder (``os.replace`` is only atomic within one filesystem), is fsynced, renamed
over the target, and the folder is fsynced so that the rename itself is durable.

Temp files are dot-prefixed and follow one recognisable pattern, so the watcher can ignore them and the daemon
can purge leftovers of a crash at startup with `clean_stale_temps`.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import structlog

from srd.errors import OutputError

log = structlog.get_logger(__name__)

TEMP_PREFIX = ".srd-tmp-"
_SUFFIX_HEX = 12
_TEMP_RE = re.compile(re.escape(TEMP_PREFIX) + r".*\.[0-9a-f]{%d}" % _SUFFIX_HEX, re.DOTALL)
# Keeps temp names well under the 255-byte NAME_MAX even for 4-byte UTF-8 characters.
_NAME_PART_MAX_CHARS = 48
_CREATE_ATTEMPTS = 8
# Filesystems that cannot fsync a directory (some FUSE and network mounts) report one of these; the rename
# has already happened, so there is nothing better to do than carry on.
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF}


def is_temp_name(name: str) -> bool:
    """Tell whether a file name is one of srd's atomic-write temp files.

    Args:
        name: A bare file name (not a path).

    Returns:
        True for names made by this module, so watchers can skip them and cleanup can find them.
    """
    return _TEMP_RE.fullmatch(name) is not None


def temp_files_of(target: Path) -> list[Path]:
    """The temp files an interrupted `open_atomic(target)` may have left beside `target`.

    Names keep only the first 48 characters of the target's, so two long names sharing that head
    share their temps' pattern too; callers that care check for such a neighbour.
    """
    pattern = re.compile(re.escape(f"{TEMP_PREFIX}{target.name[:_NAME_PART_MAX_CHARS]}.") + r"[0-9a-f]{%d}" % _SUFFIX_HEX)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    return [target.parent / name for name in names if pattern.fullmatch(name)]


def _output_error(target: Path, action: str, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    return OutputError(f"cannot write {target}: {action} failed: {reason}", errno=exc.errno)


def _create_temp(target: Path, mode: int | None) -> tuple[Path, int]:
    """Create an exclusive temp file next to `target` and return its path and descriptor.

    O_EXCL guarantees the file is ours even if another writer (or a stale leftover) uses the same folder.
    Creating with 0o666 lets the kernel apply the umask exactly as a plain ``open()`` would, without the
    process-wide (and thread-unsafe) ``os.umask`` read-and-restore dance.
    """
    stem = target.name[:_NAME_PART_MAX_CHARS]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for _ in range(_CREATE_ATTEMPTS):
        tmp = target.parent / f"{TEMP_PREFIX}{stem}.{secrets.token_hex(_SUFFIX_HEX // 2)}"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _output_error(target, "creating a temp file", exc) from exc
        if mode is not None:
            try:
                os.fchmod(fd, mode)
            except OSError as exc:
                os.close(fd)
                _remove_quietly(tmp)
                raise _output_error(target, "setting permissions", exc) from exc
        return tmp, fd
    raise OutputError(f"cannot write {target}: no free temp file name after {_CREATE_ATTEMPTS} attempts")


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("temp_remove_failed", path=str(path), error=str(exc))


def _close_quietly(raw: BinaryIO) -> None:
    # Closing flushes what is still buffered; on the failure path that data is discarded anyway, and a
    # second error (disk still full) must not replace the one that got us here.
    try:
        raw.close()
    except OSError:
        pass


def _fsync_dir(folder: Path, target: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _output_error(target, "opening the folder to fsync it", exc) from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise _output_error(target, "fsync of the folder", exc) from exc
        log.debug("dir_fsync_unsupported", folder=str(folder), error=str(exc))
    finally:
        os.close(fd)


class AtomicFile:
    """Binary write handle yielded by `open_atomic`.

    It wraps the real file so that storage errors while writing (disk full, quota, I/O error) become an
    `OutputError` naming the *target*, while any other exception raised in the caller's ``with`` body (a
    network error during a download, say) passes through unchanged and keeps its own meaning.
    """

    def __init__(self, raw: BinaryIO, target: Path, temp_path: Path) -> None:
        self._raw = raw
        self.target = target
        self.temp_path = temp_path

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write bytes to the temp file; see `open_atomic` for when they become visible."""
        try:
            return self._raw.write(data)
        except OSError as exc:
            raise _output_error(self.target, "write", exc) from exc

    def tell(self) -> int:
        """Return the number of bytes written so far."""
        return self._raw.tell()


@contextmanager
def open_atomic(target: Path, *, mode: int | None = None) -> Iterator[AtomicFile]:
    """Stream bytes into `target` so that it appears complete or not at all.

    On a normal exit of the ``with`` block the data is flushed and fsynced, renamed over `target`, and the
    folder is fsynced. On any exception the temp file is removed and `target` is left as it was.

    Args:
        target: Final path; its folder must exist (the temp file is created there).
        mode: Exact permission bits for the new file. By default the file gets ``0o666 & ~umask``, like a
            plain ``open()``, not the 0600 that ``mkstemp`` would leave.

    Yields:
        An `AtomicFile` to ``write()`` to.

    Raises:
        OutputError: The temp file can't be created, written, synced or renamed, naming `target` and the
            reason. Exceptions raised by the caller's own code propagate unchanged.
    """
    target = Path(target)
    tmp, fd = _create_temp(target, mode)
    raw = os.fdopen(fd, "wb")
    try:
        yield AtomicFile(raw, target, tmp)
        try:
            raw.flush()
            os.fsync(raw.fileno())
            # Network filesystems may report a failed write-back only at close.
            raw.close()
        except OSError as exc:
            raise _output_error(target, "flush to disk", exc) from exc
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise _output_error(target, "rename into place", exc) from exc
    except BaseException:
        _close_quietly(raw)
        _remove_quietly(tmp)
        raise
    _fsync_dir(target.parent, target)


def write_bytes_atomic(target: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to `target` atomically and durably.

    Args:
        target: Final path; its folder must exist.
        data: The complete new content.
        mode: Exact permission bits; by default ``0o666 & ~umask``.

    Raises:
        OutputError: The write failed; `target` is unchanged and no temp file is left behind.
    """
    with open_atomic(target, mode=mode) as fh:
        fh.write(data)


def clean_stale_temps(folder: Path, *, older_than_s: float = 0, recursive: bool = False) -> list[Path]:
    """Remove temp files left behind by interrupted atomic writes.

    A crash between creating a temp file and renaming it leaves a hidden orphan. Run this at startup (with
    the state-dir lock held, any temp is stale) or periodically with `older_than_s` set, so that writes still
    in progress in other workers are spared.

    Args:
        folder: Folder to scan; a missing folder has nothing to clean.
        older_than_s: Only remove temps whose mtime is at least this many seconds old.
        recursive: Also scan subfolders (symlinks to folders are not followed).

    Returns:
        The paths removed. Files that can't be removed are logged and skipped: a leftover temp must not stop
        the daemon.
    """
    removed: list[Path] = []
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    except OSError as exc:
        log.warning("temp_scan_failed", folder=str(folder), error=str(exc))
        return removed
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    removed.extend(clean_stale_temps(Path(entry.path), older_than_s=older_than_s, recursive=True))
                continue
            if not is_temp_name(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("temp_remove_failed", path=entry.path, error=str(exc))
            continue
        removed.append(Path(entry.path))
        log.info("stale_temp_removed", path=entry.path)
    return removed
