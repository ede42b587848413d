"""The few byte-level edits OpenCV's codecs leave to srd: metadata it cannot read or write.

OpenCV 5 reads and writes EXIF, ICC and XMP for JPEG, PNG and WebP, but it cannot write an ICC
profile larger than one JPEG segment, writes JPEG XMP without its namespace, reads and writes
no TIFF metadata, and has resolution parameters for TIFF only. Each function here does one such
edit on encoded bytes, by the format's own rules:

- JPEG: ICC profiles in numbered ``ICC_PROFILE`` APP2 chunks (ICC.1 annex B), XMP in APP1, the
  JFIF APP0 density, and the source's own IPTC and comment segments.
- PNG: the ``pHYs`` chunk, XMP as an ``iTXt`` chunk, and the source's own text and colour chunks. BMP: the
  pixels-per-metre fields.
- TIFF: ICC (tag 34675), XMP (700) and the EXIF and GPS IFDs, in a new first IFD appended to
  the file (the old one stays as unreferenced bytes), offsets rewritten for their new place.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from srd.imaging import imageextent
from srd.imaging.metadata import EXIF_PREFIX, Resolution

_ICC_SIGNATURE = b"ICC_PROFILE\x00"
_ICC_CHUNK = 0xFFFF - 2 - len(_ICC_SIGNATURE) - 2  # length field, signature, sequence number and count
_XMP_NAMESPACE = b"http://ns.adobe.com/xap/1.0/\x00"
_INCHES_PER_METRE = 39.37007874015748
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_SUB_IFD_TAGS = (0x8769, 0x8825, 0xA005)  # EXIF, GPS, interoperability
_EXIF_IFD, _GPS_IFD, _ICC_TAG, _XMP_TAG, _ORIENTATION_TAG = 0x8769, 0x8825, 34675, 700, 274
# IFD0 tags an EXIF block shares with a TIFF's own first IFD (camera, author, dates). Orientation is
# not among them: OpenCV's TIFF reader applies it to the pixels itself.
_SHARED_IFD0_TAGS = (270, 271, 272, 305, 306, 315, 33432)
_RESOLUTION_UNITS = {1: "none", 2: "inch", 3: "cm"}
# Colour samples per pixel of each TIFF photometric interpretation (separated, 5, counts its inks instead).
_TIFF_COLOUR_SAMPLES = {0: 1, 1: 1, 2: 3, 3: 1, 4: 1, 6: 3, 8: 3, 9: 3, 10: 3, 32844: 1, 32845: 3}


# --- JPEG -----------------------------------------------------------------------------------


def jpeg_with(jpeg: bytes, *, icc: bytes | None, xmp: bytes | None, resolution: Resolution | None,
              verbatim: Sequence[bytes] = ()) -> bytes:
    """`jpeg` with the ICC profile (split into chunks as needed), the XMP packet, the density, and the
    source's whole segments in `verbatim` (marker, length and payload: IPTC, comments) after them."""
    segments = b""
    if icc:
        chunks = [icc[i : i + _ICC_CHUNK] for i in range(0, len(icc), _ICC_CHUNK)]
        if len(chunks) <= 255:  # the sequence number is one byte; metadata caps keep far below
            for number, chunk in enumerate(chunks, 1):
                segments += _segment(0xE2, _ICC_SIGNATURE + bytes([number, len(chunks)]) + chunk)
    if xmp:
        segments += _segment(0xE1, _XMP_NAMESPACE + xmp)
    pos = _after_app_segments(jpeg)
    jpeg = jpeg[:pos] + segments + b"".join(verbatim) + jpeg[pos:]
    return _with_jfif_density(jpeg, resolution) if resolution else jpeg


@dataclass(frozen=True)
class Blocks:
    """The EXIF block, ICC profile and XMP packet srd reads from a container itself (JPEG, TIFF)."""

    exif: bytes | None = None
    icc: bytes | None = None
    xmp: bytes | None = None


