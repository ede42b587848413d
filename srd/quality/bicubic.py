"""MATLAB-compatible bicubic ``imresize``.

SR papers make their low-resolution inputs with MATLAB's ``imresize(img, 1/s, 'bicubic')``, which
antialiases when downscaling (the kernel is stretched by 1/s). OpenCV's ``INTER_CUBIC`` does not, so models
trained or benchmarked with it are not comparable with published numbers (docs/design.md §10). This port computes
MATLAB's weights for each output pixel along each axis and applies them as a weighted sum of a few shifted
copies of the image, height first, as MATLAB does.
"""

from __future__ import annotations

import math

import numpy as np

_KERNEL_WIDTH = 4.0


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _taps(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """For one axis, the input index and weight of each of the few taps of each output pixel: two
    (out_len, taps) arrays.

    Out-of-range taps are folded back by symmetric mirroring, as MATLAB's ``contributions`` does.
    """
    antialias = scale < 1.0
    width = _KERNEL_WIDTH / scale if antialias else _KERNEL_WIDTH
    x = np.arange(1, out_len + 1, dtype=np.float64)
    # Output pixel centres mapped into input coordinates (1-based, MATLAB convention).
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if antialias else _cubic(dist)
    w /= w.sum(axis=1, keepdims=True)
    # Mirror indices into [0, in_len): MATLAB pads with [1..n, n..1].
    period = 2 * in_len
    m = np.mod(idx.astype(np.int64) - 1, period)
    return np.where(m < in_len, m, period - 1 - m), w


def _resample(src: np.ndarray, axis: int, scale: float) -> np.ndarray:
    """Resize ``src`` along ``axis`` as a weighted sum of a few shifted copies, one per tap.

    Each output pixel reads only its taps (6 at ×2, 18 when shrinking ×4): a dense resampling matrix
    costs the whole input length per output pixel, and its BLAS product starts threads that swamp the
    cores when several processes make training data side by side.
    """
    src = np.ascontiguousarray(np.moveaxis(src, axis, 0))
    index, weight = _taps(src.shape[0], output_size(src.shape[0], scale), scale)
    weight = weight.reshape(weight.shape + (1,) * (src.ndim - 1))
    out = weight[:, 0] * src[index[:, 0]]
    for t in range(1, index.shape[1]):
        out += weight[:, t] * src[index[:, t]]
    return np.moveaxis(out, 0, axis)


def output_size(in_len: int, scale: float) -> int:
    """Output length MATLAB gives for a scale factor: ``ceil(in_len * scale)``."""
    # Round first so that e.g. 255 * (1/3) * 3 style float noise cannot add a pixel.
    return math.ceil(round(in_len * scale, 9))


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """Resize like MATLAB's ``imresize(img, scale)`` (bicubic, antialiased when shrinking).

    Args:
        img: HxW or HxWxC image of any numeric dtype.
        scale: factor applied to both axes, e.g. ``1/3`` to make a ×3 LR image.

    Returns:
        float64 array of shape (ceil(H*scale), ceil(W*scale)[, C]); not rounded, so callers decide
        (the benchmark protocol rounds to uint8).
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    src = np.asarray(img, dtype=np.float64)
    # MATLAB resizes along height first when both axes have the same scale.
    return _resample(_resample(src, 0, scale), 1, scale)


def imresize_uint8(img: np.ndarray, scale: float) -> np.ndarray:
    """``imresize`` rounded and clipped to uint8, as the benchmark protocol stores its images."""
    return np.clip(np.rint(imresize(img, scale)), 0, 255).astype(np.uint8)


def make_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """The protocol's LR input: MATLAB-style antialiased bicubic, rounded to uint8."""
    return imresize_uint8(hr, 1.0 / scale)


def bicubic_up(lr: np.ndarray, scale: int) -> np.ndarray:
    """The protocol's bicubic baseline: MATLAB-style bicubic enlargement, rounded to uint8."""
    return imresize_uint8(lr, scale)
