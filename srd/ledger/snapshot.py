"""The snapshot file ``ledger.json``. Since format 3 it names the current generation (`srd.ledger.base`):
``{"format": 4, "seq", "generation"}``; its format is the generation's, so that an older srd refuses a newer
generation as newer (exit 7) instead of taking it for damage, and repairing it away. Formats 1 and 2 held the
whole ledger, ``{"format", "seq", "entries", "hashes", "outputs"}``; they still load (into memory, once), and the
first compaction migrates them; a format 3 generation is read as it is and rewritten by a compaction."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from srd.ledger.base import GENERATION_FORMAT, Base, IndexDamage
from srd.ledger.errors import REPAIR_HINT, LedgerError, LedgerVersionError
from srd.ledger.generation import GENERATION_PREFIX
from srd.ledger.records import Owner, Row, cache_entry, row_of
from srd.ledger.reindex import reindex
from srd.ledger.salvage import Salvage, salvage
from srd.ledger.tables import Tables

# 2 added "outputs" and the stat cache's inode and ctime; 3 moved the tables into generation folders; 4 is
# generation format 4 (the index columns of the restart's finished check, inode numbers unsigned).
SNAPSHOT_FORMAT = GENERATION_FORMAT
READABLE_FORMATS = (1, 2, 3, 4)
# The formats whose snapshot file names a generation.
NAMING_FORMATS = (3, 4)
_MANIFEST_MAX = 4096  # a format 3 snapshot file is one short line


def is_newer(snapshot_format: Any) -> bool:
    """Whether a snapshot's format is one a later srd wrote."""
    return type(snapshot_format) is int and snapshot_format > max(READABLE_FORMATS)


def read_snapshot(path: Path, salvaged: list[Salvage] | None = None) -> tuple[Tables, int]:
    """The tables a snapshot file holds, and its format (below 3: to be migrated by a compaction).

    With `salvaged` (`check` and `repair`), every record line of its generation is checked first; if any is
    damaged, the tables are what survived, and the `Salvage` saying what did not is added to `salvaged`.

    Raises:
        FileNotFoundError: There is no such file.
        OSError: It, or its generation, can't be read.
        LedgerVersionError: A newer srd wrote it.
        LedgerError: It is not a snapshot this srd wrote, or its generation is damaged or missing.
    """
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LedgerError(f"ledger snapshot {path} is unreadable: {exc}") from exc
    try:
        snapshot = json.loads(raw, object_hook=_decode_snapshot_object)
        del raw
        if is_newer(snapshot["format"]):
            raise LedgerVersionError(
                f"ledger snapshot {path} was written by a newer srd (format {snapshot['format']}; this srd "
                f"reads formats {', '.join(map(str, READABLE_FORMATS))}): use that srd version or a later "
                "one; this one neither reads nor repairs it")
        if snapshot["format"] not in READABLE_FORMATS:
            raise ValueError(f"unsupported format {snapshot['format']!r}")
        seq = int(snapshot["seq"])
        if snapshot["format"] in NAMING_FORMATS:
            return _read_generation(path, snapshot["generation"], seq, salvaged), snapshot["format"]
        entries = snapshot["entries"]
        if not all(isinstance(row, Row) for row in entries.values()):
            raise ValueError("an entry is not a ledger record")
        hashes = dict(cache_entry(item) for item in snapshot["hashes"])
        owners = [(output, Owner(sys.intern(inbox), sys.intern(source), key))
                  for output, inbox, source, key in snapshot.get("outputs", ())]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LedgerError(f"ledger snapshot {path} is unreadable: {exc}") from exc
    tables = Tables.from_legacy(entries, hashes, seq, owners, latest_claim_wins=snapshot["format"] == 1)
    return tables, snapshot["format"]


def _read_generation(path: Path, name: Any, seq: int, salvaged: list[Salvage] | None) -> Tables:
    if not isinstance(name, str) or not name.startswith(GENERATION_PREFIX) or "/" in name:
        raise ValueError(f"bad generation name {name!r}")
    folder = path.parent / name
    index_problems: list[str] = []
    try:
        base = Base.load(folder)
    except (FileNotFoundError, IndexDamage) as exc:
        error = exc if isinstance(exc, IndexDamage) else LedgerError(
            f"ledger snapshot {path} names generation {name}, which is missing or incomplete ({exc.filename})")
        if salvaged is None:
            raise error from exc
        try:  # `check` and `repair`: the record files may be whole, and hold all the index said
            base, index_problems = reindex(folder, seq)
        except OSError:
            raise error from exc
        index_problems.insert(0, str(error))
    if base.seq != seq:
        base.close()
        raise LedgerError(f"ledger generation {folder} holds seq {base.seq}, but {path} says {seq}")
    if salvaged is None:
        try:
            base.check_record_sizes()
        except LedgerError:
            base.close()
            raise
        return Tables(base)
    try:
        base.check_record_sizes()
    except LedgerError as exc:  # listed (and, by `repair`, written anew), whichever of file and index is wrong
        index_problems.append(str(exc).removesuffix(f"; {REPAIR_HINT}"))
    found = salvage(base)
    if found is None and not index_problems:
        return Tables(base)
    if found is None:
        salvaged.append(Salvage(Tables(base), index_problems, {}))
        return Tables(base)
    base.close()
    found.problems[:0] = index_problems
    salvaged.append(found)
    return found.tables


def manifest(generation: str, seq: int) -> bytes:
    """The snapshot file naming `generation` as the current one."""
    return json.dumps({"format": SNAPSHOT_FORMAT, "seq": seq, "generation": generation}).encode() + b"\n"


def generation_of(path: Path) -> str | None:
    """The generation a snapshot file names, if it is a readable one naming a generation (what cleaning must
    keep)."""
    try:
        with path.open("rb") as file:
            head = file.read(_MANIFEST_MAX)
        if len(head) == _MANIFEST_MAX:
            return None  # an older format's whole ledger: not parsed just to find no generation in it
        snapshot = json.loads(head)
        name = snapshot.get("generation") if snapshot.get("format") in NAMING_FORMATS else None
        return name if isinstance(name, str) else None
    except (OSError, ValueError, AttributeError):
        return None


def _decode_snapshot_object(obj: dict[str, Any]) -> Any:
    # json object_hook: turns each entry into a row as soon as it is parsed (the snapshot's other objects
    # have no "state").
    return row_of(obj) if "state" in obj and "key" in obj else obj
