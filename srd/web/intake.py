"""Receive one uploaded file into an inbox so that the daemon never sees it partial.

The bytes stream into a dot-prefixed temp file in the inbox root (the daemon ignores dot-files, and its
start-up purge of its own ``.srd-tmp-`` temps does not touch these), are fsynced, and only then get their
real name, by a hard link that fails rather than replace a file already there (then ``name-1.jpg`` …).
The inbox root is opened once with ``O_NOFOLLOW | O_DIRECTORY`` and every call is relative to that
descriptor, so an inbox swapped for a symlink is never written through (`srd.fs.safefs`).

The daemon's bomb guard is applied as soon as the first `HEADER_BYTES` arrive: a file that is not an
image srd reads, whose size can't be read with certainty, or that is over ``max_input_pixels`` is refused
there, before the rest of it is written anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from srd.fs import safefs
from srd.imaging.imageheader import read_header

UPLOAD_PREFIX = ".srd-upload-"
# As much of the head as the daemon's own header check reads (srd.daemon.HEADER_BYTES).
HEADER_BYTES = 256 * 1024
# Formats srd refuses whatever their size (floating-point).
_REFUSED_FORMATS = {"exr": "OpenEXR", "hdr": "Radiance HDR", "pfm": "PFM"}
# Filesystems without hard links answer with one of these: the name is then taken by a checked rename.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}
_JUST_CREATED_S = 2.0


class UploadRefused(ValueError):
    """This file can't be taken; the message says why and is shown to the user. `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """The limits every uploaded file is held to: the daemon's own, so nothing it would refuse is taken."""

    max_file_bytes: int
    max_input_pixels: int


@dataclass(frozen=True)
class Stored:
    """A file now in the inbox under `name`."""

    name: str
    size: int
    sha256: str


class IncomingFile:
    """One file being received: `write` its chunks, then `finish` (publish) or `abort` (leave no trace)."""

    def __init__(self, inbox: Path, name: str, limits: UploadLimits) -> None:
        self._inbox = inbox
        self._name = name
        self._limits = limits
        self._digest = hashlib.sha256()
        self._size = 0
        self._head = bytearray()
        self._checked = False
        self._dir = safefs.open_root(inbox)
        self._temp = f"{UPLOAD_PREFIX}{secrets.token_hex(8)}.part"
        try:
            fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                         dir_fd=self._dir)
        except BaseException:
            os.close(self._dir)
            raise
        # Held while this upload lives (the kernel drops it when the file is closed or the process dies), so
        # the start-up purge of another `srd web` can tell a live temp from one a killed server left.
        _try_lock(fd)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        """Append `data`; refuse the file as soon as it is over the size limit or its header fails the guard."""
        self._size += len(data)
        if self._size > self._limits.max_file_bytes:
            raise UploadRefused(f"{self._name} is over the limit of {self._limits.max_file_bytes} bytes", 413)
        if not self._checked:
            self._head += data[:HEADER_BYTES - len(self._head)]
            if len(self._head) >= HEADER_BYTES:
                self._check_header()
        self._digest.update(data)
        self._file.write(data)
        # Each chunk reaches the file now, so its mtime shows the upload alive (a live upload gets one at least
        # every web.upload_idle_timeout_s): what the start-up purge goes by on a filesystem without locks.
        self._file.flush()

    def finish(self) -> Stored:
        """Make the file visible in the inbox under its name (or ``name-N``) once it is durable."""
        if not self._checked:
            self._check_header()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = self._publish()
        with contextlib.suppress(OSError):
            os.fsync(self._dir)  # the new name survives a power cut (some shares can't sync a folder)
        os.close(self._dir)
        return Stored(name, self._size, self._digest.hexdigest())

    def abort(self) -> None:
        """Remove the temp file: a refused or broken-off upload leaves nothing behind."""
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._temp, dir_fd=self._dir)
        with contextlib.suppress(OSError):
            os.close(self._dir)

    def _check_header(self) -> None:
        self._checked = True
        header = read_header(bytes(self._head))
        if header is None:
            raise UploadRefused(f"{self._name} is not an image srd can read")
        if header.format in _REFUSED_FORMATS:
            raise UploadRefused(f"{self._name} is {_REFUSED_FORMATS[header.format]}: floating-point images are "
                                "not processed")
        if header.pixels is None:
            why = "is cut short" if header.cut else "does not state it with certainty"
            raise UploadRefused(f"the size of {self._name} can't be read: its {header.format} header {why}")
        if header.pixels > self._limits.max_input_pixels:
            raise UploadRefused(f"{self._name} is {header.width}×{header.height} pixels, over the limit of "
                                f"{self._limits.max_input_pixels} (max_input_pixels)", 413)

    def _publish(self) -> str:
        path = PurePosixPath(self._name)
        for n in range(1000):
            name = self._name if n == 0 else safefs.fit_name(path.stem, f"-{n}{path.suffix}")
            try:
                os.link(self._temp, name, src_dir_fd=self._dir, dst_dir_fd=self._dir, follow_symlinks=False)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                if _exists(self._dir, name):
                    continue
                # Between this look and the rename another writer may take the name: rare on a share
                # without hard links, and the rename then replaces a file that arrived in the same instant.
                os.rename(self._temp, name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
                return name
            os.unlink(self._temp, dir_fd=self._dir)
            return name
        raise UploadRefused(f"too many files named like {self._name} in the inbox", 409)


def _exists(folder: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def purge_stale_uploads(inbox: Path, idle_limit_s: float) -> int:
    """Remove the upload temps a killed `srd web` left in the inbox root; returns how many.

    A temp is left over when no process holds its lock (`IncomingFile`). Where the filesystem has no locks,
    it is left over once unwritten for twice `idle_limit_s`: a live upload is cut when idle that long.
    """
    removed = 0
    now = time.time()
    try:
        folder = safefs.open_root(inbox)
    except OSError:
        return 0  # an inbox that is missing now (a share not mounted) has nothing to purge
    try:
        for entry in os.scandir(folder):
            if entry.name.startswith(UPLOAD_PREFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    if _left_over(folder, entry.name, now, idle_limit_s):
                        os.unlink(entry.name, dir_fd=folder)
                        removed += 1
    finally:
        os.close(folder)
    return removed


def _left_over(folder: int, name: str, now: float, idle_limit_s: float) -> bool:
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder)
    try:
        age = now - os.fstat(fd).st_mtime
        if age < _JUST_CREATED_S:
            return False  # its owner may be between creating it and locking it
        locked = _try_lock(fd)
        return locked if locked is not None else age > 2 * idle_limit_s
    finally:
        os.close(fd)  # drops the lock taken here


def _try_lock(fd: int) -> bool | None:
    """Lock `fd` exclusively without waiting: True, False (another process holds it), None (no locks here)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True
