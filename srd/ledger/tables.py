"""The ledger's tables in memory: a compacted generation (`Base`) under layers of the changes made since,
changed only by journal records."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from srd.ledger.base import NO_NAME, STATE_CODES, Base, name_hash, slot_hash
from srd.ledger.records import Cached, Owner, Row, State, cache_entry, make_key, row_of, source_step_done

Slot = tuple[str, str]


@dataclass
class Layer:
    """The changes since the base (or since the layer below): an entry or stat-cache line set to None is
    removed. `owned` lists, per source, the outputs this layer gave it (whoever holds them now);
    `owner_hashes` holds the `name_hash` of each output in `owners`, for checks that know an output only by its
    hash (`Tables.finished`)."""

    entries: dict[str, Row | None] = field(default_factory=dict)
    owners: dict[str, Owner] = field(default_factory=dict)
    owned: dict[Slot, set[str]] = field(default_factory=dict)
    hashes: dict[Slot, Cached | None] = field(default_factory=dict)
    owner_hashes: set[int] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.entries) + len(self.owners) + len(self.hashes)


class Tables:
    """Entries by key, output owners by path, the stat cache by (inbox, source), and the ``seq`` of the last
    record they hold. `apply` is how a journal record changes them, whether just written or replayed.

    Reads look through the layers, newest first, then the base; writes go to the newest layer only, so that a
    compaction can read the older ones (`freeze`) in a thread while the loop goes on.
    """

    def __init__(self, base: Base | None = None) -> None:
        self.base = base if base is not None else Base.empty()
        self.layers: list[Layer] = [Layer()]
        self.counts: Counter[str] = self.base.state_counts()
        # key → reserved output path of each started entry (few: the running jobs and those a crash cut short).
        self.targets: dict[str, str] = {key: row.target for key, row in self.base.entries_in_state(State.STARTED)
                                         if row.target is not None}
        self.seq = self.base.seq

    @classmethod
    def from_legacy(cls, entries: dict[str, Row], hashes: dict[Slot, Cached], seq: int,
                    owners: list[tuple[str, Owner]], *, latest_claim_wins: bool, base: Base | None = None) -> Tables:
        """The tables a format 1 or 2 snapshot holds, all in one layer over an empty base: its entries and stat
        cache, each done entry owning its output, and the `owners` the snapshot lists beside them.

        `base` (empty if None) holds nothing but a stat cache to keep (`salvage`).

        With `latest_claim_wins` (format 1, which kept no owners, so two entries may claim one path), the done
        entries take their outputs in the order they were updated: the latest claim wins.
        """
        tables = cls(base)
        layer = tables.layers[-1]
        layer.entries.update(entries)
        layer.hashes.update(hashes)
        tables.seq = seq
        tables.counts = Counter(row.state for row in entries.values())
        tables.targets = {key: row.target for key, row in entries.items()
                          if row.state == State.STARTED and row.target is not None}
        done = [(row.updated_ts, key) for key, row in entries.items() if row.state == State.DONE]
        if latest_claim_wins:
            done.sort()
        for _, key in done:
            row = layer.entries.get(key)
            if row is not None and row.output is not None:
                tables.set_owner(row.output, Owner(row.inbox, row.source, key))
        for output, owner in owners:
            tables.set_owner(output, owner)
        return tables

    def __len__(self) -> int:
        return sum(self.counts.values())

    @property
    def live(self) -> Layer:
        """The layer that takes changes."""
        return self.layers[-1]

    # -- reads ----------------------------------------------------------------------------------------

    def row(self, key: str) -> Row | None:
        """The entry stored under `key`, if any."""
        for layer in reversed(self.layers):
            entries = layer.entries
            if key in entries:
                return entries[key]
        if not self.base.sizes[0]:
            return None
        found = self.base.find(key)
        return None if found is None else found[1]

    def finished_keys(self, slots: Sequence[Slot], versions: Sequence[tuple[int, int, int, int]],
                      fingerprint: str) -> list[str | None]:
        """For each source in `slots`, in the version `versions` says: its key, if the stat cache knows that
        version and the content's entry under `fingerprint` is done for this source with its source step
        done, and its output is still owned by this source with this key; else None.

        Asked of every file a restart scan sees, a folder at a time: the layers answer one by one from their
        dicts, the base all at once from its index columns, no record read (unless a layer changed the owner
        of an output the base knows only by its hash).
        """
        shas: list[bytes | None] = [None] * len(slots)
        unseen = []  # the sources no layer has a stat-cache line for
        for i, slot in enumerate(slots):
            for layer in reversed(self.layers):
                if slot in layer.hashes:
                    value = layer.hashes[slot]
                    shas[i] = None if value is None or value[:4] != versions[i] else value[4]
                    break
            else:
                unseen.append(i)
        slot_hashes = np.array([slot_hash(slot) for slot in slots], dtype=np.uint64)
        if unseen and self.base.sizes[2]:
            found = self.base.cached_shas(slot_hashes[np.array(unseen)], [versions[i] for i in unseen])
            for i, sha in zip(unseen, found, strict=True):
                shas[i] = sha
        keys = [None if sha is None else make_key(sha.hex(), fingerprint) for sha in shas]
        finished: list[str | None] = [None] * len(slots)
        in_base: list[tuple[int, str]] = []  # the keys no layer has an entry for
        for i, key in enumerate(keys):
            if key is None:
                continue
            holder = next((layer for layer in reversed(self.layers) if key in layer.entries), None)
            if holder is None:
                in_base.append((i, key))
            elif self._row_finished(slots[i], key, holder.entries[key]):
                finished[i] = key
        if not in_base:
            return finished
        wanted = np.array([i for i, _ in in_base])
        key_hashes = np.array([name_hash(key) for _, key in in_base], dtype=np.uint64)
        outputs = self.base.finished_outputs(key_hashes, slot_hashes[wanted])
        owned = self.base.all_owned_by(outputs, slot_hashes[wanted], key_hashes)
        for n, (i, key) in enumerate(in_base):
            output = int(outputs[n])
            if output == NO_NAME:
                continue
            if any(output in layer.owner_hashes for layer in self.layers):  # the owner changed since the base
                owned[n] = self._row_finished(slots[i], key, self.row(key))
            if owned[n]:
                finished[i] = key
        return finished

    def _row_finished(self, slot: Slot, key: str, row: Row | None) -> bool:
        return (row is not None and row.state == State.DONE and (row.inbox, row.source) == slot
                and row.output is not None and source_step_done(row.disposition)
                and self.owner(row.output) == (*slot, key))

    def owner(self, output: str) -> Owner | None:
        """Who owns `output`, if anyone."""
        for layer in reversed(self.layers):
            owner = layer.owners.get(output)
            if owner is not None:
                return owner
        return self.base.owner(output) if self.base.sizes[1] else None

    def outputs_of(self, slot: Slot) -> dict[str, Owner]:
        """The outputs the source `slot` owns, with their owners."""
        found = {}
        for output, owner in self.base.owners_of_slot(slot):
            if not any(output in layer.owners for layer in self.layers):
                found[output] = owner
        for layer in self.layers:
            for output in layer.owned.get(slot, ()):
                current = self.owner(output)
                if current is not None and (current.inbox, current.source) == slot:
                    found[output] = current
        return found

    def cached(self, slot: Slot) -> Cached | None:
        """The stat-cache line of `slot`, if any."""
        for layer in reversed(self.layers):
            if slot in layer.hashes:
                return layer.hashes[slot]
        return self.base.cached(slot)

    def iter_entries(self) -> Iterator[tuple[str, Row]]:
        """Every (key, row): a view as of this call (the layers are copied and the base's file opened now)."""
        merged: dict[str, Row | None] = {}
        for layer in self.layers:
            merged.update(layer.entries)
        return self._merged_entries(self.base.iter_entries(), merged)

    def entries_in_state(self, state: State) -> list[tuple[str, Row]]:
        """The (key, row) of every entry in `state` (for the few started or failed ones)."""
        merged: dict[str, Row | None] = {}
        for layer in self.layers:
            merged.update(layer.entries)
        found = [(key, row) for key, row in self.base.entries_in_state(state.value) if key not in merged]
        found += [(key, row) for key, row in merged.items() if row is not None and row.state == state]
        return found

    def done_by_inbox(self) -> dict[str, tuple[int, float]]:
        """Per inbox, the number of done entries and the latest update time among them (the base's part from
        its index columns alone)."""
        merged: dict[str, Row | None] = {}
        for layer in self.layers:
            merged.update(layer.entries)
        columns = self.base.entries
        done = columns["state"] == STATE_CODES[State.DONE]
        for key in merged:
            found = self.base.find(key)
            if found is not None:
                done[found[0]] = False
        codes = columns["inbox"][done]
        counts = np.bincount(codes, minlength=len(self.base.inboxes))
        latest = np.full(len(self.base.inboxes), -np.inf)
        np.maximum.at(latest, codes, columns["updated"][done])
        result = {inbox: (int(counts[code]), float(latest[code]))
                  for code, inbox in enumerate(self.base.inboxes) if counts[code]}
        for row in merged.values():
            if row is not None and row.state == State.DONE:
                count, stamp = result.get(row.inbox, (0, row.updated_ts))
                result[row.inbox] = (count + 1, max(stamp, row.updated_ts))
        return result

    @staticmethod
    def _merged_entries(base: Iterator[tuple[str, Row]], merged: dict[str, Row | None]) -> Iterator[tuple[str, Row]]:
        for key, row in base:
            if key not in merged:
                yield key, row
        for key, changed in merged.items():
            if changed is not None:
                yield key, changed

    def said_by_entry(self, output: str, owner: Owner) -> bool:
        """Whether a done entry already says that `owner` owns `output`."""
        row = None if owner.key is None else self.row(owner.key)
        return (row is not None and row.state == State.DONE and row.output == output
                and (row.inbox, row.source) == (owner.inbox, owner.source))

    # -- compaction -----------------------------------------------------------------------------------

    def freeze(self) -> list[Layer]:
        """Stop changing the current layers (a compaction reads them) and start a new one; return them."""
        frozen = list(self.layers)
        self.layers.append(Layer())
        return frozen

    def rebase(self, base: Base, folded: int) -> Base:
        """Take `base`, which holds the old base and the `folded` oldest layers; return the old base."""
        old, self.base = self.base, base
        self.layers = self.layers[folded:]
        return old

    # -- changes --------------------------------------------------------------------------------------

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
            old = self.row(key)
            if old is not None:
                self.counts[old.state] -= 1
            self.live.entries[key] = row
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
            key = rec["key"]
            old = self.drop(key)
            if old is not None and old.state == State.DONE:
                # Its outputs stay srd's to replace, but no longer say that this content is done.
                for output, owner in self._owners_with_key(key):
                    self._own(output, owner._replace(key=None))
        elif op not in ("cache", "snapshot"):
            raise ValueError(f"unknown op {op!r}")
        cache = rec.get("cache")
        if cache is not None:
            for item in cache["set"]:
                slot, value = cache_entry(item)
                self.live.hashes[slot] = value
            for inbox, path in cache["unset"]:
                self.live.hashes[(inbox, path)] = None

    def drop(self, key: str) -> Row | None:
        """Remove an entry (not the outputs it owns); return it, if there was one."""
        old = self.row(key)
        if old is None:
            return None
        self.live.entries[key] = None
        self.targets.pop(key, None)
        self.counts[old.state] -= 1
        return old

    def set_owner(self, output: str, owner: Owner) -> None:
        """Make `owner` the one owner of `output`; a ``done`` entry whose output that was is dropped, since
        the file no longer holds its picture (its content is processed again if it comes back)."""
        previous = self.owner(output)
        if previous == owner:
            return
        if previous is not None and previous.key is not None and previous.key != owner.key:
            superseded = self.row(previous.key)
            if superseded is not None and superseded.state == State.DONE and superseded.output == output:
                self.drop(previous.key)
        self._own(output, owner)

    def _own(self, output: str, owner: Owner) -> None:
        self.live.owners[output] = owner
        self.live.owner_hashes.add(name_hash(output))
        self.live.owned.setdefault((owner.inbox, owner.source), set()).add(output)

    def _owners_with_key(self, key: str) -> list[tuple[str, Owner]]:
        found: dict[str, Owner] = {}
        for output, owner in self.base.owners_with_key(key):
            if not any(output in layer.owners for layer in self.layers):
                found[output] = owner
        for layer in self.layers:
            for output in layer.owners:
                current = self.owner(output)
                if current is not None and current.key == key:
                    found[output] = current
        return list(found.items())
