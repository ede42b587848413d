"""`ensemble`: flips and rotations of each tile averaged; exact for a model that commutes with them, better on a
real one, and part of the fingerprint only when used."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from srd.engine.ensemble import run_ensembled
from srd.engine.pipeline import Pipeline, StageContext, Upscale
from srd.engine.registry import resolve_model
from srd.engine.upscaler import EngineSettings, Upscaler
from srd.quality.bicubic import make_lr
from srd.quality.metrics import crop_to_multiple, psnr_y


def nearest_x2(blob: np.ndarray) -> np.ndarray:
    return blob.repeat(2, axis=2).repeat(2, axis=3)


@pytest.mark.parametrize("copies", [2, 4, 8])
def test_a_model_that_commutes_with_flips_and_rotations_gives_the_same_output(copies: int) -> None:
    blob = np.random.default_rng(0).random((1, 3, 5, 7), dtype=np.float32)
    assert np.allclose(run_ensembled(nearest_x2, blob, copies), nearest_x2(blob), atol=1e-6)


def test_each_copy_is_turned_back_before_averaging() -> None:
    blob = np.zeros((1, 1, 4, 6), np.float32)

    def marks_top_left(x: np.ndarray) -> np.ndarray:
        out = nearest_x2(x)
        out[..., 0, 0] += 8.0  # sees only its own orientation's corner
        return out

    out = run_ensembled(marks_top_left, blob, 8)
    assert out.shape == (1, 1, 8, 12)
    # Turned back, the 8 copies' top-left corners land on the 4 corners, two copies on each.
    corners = out[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.allclose(corners, 2.0) and out.sum() == pytest.approx(8.0)
    with pytest.raises(ValueError, match="ensemble must be one of"):
        run_ensembled(nearest_x2, blob, 3)


def test_ensemble_8_raises_psnr_of_a_real_model_tiled(bench: Path) -> None:
    spec = resolve_model("edsr-lite", 2)
    upscaler = Upscaler(spec, EngineSettings(tile=64, tile_pad=16))
    gains = []
    for name in ("butterfly", "bird"):
        hr = crop_to_multiple(cv2.imread(str(bench / "Set5" / f"{name}.png"), cv2.IMREAD_COLOR), 2)
        lr = make_lr(hr, 2)
        plain, ensembled = upscaler.upscale(lr), upscaler.upscale(lr, 8)
        assert ensembled.shape == plain.shape and ensembled.dtype == plain.dtype
        gains.append(psnr_y(ensembled, hr, 2) - psnr_y(plain, hr, 2))
    assert all(0.03 < gain < 0.6 for gain in gains), gains


def test_the_fingerprint_changes_with_ensemble_and_is_unchanged_without_it() -> None:
    context = StageContext()
    plain = Pipeline((Upscale(model="edsr-lite", scale=2),))
    # The default profile's fingerprint as srd computed it before `ensemble` existed (srd 0.1 at 5ccdef8):
    # if this changes, every user's whole library is processed again after an upgrade.
    assert plain.fingerprint(context) == "ff5523b76633b827"
    assert Pipeline((Upscale(model="edsr-lite", scale=2, ensemble=1),)).fingerprint(context) == "ff5523b76633b827"
    assert Pipeline((Upscale(model="edsr-lite", scale=2, ensemble=8),)).fingerprint(context) != "ff5523b76633b827"
    assert Upscale(ensemble=3).problems() == ["ensemble must be one of 1, 2, 4, 8"]
