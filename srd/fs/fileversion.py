"""Which version of a file a stat describes: the identity every "has it changed?" question in srd compares.

Size and mtime alone do not tell versions apart: ``cp -p``, rsync, unzip and scanners that write fixed-size
BMP/TIFF files all produce new content with the size and mtime of the old. The inode changes when a file is
replaced by a rename (how rsync, unzip and most savers write), and the ctime changes on every write and
every ``utime`` (which is how ``cp -p`` restores the old mtime), and neither can be set by the writer. So a
version is ``(size, mtime_ns, ino, ctime_ns)``.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class FileVersion(NamedTuple):
    """One version of a file as stat saw it; equal versions mean nothing was written in between."""

    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileVersion:
        """The version a stat result describes."""
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    def unwritten_since(self, earlier: FileVersion) -> bool:
        """The same file as `earlier`, no byte written since as far as a writer shows it (every write moves the
        mtime): only its ctime may differ, which a chmod, an xattr or a new hard link moves too. Enough where
        what follows hashes the bytes it reads; not a proof that they are the same."""
        return self._replace(ctime_ns=0) == earlier._replace(ctime_ns=0)


def version_of(path: os.PathLike[str] | str) -> FileVersion | None:
    """The version of the file at `path` now (symlinks followed, as opening it would); None if it is gone."""
    try:
        return FileVersion.of(os.stat(path))
    except FileNotFoundError:
        return None
