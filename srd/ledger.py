"""Crash-safe record of which inputs were processed, so that no image is processed twice (docs/design.md §4).

The state lives in a local ``state_dir``:

- ``lock``: ``flock``-ed by the one process that owns the ledger; it holds that process's pid so that a
  second instance can say who is in the way.
- ``ledger.json``: a snapshot ``{"format", "seq", "entries", "hashes"}``, replaced atomically by `compact`.
- ``journal.jsonl``: one JSON record per line, appended and fsynced before the change counts. Each write is
  exactly one line, so an interrupted write can only damage the last line, which loading drops.

Every journal record carries a ``seq``; the snapshot stores the last ``seq`` it includes. Loading skips the
records the snapshot already holds, so a crash between writing a snapshot and truncating the journal neither
loses nor double-applies anything. Records hold an entry's whole state rather than a delta, so replay is
idempotent as well.

JSON rather than SQLite keeps the state readable and repairable with a text editor and adds no dependency.
In memory each entry is a compact `_Row` (an `Entry` is built only when asked for): the fields its key and
timestamps already say are derived rather than held, and repeated strings are shared, because a NAS daemon
keeps every entry it ever recorded (with its stat-cache line, about 1.4 KB of RSS each where dicts took 2.3
KB; `scripts/bench_ledger.py`).
The snapshot is decoded straight into rows and written in chunks, so neither a load nor a compaction needs
the whole ledger as dicts or as one string.
"""

from __future__ import annotations

import enum
import fcntl
import itertools
import json
import os
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

from srd.atomic import clean_stale_temps, open_atomic
from srd.errors import LockedError, SrdError

log = structlog.get_logger(__name__)

SNAPSHOT_NAME = "ledger.json"
JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = "lock"
SNAPSHOT_FORMAT = 1
DEFAULT_COMPACT_AFTER = 10_000
# Stat-cache changes are only an optimisation, so they are batched: a startup scan of a large inbox must not
# cost one fsync per file. Losing a batch in a crash only means hashing those files again.
HASH_BATCH = 1024
# Entries per write while streaming a snapshot: big enough to keep writes few, small enough to stay light.
_SNAPSHOT_CHUNK = 2048


