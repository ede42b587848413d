"""Decode image bytes into upright pixels plus metadata, and encode them back faithfully.

Users judge an upscaler first by what it loses: EXIF rotation, ICC profiles (colour shifts),
XMP, resolution, alpha, 16-bit depth. Everything here exists to carry those through unchanged,
and to refuse, with a reason, what cannot be decoded safely.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import BinaryIO

import cv2
import numpy as np

from srd.errors import ImageError, OutputError
from srd.imaging import containers, heif
from srd.imaging.codeclog import captured_codec_messages
from srd.imaging.decoderlimits import decoder_max_pixels
from srd.imaging.exif import read_orientation, with_orientation_reset
from srd.imaging.imageextent import frame_count, missing_end, unfinished_progression
from srd.imaging.imageheader import EXTENSIONS, read_header
from srd.imaging.metadata import Metadata, for_output, strip_exif_prefix
from srd.imaging.sideblocks import side_blocks

__all__ = ["Encoded", "Metadata", "Picture", "decode", "encode", "output_format_for", "read_bounded"]

# What OpenCV took from the environment when this process loaded it (see srd.imaging.decoderlimits).
DECODER_MAX_PIXELS = decoder_max_pixels()
# Default of `max_input_bytes`: far above any camera file, far below what a worker can hold.
DEFAULT_MAX_INPUT_BYTES = 200_000_000
# The JPEG APP1 namespace that marks an XMP packet (XMP spec part 3).
_XMP_JPEG_NAMESPACE = b"http://ns.adobe.com/xap/1.0/\x00"
OUTPUT_FORMATS = ("jpeg", "png", "webp", "tiff", "bmp")
_FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
# Formats srd reads but does not write: palette, container or rarely supported formats. PNG keeps
# alpha and 16 bits losslessly; a phone's HEIC becomes a JPEG, as photo libraries expect.
EIGHT_BIT_FORMATS = ("jpeg", "webp", "bmp")  # output formats whose samples are 8 bits (16-bit input is rounded)
WRITE_FALLBACK = {"gif": "png", "avif": "png", "pnm": "png", "pam": "png", "jp2": "png", "sunras": "png",
                  "heic": "jpeg"}
_UNSURE_SIZE = ("cannot read the image size from the {fmt} header with certainty (malformed or ambiguous header); "
                "refused by the decompression-bomb guard")
# Codec messages that mean the decoder made pixels up: libjpeg's scan data ended, broke or lost sync and it
# filled the rest of the picture in (grey, or the last block's colour); libtiff could not decode a strip or
# tile (OpenCV leaves it black). The file can pass every structural check (a cut scan followed by an end
# marker, a strip cut short with its byte count to match); the decoded picture is not the photo. libjpeg's
# other warnings (extraneous bytes between segments, an unknown JFIF revision) lose nothing. Looked for anywhere
# in a line: libtiff passes on the libjpeg messages of a JPEG-compressed TIFF ("TIFF_Warning JPEGLib: …").
_LOST_PIXELS_MESSAGES = (
    "Corrupt JPEG data: premature end of data segment",
    "Corrupt JPEG data: bad Huffman code",
    "Corrupt JPEG data: bad arithmetic code",
    "Corrupt JPEG data: found marker",  # … instead of RSTn: a restart interval lost
    "Premature end of JPEG file",
    "TIFF_Error",
)
_PART_MISSING = "part of the picture is missing"
# Formats OpenCV could decode (or that users meet) that srd refuses, with the reason it gives.
UNSUPPORTED_INPUTS = {
    "hdr": "Radiance HDR is a floating-point format; srd processes 8- and 16-bit images only",
    "pfm": "PFM (portable float map) is a floating-point format; srd processes 8- and 16-bit images only",
    "exr": "OpenEXR is not supported (floating-point, and not built into this OpenCV)",
}


@dataclass(frozen=True)
class Picture:
    """Upright pixels (H×W grey, H×W×3 BGR or H×W×4 BGRA; uint8 or uint16) and their metadata.

    `notes` are the decoder's own warnings ("Corrupt JPEG data: …"), for the caller to log; `frames` the
    frames or pages the file holds, of which `pixels` is the first.
    """

    pixels: np.ndarray
    metadata: Metadata
    format: str
    notes: tuple[str, ...] = ()
    frames: int = 1

    def with_pixels(self, pixels: np.ndarray) -> Picture:
        return replace(self, pixels=pixels)

    def loses_depth_in(self, fmt: str) -> bool:
        """Whether an output of `fmt` rounds away what 16-bit samples hold beyond 8 bits (not for 8-bit
        values stored in 16 bits, each a multiple of 257)."""
        return fmt in EIGHT_BIT_FORMATS and self.pixels.dtype == np.uint16 and bool((self.pixels % 257).any())


@dataclass(frozen=True)
class Encoded:
    """An encoded image and the metadata blocks left out of it, each with the reason."""

    data: bytes
    dropped: tuple[str, ...] = ()
    # Real transparency (some alpha below opaque) that the format could not hold, flattened onto white.
    alpha_flattened: bool = False


def normalise_format(name: str) -> str:
    """Canonical output format name for user input like 'JPG' or '.tif'."""
    key = name.lower().lstrip(".")
    key = _FORMAT_ALIASES.get(key, key)
    if key not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {name!r} (choose from {', '.join(OUTPUT_FORMATS)})")
    return key


def output_format_for(source_format: str, requested: str | None, fallback: str | None = None) -> str:
    """The format to write: the requested one, else the source's own when srd can write it.

    A source format srd cannot write becomes `fallback` when given, else its built-in default
    (HEIC becomes JPEG; GIF, AVIF, PNM, JPEG 2000 and Sun raster become PNG).
    """
    if requested and requested != "same":
        return normalise_format(requested)
    if source_format in OUTPUT_FORMATS:
        return source_format
    if fallback:
        return normalise_format(fallback)
    return WRITE_FALLBACK.get(source_format, "png")


def extension_for(fmt: str) -> str:
    return EXTENSIONS[fmt]


def read_bounded(stream: BinaryIO, max_bytes: int) -> bytes:
    """Read an open file whole, refusing it from its size before anything is read into memory.

    The size is checked twice: from fstat, and by reading at most one byte more than the limit,
    so a file that grows after the stat cannot slip past.

    Raises:
        ImageError: the file is larger than `max_bytes`.
    """
    size = os.fstat(stream.fileno()).st_size
    if size > max_bytes:
        raise ImageError(f"file is {size} bytes, over the limit of {max_bytes} (max_input_bytes)")
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageError(f"file grew past the limit of {max_bytes} bytes while being read (max_input_bytes)")
    return data


def decode(data: bytes, *, max_pixels: int) -> Picture:
    """Decode `data` into an upright `Picture`.

    The pixel count is checked from the header before anything is decoded, so a file that
    claims 100000×100000 costs nothing; a header whose size cannot be read with certainty is
    refused. OpenCV's own limit (see `srd.imaging.decoderlimits`) checks the size the decoder
    itself reads, in case the two parsers ever disagree.

    Raises:
        ImageError: empty, unrecognised, unsupported, over the size limit, truncated or corrupt data.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    header = read_header(data)
    if header is None:
        raise ImageError("not an image (unrecognised file signature)")
    refusal = UNSUPPORTED_INPUTS.get(header.format)
    if refusal is not None:
        raise ImageError(refusal)
    if header.format == "heic" and not heif.available():
        raise ImageError(heif.MISSING_EXTRA)
    if header.pixels is None and not header.cut:
        raise ImageError(_UNSURE_SIZE.format(fmt=header.format.upper()))
    if header.pixels is not None and header.pixels > max_pixels:  # a bomb, however much of it is there
        raise ImageError(
            f"image is {header.width}x{header.height} = {header.pixels} pixels, over the limit of "
            f"{max_pixels} (max_input_pixels)"
        )
    shortfall = missing_end(data, header.format)
    if shortfall is not None:
        # Said plainly, and before refusing a header that ended before its size (a writer not done yet
        # leaves one), so the daemon tells it apart from a corrupt file and waits for it.
        raise ImageError(f"truncated {header.format.upper()} ({shortfall})")
    if header.pixels is None:
        raise ImageError(_UNSURE_SIZE.format(fmt=header.format.upper()))
    gap = unfinished_progression(data) if header.format == "jpeg" else None
    if gap is not None:
        raise ImageError(f"corrupt JPEG data: {_PART_MISSING} ({gap})")
    if header.format == "heic":
        pixels, metadata, notes = heif.decode(data, max_pixels)
    else:
        pixels, metadata, notes = _decode_with_opencv(data, header.format)
    if pixels.shape[0] * pixels.shape[1] > max_pixels:  # the decoder disagreed with the header
        raise ImageError(
            f"decoded image is {pixels.shape[1]}x{pixels.shape[0]}, over the limit of {max_pixels} pixels "
            "(max_input_pixels), although its header said less"
        )
    pixels = _normalise_pixels(pixels)
    pixels = apply_orientation(pixels, read_orientation(metadata.exif))
    if metadata.exif is not None:
        metadata = replace(metadata, exif=with_orientation_reset(metadata.exif))
    metadata = replace(metadata, side=side_blocks(data, header.format))
    return Picture(pixels=pixels, metadata=metadata, format=header.format, notes=tuple(notes),
                   frames=frame_count(data, header.format))


