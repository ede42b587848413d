"""Decode image bytes into upright pixels plus metadata, and encode them back faithfully.

Users judge an upscaler first by what it loses: EXIF rotation, ICC profiles (colour shifts),
XMP, alpha, 16-bit depth. Everything here exists to carry those through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from srd.errors import ImageError, OutputError
from srd.exif import read_orientation, with_orientation_reset
from srd.imageheader import EXTENSIONS, read_header

# The JPEG APP1 namespace that marks an XMP packet (XMP spec part 3).
_XMP_JPEG_NAMESPACE = b"http://ns.adobe.com/xap/1.0/\x00"
OUTPUT_FORMATS = ("jpeg", "png", "webp", "tiff", "bmp")
_FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
# Formats OpenCV decodes but should not be written back (palette or container formats).
_WRITE_FALLBACK = {"gif": "png", "avif": "png", "pnm": "png"}


@dataclass(frozen=True)
class Metadata:
    """Metadata blocks carried from input to output verbatim (EXIF orientation excepted)."""

    exif: bytes | None = None
    icc: bytes | None = None
    xmp: bytes | None = None


@dataclass(frozen=True)
class Picture:
    """Upright pixels (H×W grey, H×W×3 BGR or H×W×4 BGRA; uint8 or uint16) and their metadata."""

    pixels: np.ndarray
    metadata: Metadata
    format: str

    def with_pixels(self, pixels: np.ndarray) -> Picture:
        return replace(self, pixels=pixels)


def normalise_format(name: str) -> str:
    """Canonical output format name for user input like 'JPG' or '.tif'."""
    key = name.lower().lstrip(".")
    key = _FORMAT_ALIASES.get(key, key)
    if key not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {name!r} (choose from {', '.join(OUTPUT_FORMATS)})")
    return key


def output_format_for(source_format: str, requested: str | None) -> str:
    """The format to write: the requested one, else the source's own (GIF/AVIF/PNM become PNG)."""
    if requested and requested != "same":
        return normalise_format(requested)
    return _WRITE_FALLBACK.get(source_format, source_format)


def extension_for(fmt: str) -> str:
    return EXTENSIONS[fmt]


def decode(data: bytes, *, max_pixels: int) -> Picture:
    """Decode `data` into an upright `Picture`.

    The pixel count is checked from the header before anything is decoded, so a file that
    claims 100000×100000 costs nothing.

    Raises:
        ImageError: empty, unrecognised, over the size limit, truncated or corrupt data.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    header = read_header(data)
    if header is None:
        raise ImageError("not an image (unrecognised file signature)")
    if header.pixels is not None and header.pixels > max_pixels:
        raise ImageError(
            f"image is {header.width}x{header.height} = {header.pixels} pixels, over the limit of "
            f"{max_pixels} (max_pixels)"
        )
    if header.format == "jpeg" and not _jpeg_is_complete(data):
        raise ImageError("truncated JPEG (no end-of-image marker)")
    pixels, types, blocks = cv2.imdecodeWithMetadata(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise ImageError(f"corrupt or truncated {header.format.upper()} data (decoder failed)")
    pixels = _normalise_pixels(pixels)
    metadata = _collect_metadata(types, blocks)
    pixels = apply_orientation(pixels, read_orientation(metadata.exif))
    if metadata.exif is not None:
        metadata = replace(metadata, exif=with_orientation_reset(metadata.exif))
    return Picture(pixels=pixels, metadata=metadata, format=header.format)


def encode(picture: Picture, fmt: str, *, quality: int = 95, keep_metadata: bool = True) -> bytes:
    """Encode `picture` as `fmt`, converting only what the format can't hold.

    JPEG, WebP and BMP hold 8 bits (16-bit is rounded down to 8); JPEG and BMP hold no alpha
    (flattened onto white, as an image viewer would show it).

    Raises:
        OutputError: the encoder refused the image.
    """
    pixels = picture.pixels
    if fmt in ("jpeg", "webp", "bmp") and pixels.dtype == np.uint16:
        pixels = _to_uint8(pixels)
    if fmt in ("jpeg", "bmp") and pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = _flatten_alpha(pixels)
    params = _encode_params(fmt, quality)
    meta = picture.metadata if keep_metadata else Metadata()
    kinds, blocks = _metadata_blocks(meta, fmt)
    try:
        ok, buf = cv2.imencodeWithMetadata(extension_for(fmt), pixels, kinds, blocks, params)
    except cv2.error as exc:
        raise OutputError(f"cannot encode as {fmt}: {exc.err}") from exc
    if not ok:
        raise OutputError(f"cannot encode as {fmt}")
    data = buf.tobytes()
    if fmt == "jpeg" and meta.xmp:
        data = _insert_jpeg_xmp(data, meta.xmp)
    return data


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


def _jpeg_is_complete(data: bytes) -> bool:
    # Cameras may append trailers after EOI, so look for the marker near the end, not at it.
    return data.rfind(b"\xff\xd9", max(0, len(data) - 1_048_576)) > 2


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


def _collect_metadata(types: object, blocks: object) -> Metadata:
    found: dict[int, bytes] = {}
    kinds = [] if types is None else list(np.asarray(types).ravel())
    for kind, block in zip(kinds, [] if blocks is None else list(blocks)):
        found[int(kind)] = np.asarray(block, dtype=np.uint8).tobytes()
    xmp = found.get(cv2.IMAGE_METADATA_XMP)
    if xmp is not None and xmp.startswith(_XMP_JPEG_NAMESPACE):
        xmp = xmp[len(_XMP_JPEG_NAMESPACE) :]
    if xmp is not None:
        xmp = _trim_xmp(xmp)
    return Metadata(
        exif=found.get(cv2.IMAGE_METADATA_EXIF) or None,
        icc=found.get(cv2.IMAGE_METADATA_ICCP) or None,
        xmp=xmp or None,
    )


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
    """Blocks for OpenCV's encoder; JPEG XMP is left out because OpenCV writes it without its namespace."""
    if fmt in ("tiff", "bmp"):  # OpenCV writes no metadata for these
        return [], []
    pairs = [(cv2.IMAGE_METADATA_EXIF, meta.exif), (cv2.IMAGE_METADATA_ICCP, meta.icc)]
    if fmt != "jpeg":
        pairs.append((cv2.IMAGE_METADATA_XMP, meta.xmp))
    kinds = [kind for kind, block in pairs if block]
    blocks = [np.frombuffer(block, np.uint8) for _, block in pairs if block]
    return kinds, blocks


def _insert_jpeg_xmp(jpeg: bytes, xmp: bytes) -> bytes:
    """Insert an XMP APP1 segment after the leading APPn segments (JFIF, EXIF, ICC)."""
    payload = _XMP_JPEG_NAMESPACE + xmp
    if len(payload) + 2 > 0xFFFF:  # extended XMP needs splitting; rare enough to drop with the rest intact
        return jpeg
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    pos = 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF and 0xE0 <= jpeg[pos + 1] <= 0xEF:
        pos += 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
    return jpeg[:pos] + segment + jpeg[pos:]


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
