"""HEIC/HEIF input (the default of recent phones) through pillow-heif, the optional `srd[heif]` extra.

libheif applies the file's own rotation and mirroring (`irot`/`imir`) while decoding, and the
HEIF rules make those, not EXIF, the authority: the pixels come back upright, and the EXIF
Orientation, which phones still fill in, must then say 1 or viewers rotate twice.
"""

from __future__ import annotations

import numpy as np

from srd.errors import ImageError
from srd.imaging.exif import with_orientation_reset
from srd.imaging.metadata import Metadata, strip_exif_prefix

MISSING_EXTRA = "HEIC needs `pip install srd[heif]`"


def available() -> bool:
    """Whether the `heif` extra is installed."""
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


def decode(data: bytes, max_pixels: int) -> tuple[np.ndarray, Metadata, list[str]]:
    """Upright BGR(A) pixels (8 or 16 bits), metadata and decoder notes of a HEIC/HEIF file.

    libheif reads the primary image's size before decoding anything: that size, the one the
    decoder will use, is checked against `max_pixels` too.

    Raises:
        ImageError: the extra is missing, the image is over the limit, or the file is corrupt.
    """
    try:
        import pillow_heif
    except ImportError as exc:
        raise ImageError(MISSING_EXTRA) from exc
    try:
        image = pillow_heif.open_heif(data, convert_hdr_to_8bit=False, bgr_mode=True)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"the HEIC decoder reads {width}x{height} = {width * height} pixels, over the limit "
                             f"of {max_pixels} (max_input_pixels)")
        pixels = np.asarray(image)
    except (ValueError, RuntimeError, OSError) as exc:  # libheif's errors come as these
        raise ImageError(f"corrupt or truncated HEIC data ({exc})") from exc
    info = image.info
    exif = strip_exif_prefix(info.get("exif")) or None
    metadata = Metadata(
        exif=with_orientation_reset(exif) if exif else None,
        icc=info.get("icc_profile") or None,
        xmp=info.get("xmp") or None,
    )
    return np.ascontiguousarray(pixels), metadata, []
