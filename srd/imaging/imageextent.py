"""Tell an image file that ends before its own structure says it does: a writer that isn't done yet.

Every format srd reads states where its data ends, by lengths (PNG chunks, the RIFF size of a WebP,
TIFF strip offsets and byte counts, ISO boxes of HEIC/AVIF/JPEG 2000, raster sizes of BMP, PNM, PAM and
Sun raster) or by an end marker reached by walking the structure (JPEG's EOI, GIF's trailer), not by
the file's last bytes, which a writer pausing after a segment that holds those bytes would fake (a JPEG
comment or EXIF thumbnail ending in FF D9). One rule covers them all: a file shorter than what its
structure declares is truncated, and is never decoded (a decoder may turn the missing part into grey
rows). A file whose structure is malformed rather than short is left to the decoder and
the size guard to judge.

The same walks tell more that a decoder keeps to itself: whether a progressive JPEG's scans complete its
picture (`unfinished_progression`), how many pictures a file holds (`frame_count`: an animation's frames, a
TIFF's pages, a multi-picture JPEG's pictures, an AVIF or HEIF sequence's images), of which the decoder gives
the first, and the segments, chunks and blocks around them (`jpeg_segments`, `png_chunks`, `gif_extensions`,
`webp_chunks`, `tiff_first_tags`), which `sideblocks.py` sorts into what srd carries and what it does not.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["frame_count", "gif_extensions", "jpeg_segments", "missing_end", "png_chunks", "tiff_first_tags",
           "unfinished_progression", "webp_chunks"]

# Trailers may follow a bare JPEG 2000 codestream's end marker; it is looked for this far from the end.
_TRAILER_WINDOW = 1_048_576
# Bytes per value of each TIFF field type (TIFF 6.0, plus the BigTIFF-era 64-bit types).
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                    16: 8, 17: 8, 18: 8}
_TIFF_STRIPS = ((273, 279), (324, 325))  # (offsets, byte counts) of strips, of tiles
_PNM_TOKEN = re.compile(rb"(?:\s|#[^\r\n]*)*(\d+)")
# What ends a JPEG scan's entropy-coded data: 0xFF then a marker code, not a stuffed 0x00, not a restart
# marker (RST0-7, inside the data) and not a fill byte (the 0xFF after it starts the marker).
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_MARKER_START = re.compile(rb"\xff+")  # a marker's 0xFF, after any fill bytes
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9
_JPEG_SOF_PROGRESSIVE = (0xC2, 0xCA)  # Huffman and arithmetic coding
# Encoders write tens of segments (a progressive file's scans, a split ICC profile's or XMP packet's chunks
# add up to a few hundred): a file with more is malformed, left to the decoder, and a hostile file of
# tiny segments costs tens of milliseconds here, not seconds.
_JPEG_MAX_SEGMENTS = 65_536
_PNG_MAX_CHUNK = 2**31 - 1
# A TIFF's pages are a linked list of directories: a hostile file could loop it or make it endless.
_TIFF_MAX_PAGES = 100_000
_TIFF_NEW_SUBFILE_TYPE = 254  # bit 0: a reduced-resolution version of another page (a preview)
_MPF_LARGE_THUMBNAIL = 0x01  # the class of an MP entry's type code (0x010001 VGA, 0x010002 full HD)


class _Short(Exception):
    """The data ends before a structure it declares."""


def missing_end(data: bytes, fmt: str) -> str | None:
    """Why `data` (of format `fmt`) is shorter than its structure declares, or None when it is not.

    None also when the format's end can't be known (ASCII PNM) or the structure is malformed: those
    are the decoder's to refuse, not a slow writer's to finish.
    """
    reader = _END_READERS.get(fmt)
    if reader is None:
        return None
    try:
        end = reader(data)
    except _Short as short:
        return str(short)
    except (struct.error, ValueError, IndexError):
        return None
    if end > len(data):
        return f"the file has {len(data)} bytes, its {fmt.upper()} structure declares {end}"
    return None


def unfinished_progression(data: bytes) -> str | None:
    """Why a progressive JPEG's scans stop before its picture is complete, or None (also for other JPEGs).

    Each scan of a progressive JPEG sends a band of coefficients of some components, first coarse, then
    refined one bit at a time; a picture is complete once every coefficient of every component has come at
    full precision (a scan ending in successive-approximation bit 0). A file cut between two scans and
    closed with an end marker has a whole structure, and libjpeg shows its blurred preview without a word.
    """
    try:
        segments, _ = jpeg_segments(data)
        frame = next((at for marker, at in segments if marker in _JPEG_SOF_PROGRESSIVE), None)
        if frame is None:
            return None
        components = {data[frame + 6 + 3 * i] for i in range(data[frame + 5])}
        complete = {component: [False] * 64 for component in components}
        for marker, at in segments:
            if marker != _JPEG_SOS:
                continue
            count = data[at]
            first, last, bits = data[at + 1 + 2 * count : at + 4 + 2 * count]
            if bits & 0x0F:  # not yet the last bit of these coefficients
                continue
            last = min(last, 63)
            for component in (data[at + 1 + 2 * i] for i in range(count)):
                flags = complete.get(component)
                if flags is not None and first <= last:
                    flags[first : last + 1] = [True] * (last + 1 - first)
    except (_Short, struct.error, ValueError, IndexError):
        return None  # a cut or malformed structure is the other checks' and the decoder's to judge
    missing = sum(not done for flags in complete.values() for done in flags)
    if missing:
        return f"its progressive scans end with {missing} of {64 * len(components)} coefficients incomplete"
    return None


def frame_count(data: bytes, fmt: str) -> int:
    """The frames (GIF, APNG, WebP), pages (TIFF, less previews), pictures (a JPEG's MPF index) or images
    (an AVIF or HEIF sequence) in `data`: 1 for a still image, another format, or a structure that breaks
    before it is read through (the decoder judges the file, not this)."""
    try:
        if fmt == "gif":
            descriptors: list[int] = []
            _gif_end(data, descriptors)
            return max(len(descriptors), 1)
        if fmt == "png":
            chunks, _ = png_chunks(data)
            control = next((at for at in chunks if data[at + 4 : at + 8] == b"acTL"), None)  # animation control
            return max(_unpack(">I", data, control + 8)[0], 1) if control is not None else 1
        if fmt == "webp":
            return max(sum(kind == b"ANMF" for kind, _, _ in webp_chunks(data)), 1)
        if fmt == "tiff":
            return max(_tiff_pages(data), 1)
        if fmt == "jpeg":
            return max(_mpf_pictures(data), 1)
        if fmt in ("avif", "heic"):
            return max(_iso_sequence_images(data), 1)
    except (_Short, struct.error, ValueError, IndexError):
        pass
    return 1


def jpeg_segments(data: bytes) -> tuple[list[tuple[int, int]], int]:
    """Each segment before a JPEG's end-of-image marker (its marker and where its payload starts, after the
    two-byte length field), and where that marker ends. Raises ValueError (or a subclass) on a malformed or cut
    structure."""
    segments: list[tuple[int, int]] = []
    end = _jpeg_end(data, segments)
    return segments, end


def png_chunks(data: bytes) -> tuple[list[int], int]:
    """The offset of each chunk of a PNG, IHDR to IEND, and where IEND ends (raises as `jpeg_segments` does)."""
    chunks: list[int] = []
    end = _png_end(data, chunks)
    return chunks, end


def gif_extensions(data: bytes) -> list[int]:
    """The offset of each extension block of a GIF (its 0x21 introducer; raises as `jpeg_segments` does)."""
    extensions: list[int] = []
    _gif_end(data, extensions=extensions)
    return extensions


def webp_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """Each chunk after a WebP's RIFF header: its four-character code, payload offset and payload length."""
    chunks, pos = [], 12
    while pos + 8 <= len(data):
        kind, length = _unpack("<4sI", data, pos)
        chunks.append((kind, pos + 8, length))
        pos += 8 + length + (length & 1)  # chunks are padded to an even size
    return chunks


