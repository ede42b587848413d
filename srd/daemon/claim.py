"""One daemon per inbox: a claim file in the inbox names its holder (host, pid) and carries a heartbeat.

The ledger lock protects a state directory, not an inbox: a copied config with another ``state_dir``, or
two hosts polling one NAS share, would both process (and move, and delete) the same files. ``flock`` is
unreliable on NFS and invisible across hosts, so the claim is a plain file, ``.srd-claim.json`` (a
dot-file, which the scan rules already skip), rewritten every `heartbeat_s`. A claim is *stale*, and
may be taken over, when its holder ran on this host and that pid is gone, or when its heartbeat is
older than `stale_s` (a crashed or cut-off host; hosts' clocks are assumed to agree within `stale_s` -
`lease_s`). The three times are a `ClaimTiming`, set by the config's ``claim_stale_seconds``.

Only one daemon can win a claim, however many try at once:

- a free claim is *created exclusively*: the record is written to a temp file and hard-linked to the
  claim's name, which fails if the name exists (``O_EXCL`` where a filesystem has no hard links);
- a stale claim is first *renamed aside* under a unique name; only a taker that finds it moved the very
  file it judged stale goes on (to the exclusive create), one that moved a fresh claim puts it back;
- the holder refreshes its claim by renaming a new record over it only while the claim is still the file
  it wrote itself.

A daemon acts on an inbox only while its claim is *trusted*: for `lease_s` after the start of the last
heartbeat that confirmed it. Another daemon may take the claim over only after `stale_s`, so a daemon
that was frozen (SIGSTOP, a suspended VM) finds its lease expired when it resumes, before it touches a
file, and waits for a heartbeat to tell it whether the inbox is still its own.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from srd.daemon.status import pid_alive
from srd.errors import LockedError
from srd.fs import safefs
from srd.fs.atomic import TEMP_PREFIX, temp_files_of

log = structlog.get_logger(__name__)

CLAIM_NAME = ".srd-claim.json"
# How soon an unconfirmed claim is tried again (a frozen daemon resumed, an inbox back from an outage).
RETRY_UNTRUSTED_S = 1.0
# Rounds of read-and-take one claim may need when other daemons take it at the same time.
_ROUNDS = 8
# A claim that can't be written at all: no daemon can move or delete the inbox's files either.
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV)

Identity = tuple[int, int]  # (st_dev, st_ino): which file a claim name points at


@dataclass(frozen=True)
class ClaimTiming:
    """When a claim may be taken over (`stale_s`), and the lease and heartbeat derived from it.

    Every daemon sharing an inbox must use the same `stale_s`: a taker judges the holder's claim by its own.
    """

    stale_s: float = 60.0

    @property
    def lease_s(self) -> float:
        """Half of `stale_s`: a heartbeat may be late by `lease_s - heartbeat_s` (a slow share) before the
        inbox pauses, and hosts' clocks may differ by `lease_s` before a taker could judge a trusted claim
        stale."""
        return self.stale_s / 2

    @property
    def heartbeat_s(self) -> float:
        return self.stale_s / 6


@dataclass(frozen=True)
class Holder:
    """Who claims an inbox."""

    host: str
    pid: int
    instance: str  # tells apart two daemons whose pid and host match (a pid reused after a reboot)
    state_dir: str
    heartbeat: float  # wall-clock seconds

    def name(self) -> str:
        return f"srd on host {self.host} (pid {self.pid}, state_dir {self.state_dir})"

    def describe(self, now: float) -> str:
        return f"{self.name()}, last heartbeat {max(0.0, now - self.heartbeat):.0f} s ago"


@dataclass(frozen=True)
class _Seen:
    """The claim file found in an inbox: its holder (None when it can't be read) and which file it is."""

    holder: Holder | None
    identity: Identity


@dataclass
class _State:
    """What this daemon knows of its claim on one inbox."""

    confirmed_at: float = float("-inf")  # monotonic: when the last heartbeat that confirmed it began
    tried_at: float = float("-inf")  # monotonic: when the last try began
    lost_to: str | None = None  # the live holder that has it, once a heartbeat found it taken
    unwritable: bool = False  # a read-only inbox: nobody can claim it, nor move its files
    failing: str | None = None  # the last heartbeat's error, logged once (untrusted claims retry every second)


class InboxClaimedError(LockedError):
    """Another live daemon claims the inbox."""


class InboxClaims:
    """The claims one daemon holds on its inboxes.

    Args:
        state_dir: Named in the claim, so the message tells the user which config the other daemon runs.
        timing: When a claim goes stale, and the lease and heartbeat that follow from it.
        clock: Wall clock (heartbeats are compared across hosts).
        monotonic: Clock of the leases (tests drive it).
    """

    def __init__(self, state_dir: Path, timing: ClaimTiming = ClaimTiming(), clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._timing = timing
        self._clock = clock
        self._monotonic = monotonic
        self._me = Holder(socket.gethostname(), os.getpid(), secrets.token_hex(8), str(state_dir), 0.0)
        self._states: dict[Path, _State] = {}
        self._lock = threading.Lock()  # the heartbeat runs off the loop; acquire and release on it

    def acquire(self, inbox: Path) -> None:
        """Claim `inbox`, taking over a stale claim.

        Raises:
            InboxClaimedError: A live daemon claims it.
            OSError: The claim can't be written (other than a read-only inbox).
        """
        with self._lock:
            self._states.setdefault(inbox, _State()).tried_at = self._monotonic()
        if not inbox.is_dir():
            return  # a missing inbox (share away) is claimed when it returns, by the heartbeat
        other = self._hold(inbox)
        if other is not None:
            now = self._clock()
            raise InboxClaimedError(f"inbox {inbox} is in use by {other.describe(now)}; give each inbox to "
                                    f"one daemon (a stale claim is taken over after {self._timing.stale_s:.0f} s)")
        self._remove_stale_temps(inbox)

    def heartbeat(self, inbox: Path) -> None:
        """Confirm and refresh the claim on `inbox`, retake it if it became free or stale, or note that another
        daemon took it. Runs off the loop, one inbox per call: a share that hangs holds up its own claim only."""
        state = self._states.get(inbox)
        if state is None:
            return
        state.tried_at = self._monotonic()
        if not inbox.is_dir():
            return  # not trusted until it is back and claimed again
        try:
            other = self._hold(inbox)
        except (OSError, InboxClaimedError) as exc:
            if state.failing != str(exc):
                log.warning("inbox_claim_heartbeat_failed", inbox=str(inbox), error=str(exc))
            state.failing = str(exc)
            return
        state.failing = None
        with self._lock:
            state = self._states.get(inbox)
            if state is None:
                released = True  # released while this heartbeat ran: don't keep a claim on it
            else:
                released = False
                self._note(inbox, state, other)
        if released and other is None:
            self.release(inbox)

    def due(self) -> list[Path]:
        """The inboxes whose claim is due for a heartbeat: each every `heartbeat_s`, and every
        `RETRY_UNTRUSTED_S` one that is not trusted (a daemon resumed after a freeze, an inbox back from an
        outage)."""
        return [inbox for inbox, state in list(self._states.items()) if self._due(inbox, state)]

    def _due(self, inbox: Path, state: _State) -> bool:
        interval = self._timing.heartbeat_s if self.trusted(inbox) else RETRY_UNTRUSTED_S
        return self._monotonic() - state.tried_at >= interval

    def trusted(self, inbox: Path) -> bool:
        """Whether this daemon may act on `inbox` now: its claim was confirmed less than `lease_s` ago (or the
        inbox is read-only, where nothing can be claimed nor moved)."""
        state = self._states.get(inbox)
        return state is not None and (state.unwritable or self._monotonic() < state.confirmed_at + self._timing.lease_s)

    def describe(self, inbox: Path) -> dict[str, str | None]:
        """The claim's state for the status file: held, lost (to whom), unconfirmed, or unwritable."""
        state = self._states.get(inbox)
        if state is None or self.trusted(inbox):
            return {"state": "unwritable" if state is not None and state.unwritable else "held", "reason": None}
        if state.lost_to is not None:
            return {"state": "lost", "reason": f"its claim was taken by {state.lost_to}; paused until that "
                                               "claim is released or goes stale"}
        return {"state": "unconfirmed", "reason": "its claim has not been confirmed for "
                                                  f"{self._timing.lease_s:.0f} s; paused until a heartbeat confirms it"}

    def release(self, inbox: Path) -> None:
        """Remove the claim on `inbox` if it is still ours."""
        with self._lock:
            self._states.pop(inbox, None)
        try:
            fd = safefs.open_root(inbox)
        except OSError:
            return  # a missing inbox holds no claim to remove
        try:
            seen = _read(fd, inbox)
            if seen is not None and seen.holder is not None and self._mine(seen.holder):
                os.unlink(CLAIM_NAME, dir_fd=fd)
        except OSError as exc:
            log.warning("inbox_claim_release_failed", inbox=str(inbox), error=str(exc))
        finally:
            os.close(fd)

    def release_all(self, wait_s: float) -> None:
        """Release every claim, waiting at most `wait_s` in all: each in a thread of its own, so that a share
        that stops answering keeps its claim file (it goes stale) and does not hold up the others or exit."""
        releases = [threading.Thread(target=self.release, args=(inbox,), name="srd-claim-release", daemon=True)
                    for inbox in list(self._states)]
        for thread in releases:
            thread.start()
        deadline = self._monotonic() + wait_s
        for thread in releases:
            thread.join(max(0.0, deadline - self._monotonic()))
        stuck = len([thread for thread in releases if thread.is_alive()])
        if stuck:
            log.warning("inbox_claim_release_abandoned", claims=stuck, waited_s=wait_s,
                        reason="an inbox did not answer; its claim goes stale")

    @property
    def held(self) -> frozenset[Path]:
        return frozenset(self._states)

    # -- taking a claim ------------------------------------------------------------------------------------

    def _hold(self, inbox: Path) -> Holder | None:
        """Make the claim on `inbox` ours: refresh it, create it if free, take it over if stale.

        Returns:
            None when this daemon holds it now (its lease renewed), else the live holder that has it.

        Raises:
            OSError: The inbox or its claim can't be read or written (a read-only inbox is noted instead).
        """
        began = self._monotonic()
        set_aside: _Seen | None = None  # the stale claim this taker moved out of the way
        fd = safefs.open_root(inbox)
        try:
            for _ in range(_ROUNDS):
                now = self._clock()
                seen = _read(fd, inbox)
                try:
                    if seen is None:
                        _publish(fd, self._record(now))
                    elif seen.holder is not None and self._mine(seen.holder):
                        if not _replace_own(fd, seen.identity, self._record(now)):
                            continue  # another daemon took it in this instant: look again
                    elif seen.holder is not None and not self._stale(seen.holder, now):
                        return seen.holder
                    else:
                        set_aside = seen
                        _set_aside(fd, seen.identity)
                        continue  # then create it, if no other taker was faster
                except (FileExistsError, FileNotFoundError):
                    continue  # another daemon created or moved it meanwhile: look again
                except OSError as exc:
                    if exc.errno not in _UNWRITABLE:
                        raise
                    self._unwritable(inbox, exc)
                    return None
                with self._lock:
                    if inbox in self._states:
                        self._states[inbox].confirmed_at = began
                        self._states[inbox].unwritable = False
                if set_aside is not None and set_aside.holder is None:
                    log.warning("inbox_claim_unreadable_replacing", inbox=str(inbox))
                elif set_aside is not None and set_aside.holder is not None:
                    log.warning("inbox_claim_taken_over", inbox=str(inbox), previous=set_aside.holder.describe(now))
                return None
            raise InboxClaimedError(f"the claim on inbox {inbox} kept changing in {_ROUNDS} tries: other daemons "
                                    "are claiming it at the same time")
        finally:
            os.close(fd)

    def _note(self, inbox: Path, state: _State, other: Holder | None) -> None:
        """Log a claim lost or regained by a heartbeat (under the lock)."""
        if other is None and state.lost_to is not None:
            log.warning("inbox_claim_regained", inbox=str(inbox), previous=state.lost_to)
            state.lost_to = None
        elif other is not None and not self._mine(other):
            if state.lost_to is None:
                log.error("inbox_claim_lost", inbox=str(inbox), holder=other.describe(self._clock()),
                          action="paused: no new files are taken and no source is moved or deleted")
            state.lost_to = other.name()
            state.confirmed_at = float("-inf")
            state.unwritable = False  # it took writes after all: the other daemon's claim

    def _unwritable(self, inbox: Path, exc: OSError) -> None:
        with self._lock:
            state = self._states.get(inbox)
            if state is not None and not state.unwritable:
                state.unwritable = True
                # A read-only inbox can't be claimed, but then no daemon can move or delete its files either.
                log.warning("inbox_claim_unwritable", inbox=str(inbox), error=str(exc))

    def _record(self, now: float) -> bytes:
        return (json.dumps(asdict(Holder(**{**asdict(self._me), "heartbeat": now}))) + "\n").encode()

    def _mine(self, holder: Holder) -> bool:
        return (holder.host, holder.pid, holder.instance) == (self._me.host, self._me.pid, self._me.instance)

    def _stale(self, holder: Holder, now: float) -> bool:
        if holder.host == self._me.host and not pid_alive(holder.pid):
            return True
        return now - holder.heartbeat > self._timing.stale_s

    def _remove_stale_temps(self, inbox: Path) -> None:
        """Temp files of claims whose writer was killed mid-write: this daemon holds the inbox now, so no
        other is writing one (a taker that loses one of its temps just looks again), and they would
        otherwise stay in the inbox."""
        for temp in temp_files_of(inbox / CLAIM_NAME):
            try:
                safefs.unlink(inbox, temp)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("inbox_claim_temp_remove_failed", path=str(temp), error=str(exc))


# -- the claim file, relative to the inbox's open descriptor (never through a symlink) -------------------------


def _read(fd: int, inbox: Path) -> _Seen | None:
    """The claim in the inbox open as `fd`, None when there is none."""
    try:
        found = os.stat(CLAIM_NAME, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    identity = (found.st_dev, found.st_ino)
    if not stat.S_ISREG(found.st_mode):
        return _Seen(None, identity)  # a planted symlink or folder is not a claim: it is replaced
    try:
        file_fd, opened = safefs.open_regular_at(fd, CLAIM_NAME, inbox / CLAIM_NAME)
        with os.fdopen(file_fd, "rb") as fh:
            data = json.loads(fh.read())
        holder = Holder(str(data["host"]), int(data["pid"]), str(data["instance"]), str(data["state_dir"]),
                        float(data["heartbeat"]))
        return _Seen(holder, (opened.st_dev, opened.st_ino))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, safefs.SymlinkRefused, safefs.ChangedWhileOpening):
        return _Seen(None, identity)


def _temp_name() -> str:
    """A unique name under srd's temp pattern (a dot-file the scan skips, cleaned up at start)."""
    return f"{TEMP_PREFIX}{CLAIM_NAME}.{secrets.token_hex(6)}"


def _write_temp(fd: int, record: bytes) -> str:
    """Write `record` durably to a new temp file in the inbox; return its name."""
    name = _temp_name()
    file_fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd)
    try:
        os.write(file_fd, record)
        os.fsync(file_fd)
    except BaseException:
        os.close(file_fd)
        _unlink_quietly(fd, name)
        raise
    os.close(file_fd)
    return name


def _publish(fd: int, record: bytes) -> None:
    """Create the claim exclusively, complete from its first instant.

    Raises:
        FileExistsError: Another daemon's claim is there (it was faster).
    """
    name = _write_temp(fd, record)
    try:
        os.link(name, CLAIM_NAME, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS or isinstance(exc, FileExistsError):
            raise
        # No hard links here (some SMB/FUSE mounts): an exclusive create; a reader may then see it empty
        # for an instant, and a taker that judges it unreadable moves it aside only if it is that same file.
        claim_fd = os.open(CLAIM_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                           dir_fd=fd)
        try:
            os.write(claim_fd, record)
            os.fsync(claim_fd)
        finally:
            os.close(claim_fd)
    finally:
        _unlink_quietly(fd, name)
    _fsync_quietly(fd)


def _replace_own(fd: int, identity: Identity, record: bytes) -> bool:
    """Rename a fresh record over the claim if it is still the file `identity` (ours); False if it isn't."""
    name = _write_temp(fd, record)
    try:
        try:
            current = os.stat(CLAIM_NAME, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if (current.st_dev, current.st_ino) != identity:
            return False
        os.replace(name, CLAIM_NAME, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        _unlink_quietly(fd, name)
    _fsync_quietly(fd)
    return True


def _set_aside(fd: int, identity: Identity) -> None:
    """Remove the stale claim `identity` so that only one taker can remove it: rename it aside (only one
    rename of a name succeeds), then check that it was that file; a fresh claim moved by mistake (another
    taker was faster) is put back."""
    aside = _temp_name()
    try:
        os.rename(CLAIM_NAME, aside, src_dir_fd=fd, dst_dir_fd=fd)
    except FileNotFoundError:
        return
    try:
        moved = os.stat(aside, dir_fd=fd, follow_symlinks=False)
        if (moved.st_dev, moved.st_ino) != identity:
            with suppress(FileExistsError):
                os.link(aside, CLAIM_NAME, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
    finally:
        _unlink_quietly(fd, aside)


def _unlink_quietly(fd: int, name: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(name, dir_fd=fd)


def _fsync_quietly(fd: int) -> None:
    with suppress(OSError):  # some filesystems refuse fsync on a folder; the claim is only advisory there
        os.fsync(fd)
