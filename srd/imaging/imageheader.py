"""Recognise an image format and read its pixel dimensions from the header alone.

The decompression-bomb guard must know an image's size *before* anything decodes it, and the
codecs give no header-only call in Python, so the few bytes that state the size are read here.
Every reader is strict: a header that is malformed, ambiguous (a TIFF with two width tags) or
not where the format puts it (a stray byte before a JPEG frame header) gives no size at all, and
the caller refuses the image instead of letting the decoder decide.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
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
    "heic": ".heic",
    "pnm": ".pnm",
    "pam": ".pam",
    "jp2": ".jp2",
    "sunras": ".ras",
    "pfm": ".pfm",
    "hdr": ".hdr",
    "exr": ".exr",
}

# File-name endings srd picks images out of a folder by (one-shot runs, benchmarks, training sets).
IMAGE_SUFFIXES = frozenset(EXTENSIONS.values()) | {
    ".jpeg", ".tiff", ".ppm", ".pgm", ".pbm", ".heif", ".hif", ".j2k", ".jpc", ".sr",
}

_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# ISO base media file brands (ftyp major or compatible) of HEIF stills and of AVIF.
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# A PNM header is small; a "comment" longer than this is not a header any camera or scanner writes.
_PNM_HEADER_LIMIT = 1 << 20


@dataclass(frozen=True)
class Header:
    """What the first bytes of an image file say about it; no size when it can't be read with certainty.

    `cut` says the data ended before the size could be read: the file may be the start of an image
    whose writer isn't done, rather than a malformed one.
    """

    format: str
    width: int | None
    height: int | None
    cut: bool = False

    @property
    def pixels(self) -> int | None:
        if self.width is None or self.height is None:
            return None
        return self.width * self.height


class _Unsure(ValueError):
    """The header does not state the size unambiguously."""


class _Cut(Exception):
    """The data ends before the header states the size."""


def sniff_format(data: bytes) -> str | None:
    """Return the format name of `data` from its magic bytes, or None if it isn't an image we know."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[4:8] == b"ftyp":
        brands = _ftyp_brands(data)
        if brands & _AVIF_BRANDS:
            return "avif"
        if brands & _HEIF_BRANDS:
            return "heic"
        return None
    if data.startswith(_JP2_SIGNATURE) or data.startswith(b"\xff\x4f\xff\x51"):
        return "jp2"
    if data.startswith(b"\x59\xa6\x6a\x95"):
        return "sunras"
    if data.startswith(b"\x76\x2f\x31\x01"):
        return "exr"
    if data.startswith((b"#?RADIANCE", b"#?RGBE")):
        return "hdr"
    if data[:2] in (b"PF", b"Pf") and data[2:3].isspace():
        return "pfm"
    if data[:2] == b"P7" and data[2:3].isspace():
        return "pam"
    if len(data) > 2 and data[0:1] == b"P" and data[1:2] in b"123456" and data[2:3].isspace():
        return "pnm"
    return None


def read_header(data: bytes) -> Header | None:
    """Sniff the format and read the dimensions where they can be read with certainty.

    Returns None for data that is not a recognised image. `width`/`height` are None when the
    header is too short, malformed, ambiguous, or of a format without a size reader here.
    """
    fmt = sniff_format(data)
    if fmt is None:
        return None
    reader = _SIZE_READERS.get(fmt)
    size = None
    if reader is not None:
        try:
            size = reader(data)
        except (struct.error, IndexError, _Cut):  # a slice or a walk ran past the end of the data
            return Header(fmt, None, None, cut=True)
        except ValueError:  # _Unsure is a ValueError
            size = None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return Header(fmt, None, None)
    return Header(fmt, size[0], size[1])


