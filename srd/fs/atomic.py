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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

import structlog

from srd.errors import OutputError
from srd.fs import safefs

log = structlog.get_logger(__name__)

TEMP_PREFIX = ".srd-tmp-"
_SUFFIX_HEX = 12
_TEMP_RE = re.compile(re.escape(TEMP_PREFIX) + rf".*\.[0-9a-f]{{{_SUFFIX_HEX}}}", re.DOTALL)
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
    head = re.escape(f"{TEMP_PREFIX}{target.name[:_NAME_PART_MAX_CHARS]}.")
    pattern = re.compile(head + rf"[0-9a-f]{{{_SUFFIX_HEX}}}")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    return [target.parent / name for name in names if pattern.fullmatch(name)]


def _output_error(target: Path, action: str, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    return OutputError(f"cannot write {target}: {action} failed: {reason}", errno=exc.errno)


def _create_temp(folder: int, target: Path, mode: int | None) -> tuple[str, int]:
    """Create an exclusive temp file next to `target` (in the open folder `folder`); return its name and fd.

    O_EXCL guarantees the file is ours even if another writer (or a stale leftover) uses the same folder, and
    never follows a symlink planted under the temp's name. Creating with 0o666 lets the kernel apply the umask
    exactly as a plain ``open()`` would, without the process-wide (and thread-unsafe) ``os.umask`` dance.
    """
    stem = target.name[:_NAME_PART_MAX_CHARS]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for _ in range(_CREATE_ATTEMPTS):
        tmp = f"{TEMP_PREFIX}{stem}.{secrets.token_hex(_SUFFIX_HEX // 2)}"
        try:
            fd = os.open(tmp, flags, 0o666, dir_fd=folder)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _output_error(target, "creating a temp file", exc) from exc
        if mode is not None:
            try:
                os.fchmod(fd, mode)
            except OSError as exc:
                os.close(fd)
                _remove_quietly(folder, tmp, target)
                raise _output_error(target, "setting permissions", exc) from exc
        return tmp, fd
    raise OutputError(f"cannot write {target}: no free temp file name after {_CREATE_ATTEMPTS} attempts")


def _remove_quietly(folder: int, name: str, target: Path) -> None:
    try:
        os.unlink(name, dir_fd=folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("temp_remove_failed", path=str(target.parent / name), error=str(exc))


def _close_quietly(raw: BinaryIO) -> None:
    # Closing flushes what is still buffered; on the failure path that data is discarded anyway, and a
    # second error (disk still full) must not replace the one that got us here.
    with suppress(OSError):
        raw.close()


def open_folder(target: Path, root: Path | None) -> int:
    """A descriptor of `target`'s folder: below `root` through `srd.fs.safefs` (created if missing, never
    through a symlink), or, without a root, the folder as named (srd's own state and model folders).

    Raises:
        OutputError: The folder can't be opened (or created), naming `target` and the reason.
    """
    try:
        if root is not None:
            return safefs.open_dir(root, target.parent, create=True)
        return os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except ValueError as exc:
        raise OutputError(f"cannot write {target}: {exc}") from exc
    except OSError as exc:
        raise _output_error(target, "opening its folder", exc) from exc


def fsync_folder(folder: int, target: Path) -> None:
    """Make a rename in the open folder `folder` durable (where the filesystem can)."""
    try:
        os.fsync(folder)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise _output_error(target, "fsync of the folder", exc) from exc
        log.debug("dir_fsync_unsupported", folder=str(target.parent), error=str(exc))


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

    def fileno(self) -> int:
        """The temp file's descriptor (for metadata such as an extended attribute, set before the rename)."""
        return self._raw.fileno()


@contextmanager
def open_atomic(target: Path, *, mode: int | None = None, root: Path | None = None,
                folder: int | None = None, before_rename: Callable[[], None] | None = None) -> Iterator[AtomicFile]:
    """Stream bytes into `target` so that it appears complete or not at all.

    On a normal exit of the ``with`` block the data is flushed and fsynced, renamed over `target`, and the
    folder is fsynced. On any exception the temp file is removed and `target` is left as it was. The temp
    file, the rename and the fsync all act on one open descriptor of the folder, so a folder swapped for a
    symlink meanwhile is never written through.

    Args:
        target: Final path. Without `root` its folder must exist.
        mode: Exact permission bits for the new file. By default the file gets ``0o666 & ~umask``, like a
            plain ``open()``, not the 0600 that ``mkstemp`` would leave.
        root: The configured folder `target` lies below (an outbox, a failed folder): its folder is then
            opened (and created) component by component with `srd.fs.safefs`, refusing any symlink.
        folder: An already open descriptor of `target`'s folder to write in (the caller keeps it).
        before_rename: Called once the data is on disk, just before the rename; an exception it raises
            removes the temp file and leaves `target` as it was.

    Yields:
        An `AtomicFile` to ``write()`` to.

    Raises:
        OutputError: The folder can't be opened, or the temp file can't be created, written, synced or
            renamed, naming `target` and the reason. Exceptions raised by the caller's own code propagate
            unchanged.
    """
    target = Path(target)
    dir_fd = folder if folder is not None else open_folder(target, root)
    try:
        tmp, fd = _create_temp(dir_fd, target, mode)
        raw = os.fdopen(fd, "wb")
        try:
            yield AtomicFile(raw, target, target.parent / tmp)
            try:
                raw.flush()
                os.fsync(raw.fileno())
                # Network filesystems may report a failed write-back only at close.
                raw.close()
            except OSError as exc:
                raise _output_error(target, "flush to disk", exc) from exc
            if before_rename is not None:
                before_rename()
            try:
                os.replace(tmp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as exc:
                raise _output_error(target, "rename into place", exc) from exc
        except BaseException:
            _close_quietly(raw)
            _remove_quietly(dir_fd, tmp, target)
            raise
        fsync_folder(dir_fd, target)
    finally:
        if folder is None:
            os.close(dir_fd)


def write_bytes_atomic(target: Path, data: bytes, *, mode: int | None = None, root: Path | None = None,
                       before_rename: Callable[[], None] | None = None) -> None:
    """Write `data` to `target` atomically and durably.

    Args:
        target: Final path; without `root`, its folder must exist.
        data: The complete new content.
        mode: Exact permission bits; by default ``0o666 & ~umask``.
        root: The configured folder `target` lies below; see `open_atomic`.
        before_rename: A last check before `target` is replaced; see `open_atomic`.

    Raises:
        OutputError: The write failed; `target` is unchanged and no temp file is left behind.
    """
    with open_atomic(target, mode=mode, root=root, before_rename=before_rename) as fh:
        fh.write(data)


def clean_stale_temps(folder: Path, *, older_than_s: float = 0, recursive: bool = False) -> list[Path]:
    """Remove temp files left behind by interrupted atomic writes.

    A crash between creating a temp file and renaming it leaves a hidden orphan. Run this at startup (with
    the state-dir lock held, any temp is stale) or periodically with `older_than_s` set, so that writes still
    in progress in other workers are spared.

    Args:
        folder: Folder to scan; a missing folder has nothing to clean.
        older_than_s: Only remove temps whose mtime is at least this many seconds old.
        recursive: Also scan subfolders, each opened relative to its parent's descriptor without following
            a symlink, so a subfolder swapped for one mid-walk is never entered.

    Returns:
        The paths removed. Files that can't be removed are logged and skipped: a leftover temp must not stop
        the daemon.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("temp_scan_failed", folder=str(folder), error=str(exc))
        return []
    removed: list[Path] = []
    try:
        _clean_temps_in(fd, folder, time.time() - older_than_s, recursive, removed)
    finally:
        os.close(fd)
    return removed


def _clean_temps_in(fd: int, folder: Path, cutoff: float, recursive: bool, removed: list[Path]) -> None:
    try:
        with os.scandir(fd) as listing:
            entries = list(listing)
    except OSError as exc:
        log.warning("temp_scan_failed", folder=str(folder), error=str(exc))
        return
    for entry in entries:  # an outbox may hold a million outputs: no path object for those left alone
        try:
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    child = os.open(entry.name, safefs.DIR_FLAGS, dir_fd=fd)
                    try:
                        _clean_temps_in(child, folder / entry.name, cutoff, recursive, removed)
                    finally:
                        os.close(child)
                continue
            if not is_temp_name(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
            os.unlink(entry.name, dir_fd=fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("temp_remove_failed", path=str(folder / entry.name), error=str(exc))
            continue
        removed.append(folder / entry.name)
        log.info("stale_temp_removed", path=str(folder / entry.name))
