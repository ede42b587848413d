"""What counts as a candidate file in an inbox, and a full walk of one (docs/design.md §3).

Both the native watcher and the poller hand their findings through the same `IgnoreRules`, and the
reconcile scan that backs up events uses `scan_inbox`, so every path into the daemon agrees on which
names are junk, which folders are never entered, and which special files are never opened.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from srd.daemon.settle import file_kind
from srd.fs import safefs
from srd.fs.atomic import is_temp_name
from srd.fs.fileversion import FileVersion

# Names that operating systems, NAS boxes, sync tools and browsers leave behind while (or instead of)
# delivering a real file. Dot-files also cover rsync's `.name.XXXXXX` and srd's own temp files.
DEFAULT_IGNORE = (
    ".*",
    "._*",
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    "@eaDir",
    "#recycle",
    ".stfolder",
    ".syncthing.*",
    "*.part",
    "*.crdownload",
    "*.tmp",
)


@dataclass(frozen=True, slots=True)
class FileSeen:
    """A regular file found in an inbox: its path relative to the inbox root and the version stat saw."""

    rel: PurePosixPath
    version: FileVersion


class IgnoreRules:
    """Decides which names an inbox never processes.

    The built-in OS-junk names match any path component case-insensitively (`Thumbs.db`, `THUMBS.DB`).
    A user pattern without a slash matches any single component (so `raw` prunes every folder called
    raw); one with a slash matches the whole path relative to the inbox (`scans/*.tif`). Patterns are
    matched on relative names only: matching absolute paths would depend on where the inbox lives.
    """

    def __init__(self, user_globs: Iterable[str] = ()) -> None:
        globs = tuple(user_globs)
        junk = _any_glob(p.lower() for p in DEFAULT_IGNORE)
        assert junk is not None  # DEFAULT_IGNORE is not empty
        self._junk = junk
        self._names = _any_glob(g for g in globs if "/" not in g)
        self._paths = _any_glob(g.strip("/") for g in globs if "/" in g)

    def ignores_name(self, name: str) -> bool:
        """Whether a single path component (a file or folder name) is ignored wherever it appears."""
        if is_temp_name(name) or self._junk.match(name.lower()):
            return True
        return self._names is not None and self._names.match(name) is not None

    def ignores_path(self, rel: str) -> bool:
        """Whether a pattern with a slash matches ``rel``, the whole POSIX path relative to the inbox."""
        return self._paths is not None and self._paths.match(rel) is not None

    def ignores(self, rel: PurePosixPath) -> bool:
        """Whether the file or folder at `rel` (relative to the inbox) is ignored, by any component."""
        return any(self.ignores_name(part) for part in rel.parts) or self.ignores_path(rel.as_posix())


def _any_glob(globs: Iterable[str]) -> re.Pattern[str] | None:
    """One compiled regex matching any of ``globs`` as `fnmatch.fnmatchcase` would (None if there are none):
    a poll of a large inbox checks every name, and one regex is several times faster than a loop of them."""
    patterns = [f"(?:{fnmatch.translate(g)})" for g in globs]
    return re.compile("|".join(patterns)) if patterns else None


SkipSink = Callable[[Path, str], None]


def classify(path: Path, root: Path) -> tuple[os.stat_result | None, str | None]:
    """Stat `path` (below inbox `root`) if it is a file the daemon may open; otherwise say why not.

    No symlink is ever followed, wherever it points: not the file itself, not a folder on its way, not
    the root (`srd.fs.safefs`). FIFOs, sockets and devices are never candidates either, since opening a
    FIFO blocks and a device is not an image.

    Returns:
        ``(stat, None)`` for a candidate; ``(None, reason)`` for a path that is never processed and
        deserves a log line; ``(None, None)`` for a folder or a path that is gone (nothing to say).
    """
    try:
        st = safefs.lstat(root, path)
    except safefs.SymlinkRefused:
        return None, safefs.NOT_FOLLOWED
    except (OSError, ValueError):
        return None, None
    if stat.S_ISLNK(st.st_mode):
        return None, safefs.NOT_FOLLOWED
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return (st if stat.S_ISREG(st.st_mode) else None), None
    return None, f"not a regular file: {file_kind(st.st_mode)}"


def candidate_stat(path: Path, root: Path) -> os.stat_result | None:
    """Stat `path` if it is a file the daemon may open, else None (`classify` says why)."""
    return classify(path, root)[0]


def scan_inbox(root: Path, rules: IgnoreRules, *, recursive: bool = True, start: Path | None = None,
               on_skip: SkipSink | None = None, on_unreadable: SkipSink | None = None) -> Iterator[FileSeen]:
    """Walk an inbox (or its subtree `start`) and yield every candidate file (see `scan_folders`)."""
    for prefix, files in scan_folders(root, rules, recursive=recursive, start=start, on_skip=on_skip,
                                      on_unreadable=on_unreadable):
        for name, version in files:
            yield FileSeen(PurePosixPath(prefix + name), version)


# Files of one folder as `scan_folders` yields them: its path relative to the inbox with a trailing slash
# ("" for the root), and each candidate's name with the version stat saw.
FolderFiles = tuple[str, list[tuple[str, FileVersion]]]


def scan_folders(root: Path, rules: IgnoreRules, *, recursive: bool = True, start: Path | None = None,
                 on_skip: SkipSink | None = None, on_unreadable: SkipSink | None = None) -> Iterator[FolderFiles]:
    """Walk an inbox (or its subtree `start`) and yield the candidate files of each folder that has some.

    Plain names and versions, no path objects: a restart walks every photo of a NAS library, and most of them
    are only compared with the ledger's stat cache.

    The walk holds a descriptor per level and opens each subfolder relative to its parent's without
    following symlinks (`srd.fs.safefs`), so a folder swapped for a symlink mid-walk is never entered.
    Ignored folders are pruned before descending; a subfolder that vanishes mid-walk is skipped.
    `on_skip` hears of each path that is never processed (symlinks, special files) and why;
    `on_unreadable` of each subfolder that can't be opened or listed (no permission, I/O error).

    Raises:
        FileNotFoundError: The inbox root itself is missing; the caller must not infer deletions.
        OSError: The root (or `start`) can't be opened or listed (e.g. a NAS outage, a symlink).
    """
    base = start or root
    base_rel = safefs.relative(root, base).as_posix() if base != root else ""
    if base_rel and rules.ignores(PurePosixPath(base_rel)):
        return
    fd = safefs.open_dir(root, PurePosixPath(base_rel))
    try:
        entries = _listing(fd)
    except BaseException:
        os.close(fd)
        raise
    # One frame per open level: (its descriptor, its relative path with a trailing slash, subfolders still
    # to enter). Only the current chain of folders is open, so the walk needs as many descriptors as the
    # tree is deep. A folder is entered only after its own name passed the rules.
    stack: list[tuple[int, str, list[str]]] = []
    prefix = base_rel + "/" if base_rel else ""
    try:
        while True:
            files, subfolders = _files_in(root, prefix, entries, rules, on_skip)
            if files:
                yield prefix, files
            stack.append((fd, prefix, subfolders if recursive else []))
            fd = -1
            while stack and fd < 0:
                parent, parent_prefix, pending = stack[-1]
                if not pending:
                    os.close(parent)
                    stack.pop()
                    continue
                name = pending.pop()
                prefix = parent_prefix + name + "/"
                try:
                    fd = os.open(name, safefs.DIR_FLAGS, dir_fd=parent)
                    entries = _listing(fd)
                except FileNotFoundError:
                    _close_quietly(fd)
                    fd = -1
                except OSError as exc:
                    _close_quietly(fd)
                    fd = -1
                    _report(on_skip if exc.errno in _LINK_ERRNOS else on_unreadable, root / prefix.rstrip("/"),
                            safefs.NOT_FOLLOWED if exc.errno in _LINK_ERRNOS else
                            f"folder can't be read: {exc.strerror or exc}")
            if fd < 0:
                return
    finally:  # also when the caller stops early: every descriptor still open is closed
        _close_quietly(fd)
        for parent, _, _ in stack:
            os.close(parent)


# A folder that turned into a symlink (ELOOP) or into a file (ENOTDIR) between the listing and the open.
_LINK_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR})


def _listing(fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(fd) as listing:
        return list(listing)


def _close_quietly(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def _report(sink: SkipSink | None, path: Path, reason: str) -> None:
    if sink is not None:
        sink(path, reason)


def _files_in(root: Path, prefix: str, entries: list[os.DirEntry[str]], rules: IgnoreRules,
              on_skip: SkipSink | None) -> tuple[list[tuple[str, FileVersion]], list[str]]:
    """The candidate files among one folder's `entries` (name and version), and its subfolders to enter."""
    files: list[tuple[str, FileVersion]] = []
    subfolders: list[str] = []
    for entry in entries:
        name = entry.name
        rel = prefix + name
        if rules.ignores_name(name) or rules.ignores_path(rel):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(name)
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # gone since the listing
        if stat.S_ISREG(st.st_mode):
            files.append((name, FileVersion(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)))
        elif stat.S_ISLNK(st.st_mode):
            _report(on_skip, root / rel, safefs.NOT_FOLLOWED)
        else:
            _report(on_skip, root / rel, f"not a regular file: {file_kind(st.st_mode)}")
    return files, subfolders
