"""Access to files under a configured folder that can never follow a symlink in any path component.

Inboxes, outboxes, failed and archive folders may be tidied by other people, who can swap any
sub-folder for a symlink at any moment. Checking a path and then using it proves nothing about the
moment of use, so every access here is made relative to directory descriptors: the configured root is
opened with ``O_NOFOLLOW | O_DIRECTORY`` (only the components *above* the root, which the administrator
chose, are resolved normally), then each component below it the same way relative to its parent's
descriptor, and the final name is stat'ed, opened, renamed or unlinked relative to the last one. A
symlink anywhere below the root makes the access fail with `SymlinkRefused`; what was opened is checked
to be what was stat'ed (st_dev, st_ino).

Every function takes the root and a path below it, absolute (``root / rel``) or relative.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePath, PurePosixPath

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in between the stat and the open must not block the reader.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NOT_FOLLOWED = "symlink: not followed"
NAME_MAX = 255


class SymlinkRefused(OSError):
    """A path component below a configured root is a symlink (or the root itself is one)."""

    def __init__(self, path: str | PurePath) -> None:
        super().__init__(errno.ELOOP, NOT_FOLLOWED, str(path))


class ChangedWhileOpening(OSError):
    """The file opened is not the one just stat'ed: it was swapped in between."""

    def __init__(self, path: str | PurePath) -> None:
        super().__init__(errno.ESTALE, "replaced while being opened", str(path))


def relative(root: Path, path: PurePath) -> PurePosixPath:
    """`path` as a path relative to `root` (it may already be relative); refuses ``..`` and paths outside.

    Raises:
        ValueError: `path` is not below `root`, or climbs out with ``..``.
    """
    return PurePosixPath(*_parts(root, path))


