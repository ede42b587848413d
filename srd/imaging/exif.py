"""The one EXIF field srd must understand: Orientation (tag 0x0112) in IFD0.

Pixels are rotated upright on reading, so the EXIF written back must say Orientation=1 or
viewers rotate the image a second time. The rest of the EXIF block is carried byte for byte.
"""

from __future__ import annotations

import struct

ORIENTATION_TAG = 0x0112
_TIFF_SHORT = 3
_EXIF_PREFIX = b"Exif\x00\x00"


def _orientation_entry(exif: bytes) -> tuple[int, str] | None:
    """Offset of the Orientation value in `exif` and the byte order, or None if absent."""
    base = len(_EXIF_PREFIX) if exif.startswith(_EXIF_PREFIX) else 0
    order = exif[base : base + 2]
    if order == b"II":
        endian = "<"
    elif order == b"MM":
        endian = ">"
    else:
        return None
    try:
        (ifd,) = struct.unpack(endian + "I", exif[base + 4 : base + 8])
        (count,) = struct.unpack(endian + "H", exif[base + ifd : base + ifd + 2])
        for i in range(count):
            entry = base + ifd + 2 + 12 * i
            tag, kind = struct.unpack(endian + "HH", exif[entry : entry + 4])
            if tag == ORIENTATION_TAG and kind == _TIFF_SHORT:
                return entry + 8, endian
    except struct.error:
        return None
    return None


def read_orientation(exif: bytes | None) -> int:
    """EXIF orientation 1–8; 1 (upright) when missing or malformed."""
    if not exif:
        return 1
    found = _orientation_entry(exif)
    if found is None:
        return 1
    offset, endian = found
    (value,) = struct.unpack(endian + "H", exif[offset : offset + 2])
    return value if 1 <= value <= 8 else 1


def with_orientation_reset(exif: bytes) -> bytes:
    """A copy of `exif` whose Orientation says 1 (upright); unchanged if it has none."""
    found = _orientation_entry(exif)
    if found is None:
        return exif
    offset, endian = found
    return exif[:offset] + struct.pack(endian + "H", 1) + exif[offset + 2 :]