def tiff_first_tags(data: bytes) -> set[int]:
    """The tags of a TIFF's first directory (raises as `jpeg_segments` does)."""
    endian = "<" if data[:2] == b"II" else ">"
    magic, ifd = _unpack(endian + "HI", data, 2)
    if magic != 42:
        raise ValueError("not a classic TIFF")
    (count,) = _unpack(endian + "H", data, ifd)
    return {_unpack(endian + "H", data, entry)[0] for entry in range(ifd + 2, ifd + 2 + 12 * count, 12)}


def _mpf_pictures(data: bytes) -> int:
    """The pictures a JPEG's MPF (multi-picture format, CIPA DC-007) index lists in its APP2 segment, less the
    preview-sized copies cameras add for their screens (an MP entry of type "large thumbnail"); 0 if none."""
    for marker, at in jpeg_segments(data)[0]:
        if marker == 0xE2 and data[at : at + 4] == b"MPF\x00":
            tiff = at + 4  # a TIFF header and one IFD, offsets from the header
            endian = "<" if data[tiff : tiff + 2] == b"II" else ">"
            (ifd,) = _unpack(endian + "I", data, tiff + 4)
            (count,) = _unpack(endian + "H", data, tiff + ifd)
            for entry in range(tiff + ifd + 2, tiff + ifd + 2 + 12 * count, 12):
                tag, _kind, length, offset = _unpack(endian + "HHII", data, entry)
                if tag == 0xB002:  # MP entries: 16 bytes per picture, the first 4 its attributes
                    types = [_unpack(endian + "I", data, tiff + offset + 16 * i)[0] & 0xFFFFFF
                             for i in range(length // 16)]
                    return sum(kind >> 16 != _MPF_LARGE_THUMBNAIL for kind in types)
    return 0


def _iso_sequence_images(data: bytes) -> int:
    """The samples of the first track of an AVIF or HEIF image sequence (moov/trak/mdia/minf/stbl/stsz); 0 for
    a still image (no movie box)."""
    start, end = 0, len(data)
    for wanted in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsz"):
        found = next((box for box in _iso_boxes(data, start, end) if box[0] == wanted), None)
        if found is None:
            return 0
        _, start, end = found
    (_version_flags, _sample_size, samples) = _unpack(">III", data, start)
    return samples


def _iso_boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """The boxes between `start` and `end`: each one's type, payload start and end."""
    pos = start
    while pos + 8 <= end:
        size, kind = _unpack(">I4s", data, pos)
        header = 8
        if size == 1:
            (size,) = _unpack(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header:
            raise ValueError("bad box size")
        yield kind, pos + header, min(pos + size, end)
        pos += size


def _unpack(layout: str, data: bytes, pos: int) -> tuple[Any, ...]:
    """struct.unpack_from, saying "short" when the structure lies (partly) past the end of the data."""
    if pos < 0:
        raise ValueError("negative offset")
    if pos + struct.calcsize(layout) > len(data):
        raise _Short(f"the file has {len(data)} bytes, its structure goes on at byte {pos}")
    return struct.unpack_from(layout, data, pos)


def _jpeg_end(data: bytes, segments: list[tuple[int, int]] | None = None) -> int:
    """End of the end-of-image marker, reached segment by segment from SOI; each segment's marker and where
    its payload starts (after the length field) are added to `segments` if given.

    Segments are skipped by their length fields, so bytes inside them (a comment, an EXIF thumbnail
    with its own EOI) are never taken for markers; each scan's entropy-coded data, which has no
    length, runs to the next marker. Anything after EOI (a camera's trailer) is not looked at.
    """
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("no start-of-image marker")
    pos = 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        if pos >= len(data):
            raise _Short("no end-of-image marker")
        marker_start = _JPEG_MARKER_START.match(data, pos)
        if marker_start is None:
            raise ValueError(f"byte {pos} is not a marker")
        (marker,) = _unpack("B", data, marker_start.end())
        pos = marker_start.end() + 1
        if marker == _JPEG_EOI:
            return pos
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        if marker == 0x00:
            raise ValueError(f"stuffed byte outside a scan at byte {pos}")
        (length,) = _unpack(">H", data, pos)
        if length < 2:
            raise ValueError("segment length below 2")
        if segments is not None:
            segments.append((marker, pos + 2))
        pos += length
        if marker == _JPEG_SOS:
            scan_end = _JPEG_SCAN_END.search(data, pos)
            if scan_end is None:
                raise _Short("a scan's data runs to the end of the file")
            pos = scan_end.start()
    raise ValueError(f"more than {_JPEG_MAX_SEGMENTS} segments")


def _png_end(data: bytes, chunks: list[int] | None = None) -> int:
    """End of the IEND chunk; each chunk's offset is added to `chunks` if given."""
    pos = 8
    while True:
        length, kind = _unpack(">I4s", data, pos)
        if length > _PNG_MAX_CHUNK:
            raise ValueError("chunk length over the PNG limit")
        if chunks is not None:
            chunks.append(pos)
        pos += 12 + length
        if kind == b"IEND":
            return pos
        if pos >= len(data):
            raise _Short("no IEND chunk")


def _gif_end(data: bytes, descriptors: list[int] | None = None, extensions: list[int] | None = None) -> int:
    """End of the trailer; each image descriptor's offset (one per frame) is added to `descriptors`, and each
    extension block's to `extensions`, if given."""
    (flags,) = _unpack("B", data, 10)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while True:
        (introducer,) = _unpack("B", data, pos)
        if introducer == 0x3B:  # trailer
            return pos + 1
        if introducer == 0x21:  # extension: label, then data sub-blocks
            if extensions is not None:
                extensions.append(pos)
            pos = _gif_sub_blocks_end(data, pos + 2)
        elif introducer == 0x2C:  # image descriptor, local colour table, LZW code size, data sub-blocks
            if descriptors is not None:
                descriptors.append(pos)
            (local,) = _unpack("B", data, pos + 9)
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            pos = _gif_sub_blocks_end(data, pos + 1)
        else:
            raise ValueError(f"unknown GIF block {introducer:#x}")


def _gif_sub_blocks_end(data: bytes, pos: int) -> int:
    while True:
        (size,) = _unpack("B", data, pos)
        pos += 1 + size
        if size == 0:
            return pos


def _webp_end(data: bytes) -> int:
    (riff_size,) = _unpack("<I", data, 4)
    return 8 + riff_size


def _bmp_end(data: bytes) -> int:
    (pixel_offset,) = _unpack("<I", data, 10)
    (dib_size,) = _unpack("<I", data, 14)
    if dib_size == 12:  # OS/2 core header: uncompressed
        width, height, _planes, bits = _unpack("<HHHH", data, 18)
        compression, image_size = 0, 0
    else:
        width, height, _planes, bits, compression, image_size = _unpack("<iiHHII", data, 18)
    if compression in (0, 3, 6):  # uncompressed rows, each padded to 4 bytes
        return pixel_offset + (width * bits + 31) // 32 * 4 * abs(height)
    if image_size == 0:
        raise ValueError("compressed BMP without its data size")
    return pixel_offset + image_size


def _tiff_end(data: bytes) -> int:
    """End of the first page: its directory, the values it points at, and its strips or tiles."""
    if data[2:4] in (b"+\x00", b"\x00+"):
        raise ValueError("BigTIFF")
    endian = "<" if data[:2] == b"II" else ">"
    (ifd,) = _unpack(endian + "I", data, 4)
    (count,) = _unpack(endian + "H", data, ifd)
    end = ifd + 2 + 12 * count + 4  # entries, then the next directory's offset
    arrays: dict[int, tuple[int, ...]] = {}
    for i in range(count):
        tag, kind, values = _unpack(endian + "HHI", data, ifd + 2 + 12 * i)
        size = _TIFF_TYPE_SIZES.get(kind, 0) * values
        at = ifd + 2 + 12 * i + 8
        if size > 4:
            (at,) = _unpack(endian + "I", data, at)
            end = max(end, at + size)
        if kind in (3, 4) and any(tag in pair for pair in _TIFF_STRIPS):
            arrays[tag] = _unpack(f"{endian}{values}{'H' if kind == 3 else 'I'}", data, at)
    for offsets_tag, counts_tag in _TIFF_STRIPS:
        offsets, counts = arrays.get(offsets_tag, ()), arrays.get(counts_tag, ())
        if len(offsets) == len(counts):
            end = max([end, *(offset + length for offset, length in zip(offsets, counts, strict=True))])
    return end


def _tiff_pages(data: bytes) -> int:
    """Directories in the first-IFD chain that are not reduced-resolution previews of another."""
    endian = "<" if data[:2] == b"II" else ">"
    magic, ifd = _unpack(endian + "HI", data, 2)
    if magic != 42:
        raise ValueError("not a classic TIFF")
    seen: set[int] = set()
    pages = 0
    while ifd and ifd not in seen and len(seen) < _TIFF_MAX_PAGES:
        seen.add(ifd)
        (count,) = _unpack(endian + "H", data, ifd)
        preview = False
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, kind = _unpack(endian + "HH", data, entry)
            if tag == _TIFF_NEW_SUBFILE_TYPE:
                preview = bool(_unpack(endian + ("H" if kind == 3 else "I"), data, entry + 8)[0] & 1)
        pages += not preview
        (ifd,) = _unpack(endian + "I", data, ifd + 2 + 12 * count)
    return pages


def _pnm_end(data: bytes) -> int:
    kind = data[1:2]
    if kind in b"123":  # ASCII rasters state no length
        raise ValueError("ASCII PNM")
    numbers, pos = [], 2
    for _ in range(2 if kind == b"4" else 3):
        match = _PNM_TOKEN.match(data, pos)
        if match is None:
            raise ValueError("malformed PNM header")
        numbers.append(int(match.group(1)))
        pos = match.end()
    width, height = numbers[0], numbers[1]
    if kind == b"4":
        return pos + 1 + (width + 7) // 8 * height
    channels = 3 if kind == b"6" else 1
    return pos + 1 + width * height * channels * (2 if numbers[2] > 255 else 1)


def _pam_end(data: bytes) -> int:
    end = data.find(b"ENDHDR")
    if end < 0:
        raise _Short("no ENDHDR in the PAM header")
    fields: dict[bytes, int] = {}
    for line in data[3:end].splitlines():
        words = line.split(b"#", 1)[0].split()
        if len(words) >= 2 and words[0] in (b"WIDTH", b"HEIGHT", b"DEPTH", b"MAXVAL"):
            fields[words[0]] = int(words[1])
    depth_bytes = 2 if fields[b"MAXVAL"] > 255 else 1
    return end + len(b"ENDHDR\n") + fields[b"WIDTH"] * fields[b"HEIGHT"] * fields[b"DEPTH"] * depth_bytes


def _sunras_end(data: bytes) -> int:
    _magic, width, height, depth, length, kind, _map_type, map_length = _unpack(">8I", data, 0)
    if length == 0:
        if kind == 2:  # run-length encoded without its length
            raise ValueError("RLE Sun raster without its data size")
        length = (width * depth + 15) // 16 * 2 * height  # rows padded to 16 bits
    return 32 + map_length + length


def _iso_boxes_end(data: bytes) -> int:
    """End of the last top-level box of an ISO base media file (HEIC, AVIF) or a JP2 file."""
    if data.startswith(b"\xff\x4f\xff\x51"):  # a bare JPEG 2000 codestream ends with its EOC marker
        if data.rfind(b"\xff\xd9", max(0, len(data) - _TRAILER_WINDOW)) < 0:
            raise _Short("no end-of-codestream marker")
        return len(data)
    pos = 0
    while pos < len(data):
        size, _kind = _unpack(">I4s", data, pos)
        if size == 1:
            (size,) = _unpack(">Q", data, pos + 8)
        elif size == 0:  # the last box runs to the end of the file
            return len(data)
        if size < 8:
            raise ValueError("bad box size")
        pos += size
    return pos


_END_READERS: dict[str, Callable[[bytes], int]] = {
    "jpeg": _jpeg_end,
    "png": _png_end,
    "gif": _gif_end,
    "webp": _webp_end,
    "bmp": _bmp_end,
    "tiff": _tiff_end,
    "pnm": _pnm_end,
    "pam": _pam_end,
    "sunras": _sunras_end,
    "heic": _iso_boxes_end,
    "avif": _iso_boxes_end,
    "jp2": _iso_boxes_end,
}
