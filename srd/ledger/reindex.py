"""Rebuilding a generation's index from its record files, for `srd ledger repair` when the index itself is damaged.

The record files hold everything the entries' and owners' columns say, so those are computed again from the
lines (a line that is not a record is left out, and then listed and dropped like any damaged line). The stat
cache exists only in the index: kept if its columns are intact, else dropped, which costs hashing the inboxes'
files once more, never a wrong answer.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from srd.ledger.base import (
    COLUMNS,
    ENTRIES_FILE,
    OWNERS_FILE,
    STATE_CODES,
    Base,
    IndexDamage,
    entry_columns,
    load_table,
    name_hash,
    optional_hash,
    slot_hash,
)
from srd.ledger.records import row_of


def reindex(folder: Path, seq: int) -> tuple[Base, list[str]]:
    """The generation in `folder` (holding records up to `seq`) with an index computed from its record files,
    and what was lost doing so.

    Raises:
        OSError: A record file can't be read.
    """
    inboxes: list[str] = []
    entries = _entries(folder / ENTRIES_FILE, inboxes)
    owners = _owners(folder / OWNERS_FILE)
    problems = [f"ledger generation {folder}: its index was rebuilt from its record files"]
    try:
        hashes = load_table(folder, "hashes")
    except (IndexDamage, OSError) as exc:
        problems.append(f"ledger generation {folder}: its stat cache is damaged ({exc}) and was dropped: the "
                        "inboxes' files are hashed once more")
        hashes = {name: np.zeros((0, 32) if name == "sha" else 0, dtype=dtype)
                  for name, dtype in COLUMNS["hashes"].items()}
    return Base(folder, seq, inboxes, {"entries": entries, "owners": owners, "hashes": hashes}), problems


def _records(path: Path) -> list[tuple[int, Any]]:
    """Each line of `path` that parses as JSON, with its offset."""
    found, at = [], 0
    with open(path, "rb") as file:
        for line in file:
            with contextlib.suppress(ValueError):
                found.append((at, json.loads(line)))
            at += len(line)
    return found


def _entries(path: Path, inboxes: list[str]) -> dict[str, np.ndarray]:
    rows = []
    for offset, record in _records(path):
        try:
            row = row_of(record)
            key = record["key"]
            if not isinstance(key, str):
                raise TypeError("not a key")
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # no record: `salvage` lists the line
        if row.inbox not in inboxes:
            inboxes.append(row.inbox)
        rows.append((name_hash(key), offset, STATE_CODES[row.state], inboxes.index(row.inbox), row.updated_ts,
                     *entry_columns(row)))
    rows.sort(key=lambda item: item[0])
    names = ("hash", "offset", "state", "inbox", "updated", "slot", "output", "settled")
    return {name: np.array([row[i] for row in rows], dtype=COLUMNS["entries"][name]) for i, name in enumerate(names)}


def _owners(path: Path) -> dict[str, np.ndarray]:
    rows = []
    for offset, record in _records(path):
        try:
            output, inbox, source, key = record
            if not all(isinstance(text, str) for text in (output, inbox, source)) or not isinstance(key, str | None):
                raise TypeError("not an owner line")
        except (ValueError, TypeError):
            continue
        rows.append((name_hash(output), offset, slot_hash((inbox, source)), optional_hash(key)))
    rows.sort(key=lambda item: item[0])
    columns = {name: np.array([row[i] for row in rows], dtype=COLUMNS["owners"][name])
               for i, name in enumerate(("output", "offset", "slot", "key"))}
    columns["by_slot"] = np.argsort(columns["slot"], kind="stable").astype(COLUMNS["owners"]["by_slot"])
    return columns
