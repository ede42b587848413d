"""What counts as a candidate file in an inbox, and a full walk of one (docs/design.md §3).

Both the native watcher and the poller hand their findings through the same `IgnoreRules`, and the
reconcile scan that backs up events uses `scan_inbox`, so every path into the daemon agrees on which
names are junk, which folders are never entered, and which special files are never opened.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from srd.atomic import is_temp_name
from srd.settle import file_kind

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
    """A regular file found in an inbox: its path relative to the inbox root and its stat signature."""

    rel: PurePosixPath
    size: int
    mtime_ns: int


class IgnoreRules:
    """Decides which names an inbox never processes.

    The built-in OS-junk names match any path component case-insensitively (`Thumbs.db`, `THUMBS.DB`).
    A user pattern without a slash matches any single component (so `raw` prunes every folder called
    raw); one with a slash matches the whole path relative to the inbox (`scans/*.tif`). Patterns are
    matched on relative names only: matching absolute paths would depend on where the inbox lives.
    """

    def __init__(self, user_globs: Iterable[str] = ()) -> None:
        globs = tuple(user_globs)
        self._junk = _any_glob(p.lower() for p in DEFAULT_IGNORE)
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


def is_inside(path: Path, root: Path) -> bool:
    """Whether `path` resolves to somewhere under `root` (both resolved; symlinks followed)."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    root = root.resolve()
    return resolved == root or root in resolved.parents


SkipSink = Callable[[Path, str], None]

def classify(path: Path, root: Path) -> tuple[os.stat_result | None, str | None]:
    """Stat `path` if it is a file the daemon may open; otherwise say why not.

    Symlinks are followed only when they stay inside the inbox; FIFOs, sockets and devices are never
    candidates, since opening a FIFO blocks and a device is not an image.

    Returns:
        ``(stat, None)`` for a candidate; ``(None, reason)`` for a path that is never processed and
        deserves a log line; ``(None, None)`` for a folder or a path that is gone (nothing to say).
    """
    try:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            try:
                path.resolve(strict=True)
            except (OSError, RuntimeError):
                return None, "symlink that can't be resolved (a loop, or its target is missing): not followed"
            if not is_inside(path, root):
                return None, "symlink to a file outside the inbox: not followed"
            st = path.stat()
    except OSError:
        return None, None
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return (st if stat.S_ISREG(st.st_mode) else None), None
    return None, f"not a regular file: {file_kind(st.st_mode)}"


def candidate_stat(path: Path, root: Path) -> os.stat_result | None:
    """Stat `path` if it is a file the daemon may open, else None (`classify` says why)."""
    return classify(path, root)[0]


def scan_inbox(root: Path, rules: IgnoreRules, *, recursive: bool = True, start: Path | None = None,
               on_skip: SkipSink | None = None) -> Iterator[FileSeen]:
    """Walk an inbox (or its subtree `start`) and yield every candidate file.

    Ignored folders are pruned before descending, symlinked folders are never entered (loops, and
    trees outside the inbox), and a subfolder that vanishes or can't be read mid-walk is skipped.
    `on_skip` hears of each path that is never processed (special files, links leading out) and why.

    Raises:
        FileNotFoundError: The inbox root itself is missing; the caller must not infer deletions.
        OSError: The root can't be listed (e.g. a NAS outage).
    """
    base = start or root
    if not root.is_dir():
        raise FileNotFoundError(f"inbox {root} is missing")
    base_rel = "" if base == root else base.relative_to(root).as_posix()
    if base_rel and rules.ignores(PurePosixPath(base_rel)):
        return
    # (folder, its path relative to the root with a trailing slash): a folder is pushed only after its
    # own name passed the rules, so each entry needs only its own name and the whole-path patterns checked.
    stack = [(base, base_rel + "/" if base_rel else "")]
    first = True
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            if first:
                raise
            continue
        first = False
        for entry in entries:
            rel = prefix + entry.name
            if rules.ignores_name(entry.name) or rules.ignores_path(rel):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        stack.append((Path(entry.path), rel + "/"))
                    continue
                # A plain file costs one lstat; symlinks and special files take the careful path.
                st = entry.stat(follow_symlinks=False) if entry.is_file(follow_symlinks=False) else None
            except OSError:
                continue  # gone since the listing
            if st is None:
                st, reason = classify(Path(entry.path), root)
                if st is None:
                    if reason is not None and on_skip is not None:
                        on_skip(Path(entry.path), reason)
                    continue
            yield FileSeen(PurePosixPath(rel), st.st_size, st.st_mtime_ns)
