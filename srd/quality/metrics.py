"""Paper-comparable quality metrics (docs/design.md §10): PSNR and SSIM on the BT.601 luma of BGR images.

SR papers report PSNR/SSIM on MATLAB's ``rgb2ycbcr`` Y channel with ``s`` pixels shaved from each border,
so numbers computed on RGB or without the shave are not comparable with published tables.
"""

from __future__ import annotations

import cv2
import numpy as np

_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


def crop_to_multiple(img: np.ndarray, s: int) -> np.ndarray:
    """Crop bottom/right so height and width are multiples of ``s`` (the protocol's HR "modcrop")."""
    h, w = img.shape[:2]
    return img[: h - h % s, : w - w % s]


def y_channel(bgr: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2ycbcr`` luma on a 0–255 BGR image, as float64 (not rounded)."""
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 BGR image, got shape {bgr.shape}")
    f = bgr.astype(np.float64)
    return 16.0 + (65.481 * f[..., 2] + 128.553 * f[..., 1] + 24.966 * f[..., 0]) / 255.0


def _shaved_y(sr: np.ndarray, hr: np.ndarray, shave: int) -> tuple[np.ndarray, np.ndarray]:
    if sr.shape != hr.shape:
        raise ValueError(f"shape mismatch: sr {sr.shape} vs hr {hr.shape}")
    ys, yh = y_channel(sr), y_channel(hr)
    if shave > 0:
        ys, yh = ys[shave:-shave, shave:-shave], yh[shave:-shave, shave:-shave]
    return ys, yh


def psnr_y(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    """PSNR in dB on Y with ``shave`` border pixels removed (peak 255).

    Args:
        sr: super-resolved BGR image, uint8 or float on a 0–255 scale (floats are used as given).
        hr: ground truth BGR image of the same shape.
        shave: pixels cut from every border; the protocol uses the scale factor.
    """
    ys, yh = _shaved_y(sr, hr, shave)
    mse = float(np.mean((ys - yh) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def ssim_y(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    """Mean SSIM (Wang et al. 2004) on Y with ``shave`` border pixels removed.

    Gaussian 11×11 window, σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255, statistics only where the window fits
    entirely ("valid"), as in the reference MATLAB ``ssim_index`` used by SR papers.
    """
    ys, yh = _shaved_y(sr, hr, shave)

    def blur(a: np.ndarray) -> np.ndarray:
        out = cv2.GaussianBlur(a, (_SSIM_WINDOW, _SSIM_WINDOW), _SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)
        r = _SSIM_WINDOW // 2
        return out[r:-r, r:-r]

    mu1, mu2 = blur(ys), blur(yh)
    var1 = blur(ys * ys) - mu1 * mu1
    var2 = blur(yh * yh) - mu2 * mu2
    cov = blur(ys * yh) - mu1 * mu2
    num = (2 * mu1 * mu2 + _SSIM_C1) * (2 * cov + _SSIM_C2)
    den = (mu1 * mu1 + mu2 * mu2 + _SSIM_C1) * (var1 + var2 + _SSIM_C2)
    return float(np.mean(num / den))
