"""Photo metadata carried from input to output, and what each output format can hold of it.

Blocks are carried verbatim except where the output changes what they describe: EXIF
Orientation becomes 1 (pixels are turned upright), PixelXDimension/PixelYDimension give the
output's size, and the IFD1 thumbnail (the input's picture, at the input's orientation) is
dropped. Oversized blocks are dropped, never written: a tiny image must not carry a 7 MB XMP
packet into every output, and a JPEG segment holds at most 65,533 bytes.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, replace

EXIF_PREFIX = b"Exif\x00\x00"
# Largest block srd carries over. Camera EXIF (with maker notes) and ICC profiles are well under
# it; larger blocks are almost always edit histories or hostile padding.
MAX_BLOCK_BYTES = 1 << 20
# JPEG: one APP1 segment (length field 2 bytes, counting itself) holds "Exif\0\0" + the TIFF block.
JPEG_MAX_EXIF = 0xFFFF - 2 - len(EXIF_PREFIX)
_XMP_JPEG_NAMESPACE = b"http://ns.adobe.com/xap/1.0/\x00"
JPEG_MAX_XMP = 0xFFFF - 2 - len(_XMP_JPEG_NAMESPACE)

_EXIF_IFD_TAG = 0x8769
_PIXEL_X_TAG = 0xA002
_PIXEL_Y_TAG = 0xA003
_SHORT, _LONG = 3, 4
_ICC_HEADER_BYTES = 128
_ICC_SPACES = {"grey": b"GRAY", "RGB": b"RGB "}


@dataclass(frozen=True)
class Resolution:
    """Pixel density: `unit` is 'inch', 'cm' or 'none' (only the aspect ratio is known)."""

    unit: str
    x: float
    y: float


@dataclass(frozen=True)
class SideBlock:
    """A block of a source beside its pictures and the metadata above (`srd.imaging.sideblocks`): `name` says it
    in a note; `raw` is the block in the framing of format `fmt`, written back into an output of that format,
    or None where srd writes it into no output (`unfit` then says why, for a block of a kind srd carries that is
    damaged or too large)."""

    name: str
    fmt: str
    raw: bytes | None
    unfit: str | None = None


@dataclass(frozen=True)
class Metadata:
    """Metadata blocks carried from input to output, and the source's side blocks."""

    exif: bytes | None = None
    icc: bytes | None = None
    xmp: bytes | None = None
    resolution: Resolution | None = None
    side: tuple[SideBlock, ...] = ()


def strip_exif_prefix(exif: bytes | None) -> bytes | None:
    """The TIFF-structured EXIF block without the "Exif\\0\\0" that JPEG and HEIF put before it."""
    if exif and exif.startswith(EXIF_PREFIX):
        return exif[len(EXIF_PREFIX) :]
    return exif


def for_output(meta: Metadata, fmt: str, size: tuple[int, int], *, grey: bool) -> tuple[Metadata, list[str]]:
    """The metadata to write for an output of `fmt` and `size` (width, height), `grey` or colour
    pixels, and what was dropped.

    Each dropped block comes back as a short reason, for the caller's log line naming the file.
    """
    dropped: list[str] = []

    def capped(name: str, block: bytes | None, limit: int, why: str) -> bytes | None:
        if block is not None and len(block) > limit:
            dropped.append(f"{name} ({len(block)} bytes, over {limit}: {why})")
            return None
        return block

    exif = strip_exif_prefix(meta.exif)
    if exif is not None:
        exif = exif_for_output(exif, size)
    exif = capped("exif", exif, MAX_BLOCK_BYTES, "max carried block")
    icc = capped("icc", meta.icc, MAX_BLOCK_BYTES * 4, "max carried ICC profile")
    if icc is not None:
        space = icc_colour_space(icc)
        pixels = "grey" if grey else "RGB"
        if space != _ICC_SPACES[pixels]:
            # A CMYK source's profile on the RGB pixels decoded from it (or a grey one on colour pixels) is
            # invalid by the ICC rules: colour-managed viewers reject it or show wrong colours. Without it,
            # they take the pixels for sRGB, which is what the decoder's conversion made.
            said = f"a {space.decode('ascii', 'replace').strip()} profile" if space else "not an ICC profile"
            dropped.append(f"icc ({said}; the output's pixels are {pixels})")
            icc = None
    xmp = capped("xmp", meta.xmp, MAX_BLOCK_BYTES, "max carried block")
    if fmt == "jpeg":
        exif = capped("exif", exif, JPEG_MAX_EXIF, "one JPEG APP1 segment")
        xmp = capped("xmp", xmp, JPEG_MAX_XMP, "one JPEG APP1 segment")
    side, carried = [], 0
    for block in meta.side:
        if block.raw is None:
            dropped.append(f"{block.name} ({block.unfit or 'no output carries it'})")
        elif block.fmt != fmt:
            dropped.append(f"{block.name} (only a {block.fmt.upper()} output holds it)")
        elif carried + len(block.raw) > MAX_BLOCK_BYTES:
            dropped.append(f"{block.name} ({len(block.raw)} bytes, over {MAX_BLOCK_BYTES} with those before it: "
                           "max carried side blocks)")
        else:
            side.append(block)
            carried += len(block.raw)
    return replace(meta, exif=exif, icc=icc, xmp=xmp, side=tuple(side)), _counted(dropped)


def _counted(reasons: list[str]) -> list[str]:
    """Each reason once, in order, with how often it came when more than once (a file of 30,000 comments
    gets one line, not 30,000)."""
    counts = Counter(reasons)
    return [reason if counts[reason] == 1 else f"{reason} ×{counts[reason]}" for reason in counts]


