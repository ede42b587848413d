"""Crash-safe record of which inputs were processed, so that no image is processed twice (docs/design.md §4).

The state lives in a local ``state_dir``:

- ``lock``: ``flock``-ed by the one process that owns the ledger; it holds that process's pid so that a
  second instance can say who is in the way.
- ``ledger.json``: a snapshot ``{"format", "seq", "entries", "hashes", "outputs"}``, replaced atomically by
  `compact`. The snapshot it replaces is kept as ``ledger.json.prev`` (see `LedgerError` on a missing one).
- ``journal.jsonl``: one JSON record per line, appended and fsynced before the change counts. Each write is
  exactly one line, so an interrupted write can only damage the last line, which loading drops.

Three tables live in these files:

- entries, by content key (`make_key`): what became of this content under this pipeline.
- outputs, by output path: which (inbox, source) srd wrote that file for, and the key of the content it
  holds. An output path has one owner at a time: when srd writes a path again, the entry that held it
  before is dropped, because its output is gone (that content is processed again if it comes back).
  The (inbox, source) part outlives `Ledger.forget`, so srd still knows the file is its own to replace.
- the stat cache, by (inbox, source): the sha256 of the version of the file last hashed.

Journal records (each may also carry ``"cache": {"set": [...], "unset": [...]}``, stat-cache changes):

- ``{"seq", "op": "put", "entry": {...}}``: an entry's whole state. A ``done`` entry takes its output path
  over (see outputs above). Since format 2 an entry also has ``strikes`` and ``solo``; records without them
  (older srd) load as 0 and false.
- ``{"seq", "op": "own", "output", "inbox", "source", "key"}``: srd gave `output` this content's picture for
  that source without a job of its own (a duplicate's link or copy).
- ``{"seq", "op": "forget", "key"}``: an entry removed; outputs it owned keep their source, lose their key.
- ``{"seq", "op": "cache"}``: only stat-cache changes.
- ``{"seq", "op": "snapshot"}``: the first line after a compaction; its ``seq`` is the snapshot's, so a
  journal that continues a snapshot which is missing or older is refused instead of read as a fresh start.

Stat-cache lines are ``[inbox, source, size, mtime_ns, sha256, ino, ctime_ns]`` (format 1 had the first
five; such lines are never trusted, so those files are hashed once more).

Every journal record carries a ``seq``, counting up line by line (a line that doesn't is damage, as is a
complete line that is not a record); the snapshot stores the last ``seq`` it includes. Loading skips the
records the snapshot already holds, so a crash between writing a snapshot and truncating the journal neither
loses nor double-applies anything. Records hold an entry's whole state rather than a delta, so replay is
idempotent as well. `check_ledger` and `repair_ledger` are the way out of a damaged ledger.

JSON rather than SQLite keeps the state readable and repairable with a text editor and adds no dependency.
In memory each entry is a compact `_Row` (an `Entry` is built only when asked for): the fields its key and
timestamps already say are derived rather than held, and repeated strings are shared, because a NAS daemon
keeps every entry it ever recorded (with its stat-cache line, about 1.4 KB of RSS each where dicts took 2.3
KB; `scripts/bench_ledger.py`).
The snapshot is decoded straight into rows and written in chunks, so neither a load nor a compaction needs
the whole ledger as dicts or as one string.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import itertools
import json
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath, PurePosixPath
from types import TracebackType
from typing import Any, NamedTuple

import structlog

from srd.errors import LockedError, SrdError, StateDirError
from srd.fs.atomic import TEMP_PREFIX, clean_stale_temps, open_atomic
from srd.fs.fileversion import FileVersion

log = structlog.get_logger(__name__)

SNAPSHOT_NAME = "ledger.json"
PREVIOUS_SNAPSHOT_NAME = "ledger.json.prev"
JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = "lock"
# 2 added "outputs" and the stat cache's inode and ctime; format 1 snapshots still load.
SNAPSHOT_FORMAT = 2
_READABLE_FORMATS = (1, 2)
DEFAULT_COMPACT_AFTER = 10_000
# Stat-cache changes are only an optimisation, so they are batched: a startup scan of a large inbox must not
# cost one fsync per file. Losing a batch in a crash only means hashing those files again.
HASH_BATCH = 1024
# Entries per write while streaming a snapshot: big enough to keep writes few, small enough to stay light.
_SNAPSHOT_CHUNK = 2048
# Write errors that say "this storage takes no writes now" rather than "this record is bad".
_UNWRITABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
# A stat-cache line: size, mtime_ns, inode, ctime_ns (see `FileVersion`) and the sha256 as 32 bytes.
_Cached = tuple[int, int, int, int, bytes]
# Inode and ctime of stat-cache lines written before srd recorded them: equal to no real stat, so each such
# file is hashed once more rather than trusted on size and mtime alone.
_UNKNOWN = -1


class LedgerError(SrdError):
    """The ledger's files are corrupt or inconsistent, or the journal can't be written durably.

    Loading never guesses: a damaged ledger is refused with a message naming the way out (``srd ledger
    check`` to see what is wrong, ``srd ledger repair`` to keep every intact record and drop the rest).
    """


class LedgerUnwritableError(LedgerError, StateDirError):
    """The state directory refused a write (full, read-only, no permission): nothing changed, and the same
    write can succeed once the storage takes writes again. `errno` says why."""

    def __init__(self, message: str, *, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


class LedgerVersionError(SrdError):
    """The ledger was written by a newer srd, in a format this one can't read.

    Not damage: `check_ledger` and `repair_ledger` refuse it too, since a "repair" would set aside the history
    that the newer srd wrote and start this one without it.
    """


REPAIR_HINT = "run 'srd ledger check' to see what is wrong and 'srd ledger repair' to keep every intact record"


class State(enum.StrEnum):
    """Where an entry stands.

    ``retry`` is a failed entry that an operator made eligible again; it keeps its history (unlike `forget`)
    but starts with a fresh attempt budget.
    """

    STARTED = "started"
    DONE = "done"
    FAILED = "failed"
    RETRY = "retry"


# One shared string per state value: rows decoded from JSON would otherwise each hold a copy.
_STATE_VALUES = {state.value: state.value for state in State}


def make_key(sha256: str, fingerprint: str) -> str:
    """Build the ledger key: the same bytes under a different pipeline are a different job.

    A sha256 hex digest never contains ``:``, so the key splits back unambiguously whatever the fingerprint.
    """
    return f"{sha256}:{fingerprint}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One input's processing record; an immutable view built on demand from the stored dict.

    Attributes:
        key: `make_key` of `sha256` and `fingerprint`.
        sha256: Hex digest of the input's content.
        fingerprint: The pipeline fingerprint the caller processes it with.
        inbox: Id of the inbox the (most recent) source file was found in.
        source: Path of that file relative to its inbox.
        state: See `State`.
        attempts: Starts since creation or since the last `Ledger.retry` (history: a start the daemon's own
            death cut short counts here too).
        created_at: Wall-clock time of the first start, ISO 8601 UTC.
        created_ts: The same as a Unix epoch.
        updated_at: Wall-clock time of the last change, ISO 8601 UTC.
        updated_ts: The same as a Unix epoch.
        output: Path of the written output (``done`` only).
        output_size: Its size in bytes (``done`` only).
        error: Reason of the last failure (``failed`` only).
        disposition: What was done with the source afterwards (e.g. ``kept``, ``archived``, ``deleted``), or
            None while that step is still to do: after a crash the daemon can finish it.
        target: The output path reserved when the job started (``started`` only). Workers keep writing
            after the daemon dies mid-job, so a retry may find its own finished output in place; knowing the
            name was reserved for it, the retry reuses it instead of writing ``name-1.jpg`` beside it.
        strikes: Deaths pinned on this content: its worker died while the daemon lived and no other job ran
            (`Ledger.record_strike`), or the daemon died while it ran alone. A poison file is one whose
            strikes reach ``max_attempts``; a daemon killed with several jobs in flight charges none of them.
        solo: The current start runs alone (a retry after a death that could not be pinned on one file): if
            the daemon dies now, the next start charges the strike to this content.
    """

    key: str
    sha256: str
    fingerprint: str
    inbox: str
    source: PurePosixPath
    state: State
    attempts: int
    created_at: str
    created_ts: float
    updated_at: str
    updated_ts: float
    output: Path | None
    output_size: int | None
    error: str | None
    disposition: str | None
    target: Path | None
    strikes: int
    solo: bool

    @classmethod
    def _from_row(cls, key: str, row: _Row) -> Entry:
        sha256, fingerprint = key.split(":", 1)
        return cls(
            key=key, sha256=sha256, fingerprint=fingerprint, inbox=row.inbox, source=PurePosixPath(row.source),
            state=State(row.state), attempts=row.attempts,
            created_at=_iso(row.created_ts), created_ts=row.created_ts,
            updated_at=_iso(row.updated_ts), updated_ts=row.updated_ts,
            output=None if row.output is None else Path(row.output), output_size=row.output_size,
            error=row.error, disposition=row.disposition, target=None if row.target is None else Path(row.target),
            strikes=row.strikes, solo=row.solo,
        )


