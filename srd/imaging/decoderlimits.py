"""OpenCV's own decompression-bomb limit, the second line behind srd's header check.

OpenCV's image decoders refuse, before allocating, any image whose size *as the decoder reads
it* exceeds `OPENCV_IO_MAX_IMAGE_PIXELS` (loadsave.cpp, `validateInputImageSize`). The library
reads that variable once, when it is loaded, so it must be in the environment before `cv2` is
imported in the process that decodes: the worker processes, which the forkserver starts with
the environment of the moment it was started.
"""

from __future__ import annotations

import os

PIXELS_VARIABLE = "OPENCV_IO_MAX_IMAGE_PIXELS"
OPENCV_DEFAULT_MAX_PIXELS = 1 << 30


def set_decoder_limits(max_pixels: int) -> None:
    """Put the pixel limit where worker processes started from now on give it to OpenCV."""
    os.environ[PIXELS_VARIABLE] = str(max_pixels)


def decoder_max_pixels() -> int:
    """The limit OpenCV took in this process (read it right after `cv2` is imported)."""
    try:
        return int(os.environ.get(PIXELS_VARIABLE, OPENCV_DEFAULT_MAX_PIXELS))
    except ValueError:
        return OPENCV_DEFAULT_MAX_PIXELS
