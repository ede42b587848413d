"""Decide when a file in an inbox has finished arriving (docs/design.md §3).

File-system events are only hints: what arrives depends on how the file was written (in place, renamed in,
copied over SMB, seen by a poller), and none of them reliably says "complete". A file is ready when no hint
touched it for ``settle_s`` and two stats ``settle_s`` apart agree on its `FileVersion`, its ctime aside (a
chmod or an xattr written every second must not keep a finished file out for good; the bytes are hashed next).
The first stat is taken `FIRST_LOOK_S` after the last hint, so a file is ready about ``settle_s`` after it stops
changing.

The tracker has no threads and never sleeps: the owner feeds `SettleTracker.hint`, calls
`SettleTracker.poll` and sleeps until `SettleTracker.next_deadline`. An owner that must not wait on a stat
(a hung share) splits the poll: `SettleTracker.due` on its own thread, `SettleTracker.look` (the stats, and
nothing else) on any thread, `SettleTracker.resolve` back on its own. Clock and stat are injected so that
tests drive time. Every tracked path ends in exactly one outcome — ready, vanished or rejected — so no file
is ever dropped silently.
"""

from __future__ import annotations

import heapq
import itertools
import os
import stat
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from srd.fs.fileversion import FileVersion

# Delay from the last hint to the first stat: long enough that a burst of write events costs one stat,
# short against any settle_s, so that the quiet period and the two stats' interval overlap.
FIRST_LOOK_S = 0.1

_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISLNK, "symlink"),
)


@dataclass(frozen=True, slots=True)
class ReadyFile:
    """A file that has stopped changing; `version` is what the confirming stat saw.

    The daemon can compare it with the stat cache and with a stat after reading, to catch a late write.
    A `version.size` of 0 means the file stayed empty for the whole empty-file wait; the daemon fails it.
    """

    path: Path
    version: FileVersion


@dataclass(frozen=True, slots=True)
class Rejected:
    """A path that can never become a ready regular file, with the reason to log."""

    path: Path
    reason: str


@dataclass(frozen=True, slots=True)
class PollResult:
    """Everything `SettleTracker.poll` resolved; each path appears at most once and is no longer tracked."""

    ready: list[ReadyFile] = field(default_factory=list)
    vanished: list[Path] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.ready or self.vanished or self.rejected)


@dataclass(frozen=True, slots=True)
class Look:
    """A stat the tracker wants taken; `token` tells a stale answer (the path was hinted again) from a live one."""

    path: Path
    token: int


@dataclass(frozen=True, slots=True)
class Seen:
    """What a `Look` found: the stat, or the error it raised."""

    look: Look
    found: os.stat_result | OSError


class _Pending:
    """Mutable per-path state; `token` identifies its one live heap item (older items are stale)."""

    __slots__ = ("check_at", "path", "quiet_since", "scheduled_for", "signature", "token")

    def __init__(self, path: Path, now: float) -> None:
        self.path = path
        self.quiet_since = now
        self.signature: FileVersion | None = None
        self.check_at = now
        self.token = -1
        self.scheduled_for = float("inf")


