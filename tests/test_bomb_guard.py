"""The decompression-bomb guard fails closed: a size that cannot be read with certainty is refused,
OpenCV's own decoder limit stands behind the header check, and oversized files are refused unread."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import jpeg_claiming, tiff_from_entries
from daemon_helpers import ESPCN_X2, srd, write_config

from srd.errors import ImageError
from srd.imaging.imageheader import read_header
from srd.imaging.imageio import decode, read_bounded

LIMIT = 50_000_000


def pnm_after_comment(width: int, height: int, comment_bytes: int = 4000) -> bytes:
    comment = b"# " + b"x" * comment_bytes + b"\n"
    return b"P5\n" + comment + f"{width} {height}\n255\n".encode() + b"\x00" * 64


def tiff_with_two_widths(first: int, second: int, height: int) -> bytes:
    """A grey 8-bit TIFF whose first IFD holds two ImageWidth tags."""
    pixels_at = 8 + 2 + 12 * 9 + 4
    entries = [(256, 3, first), (256, 3, second), (257, 3, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, pixels_at), (278, 3, height), (279, 4, first * height)]
    return tiff_from_entries(entries, b"\x80" * (first * height))


def test_a_stray_byte_before_the_jpeg_frame_header_makes_the_size_unsure_and_refused() -> None:
    bomb = jpeg_claiming(20_000, 20_000, stray_byte=True)
    assert read_header(bomb).pixels is None
    started = time.monotonic()
    with pytest.raises(ImageError, match="cannot read the image size from the JPEG header with certainty"):
        decode(bomb, max_pixels=LIMIT)
    assert time.monotonic() - started < 1.0


def test_a_jpeg_bomb_without_tricks_is_refused_from_its_size() -> None:
    with pytest.raises(ImageError, match="20000x20000 = 400000000 pixels, over the limit"):
        decode(jpeg_claiming(20_000, 20_000), max_pixels=LIMIT)


def test_a_pnm_size_after_a_long_comment_is_read_and_checked() -> None:
    assert read_header(pnm_after_comment(30_000, 30_000)).pixels == 900_000_000
    with pytest.raises(ImageError, match="30000x30000 = 900000000 pixels, over the limit"):
        decode(pnm_after_comment(30_000, 30_000), max_pixels=LIMIT)
    small = decode(pnm_after_comment(8, 8), max_pixels=LIMIT)
    assert small.pixels.shape == (8, 8)


def test_a_tiff_with_two_width_tags_is_refused() -> None:
    with pytest.raises(ImageError, match="cannot read the image size from the TIFF header with certainty"):
        decode(tiff_with_two_widths(16, 20_000, 16), max_pixels=LIMIT)


@pytest.mark.parametrize("data", [
    b"BM" + b"\x00" * 12 + struct.pack("<I", 77) + b"\x00" * 64,  # unknown BMP header size
    b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDX" + b"\x00" * 20,  # IHDR not first
    b"P6\n# only a comment\n",  # PNM without a size
    b"P7\nWIDTH 4\nWIDTH 5000\nHEIGHT 4\nDEPTH 1\nMAXVAL 255\nENDHDR\n" + b"\x00" * 16,  # PAM, two widths
])
def test_headers_that_do_not_state_one_size_are_refused(data: bytes) -> None:
    with pytest.raises(ImageError, match="with certainty"):
        decode(data, max_pixels=LIMIT)


def test_floating_point_formats_are_refused_with_their_reason() -> None:
    hdr = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 4 +X 4\n" + b"\x00" * 64
    with pytest.raises(ImageError, match="Radiance HDR is a floating-point format"):
        decode(hdr, max_pixels=LIMIT)
    pfm = cv2.imencode(".pfm", np.zeros((4, 4, 3), np.float32))[1].tobytes()
    with pytest.raises(ImageError, match="PFM"):
        decode(pfm, max_pixels=LIMIT)


def _run_python(code: str, env: dict[str, str] | None = None) -> str:
    import os

    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_opencvs_own_limit_works_only_when_set_before_cv2_is_imported() -> None:
    """The experiment behind srd.imaging.decoderlimits: OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS once, at load."""
    code = """
        import os{early}
        import cv2, numpy as np
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = "100"
        data = cv2.imencode(".png", np.zeros((50, 50), np.uint8))[1]
        try:
            print(cv2.imdecode(data, cv2.IMREAD_UNCHANGED).shape)
        except cv2.error as exc:
            print("refused", exc.func)
    """
    assert _run_python(code.format(early="")).strip() == "(50, 50)"
    early = '\n        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = "100"'
    assert _run_python(code.format(early=early)).strip() == "refused validateInputImageSize"


@pytest.mark.e2e
def test_the_pools_workers_enforce_the_decoder_limit_even_when_the_header_check_would_pass(tmp_path: Path) -> None:
    """Were srd's header reader ever wrong, OpenCV's decoder in the worker still refuses the real size."""
    source = tmp_path / "wide.png"
    cv2.imwrite(str(source), np.zeros((100, 100, 3), np.uint8))
    code = f"""
        from pathlib import Path
        from srd.config import default_profile
        from srd.engine.upscaler import EngineSettings
        from srd.executors.job import Job
        from srd.executors.local import make_pool, process
        if __name__ == "__main__":
            with make_pool(1, EngineSettings(), (), "error", "json", max_input_pixels=5_000) as pool:
                # The job's own limit lets it through the header check: only the decoder stands.
                job = Job(Path({str(source)!r}), Path({str(tmp_path)!r}), default_profile(), 10**9)
                print(pool.submit(process, job).result().error)
    """
    script = tmp_path / "pool_check.py"
    script.write_text(textwrap.dedent(code))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "decoder reads a size over its own limit of 5000 pixels" in result.stdout


def test_read_bounded_refuses_from_the_size_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\x00" * 5000)
    with path.open("rb") as stream, pytest.raises(ImageError, match="5000 bytes, over the limit of 4999"):
        read_bounded(stream, 4999)
    with path.open("rb") as stream:
        assert len(read_bounded(stream, 5000)) == 5000


@pytest.mark.e2e
def test_srd_process_refuses_every_bomb_with_its_reason_and_processes_the_rest(tmp_path: Path) -> None:
    """Through a real `srd process` with a worker pool: each bomb fails fast with a clear reason."""
    if not ESPCN_X2.is_file():
        pytest.fail(f"the real zoo model is required at {ESPCN_X2}")
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "stray.jpg").write_bytes(jpeg_claiming(20_000, 20_000, stray_byte=True))
    (inbox / "comment.pgm").write_bytes(pnm_after_comment(30_000, 30_000))
    (inbox / "twowidths.tif").write_bytes(tiff_with_two_widths(16, 20_000, 16))
    (inbox / "huge.png").write_bytes(cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1].tobytes()
                                     + b"\x00" * 30_000)
    cv2.imwrite(str(inbox / "good.png"), np.full((20, 20, 3), 90, np.uint8))
    config = write_config(tmp_path, [], max_input_bytes=20_000)
    started = time.monotonic()
    result = srd("process", str(inbox), "--out", str(tmp_path / "out"), "--config", str(config),
                 "-m", str(ESPCN_X2), "-s", "2", "-j", "2", timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    failures = {line.split(": ")[2]: line for line in result.stderr.splitlines() if line.startswith("srd: failed:")}
    names = {Path(name).name: line for name, line in failures.items()}
    assert set(names) == {"stray.jpg", "comment.pgm", "twowidths.tif", "huge.png"}, result.stderr
    assert "cannot read the image size from the JPEG header with certainty" in names["stray.jpg"]
    assert "30000x30000 = 900000000 pixels, over the limit" in names["comment.pgm"]
    assert "cannot read the image size from the TIFF header with certainty" in names["twowidths.tif"]
    assert "over the limit of 20000 (max_input_bytes)" in names["huge.png"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.png"]
    assert elapsed < 120


@pytest.mark.e2e
def test_max_input_bytes_is_validated(tmp_path: Path) -> None:
    assert srd("config", "check", str(write_config(tmp_path, [], max_input_bytes=1000))).returncode == 0
    for bad in (0, "lots"):
        config = write_config(tmp_path, [], max_input_bytes=bad)
        result = srd("config", "check", str(config))
        assert result.returncode == 2
        assert "max_input_bytes" in result.stderr + result.stdout
