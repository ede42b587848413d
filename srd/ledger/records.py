"""The ledger's records: entries, output owners and stat-cache lines, in memory and in their stored form."""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

# A stat-cache line: size, mtime_ns, inode, ctime_ns (see `FileVersion`) and the sha256 as 32 bytes.
Cached = tuple[int, int, int, int, bytes]
# Inode and ctime of stat-cache lines written before srd recorded them: equal to no real stat, so each such
# file is hashed once more rather than trusted on size and mtime alone.
_UNKNOWN = -1


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
STATE_VALUES = {state.value: state.value for state in State}


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
        losses: What the output left out of the source, in words (``done`` only; see `JobResult.losses`):
            where there is any, the output does not stand for the source, which is then never deleted.
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
    losses: tuple[str, ...]

    @classmethod
    def from_row(cls, key: str, row: Row) -> Entry:
        """The entry of an in-memory row."""
        sha256, fingerprint = key.split(":", 1)
        return cls(
            key=key, sha256=sha256, fingerprint=fingerprint, inbox=row.inbox, source=PurePosixPath(row.source),
            state=State(row.state), attempts=row.attempts,
            created_at=iso(row.created_ts), created_ts=row.created_ts,
            updated_at=iso(row.updated_ts), updated_ts=row.updated_ts,
            output=None if row.output is None else Path(row.output), output_size=row.output_size,
            error=row.error, disposition=row.disposition, target=None if row.target is None else Path(row.target),
            strikes=row.strikes, solo=row.solo, losses=row.losses,
        )


class Row(NamedTuple):
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
    losses: tuple[str, ...] = ()


class Owner(NamedTuple):
    """Who an output file belongs to: the source srd wrote it for, and the content key whose picture it holds
    (None once that key was forgotten: the file is still srd's to replace, but no longer proof of anything)."""

    inbox: str
    source: str
    key: str | None


# The disposition of a source that changed between its processing and its source step (it is processed again).
KEPT_CHANGED = "kept-changed"
# Dispositions after which the source step is still to do: none yet (a crash cut it short), or the file changed.
_STEP_PENDING = (None, KEPT_CHANGED)


def source_step_done(disposition: str | None) -> bool:
    """Whether a done entry's source step (keep, archive, delete) has happened for the content it processed."""
    return disposition not in _STEP_PENDING


def iso(ts: float) -> str:
    """A Unix time as the ISO 8601 UTC date the stored records show."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def row_of(record: dict[str, Any]) -> Row:
    """The `Row` of a stored record, its repeated strings shared."""
    state = STATE_VALUES.get(record["state"])
    if state is None:
        raise ValueError(f"unknown state {record['state']!r}")
    disposition = record["disposition"]
    return Row(
        sys.intern(record["inbox"]), sys.intern(record["source"]), state, record["attempts"],
        record["created_ts"], record["updated_ts"], record["output"], record["output_size"], record["error"],
        None if disposition is None else sys.intern(disposition),
        # Absent from records of older srd versions: no reservation, no deaths pinned, not alone, nothing lost.
        record.get("target"), record.get("strikes", 0), record.get("solo", False), tuple(record.get("losses", ())),
    )


def stored_record(key: str, row: Row) -> dict[str, Any]:
    """The stored form of a row: every field spelled out, so the files read well on their own."""
    sha256, fingerprint = key.split(":", 1)
    return {
        "key": key, "sha256": sha256, "fingerprint": fingerprint, "inbox": row.inbox, "source": row.source,
        "state": row.state, "attempts": row.attempts,
        "created_at": iso(row.created_ts), "created_ts": row.created_ts,
        "updated_at": iso(row.updated_ts), "updated_ts": row.updated_ts,
        "output": row.output, "output_size": row.output_size, "error": row.error, "disposition": row.disposition,
        "target": row.target, "strikes": row.strikes, "solo": row.solo, "losses": list(row.losses),
    }


def cache_line(slot: tuple[str, str], value: Cached) -> list[Any]:
    """A stat-cache line as stored: ``[inbox, path, size, mtime_ns, sha256, ino, ctime_ns]``."""
    size, mtime_ns, ino, ctime_ns, sha = value
    return [*slot, size, mtime_ns, sha.hex(), ino, ctime_ns]


def cache_entry(item: list[Any]) -> tuple[tuple[str, str], Cached]:
    """The slot and value of a stored stat-cache line (five fields when written before inodes were kept)."""
    inbox, path, size, mtime_ns, sha256, *identity = item
    ino, ctime_ns = identity if identity else (_UNKNOWN, _UNKNOWN)
    for number in (size, mtime_ns, ino, ctime_ns):
        if not isinstance(number, int):
            raise TypeError(f"stat-cache field {number!r} is not an integer")
    return (sys.intern(inbox), sys.intern(path)), (size, mtime_ns, ino, ctime_ns, bytes.fromhex(sha256))