def _decode_with_opencv(data: bytes, fmt: str) -> tuple[np.ndarray, Metadata, list[str]]:
    failure: cv2.error | None = None
    with captured_codec_messages() as notes:
        try:
            pixels, types, blocks = cv2.imdecodeWithMetadata(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:
            pixels, failure = None, exc
    if failure is not None and "CV_IO_MAX_IMAGE" in failure.err:
        raise ImageError(
            f"the {fmt.upper()} decoder reads a size over its own limit of {DECODER_MAX_PIXELS} pixels "
            "(set from max_input_pixels when the worker pool started); refused"
        )
    if pixels is None or pixels.size == 0:
        reasons = notes or ([failure.err] if failure is not None else [])
        said = f": {'; '.join(reasons)}" if reasons else ""
        raise ImageError(f"corrupt or truncated {fmt.upper()} data (decoder failed{said})")
    lost = [note for note in notes if any(sign in note for sign in _LOST_PIXELS_MESSAGES)]
    if lost:
        said = "; ".join(lost)
        raise ImageError(f"corrupt {fmt.upper()} data: {_PART_MISSING} (the decoder said: {said})")
    if fmt == "tiff" and pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = _tiff_channels(pixels, containers.tiff_alpha(data))
    return pixels, _collect_metadata(types, blocks, data, fmt), notes


def encode(picture: Picture, fmt: str, *, quality: int = 95, keep_metadata: bool = True) -> Encoded:
    """Encode `picture` as `fmt`, converting only what the format can't hold.

    JPEG, WebP and BMP hold 8 bits (16-bit is rounded down to 8); JPEG and BMP hold no alpha
    (flattened onto white, as an image viewer would show it; `Encoded.alpha_flattened` says when
    that lost real transparency, for the caller to log). Metadata is fitted to the output
    (`srd.imaging.metadata.for_output`); OpenCV writes EXIF, ICC and XMP where it can, and the few byte
    edits in `srd.imaging.containers` do the rest (split ICC in JPEG, TIFF tags, resolution).

    Raises:
        OutputError: the encoder refused the image.
    """
    pixels = picture.pixels
    if fmt in EIGHT_BIT_FORMATS and pixels.dtype == np.uint16:
        pixels = _to_uint8(pixels)
    alpha_flattened = False
    if fmt in ("jpeg", "bmp") and pixels.ndim == 3 and pixels.shape[2] == 4:
        alpha_flattened = bool(pixels[:, :, 3].min() < np.iinfo(pixels.dtype).max)
        pixels = _flatten_alpha(pixels)
    size = (pixels.shape[1], pixels.shape[0])
    # The density is kept even without metadata: it is part of what the picture is, not about it.
    kept = picture.metadata if keep_metadata else Metadata(resolution=picture.metadata.resolution)
    # OpenCV's WebP encoder makes grey pixels RGB.
    meta, dropped = for_output(kept, fmt, size, grey=pixels.ndim == 2 and fmt != "webp")
    if fmt == "webp":  # WebP's only density field is EXIF's
        meta = replace(meta, exif=containers.exif_with_resolution(meta.exif, meta.resolution))
    params = _encode_params(fmt, quality) + _resolution_params(meta, fmt)
    kinds, blocks = _metadata_blocks(meta, fmt)
    encoder_error = ""
    with captured_codec_messages() as notes:
        try:
            ok, buf = cv2.imencodeWithMetadata(extension_for(fmt), pixels, kinds, blocks, params)
        except cv2.error as exc:
            ok, encoder_error = False, exc.err
    if not ok:
        said = "; ".join(notes) or encoder_error
        raise OutputError(f"cannot encode as {fmt}" + (f": {said}" if said else ""))
    data = buf.tobytes()
    side = [block.raw for block in meta.side if block.raw is not None]
    if fmt == "jpeg":
        data = containers.jpeg_with(data, icc=meta.icc, xmp=meta.xmp, resolution=meta.resolution, verbatim=side)
    elif fmt == "png":
        xmp = [containers.png_xmp_chunk(meta.xmp)] if meta.xmp else []
        data = containers.png_with_chunks(containers.png_with_resolution(data, meta.resolution), xmp + side)
    elif fmt == "bmp":
        data = containers.bmp_with_resolution(data, meta.resolution)
    elif fmt == "tiff":
        data = containers.tiff_with(data, exif=meta.exif, icc=meta.icc, xmp=meta.xmp)
    return Encoded(data, tuple(dropped), alpha_flattened)


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn pixels stored with EXIF `orientation` upright."""
    if orientation == 2:
        return cv2.flip(pixels, 1)
    if orientation == 3:
        return cv2.rotate(pixels, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(pixels, 0)
    if orientation == 5:
        return cv2.transpose(pixels)
    if orientation == 6:
        return cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(pixels), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(pixels, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return pixels


def _tiff_channels(pixels: np.ndarray, alpha: str | None) -> np.ndarray:
    """BGRA from OpenCV's TIFF reader, as the file means it.

    OpenCV reads 8-bit colour pages through libtiff's RGBA interface, which hands CMYK (and other 4-ink)
    pages over with an opaque alpha the file never had, and premultiplies an unassociated alpha.
    """
    if alpha == "none":
        return np.ascontiguousarray(pixels[:, :, :3])
    if alpha == "unassociated" and pixels.dtype == np.uint8:
        alpha_channel = pixels[:, :, 3:4].astype(np.float32)
        colour = pixels[:, :, :3].astype(np.float32) * np.float32(255) / np.maximum(alpha_channel, np.float32(1))
        return np.dstack([np.clip(np.rint(colour), 0, 255).astype(np.uint8), pixels[:, :, 3]])
    return pixels


def _normalise_pixels(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"unsupported pixel depth {pixels.dtype} (8 and 16 bits are supported)")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        return pixels[:, :, 0]
    if pixels.ndim == 3 and pixels.shape[2] == 2:  # grey + alpha
        return np.dstack([cv2.cvtColor(pixels[:, :, 0], cv2.COLOR_GRAY2BGR), pixels[:, :, 1]])
    if pixels.ndim == 3 and pixels.shape[2] not in (3, 4):
        raise ImageError(f"unsupported channel count {pixels.shape[2]}")
    return pixels


def _collect_metadata(
    types: Sequence[int] | None, blocks: Sequence[np.ndarray] | None, data: bytes, fmt: str
) -> Metadata:
    found: dict[int, bytes] = {}
    kinds = [] if types is None else list(np.asarray(types).ravel())
    # OpenCV gives one type per block.
    for kind, block in zip(kinds, [] if blocks is None else list(blocks), strict=True):
        found[int(kind)] = np.asarray(block, dtype=np.uint8).tobytes()
    xmp = found.get(cv2.IMAGE_METADATA_XMP)
    if xmp is not None and xmp.startswith(_XMP_JPEG_NAMESPACE):
        xmp = xmp[len(_XMP_JPEG_NAMESPACE) :]
    if xmp is not None:
        xmp = _trim_xmp(xmp)
    exif = strip_exif_prefix(found.get(cv2.IMAGE_METADATA_EXIF)) or None
    icc = found.get(cv2.IMAGE_METADATA_ICCP) or None
    if fmt == "jpeg":  # srd reads a JPEG's own segments: OpenCV's choice of them is wrong in places
        own = containers.jpeg_metadata(data)
        exif, icc, xmp = own.exif, own.icc, own.xmp and _trim_xmp(own.xmp)
    if fmt == "tiff":  # OpenCV reads no TIFF metadata
        tags = containers.tiff_metadata(data)
        exif, icc, xmp = exif or tags.exif, icc or tags.icc, xmp or tags.xmp
    return Metadata(exif=exif, icc=icc, xmp=xmp or None, resolution=containers.read_resolution(data, fmt, exif))


def _trim_xmp(xmp: bytes) -> bytes:
    """Cut an XMP packet after its closing tag.

    OpenCV's PNG reader returns the text chunk as a C string: a trailing NUL, and now and then bytes
    read past the chunk's end. The packet itself ends at its `xpacket end` or `</x:xmpmeta>` marker.
    """
    trailer = xmp.find(b"<?xpacket end=")
    close = xmp.find(b"?>", trailer) if trailer >= 0 else -1
    if close >= 0:
        return xmp[: close + 2]
    meta_end = xmp.find(b"</x:xmpmeta>")
    if meta_end >= 0:
        return xmp[: meta_end + len(b"</x:xmpmeta>")]
    return xmp.rstrip(b"\x00")


def _metadata_blocks(meta: Metadata, fmt: str) -> tuple[list[int], list[np.ndarray]]:
    """Blocks for OpenCV's encoder: the ones it writes correctly for `fmt`.

    Its JPEG writer fails on an ICC profile over one segment and writes XMP without its
    namespace, its PNG writer puts XMP in a tEXt chunk, and its TIFF and BMP writers write no metadata.
    Those are added by `srd.imaging.containers`.
    """
    if fmt in ("tiff", "bmp"):
        return [], []
    pairs = [(cv2.IMAGE_METADATA_EXIF, meta.exif)]
    if fmt != "jpeg":
        pairs.append((cv2.IMAGE_METADATA_ICCP, meta.icc))
    if fmt == "webp":
        pairs.append((cv2.IMAGE_METADATA_XMP, meta.xmp))
    kinds = [kind for kind, block in pairs if block]
    blocks = [np.frombuffer(block, np.uint8) for _, block in pairs if block]
    return kinds, blocks


def _resolution_params(meta: Metadata, fmt: str) -> list[int]:
    """OpenCV's own TIFF resolution tags (it has no such parameter for the other formats)."""
    res = meta.resolution
    if fmt != "tiff" or res is None:
        return []
    unit = {"none": cv2.IMWRITE_TIFF_RESOLUTION_UNIT_NONE, "inch": cv2.IMWRITE_TIFF_RESOLUTION_UNIT_INCH,
            "cm": cv2.IMWRITE_TIFF_RESOLUTION_UNIT_CENTIMETER}[res.unit]
    return [cv2.IMWRITE_TIFF_RESUNIT, unit, cv2.IMWRITE_TIFF_XDPI, max(1, round(res.x)),
            cv2.IMWRITE_TIFF_YDPI, max(1, round(res.y))]


def _encode_params(fmt: str, quality: int) -> list[int]:
    if fmt == "jpeg":
        return [cv2.IMWRITE_JPEG_QUALITY, quality]
    if fmt == "webp":
        return [cv2.IMWRITE_WEBP_QUALITY, quality]
    if fmt == "png":
        return [cv2.IMWRITE_PNG_COMPRESSION, 3]
    return []


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _flatten_alpha(pixels: np.ndarray) -> np.ndarray:
    colour = pixels[:, :, :3].astype(np.float32)
    alpha = pixels[:, :, 3:4].astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
    white = np.float32(np.iinfo(pixels.dtype).max)
    return np.rint(colour * alpha + white * (1 - alpha)).astype(pixels.dtype)
