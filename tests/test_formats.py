"""Every format a user could meet is either processed (made here with a real encoder) or refused with
its reason; HEIC/HEIF goes through the optional `heif` extra and says so when the extra is missing."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import (
    exif_with_orientation,
    icc_profile,
    jpeg_claiming,
    jpeg_with_exif_thumbnail,
    progressive_jpeg_with_end_marker_comment,
)
from daemon_helpers import ESPCN_X2, DaemonProcess, animation, inbox_config, srd, wait_for, write_config

from srd.errors import ImageError
from srd.imaging import heif
from srd.imaging.exif import read_orientation
from srd.imaging.imageextent import frame_count, missing_end
from srd.imaging.imageio import decode, output_format_for

LIMIT = 10**8
needs_heif = pytest.mark.skipif(not heif.available(), reason="the heif extra (pillow-heif) is not installed")


def asymmetric(height: int = 30, width: int = 50) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:5, :, 2] = 255  # red top band
    image[:, :4, 1] = 255  # green left band
    return image


# Every format this OpenCV wheel decodes (its build information lists them), written by OpenCV itself.
OPENCV_FORMATS = [
    (".jpg", "jpeg", "jpeg"), (".png", "png", "png"), (".webp", "webp", "webp"), (".tif", "tiff", "tiff"),
    (".bmp", "bmp", "bmp"), (".gif", "gif", "png"), (".avif", "avif", "png"), (".jp2", "jp2", "png"),
    (".ppm", "pnm", "png"), (".pgm", "pnm", "png"), (".pbm", "pnm", "png"), (".pam", "pam", "png"),
    (".ras", "sunras", "png"),
]


@pytest.mark.parametrize("ext, fmt, written", OPENCV_FORMATS)
def test_every_decodable_format_is_read_with_its_size_checked_and_has_an_output_format(
    ext: str, fmt: str, written: str
) -> None:
    pixels = asymmetric(64, 80)  # OpenJPEG needs 64 px for its default resolution levels
    if ext in (".pgm", ".pbm"):
        pixels = pixels[:, :, 2].copy()
    ok, buffer = cv2.imencode(ext, pixels)
    assert ok
    picture = decode(buffer.tobytes(), max_pixels=LIMIT)
    assert picture.format == fmt
    assert picture.pixels.shape[:2] == (64, 80)
    assert output_format_for(fmt, "same") == written
    with pytest.raises(ImageError, match="over the limit"):
        decode(buffer.tobytes(), max_pixels=64 * 80 - 1)


@pytest.mark.parametrize("data, reason", [
    (b"\x76\x2f\x31\x01" + b"\x00" * 64, "OpenEXR is not supported"),
    (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 4 +X 4\n" + b"\x00" * 64, "Radiance HDR is a floating-point"),
    (b"Pf\n4 4\n-1.0\n" + b"\x00" * 64, "PFM (portable float map) is a floating-point"),
])
def test_floating_point_formats_are_refused_with_their_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=re.escape(reason)):
        decode(data, max_pixels=LIMIT)


def make_heic(pixels: np.ndarray, **options: object) -> bytes:
    import pillow_heif

    rgb = np.ascontiguousarray(pixels[:, :, ::-1])
    image = pillow_heif.from_bytes("RGB", (rgb.shape[1], rgb.shape[0]), rgb.tobytes())
    buffer = io.BytesIO()
    image.save(buffer, quality=95, **options)
    return buffer.getvalue()


def test_without_the_extra_heic_says_which_extra_it_needs(tmp_path: Path) -> None:
    """A HEIC file, decoded where pillow_heif cannot be imported: the reason names the extra exactly."""
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    code = """
        import sys
        sys.modules["pillow_heif"] = None  # as if the extra were not installed
        from srd.imaging.imageio import decode
        from srd.errors import ImageError
        try:
            decode(open(sys.argv[1], "rb").read(), max_pixels=10**8)
        except ImageError as exc:
            print(exc)
    """
    source = tmp_path / "phone.heic"
    source.write_bytes(heic)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(source)], capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip() == "HEIC needs `pip install srd[heif]`", result.stderr


@needs_heif
def test_a_heic_from_a_phone_is_decoded_upright_with_its_metadata() -> None:
    icc = icc_profile("srd phone")
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>'
    data = make_heic(asymmetric(), exif=b"Exif\x00\x00" + exif_with_orientation(6), icc_profile=icc, xmp=xmp)
    picture = decode(data, max_pixels=LIMIT)
    assert picture.format == "heic"
    assert picture.pixels.shape == (50, 30, 3)  # turned once, by libheif, not twice
    assert picture.pixels[:, -5:, 2].mean() > 200  # the red top band is now on the right
    assert read_orientation(picture.metadata.exif) == 1
    assert b"srd-test" in picture.metadata.exif
    assert picture.metadata.icc == icc
    assert picture.metadata.xmp == xmp
    with pytest.raises(ImageError, match="over the limit"):
        decode(data, max_pixels=100)
    with pytest.raises(ImageError, match="the HEIC decoder reads 30x50 = 1500 pixels, over the limit of 1499"):
        heif.decode(data, max_pixels=1499)  # libheif's own reading of the size, checked before decoding


@pytest.mark.e2e
@needs_heif
@pytest.mark.parametrize("fallback, written", [(None, "phone.jpg"), ("png", "phone.png")])
def test_srd_process_turns_a_heic_into_the_configured_format_keeping_its_metadata(
    tmp_path: Path, fallback: str | None, written: str
) -> None:
    icc = icc_profile("srd phone")
    source = tmp_path / "in" / "phone.heic"
    source.parent.mkdir()
    source.write_bytes(make_heic(asymmetric(), exif=b"Exif\x00\x00" + exif_with_orientation(6), icc_profile=icc))
    config = _config_with_output(tmp_path, {"format": "same", **({"fallback_format": fallback} if fallback else {})})
    result = srd("process", str(source), "--out", str(tmp_path / "out"), "--config", str(config),
                 "--profile", "test", timeout=300)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == [written]
    out = decode((tmp_path / "out" / written).read_bytes(), max_pixels=LIMIT)
    assert out.pixels.shape[:2] == (100, 60)
    assert out.metadata.icc == icc
    assert read_orientation(out.metadata.exif) == 1


def _config_with_output(root: Path, output: dict[str, str]) -> Path:
    config = write_config(root, [])
    data = yaml.safe_load(config.read_text())
    data["profiles"]["test"]["output"] = output
    config.write_text(yaml.safe_dump(data))
    return config


@pytest.mark.e2e
def test_fallback_format_is_validated(tmp_path: Path) -> None:
    config = _config_with_output(tmp_path, {"format": "same", "fallback_format": "heic"})
    result = srd("config", "check", str(config))
    assert result.returncode == 2
    assert "fallback_format" in result.stderr + result.stdout


def test_the_formats_table_in_the_readme_names_every_format() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("### Image formats", 1)[1].split("\n\n", 2)[1]
    for name in ("JPEG", "PNG", "WebP", "TIFF", "BMP", "GIF", "AVIF", "HEIC", "JPEG 2000", "PNM", "PAM",
                 "Sun raster", "OpenEXR", "Radiance HDR", "PFM"):
        assert f"| {name} " in table, name


@pytest.mark.e2e
@needs_heif
def test_the_daemon_turns_a_heic_into_a_jpeg_and_fails_a_bomb_with_its_reason(tmp_path: Path) -> None:
    """A real `srd run`: the output name follows the written format, a bomb goes to failed/ with why."""
    inbox = inbox_config(tmp_path)
    config = write_config(tmp_path, [inbox])
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        (Path(inbox["path"]) / "phone.heic").write_bytes(make_heic(asymmetric(), icc_profile=icc_profile()))
        (Path(inbox["path"]) / "bomb.jpg").write_bytes(jpeg_claiming(20_000, 20_000, stray_byte=True))
        output = Path(inbox["outbox"]) / "phone.jpg"
        reason_file = Path(inbox["failed"]) / "bomb.jpg.error.json"
        wait_for(lambda: output.is_file() and reason_file.is_file(), 60, "the HEIC output and the bomb's reason")
    finally:
        daemon.stop()
    assert decode(output.read_bytes(), max_pixels=LIMIT).pixels.shape[:2] == (60, 100)
    reason = reason_file.read_text()
    assert "cannot read the image size from the JPEG header with certainty" in reason


# -- half-written files: one rule for every format -------------------------------------------------------------


def _pillow_encoded(fmt: str, mode: str = "RGB", **options: object) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(5)
    image = Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _every_readable_format() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(4)
    colour = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    made = [(ext, cv2.imencode(ext, colour[:, :, 0] if ext in (".pgm", ".pbm") else colour)[1].tobytes())
            for ext, _, _ in OPENCV_FORMATS]
    made += [("pillow.gif", _pillow_encoded("GIF")), ("lzw.tif", _pillow_encoded("TIFF", compression="tiff_lzw")),
             ("palette.bmp", _pillow_encoded("BMP", "P")), ("16-bit.png", _pillow_encoded("PNG", "I;16"))]
    exif = b"Exif\x00\x00" + exif_with_orientation(1) + b"\x00" * 5000  # a camera's: the frame header comes late
    made.append(("exif.jpg", cv2.imencodeWithMetadata(".jpg", colour, [cv2.IMAGE_METADATA_EXIF],
                                                      [np.frombuffer(exif, np.uint8)])[1].tobytes()))
    made += [("progressive.jpg", cv2.imencode(".jpg", colour, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()),
             ("restart-markers.jpg", cv2.imencode(".jpg", colour, [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1].tobytes())]
    if heif.available():
        made.append((".heic", make_heic(colour)))
    return made


@pytest.mark.parametrize("name, data", _every_readable_format(), ids=[name for name, _ in _every_readable_format()])
def test_a_file_cut_anywhere_is_refused_as_truncated_in_every_format_and_the_whole_one_decodes(
        name: str, data: bytes) -> None:
    """A writer that isn't done yet leaves a prefix of the file: whatever the format and wherever the cut
    (a TIFF or HEIC cut before its directory, a JPEG inside its EXIF, a WebP inside its data, a PNG before
    IEND, any file inside its header), the refusal says "truncated", which is what makes the daemon wait
    for the writer instead of failing the file (or refusing it as a header without a certain size)."""
    assert decode(data, max_pixels=LIMIT).pixels.shape[:2] == (60, 80)
    for cut in sorted({13, 40, 1000, len(data) * 3 // 10, len(data) // 2, len(data) * 9 // 10, len(data) - 1}):
        if cut >= len(data):
            continue
        with pytest.raises(ImageError, match=r"^truncated "):
            decode(data[:cut], max_pixels=LIMIT)


@pytest.mark.parametrize("build", [progressive_jpeg_with_end_marker_comment, jpeg_with_exif_thumbnail],
                         ids=["comment-in-a-progressive-jpeg", "exif-thumbnail"])
def test_a_jpeg_cut_right_after_a_segment_ending_in_ff_d9_is_truncated_and_the_whole_one_decodes(
        build: Callable[[np.ndarray], tuple[bytes, int]]) -> None:
    """A writer pausing right after a comment that holds FF D9 (between the scans of a progressive JPEG)
    or after an EXIF APP1 whose thumbnail is a whole JPEG leaves a file that ends in FF D9. Its end is
    judged by walking its segments, so it is truncated (waited for), never decoded as it stands."""
    colour = (np.random.default_rng(6).random((96, 128, 3)) * 255).astype(np.uint8)
    data, cut = build(colour)
    assert data[cut - 2 : cut] == b"\xff\xd9"
    with pytest.raises(ImageError, match=r"^truncated JPEG "):
        decode(data[:cut], max_pixels=LIMIT)
    assert decode(data, max_pixels=LIMIT).pixels.shape[:2] == (96, 128)


def test_a_jpeg_with_a_long_trailer_after_its_end_marker_is_whole_and_a_malformed_one_is_not_truncated() -> None:
    """A motion photo carries megabytes of video after EOI: the file is whole, however long that trailer
    (and whatever bytes it holds). A junk byte between segments is malformed, not short: not "truncated"."""
    jpeg = cv2.imencode(".jpg", asymmetric(), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(12) + bytes(1_500_000)
    assert decode(jpeg + video, max_pixels=LIMIT).pixels.shape[:2] == (30, 50)
    with pytest.raises(ImageError, match=r"^truncated JPEG "):
        decode(jpeg[:-2] + video, max_pixels=LIMIT)  # no EOI: what looks like a trailer is not one
    scan = jpeg.find(b"\xff\xda")
    assert missing_end(jpeg[:scan] + b"\x00" + jpeg[scan:], "jpeg") is None


def test_a_hostile_jpeg_of_millions_of_tiny_segments_is_judged_in_a_moment_and_left_to_the_decoder() -> None:
    """The walk to EOI runs on every JPEG: 40 MB of 4-byte comments (10 million segments, which no encoder
    writes) is malformed, not short, and judged after a bounded number of segments; 40 MB of fill bytes
    before a marker is skipped in one go."""
    jpeg = cv2.imencode(".jpg", asymmetric())[1].tobytes()
    scan = jpeg.find(b"\xff\xda")
    for filler in (b"\xff\xfe\x00\x02" * 10_000_000, b"\xff" * 40_000_000):
        started = time.perf_counter()
        assert missing_end(jpeg[:scan] + filler + jpeg[scan:], "jpeg") is None
        assert time.perf_counter() - started < 2.0


# -- colour models and transparency --------------------------------------------------------------------------


def test_a_cmyk_tiff_decodes_to_three_colour_channels_and_an_rgba_tiff_keeps_its_alpha_and_colour() -> None:
    """Pillow writes CMYK as four samples and no extra sample; libtiff hands it over as BGRA with an opaque
    alpha the file never had. Only a TIFF with a sample beyond its colour samples has alpha; an unassociated
    one (Pillow's, GIMP's) comes out with its colour as written, not premultiplied by libtiff."""
    from PIL import Image

    cmyk = Image.new("RGB", (40, 30), (200, 30, 60)).convert("CMYK")
    buffer = io.BytesIO()
    cmyk.save(buffer, "TIFF")
    picture = decode(buffer.getvalue(), max_pixels=LIMIT)
    assert picture.pixels.shape == (30, 40, 3)
    assert np.abs(picture.pixels[0, 0].astype(int) - (60, 30, 200)).max() <= 2  # BGR of the RGB colour
    buffer = io.BytesIO()
    Image.new("RGBA", (40, 30), (200, 30, 60, 128)).save(buffer, "TIFF")  # ExtraSamples: unassociated alpha
    pixels = decode(buffer.getvalue(), max_pixels=LIMIT).pixels
    assert pixels.shape == (30, 40, 4)
    assert np.abs(pixels[0, 0].astype(int) - (60, 30, 200, 128)).max() <= 2
    opencv_rgba = cv2.imencode(".tif", np.full((30, 40, 4), (60, 30, 200, 128), np.uint8))[1].tobytes()
    assert decode(opencv_rgba, max_pixels=LIMIT).pixels[0, 0].tolist() == [60, 30, 200, 128]  # no ExtraSamples


@pytest.mark.e2e
def test_srd_process_writes_a_cmyk_tiff_as_a_three_channel_tiff(tmp_path: Path) -> None:
    from PIL import Image

    source = tmp_path / "in" / "print.tif"
    source.parent.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 60)).convert("CMYK").save(source, "TIFF")
    config = _config_with_output(tmp_path, {"format": "same"})
    result = srd("process", str(source), "--out", str(tmp_path / "out"), "--config", str(config),
                 "--profile", "test", timeout=300)
    assert result.returncode == 0, result.stderr
    out = cv2.imread(str(tmp_path / "out" / "print.tif"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (60, 80, 3)
    with Image.open(tmp_path / "out" / "print.tif") as written:
        assert written.mode == "RGB"


@pytest.mark.e2e
@needs_heif
def test_a_translucent_heic_written_as_jpeg_is_flattened_on_white_and_says_so(tmp_path: Path) -> None:
    """JPEG (HEIC's default fallback) holds no alpha: the picture is flattened onto white, as a viewer shows
    it, and the log names the file and the background. An opaque alpha is flattened without a word."""
    import pillow_heif

    folder = tmp_path / "in"
    folder.mkdir()
    for name, alpha in (("glass.heic", 100), ("opaque.heic", 255)):
        rgba = np.dstack([np.full((30, 40, 3), (10, 20, 200), np.uint8), np.full((30, 40), alpha, np.uint8)])
        image = pillow_heif.from_bytes("RGBA", (40, 30), np.ascontiguousarray(rgba).tobytes())
        image.save(folder / name, quality=95)
        assert decode((folder / name).read_bytes(), max_pixels=LIMIT).pixels.shape == (30, 40, 4)
    config = _config_with_output(tmp_path, {"format": "same"})
    result = srd("process", str(folder), "--out", str(tmp_path / "out"), "--config", str(config),
                 "--profile", "test", "-v", timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["glass.jpg", "opaque.jpg"]
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    flattened = [e for e in events if e["event"] == "alpha_flattened"]
    assert [(e["src"], e["format"], e["background"]) for e in flattened] == [
        (str(folder / "glass.heic"), "jpeg", "white")]
    out = cv2.imread(str(tmp_path / "out" / "glass.jpg"))
    assert out[30, 40, 1] > 100  # the red seen through 40 % opacity onto white is light, not dark red


@pytest.mark.parametrize(("fmt", "pillow_format"), [("gif", "GIF"), ("png", "PNG"), ("webp", "WEBP"),
                                                    ("tiff", "TIFF")])
def test_an_animation_or_multi_page_file_is_decoded_with_its_frame_count(fmt: str, pillow_format: str) -> None:
    assert decode(animation(pillow_format, 3), max_pixels=10**6).frames == 3
    assert decode(animation(pillow_format, 1), max_pixels=10**6).frames == 1


def test_a_tiff_pages_reduced_resolution_preview_is_not_a_page() -> None:
    from PIL import Image

    page, preview = Image.new("RGB", (40, 30), (10, 20, 30)), Image.new("RGB", (10, 8), (10, 20, 30))
    buffer = io.BytesIO()
    page.save(buffer, "TIFF", save_all=True, append_images=[preview], tiffinfo={254: 0})
    data = bytearray(buffer.getvalue())
    assert frame_count(bytes(data), "tiff") == 2
    # The second directory's NewSubfileType set to "reduced-resolution version", in place.
    first = int.from_bytes(data[4:8], "little")
    at = first + 2 + 12 * int.from_bytes(data[first : first + 2], "little")
    second = int.from_bytes(data[at : at + 4], "little")
    entries = range(second + 2, second + 2 + 12 * int.from_bytes(data[second : second + 2], "little"), 12)
    subfile = next(entry for entry in entries if int.from_bytes(data[entry : entry + 2], "little") == 254)
    data[subfile + 8 : subfile + 12] = (1).to_bytes(4, "little")
    assert frame_count(bytes(data), "tiff") == 1


@pytest.mark.e2e
def test_srd_process_says_what_each_output_leaves_out_without_being_asked(tmp_path: Path) -> None:
    """Frames, transparency: a note line each by default (and in --json), none with --quiet."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "anim.gif").write_bytes(animation("GIF", 3))
    rgba = np.zeros((16, 24, 4), np.uint8)
    rgba[:, :12] = (0, 0, 255, 128)
    cv2.imwrite(str(inbox / "half.png"), rgba)
    config = write_config(tmp_path, [])
    common = ("process", str(inbox), "--config", str(config), "-m", str(ESPCN_X2), "-s", "2", "--format", "jpg")
    result = srd(*common, "--out", str(tmp_path / "out"), "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    notes = sorted(line for line in result.stderr.splitlines() if line.startswith("srd: note:"))
    assert notes == [f"srd: note: {inbox / 'anim.gif'}: only the first of its 3 frames is in the output",
                     f"srd: note: {inbox / 'half.png'}: transparency flattened onto white (JPEG holds none)"]
    records = {Path(r["source"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert records["anim.gif"]["losses"] == ["only the first of its 3 frames is in the output"]
    quiet = srd(*common, "--out", str(tmp_path / "quiet"), "--quiet", timeout=120)
    assert quiet.returncode == 0 and "srd: note:" not in quiet.stderr
