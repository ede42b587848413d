"""The codecs' own messages ("libpng error: …", "[ERROR:0@…] global loadsave.cpp …", "Corrupt JPEG
data: …") never reach the terminal raw; srd's own line for the file says what went wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import tiff_from_entries
from daemon_helpers import ESPCN_X2, srd, write_config

# End to end: each test runs the real srd command in a subprocess.
pytestmark = pytest.mark.e2e

RAW_CODEC_LINE = re.compile(r"libpng|libtiff|libjpeg|Corrupt JPEG|\[ ?(ERROR|WARN|INFO)[^\]]*\]|loadsave\.cpp|OpenJPEG")


def short_tiff(width: int, height: int) -> bytes:
    """A grey TIFF whose one strip holds a tenth of the bytes its header promises (libtiff complains)."""
    entries = [(256, 3, width), (257, 3, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 8 + 2 + 12 * 8 + 4), (278, 3, height), (279, 4, width * height)]
    return tiff_from_entries(entries, b"\x80" * (width * height // 10))


def noisy_inputs(folder: Path) -> None:
    """A truncated PNG, a truncated TIFF (refused before any decoder sees them) and a JPEG with junk between segments
    (libjpeg warns, yet decodes it)."""
    rng = np.random.default_rng(3)
    image = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    png = cv2.imencode(".png", image)[1].tobytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "truncated.tif").write_bytes(short_tiff(100, 100))
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    dht = jpeg.find(b"\xff\xc4")
    (folder / "junk.jpg").write_bytes(jpeg[:dht] + b"\x00\x00" + jpeg[dht:])


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_srd_process_prints_no_raw_codec_line_and_names_the_problem(tmp_path: Path, jobs: str) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    noisy_inputs(inbox)
    config = write_config(tmp_path, [])
    result = srd("process", str(inbox), "--out", str(tmp_path / "out"), "--config", str(config),
                 "-m", str(ESPCN_X2), "-s", "2", "-j", jobs, "-v", timeout=300)
    assert result.returncode == 1
    raw = [line for line in result.stderr.splitlines()
           if RAW_CODEC_LINE.search(line) and not line.startswith(("{", "srd: failed:"))]
    assert raw == []
    assert not re.search(r"\[ ?(ERROR|WARN)", result.stderr)  # not even inside srd's own lines
    failed = {line.split(": ")[2]: line for line in result.stderr.splitlines() if line.startswith("srd: failed:")}
    assert "truncated PNG (no IEND chunk)" in failed[str(inbox / "truncated.png")]
    assert "truncated TIFF (the file has 1110 bytes, its TIFF structure declares 10110)" in failed[
        str(inbox / "truncated.tif")]
    assert (tmp_path / "out" / "junk.jpg").is_file()
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    warnings = [e for e in events if e["event"] == "decoder_warning" and e["src"] == str(inbox / "junk.jpg")]
    assert warnings and "Corrupt JPEG data" in warnings[0]["text"]
