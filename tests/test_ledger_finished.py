"""`Ledger.finished_key`, the restart scan's question for every photo: answered from the generation's index
columns, it must say what the records say, in every state the ledger can be in, and for generations written
before those columns existed (format 3)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from srd.fs.fileversion import FileVersion
from srd.ledger import (
    KEPT_CHANGED,
    SNAPSHOT_NAME,
    Ledger,
    State,
    base,
    check_ledger,
    generation,
    make_key,
    repair_ledger,
    tables,
)
from srd.ledger.base import Base

FP = "edsr-x2:beef"
INBOX = "in0"


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _version(n: int) -> FileVersion:
    return FileVersion(100 + n, 1_700_000_000_000_000_000 + n, 1000 + n, 1_700_000_000_000_000_000 + n)


# Each source's story, and whether its file counts as finished as it is afterwards.
EXPECTED = {
    "archive-pending.png": False,  # processed, its source step (archive) not done yet
    "taken-over.png": False,  # its output was written again for another source's content
    "kept.png": True,  # processed, source kept
    "changed.png": False,  # processed, but the file changed before its source step
    "lent.png": False,  # its output was handed to another source under the same content
    "forgotten.png": False,  # its entry was forgotten
    "failed.png": False,  # failed, no output
    "copy.png": False,  # same content as kept.png: the entry is kept.png's, not this source's
    "never-done.png": False,  # started only
}


def _write_stories(ledger: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for n, name in enumerate(EXPECTED):
        sha = _sha("content of kept.png" if name == "copy.png" else f"content of {name}")
        ledger.remember_hash(INBOX, name, _version(n), sha)
        if name == "copy.png":
            continue
        key = ledger.record_start(sha, FP, inbox=INBOX, source=name).key
        if name == "never-done.png":
            continue
        if name == "failed.png":
            ledger.record_failed(key, error="broken")
            continue
        disposition = {"archive-pending.png": None, "changed.png": KEPT_CHANGED}.get(name, "kept")
        ledger.record_done(key, output=out / name, output_size=10, disposition=disposition)
    other = ledger.record_start(_sha("other content"), FP, inbox=INBOX, source="other.png").key
    ledger.record_done(other, output=out / "taken-over.png", output_size=10, disposition="kept")
    lent = make_key(_sha("content of lent.png"), FP)
    ledger.record_output(out / "lent.png", inbox=INBOX, source="borrower.png", key=lent)
    ledger.forget(make_key(_sha("content of forgotten.png"), FP))


def _answers(ledger: Ledger) -> dict[str, bool]:
    names = list(EXPECTED)
    keys = ledger.finished_keys(INBOX, names, [_version(n) for n in range(len(names))], FP)
    return {name: key is not None for name, key in zip(names, keys, strict=True)}


def _finished_key(ledger: Ledger, name: str, version: FileVersion) -> str | None:
    return ledger.finished_keys(INBOX, [name], [version], FP)[0]


def _by_the_records(ledger: Ledger) -> dict[str, bool]:
    """The same question answered from the entries and owners themselves."""
    answers = {}
    for n, name in enumerate(EXPECTED):
        sha = ledger.cached_hash(INBOX, name, _version(n))
        entry = None if sha is None else ledger.lookup(sha, FP)
        answers[name] = (entry is not None and entry.state == State.DONE and entry.source.as_posix() == name
                         and entry.output is not None and entry.disposition not in (None, KEPT_CHANGED)
                         and ledger.owner(entry.output) == (INBOX, name, entry.key))
    return answers


def test_the_answer_from_the_columns_is_the_records_answer_in_layers_compacted_and_reopened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    with Ledger.open(state, compact_after=10_000) as ledger:
        _write_stories(ledger, tmp_path)
        assert _answers(ledger) == EXPECTED == _by_the_records(ledger), "in the layers"
        ledger.compact()
        assert _answers(ledger) == EXPECTED == _by_the_records(ledger), "compacted"
    with Ledger.open(state, compact_after=10_000) as ledger, monkeypatch.context() as patch:
        # What makes a restart over a million photos fast: no record is read to answer.
        patch.setattr(base, "read_line", _no_record_read)
        assert _answers(ledger) == EXPECTED, "reopened"


def _no_record_read(*args: object) -> bytes:
    raise AssertionError("a record line was read")


def test_names_sharing_a_hash_are_still_told_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two keys and two outputs with one 64-bit hash (forced here): the columns' answer looks at each (the
    finished one's comes second in its file, after the other's)."""
    colliding = {make_key(_sha("content of kept.png"), FP), make_key(_sha("content of archive-pending.png"), FP),
                 str(tmp_path / "out" / "kept.png"), str(tmp_path / "out" / "taken-over.png")}
    real = base.name_hash

    def weak(text: str) -> int:
        return real("one hash") if text in colliding else real(text)

    for module in (base, generation, tables):
        monkeypatch.setattr(module, "name_hash", weak)
    state = tmp_path / "state"
    with Ledger.open(state, compact_after=10_000) as ledger:
        _write_stories(ledger, tmp_path)
        ledger.compact()
    with Ledger.open(state, compact_after=10_000) as ledger:
        assert _answers(ledger) == EXPECTED == _by_the_records(ledger)


