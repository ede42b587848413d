"""A pass-through FUSE filesystem that hangs chosen calls, like a share whose server stops answering.

    python tests/hangfs.py BACKING MOUNTPOINT HOLD OP:PREFIX [OP:PREFIX ...]

Every call is passed to BACKING, except that while the file HOLD exists (outside the mount), the calls
named by a rule (``unlink:hang`` names unlinking any file whose name starts with ``hang``) block until
it is removed (``*:`` names every call). Only calls on a file or folder with content hang, so that a writer
can still create and fill a file.
It runs in the foreground until unmounted (``fusermount3 -u MOUNTPOINT``).
A real hung NFS or SMB mount looks the same to its callers: the system call simply does not return.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path
from typing import Any

import mfusepy


class HangFS(mfusepy.Operations):
    """Pass-through to `backing`, hanging the calls `rules` name ({operation: name prefix})."""

    use_ns = True

    def __init__(self, backing: Path, hold: Path, rules: dict[str, str]) -> None:
        self._backing = backing
        self._hold = hold
        self._rules = rules

    def _real(self, path: str, op: str) -> str:
        real = str(self._backing) + path
        prefix = self._rules.get(op, self._rules.get("*"))
        if prefix is not None and os.path.basename(path).startswith(prefix) and _has_content(real):
            while self._hold.exists():  # the caller's system call doesn't return meanwhile
                time.sleep(0.05)
        return real

    def _call(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except OSError as exc:
            raise mfusepy.FuseOSError(exc.errno or errno.EIO) from exc

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = self._call(os.lstat, self._real(path, "getattr"))
        found = {key: getattr(st, key) for key in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino")}
        # With `use_ns`, times are whole nanoseconds.
        return found | {key: getattr(st, key + "_ns") for key in ("st_atime", "st_mtime", "st_ctime")}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *self._call(os.listdir, self._real(path, "readdir"))]

    def open(self, path: str, flags: int) -> int:
        return int(self._call(os.open, self._real(path, "open"), flags))

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return int(self._call(os.open, self._real(path, "create"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return bytes(self._call(os.pread, fh, size, offset))

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return int(self._call(os.pwrite, fh, data, offset))

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self._call(os.truncate, self._real(path, "truncate"), length)

    def flush(self, path: str, fh: int) -> None:
        return None

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        self._call(os.fsync, fh)

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def unlink(self, path: str) -> None:
        self._call(os.unlink, self._real(path, "unlink"))

    def rename(self, old: str, new: str) -> None:
        self._call(os.rename, self._real(old, "rename"), self._real(new, "rename"))

    def link(self, target: str, source: str) -> None:
        self._call(os.link, self._real(source, "link"), self._real(target, "link"))

    def mkdir(self, path: str, mode: int) -> None:
        self._call(os.mkdir, self._real(path, "mkdir"), mode)

    def rmdir(self, path: str) -> None:
        self._call(os.rmdir, self._real(path, "rmdir"))

    def chmod(self, path: str, mode: int) -> None:
        self._call(os.chmod, self._real(path, "chmod"), mode)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        real = self._real(path, "utimens")
        self._call(lambda: os.utime(real) if times is None else os.utime(real, ns=times))

    def statfs(self, path: str) -> dict[str, Any]:
        st = os.statvfs(self._real(path, "statfs"))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                "f_frsize", "f_namemax")
        return {key: getattr(st, key) for key in keys}


def _has_content(path: str) -> bool:
    try:
        return os.lstat(path).st_size > 0
    except OSError:
        return False


def main(argv: list[str]) -> None:
    backing, mountpoint, hold, *specs = argv
    rules = dict(spec.split(":", 1) for spec in specs)
    mfusepy.FUSE(HangFS(Path(backing), Path(hold), rules), mountpoint, foreground=True, nothreads=False)


if __name__ == "__main__":
    main(sys.argv[1:])