class SettleTracker:
    """Tracks paths from their first hint until they are ready, vanished or rejected.

    Args:
        settle_s: Quiet period after the last hint, and minimum gap between the two stats that must agree.
        clock: Monotonic clock in seconds (wall-clock jumps must not settle or stall files).
        stat: Stat function; ``os.stat`` follows symlinks, pass ``os.lstat`` to reject them instead.
        empty_file_settle_s: How long a zero-byte file must stay empty, counted from the last hint or change,
            before it is reported ready anyway; defaults to five times `settle_s`. Some writers create the
            file first and fill it much later, so emptiness alone is weak evidence of completeness.

    Raises:
        ValueError: `settle_s` is not positive, or `empty_file_settle_s` is shorter than `settle_s`.
    """

    def __init__(
        self,
        settle_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        stat: Callable[[Path], os.stat_result] = os.stat,
        empty_file_settle_s: float | None = None,
    ) -> None:
        if settle_s <= 0:
            raise ValueError(f"settle_s must be positive, got {settle_s}")
        empty_s = 5 * settle_s if empty_file_settle_s is None else empty_file_settle_s
        if empty_s < settle_s:
            raise ValueError(f"empty_file_settle_s ({empty_s}) must be at least settle_s ({settle_s})")
        self._settle_s = settle_s
        self._first_look_s = min(FIRST_LOOK_S, settle_s)
        self._empty_s = empty_s
        self._clock = clock
        self._stat = stat
        self._pending: dict[Path, _Pending] = {}
        # Heap of (deadline, token, entry). An item is live only if its token is the entry's current one and
        # the entry is still tracked; stale items are skipped when they surface. When an entry's deadline
        # moves later its item is left in place and re-pushed when it surfaces; when it moves earlier, a new
        # item replaces it. So a live item's deadline never exceeds the entry's real one.
        self._heap: list[tuple[float, int, _Pending]] = []
        self._tokens = itertools.count()

    def hint(self, path: Path) -> None:
        """Note that an event touched `path`: (re)start its quiet period and forget earlier stats."""
        now = self._clock()
        entry = self._pending.get(path)
        if entry is None:
            entry = self._pending[path] = _Pending(path, now)
        entry.quiet_since = now
        entry.signature = None
        due = self._due(entry)
        if due < entry.scheduled_for:
            self._schedule(entry, due)

    def forget(self, path: Path) -> None:
        """Stop tracking `path` (it was deleted or moved away and the owner already knows)."""
        self._pending.pop(path, None)

    def pending_paths(self) -> Collection[Path]:
        """The paths being tracked."""
        return self._pending.keys()

    def next_deadline(self) -> float | None:
        """Return the clock time at which `poll` next has work, or None if nothing is tracked.

        The owner sleeps until then (or until the next event); calling `poll` earlier is harmless.
        """
        while self._heap:
            deadline, token, entry = self._heap[0]
            if not self._is_live(token, entry):
                heapq.heappop(self._heap)
                continue
            due = self._due(entry)
            if due > deadline:
                heapq.heappop(self._heap)
                self._schedule(entry, due)
                continue
            return deadline
        return None

    def poll(self) -> PollResult:
        """Stat the paths whose wait is over and resolve those that are ready, vanished or rejected.

        A path whose first stat is taken now, or whose size or mtime changed since the first one, stays
        tracked and is confirmed `settle_s` later (zero-byte files: see `empty_file_settle_s`).
        """
        return self.resolve(self.look(self.due()))

    def due(self) -> list[Look]:
        """The stats whose time has come; their paths wait (unscheduled) until `resolve` gets the answers."""
        now = self._clock()
        looks = []
        while self._heap and self._heap[0][0] <= now:
            _, token, entry = heapq.heappop(self._heap)
            if not self._is_live(token, entry):
                continue
            entry.scheduled_for = float("inf")
            due = self._due(entry)
            if due > now:
                self._schedule(entry, due)
                continue
            looks.append(Look(entry.path, token))
        return looks

    def look(self, looks: list[Look]) -> list[Seen]:
        """Take the stats `due` asked for. Touches no tracker state, so it may run on another thread."""
        seen = []
        for wanted in looks:
            try:
                seen.append(Seen(wanted, self._stat(wanted.path)))
            except OSError as exc:
                seen.append(Seen(wanted, exc))
        return seen

    def resolve(self, seen: list[Seen]) -> PollResult:
        """Judge the stats `look` took; one whose path was hinted or forgotten meanwhile is stale and dropped
        (a hint scheduled the path afresh)."""
        now = self._clock()
        result = PollResult()
        for answer in seen:
            entry = self._pending.get(answer.look.path)
            if entry is not None and entry.token == answer.look.token:
                self._check(entry, answer, now, result)
        return result

    def _check(self, entry: _Pending, answer: Seen, now: float, result: PollResult) -> None:
        path = entry.path
        st = answer.found
        if isinstance(st, FileNotFoundError | NotADirectoryError):
            del self._pending[path]
            result.vanished.append(path)
            return
        if isinstance(st, OSError):
            del self._pending[path]
            result.rejected.append(Rejected(path, f"cannot stat: {st.strerror or st}"))
            return
        if not stat.S_ISREG(st.st_mode):
            del self._pending[path]
            result.rejected.append(Rejected(path, f"not a regular file: {file_kind(st.st_mode)}"))
            return
        signature = FileVersion.of(st)
        if entry.signature is not None and signature.unwritten_since(entry.signature):
            empty_until = entry.quiet_since + self._empty_s
            if st.st_size == 0 and now < empty_until:
                # Keep checking at the normal pace, so that content arriving without an event is noticed.
                entry.check_at = min(now + self._settle_s, empty_until)
                self._schedule(entry, entry.check_at)
                return
            del self._pending[path]
            result.ready.append(ReadyFile(path, signature))
            return
        if entry.signature is not None:
            # It changed between the two stats: still being written, so the change counts as a new hint.
            entry.quiet_since = now
        entry.signature = signature
        entry.check_at = now + self._settle_s
        self._schedule(entry, entry.check_at)

    def _due(self, entry: _Pending) -> float:
        return entry.quiet_since + self._first_look_s if entry.signature is None else entry.check_at

    def _schedule(self, entry: _Pending, due: float) -> None:
        entry.token = next(self._tokens)
        entry.scheduled_for = due
        heapq.heappush(self._heap, (due, entry.token, entry))

    def _is_live(self, token: int, entry: _Pending) -> bool:
        return token == entry.token and self._pending.get(entry.path) is entry


def file_kind(mode: int) -> str:
    """A readable name for the type of file a stat mode describes ('fifo', 'socket', …)."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "unknown file type"
