"""Image decoding and encoding keep what users care about: orientation, EXIF, ICC, XMP, alpha, depth."""

from __future__ import annotations

import io
import re
import time

import cv2
import numpy as np
import pytest
from conftest import exif_with_orientation, icc_profile, png_claiming

from srd.errors import ImageError
from srd.imaging.exif import read_orientation
from srd.imaging.imageheader import read_header
from srd.imaging.imageio import Metadata, Picture, _trim_xmp, decode, encode, output_format_for

LIMIT = 50_000_000
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'


def _asymmetric(height: int = 30, width: int = 50) -> np.ndarray:
    """An image whose every rotation and flip looks different."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:5, :, 2] = 255  # red top band
    image[:, :4, 1] = 255  # green left band
    image[-3:, -3:, 0] = 255  # blue bottom-right corner
    return image


def _encode_with(ext: str, pixels: np.ndarray, **blocks: bytes) -> bytes:
    kinds = {"exif": cv2.IMAGE_METADATA_EXIF, "icc": cv2.IMAGE_METADATA_ICCP, "xmp": cv2.IMAGE_METADATA_XMP}
    ok, buf = cv2.imencodeWithMetadata(
        ext, pixels, [kinds[k] for k in blocks], [np.frombuffer(v, np.uint8) for v in blocks.values()]
    )
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_like_opencvs_own_autorotation(orientation: int) -> None:
    data = _encode_with(".png", _asymmetric(), exif=exif_with_orientation(orientation))
    picture = decode(data, max_pixels=LIMIT)
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert picture.pixels.shape == expected.shape
    assert np.array_equal(picture.pixels, expected)
    assert read_orientation(picture.metadata.exif) == 1


def test_big_endian_exif_orientation_is_read_and_reset() -> None:
    exif = exif_with_orientation(8, big_endian=True)
    assert read_orientation(exif) == 8
    picture = decode(_encode_with(".jpg", _asymmetric(), exif=exif), max_pixels=LIMIT)
    assert picture.pixels.shape[:2] == (50, 30)
    assert read_orientation(picture.metadata.exif) == 1
    assert b"srd-test" in picture.metadata.exif  # the rest of EXIF is carried


@pytest.mark.parametrize("fmt, ext", [("jpeg", ".jpg"), ("png", ".png"), ("webp", ".webp")])
def test_exif_icc_and_xmp_survive_a_round_trip(fmt: str, ext: str) -> None:
    icc = icc_profile()
    data = _encode_with(ext, _asymmetric(), exif=exif_with_orientation(1), icc=icc)
    picture = decode(data, max_pixels=LIMIT)
    picture = Picture(picture.pixels, Metadata(picture.metadata.exif, picture.metadata.icc, XMP), picture.format)
    again = decode(encode(picture, fmt).data, max_pixels=LIMIT)
    assert again.metadata.icc == icc
    assert again.metadata.exif == picture.metadata.exif
    assert again.metadata.xmp == XMP


def test_metadata_can_be_dropped_on_request() -> None:
    picture = decode(_encode_with(".png", _asymmetric(), icc=icc_profile()), max_pixels=LIMIT)
    again = decode(encode(picture, "png", keep_metadata=False).data, max_pixels=LIMIT)
    assert again.metadata == Metadata()


def test_sixteen_bit_grey_and_alpha_pngs_decode_as_they_are() -> None:
    deep = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500)
    grey = np.full((7, 9), 77, np.uint8)
    rgba = np.dstack([_asymmetric(), np.full((30, 50), 128, np.uint8)])
    for pixels in (deep, grey, rgba):
        picture = decode(cv2.imencode(".png", pixels)[1].tobytes(), max_pixels=LIMIT)
        assert picture.pixels.dtype == pixels.dtype
        assert np.array_equal(picture.pixels, pixels)
        assert np.array_equal(decode(encode(picture, "png").data, max_pixels=LIMIT).pixels, pixels)


def test_jpeg_output_flattens_alpha_on_white_and_rounds_sixteen_bit_to_eight() -> None:
    rgba = np.zeros((8, 8, 4), np.uint16)
    rgba[:, :, 3] = 0  # fully transparent: must come out white, not black
    out = decode(encode(Picture(rgba, Metadata(), "png"), "jpeg", quality=100).data, max_pixels=LIMIT).pixels
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert out.min() >= 250


def test_unwritable_source_formats_fall_back_to_png() -> None:
    assert output_format_for("gif", "same") == "png"
    assert output_format_for("jpeg", None) == "jpeg"
    assert output_format_for("png", "JPG") == "jpeg"


def test_empty_file_is_refused() -> None:
    with pytest.raises(ImageError, match="empty"):
        decode(b"", max_pixels=LIMIT)


def test_text_file_is_refused_as_not_an_image() -> None:
    with pytest.raises(ImageError, match="not an image"):
        decode(b"hello, this is a text file renamed to .jpg\n", max_pixels=LIMIT)


def test_truncated_jpeg_and_png_are_refused() -> None:
    jpeg = cv2.imencode(".jpg", _asymmetric(200, 300))[1].tobytes()
    png = cv2.imencode(".png", _asymmetric(200, 300))[1].tobytes()
    with pytest.raises(ImageError, match="truncated"):
        decode(jpeg[: len(jpeg) // 2], max_pixels=LIMIT)
    with pytest.raises(ImageError, match="truncated PNG"):
        decode(png[: len(png) // 2], max_pixels=LIMIT)


@pytest.mark.parametrize("progressive", [0, 1])
def test_a_jpeg_cut_inside_its_scan_and_closed_with_an_end_marker_is_refused_as_corrupt(progressive: int) -> None:
    """Structurally whole (the end marker follows the scan), yet libjpeg fills the rest of the picture in."""
    noise = np.random.default_rng(5).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])[1]
    cut = jpeg.tobytes()[: len(jpeg) * 2 // 3] + b"\xff\xd9"
    with pytest.raises(ImageError, match="corrupt JPEG data: part of the picture is missing"):
        decode(cut, max_pixels=LIMIT)


def test_a_progressive_jpeg_cut_between_scans_and_closed_with_an_end_marker_is_refused_as_corrupt() -> None:
    """Every scan whole, the structure too: only the progression says that the picture is a blurred preview."""
    noise = np.random.default_rng(6).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert decode(jpeg, max_pixels=LIMIT).pixels.shape == (64, 80, 3)
    scans = [m.start() for m in re.finditer(b"\xff\xda", jpeg)]
    assert len(scans) > 3
    for cut in (scans[2], scans[-1]):  # after two scans; all but the last
        with pytest.raises(ImageError, match="part of the picture is missing \\(its progressive scans end with"):
            decode(jpeg[:cut] + b"\xff\xd9", max_pixels=LIMIT)


@pytest.mark.parametrize("compression", ["tiff_deflate", "tiff_lzw", "packbits", "jpeg"])
def test_a_tiff_strip_cut_short_with_its_byte_count_to_match_is_refused_as_corrupt(compression: str) -> None:
    """The structure is consistent (nothing declared past the end), but libtiff cannot decode the strip."""
    from PIL import Image

    noise = np.random.default_rng(7).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "TIFF", compression=compression, tiffinfo={278: 60})  # one strip
    data = bytearray(buffer.getvalue())
    ifd = int.from_bytes(data[4:8], "little")
    for entry in range(ifd + 2, ifd + 2 + 12 * int.from_bytes(data[ifd : ifd + 2], "little"), 12):
        if int.from_bytes(data[entry : entry + 2], "little") == 279:  # StripByteCounts, one LONG
            count = int.from_bytes(data[entry + 8 : entry + 12], "little")
            data[entry + 8 : entry + 12] = (count // 2).to_bytes(4, "little")
    with pytest.raises(ImageError, match="corrupt TIFF data: part of the picture is missing"):
        decode(bytes(data), max_pixels=LIMIT)


def test_decompression_bomb_is_refused_from_the_header_before_decoding() -> None:
    started = time.monotonic()
    with pytest.raises(ImageError, match="100000x100000 = 10000000000 pixels, over the limit"):
        decode(png_claiming(100_000, 100_000), max_pixels=LIMIT)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("ext, fmt", [(".jpg", "jpeg"), (".png", "png"), (".webp", "webp"), (".bmp", "bmp"),
                                      (".tif", "tiff"), (".gif", "gif")])
def test_header_reader_knows_the_size_of_each_format(ext: str, fmt: str) -> None:
    data = cv2.imencode(ext, _asymmetric(23, 41))[1].tobytes()
    header = read_header(data)
    assert header is not None
    assert (header.format, header.width, header.height) == (fmt, 41, 23)


def test_xmp_read_back_is_cut_at_its_closing_marker() -> None:
    """OpenCV's PNG reader may hand back bytes past the XMP chunk; only the packet itself is kept."""
    assert _trim_xmp(XMP + b"\x00\x17garbage") == XMP
    wrapped = b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>' + XMP + b'<?xpacket end="w"?>'
    assert _trim_xmp(wrapped + b"\x00junk") == wrapped
