"""The degradations photo models are trained and benchmarked on: deterministic under a seed, and doing what
they say (JPEG at the asked quality with 4:2:0 chroma, the scale's size, noise only where drawn)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from srd.quality.bicubic import make_lr
from srd.quality.degrade import RESAMPLERS, BenchDegradation, PhotoDegradation, PhotoMix, jpeg_roundtrip
from srd.quality.metrics import crop_to_multiple


def photo(bench: Path) -> np.ndarray:
    image = cv2.imread(str(bench / "Set14" / "baboon.png"), cv2.IMREAD_COLOR)
    assert image is not None
    return crop_to_multiple(image, 12)


def test_the_photo_mix_is_deterministic_under_a_seed_and_varies_across_seeds(bench: Path) -> None:
    hr = photo(bench)[:192, :192]
    mix = PhotoMix()

    def degraded(seed: int) -> tuple[PhotoDegradation, np.ndarray]:
        rng = np.random.default_rng(seed)
        steps = mix.draw(rng)
        return steps, steps.apply(hr, 4, rng)

    first_steps, first = degraded(7)
    again_steps, again = degraded(7)
    assert first_steps == again_steps
    assert np.array_equal(first, again)
    draws = [mix.draw(np.random.default_rng(seed)) for seed in range(200)]
    assert len(set(draws)) > 150  # discrete choices may coincide, continuous ones never
    assert {d.resample for d in draws} == set(RESAMPLERS)
    qualities = [d.jpeg_quality for d in draws if d.jpeg_quality is not None]
    assert min(qualities) >= 30 and max(qualities) <= 95
    assert 0.8 < len(qualities) / len(draws) < 0.97  # jpeg_probability 0.9
    assert any(d.noise_sigma == 0 for d in draws) and any(d.noise_sigma > 0 for d in draws)


@pytest.mark.parametrize("resample", RESAMPLERS)
def test_each_resampler_shrinks_by_the_scale_and_a_clean_draw_is_plain_resampling(bench: Path, resample: str) -> None:
    hr = photo(bench)[:120, :96]
    clean = PhotoDegradation(0.0, resample, 0.0, False, None, True)
    lr = clean.apply(hr, 3, np.random.default_rng(0))
    assert lr.shape == (40, 32, 3) and lr.dtype == np.uint8
    if resample == "bicubic":
        assert np.array_equal(lr, make_lr(hr, 3))  # the benchmark's own LR: the clean protocol is in the mix


def test_noise_blur_and_jpeg_each_change_the_input_as_drawn(bench: Path) -> None:
    hr = photo(bench)[:192, :192]
    base = PhotoDegradation(0.0, "area", 0.0, False, None, True)
    plain = base.apply(hr, 2, np.random.default_rng(0))

    def differs(**change: float) -> float:
        steps = replace(base, **change)
        return float(np.abs(steps.apply(hr, 2, np.random.default_rng(0)).astype(int) - plain).mean())

    assert differs(noise_sigma=6.0) == pytest.approx(6.0 * 0.8, rel=0.25)  # mean |N(0, s)| is 0.8 s, less the clipping
    grey = PhotoDegradation(0.0, "area", 6.0, True, None, True).apply(hr, 2, np.random.default_rng(0))
    added = grey.astype(int) - plain
    unclipped = (plain > 30).all(axis=2) & (plain < 225).all(axis=2)
    assert (added[unclipped].std(axis=1) == 0).all()  # luminance noise: the same on every channel
    assert differs(blur_sigma=0.8) > 1.0
    assert differs(jpeg_quality=30) > 2.0


def test_the_bench_protocol_is_a_4_2_0_jpeg_of_the_asked_quality(bench: Path) -> None:
    lr = make_lr(photo(bench), 2)
    degraded = BenchDegradation.parse("jpeg:75").apply(lr)
    ok, encoded = cv2.imencode(".jpg", lr, [cv2.IMWRITE_JPEG_QUALITY, 75])  # OpenCV's defaults: 4:2:0
    assert ok
    assert np.array_equal(degraded, cv2.imdecode(encoded, cv2.IMREAD_COLOR))
    full_chroma = jpeg_roundtrip(lr, 75, chroma_420=False)
    assert not np.array_equal(full_chroma, degraded)
    for bad in ("jpeg", "jpeg:0", "jpeg:101", "png:75", "jpeg:q75"):
        with pytest.raises(ValueError, match="jpeg:Q"):
            BenchDegradation.parse(bad)


def test_a_mix_is_the_default_with_named_fields_changed_and_its_clean_share_is_the_clean_protocol(
        bench: Path) -> None:
    mix = PhotoMix.parse("clean_probability=0.5, jpeg_quality=50-90,noise_sigma=1-4.5")
    assert mix == replace(PhotoMix(), clean_probability=0.5, jpeg_quality=(50, 90), noise_sigma=(1.0, 4.5))
    assert PhotoMix.parse("") == PhotoMix()
    assert "0.5 of patches clean MATLAB bicubic" in mix.describe() and "JPEG q50-90" in mix.describe()
    draws = [mix.draw(np.random.default_rng(seed)) for seed in range(400)]
    clean = [d for d in draws if d == PhotoDegradation(0.0, "bicubic", 0.0, False, None, False)]
    assert 0.4 < len(clean) / len(draws) < 0.6
    assert all(50 <= d.jpeg_quality <= 90 for d in draws if d.jpeg_quality is not None)
    hr = photo(bench)[:96, :96]
    assert np.array_equal(clean[0].apply(hr, 2, np.random.default_rng(0)), make_lr(hr, 2))
    for bad, reason in [("blurr_probability=0.1", "unknown photo mix field 'blurr_probability'"),
                        ("jpeg_probability=1.5", "probability from 0 to 1"),
                        ("jpeg_quality=90-50", "range low-high"), ("jpeg_quality=0-50", "from 1 to 100"),
                        ("noise_sigma=4", "range low-high"), ("clean_probability=half", "needs a number"),
                        ("clean_probability=0.3,clean_probability=0.5", "clean_probability is given twice")]:
        with pytest.raises(ValueError, match=reason):
            PhotoMix.parse(bad)
