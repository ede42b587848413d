"""How many pictures a file holds: an animation's frames (GIF, APNG, WebP) or a TIFF's pages.

OpenCV's `imdecode` reads the first and says nothing of the rest; the caller tells the user what the
output leaves out. Counted from the structure alone, nothing decoded. A malformed structure counts
what was read before it broke (at least 1): the decoder judges the file, not this.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator

# A TIFF's pages are a linked list of directories: a hostile file could loop it or make it endless.
_MAX_PAGES = 100_000
_NEW_SUBFILE_TYPE = 254  # bit 0: a reduced-resolution version of another page


def frame_count(data: bytes, fmt: str) -> int:
    """The frames or pages in `data` of format `fmt` (1 for a still image or a format without frames)."""
    counter = _COUNTERS.get(fmt)
    count = 0
    if counter is not None:
        with contextlib.suppress(struct.error, IndexError, ValueError):
            for found in counter(data):
                count += found
    return max(count, 1)


def _gif_frames(data: bytes) -> Iterator[int]:
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while data[pos] != 0x3B:  # the trailer
        if data[pos] == 0x2C:  # image descriptor, local colour table, LZW code size, data sub-blocks
            yield 1
            local = data[pos + 9]
            pos += 11 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
        elif data[pos] == 0x21:  # extension: label, then data sub-blocks
            pos += 2
        else:
            raise ValueError("unknown GIF block")
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1


def _png_frames(data: bytes) -> Iterator[int]:
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"acTL":  # animation control: the number of frames
            yield struct.unpack_from(">I", data, pos + 8)[0]
            return
        if kind in (b"IDAT", b"IEND"):  # acTL comes before the image data
            return
        pos += 12 + length


def _webp_frames(data: bytes) -> Iterator[int]:
    pos = 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, pos)
        if kind == b"ANMF":
            yield 1
        pos += 8 + length + (length & 1)  # chunks are padded to an even size


def _tiff_pages(data: bytes) -> Iterator[int]:
    """Directories in the chain, less reduced-resolution ones (a scanner's or camera's preview of a page)."""
    endian = "<" if data[:2] == b"II" else ">"
    magic, ifd = struct.unpack_from(endian + "HI", data, 2)
    if magic != 42:  # BigTIFF: not read here
        return
    seen: set[int] = set()
    while ifd and ifd not in seen and len(seen) < _MAX_PAGES:
        seen.add(ifd)
        (count,) = struct.unpack_from(endian + "H", data, ifd)
        preview = False
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, kind = struct.unpack_from(endian + "HH", data, entry)
            if tag == _NEW_SUBFILE_TYPE:
                (value,) = struct.unpack_from(endian + ("H" if kind == 3 else "I"), data, entry + 8)
                preview = bool(value & 1)
        if not preview:
            yield 1
        (ifd,) = struct.unpack_from(endian + "I", data, ifd + 2 + 12 * count)


_COUNTERS: dict[str, Callable[[bytes], Iterator[int]]] = {
    "gif": _gif_frames, "png": _png_frames, "webp": _webp_frames, "tiff": _tiff_pages}
