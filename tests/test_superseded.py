"""Earlier outputs of a source under other names: removed only where still as srd wrote them (`superseded.py`)."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

import pytest

from srd.daemon.superseded import remove_superseded
from srd.fs.outputmark import mark_output
from srd.ledger import Ledger

SOURCE = PurePosixPath("sub/x.jpg")


def _done(ledger: Ledger, outbox: Path, name: str, data: bytes, n: int, *, mark: bool = True) -> Path:
    """An output `name` srd wrote for SOURCE (content number `n`), on disk and in the ledger."""
    output = outbox / "sub" / name
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    if mark:
        mark_output(outbox, output, "in", SOURCE)
    entry = ledger.record_start(hashlib.sha256(bytes([n])).hexdigest(), f"fp{n}", inbox="in", source=SOURCE)
    ledger.record_done(entry.key, output=output, output_size=len(data))
    return output


def test_only_outputs_still_marked_for_the_source_are_removed(tmp_path: Path) -> None:
    outbox = tmp_path / "out"
    with Ledger.open(tmp_path / "state") as ledger:
        stale = _done(ledger, outbox, "x.png", b"old picture", 1)
        replaced = _done(ledger, outbox, "x.webp", b"old picture 2", 2)
        replaced.unlink()
        replaced.write_bytes(b"consumer file")  # same name and size, no mark
        busy = _done(ledger, outbox, "x.tif", b"old picture 3", 3)
        current = _done(ledger, outbox, "x.jpg", b"new picture", 4)
        remove_superseded(ledger, outbox, "in", SOURCE, current, {busy})
        assert not stale.exists() and replaced.read_bytes() == b"consumer file" and busy.exists()
        keys = ledger.outputs_of("in", SOURCE)  # the removed name stays the source's, proving nothing
        assert keys[str(stale)] is None and None not in (keys[str(replaced)], keys[str(busy)], keys[str(current)])
        assert len(list(ledger.entries())) == 3  # the removed output's entry went with it


def test_without_marks_the_recorded_size_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A share that keeps no extended attributes: an output of the size srd recorded is taken as srd's."""
    monkeypatch.setattr("srd.daemon.superseded.marked_for", lambda outbox, output: None)
    outbox = tmp_path / "out"
    with Ledger.open(tmp_path / "state") as ledger:
        stale = _done(ledger, outbox, "x.png", b"old picture", 1, mark=False)
        resized = _done(ledger, outbox, "x.webp", b"old picture", 2, mark=False)
        resized.write_bytes(b"edited by a consumer since")
        current = _done(ledger, outbox, "x.jpg", b"new picture", 3, mark=False)
        remove_superseded(ledger, outbox, "in", SOURCE, current, set())
        assert not stale.exists() and resized.exists() and current.exists()
