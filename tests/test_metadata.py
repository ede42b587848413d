"""Metadata as photo libraries need it: TIFF keeps ICC/EXIF/dpi, every output keeps the resolution,
EXIF describes the output, oversized blocks are dropped with a log line, big valid blocks still fit.

Inputs are made, and outputs read back, with Pillow: a second, independent reader and writer.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import big_icc_profile, exif_with_orientation, icc_profile, jpeg_with_split_icc
from daemon_helpers import ESPCN_X2, srd, write_config
from PIL import Image

from srd.imaging.imageio import Picture, decode, encode
from srd.imaging.metadata import Metadata

LIMIT = 10**8
EXIF_IFD = 0x8769


def photo(height: int = 40, width: int = 60) -> np.ndarray:
    return (np.random.default_rng(7).random((height, width, 3)) * 255).astype(np.uint8)


def camera_exif(width: int, height: int) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "srd-cam"
    exif[0x0112] = 1
    exif.get_ifd(EXIF_IFD).update({0xA002: width, 0xA003: height, 0x9003: "2026:01:01 10:00:00"})
    return exif.tobytes()


def pillow_save(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels[:, :, ::-1])).save(buffer, fmt, **options)
    return buffer.getvalue()


def pillow_open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def exif_with_thumbnail(thumbnail_bytes: int) -> bytes:
    """Little-endian EXIF: IFD0 (Make, EXIF pointer), EXIF IFD (PixelX/YDimension = 60×40), IFD1 thumbnail."""
    make = b"srd-cam\x00"
    ifd0_at = 8
    exif_ifd_at = ifd0_at + 2 + 2 * 12 + 4
    make_at = exif_ifd_at + 2 + 2 * 12 + 4
    ifd1_at = make_at + len(make)
    thumb_at = ifd1_at + 2 + 2 * 12 + 4
    ifd1_at_field = struct.pack("<I", ifd1_at)
    out = b"II*\x00" + struct.pack("<I", ifd0_at)
    out += struct.pack("<H", 2) + struct.pack("<HHII", 0x010F, 2, len(make), make_at)
    out += struct.pack("<HHII", EXIF_IFD, 4, 1, exif_ifd_at) + ifd1_at_field
    out += struct.pack("<H", 2) + struct.pack("<HHII", 0xA002, 4, 1, 60) + struct.pack("<HHII", 0xA003, 4, 1, 40)
    out += b"\x00" * 4 + make
    out += struct.pack("<H", 2) + struct.pack("<HHII", 0x0201, 4, 1, thumb_at)
    out += struct.pack("<HHII", 0x0202, 4, 1, thumbnail_bytes) + b"\x00" * 4
    return out + b"\xff\xd8" + b"\x00" * (thumbnail_bytes - 4) + b"\xff\xd9"


@pytest.mark.e2e
def test_a_300_dpi_tiff_with_icc_and_exif_keeps_them_through_srd_process(tmp_path: Path) -> None:
    source = tmp_path / "in" / "scan.tif"
    source.parent.mkdir()
    icc = icc_profile("srd scan RGB")
    source.write_bytes(pillow_save(photo(), "TIFF", dpi=(300, 300), icc_profile=icc, exif=camera_exif(60, 40)))
    config = write_config(tmp_path, [])
    result = srd("process", str(source), "--out", str(tmp_path / "out"), "--config", str(config),
                 "-m", str(ESPCN_X2), "-s", "2", timeout=300)
    assert result.returncode == 0, result.stderr
    out = pillow_open((tmp_path / "out" / "scan.tif").read_bytes())
    assert out.size == (120, 80)
    assert out.info["dpi"] == pytest.approx((300, 300))
    assert out.info["icc_profile"] == icc
    exif = out.getexif()
    assert exif[0x010F] == "srd-cam"
    assert exif.get_ifd(EXIF_IFD)[0xA002] == 120 and exif.get_ifd(EXIF_IFD)[0xA003] == 80
    assert exif.get_ifd(EXIF_IFD)[0x9003] == "2026:01:01 10:00:00"


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff", "bmp", "webp"])
@pytest.mark.parametrize("source_format", ["PNG", "JPEG", "TIFF"])
def test_every_output_carries_the_inputs_resolution(source_format: str, fmt: str) -> None:
    picture = decode(pillow_save(photo(), source_format, dpi=(300, 300)), max_pixels=LIMIT)
    data = encode(picture.with_pixels(cv2.resize(picture.pixels, None, fx=2, fy=2)), fmt).data
    if fmt == "webp":  # WebP's only density field is EXIF's
        exif = pillow_open(data).getexif()
        assert (exif[282], exif[283], exif[296]) == pytest.approx((300, 300, 2), abs=0.01)
    else:
        assert pillow_open(data).info["dpi"] == pytest.approx((300, 300), abs=0.01)
    assert decode(data, max_pixels=LIMIT).metadata.resolution.x == pytest.approx(300, abs=0.01)


def test_centimetre_density_stays_in_centimetres() -> None:
    picture = decode(pillow_save(photo(), "TIFF", dpi=(300, 300)), max_pixels=LIMIT)
    tiff = picture.metadata.resolution
    assert tiff.unit == "inch"
    cm = Picture(picture.pixels, Metadata(resolution=type(tiff)("cm", 118.0, 118.0)), "tiff")
    for fmt in ("jpeg", "tiff"):
        assert decode(encode(cm, fmt).data, max_pixels=LIMIT).metadata.resolution == cm.metadata.resolution


def test_exif_pixel_dimensions_describe_the_output_and_the_thumbnail_is_dropped() -> None:
    exif = exif_with_thumbnail(20_000)
    ok, buf = cv2.imencodeWithMetadata(".png", photo(), [cv2.IMAGE_METADATA_EXIF], [np.frombuffer(exif, np.uint8)])
    assert ok
    picture = decode(buf.tobytes(), max_pixels=LIMIT)
    data = encode(picture.with_pixels(cv2.resize(picture.pixels, None, fx=2, fy=2)), "jpeg").data
    out = pillow_open(data).getexif()
    assert out[0x010F] == "srd-cam"
    assert (out.get_ifd(EXIF_IFD)[0xA002], out.get_ifd(EXIF_IFD)[0xA003]) == (120, 80)
    written = decode(data, max_pixels=LIMIT).metadata.exif
    assert len(written) < 200  # the 20 KB thumbnail is gone, not only unlinked
    assert struct.unpack("<I", written[8 + 2 + 2 * 12 : 8 + 2 + 2 * 12 + 4])[0] == 0  # no IFD1


def exif_with_thumbnail_between_ifds(thumbnail: bytes) -> bytes:
    """Big-endian EXIF laid out as Pillow writes it: IFD0, IFD1 and the thumbnail, then the EXIF IFD."""
    date = b"2026:01:01 10:00:00\x00"
    ifd1_at = 8 + 2 + 2 * 12 + 4
    thumb_at = ifd1_at + 2 + 2 * 12 + 4
    exif_ifd_at = thumb_at + len(thumbnail)
    date_at = exif_ifd_at + 2 + 12 + 4
    out = b"MM" + struct.pack(">HI", 42, 8)
    out += struct.pack(">H", 2) + struct.pack(">HHI4s", 0x010F, 2, 4, b"cam\x00")
    out += struct.pack(">HHII", EXIF_IFD, 4, 1, exif_ifd_at) + struct.pack(">I", ifd1_at)
    out += struct.pack(">H", 2) + struct.pack(">HHII", 0x0201, 4, 1, thumb_at)
    out += struct.pack(">HHII", 0x0202, 4, 1, len(thumbnail)) + struct.pack(">I", 0) + thumbnail
    out += struct.pack(">H", 1) + struct.pack(">HHII", 0x9003, 2, len(date), date_at) + struct.pack(">I", 0)
    return out + date


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_a_thumbnail_between_ifds_leaves_no_picture_of_the_input_in_the_output(fmt: str) -> None:
    thumbnail = pillow_save(photo(8, 12), "JPEG")
    source = pillow_save(photo(), "JPEG", exif=b"Exif\x00\x00" + exif_with_thumbnail_between_ifds(thumbnail))
    picture = decode(source, max_pixels=LIMIT)
    data = encode(picture, fmt).data
    written = decode(data, max_pixels=LIMIT).metadata.exif
    assert written is not None and b"\xff\xd8" not in written and thumbnail[100:200] not in written
    out = pillow_open(data).getexif()
    assert out[0x010F] == "cam" and out.get_ifd(EXIF_IFD)[0x9003] == "2026:01:01 10:00:00"


def profile_for(space: bytes) -> bytes:
    """The test RGB profile relabelled for another data colour space (bytes 16-20 of the ICC header)."""
    rgb = icc_profile()
    return rgb[:16] + space + rgb[20:]


def pillow_icc(data: bytes) -> bytes | None:
    return pillow_open(data).info.get("icc_profile")


@pytest.mark.parametrize(("fmt", "source_format"),
                         [("jpeg", "JPEG"), ("png", "JPEG"), ("webp", "JPEG"), ("tiff", "TIFF")])
def test_a_cmyk_source_profile_is_not_put_on_the_rgb_output(fmt: str, source_format: str) -> None:
    cmyk = Image.new("RGB", (40, 30), (200, 30, 60)).convert("CMYK")
    buffer = io.BytesIO()
    cmyk.save(buffer, source_format, icc_profile=profile_for(b"CMYK"))
    picture = decode(buffer.getvalue(), max_pixels=LIMIT)
    encoded = encode(picture, fmt)
    assert pillow_icc(encoded.data) is None
    assert encoded.dropped == ("icc (a CMYK profile; the output's pixels are RGB)",)


def test_a_grey_profile_stays_on_grey_pixels_and_leaves_colour_ones() -> None:
    grey = photo()[:, :, 0]
    icc = np.frombuffer(profile_for(b"GRAY"), np.uint8)
    source = cv2.imencodeWithMetadata(".jpg", grey, [cv2.IMAGE_METADATA_ICCP], [icc])[1]
    picture = decode(source.tobytes(), max_pixels=LIMIT)
    assert picture.pixels.ndim == 2
    for fmt in ("jpeg", "png", "tiff"):
        assert pillow_icc(encode(picture, fmt).data) == profile_for(b"GRAY"), fmt
    webp = encode(picture, "webp")  # WebP has no grey: the encoder writes RGB
    assert pillow_icc(webp.data) is None and webp.dropped == ("icc (a GRAY profile; the output's pixels are RGB)",)
    rgb = encode(picture.with_pixels(cv2.cvtColor(picture.pixels, cv2.COLOR_GRAY2BGR)), "png")
    assert pillow_icc(rgb.data) is None


def png_with_compressed_xmp(xmp: bytes) -> bytes:
    png = cv2.imencode(".png", photo())[1].tobytes()
    body = b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + zlib.compress(xmp, 9)
    chunk = struct.pack(">I", len(body)) + b"iTXt" + body + struct.pack(">I", zlib.crc32(b"iTXt" + body))
    return png[:33] + chunk + png[33:]


@pytest.mark.e2e
def test_a_7_mb_xmp_packet_in_a_small_png_is_dropped_with_a_log_line_naming_the_file(tmp_path: Path) -> None:
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b" " * 7_000_000 + b"</x:xmpmeta>"
    source = tmp_path / "in" / "tiny.png"
    source.parent.mkdir()
    source.write_bytes(png_with_compressed_xmp(xmp))
    assert source.stat().st_size < 20_000
    config = write_config(tmp_path, [])
    result = srd("process", str(source), "--out", str(tmp_path / "out"), "--config", str(config),
                 "-m", str(ESPCN_X2), "-s", "2", "-v", timeout=300)
    assert result.returncode == 0, result.stderr
    output = tmp_path / "out" / "tiny.png"
    assert output.stat().st_size < 100_000
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    dropped = [line for line in lines if line["event"] == "metadata_dropped"]
    assert len(dropped) == 1 and dropped[0]["src"] == str(source) and dropped[0]["block"].startswith("xmp (7000048")


def test_an_icc_profile_over_64_kb_is_read_from_split_app2_chunks_and_written_split() -> None:
    icc = big_icc_profile(150_000)
    picture = decode(jpeg_with_split_icc(photo(), icc), max_pixels=LIMIT)
    assert picture.metadata.icc == icc
    data = encode(picture.with_pixels(cv2.resize(picture.pixels, None, fx=2, fy=2)), "jpeg").data
    assert data.count(b"ICC_PROFILE\x00") == 3
    assert pillow_open(data).info["icc_profile"] == icc
    assert decode(data, max_pixels=LIMIT).metadata.icc == icc


def test_a_png_with_70_kb_of_exif_written_as_jpeg_drops_only_what_a_segment_cannot_hold() -> None:
    big = Image.Exif()
    big.load(camera_exif(60, 40))
    big[0x010E] = "x" * 70_000  # ImageDescription: 70 KB of real EXIF content
    exif = big.tobytes()[len(b"Exif\x00\x00"):]  # PNG eXIf holds the TIFF block itself
    ok, buf = cv2.imencodeWithMetadata(".png", photo(), [cv2.IMAGE_METADATA_EXIF], [np.frombuffer(exif, np.uint8)])
    assert ok
    picture = decode(buf.tobytes(), max_pixels=LIMIT)
    encoded = encode(picture, "jpeg")
    assert encoded.dropped and encoded.dropped[0].startswith("exif (")
    assert pillow_open(encoded.data).size == (60, 40)
    # A 70 KB EXIF whose bulk is the thumbnail is kept: the thumbnail goes, the rest fits.
    ok, buf = cv2.imencodeWithMetadata(".png", photo(), [cv2.IMAGE_METADATA_EXIF],
                                       [np.frombuffer(exif_with_thumbnail(70_000), np.uint8)])
    assert ok
    encoded = encode(decode(buf.tobytes(), max_pixels=LIMIT), "jpeg")
    assert encoded.dropped == ()
    assert pillow_open(encoded.data).getexif()[0x010F] == "srd-cam"


def test_without_metadata_the_density_is_still_kept_and_nothing_else() -> None:
    source = pillow_save(photo(), "TIFF", dpi=(300, 300), icc_profile=icc_profile(), exif=camera_exif(60, 40))
    data = encode(decode(source, max_pixels=LIMIT), "jpeg", keep_metadata=False).data
    out = pillow_open(data)
    assert out.info["dpi"] == (300, 300)
    assert "icc_profile" not in out.info and not out.getexif()


def test_a_big_endian_camera_exif_is_carried_into_a_little_endian_tiff() -> None:
    exif = exif_with_orientation(1, big_endian=True)
    ok, buf = cv2.imencodeWithMetadata(".jpg", photo(), [cv2.IMAGE_METADATA_EXIF], [np.frombuffer(exif, np.uint8)])
    assert ok
    picture = decode(buf.tobytes(), max_pixels=LIMIT)
    out = pillow_open(encode(picture, "tiff").data)
    assert out.getexif()[0x010F] == "srd-test"
    assert out.getexif()[0x0112] == 1  # upright, and said so


def test_a_big_endian_exif_and_gps_ifd_keep_their_values_in_a_tiff() -> None:
    """Pillow writes EXIF big-endian ("MM"), like many cameras; its sub-IFDs must be rewritten, not copied."""
    exif = Image.Exif()
    exif[0x010F] = "srd-cam"
    exif.get_ifd(EXIF_IFD).update({0x9003: "2026:01:01 10:00:00", 0xA002: 60, 0xA003: 40})
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 12.5)})
    source = exif.tobytes()
    assert source.startswith(b"Exif\x00\x00MM")
    picture = decode(pillow_save(photo(), "JPEG", exif=source), max_pixels=LIMIT)
    out = pillow_open(encode(picture.with_pixels(cv2.resize(picture.pixels, (120, 80))), "tiff").data).getexif()
    assert out[0x010F] == "srd-cam"
    assert out.get_ifd(EXIF_IFD)[0x9003] == "2026:01:01 10:00:00"
    assert (out.get_ifd(EXIF_IFD)[0xA002], out.get_ifd(EXIF_IFD)[0xA003]) == (120, 80)
    assert out.get_ifd(0x8825)[1] == "N" and out.get_ifd(0x8825)[2] == (52.0, 31.0, 12.5)


def test_a_tiffs_camera_tags_and_orientation_are_handled_once() -> None:
    """A scanner TIFF's Make goes into the EXIF of a JPEG output; its Orientation, which OpenCV's TIFF
    reader applies itself, is not applied a second time."""
    from PIL import TiffImagePlugin

    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[0x010F] = "srd-scanner"
    tags[0x0112] = 6
    picture = decode(pillow_save(photo(30, 50), "TIFF", tiffinfo=tags), max_pixels=LIMIT)
    assert picture.pixels.shape[:2] == (50, 30)
    out = pillow_open(encode(picture, "jpeg").data)
    assert out.size == (30, 50)
    assert out.getexif()[0x010F] == "srd-scanner"
    assert out.getexif().get(0x0112, 1) == 1