class LedgerError(SrdError):
    """The ledger's files are corrupt or inconsistent, or the journal can't be written durably."""


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
        attempts: Starts since creation or since the last `Ledger.retry`; a file that keeps killing workers
            is recognisable by this count.
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
        record.get("target"),  # absent from records written before srd kept reservations in the ledger
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
        "target": row.target,
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
        # (inbox, path) → (size, mtime_ns, sha256 as 32 bytes: half the memory of its hex string).
        self._hashes: dict[tuple[str, str], tuple[int, int, bytes]] = {}
        # Stat-cache changes not yet in the journal: the latest value per file, None for a removal.
        self._pending_hashes: dict[tuple[str, str], tuple[int, int, bytes] | None] = {}
        self._seq = 0
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
    ) -> Ledger:
        """Lock `state_dir`, load the snapshot, replay the journal, and compact if the journal is long.

        With `read_only`, nothing is locked or written, so it works beside a running daemon (``srd ledger
        list``): the view is the ledger as of that moment, and every change raises `LedgerError`.

        Args:
            state_dir: Local folder for the ledger (created if missing). Not on NFS: flock is unreliable there.
            compact_after: Compact (on open, and after a write) once the journal holds this many records, so
                that startup time stays bounded however long the daemon runs. Each compaction rewrites the whole
                snapshot (about 0.8 s for 100,000 entries here), which is what this trades against replay time.
            clock: Wall clock for the entries' timestamps (injectable for tests).

        Raises:
            ValueError: `compact_after` is below 1.
            LockedError: Another process (or another `Ledger` in this one) owns `state_dir`.
            LedgerError: The snapshot or a journal line other than the last is corrupt, or the journal does
                not continue the snapshot; nothing is guessed, so that no history is silently lost.
        """
        if compact_after < 1:
            raise ValueError(f"compact_after must be at least 1, got {compact_after}")
        state_dir = Path(state_dir)
        if read_only:
            return cls._open_read_only(state_dir, compact_after, clock)
        state_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _acquire_lock(state_dir / LOCK_NAME)
        ledger = cls(state_dir, lock_fd, compact_after=compact_after, clock=clock)
        try:
            ledger._load()
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

    def done_outputs(self) -> Iterator[tuple[str, str, str]]:
        """Iterate over ``(output, inbox, source)`` of the ``done`` entries, as the ledger's own strings (no
        `Entry` or `Path` built: the daemon maps every output it ever wrote, so this must stay light)."""
        for row in list(self._entries.values()):
            if row.state == State.DONE and row.output is not None:
                yield row.output, row.inbox, row.source

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
                     target: Path | None = None) -> Entry:
        """Record that processing of this content begins, counting one more attempt.

        A ``started`` entry that is started again is the retry after a crash; a ``failed`` one may be started
        again at the caller's discretion (its attempt count tells how often it failed).

        Args:
            sha256: Hex digest of the input content.
            fingerprint: The pipeline fingerprint.
            inbox: Id of the inbox the file was found in.
            source: The file's path relative to that inbox.
            target: The output path the job will write, reserved until the entry leaves ``started``.

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
                   None if target is None else str(target))
        return self._put(key, row)

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

    def retry(self, key: str) -> Entry:
        """Make a failed entry eligible again, with a fresh attempt budget and its history kept.

        Raises:
            KeyError: No such entry.
            ValueError: The entry is not ``failed``.
        """
        row = self._transition(key, {State.FAILED}, State.RETRY)
        return self._put(key, row._replace(attempts=0, error=None, disposition=None))

    def forget(self, key: str) -> bool:
        """Remove an entry entirely, so that its content is processed again as new.

        Returns:
            Whether there was such an entry.
        """
        if key not in self._entries:
            return False
        self._append({"op": "forget", "key": key})
        return True

    # -- stat cache ---------------------------------------------------------------------------------------

    def cached_hash(self, inbox: str, source: PurePath | str, *, size: int, mtime_ns: int) -> str | None:
        """Return the remembered sha256 of a file if its size and mtime are unchanged, else None.

        This only saves re-reading unchanged files after a restart; the content hash stays the key.
        """
        cached = self._hashes.get((inbox, PurePosixPath(source).as_posix()))
        if cached is None or cached[0] != size or cached[1] != mtime_ns:
            return None
        return cached[2].hex()

    def remember_hash(self, inbox: str, source: PurePath | str, *, size: int, mtime_ns: int, sha256: str) -> None:
        """Remember a file's hash for `cached_hash`.

        Effective at once in memory; journalled with the next state change, or on `sync`, or once
        `HASH_BATCH` changes are buffered, since losing some in a crash only costs hashing the files again.
        """
        slot = (sys.intern(inbox), sys.intern(PurePosixPath(source).as_posix()))  # shared with the entry's
        value = (size, mtime_ns, bytes.fromhex(sha256))
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

        The snapshot is replaced atomically and records the last ``seq`` it includes; only then is the
        journal truncated. A crash in between leaves a journal whose records the next load skips.

        Raises:
            OutputError: The snapshot could not be written; the old snapshot and the journal are intact.
            LedgerError: The journal could not be truncated (the new snapshot is in place and consistent).
        """
        fd = self._require_open()
        started = time.perf_counter()
        with open_atomic(self._dir / SNAPSHOT_NAME) as out:
            for chunk in self._snapshot_chunks():
                out.write(chunk)
        # Buffered stat-cache changes are in the snapshot now; the journal no longer needs them.
        self._pending_hashes.clear()
        try:
            os.ftruncate(fd, 0)
            os.fsync(fd)
        except OSError as exc:
            raise LedgerError(f"cannot truncate ledger journal {self._dir / JOURNAL_NAME}: {exc}") from exc
        self._journal_size = 0
        self._journal_records = 0
        self._next_compaction = self._compact_after
        log.info(
            "ledger_compacted",
            entries=len(self._entries),
            hashes=len(self._hashes),
            seq=self._seq,
            ms=round((time.perf_counter() - started) * 1000),
        )

    # -- internals ----------------------------------------------------------------------------------------

    def _snapshot_chunks(self) -> Iterator[bytes]:
        """The snapshot ``{"format", "seq", "entries", "hashes"}`` as JSON, a few thousand items at a time."""
        yield b'{"format":%d,"seq":%d,"entries":{' % (SNAPSHOT_FORMAT, self._seq)
        yield from _chunked_json(iter(self._entries.items()),
                                 lambda chunk: _dumps({key: _record(key, row) for key, row in chunk}))
        yield b'},"hashes":['
        yield from _chunked_json(iter(self._hashes.items()), lambda chunk: _dumps(
            [[inbox, path, size, mtime_ns, sha.hex()] for (inbox, path), (size, mtime_ns, sha) in chunk]))
        yield b"]}"

    def _transition(self, key: str, allowed: set[State], new: State) -> _Row:
        old = self._entries[key]
        if old.state not in allowed:
            raise ValueError(f"ledger entry {key} is {old.state}, cannot become {new.value}")
        return old._replace(state=new.value, updated_ts=self._clock(), target=None)

    def _put(self, key: str, row: _Row) -> Entry:
        self._append({"op": "put", "entry": _record(key, row)})
        return Entry._from_row(key, self._entries[key])

    def _buffer_hash(self, slot: tuple[str, str], value: tuple[int, int, bytes] | None) -> None:
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
        """
        fd = self._require_open()
        seq = self._seq + 1
        line = {"seq": seq, **record}
        if self._pending_hashes:
            line["cache"] = {
                "set": [[*slot, value[0], value[1], value[2].hex()]
                        for slot, value in self._pending_hashes.items() if value is not None],
                "unset": [list(slot) for slot, value in self._pending_hashes.items() if value is None],
            }
        payload = json.dumps(line, separators=(",", ":")).encode() + b"\n"
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            self._undo_partial_write(fd)
            raise LedgerError(f"cannot write ledger journal {self._dir / JOURNAL_NAME}: {exc}") from exc
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
        elif op == "forget":
            old = self._entries.pop(rec["key"], None)
            self._targets.pop(rec["key"], None)
            if old is not None:
                self._counts[old.state] -= 1
        elif op != "cache":
            raise ValueError(f"unknown op {op!r}")
        cache = rec.get("cache")
        if cache is not None:
            for inbox, path, size, mtime_ns, sha256 in cache["set"]:
                self._hashes[(sys.intern(inbox), sys.intern(path))] = (size, mtime_ns, bytes.fromhex(sha256))
            for inbox, path in cache["unset"]:
                self._hashes.pop((inbox, path), None)

    def _load(self) -> None:
        started = time.perf_counter()
        if not self._read_only:
            # With the lock held, any temp file here is a leftover of a compaction that crashed.
            clean_stale_temps(self._dir)
        snapshot_seq = self._read_snapshot()
        journal_path = self._dir / JOURNAL_NAME
        if self._read_only:
            self._replay(snapshot_seq)
            return
        self._journal_fd = os.open(journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        replayed, good_size, file_size = self._replay(snapshot_seq)
        if good_size < file_size:
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
        self._maybe_compact()

    def _read_snapshot(self) -> int:
        path = self._dir / SNAPSHOT_NAME
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0
        except UnicodeDecodeError as exc:
            raise LedgerError(f"ledger snapshot {path} is unreadable: {exc}") from exc
        try:
            snapshot = json.loads(raw, object_hook=_decode_snapshot_object)
            del raw
            if snapshot["format"] != SNAPSHOT_FORMAT:
                raise ValueError(f"unsupported format {snapshot['format']!r}")
            entries = snapshot["entries"]
            if not all(isinstance(row, _Row) for row in entries.values()):
                raise ValueError("an entry is not a ledger record")
            hashes = {(sys.intern(inbox), sys.intern(rel)): (size, mtime_ns, bytes.fromhex(sha))
                      for inbox, rel, size, mtime_ns, sha in snapshot["hashes"]}
            seq = int(snapshot["seq"])
            counts = Counter(row.state for row in entries.values())
            targets = {key: row.target for key, row in entries.items()
                       if row.state == State.STARTED and row.target is not None}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LedgerError(f"ledger snapshot {path} is unreadable: {exc}") from exc
        self._entries, self._hashes, self._counts, self._targets, self._seq = entries, hashes, counts, targets, seq
        return seq

    def _replay(self, snapshot_seq: int) -> tuple[int, int, int]:
        """Apply the journal records newer than the snapshot.

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
        offset = 0
        for number, line in enumerate(lines, 1):
            try:
                rec = json.loads(line)
                seq = rec["seq"]
                if not isinstance(seq, int):
                    raise TypeError("seq is not an integer")
            except (ValueError, KeyError, TypeError) as exc:
                if number == len(lines) and not tail:
                    log.warning("ledger_torn_record_dropped", path=str(path), line=number, size=len(line) + 1)
                    good_size = offset
                    break
                raise LedgerError(
                    f"{path}: line {number} is corrupt ({exc}); refusing to load a ledger with a hole in its history"
                ) from exc
            offset += len(line) + 1
            self._journal_records += 1
            if seq <= snapshot_seq:
                continue
            if seq != self._seq + 1:
                raise LedgerError(f"{path}: line {number} has seq {seq} after {self._seq}; it does not continue "
                                  "the snapshot")
            try:
                self._apply(rec)
            except (ValueError, KeyError, TypeError) as exc:
                raise LedgerError(f"{path}: line {number} is not a valid record ({exc})") from exc
            self._seq = seq
            applied += 1
        return applied, good_size, len(data)


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
