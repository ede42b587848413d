"""The ledger's tables in memory: entries, output owners and the stat cache, changed only by journal records."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

from srd.ledger.records import Cached, Owner, Row, State, cache_entry, row_of


class Tables:
    """Entries by key, output owners by path, the stat cache by (inbox, source), and the ``seq`` of the last
    record they hold. `apply` is how a journal record changes them, whether just written or replayed."""

    def __init__(self) -> None:
        self.entries: dict[str, Row] = {}
        self.counts: Counter[str] = Counter()
        # key → reserved output path of each started entry (few: the running jobs and those a crash cut short).
        self.targets: dict[str, str] = {}
        # output path → its owner, and (inbox, source) → the output it owns, or a tuple of them (more than
        # one after a profile changed the output format). Strings are shared with the entries'.
        self.owners: dict[str, Owner] = {}
        self.owned: dict[tuple[str, str], str | tuple[str, ...]] = {}
        # (inbox, path) → (size, mtime_ns, ino, ctime_ns, sha256 as 32 bytes: half the memory of its hex).
        self.hashes: dict[tuple[str, str], Cached] = {}
        self.seq = 0

    @classmethod
    def from_snapshot(cls, entries: dict[str, Row], hashes: dict[tuple[str, str], Cached], seq: int,
                      owners: list[tuple[str, Owner]], *, latest_claim_wins: bool) -> Tables:
        """The tables a snapshot holds: its entries and stat cache, each done entry owning its output, and the
        `owners` the snapshot lists beside them (those no done entry says).

        With `latest_claim_wins` (format 1, which kept no owners, so two entries may claim one path), the
        done entries take their outputs in the order they were updated: the latest claim wins, and the older,
        stale kind the owners table exists to prevent is dropped.
        """
        tables = cls()
        tables.entries, tables.hashes, tables.seq = entries, hashes, seq
        tables.counts = Counter(row.state for row in entries.values())
        tables.targets = {key: row.target for key, row in entries.items()
                          if row.state == State.STARTED and row.target is not None}
        done = [(row.updated_ts, key) for key, row in entries.items() if row.state == State.DONE]
        if latest_claim_wins:
            done.sort()
        for _, key in done:
            row = entries.get(key)
            if row is not None and row.output is not None:
                tables.set_owner(row.output, Owner(row.inbox, row.source, key))
        for output, owner in owners:
            tables.set_owner(output, owner)
        return tables

    def owned_by(self, slot: tuple[str, str]) -> tuple[str, ...]:
        """The outputs the source `slot` (inbox, source) owns."""
        outputs = self.owned.get(slot, ())
        return (outputs,) if isinstance(outputs, str) else outputs

    def said_by_entry(self, output: str, owner: Owner) -> bool:
        """Whether a done entry already says that `owner` owns `output` (a snapshot need not list it)."""
        row = None if owner.key is None else self.entries.get(owner.key)
        return (row is not None and row.state == State.DONE and row.output == output
                and (row.inbox, row.source) == (owner.inbox, owner.source))

    def apply(self, rec: dict[str, Any]) -> None:
        """Apply one journal record (see the package's docstring for the ops).

        Raises:
            ValueError, KeyError, TypeError: `rec` is not a ledger record.
        """
        op = rec["op"]
        if op == "put":
            key = rec["entry"]["key"]
            if not isinstance(key, str) or ":" not in key:
                raise ValueError(f"bad key {key!r}")
            row = row_of(rec["entry"])
            old = self.entries.get(key)
            if old is not None:
                self.counts[old.state] -= 1
            self.entries[key] = row
            self.counts[row.state] += 1
            if row.state == State.STARTED and row.target is not None:
                self.targets[key] = row.target
            else:
                self.targets.pop(key, None)
            if row.state == State.DONE and row.output is not None:
                self.set_owner(row.output, Owner(row.inbox, row.source, key))
        elif op == "own":
            self.set_owner(rec["output"], Owner(sys.intern(rec["inbox"]), sys.intern(rec["source"]), rec["key"]))
        elif op == "forget":
            old = self.drop(rec["key"])
            if old is not None and old.state == State.DONE:
                # Its outputs stay srd's to replace, but no longer say that this content is done.
                for output, owner in list(self.owners.items()):
                    if owner.key == rec["key"]:
                        self.owners[output] = owner._replace(key=None)
        elif op not in ("cache", "snapshot"):
            raise ValueError(f"unknown op {op!r}")
        cache = rec.get("cache")
        if cache is not None:
            for item in cache["set"]:
                slot, value = cache_entry(item)
                self.hashes[slot] = value
            for inbox, path in cache["unset"]:
                self.hashes.pop((inbox, path), None)

    def drop(self, key: str) -> Row | None:
        """Remove an entry (not the outputs it owns); return it, if there was one."""
        old = self.entries.pop(key, None)
        self.targets.pop(key, None)
        if old is not None:
            self.counts[old.state] -= 1
        return old

    def set_owner(self, output: str, owner: Owner) -> None:
        """Make `owner` the one owner of `output`; a ``done`` entry whose output that was is dropped, since
        the file no longer holds its picture (its content is processed again if it comes back)."""
        previous = self.owners.get(output)
        if previous == owner:
            return
        if previous is not None:
            slot = (previous.inbox, previous.source)
            rest = tuple(o for o in self.owned_by(slot) if o != output)
            if rest:
                self.owned[slot] = rest[0] if len(rest) == 1 else rest
            else:
                self.owned.pop(slot, None)
            if previous.key is not None and previous.key != owner.key:
                superseded = self.entries.get(previous.key)
                if superseded is not None and superseded.state == State.DONE and superseded.output == output:
                    self.drop(previous.key)
        self.owners[output] = owner
        slot = (owner.inbox, owner.source)
        outputs = (*self.owned_by(slot), output)
        self.owned[slot] = outputs[0] if len(outputs) == 1 else outputs
