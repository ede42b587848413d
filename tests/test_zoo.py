"""Tests for srd.engine.zoo: file-name conventions and catalogue look-ups."""

from __future__ import annotations

from pathlib import Path

import pytest

from srd.engine.zoo import ZOO, find_zoo, infer_convention


@pytest.mark.parametrize(
    "name, expected",
    [
        ("EDSR_x4.pb", ("edsr", 4)),
        ("FSRCNN_x2.pb", ("fsrcnn", 2)),
        ("FSRCNN-small_x3.pb", ("fsrcnn", 3)),
        ("fsrcnn-SMALL_X4.PB", ("fsrcnn", 4)),
        ("espcn_x2.pb", ("espcn", 2)),
        ("LapSRN_x8.pb", ("lapsrn", 8)),
        ("ESPCN_x16.pb", ("espcn", 16)),
    ],
)
def test_infer_convention_reads_zoo_names(name: str, expected: tuple[str, int]) -> None:
    """Zoo file names map to (convention, scale) case-insensitively; FSRCNN-small uses the fsrcnn convention."""
    assert infer_convention(Path(name)) == expected


def test_infer_convention_uses_only_the_file_name() -> None:
    """A folder that looks like a zoo name doesn't matter; the file's own name decides."""
    assert infer_convention(Path("/models/EDSR_x2.pb/ESPCN_x3.pb")) == ("espcn", 3)
    assert infer_convention(Path("/models/EDSR_x2.pb/custom.pb")) is None


@pytest.mark.parametrize(
    "name",
    [
        "EDSR_x4.onnx",
        "EDSR_x4.pb.part",
        "EDSR-x4.pb",
        "EDSR_4.pb",
        "EDSR_x.pb",
        "EDSR_x1.pb",
        "EDSR_x0.pb",
        "my_EDSR_x4.pb",
        "VDSR_x2.pb",
        "FSRCNN_small_x2.pb",
        "edsr_baseline_x2.pb",
    ],
)
def test_infer_convention_rejects_other_names(name: str) -> None:
    """Names outside the zoo pattern (other formats, prefixes, no or unit scale) give None, not a guess."""
    assert infer_convention(Path(name)) is None


def test_find_zoo_by_family_is_case_insensitive_and_sorted() -> None:
    """A family name returns all its scales in order, whatever the case."""
    assert [m.scale for m in find_zoo("lapsrn")] == [2, 4, 8]
    assert [m.file for m in find_zoo("EDSR")] == ["EDSR_x2.pb", "EDSR_x3.pb", "EDSR_x4.pb"]


def test_find_zoo_keeps_fsrcnn_and_fsrcnn_small_apart() -> None:
    """'fsrcnn' and 'fsrcnn-small' are different models, both with the fsrcnn convention."""
    assert {m.file for m in find_zoo("fsrcnn")} == {"FSRCNN_x2.pb", "FSRCNN_x3.pb", "FSRCNN_x4.pb"}
    small = find_zoo("FSRCNN-Small", 3)
    assert [(m.file, m.convention) for m in small] == [("FSRCNN-small_x3.pb", "fsrcnn")]


def test_find_zoo_by_file_name_and_scale_filter() -> None:
    """A file name finds its one entry; a scale that contradicts it, or an absent scale, finds nothing."""
    assert [m.name for m in find_zoo("edsr_x3.pb")] == ["EDSR"]
    assert find_zoo("EDSR_x3.pb", 3) == find_zoo("edsr", 3)
    assert find_zoo("EDSR_x3.pb", 2) == []
    assert find_zoo("lapsrn", 3) == []
    assert find_zoo("vdsr") == []


def test_catalogue_entries_are_consistent() -> None:
    """Each entry's file name, URL, convention and scale agree, and the 15 expected models are present."""
    assert len(ZOO) == 15
    assert len({m.file for m in ZOO}) == 15
    for model in ZOO:
        assert infer_convention(Path(model.file)) == (model.convention, model.scale)
        assert model.url.startswith("https://raw.githubusercontent.com/")
        assert model.url.endswith("/master/" + ("models/" if "Saafke" in model.url else "export/") + model.file)
