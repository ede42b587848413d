"""Which filesystem an inbox lies on, read from ``/proc/self/mountinfo``: inotify sees no changes made by other
hosts on NFS, SMB, FUSE or 9p, so `auto` mode polls there (docs/design.md §3); and whether a folder is a
mount point, so a share unmounted under a watched inbox is told from an empty folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

from srd.config import Inbox

# Filesystems where inotify misses changes made by other hosts (or by the host of a VM/container).
REMOTE_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "afs", "ceph", "glusterfs", "lustre", "gpfs",
    "davfs", "fuse", "fuseblk", "vboxsf", "vmhgfs", "prl_fs",
})


def _unescape_mountinfo(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes (\040 …).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_fstype(path: Path, mountinfo: str | None = None) -> str | None:
    """Return the filesystem type of the mount holding `path`, from ``/proc/self/mountinfo``.

    Args:
        path: Any path; it is resolved as far as it exists.
        mountinfo: The file's text (tests pass their own); read from /proc when None.

    Returns:
        The type (``ext4``, ``nfs4``, ``fuse.sshfs`` …), or None where mountinfo can't be read.
    """
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = path.resolve()
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        parts, tail = left.split(), right.split()
        if not sep or len(parts) < 5 or not tail:
            continue
        mount_point = Path(_unescape_mountinfo(parts[4]))
        if target == mount_point or mount_point in target.parents:
            depth = len(mount_point.parts)
            if best is None or depth >= best[0]:  # later lines over-mount earlier ones
                best = (depth, tail[0])
    return None if best is None else best[1]


def is_mount_point(path: Path, mountinfo: str | None = None) -> bool:
    """Whether `path` is itself a mount point, per ``/proc/self/mountinfo`` (bind mounts included).

    ``os.path.ismount`` compares device numbers, so it misses a bind mount from the same filesystem.
    """
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return os.path.ismount(path)
    target = str(path.resolve())
    for line in mountinfo.splitlines():
        parts = line.split(" - ", 1)[0].split()
        if len(parts) >= 5 and _unescape_mountinfo(parts[4]) == target:
            return True
    return False


def needs_polling(fstype: str | None) -> bool:
    """Whether inotify can't be trusted on a filesystem of this type."""
    if fstype is None:
        return False
    return fstype in REMOTE_FILESYSTEMS or fstype.startswith("fuse.") or fstype.split(".")[0] in REMOTE_FILESYSTEMS


def choose_mode(inbox: Inbox, mountinfo: str | None = None) -> str:
    """Resolve an inbox's configured mode to ``native`` or ``poll`` (``auto`` looks at the filesystem)."""
    if inbox.mode != "auto":
        return inbox.mode
    return "poll" if needs_polling(mount_fstype(inbox.path, mountinfo)) else "native"
