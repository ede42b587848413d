"""One daemon per inbox: a claim file in the inbox names its holder (host, pid) and carries a heartbeat.

The ledger lock protects a state directory, not an inbox: a copied config with another ``state_dir``, or
two hosts polling one NAS share, would both process (and move, and delete) the same files. ``flock`` is
unreliable on NFS and invisible across hosts, so the claim is a plain file, ``.srd-claim.json`` (a
dot-file, which the scan rules already skip), rewritten every `HEARTBEAT_S`. A claim is *stale*, and
may be taken over, when its holder ran on this host and that pid is gone, or when its heartbeat is
older than `STALE_S` (a crashed or cut-off host; hosts' clocks are assumed to agree within a minute).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from srd import safefs
from srd.atomic import temp_files_of, write_bytes_atomic
from srd.errors import LockedError, OutputError
from srd.status import pid_alive

log = structlog.get_logger(__name__)

CLAIM_NAME = ".srd-claim.json"
_CLAIM = PurePosixPath(CLAIM_NAME)
HEARTBEAT_S = 10.0
STALE_S = 60.0


@dataclass(frozen=True)
class Holder:
    """Who claims an inbox."""

    host: str
    pid: int
    instance: str  # tells apart two daemons whose pid and host match (a pid reused after a reboot)
    state_dir: str
    heartbeat: float  # wall-clock seconds

    def describe(self, now: float) -> str:
        return (f"srd on host {self.host} (pid {self.pid}, state_dir {self.state_dir}), "
                f"last heartbeat {max(0.0, now - self.heartbeat):.0f} s ago")


class InboxClaimedError(LockedError):
    """Another live daemon claims the inbox."""


class InboxClaims:
    """The claims one daemon holds on its inboxes.

    Args:
        state_dir: Named in the claim, so the message tells the user which config the other daemon runs.
        clock: Wall clock (heartbeats are compared across hosts).
    """

    def __init__(self, state_dir: Path, clock: Any = time.time) -> None:
        self._clock = clock
        self._me = Holder(socket.gethostname(), os.getpid(), secrets.token_hex(8), str(state_dir), 0.0)
        self._held: set[Path] = set()

    def acquire(self, inbox: Path) -> None:
        """Claim `inbox`, taking over a stale claim.

        Raises:
            InboxClaimedError: A live daemon claims it.
            OSError: The claim can't be written (e.g. a read-only inbox).
        """
        self._held.add(inbox)
        if not inbox.is_dir():
            return  # a missing inbox (share away) is claimed when it returns, by the heartbeat
        holder = self._read(inbox)
        now = self._clock()
        if holder is not None and not self._mine(holder) and not self._stale(holder, now):
            raise InboxClaimedError(f"inbox {inbox} is in use by {holder.describe(now)}; give each inbox to "
                                    f"one daemon (a stale claim is taken over after {STALE_S:.0f} s)")
        if holder is not None and not self._mine(holder):
            log.warning("inbox_claim_taken_over", inbox=str(inbox), previous=holder.describe(now))
        self._remove_stale_temps(inbox)
        try:
            self._write(inbox, now)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            # A read-only inbox can't be claimed, but then no daemon can move or delete its files either.
            log.warning("inbox_claim_unwritable", inbox=str(inbox), error=str(exc))

    def heartbeat(self) -> None:
        """Refresh every claim held (call at least every `HEARTBEAT_S`); runs off the loop: shares may hang."""
        now = self._clock()
        for inbox in list(self._held):
            try:
                holder = self._read(inbox)
                if holder is not None and not self._mine(holder) and not self._stale(holder, now):
                    log.error("inbox_claim_lost", inbox=str(inbox), holder=holder.describe(now))
                    continue
                if inbox.is_dir():
                    self._write(inbox, now)
            except OSError as exc:
                log.warning("inbox_claim_heartbeat_failed", inbox=str(inbox), error=str(exc))

    def release(self, inbox: Path) -> None:
        """Remove the claim on `inbox` if it is still ours."""
        self._held.discard(inbox)
        try:
            holder = self._read(inbox)
            if holder is not None and self._mine(holder):
                safefs.unlink(inbox, _CLAIM)
        except OSError as exc:
            log.warning("inbox_claim_release_failed", inbox=str(inbox), error=str(exc))

    def release_all(self) -> None:
        for inbox in list(self._held):
            self.release(inbox)

    @property
    def held(self) -> frozenset[Path]:
        return frozenset(self._held)

    def _mine(self, holder: Holder) -> bool:
        return (holder.host, holder.pid, holder.instance) == (self._me.host, self._me.pid, self._me.instance)

    def _stale(self, holder: Holder, now: float) -> bool:
        if holder.host == self._me.host and not pid_alive(holder.pid):
            return True
        return now - holder.heartbeat > STALE_S

    def _read(self, inbox: Path) -> Holder | None:
        try:
            # Through safefs like every inbox access: a claim planted as a symlink is unreadable, not followed.
            data = json.loads(safefs.read_bytes(inbox, _CLAIM))
            return Holder(str(data["host"]), int(data["pid"]), str(data["instance"]), str(data["state_dir"]),
                          float(data["heartbeat"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, safefs.SymlinkRefused, safefs.ChangedWhileOpening) as exc:
            log.warning("inbox_claim_unreadable_replacing", inbox=str(inbox), error=str(exc))
            return None

    def _remove_stale_temps(self, inbox: Path) -> None:
        """Temp files of claims whose writer was killed mid-write: no live daemon holds the inbox (checked
        just before), so none of them is being written now, and they would otherwise stay in the inbox."""
        for temp in temp_files_of(inbox / CLAIM_NAME):
            try:
                safefs.unlink(inbox, temp)
            except OSError as exc:
                log.warning("inbox_claim_temp_remove_failed", path=str(temp), error=str(exc))

    def _write(self, inbox: Path, now: float) -> None:
        holder = Holder(**{**asdict(self._me), "heartbeat": now})
        try:
            write_bytes_atomic(inbox / CLAIM_NAME, (json.dumps(asdict(holder)) + "\n").encode(), root=inbox)
        except OutputError as exc:
            raise OSError(exc.errno or 0, f"cannot write the inbox claim: {exc}", str(inbox / CLAIM_NAME)) from exc