class _Row(NamedTuple):
    """An entry as held in memory: the stored record less its key, the sha256 and fingerprint the key holds,
    and the ISO dates its timestamps give."""

    inbox: str
    source: str
    state: str
    attempts: int
    created_ts: float
    updated_ts: float
    output: str | None
    output_size: int | None
    error: str | None
    disposition: str | None
    target: str | None
    strikes: int
    solo: bool


class Owner(NamedTuple):
    """Who an output file belongs to: the source srd wrote it for, and the content key whose picture it holds
    (None once that key was forgotten: the file is still srd's to replace, but no longer proof of anything)."""

    inbox: str
    source: str
    key: str | None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _row(record: dict[str, Any]) -> _Row:
    """The `_Row` of a stored record, its repeated strings shared."""
    state = _STATE_VALUES.get(record["state"])
    if state is None:
        raise ValueError(f"unknown state {record['state']!r}")
    disposition = record["disposition"]
    return _Row(
        sys.intern(record["inbox"]), sys.intern(record["source"]), state, record["attempts"],
        record["created_ts"], record["updated_ts"], record["output"], record["output_size"], record["error"],
        None if disposition is None else sys.intern(disposition),
        # Absent from records of older srd versions: no reservation, no deaths pinned, not alone.
        record.get("target"), record.get("strikes", 0), record.get("solo", False),
    )


def _record(key: str, row: _Row) -> dict[str, Any]:
    """The stored form of a row: every field spelled out, so the files read well on their own."""
    sha256, fingerprint = key.split(":", 1)
    return {
        "key": key, "sha256": sha256, "fingerprint": fingerprint, "inbox": row.inbox, "source": row.source,
        "state": row.state, "attempts": row.attempts,
        "created_at": _iso(row.created_ts), "created_ts": row.created_ts,
        "updated_at": _iso(row.updated_ts), "updated_ts": row.updated_ts,
        "output": row.output, "output_size": row.output_size, "error": row.error, "disposition": row.disposition,
        "target": row.target, "strikes": row.strikes, "solo": row.solo,
    }


def _decode_snapshot_object(obj: dict[str, Any]) -> Any:
    # json object_hook: turns each entry into a row as soon as it is parsed (the snapshot's other objects
    # have no "state").
    return _row(obj) if "state" in obj and "key" in obj else obj


