"""The MATLAB bicubic port must reproduce MATLAB's LR benchmark inputs (docs/design.md §10)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from srd.quality.bicubic import imresize
from srd.quality.metrics import crop_to_multiple

BENCH = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "bench"


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("bench_set", ["Set5", "Set14"])
def test_matches_matlab_lr_files(bench_set: str, scale: int) -> None:
    """Every rounded LR image is within 0.25 grey level mean absolute difference of MATLAB's file."""
    hr_paths = sorted((BENCH / bench_set).glob("*.png"))
    assert hr_paths, f"no benchmark images in {BENCH / bench_set}"
    for hr_path in hr_paths:
        hr = crop_to_multiple(cv2.imread(str(hr_path), cv2.IMREAD_COLOR), scale)
        ref = cv2.imread(str(BENCH / bench_set / "LR_bicubic_matlab" / f"x{scale}" / hr_path.name))
        lr = np.clip(np.round(imresize(hr, 1 / scale)), 0, 255).astype(np.uint8)
        assert lr.shape == ref.shape
        mad = np.abs(lr.astype(np.int16) - ref).mean()
        assert mad < 0.25, f"{hr_path.name} x{scale}: {mad:.3f}"


def test_output_size_dtype_and_grey_images() -> None:
    """Output is ceil(size*scale), float64, for 2-D and 3-D inputs of any dtype."""
    grey = np.arange(35 * 22, dtype=np.uint16).reshape(35, 22)
    small = imresize(grey, 1 / 3)
    assert small.shape == (12, 8) and small.dtype == np.float64
    big = imresize(np.zeros((5, 7, 3), np.float32), 2.5)
    assert big.shape == (13, 18, 3) and big.dtype == np.float64


def test_channels_are_resized_independently() -> None:
    """A colour image resizes exactly like each of its channels on its own."""
    img = np.random.default_rng(1).integers(0, 256, (20, 31, 3)).astype(np.uint8)
    out = imresize(img, 0.5)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], imresize(img[..., c], 0.5), atol=1e-9)


def test_constant_image_stays_constant() -> None:
    """Weights sum to one, including at mirrored borders, so flat areas keep their value."""
    flat = np.full((17, 23), 87, np.uint8)
    for scale in (1 / 4, 1 / 3, 0.5, 2, 3):
        np.testing.assert_allclose(imresize(flat, scale), 87.0, atol=1e-9)


def test_downscaling_antialiases() -> None:
    """A pixel-level checkerboard shrinks to nearly flat grey; an unstretched kernel would alias it."""
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = imresize(board, 1 / 3)
    interior = out[2:-2, 2:-2]
    assert abs(interior.mean() - 127.5) < 2.0
    assert interior.std() < 5.0


def test_upscaling_interpolates_known_samples() -> None:
    """×2 upscaling of a linear ramp stays linear away from the borders (cubic kernel reproduces ramps)."""
    ramp = np.tile(np.arange(16, dtype=np.float64) * 10, (4, 1))
    out = imresize(ramp, 2)
    # Output pixel j samples input coordinate (j + 0.5)/2 - 0.5 (0-based).
    expected = ((np.arange(32) + 0.5) / 2 - 0.5) * 10
    np.testing.assert_allclose(out[0, 4:-4], expected[4:-4], atol=1e-9)
