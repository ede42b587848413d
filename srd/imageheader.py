"""Recognise an image format and read its pixel dimensions from the header alone.

The decompression-bomb guard must know an image's size *before* anything decodes it, and the
codecs give no header-only call in Python, so the few bytes that state the size are read here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Extension each recognised format is written with, by format name.
EXTENSIONS = {
    "jpeg": ".jpg",
    "png": ".png",
    "webp": ".webp",
    "tiff": ".tif",
    "bmp": ".bmp",
    "gif": ".gif",
    "avif": ".avif",
    "pnm": ".pnm",
}

# File-name endings of the formats above, for picking images out of a folder by name.
IMAGE_SUFFIXES = frozenset(EXTENSIONS.values()) | {".jpeg", ".tiff", ".ppm", ".pgm"}

_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class Header:
    """What the first bytes of an image file say about it."""

    format: str
    width: int | None
    height: int | None

    @property
    def pixels(self) -> int | None:
        if self.width is None or self.height is None:
            return None
        return self.width * self.height


def sniff_format(data: bytes) -> str | None:
    """Return the format name of `data` from its magic bytes, or None if it isn't an image we know."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "avif"
    if len(data) > 2 and data[0:1] == b"P" and data[1:2] in b"123456" and data[2:3].isspace():
        return "pnm"
    return None


def read_header(data: bytes) -> Header | None:
    """Sniff the format and, where the format allows, the dimensions.

    Returns None for data that is not a recognised image. Dimensions are None when the header
    is too short or unparseable; the decoder then reports the real problem.
    """
    fmt = sniff_format(data)
    if fmt is None:
        return None
    reader = _SIZE_READERS.get(fmt)
    size = None
    if reader is not None:
        try:
            size = reader(data)
        except (struct.error, IndexError, ValueError):
            size = None
    width, height = size if size else (None, None)
    return Header(fmt, width, height)


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF_MARKERS:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header: not a valid JPEG
            return None
        pos += 2 + length
    return None


def _gif_size(data: bytes) -> tuple[int, int]:
    return struct.unpack("<HH", data[6:10])


def _bmp_size(data: bytes) -> tuple[int, int]:
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """Size of the first page (the only one srd decodes)."""
    endian = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(endian + "I", data[4:8])
    (count,) = struct.unpack(endian + "H", data[ifd : ifd + 2])
    found: dict[int, int] = {}
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack(endian + "HH", data[entry : entry + 4])
        if tag in (256, 257):
            fmt = "H" if kind == 3 else "I"
            (found[tag],) = struct.unpack(endian + fmt, data[entry + 8 : entry + 8 + struct.calcsize(fmt)])
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    tokens: list[int] = []
    for line in data[2:512].split(b"\n"):
        line = line.split(b"#", 1)[0]
        tokens.extend(int(t) for t in line.split())
        if len(tokens) >= 2:
            return tokens[0], tokens[1]
    return None


_SIZE_READERS = {
    "png": _png_size,
    "jpeg": _jpeg_size,
    "gif": _gif_size,
    "bmp": _bmp_size,
    "webp": _webp_size,
    "tiff": _tiff_size,
    "pnm": _pnm_size,
}