def jpeg_metadata(jpeg: bytes) -> Blocks:
    """The first EXIF block and XMP packet of a JPEG (OpenCV keeps the last of several; readers take the first),
    and its ICC profile joined from its ``ICC_PROFILE`` APP2 chunks in sequence order (OpenCV takes any APP2
    segment for one, a multi-picture file's MPF index among them)."""
    try:
        segments, _ = imageextent.jpeg_segments(jpeg)
    except ValueError:
        return Blocks()
    exif = xmp = None
    chunks = []
    for marker, at in segments:
        payload = jpeg[at : at - 2 + int.from_bytes(jpeg[at - 2 : at], "big")]
        if marker == 0xE1 and exif is None and payload.startswith(EXIF_PREFIX):
            exif = payload[len(EXIF_PREFIX) :]
        elif marker == 0xE1 and xmp is None and payload.startswith(_XMP_NAMESPACE):
            xmp = payload[len(_XMP_NAMESPACE) :]
        elif marker == 0xE2 and payload.startswith(_ICC_SIGNATURE) and len(payload) > len(_ICC_SIGNATURE) + 2:
            chunks.append((payload[len(_ICC_SIGNATURE)], payload[len(_ICC_SIGNATURE) + 2 :]))
    icc = b"".join(chunk for _, chunk in sorted(chunks)) or None
    return Blocks(exif or None, icc, xmp or None)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _after_app_segments(jpeg: bytes) -> int:
    pos = 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF and 0xE0 <= jpeg[pos + 1] <= 0xEF:
        pos += 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
    return pos


def _with_jfif_density(jpeg: bytes, res: Resolution) -> bytes:
    """Set the density of the JFIF APP0 segment libjpeg writes first (units, X, Y: 16 bits each)."""
    if jpeg[2:4] != b"\xff\xe0" or jpeg[6:11] != b"JFIF\x00":
        return jpeg
    unit = {"none": 0, "inch": 1, "cm": 2}[res.unit]
    x, y = _fit16(res.x, res.y)
    return jpeg[:13] + struct.pack(">BHH", unit, x, y) + jpeg[18:]


def _fit16(x: float, y: float) -> tuple[int, int]:
    scale = min(1.0, 65535 / max(x, y, 1))
    return max(1, round(x * scale)), max(1, round(y * scale))


def _jfif_resolution(jpeg: bytes) -> Resolution | None:
    if jpeg[2:4] != b"\xff\xe0" or jpeg[6:11] != b"JFIF\x00":
        return None
    unit, x, y = struct.unpack(">BHH", jpeg[13:18])
    if unit not in (1, 2) or not x or not y:  # unit 0 with 1:1 is libjpeg's "nothing known"
        return None
    return Resolution("inch" if unit == 1 else "cm", float(x), float(y))


# --- PNG and BMP ----------------------------------------------------------------------------


def png_with_resolution(png: bytes, res: Resolution | None) -> bytes:
    """Insert a pHYs chunk after IHDR (PNG states density per metre, or an aspect ratio only)."""
    if res is None or _png_chunk(png, b"pHYs") is not None:
        return png
    per_metre = {"inch": _INCHES_PER_METRE, "cm": 100.0, "none": 1.0}[res.unit]
    body = struct.pack(">IIB", round(res.x * per_metre), round(res.y * per_metre), 0 if res.unit == "none" else 1)
    chunk = _png_chunk_bytes(b"pHYs", body)
    end_of_ihdr = 8 + 8 + 13 + 4
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def png_with_chunks(png: bytes, chunks: Sequence[bytes]) -> bytes:
    """Whole `chunks` (length, type, data and CRC) put before the image data of `png`, where readers that stop
    there (and colour chunks, by the PNG rules) need them."""
    if not chunks:
        return png
    offsets, _ = imageextent.png_chunks(png)
    first_data = next(at for at in offsets if png[at + 4 : at + 8] == b"IDAT")
    return png[:first_data] + b"".join(chunks) + png[first_data:]


def png_xmp_chunk(xmp: bytes) -> bytes:
    """An XMP packet as the XMP standard puts it in a PNG: an uncompressed iTXt chunk, keyword XML:com.adobe.xmp
    (OpenCV's writer makes it a Latin-1 tEXt chunk, which XMP readers do not look at)."""
    return _png_chunk_bytes(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp)


