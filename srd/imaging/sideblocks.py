"""What a source holds beside its pictures and the metadata srd reads into `Metadata` (EXIF, ICC, XMP, density).

Nothing a source holds may go missing without a word: an output that left something out does not stand for its
source (`on_success: delete` keeps such a source). So every segment, chunk or block of a JPEG, PNG, GIF, WebP or
TIFF is sorted here into one of three kinds:

- the picture's own structure and what the decoder turns into pixels, frames or metadata srd carries (coding
  tables, a JFIF header, an Adobe colour-transform marker, gamma and chromaticity hints): nothing to say;
- blocks srd writes back verbatim into an output of the same format (`SideBlock.raw`): a JPEG's IPTC/Photoshop
  (APP13) and comment segments, a PNG's text chunks; in an output of another format they are left out, and said;
- everything else (extended XMP, a maker's APPn data, data after a JPEG's end such as a motion photo's video, a
  GIF comment, an unknown chunk): left out of every output, and said, by name.

Another format's blocks are not looked at (HEIF and AVIF: their EXIF and XMP are carried; auxiliary images such
as depth maps are not, and not yet said either).
"""

from __future__ import annotations

import struct
import zlib

from srd.imaging import imageextent
from srd.imaging.metadata import MAX_BLOCK_BYTES, SideBlock

# JPEG APPn payloads srd reads (EXIF, XMP and ICC: a second EXIF block or XMP packet is said) or that only
# describe the coding or repeat the picture (JFIF, its thumbnail extension JFXX, the MPF index, Adobe's colour
# transform, Photoshop's "save for web" quality): by signature.
_JPEG_EXIF, _JPEG_XMP = b"Exif\x00", b"http://ns.adobe.com/xap/1.0/\x00"
_JPEG_CARRIED = {0xE0: (b"JFIF\x00", b"JFXX\x00"), 0xE2: (b"ICC_PROFILE\x00", b"MPF\x00"), 0xEC: (b"Ducky",),
                 0xEE: (b"Adobe",)}
_JPEG_PHOTOSHOP, _JPEG_COMMENT = 0xED, 0xFE
# PNG chunks srd decodes or carries (pixels, palette, transparency, EXIF, ICC, density, animation), or leaves out
# as describing the source's coding rather than its picture (significant bits, a palette's background, histogram
# and suggested palettes, the time of its last change).
_PNG_CARRIED = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"eXIf", b"iCCP", b"pHYs", b"acTL", b"fcTL",
                          b"fdAT", b"sBIT", b"bKGD", b"hIST", b"sPLT", b"tIME"})
_PNG_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})
# Gamma and chromaticities give the pixels' colour where neither an ICC profile nor the sRGB chunk does (those
# override them): then they are carried into a PNG output. The sRGB chunk says what untagged pixels are taken
# for anyway.
_PNG_COLOUR = frozenset({b"gAMA", b"cHRM"})
_PNG_COLOUR_MANAGED = frozenset({b"iCCP", b"sRGB"})
_PNG_XMP_KEYWORD = b"XML:com.adobe.xmp"  # the iTXt chunk OpenCV reads as XMP
_WEBP_CARRIED = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP", b"EXIF", b"XMP "})
_GIF_GRAPHIC_CONTROL, _GIF_COMMENT, _GIF_APPLICATION = 0xF9, 0xFE, 0xFF
_GIF_ANIMATION = (b"NETSCAPE2.0", b"ANIMEXTS1.0")  # loop counts: part of the animation, said with its frames
_TIFF_LEFT_OUT = {33723: "IPTC data (TIFF tag 33723)", 34377: "Photoshop data (TIFF tag 34377)",
                  37724: "Photoshop layers (TIFF tag 37724)"}


def side_blocks(data: bytes, fmt: str) -> tuple[SideBlock, ...]:
    """The blocks of `data` (an image file of format `fmt`) beside its pictures and the metadata srd reads; none
    for a structure that breaks before it is read through (the decoder judges the file, not this)."""
    finder = _FINDERS.get(fmt)
    if finder is None:
        return ()
    try:
        return tuple(finder(data))
    except (struct.error, ValueError, IndexError):
        return ()


def _jpeg(data: bytes) -> list[SideBlock]:
    found = []
    segments, end = imageextent.jpeg_segments(data)
    padding = not data[end:].strip(b"\x00\xff\r\n")  # what some writers leave after the end: nothing
    multi_picture = any(marker == 0xE2 and data.startswith(b"MPF\x00", at) for marker, at in segments)
    if not padding and not multi_picture:  # an MPF file's other pictures follow its first: said as its pictures
        found.append(SideBlock(f"{len(data) - end} bytes after the picture's end (a camera's trailer, such as a "
                               "motion photo's video)", "jpeg", None))
    read = set()  # the first EXIF block and XMP packet are read into the metadata
    for marker, at in segments:
        length = int.from_bytes(data[at - 2 : at], "big")
        payload = data[at : at - 2 + length]
        first_of = next((kind for kind in (_JPEG_EXIF, _JPEG_XMP) if marker == 0xE1 and payload.startswith(kind)),
                        None)
        if first_of is not None and first_of not in read:
            read.add(first_of)
        elif marker == _JPEG_COMMENT:
            found.append(SideBlock("a JPEG comment", "jpeg", data[at - 4 : at - 2 + length]))
        elif marker == _JPEG_PHOTOSHOP and payload.startswith(b"Photoshop 3.0\x00"):
            found.append(SideBlock("IPTC and Photoshop data (JPEG APP13)", "jpeg", data[at - 4 : at - 2 + length]))
        elif first_of is not None:
            found.append(SideBlock(f"a second {'EXIF block' if first_of == _JPEG_EXIF else 'XMP packet'} "
                                   "(JPEG APP1)", "jpeg", None))
        elif 0xE0 <= marker <= 0xEF and not payload.startswith(_JPEG_CARRIED.get(marker, ())):
            found.append(SideBlock(f"{_signature(payload)} (JPEG APP{marker - 0xE0})", "jpeg", None))
    return found