def _parts(root: Path, path: PurePath | str) -> tuple[str, ...]:
    """The components of `path` below `root` (string work only: pathlib's parsing would cost more than
    the system calls of an access)."""
    text = os.fspath(path)
    if text.startswith("/"):
        base = os.fspath(root).rstrip("/")
        if text.rstrip("/") == base:
            return ()
        if not text.startswith(base + "/"):
            raise ValueError(f"{text} is not below {root}")
        text = text[len(base) + 1:]
    parts = tuple(part for part in text.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ValueError(f"{path} climbs out of {root}")
    return parts


def _join(root: Path, parts: tuple[str, ...]) -> str:
    return "/".join((os.fspath(root).rstrip("/"), *parts))


@contextmanager
def _naming(where: str) -> Iterator[None]:
    """Make errors of calls relative to a descriptor name the whole path, as path-based calls would
    (callers tell "the outbox refused" from "the input is bad" by the path in the error)."""
    try:
        yield
    except (SymlinkRefused, ChangedWhileOpening):
        raise
    except OSError as exc:
        if exc.filename is not None and os.fsdecode(exc.filename) == where:
            raise
        raise OSError(exc.errno, exc.strerror, where) from exc


def fit_name(stem: str, suffix: str = "") -> str:
    """``stem + suffix``, or, where that exceeds the 255-byte NAME_MAX, `stem` cut short and tagged with a
    short hash of the full name, so that the suffix (an extension, ``-1``, ``.error.json``) always fits and
    two long names that share a head stay distinct."""
    full = stem + suffix
    if len(os.fsencode(full)) <= NAME_MAX:
        return full
    tag = "~" + hashlib.sha256(os.fsencode(full)).hexdigest()[:8]
    keep = NAME_MAX - len(os.fsencode(suffix)) - len(tag)
    head = os.fsencode(stem)[:keep].decode("utf-8", errors="ignore")
    return head + tag + suffix


def open_root(root: Path) -> int:
    """Open a configured root folder itself, refusing a root that is a symlink.

    Raises:
        SymlinkRefused: The root is a symlink.
        OSError: It is missing, not a folder, or can't be opened.
    """
    try:
        return os.open(root, DIR_FLAGS)
    except OSError as exc:
        # Linux says ENOTDIR, not ELOOP, for a symlink opened with O_DIRECTORY | O_NOFOLLOW.
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(root):
            raise SymlinkRefused(root) from exc
        raise


def root_usable(root: Path) -> bool:
    """Whether a configured root folder can be opened (it exists, is a folder, and is not a symlink)."""
    try:
        os.close(open_root(root))
    except OSError:
        return False
    return True


def _open_child_dir(parent: int, name: str, where: str, *, create: bool) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(parent, name):
            raise SymlinkRefused(where) from exc
        raise
    with suppress(FileExistsError):  # made meanwhile by someone else; the open below checks what it is
        os.mkdir(name, 0o777, dir_fd=parent)
    return _open_child_dir(parent, name, where, create=False)


def _is_link(parent: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_dir(root: Path, path: PurePath = PurePosixPath(), *, create: bool = False) -> int:
    """Open the folder `path` below `root` component by component, never following a symlink.

    Args:
        root: A configured folder (inbox, outbox, failed, archive).
        path: A folder at or below it.
        create: Make missing components (like ``mkdir -p``, but refusing symlinks on the way).

    Returns:
        A descriptor of that folder, which the caller closes.

    Raises:
        SymlinkRefused: The root or a component is a symlink.
        OSError: A component is missing (without `create`), not a folder, or can't be opened.
    """
    return _open_parts(root, _parts(root, path), create=create)


def _open_parts(root: Path, parts: tuple[str, ...], *, create: bool) -> int:
    fd = open_root(root)
    try:
        where = os.fspath(root).rstrip("/")
        for name in parts:
            where = f"{where}/{name}"
            with _naming(where):
                child = _open_child_dir(fd, name, where, create=create)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def opened_dir(root: Path, path: PurePath = PurePosixPath(), *, create: bool = False) -> Iterator[int]:
    """`open_dir` as a context manager that closes the descriptor."""
    fd = open_dir(root, path, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def parent_of(root: Path, path: PurePath, *, create: bool = False) -> Iterator[tuple[int, str]]:
    """The descriptor of the folder holding `path` (below `root`) and the final name in it."""
    parts = _parts(root, path)
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "is the root folder itself", os.fspath(path))
    fd = _open_parts(root, parts[:-1], create=create)
    try:
        yield fd, parts[-1]
    finally:
        os.close(fd)


def make_dirs(root: Path, path: PurePath) -> None:
    """Create the folder `path` below `root` and its parents, never through a symlink."""
    with opened_dir(root, path, create=True):
        pass


def lstat(root: Path, path: PurePath) -> os.stat_result:
    """Stat `path` below `root` without following a symlink in any component (the last one included)."""
    parts = _parts(root, path)
    if not parts:
        fd = open_root(root)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)
    with parent_of(root, path) as (fd, name), _naming(_join(root, parts)):
        return os.stat(name, dir_fd=fd, follow_symlinks=False)


def lexists(root: Path, path: PurePath) -> bool:
    """Whether a name exists at `path` below `root` (a symlink counts); False if a component is unsafe."""
    try:
        lstat(root, path)
    except OSError:
        return False
    return True


def open_regular_at(parent: int, name: str, where: str | PurePath) -> tuple[int, os.stat_result]:
    """Open the regular file `name` in folder `parent` for reading, verified to be what was stat'ed.

    Raises:
        SymlinkRefused: `name` is a symlink.
        IsADirectoryError: It is a folder.
        ChangedWhileOpening: Another file took its place between the stat and the open.
        OSError: It is not a regular file (EINVAL), is missing, or can't be opened.
    """
    where = os.fspath(where)
    with _naming(where):
        before = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if stat.S_ISLNK(before.st_mode):
        raise SymlinkRefused(where)
    if stat.S_ISDIR(before.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", where)
    if not stat.S_ISREG(before.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", where)
    try:
        with _naming(where):
            fd = os.open(name, FILE_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SymlinkRefused(where) from exc
        raise
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(opened.st_mode):
        os.close(fd)
        raise ChangedWhileOpening(where)
    os.set_blocking(fd, True)
    return fd, opened


def open_regular(root: Path, path: PurePath) -> tuple[int, os.stat_result]:
    """Open the regular file `path` below `root` for reading; see `open_regular_at`.

    Returns:
        The descriptor (the caller closes it) and its fstat.
    """
    with parent_of(root, path) as (fd, name):
        return open_regular_at(fd, name, _join(root, _parts(root, path)))


def read_bytes(root: Path, path: PurePath) -> bytes:
    """The whole content of the regular file `path` below `root`."""
    fd, _ = open_regular(root, path)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def unlink(root: Path, path: PurePath) -> None:
    """Remove the name `path` below `root`; a symlink there is removed itself, never its target."""
    with parent_of(root, path) as (fd, name), _naming(_join(root, _parts(root, path))):
        os.unlink(name, dir_fd=fd)
