"""An outbox that refuses writes (full, over quota, read-only, no permission) pauses its inbox, not its files.

A full disk is not the input's fault: failing the file would move it to the failed folder and make the
user put it back by hand once space returns. Instead the daemon keeps such inputs where they are, stops
starting jobs for that inbox, reports the condition, and resumes on its own when the outbox takes writes
again — a probe file can be created and, for a full disk, free space has grown since the failure.
"""

from __future__ import annotations

import errno
import os
import secrets
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from srd.fs import safefs
from srd.fs.atomic import TEMP_PREFIX

# Errors that say "this storage won't take writes now", as opposed to "this image can't be written". ELOOP is
# srd's own refusal of a symlink in the outbox (a folder swapped for one), ENOTDIR a folder on the way replaced by
# a file: the folder's fault, not the photo's.
REFUSED_FOLDER_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR})
BLOCKING_ERRNOS = REFUSED_FOLDER_ERRNOS | {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Even without a sign of recovery (free space can't be measured on some shares), try one job this often.
RETRY_ANYWAY_S = 300.0


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use in `folder`'s filesystem (None if unknown)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def accepts_files(folder: Path) -> bool:
    """Whether a new file can be created (and removed) in `folder`: the probe is named like srd's temps."""
    probe = folder / f"{TEMP_PREFIX}probe.{secrets.token_hex(6)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    os.close(fd)
    with suppress(OSError):
        probe.unlink()
    return True


@dataclass
class OutboxBlock:
    """An outbox (or one folder of it) that refuses writes: why, since when, and the inputs waiting for it."""

    outbox: Path
    reason: str
    errno: int
    since: float
    free_at_block: int | None
    refused_folder: Path | None = None
    since_wall: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    waiting: set[Path] = field(default_factory=set)

    @classmethod
    def start(cls, outbox: Path, reason: str, code: int, now: float, refused_folder: Path | None = None) -> OutboxBlock:
        return cls(outbox, reason, code, now, free_bytes(outbox), refused_folder)

    def recovered(self, now: float) -> bool:
        """Whether to try again: the outbox takes files, the folder srd refused to enter (a symlink, a file) opens now,
        and (for a full disk) it has more room than before."""
        if now - self.since >= RETRY_ANYWAY_S:
            return True
        if not accepts_files(self.outbox):
            return False
        if self.refused_folder is not None:
            try:
                os.close(safefs.open_dir(self.outbox, self.refused_folder))
            except FileNotFoundError:
                pass  # the link was removed: the write makes the folder afresh
            except (OSError, ValueError):
                return False
        if self.errno not in _SPACE_ERRNOS:
            return True
        free = free_bytes(self.outbox)
        return free is None or self.free_at_block is None or free > self.free_at_block

    def describe(self) -> dict[str, object]:
        folder = {} if self.refused_folder is None else {"folder": str(self.refused_folder)}
        return {"state": "unwritable", **folder, "since": self.since_wall, "error": self.reason,
                "waiting": len(self.waiting)}