def icc_colour_space(icc: bytes) -> bytes | None:
    """The data colour space an ICC profile describes (b"RGB ", b"GRAY", b"CMYK" …); None if no ICC header."""
    if len(icc) < _ICC_HEADER_BYTES or icc[36:40] != b"acsp":
        return None
    return icc[16:20]


def exif_for_output(exif: bytes, size: tuple[int, int]) -> bytes:
    """`exif` with PixelX/YDimension set to `size` and the IFD1 thumbnail dropped.

    The thumbnail is cut off when it lies after everything else (as cameras write it); otherwise
    (Pillow puts it between IFDs) its IFD and bytes are zeroed in place, so no other offset moves
    and no picture of the input can be carved out of the output. A malformed block is returned
    unchanged.
    """
    try:
        ifds = _Ifds(exif)
        data = bytearray(exif)
        for tag, value in ((_PIXEL_X_TAG, size[0]), (_PIXEL_Y_TAG, size[1])):
            entry = ifds.entry(ifds.exif_ifd, tag)
            if entry is not None:
                struct.pack_into(ifds.endian + "HII", data, entry + 2, _LONG, 1, value)
        if ifds.next_ifd:
            struct.pack_into(ifds.endian + "I", data, ifds.next_ifd_field, 0)
            if ifds.thumbnail_start >= ifds.used_end:
                del data[ifds.thumbnail_start :]
            else:
                for start, end in ifds.thumbnail_ranges():
                    data[start:end] = bytes(end - start)
        return bytes(data)
    except (struct.error, IndexError, ValueError):
        return exif


class _Ifds:
    """Where IFD0, the EXIF IFD and IFD1 lie in a TIFF-structured EXIF block."""

    def __init__(self, exif: bytes) -> None:
        if exif[:2] not in (b"II", b"MM"):
            raise ValueError("no TIFF header")
        self.exif = exif
        self.endian = "<" if exif[:2] == b"II" else ">"
        (ifd0,) = struct.unpack(self.endian + "I", exif[4:8])
        self.used: list[tuple[int, int]] = [(0, 8)]  # [start, end) of every byte the kept IFDs use
        ifd0_end = self._walk(ifd0)
        self.next_ifd_field = ifd0_end
        (self.next_ifd,) = struct.unpack(self.endian + "I", exif[ifd0_end : ifd0_end + 4])
        pointer = self.entry(ifd0, _EXIF_IFD_TAG)
        self.exif_ifd = struct.unpack(self.endian + "I", exif[pointer + 8 : pointer + 12])[0] if pointer else None
        for tag in (_EXIF_IFD_TAG, 0x8825, 0xA005):  # EXIF, GPS and interoperability IFDs
            for ifd in (ifd0, self.exif_ifd):
                found = self.entry(ifd, tag) if ifd else None
                if found is not None:
                    self._walk(struct.unpack(self.endian + "I", exif[found + 8 : found + 12])[0])
        self.thumbnail_start = len(exif)
        if self.next_ifd:
            self.thumbnail_start = min(self.next_ifd, *self._value_offsets(self.next_ifd))

    def entry(self, ifd: int | None, wanted: int) -> int | None:
        if ifd is None:
            return None
        (count,) = struct.unpack(self.endian + "H", self.exif[ifd : ifd + 2])
        for i in range(count):
            pos = ifd + 2 + 12 * i
            if struct.unpack(self.endian + "H", self.exif[pos : pos + 2])[0] == wanted:
                return pos
        return None

    @property
    def used_end(self) -> int:
        return max(end for _, end in self.used)

    def thumbnail_ranges(self) -> list[tuple[int, int]]:
        """[start, end) of IFD1, its values and the thumbnail's bytes, less any a kept IFD also uses."""
        ifd1 = self.next_ifd
        (count,) = struct.unpack(self.endian + "H", self.exif[ifd1 : ifd1 + 2])
        ranges = [(ifd1, ifd1 + 2 + 12 * count + 4)] + [(start, start + length) for start, length in self._values(ifd1)]
        at, length = self.entry(ifd1, 0x0201), self.entry(ifd1, 0x0202)  # JPEGInterchangeFormat(Length)
        if at is not None and length is not None:
            start, size = (struct.unpack(self.endian + "I", self.exif[pos + 8 : pos + 12])[0] for pos in (at, length))
            ranges.append((start, start + size))
        return [
            (start, min(end, len(self.exif)))
            for start, end in ranges
            if not any(start < kept_end and kept_start < end for kept_start, kept_end in self.used)
        ]

    def _walk(self, ifd: int) -> int:
        """Note the bytes an IFD and its values use; return the offset of its next-IFD field."""
        (count,) = struct.unpack(self.endian + "H", self.exif[ifd : ifd + 2])
        end = ifd + 2 + 12 * count
        self.used.append((ifd, end + 4))
        self.used += [(start, start + length) for start, length in self._values(ifd)]
        return end

    def _values(self, ifd: int) -> list[tuple[int, int]]:
        sizes = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
        (count,) = struct.unpack(self.endian + "H", self.exif[ifd : ifd + 2])
        found = []
        for i in range(count):
            pos = ifd + 2 + 12 * i
            _, kind, number, offset = struct.unpack(self.endian + "HHII", self.exif[pos : pos + 12])
            length = sizes.get(kind, 1) * number
            if length > 4:
                found.append((offset, length))
        return found

    def _value_offsets(self, ifd: int) -> list[int]:
        offsets = [offset for offset, _ in self._values(ifd)]
        for tag in (0x0201,):  # JPEGInterchangeFormat: the thumbnail's own bytes
            pos = self.entry(ifd, tag)
            if pos is not None:
                offsets.append(struct.unpack(self.endian + "I", self.exif[pos + 8 : pos + 12])[0])
        return offsets