def _ftyp_brands(data: bytes) -> set[bytes]:
    (box_size,) = struct.unpack(">I", data[:4])
    end = min(max(box_size, 16), 4096, len(data))
    brands = {data[8:12]}
    brands.update(data[pos : pos + 4] for pos in range(16, end - 3, 4))
    return brands


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24:
        raise _Cut("shorter than the signature and IHDR")
    if data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise _Unsure("IHDR is not the first chunk")
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Size in the first frame header (SOFn), reached by walking every segment from SOI.

    libjpeg skips junk bytes between segments with a warning, so a second parser that resyncs
    could disagree with it about which SOF counts; any byte out of place makes the size unsure.
    """
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise _Unsure(f"byte {pos} is not a marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            raise _Unsure("segment length below 2")
        if marker in _JPEG_SOF_MARKERS:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height  # a height of 0 (set later by DNL) is refused by the caller
        if marker in (0xDA, 0xD9):
            raise _Unsure("scan or end of image before any frame header")
        pos += 2 + length
    raise _Cut("no frame header before the end of the data")


def _gif_size(data: bytes) -> tuple[int, int]:
    return struct.unpack("<HH", data[6:10])


def _bmp_size(data: bytes) -> tuple[int, int]:
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", data[18:22])
    if dib_size not in (16, 40, 52, 56, 64, 108, 124):
        raise _Unsure(f"unknown BMP header size {dib_size}")
    width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)  # a negative height means top-down rows


def _webp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 30:
        raise _Cut("shorter than the first chunk's size fields")
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise _Unsure("bad VP8L signature")
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise _Unsure("bad VP8 start code")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    raise _Unsure("unknown first WebP chunk")


def _tiff_size(data: bytes) -> tuple[int, int]:
    """Size of the first page (the only one srd decodes); each size tag must appear exactly once."""
    if data[2:4] in (b"+\x00", b"\x00+"):
        raise _Unsure("BigTIFF")
    endian = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(endian + "I", data[4:8])
    (count,) = struct.unpack(endian + "H", data[ifd : ifd + 2])
    if count == 0:
        raise _Unsure("empty first IFD")
    found: dict[int, list[int]] = {256: [], 257: []}
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind, values = struct.unpack(endian + "HHI", data[entry : entry + 8])
        if tag in found:
            if values != 1 or kind not in (3, 4):
                raise _Unsure(f"tag {tag} has type {kind} and {values} values")
            fmt = "H" if kind == 3 else "I"
            found[tag].extend(struct.unpack(endian + fmt, data[entry + 8 : entry + 8 + struct.calcsize(fmt)]))
    if len(found[256]) != 1 or len(found[257]) != 1:
        raise _Unsure("width and height tags must each appear exactly once")
    return found[256][0], found[257][0]


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\r\n]*)*(\d+)")


def _pnm_size(data: bytes) -> tuple[int, int]:
    """Width and height after the magic number; comments may stand between any two tokens."""
    head = data[:_PNM_HEADER_LIMIT]
    numbers = []
    pos = 2
    for _ in range(2):
        match = _PNM_TOKEN.match(head, pos)
        if match is None:
            raise _Unsure("malformed PNM header")
        numbers.append(int(match.group(1)))
        pos = match.end()
    return numbers[0], numbers[1]


def _pam_size(data: bytes) -> tuple[int, int]:
    head = data[:_PNM_HEADER_LIMIT]
    end = head.find(b"ENDHDR")
    if end < 0 and len(data) < _PNM_HEADER_LIMIT:
        raise _Cut("no ENDHDR before the end of the data")
    if end < 0:
        raise _Unsure("no ENDHDR")
    fields: dict[bytes, list[bytes]] = {}
    for line in head[3:end].splitlines():
        words = line.split(b"#", 1)[0].split()
        if words:
            fields.setdefault(words[0], []).extend(words[1:2])
    width, height = fields.get(b"WIDTH", []), fields.get(b"HEIGHT", [])
    if len(width) != 1 or len(height) != 1:
        raise _Unsure("WIDTH and HEIGHT must each appear exactly once")
    return int(width[0]), int(height[0])


def _sunras_size(data: bytes) -> tuple[int, int]:
    return struct.unpack(">II", data[4:12])


def _jp2_size(data: bytes) -> tuple[int, int]:
    """Image header box of a JP2 file, or the SIZ segment of a bare codestream."""
    if data.startswith(b"\xff\x4f\xff\x51"):
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[8:24])
        return xsiz - xosiz, ysiz - yosiz
    header = _find_box(data, 0, len(data), b"jp2h")
    ihdr = _find_box(data, header[0], header[1], b"ihdr")
    height, width = struct.unpack(">II", data[ihdr[0] : ihdr[0] + 8])
    return width, height


def _heif_size(data: bytes) -> tuple[int, int]:
    """Largest width and height of any image item (HEIC, AVIF): an upper bound of what decodes.

    A file holds several items (tiles, a grid, thumbnails, alpha); rather than follow item
    references, the largest spatial extent (`ispe`) of any of them bounds the primary image.
    """
    meta = _find_box(data, 0, len(data), b"meta")
    iprp = _find_box(data, meta[0] + 4, meta[1], b"iprp")  # meta is a full box: 4 bytes version/flags
    ipco = _find_box(data, iprp[0], iprp[1], b"ipco")
    widths, heights = [], []
    pos = ipco[0]
    while pos + 8 <= ipco[1]:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size < 8:
            raise _Unsure("bad box size")
        if kind == b"ispe":
            width, height = struct.unpack(">II", data[pos + 12 : pos + 20])
            widths.append(width)
            heights.append(height)
        pos += size
    if not widths:
        raise _Unsure("no image spatial extent")
    return max(widths), max(heights)


def _find_box(data: bytes, start: int, end: int, wanted: bytes) -> tuple[int, int]:
    """(payload start, payload end) of the first ISO-BMFF / JP2 box named `wanted` in data[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
            header = 16
        elif size == 0:
            size = end - pos
        if pos + size > len(data):
            raise _Cut(f"box {kind!r} runs past the end of the data")
        if size < header or pos + size > end:
            raise _Unsure(f"box {kind!r} overruns its parent")
        if kind == wanted:
            return pos + header, pos + size
        pos += size
    if end >= len(data):
        raise _Cut(f"no {wanted!r} box before the end of the data")
    raise _Unsure(f"no {wanted!r} box")


_SIZE_READERS: dict[str, Callable[[bytes], tuple[int, int]]] = {
    "png": _png_size,
    "jpeg": _jpeg_size,
    "gif": _gif_size,
    "bmp": _bmp_size,
    "webp": _webp_size,
    "tiff": _tiff_size,
    "pnm": _pnm_size,
    "pam": _pam_size,
    "sunras": _sunras_size,
    "jp2": _jp2_size,
    "heic": _heif_size,
    "avif": _heif_size,
}