def _png_chunk_bytes(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_chunk(png: bytes, wanted: bytes) -> bytes | None:
    """Body of the first `wanted` chunk before the image data (where pHYs must stand), or None."""
    pos = 8
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        if kind == wanted:
            return png[pos + 8 : pos + 8 + length]
        if kind in (b"IDAT", b"IEND"):
            return None
        pos += 12 + length
    return None


def _png_resolution(png: bytes) -> Resolution | None:
    body = _png_chunk(png, b"pHYs")
    if body is None or len(body) != 9:
        return None
    x, y, unit = struct.unpack(">IIB", body)
    if not x or not y:
        return None
    if unit == 1:
        return Resolution("inch", x / _INCHES_PER_METRE, y / _INCHES_PER_METRE)
    return Resolution("none", float(x), float(y))


def bmp_with_resolution(bmp: bytes, res: Resolution | None) -> bytes:
    """Set biXPelsPerMeter / biYPelsPerMeter (a BITMAPINFOHEADER holds metres only)."""
    if res is None or res.unit == "none" or struct.unpack("<I", bmp[14:18])[0] < 40:
        return bmp
    per_metre = _INCHES_PER_METRE if res.unit == "inch" else 100.0
    return bmp[:38] + struct.pack("<ii", round(res.x * per_metre), round(res.y * per_metre)) + bmp[46:]


def _bmp_resolution(bmp: bytes) -> Resolution | None:
    if struct.unpack("<I", bmp[14:18])[0] < 40:
        return None
    x, y = struct.unpack("<ii", bmp[38:46])
    if x <= 0 or y <= 0:
        return None
    return Resolution("inch", x / _INCHES_PER_METRE, y / _INCHES_PER_METRE)


# --- EXIF ------------------------------------------------------------------------------------


def exif_with_resolution(exif: bytes | None, res: Resolution | None) -> bytes | None:
    """`exif` (or a new block) whose IFD0 states `res`, for formats whose only density field is EXIF's."""
    if res is None:
        return exif
    try:
        src = _Tiff(exif) if exif else None
    except (struct.error, ValueError):
        return exif
    endian = src.endian if src else "<"
    try:
        entries = src.entries(src.first_ifd) if src else {}
    except (struct.error, IndexError, ValueError):
        return exif
    if 282 in entries:
        return exif
    unit = {"none": 1, "inch": 2, "cm": 3}[res.unit]
    items = [(src, entry) for entry in entries.values()] + [
        (None, (282, 5, 1, _rational(res.x, endian))),
        (None, (283, 5, 1, _rational(res.y, endian))),
        (None, (296, 3, 1, struct.pack(endian + "H", unit))),
    ]
    items.sort(key=lambda item: item[1][0])
    out = bytearray((b"II" if endian == "<" else b"MM") + struct.pack(endian + "HI", 42, 8))
    try:
        _write_ifd_mixed(items, out, endian)
    except (struct.error, IndexError, ValueError, KeyError):
        return exif
    return bytes(out)


def _rational(value: float, endian: str) -> bytes:
    return struct.pack(endian + "II", round(value * 1000), 1000)


# --- resolution from any input ---------------------------------------------------------------


def read_resolution(data: bytes, fmt: str, exif: bytes | None) -> Resolution | None:
    """The input's pixel density: the format's own field first, else EXIF IFD0's."""
    found = None
    try:
        if fmt == "jpeg":
            found = _jfif_resolution(data)
        elif fmt == "png":
            found = _png_resolution(data)
        elif fmt == "tiff":
            found = _Tiff(data).resolution()
        elif fmt == "bmp":
            found = _bmp_resolution(data)
        if found is None and exif:
            found = _Tiff(exif).resolution()
    except (struct.error, IndexError, ValueError, KeyError):
        return None
    return found


# --- TIFF -----------------------------------------------------------------------------------


def tiff_metadata(tiff: bytes) -> Blocks:
    """ICC, XMP and an EXIF block (IFD0's camera tags plus the EXIF and GPS IFDs) of a TIFF's first page."""
    try:
        src = _Tiff(tiff)
        entries = src.entries(src.first_ifd)
        icc = src.value(entries[_ICC_TAG]) if _ICC_TAG in entries else None
        xmp = src.value(entries[_XMP_TAG]) if _XMP_TAG in entries else None
        wanted = [entries[tag] for tag in (*_SHARED_IFD0_TAGS, _EXIF_IFD, _GPS_IFD) if tag in entries]
        exif = None
        if wanted:
            out = bytearray(tiff[:2] + struct.pack(src.endian + "HI", 42, 8))
            _write_ifd(src, wanted, out)
            exif = bytes(out)
    except (struct.error, IndexError, ValueError, KeyError):
        return Blocks()
    return Blocks(exif=exif, icc=icc or None, xmp=xmp or None)


def tiff_alpha(tiff: bytes) -> str | None:
    """What the first page's alpha is: "none", "associated" (premultiplied), "unassociated" or "unspecified".

    As libtiff decides it: any sample beyond the colour samples the photometric interpretation needs
    (one for grey or palette, three for RGB, YCbCr or Lab, one per ink for CMYK and other separations)
    is an extra sample, declared by ExtraSamples or not. None when the tags can't tell.
    """
    try:
        src = _Tiff(tiff)
        entries = src.entries(src.first_ifd)

        def short(tag: int, default: int) -> int:
            return struct.unpack(src.endian + "H", src.value(entries[tag])[:2])[0] if tag in entries else default

        samples, photometric, inks, extra = short(277, 1), short(262, -1), short(334, 4), short(338, 0)
    except (struct.error, IndexError, ValueError):
        return None
    colour = inks if photometric == 5 else _TIFF_COLOUR_SAMPLES.get(photometric)
    if colour is None:
        return None
    if samples <= colour:
        return "none"
    return {1: "associated", 2: "unassociated"}.get(extra, "unspecified")


def tiff_with(tiff: bytes, *, exif: bytes | None, icc: bytes | None, xmp: bytes | None) -> bytes:
    """`tiff` (one page, as OpenCV writes it) with ICC, XMP and EXIF in a new first IFD."""
    if not (exif or icc or xmp):
        return tiff
    try:
        out_tiff = _Tiff(tiff)
        entries = dict(out_tiff.entries(out_tiff.first_ifd))
    except (struct.error, IndexError, ValueError):  # e.g. a BigTIFF: written without the metadata
        return tiff
    out = bytearray(tiff)
    extra: dict[int, tuple[int, int, int, bytes]] = {}
    if exif:
        try:
            src = _Tiff(exif)
        except (struct.error, ValueError):
            src = None
        if src is not None:
            for tag, entry in src.entries(src.first_ifd).items():
                if tag in (*_SHARED_IFD0_TAGS, _EXIF_IFD, _GPS_IFD) and tag not in entries:
                    extra[tag] = entry
            try:
                return _append_first_ifd(out, out_tiff, entries, extra, src, icc, xmp)
            except (struct.error, IndexError, ValueError, KeyError):
                extra = {}
    return _append_first_ifd(out, out_tiff, entries, extra, None, icc, xmp)


def _append_first_ifd(out: bytearray, own: _Tiff, entries: dict, extra: dict, src: _Tiff | None,
                      icc: bytes | None, xmp: bytes | None) -> bytes:
    # Each entry with the TIFF its value field points into (None: the value is given as raw bytes).
    merged: list[tuple[_Tiff | None, tuple[int, int, int, bytes]]] = [(own, entry) for entry in entries.values()]
    merged += [(src, entry) for entry in extra.values()]
    if src is not None and _ORIENTATION_TAG not in entries:  # said, not left to the default: pixels are upright
        merged.append((None, (_ORIENTATION_TAG, 3, 1, struct.pack(own.endian + "H", 1))))
    if icc:
        merged.append((None, (_ICC_TAG, 7, len(icc), icc)))
    if xmp:
        merged.append((None, (_XMP_TAG, 1, len(xmp), xmp)))
    merged.sort(key=lambda item: item[1][0])
    if len(out) % 2:
        out.append(0)
    first = _write_ifd_mixed(merged, out, own.endian)
    struct.pack_into(own.endian + "I", out, 4, first)
    return bytes(out)


class _Tiff:
    """Read-only view of a TIFF structure (a file, or an EXIF block)."""

    def __init__(self, data: bytes) -> None:
        if data[:2] not in (b"II", b"MM"):
            raise ValueError("no TIFF header")
        self.data = data
        self.endian = "<" if data[:2] == b"II" else ">"
        if struct.unpack(self.endian + "H", data[2:4])[0] != 42:
            raise ValueError("not a classic TIFF")
        (self.first_ifd,) = struct.unpack(self.endian + "I", data[4:8])

    def entries(self, ifd: int) -> dict[int, tuple[int, int, int, bytes]]:
        """tag → (tag, type, count, raw 4-byte value field); a repeated tag makes the IFD invalid."""
        (count,) = struct.unpack(self.endian + "H", self.data[ifd : ifd + 2])
        found = {}
        for i in range(count):
            pos = ifd + 2 + 12 * i
            tag, kind, number = struct.unpack(self.endian + "HHI", self.data[pos : pos + 8])
            if tag in found:
                raise ValueError(f"tag {tag} repeated")
            found[tag] = (tag, kind, number, self.data[pos + 8 : pos + 12])
        return found

    def value(self, entry: tuple[int, int, int, bytes]) -> bytes:
        _, kind, number, field = entry
        length = _TIFF_TYPE_SIZES.get(kind, 1) * number
        if length <= 4:
            return field[:length]
        (offset,) = struct.unpack(self.endian + "I", field)
        if offset + length > len(self.data):
            raise ValueError("value past the end")
        return self.data[offset : offset + length]

    def resolution(self) -> Resolution | None:
        entries = self.entries(self.first_ifd)
        if 282 not in entries or 283 not in entries:
            return None
        x, y = (self._rational(entries[tag]) for tag in (282, 283))
        unit = 2
        if 296 in entries:
            (unit,) = struct.unpack(self.endian + "H", self.value(entries[296])[:2])
        if not x or not y or unit not in _RESOLUTION_UNITS:
            return None
        return Resolution(_RESOLUTION_UNITS[unit], x, y)

    def _rational(self, entry: tuple[int, int, int, bytes]) -> float:
        numerator, denominator = struct.unpack(self.endian + "II", self.value(entry)[:8])
        return numerator / denominator if denominator else 0.0


# struct codes of the TIFF types whose bytes depend on the byte order (rationals are two LONGs).
_ORDERED_TYPES = {3: "H", 4: "I", 5: "I", 8: "h", 9: "i", 10: "i", 11: "f", 12: "d", 13: "I"}


def _in_byte_order(value: bytes, kind: int, source: str, target: str) -> bytes:
    """`value` of TIFF type `kind` rewritten from byte order `source` to `target` (EXIF blocks of
    big-endian cameras go into the little-endian TIFFs OpenCV writes)."""
    code = _ORDERED_TYPES.get(kind)
    if source == target or code is None:
        return value
    count = len(value) // struct.calcsize(code)
    return struct.pack(f"{target}{count}{code}", *struct.unpack(f"{source}{count}{code}", value))


def _write_ifd(src: _Tiff, entries: list[tuple[int, int, int, bytes]], out: bytearray) -> int:
    return _write_ifd_mixed([(src, entry) for entry in entries], out, src.endian)


def _write_ifd_mixed(items: list, out: bytearray, endian: str) -> int:
    """Append an IFD of `items` (source view or None for raw bytes, entry) to `out`; return its offset.

    Values longer than 4 bytes are copied after the IFD and their offsets rewritten; EXIF, GPS and
    interoperability IFDs are copied the same way, recursively.
    """
    start = len(out)
    out += struct.pack(endian + "H", len(items)) + b"\x00" * (12 * len(items)) + b"\x00\x00\x00\x00"
    for i, (src, (tag, kind, number, field)) in enumerate(items):
        if src is None:
            value = field
        elif tag in _SUB_IFD_TAGS:
            (sub,) = struct.unpack(src.endian + "I", field)
            nested = sorted(src.entries(sub).values())
            if len(out) % 2:
                out.append(0)
            kind, number = 4, 1
            # In the output's byte order, like every other value: a big-endian camera's EXIF IFD goes
            # into the little-endian TIFF OpenCV writes.
            field = struct.pack(endian + "I", _write_ifd_mixed([(src, entry) for entry in nested], out, endian))
            value = None
        else:
            value = _in_byte_order(src.value((tag, kind, number, field)), kind, src.endian, endian)
        if value is not None:
            if len(value) <= 4:
                field = value.ljust(4, b"\x00")
            else:
                if len(out) % 2:
                    out.append(0)
                field = struct.pack(endian + "I", len(out))
                out += value
        struct.pack_into(endian + "HHI4s", out, start + 2 + 12 * i, tag, kind, number, field)
    return start