def test_a_change_in_a_layer_over_the_compacted_base_is_seen(tmp_path: Path) -> None:
    """The base's columns say finished; a later change, still in a layer, says otherwise."""
    with Ledger.open(tmp_path / "state", compact_after=10_000) as ledger:
        _write_stories(ledger, tmp_path)
        ledger.compact()
        assert _finished_key(ledger, "kept.png", _version(2)) is not None
        key = make_key(_sha("content of kept.png"), FP)
        # The output handed to another source under the same content: the entry itself is not touched.
        ledger.record_output(tmp_path / "out" / "kept.png", inbox=INBOX, source="someone-else.png", key=key)
        entry = ledger.get(key)
        assert entry is not None and entry.state == State.DONE
        assert _finished_key(ledger, "kept.png", _version(2)) is None
        ledger.record_output(tmp_path / "out" / "kept.png", inbox=INBOX, source="kept.png", key=key)
        assert _finished_key(ledger, "kept.png", _version(2)) == key
        ledger.record_disposed(key, KEPT_CHANGED)
        assert _finished_key(ledger, "kept.png", _version(2)) is None
        assert _finished_key(ledger, "kept.png", _version(99)) is None  # another version of the file


def _as_format_3(state: Path) -> Path:
    """Rewrite the current generation and the snapshot file as srd wrote format 3: without the columns format 4
    added, inode numbers signed."""
    snapshot = json.loads((state / SNAPSHOT_NAME).read_text())
    (state / SNAPSHOT_NAME).write_text(json.dumps({**snapshot, "format": 3}))
    generation = state / snapshot["generation"]
    index = json.loads((generation / "index.json").read_text())
    for column in ("entries.slot", "entries.output", "entries.settled", "owners.key"):
        del index["columns"][column]
        (generation / f"{column}.json").unlink()
    index["format"] = 3
    index["columns"]["hashes.ino"][0] = "<i8"  # the same bytes for inode numbers below 2**63
    (generation / "index.json").write_text(json.dumps(index))
    return generation


