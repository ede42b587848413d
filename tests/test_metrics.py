"""PSNR/SSIM on Y follow the paper protocol of docs/design.md §10."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from srd.quality.bicubic import imresize
from srd.quality.metrics import crop_to_multiple, psnr_y, ssim_y, y_channel

BENCH = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "bench"


def test_y_channel_uses_bt601_on_bgr() -> None:
    """Pure red, green and blue (in BGR order) give MATLAB rgb2ycbcr's luma values."""
    img = np.zeros((1, 3, 3), np.uint8)
    img[0, 0] = (0, 0, 255)  # red
    img[0, 1] = (0, 255, 0)  # green
    img[0, 2] = (255, 0, 0)  # blue
    np.testing.assert_allclose(y_channel(img)[0], [16 + 65.481, 16 + 128.553, 16 + 24.966])


def test_psnr_known_value_and_identity() -> None:
    """+1 on every channel moves Y by 219/255, giving a closed-form PSNR; identical images give inf."""
    hr = np.full((20, 20, 3), 100, np.uint8)
    sr = hr + 1
    assert psnr_y(sr, hr, 0) == pytest.approx(20 * math.log10(255 / (219 / 255)), abs=1e-9)
    assert psnr_y(hr, hr, 2) == math.inf


def test_shave_ignores_borders() -> None:
    """Errors confined to the s-pixel border do not count."""
    hr = np.full((30, 40, 3), 50, np.uint8)
    sr = hr.copy()
    sr[:3], sr[-3:], sr[:, :3], sr[:, -3:] = 255, 0, 255, 0
    assert psnr_y(sr, hr, 3) == math.inf
    assert psnr_y(sr, hr, 2) < 20


def test_ssim_properties() -> None:
    """SSIM is 1 for identical images, symmetric, and drops with noise."""
    rng = np.random.default_rng(0)
    hr = cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8), (5, 5), 2)
    noisy = np.clip(hr + rng.normal(0, 10, hr.shape), 0, 255).astype(np.uint8)
    assert ssim_y(hr, hr, 2) == pytest.approx(1.0)
    assert ssim_y(noisy, hr, 2) == pytest.approx(ssim_y(hr, noisy, 2))
    assert ssim_y(noisy, hr, 2) < 0.95


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        psnr_y(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)), 0)


def test_crop_to_multiple() -> None:
    assert crop_to_multiple(np.zeros((13, 10, 3)), 4).shape == (12, 8, 3)
    assert crop_to_multiple(np.zeros((12, 9)), 3).shape == (12, 9)


@pytest.mark.parametrize(("scale", "psnr", "ssim"), [(2, 33.68, 0.9299), (3, 30.41, 0.8682), (4, 28.43, 0.8104)])
def test_bicubic_baseline_reproduces_published_set5(scale: int, psnr: float, ssim: float) -> None:
    """MATLAB-LR → bicubic ×s on Set5 gives docs/design.md §10's 33.68/30.41/28.43 dB and the published SSIM."""
    psnrs, ssims = [], []
    for hr_path in sorted((BENCH / "Set5").glob("*.png")):
        hr = crop_to_multiple(cv2.imread(str(hr_path), cv2.IMREAD_COLOR), scale)
        lr = cv2.imread(str(BENCH / "Set5" / "LR_bicubic_matlab" / f"x{scale}" / hr_path.name))
        sr = np.clip(np.round(imresize(lr, scale)), 0, 255).astype(np.uint8)
        psnrs.append(psnr_y(sr, hr, scale))
        ssims.append(ssim_y(sr, hr, scale))
    assert np.mean(psnrs) == pytest.approx(psnr, abs=0.01)
    assert np.mean(ssims) == pytest.approx(ssim, abs=0.002)
