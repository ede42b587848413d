"""Damage inside a compacted generation's record file: `srd ledger check` lists it (every line the daemon would
refuse on), `srd ledger repair` keeps every intact record (as it reads, where an edit made the index disagree)
and drops the rest, and the daemon starts again.

Old srd: `srd run` refused (exit 8) while check said "healthy" and repair "nothing to repair", for good.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers import running, srd, write_config

from srd.errors import ExitCode
from srd.ledger import Ledger, check_ledger

pytestmark = pytest.mark.e2e


def _cut_short(lines: list[bytes]) -> tuple[bytes, set[int]]:
    """The file cut in the middle of its 8th line: lines 8 and after are lost."""
    whole = b"".join(lines[:7])
    return whole + lines[7][:len(lines[7]) // 2], set(range(7, len(lines)))


def _garbage_prefix(lines: list[bytes]) -> tuple[bytes, set[int]]:
    """Two bytes written before line 2 (as `sed -i '2s/^/XX/'`): line 2 no longer parses."""
    return b"".join([lines[0], b"XX" + lines[1], *lines[2:]]), {1}


def _edited_state(lines: list[bytes]) -> tuple[bytes, set[int]]:
    """One word changed on line 3 (as `sed -i '3s/"done"/"failed"/'`): line 3 says what the index doesn't (the
    line, which an admin can read and edit, is what counts: it is kept as edited), and every later line moves
    by two bytes."""
    assert b'"done"' in lines[2]
    return b"".join([lines[0], lines[1], lines[2].replace(b'"done"', b'"failed"'), *lines[3:]]), set()


@pytest.mark.parametrize("damage", [_cut_short, _garbage_prefix, _edited_state])
def test_damage_in_a_generation_is_listed_repaired_and_the_daemon_starts_again(
        tmp_path: Path, damage: Callable[[list[bytes]], tuple[bytes, set[int]]]) -> None:
    config = write_config(tmp_path)
    state = tmp_path / "state"
    with Ledger.open(state) as ledger:
        for n in range(14):
            entry = ledger.record_start(f"{n:064x}", "fp", inbox="nas", source=f"{n}.png")
            if n == 13:
                ledger.record_failed(entry.key, error="bad pixels")
            else:
                ledger.record_done(entry.key, output=tmp_path / f"out-{n}.png", output_size=n)
        ledger.compact()
        on_top = ledger.record_start(f"{99:064x}", "fp", inbox="nas", source="99.png").key
        ledger.record_done(on_top, output=tmp_path / "out-99.png", output_size=99)
    entries_file, = state.glob("gen-*/entries.jsonl")
    lines = entries_file.read_bytes().splitlines(keepends=True)
    states = {json.loads(line)["key"]: json.loads(line)["state"] for line in lines}
    damaged_bytes, lost = damage(lines)
    entries_file.write_bytes(damaged_bytes)
    lost_keys = {json.loads(lines[index])["key"] for index in lost}
    for line in damaged_bytes.splitlines():  # what the lines kept say, edits included
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record["key"] not in lost_keys:
            states[record["key"]] = record["state"]

    check = srd("ledger", "check", "--config", str(config))
    assert check.returncode == ExitCode.LEDGER, check.stdout + check.stderr
    assert str(entries_file) in check.stdout, check.stdout
    # Whatever line the daemon reads first, check has listed it: all of them are read by the same checks.
    assert check_ledger(state).problems

    repair = srd("ledger", "repair", "--config", str(config))
    assert repair.returncode == 0 and str(entries_file) in repair.stdout, repair.stdout + repair.stderr
    if lost:
        dropped, = state.glob("entries.jsonl.dropped-*")
        assert dropped.read_bytes()  # the unusable bytes are kept for the record
    healthy = srd("ledger", "check", "--config", str(config))
    assert healthy.returncode == 0 and "healthy" in healthy.stdout, healthy.stdout + healthy.stderr

    with running(config) as daemon:
        assert daemon.stop() == 0, daemon.log_tail()
    with Ledger.open(state, read_only=True) as ledger:
        known = {entry.key: entry.state for entry in ledger.entries()}
        assert ledger.owner(tmp_path / "out-99.png") is not None
    expected = {key: value for key, value in states.items() if key not in lost_keys}
    assert known == {**expected, on_top: "done"}