def test_a_format_3_generation_loads_answers_the_same_and_is_rewritten_in_the_new_format(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Ledger.open(state, compact_after=10_000) as ledger:
        _write_stories(ledger, tmp_path)
        ledger.compact()
    old = _as_format_3(state)
    assert Base.load(old).derived
    with Ledger.open(state, compact_after=10_000) as ledger:
        assert _answers(ledger) == EXPECTED
        ledger.sync()  # the rewrite runs in the background from the open; close waits for it
    current = state / json.loads((state / SNAPSHOT_NAME).read_text())["generation"]
    assert current != old and json.loads((current / "index.json").read_text())["format"] == 4
    # The snapshot file says so too: an srd that reads only format 3 refuses it as newer (exit 7), where it
    # would otherwise take the generation for damage and offer to repair it away.
    assert json.loads((state / SNAPSHOT_NAME).read_text())["format"] == 4
    with Ledger.open(state, compact_after=10_000) as ledger:
        assert not ledger._store.tables.base.derived
        assert _answers(ledger) == EXPECTED
    assert not check_ledger(state).problems


def test_check_lists_an_entry_whose_source_was_edited_as_damage(tmp_path: Path) -> None:
    """The columns the restart trusts are checked against the lines like the others: an entry moved to another
    source by hand would otherwise still count as finished for the old one."""
    state = tmp_path / "state"
    with Ledger.open(state, compact_after=10_000) as ledger:
        _write_stories(ledger, tmp_path)
        ledger.compact()
    entries_file, = state.glob("gen-*/entries.jsonl")
    text = entries_file.read_text()
    entries_file.write_text(text.replace('"source":"kept.png"', '"source":"kEpt.png"'))
    problems = check_ledger(state).problems
    assert any("source, output or source step" in problem for problem in problems), problems


@pytest.mark.parametrize("damage", ["cut", "edited"])
def test_damage_in_a_format_3_generation_is_listed_and_repaired_like_any_other(tmp_path: Path, damage: str) -> None:
    """The columns computed from a damaged format 3 generation never make a file count as finished that is
    not: the damaged record's file is at worst processed again, and check and repair work as for format 4."""
    state = tmp_path / "state"
    with Ledger.open(state, compact_after=10_000) as ledger:
        _write_stories(ledger, tmp_path)
        ledger.compact()
    generation = _as_format_3(state)
    entries_file = generation / "entries.jsonl"
    data = entries_file.read_bytes()
    entries_file.write_bytes(data[:-20] if damage == "cut" else data.replace(b'"key":"', b'"key":"0', 1))
    assert any("entries.jsonl" in problem for problem in check_ledger(state).problems)
    repair_ledger(state)
    assert not check_ledger(state).problems
    with Ledger.open(state, compact_after=10_000) as ledger:
        answers = _answers(ledger)
        assert answers == _by_the_records(ledger)
    assert all(EXPECTED[name] or not finished for name, finished in answers.items())  # no false "finished"
    assert sum(answers[name] != EXPECTED[name] for name in EXPECTED) <= 1  # at most the damaged record's file


@pytest.mark.parametrize("inode", [2**63 + 5, 2**64 - 2])
def test_inode_numbers_of_64_bits_are_kept_and_compacted(tmp_path: Path, inode: int) -> None:
    """SMB shares pass on Windows file ids, whose top bits are a sequence number: an inode number of 2**63 or
    more failed every compaction (the journal then grew for ever). It is kept, compacted and answered."""
    version = FileVersion(10, 1_700_000_000_000_000_000, inode, 1_700_000_000_000_000_001)
    sha = _sha("content of a file on a share")
    with Ledger.open(tmp_path / "state", compact_after=10_000) as ledger:
        ledger.remember_hash(INBOX, "share.png", version, sha)
        key = ledger.record_start(sha, FP, inbox=INBOX, source="share.png").key
        ledger.record_done(key, output=tmp_path / "out" / "share.png", output_size=10, disposition="kept")
        ledger.compact()
    with Ledger.open(tmp_path / "state", compact_after=10_000) as ledger:
        assert ledger.cached_hash(INBOX, "share.png", version) == sha
        assert ledger.finished_keys(INBOX, ["share.png"], [version], FP) == [key]
        assert ledger.finished_keys(INBOX, ["share.png"], [version._replace(ino=inode - 1)], FP) == [None]
