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
  (older srd) load as 0 and false. A ``done`` entry's ``losses`` (what its output left out of the source, in
  words) came later; records without it load as none.
- ``{"seq", "op": "own", "output", "inbox", "source", "key"}``: srd gave `output` this content's picture for
  that source without a job of its own (a duplicate's link or copy); with a null key, srd removed the file
  there (an earlier output the source's newer one superseded) and the name stays the source's.
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
In memory each entry is a compact `Row` (an `Entry` is built only when asked for): the fields its key and
timestamps already say are derived rather than held, and repeated strings are shared, because a NAS daemon
keeps every entry it ever recorded (with its stat-cache line, about 1.4 KB of RSS each where dicts took 2.3
KB; `scripts/bench_ledger.py`).
The snapshot is decoded straight into rows and written in chunks, so neither a load nor a compaction needs
the whole ledger as dicts or as one string.

The modules: `errors`, `records` (entries, owners, stat-cache lines and their stored form), `tables` (the
tables in memory), `files` (the state directory's file names, lock and line writes), `snapshot` (the snapshot
file, read and written), `base` (a generation as loaded), `generation` (writing a new one), `writeback`
(paced writes), `compaction` (the thread that writes a generation and makes it current), `heap` (freed memory
given back), `journal` (replaying the journal), `store` (load, durable appends, compaction), `ledger`
(`Ledger`: what the records mean), `salvage` (every record line of a generation checked against its index,
for check and repair), `reindex` and `repair` (`check_ledger`, `repair_ledger`). The names below are the
package's interface.
"""

from srd.ledger.errors import REPAIR_HINT, LedgerError, LedgerUnwritableError, LedgerVersionError
from srd.ledger.files import JOURNAL_NAME, LOCK_NAME, PREVIOUS_SNAPSHOT_NAME, SNAPSHOT_NAME
from srd.ledger.ledger import DEFAULT_COMPACT_AFTER, Ledger
from srd.ledger.records import KEPT_CHANGED, Entry, Owner, State, make_key, source_step_done
from srd.ledger.repair import RepairReport, check_ledger, repair_ledger
from srd.ledger.snapshot import SNAPSHOT_FORMAT
from srd.ledger.store import HASH_BATCH

__all__ = [
    "DEFAULT_COMPACT_AFTER",
    "HASH_BATCH",
    "JOURNAL_NAME",
    "KEPT_CHANGED",
    "LOCK_NAME",
    "PREVIOUS_SNAPSHOT_NAME",
    "REPAIR_HINT",
    "SNAPSHOT_FORMAT",
    "SNAPSHOT_NAME",
    "Entry",
    "Ledger",
    "LedgerError",
    "LedgerUnwritableError",
    "LedgerVersionError",
    "Owner",
    "RepairReport",
    "State",
    "check_ledger",
    "make_key",
    "repair_ledger",
    "source_step_done",
]