class Ledger:
    """The processing ledger of one state directory; the owning process is its only writer.

    Every ``record_*`` call is durable when it returns: the journal record is written and fsynced before the
    in-memory state changes, so a failed write leaves both as they were. Not thread-safe; the daemon's main
    loop is its only user.

    Use `Ledger.open`, preferably as a context manager::

        with Ledger.open(state_dir) as ledger:
            entry = ledger.lookup(sha256, fingerprint)
    """

    def __init__(self, state_dir: Path, lock_fd: int | None, *, compact_after: int, clock: Callable[[], float]) -> None:
        """Use `Ledger.open`; this only sets up an empty, unloaded instance around an acquired lock (or none,
        read-only)."""
        self._dir = state_dir
        self._lock_fd = lock_fd
        self._read_only = lock_fd is None
        self._journal_fd: int | None = None
        self._compact_after = compact_after
        self._clock = clock
        self._entries: dict[str, _Row] = {}
        self._counts: Counter[str] = Counter()
        # key → reserved output path of each started entry (few: the running jobs and those a crash cut short).
        self._targets: dict[str, str] = {}
        # output path → its owner, and (inbox, source) → the output it owns, or a tuple of them (more than
        # one after a profile changed the output format). Strings are shared with the entries'.
        self._owners: dict[str, Owner] = {}
        self._owned: dict[tuple[str, str], str | tuple[str, ...]] = {}
        # (inbox, path) → (size, mtime_ns, ino, ctime_ns, sha256 as 32 bytes: half the memory of its hex).
        self._hashes: dict[tuple[str, str], _Cached] = {}
        # Stat-cache changes not yet in the journal: the latest value per file, None for a removal.
        self._pending_hashes: dict[tuple[str, str], _Cached | None] = {}
        self._seq = 0
        # Journal lines a tolerant load (`repair`) could not use, kept for the record.
        self._dropped: list[bytes] = []
        self._snapshot_damaged = False
        self._journal_size = 0
        self._journal_records = 0
        self._next_compaction = compact_after

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        compact_after: int = DEFAULT_COMPACT_AFTER,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        create: bool = True,
    ) -> Ledger:
        """Lock `state_dir`, load the snapshot, replay the journal, and compact if the journal is long.

        With `read_only`, nothing is locked or written, so it works beside a running daemon (``srd ledger
        list``): the view is the ledger as of that moment, and every change raises `LedgerError`. Reading, or
        opening with `create` False, needs `state_dir` to exist: a wrong path is an error, not an empty ledger.

        Args:
            state_dir: Local folder for the ledger (created if missing). Not on NFS: flock is unreliable there.
            compact_after: Compact (on open, and after a write) once the journal holds this many records, so
                that startup time stays bounded however long the daemon runs. Each compaction rewrites the whole
                snapshot (about 0.8 s for 100,000 entries here), which is what this trades against replay time.
            clock: Wall clock for the entries' timestamps (injectable for tests).

        Raises:
            ValueError: `compact_after` is below 1.
            LockedError: Another process (or another `Ledger` in this one) owns `state_dir`.
            StateDirError: `state_dir` is missing (when it is not to be created) or can't be read.
            LedgerUnwritableError: `state_dir` can't be created, locked or opened (permissions, read-only).
            LedgerVersionError: The snapshot was written by a newer srd.
            LedgerError: The snapshot or a journal line other than the last is corrupt, or the journal does
                not continue the snapshot; nothing is guessed, so that no history is silently lost.
        """
        if compact_after < 1:
            raise ValueError(f"compact_after must be at least 1, got {compact_after}")
        state_dir = Path(state_dir)
        if read_only or not create:
            _require_state_dir(state_dir)
        if read_only:
            with _reading(state_dir):
                return cls._open_read_only(state_dir, compact_after, clock)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            lock_fd = _acquire_lock(state_dir / LOCK_NAME)
        except OSError as exc:
            raise LedgerUnwritableError(f"cannot use state directory {state_dir}: {exc.strerror or exc}",
                                        errno=exc.errno) from exc
        ledger = cls(state_dir, lock_fd, compact_after=compact_after, clock=clock)
        try:
            ledger._load()
        except OSError as exc:
            ledger.close()
            raise LedgerUnwritableError(f"cannot open the ledger in {state_dir}: {exc.strerror or exc}",
                                        errno=exc.errno) from exc
        except BaseException:
            ledger.close()
            raise
        return ledger

    @classmethod
    def _open_read_only(cls, state_dir: Path, compact_after: int, clock: Callable[[], float]) -> Ledger:
        # The owner may compact between our reads of the snapshot and the journal; the journal then no longer
        # continues the snapshot we hold, and reading both again gives a consistent pair.
        tries_left = 3
        while True:
            ledger = cls(state_dir, None, compact_after=compact_after, clock=clock)
            try:
                ledger._load()
                return ledger
            except LedgerError:
                tries_left -= 1
                if tries_left == 0:
                    raise

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def state_dir(self) -> Path:
        """The folder this ledger owns."""
        return self._dir

    @property
    def journal_records(self) -> int:
        """Records in the journal since the last compaction."""
        return self._journal_records

    def close(self) -> None:
        """Write buffered stat-cache changes, close the journal and release the lock; idempotent."""
        try:
            if self._journal_fd is not None:
                self.sync()
        finally:
            for fd in (self._journal_fd, self._lock_fd):
                if fd is not None:
                    os.close(fd)
            self._journal_fd = self._lock_fd = None

    # -- queries ------------------------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """Return the entry stored under `key`, if any."""
        row = self._entries.get(key)
        return None if row is None else Entry._from_row(key, row)

    def lookup(self, sha256: str, fingerprint: str) -> Entry | None:
        """Return the entry for this content under this pipeline, if any."""
        return self.get(make_key(sha256, fingerprint))

    def entries(self) -> Iterator[Entry]:
        """Iterate over all entries (a snapshot: recording while iterating is safe)."""
        for key, row in list(self._entries.items()):
            yield Entry._from_row(key, row)

    def reserved_targets(self) -> dict[str, Path]:
        """The output path reserved by each ``started`` entry that has one, by key."""
        return {key: Path(target) for key, target in self._targets.items()}

    def owner(self, output: Path | str) -> Owner | None:
        """Who srd wrote this output file for, if it did (as far as the ledger knows)."""
        return self._owners.get(str(output))

    def outputs_of(self, inbox: str, source: PurePath | str) -> dict[str, str | None]:
        """The outputs srd wrote for this source, each with the key of the content it holds (None: forgotten)."""
        slot = (inbox, PurePosixPath(source).as_posix())
        return {output: self._owners[output].key for output in self._owned_by(slot)}

    def _owned_by(self, slot: tuple[str, str]) -> tuple[str, ...]:
        outputs = self._owned.get(slot, ())
        return (outputs,) if isinstance(outputs, str) else outputs

    def states(self) -> Iterator[tuple[str, str, str, float]]:
        """Iterate over ``(key, inbox, state, updated_ts)`` of every entry, without building `Entry`s (the
        daemon counts them per inbox at start-up, over every entry it ever recorded)."""
        for key, row in list(self._entries.items()):
            yield key, row.inbox, row.state, row.updated_ts

    def unfinished(self) -> list[Entry]:
        """Return entries started but neither done nor failed: a crash interrupted them, retry them."""
        return [Entry._from_row(key, row) for key, row in self._entries.items() if row.state == State.STARTED]

    def counts(self) -> dict[str, int]:
        """Return the number of entries in each `State` (all states present, zeros included)."""
        return {state.value: self._counts[state.value] for state in State}

    # -- state changes ------------------------------------------------------------------------------------

    def record_start(self, sha256: str, fingerprint: str, *, inbox: str, source: PurePath | str,
                     target: Path | None = None, solo: bool = False) -> Entry:
        """Record that processing of this content begins, counting one more attempt.

        A ``started`` entry that is started again is the retry after a crash; a ``failed`` one may be started
        again at the caller's discretion (its attempt count tells how often it failed).

        Args:
            sha256: Hex digest of the input content.
            fingerprint: The pipeline fingerprint.
            inbox: Id of the inbox the file was found in.
            source: The file's path relative to that inbox.
            target: The output path the job will write, reserved until the entry leaves ``started``.
            solo: The job runs alone, so a death of the whole daemon during it is pinned on this content
                (see `pin_solo_deaths`).

        Raises:
            ValueError: The entry is already ``done`` (`forget` it first to process it again), or `source`
                is absolute.
        """
        source = PurePosixPath(source)
        if source.is_absolute():
            raise ValueError(f"source must be relative to its inbox, got {source}")
        key = make_key(sha256, fingerprint)
        old = self._entries.get(key)
        if old is not None and old.state == State.DONE:
            raise ValueError(f"ledger entry {key} is already done; forget() it to process it again")
        ts = self._clock()
        row = _Row(inbox, source.as_posix(), State.STARTED.value, 1 if old is None else old.attempts + 1,
                   ts if old is None else old.created_ts, ts, None, None, None, None,
                   None if target is None else str(target), 0 if old is None else old.strikes, solo)
        return self._put(key, row)

    def record_strike(self, key: str) -> Entry:
        """Pin one death on a started entry: its own worker died while the daemon lived and no other job ran.

        The entry stays ``started`` (with its reservation); the caller compares `Entry.strikes` with its limit.

        Raises:
            KeyError: No such entry.
            ValueError: The entry is not ``started``.
        """
        old = self._started(key)
        return self._put(key, old._replace(strikes=old.strikes + 1, solo=False, updated_ts=self._clock()))

    def record_interrupted(self, key: str) -> Entry:
        """A started entry's job was stopped by the daemon itself (a drain that ran out of time): not its
        fault, so a solo mark is cleared and the next start does not pin the interruption on it.

        Raises:
            KeyError: No such entry.
            ValueError: The entry is not ``started``.
        """
        old = self._started(key)
        if not old.solo:
            return Entry._from_row(key, old)
        return self._put(key, old._replace(solo=False, updated_ts=self._clock()))

    def pin_solo_deaths(self) -> list[Entry]:
        """At startup: charge a strike to every entry the last daemon was running alone when it died.

        A job runs alone only as a retry after a death nobody could be blamed for; the daemon dying again
        while that one job ran is the second kind of death that can be pinned on a file (a file whose
        decoding gets the whole service killed, e.g. by a cgroup OOM). Call once, before any new start.

        Returns:
            The entries charged, as they are now.
        """
        return [self.record_strike(key) for key, row in list(self._entries.items())
                if row.state == State.STARTED and row.solo]

    def record_done(self, key: str, *, output: Path, output_size: int, disposition: str | None = None) -> Entry:
        """Record that the output of a started entry is durably in place, and, when it is already known, what
        was done with the source (as `record_disposed` would, in the same record).

        Raises:
            KeyError: No such entry.
            ValueError: The entry is not ``started``.
        """
        row = self._transition(key, {State.STARTED}, State.DONE)
        return self._put(key, row._replace(output=str(output), output_size=output_size, disposition=disposition))

    def record_failed(self, key: str, *, error: str) -> Entry:
        """Record that a started entry failed, with the reason shown to the user.

        Raises:
            KeyError: No such entry.
            ValueError: The entry is not ``started``.
        """
        row = self._transition(key, {State.STARTED}, State.FAILED)
        return self._put(key, row._replace(error=error))

    def record_disposed(self, key: str, disposition: str) -> Entry:
        """Record what was done with the source file of a finished entry (kept, archived, deleted …).

        Until this is recorded, a ``done`` entry whose source is still in the inbox tells the daemon after a
        crash that the source step is still to do, rather than that the file is a duplicate.

        Raises:
            KeyError: No such entry.
            ValueError: The entry is neither ``done`` nor ``failed``.
        """
        old = self._entries[key]
        if old.state not in (State.DONE, State.FAILED):
            raise ValueError(f"ledger entry {key} is {old.state}, not done or failed")
        return self._put(key, old._replace(disposition=disposition, updated_ts=self._clock()))

    def record_output(self, output: Path, *, inbox: str, source: PurePath | str, key: str) -> None:
        """Record that srd gave `output` the picture of content `key` for this source without a job of its own
        (a duplicate's hard link or copy). Like a ``done`` record, it takes the path over from its last owner.
        """
        self._append({"op": "own", "output": str(output), "inbox": inbox,
                      "source": PurePosixPath(source).as_posix(), "key": key})

    def retry(self, key: str) -> Entry:
        """Make a failed entry eligible again, with a fresh attempt budget and its history kept.

        Raises:
            KeyError: No such entry.
            ValueError: The entry is not ``failed``.
        """
        row = self._transition(key, {State.FAILED}, State.RETRY)
        return self._put(key, row._replace(attempts=0, strikes=0, error=None, disposition=None))

    def forget(self, key: str) -> bool:
        """Remove an entry entirely, so that its content is processed again as new.

        The outputs written for it stay srd's own (a new run for the same source replaces them rather
        than writing ``name-1`` beside them), but no longer prove that anything is done.

        Returns:
            Whether there was such an entry.
        """
        if key not in self._entries:
            return False
        self._append({"op": "forget", "key": key})
        return True

    # -- stat cache ---------------------------------------------------------------------------------------

    def cached_hash(self, inbox: str, source: PurePath | str, version: FileVersion) -> str | None:
        """Return the remembered sha256 of a file if it is the same version (see `FileVersion`), else None.

        This only saves re-reading unchanged files after a restart; the content hash stays the key.
        """
        cached = self._hashes.get((inbox, PurePosixPath(source).as_posix()))
        if cached is None or cached[:4] != version:
            return None
        return cached[4].hex()

    def remember_hash(self, inbox: str, source: PurePath | str, version: FileVersion, sha256: str) -> None:
        """Remember a file's hash for `cached_hash`.

        Effective at once in memory; journalled with the next state change, or on `sync`, or once
        `HASH_BATCH` changes are buffered, since losing some in a crash only costs hashing the files again.
        """
        slot = (sys.intern(inbox), sys.intern(PurePosixPath(source).as_posix()))  # shared with the entry's
        value = (*version, bytes.fromhex(sha256))
        if self._hashes.get(slot) != value:
            self._hashes[slot] = value
            self._buffer_hash(slot, value)

    def forget_hash(self, inbox: str, source: PurePath | str) -> None:
        """Drop a file from the stat cache (it was deleted or moved away), so the cache doesn't grow forever."""
        slot = (inbox, PurePosixPath(source).as_posix())
        if self._hashes.pop(slot, None) is not None:
            self._buffer_hash(slot, None)

    def sync(self) -> None:
        """Write buffered stat-cache changes to the journal now (e.g. at the end of a scan)."""
        if self._pending_hashes:
            self._append({"op": "cache"})

    # -- maintenance --------------------------------------------------------------------------------------

    def compact(self) -> None:
        """Fold the journal into a new snapshot and empty the journal.

        The snapshot is replaced atomically and records the last ``seq`` it includes; the one it replaces is
        kept as ``ledger.json.prev``. Only then is the journal truncated, down to one marker line saying which
        snapshot it continues, so that a lost snapshot is noticed instead of silently starting a new history.
        A crash in between leaves a journal whose records the next load skips.

        Raises:
            OutputError: The snapshot could not be written; the old snapshot and the journal are intact.
            LedgerError: The journal could not be truncated (the new snapshot is in place and consistent).
        """
        fd = self._require_open()
        started = time.perf_counter()
        self._keep_previous_snapshot()
        with open_atomic(self._dir / SNAPSHOT_NAME) as out:
            for chunk in self._snapshot_chunks():
                out.write(chunk)
        # Buffered stat-cache changes are in the snapshot now; the journal no longer needs them.
        self._pending_hashes.clear()
        marker = _line({"seq": self._seq, "op": "snapshot"})
        try:
            os.ftruncate(fd, 0)
            _write_all(fd, marker)
            os.fsync(fd)
        except OSError as exc:
            raise LedgerError(f"cannot truncate ledger journal {self._dir / JOURNAL_NAME}: {exc}") from exc
        self._journal_size = len(marker)
        self._journal_records = 0
        self._next_compaction = self._compact_after
        log.info(
            "ledger_compacted",
            entries=len(self._entries),
            hashes=len(self._hashes),
            seq=self._seq,
            ms=round((time.perf_counter() - started) * 1000),
        )

    def _keep_previous_snapshot(self) -> None:
        """Hard-link the current snapshot as ``ledger.json.prev`` (atomically replacing the older one): a way
        back, by hand or by `repair`, if the new snapshot is ever lost."""
        current = self._dir / SNAPSHOT_NAME
        link = self._dir / f"{TEMP_PREFIX}{PREVIOUS_SNAPSHOT_NAME}.{secrets.token_hex(6)}"  # cleaned if we crash
        try:
            os.link(current, link)
            os.replace(link, self._dir / PREVIOUS_SNAPSHOT_NAME)
        except FileNotFoundError:
            return  # the first compaction: nothing to keep
        except OSError as exc:
            log.warning("ledger_previous_snapshot_not_kept", state_dir=str(self._dir), error=str(exc))
            with contextlib.suppress(OSError):
                link.unlink()

    # -- internals ----------------------------------------------------------------------------------------

    def _snapshot_chunks(self) -> Iterator[bytes]:
        """The snapshot ``{"format", "seq", "entries", "hashes", "outputs"}`` as JSON, a few thousand items at
        a time."""
        yield b'{"format":%d,"seq":%d,"entries":{' % (SNAPSHOT_FORMAT, self._seq)
        yield from _chunked_json(iter(self._entries.items()),
                                 lambda chunk: _dumps({key: _record(key, row) for key, row in chunk}))
        yield b'},"hashes":['
        yield from _chunked_json(iter(self._hashes.items()), lambda chunk: _dumps(
            [_cache_record(slot, value) for slot, value in chunk]))
        yield b'],"outputs":['
        # Only the owners a done entry doesn't already say (links, forgotten keys): loading derives the rest.
        yield from _chunked_json((item for item in self._owners.items() if not self._said_by_entry(*item)),
                                 lambda chunk: _dumps([[output, *owner] for output, owner in chunk]))
        yield b"]}"

    def _said_by_entry(self, output: str, owner: Owner) -> bool:
        row = None if owner.key is None else self._entries.get(owner.key)
        return (row is not None and row.state == State.DONE and row.output == output
                and (row.inbox, row.source) == (owner.inbox, owner.source))

    def _started(self, key: str) -> _Row:
        row = self._entries[key]
        if row.state != State.STARTED:
            raise ValueError(f"ledger entry {key} is {row.state}, not started")
        return row

    def _transition(self, key: str, allowed: set[State], new: State) -> _Row:
        old = self._entries[key]
        if old.state not in allowed:
            raise ValueError(f"ledger entry {key} is {old.state}, cannot become {new.value}")
        return old._replace(state=new.value, updated_ts=self._clock(), target=None, solo=False)

    def _put(self, key: str, row: _Row) -> Entry:
        self._append({"op": "put", "entry": _record(key, row)})
        return Entry._from_row(key, self._entries[key])

    def _buffer_hash(self, slot: tuple[str, str], value: _Cached | None) -> None:
        self._pending_hashes[slot] = value
        if len(self._pending_hashes) >= HASH_BATCH:
            self.sync()

    def _require_open(self) -> int:
        if self._read_only:
            raise LedgerError(f"ledger {self._dir} was opened read-only")
        if self._journal_fd is None:
            raise LedgerError(f"ledger {self._dir} is closed")
        return self._journal_fd

    def _append(self, record: dict[str, Any]) -> None:
        """Write `record`, carrying the buffered stat-cache changes, as one line with one fsync; then apply it.

        One line per write is what makes "only the last line can be torn" true.

        Raises:
            LedgerUnwritableError: The state directory refused the write (full, read-only …); nothing changed.
            LedgerError: Another write error; nothing changed.
        """
        fd = self._require_open()
        seq = self._seq + 1
        line = {"seq": seq, **record}
        if self._pending_hashes:
            line["cache"] = {
                "set": [_cache_record(slot, value) for slot, value in self._pending_hashes.items()
                        if value is not None],
                "unset": [list(slot) for slot, value in self._pending_hashes.items() if value is None],
            }
        payload = _line(line)
        try:
            _write_all(fd, payload)
            os.fsync(fd)
        except OSError as exc:
            self._undo_partial_write(fd)
            message = f"cannot write ledger journal {self._dir / JOURNAL_NAME}: {exc}"
            if exc.errno in _UNWRITABLE_ERRNOS:
                raise LedgerUnwritableError(message, errno=exc.errno) from exc
            raise LedgerError(message) from exc
        self._seq = seq
        self._journal_size += len(payload)
        self._journal_records += 1
        self._pending_hashes.clear()
        self._apply(line)
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        if self._journal_records < self._next_compaction:
            return
        try:
            self.compact()
        except SrdError as exc:
            # The ledger stays consistent without compaction, and the record that triggered it is committed;
            # try again after another `compact_after` records rather than on every write of a full disk.
            self._next_compaction = self._journal_records + self._compact_after
            log.warning("ledger_compaction_failed", state_dir=str(self._dir), error=str(exc))

    def _undo_partial_write(self, fd: int) -> None:
        # A half-written line followed by later appends would be a corrupt line in the middle, which makes the
        # next load fail. Cutting it off keeps the file equal to what the in-memory state says was committed.
        try:
            os.ftruncate(fd, self._journal_size)
        except OSError as exc:
            log.error("ledger_journal_unrecoverable", path=str(self._dir / JOURNAL_NAME), error=str(exc))
            os.close(fd)
            self._journal_fd = None

    def _apply(self, rec: dict[str, Any]) -> None:
        op = rec["op"]
        if op == "put":
            key = rec["entry"]["key"]
            if not isinstance(key, str) or ":" not in key:
                raise ValueError(f"bad key {key!r}")
            row = _row(rec["entry"])
            old = self._entries.get(key)
            if old is not None:
                self._counts[old.state] -= 1
            self._entries[key] = row
            self._counts[row.state] += 1
            if row.state == State.STARTED and row.target is not None:
                self._targets[key] = row.target
            else:
                self._targets.pop(key, None)
            if row.state == State.DONE and row.output is not None:
                self._set_owner(row.output, Owner(row.inbox, row.source, key))
        elif op == "own":
            self._set_owner(rec["output"], Owner(sys.intern(rec["inbox"]), sys.intern(rec["source"]), rec["key"]))
        elif op == "forget":
            old = self._drop(rec["key"])
            if old is not None and old.state == State.DONE:
                # Its outputs stay srd's to replace, but no longer say that this content is done.
                for output, owner in list(self._owners.items()):
                    if owner.key == rec["key"]:
                        self._owners[output] = owner._replace(key=None)
        elif op not in ("cache", "snapshot"):
            raise ValueError(f"unknown op {op!r}")
        cache = rec.get("cache")
        if cache is not None:
            for item in cache["set"]:
                slot, value = _cache_value(item)
                self._hashes[slot] = value
            for inbox, path in cache["unset"]:
                self._hashes.pop((inbox, path), None)

    def _drop(self, key: str) -> _Row | None:
        old = self._entries.pop(key, None)
        self._targets.pop(key, None)
        if old is not None:
            self._counts[old.state] -= 1
        return old

    def _set_owner(self, output: str, owner: Owner) -> None:
        """Make `owner` the one owner of `output`; a ``done`` entry whose output that was is dropped, since
        the file no longer holds its picture (its content is processed again if it comes back)."""
        previous = self._owners.get(output)
        if previous == owner:
            return
        if previous is not None:
            slot = (previous.inbox, previous.source)
            rest = tuple(o for o in self._owned_by(slot) if o != output)
            if rest:
                self._owned[slot] = rest[0] if len(rest) == 1 else rest
            else:
                self._owned.pop(slot, None)
            if previous.key is not None and previous.key != owner.key:
                superseded = self._entries.get(previous.key)
                if superseded is not None and superseded.state == State.DONE and superseded.output == output:
                    self._drop(previous.key)
        self._owners[output] = owner
        slot = (owner.inbox, owner.source)
        outputs = (*self._owned_by(slot), output)
        self._owned[slot] = outputs[0] if len(outputs) == 1 else outputs

    def _load(self, problems: list[str] | None = None) -> None:
        """Read the snapshot and replay the journal; with `problems`, damage is listed there and skipped
        (what `repair` and `check` use) instead of refused."""
        started = time.perf_counter()
        if not self._read_only:
            # With the lock held, any temp file here is a leftover of a compaction that crashed.
            clean_stale_temps(self._dir)
        snapshot_seq = self._read_snapshot(problems)
        journal_path = self._dir / JOURNAL_NAME
        if self._read_only:
            self._replay(snapshot_seq, problems)
            return
        self._journal_fd = os.open(journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        replayed, good_size, file_size = self._replay(snapshot_seq, problems)
        if good_size < file_size and problems is None:
            try:
                os.ftruncate(self._journal_fd, good_size)
                os.fsync(self._journal_fd)
            except OSError as exc:
                raise LedgerError(f"cannot cut the torn tail off {journal_path}: {exc}") from exc
        self._journal_size = good_size
        log.info(
            "ledger_opened",
            state_dir=str(self._dir),
            entries=len(self._entries),
            replayed=replayed,
            seq=self._seq,
            ms=round((time.perf_counter() - started) * 1000),
        )
        if problems is None:
            self._maybe_compact()

    def _read_snapshot(self, problems: list[str] | None) -> int:
        path = self._dir / SNAPSHOT_NAME
        previous = self._dir / PREVIOUS_SNAPSHOT_NAME
        try:
            return self._load_snapshot_file(path)
        except FileNotFoundError:
            if not previous.exists():
                return 0  # a ledger that was never compacted
            reason = f"ledger snapshot {path} is missing, but {previous.name} exists: a snapshot was lost"
        except LedgerError as exc:
            reason = str(exc)
            self._snapshot_damaged = True
        if problems is None:
            raise LedgerError(f"{reason}; {REPAIR_HINT}")
        problems.append(reason)
        try:
            seq = self._load_snapshot_file(previous)
        except (FileNotFoundError, LedgerError) as exc:
            problems.append(f"no usable previous snapshot either ({exc}): starting from the journal alone")
            self._reset()
            return 0
        problems.append(f"using the previous snapshot {previous} (seq {seq}) instead")
        return seq

    def _reset(self) -> None:
        self._entries, self._hashes, self._counts, self._targets = {}, {}, Counter(), {}
        self._owners, self._owned, self._seq = {}, {}, 0

    def _load_snapshot_file(self, path: Path) -> int:
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise LedgerError(f"ledger snapshot {path} is unreadable: {exc}") from exc
        try:
            snapshot = json.loads(raw, object_hook=_decode_snapshot_object)
            del raw
            if _is_newer(snapshot["format"]):
                raise LedgerVersionError(
                    f"ledger snapshot {path} was written by a newer srd (format {snapshot['format']}; this srd "
                    f"reads formats {', '.join(map(str, _READABLE_FORMATS))}): use that srd version or a later "
                    "one; this one neither reads nor repairs it")
            if snapshot["format"] not in _READABLE_FORMATS:
                raise ValueError(f"unsupported format {snapshot['format']!r}")
            entries = snapshot["entries"]
            if not all(isinstance(row, _Row) for row in entries.values()):
                raise ValueError("an entry is not a ledger record")
            hashes = dict(_cache_value(item) for item in snapshot["hashes"])
            seq = int(snapshot["seq"])
            owners = [(output, Owner(sys.intern(inbox), sys.intern(source), key))
                      for output, inbox, source, key in snapshot.get("outputs", ())]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LedgerError(f"ledger snapshot {path} is unreadable: {exc}") from exc
        self._reset()
        self._entries, self._hashes, self._seq = entries, hashes, seq
        self._counts = Counter(row.state for row in entries.values())
        self._targets = {key: row.target for key, row in entries.items()
                         if row.state == State.STARTED and row.target is not None}
        # Each done entry owns its output (format 2 lists only the other owners). Format 1 kept no owners, so
        # there two entries may claim one path: the latest claim wins, and the older, stale kind this table
        # exists to prevent is dropped.
        done = [(row.updated_ts, key) for key, row in entries.items() if row.state == State.DONE]
        if snapshot["format"] == 1:
            done.sort()
        for _, key in done:
            row = entries.get(key)
            if row is not None and row.output is not None:
                self._set_owner(row.output, Owner(row.inbox, row.source, key))
        for output, owner in owners:
            self._set_owner(output, owner)
        return seq

    def _replay(self, snapshot_seq: int, problems: list[str] | None = None) -> tuple[int, int, int]:
        """Apply the journal records newer than the snapshot.

        A line that is not a whole record is damage, not a torn write, unless it is the unterminated last
        one: a write of srd's is one line ending in its newline, so only a write cut short lacks it.

        Returns:
            Records applied, the byte length of the journal's intact part, and the file's length.
        """
        path = self._dir / JOURNAL_NAME
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if not self._read_only:
                raise
            data = b""
        lines = data.split(b"\n")
        # What follows the last newline is empty, or a record whose write never completed (or, read-only
        # beside a running owner, is being written).
        tail = lines.pop()
        good_size = len(data) - len(tail)
        if tail and not self._read_only:
            log.warning("ledger_torn_record_dropped", path=str(path), line=len(lines) + 1, size=len(tail))
        applied = 0
        previous_seq = -1  # every journal srd writes counts up, line by line
        for number, line in enumerate(lines, 1):
            try:
                rec = json.loads(line)
                seq = rec["seq"]
                if not isinstance(seq, int) or isinstance(seq, bool):
                    raise TypeError("seq is not an integer")
                if seq <= previous_seq:
                    raise _Gap(f"seq {seq} after seq {previous_seq}: a repeated or older record")
                previous_seq = seq
                if rec.get("op") == "snapshot" and seq > snapshot_seq:
                    held = f"holds seq {snapshot_seq}" if snapshot_seq else "is missing"
                    raise _Gap(f"it continues a snapshot with seq {seq}, but {self._dir / SNAPSHOT_NAME} {held}")
                if seq <= snapshot_seq:
                    self._journal_records += 1
                    continue
                if seq != self._seq + 1:
                    if problems is None or seq <= self._seq:
                        # A repeated or older record (a journal appended to itself, a restored copy) would
                        # undo later changes: never applied, not even by `repair`.
                        raise _Gap(f"seq {seq} follows {self._seq}: it does not continue what came before")
                    problems.append(f"{path}: line {number}: seq {seq} follows {self._seq}: records are missing "
                                    "before it (it is kept)")
                self._apply(rec)
            except (ValueError, KeyError, TypeError, AttributeError, _Gap) as exc:
                what = str(exc) if isinstance(exc, _Gap) else f"not a ledger record ({exc})"
                message = f"{path}: line {number}: {what}"
                if problems is None:
                    raise LedgerError(f"{message}; {REPAIR_HINT}") from exc
                problems.append(message)
                self._dropped.append(line)
                continue
            self._seq = max(self._seq, seq)
            self._journal_records += 1
            applied += 1
        if tail and problems is not None and not self._read_only:
            problems.append(f"{path}: line {len(lines) + 1}: unterminated (a write cut short), dropped")
            self._dropped.append(tail)
        return applied, good_size, len(data)

class _Gap(Exception):
    """A journal record that does not follow from what was loaded before it."""


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def _cache_record(slot: tuple[str, str], value: _Cached) -> list[Any]:
    """A stat-cache line as stored: ``[inbox, path, size, mtime_ns, sha256, ino, ctime_ns]``."""
    size, mtime_ns, ino, ctime_ns, sha = value
    return [*slot, size, mtime_ns, sha.hex(), ino, ctime_ns]


def _cache_value(item: list[Any]) -> tuple[tuple[str, str], _Cached]:
    """The slot and value of a stored stat-cache line (five fields when written before inodes were kept)."""
    inbox, path, size, mtime_ns, sha256, *identity = item
    ino, ctime_ns = identity if identity else (_UNKNOWN, _UNKNOWN)
    for number in (size, mtime_ns, ino, ctime_ns):
        if not isinstance(number, int):
            raise TypeError(f"stat-cache field {number!r} is not an integer")
    return (sys.intern(inbox), sys.intern(path)), (size, mtime_ns, ino, ctime_ns, bytes.fromhex(sha256))


def _acquire_lock(path: Path) -> int:
    """Take the state-dir lock and write our pid into it; the kernel releases it if we die."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise LockedError(f"state directory {path.parent} is in use by another srd instance{by}") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


_dumps = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps(…, separators=) builds one per call


def _chunked_json(items: Iterator[Any], encode: Callable[[list[Any]], str]) -> Iterator[bytes]:
    """The JSON `encode` gives for `items` (a list or an object), without its brackets, in comma-joined chunks
    of `_SNAPSHOT_CHUNK` items: one encode call per chunk is far cheaper than one per item."""
    separator = b""
    while chunk := list(itertools.islice(items, _SNAPSHOT_CHUNK)):
        yield separator + encode(chunk)[1:-1].encode()
        separator = b","


@dataclass(frozen=True)
class RepairReport:
    """What `repair_ledger` found and did.

    Attributes:
        problems: Each piece of damage found, with its file and line.
        counts: Entries per state after the repair.
        dropped_to: Where the unusable journal lines were saved (None if there were none).
    """

    problems: tuple[str, ...]
    counts: dict[str, int]
    dropped_to: Path | None


def _require_state_dir(state_dir: Path) -> None:
    """Refuse a state directory that is missing or not a folder: reading or editing a ledger never makes one,
    so a wrong config is an error, not an empty ledger or a new folder left behind.

    Raises:
        StateDirError: `state_dir` is missing, not a folder, or can't be looked at.
    """
    try:
        if Path(state_dir).is_dir():
            return
        os.stat(state_dir)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise StateDirError(f"no ledger in {state_dir}: the folder does not exist (srd run makes it when it "
                                "first runs with this state_dir; is this the config it runs with?)") from exc
        raise StateDirError(f"cannot read the ledger in {state_dir}: {exc.strerror or exc}") from exc
    raise StateDirError(f"no ledger in {state_dir}: it is not a folder")


@contextlib.contextmanager
def _reading(state_dir: Path) -> Iterator[None]:
    """Report a file of the ledger that can't be read (no permission, a folder in its place) as the state
    directory's fault, in one line."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise StateDirError(f"cannot read the ledger in {state_dir}: {exc.strerror or exc}{where}") from exc


def _is_newer(snapshot_format: Any) -> bool:
    return type(snapshot_format) is int and snapshot_format > max(_READABLE_FORMATS)


def check_ledger(state_dir: Path) -> RepairReport:
    """Read the ledger without locking or changing anything and list every problem a load would refuse.

    Safe beside a running daemon. A write cut short at the very end of the journal is not listed: the
    next start drops it by design (and beside a running daemon it may be a write in progress).

    Raises:
        StateDirError: `state_dir` is missing or can't be read.
        LedgerVersionError: The snapshot was written by a newer srd.
    """
    _require_state_dir(state_dir)
    problems: list[str] = []
    for _ in range(3):  # the owner may compact between our reads, as in `Ledger.open(read_only=True)`
        problems = []
        ledger = Ledger(Path(state_dir), None, compact_after=DEFAULT_COMPACT_AFTER, clock=time.time)
        with _reading(state_dir):
            ledger._load(problems)
        if not problems:
            break
    return RepairReport(tuple(problems), ledger.counts(), None)


def repair_ledger(state_dir: Path) -> RepairReport:
    """Rebuild a damaged ledger from every intact record; the daemon must be stopped (the lock is taken).

    The snapshot (or, if it is lost or unreadable, the previous one) is loaded and every journal line that
    is a whole, valid record is applied in order, whatever its neighbours; the result is written as a new
    snapshot. Lines that cannot be used are saved beside the journal as ``journal.jsonl.dropped-<time>`` and
    listed in the report. A healthy ledger is left as it is.

    Raises:
        LockedError: A daemon (or another command) holds the state directory.
        StateDirError: There is no state directory, or it can't be read.
        LedgerUnwritableError: The state directory can't be locked or written.
        LedgerVersionError: The snapshot was written by a newer srd: nothing is changed.
    """
    state_dir = Path(state_dir)
    _require_state_dir(state_dir)
    try:
        lock_fd = _acquire_lock(state_dir / LOCK_NAME)
    except OSError as exc:
        raise LedgerUnwritableError(f"cannot lock {state_dir}: {exc.strerror or exc}", errno=exc.errno) from exc
    ledger = Ledger(state_dir, lock_fd, compact_after=DEFAULT_COMPACT_AFTER, clock=time.time)
    try:
        problems: list[str] = []
        with _reading(state_dir):
            ledger._load(problems)
        dropped_to = None
        if problems:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            if ledger._snapshot_damaged:
                # Set aside rather than kept as the previous snapshot, which may be the good one.
                os.replace(state_dir / SNAPSHOT_NAME, state_dir / f"{SNAPSHOT_NAME}.damaged-{stamp}")
            if ledger._dropped:
                dropped_to = state_dir / f"{JOURNAL_NAME}.dropped-{stamp}"
                with open_atomic(dropped_to) as out:
                    out.write(b"".join(line + b"\n" for line in ledger._dropped))
            ledger.compact()
            log.warning("ledger_repaired", state_dir=str(state_dir), problems=len(problems),
                        dropped_lines=len(ledger._dropped), entries=len(ledger))
        return RepairReport(tuple(problems), ledger.counts(), dropped_to)
    finally:
        ledger.close()