def _png(data: bytes) -> list[SideBlock]:
    found = []
    chunks, end = imageextent.png_chunks(data)
    kinds = {data[at + 4 : at + 8] for at in chunks}
    if data[end:].strip(b"\x00"):
        found.append(SideBlock(f"{len(data) - end} bytes after the PNG's end", "png", None))
    for at in chunks:
        length, kind = struct.unpack_from(">I4s", data, at)
        if kind in _PNG_CARRIED or (kind in _PNG_COLOUR and kinds & _PNG_COLOUR_MANAGED) or kind == b"sRGB":
            continue
        chunk = data[at : at + 12 + length]
        said = kind.decode("latin-1")
        if kind in _PNG_TEXT:
            keyword, unfit = _png_text_unfit(kind, chunk[8:-4])
            if keyword == _PNG_XMP_KEYWORD and kind == b"iTXt":
                continue
            name = f"PNG text '{keyword.decode('latin-1')}'"
        elif kind in _PNG_COLOUR:
            name, unfit = f"the PNG's colour ({said})", None
        else:
            found.append(SideBlock(f"a PNG {said} chunk", "png", None))
            continue
        if unfit is None and zlib.crc32(chunk[4:-4]) != int.from_bytes(chunk[-4:], "big"):
            unfit = "damaged: its CRC does not match"
        found.append(SideBlock(name, "png", None if unfit else chunk, unfit))
    return found


def _png_text_unfit(kind: bytes, body: bytes) -> tuple[bytes, str | None]:
    """A text chunk's keyword, and why it can't be carried (None if it can): a keyword out of the PNG rules, or
    compressed text that does not inflate, or inflates past the carried-block limit (a decompression bomb)."""
    keyword, nul, text = body.partition(b"\x00")
    if not nul or not 1 <= len(keyword) <= 79:
        return keyword[:79], "damaged: no valid keyword"
    if kind == b"zTXt":
        compressed: bytes | None = text[1:]
    elif kind == b"iTXt":
        flag, rest = text[:1], text[2:]
        compressed = rest.split(b"\x00", 2)[-1] if flag == b"\x01" else None
    else:
        compressed = None
    if compressed is not None:
        inflater = zlib.decompressobj()
        try:
            inflater.decompress(compressed, MAX_BLOCK_BYTES + 1)
        except zlib.error:
            return keyword, "damaged: its compressed text does not inflate"
        if inflater.unconsumed_tail:
            return keyword, f"its text inflates past {MAX_BLOCK_BYTES} bytes"
    return keyword, None


def _gif(data: bytes) -> list[SideBlock]:
    found = []
    for at in imageextent.gif_extensions(data):
        label = data[at + 1]
        if label == _GIF_GRAPHIC_CONTROL:
            continue
        if label == _GIF_APPLICATION:
            identifier = data[at + 3 : at + 14]
            if identifier not in _GIF_ANIMATION:
                found.append(SideBlock(f"{_signature(identifier)} (a GIF application block)", "gif", None))
        else:
            found.append(SideBlock("a GIF comment" if label == _GIF_COMMENT else f"a GIF extension {label:#04x}",
                                   "gif", None))
    return found


def _webp(data: bytes) -> list[SideBlock]:
    return [SideBlock(f"a WebP {kind.decode('latin-1')!r} chunk", "webp", None)
            for kind, _, _ in imageextent.webp_chunks(data) if kind not in _WEBP_CARRIED]


def _tiff(data: bytes) -> list[SideBlock]:
    tags = imageextent.tiff_first_tags(data)
    return [SideBlock(name, "tiff", None) for tag, name in _TIFF_LEFT_OUT.items() if tag in tags]


def _signature(payload: bytes) -> str:
    """The identifying string a block starts with, for a note ("FLIR", "http://ns.adobe.com/xmp/extension/")."""
    text = payload[:40].split(b"\x00", 1)[0]
    printable = "".join(chr(byte) for byte in text if 32 <= byte < 127)
    if printable == "http://ns.adobe.com/xmp/extension/":
        return "extended XMP"
    return f"'{printable}' data" if printable else "unnamed data"


_FINDERS = {"jpeg": _jpeg, "png": _png, "gif": _gif, "webp": _webp, "tiff": _tiff}
