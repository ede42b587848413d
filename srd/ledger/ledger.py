"""`Ledger`: what the records of one state directory's ledger mean: its queries and its state changes."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from types import TracebackType

from srd.fs.fileversion import FileVersion
from srd.ledger.errors import LedgerError, LedgerUnwritableError
from srd.ledger.files import LOCK_NAME, acquire_lock, reading, require_state_dir
from srd.ledger.records import Entry, Owner, Row, State, make_key, stored_record
from srd.ledger.store import Store

DEFAULT_COMPACT_AFTER = 10_000


@dataclass(frozen=True)
class Damage:
    """What a tolerant load (`Ledger.load_listing_damage`) found.

    Attributes:
        problems: Each piece of damage, with its file and line.
        dropped: The journal lines it could not use.
        snapshot_damaged: The snapshot itself was unreadable (the previous one, or none, was used instead).
        generation_dropped: The generation's record lines it could not use, per record file (by name).
    """

    problems: tuple[str, ...]
    dropped: tuple[bytes, ...]
    snapshot_damaged: bool
    generation_dropped: dict[str, list[bytes]]


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
        self._store = Store(state_dir, lock_fd, compact_after=compact_after)
        self._clock = clock

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
            require_state_dir(state_dir)
        if read_only:
            with reading(state_dir):
                return cls._open_read_only(state_dir, compact_after, clock)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            lock_fd = acquire_lock(state_dir / LOCK_NAME)
        except OSError as exc:
            raise LedgerUnwritableError(f"cannot use state directory {state_dir}: {exc.strerror or exc}",
                                        errno=exc.errno) from exc
        ledger = cls(state_dir, lock_fd, compact_after=compact_after, clock=clock)
        try:
            ledger._store.load()
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
                ledger._store.load()
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
        return len(self._store.tables)

    @property
    def state_dir(self) -> Path:
        """The folder this ledger owns."""
        return self._store.state_dir

    @property
    def journal_records(self) -> int:
        """Records in the journal since the last compaction."""
        return self._store.journal_records

    def close(self) -> None:
        """Write buffered stat-cache changes, close the journal and release the lock; idempotent."""
        self._store.close()

    # -- queries ------------------------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """Return the entry stored under `key`, if any."""
        row = self._store.tables.row(key)
        return None if row is None else Entry.from_row(key, row)

    def lookup(self, sha256: str, fingerprint: str) -> Entry | None:
        """Return the entry for this content under this pipeline, if any."""
        return self.get(make_key(sha256, fingerprint))

    def entries(self) -> Iterator[Entry]:
        """Iterate over all entries (a view as of this call: recording while iterating is safe). Most are read
        from disk: a full pass over a large ledger takes seconds."""
        return (Entry.from_row(key, row) for key, row in self._store.tables.iter_entries())

    def reserved_targets(self) -> dict[str, Path]:
        """The output path reserved by each ``started`` entry that has one, by key."""
        return {key: Path(target) for key, target in self._store.tables.targets.items()}

    def owner(self, output: Path | str) -> Owner | None:
        """Who srd wrote this output file for, if it did (as far as the ledger knows)."""
        return self._store.tables.owner(str(output))

    def outputs_of(self, inbox: str, source: PurePath | str) -> dict[str, str | None]:
        """The outputs srd wrote for this source, each with the key of the content it holds (None: forgotten)."""
        slot = (inbox, PurePosixPath(source).as_posix())
        return {output: owner.key for output, owner in self._store.tables.outputs_of(slot).items()}

    def done_by_inbox(self) -> dict[str, tuple[int, float]]:
        """Per inbox id, the number of done entries and the latest one's update time, from the index alone
        (the daemon counts them at start-up, over every entry it ever recorded)."""
        return self._store.tables.done_by_inbox()

    def in_state(self, state: State) -> list[Entry]:
        """The entries in `state`, for the rare ones (started, failed, retry): each is read from disk."""
        return [Entry.from_row(key, row) for key, row in self._store.tables.entries_in_state(state)]

    def unfinished(self) -> list[Entry]:
        """Return entries started but neither done nor failed: a crash interrupted them, retry them."""
        return self.in_state(State.STARTED)

    def counts(self) -> dict[str, int]:
        """Return the number of entries in each `State` (all states present, zeros included)."""
        return {state.value: self._store.tables.counts[state.value] for state in State}

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
        old = self._store.tables.row(key)
        if old is not None and old.state == State.DONE:
            raise ValueError(f"ledger entry {key} is already done; forget() it to process it again")
        ts = self._clock()
        row = Row(inbox, source.as_posix(), State.STARTED.value, 1 if old is None else old.attempts + 1,
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
            return Entry.from_row(key, old)
        return self._put(key, old._replace(solo=False, updated_ts=self._clock()))

    def pin_solo_deaths(self) -> list[Entry]:
        """At startup: charge a strike to every entry the last daemon was running alone when it died.

        A job runs alone only as a retry after a death nobody could be blamed for; the daemon dying again
        while that one job ran is the second kind of death that can be pinned on a file (a file whose
        decoding gets the whole service killed, e.g. by a cgroup OOM). Call once, before any new start.

        Returns:
            The entries charged, as they are now.
        """
        return [self.record_strike(key) for key, row in self._store.tables.entries_in_state(State.STARTED)
                if row.solo]

    def record_done(self, key: str, *, output: Path, output_size: int, disposition: str | None = None,
                    losses: tuple[str, ...] = ()) -> Entry:
        """Record that the output of a started entry is durably in place, what it left out of its source
        (`Entry.losses`), and, when it is already known, what was done with the source (as `record_disposed`
        would, in the same record).

        Raises:
            KeyError: No such entry.
            ValueError: The entry is not ``started``.
        """
        row = self._transition(key, {State.STARTED}, State.DONE)
        return self._put(key, row._replace(output=str(output), output_size=output_size, disposition=disposition,
                                           losses=losses))

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
        old = self._row(key)
        if old.state not in (State.DONE, State.FAILED):
            raise ValueError(f"ledger entry {key} is {old.state}, not done or failed")
        return self._put(key, old._replace(disposition=disposition, updated_ts=self._clock()))

    def record_output(self, output: Path, *, inbox: str, source: PurePath | str, key: str | None) -> None:
        """Record that srd gave `output` the picture of content `key` for this source without a job of its own
        (a duplicate's hard link or copy). Like a ``done`` record, it takes the path over from its last owner.
        With `key` None the name stays the source's but proves nothing (srd removed the file it held).
        """
        self._store.append({"op": "own", "output": str(output), "inbox": inbox,
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
        if self._store.tables.row(key) is None:
            return False
        self._store.append({"op": "forget", "key": key})
        return True

    # -- stat cache ---------------------------------------------------------------------------------------

    def cached_hash(self, inbox: str, source: PurePath | str, version: FileVersion) -> str | None:
        """Return the remembered sha256 of a file if it is the same version (see `FileVersion`), else None.

        This only saves re-reading unchanged files after a restart; the content hash stays the key.
        """
        cached = self._store.tables.cached((inbox, PurePosixPath(source).as_posix()))
        if cached is None or cached[:4] != version:
            return None
        return cached[4].hex()

    def finished_keys(self, inbox: str, sources: Sequence[str], versions: Sequence[FileVersion],
                      fingerprint: str) -> list[str | None]:
        """For each source (as stored: POSIX, below the inbox) in its version: its key, if srd finished this very
        version here (the stat cache knows the version, the content's entry under `fingerprint` is done for
        this source with its source step done, and the output it wrote is still owned by this source with this
        content), else None.

        For the restart scan, which asks this of every photo of a library, a folder at a time: no `Entry`,
        path object or record read per file (`Tables.finished_keys`). None says nothing more than "not that
        simple" (a duplicate, a changed file, an output taken over, a source step still to do).
        """
        return self._store.tables.finished_keys([(inbox, source) for source in sources], versions, fingerprint)

    def remember_hash(self, inbox: str, source: PurePath | str, version: FileVersion, sha256: str) -> None:
        """Remember a file's hash for `cached_hash`.

        Effective at once in memory; journalled with the next state change, or on `sync`, or once
        `HASH_BATCH` changes are buffered, since losing some in a crash only costs hashing the files again.
        """
        slot = (sys.intern(inbox), sys.intern(PurePosixPath(source).as_posix()))  # shared with the entry's
        value = (*version, bytes.fromhex(sha256))
        if self._store.tables.cached(slot) != value:
            self._store.tables.live.hashes[slot] = value
            self._store.buffer_hash(slot, value)

    def forget_hash(self, inbox: str, source: PurePath | str) -> None:
        """Drop a file from the stat cache (it was deleted or moved away), so the cache doesn't grow forever."""
        slot = (inbox, PurePosixPath(source).as_posix())
        if self._store.tables.cached(slot) is not None:
            self._store.tables.live.hashes[slot] = None
            self._store.buffer_hash(slot, None)

    def sync(self) -> None:
        """Write buffered stat-cache changes to the journal now (e.g. at the end of a scan), and take the result
        of a background compaction that has finished."""
        self._store.sync()
        self._store.poll()

    # -- maintenance --------------------------------------------------------------------------------------

    def lost(self) -> str | None:
        """Why this ledger's files are no longer its state directory's (see `Store.lost`), or None."""
        return self._store.lost()

    def abandon(self) -> None:
        """Give up the files without another write (after `lost`): every later change raises `LedgerError`."""
        self._store.abandon()

    def compact(self) -> None:
        """Fold the journal into a new generation and shorten the journal, waiting for it (see `Store.compact`;
        the daemon's own compactions run in the background)."""
        self._store.compact()

    @property
    def compacting(self) -> bool:
        """Whether a compaction runs in the background now."""
        return self._store.compacting

    def load_listing_damage(self) -> Damage:
        """Load, listing each piece of damage and skipping it instead of refusing the ledger (what
        `check_ledger` and `repair_ledger` do)."""
        problems: list[str] = []
        self._store.load(problems)
        return Damage(tuple(problems), tuple(self._store.dropped), self._store.snapshot_damaged,
                      self._store.generation_dropped)

    # -- internals ----------------------------------------------------------------------------------------

    def _row(self, key: str) -> Row:
        row = self._store.tables.row(key)
        if row is None:
            raise KeyError(key)
        return row

    def _started(self, key: str) -> Row:
        row = self._row(key)
        if row.state != State.STARTED:
            raise ValueError(f"ledger entry {key} is {row.state}, not started")
        return row

    def _transition(self, key: str, allowed: set[State], new: State) -> Row:
        old = self._row(key)
        if old.state not in allowed:
            raise ValueError(f"ledger entry {key} is {old.state}, cannot become {new.value}")
        return old._replace(state=new.value, updated_ts=self._clock(), target=None, solo=False)

    def _put(self, key: str, row: Row) -> Entry:
        self._store.append({"op": "put", "entry": stored_record(key, row)})
        return Entry.from_row(key, self._row(key))
