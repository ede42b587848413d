"""Each pipeline stage does its one job, keeps channels and depth, and the fingerprint tracks what matters."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from srd.engine.pipeline import (
    Contrast,
    Denoise,
    LimitSize,
    Pipeline,
    Resize,
    Sharpen,
    StageContext,
    Upscale,
)
from srd.engine.upscaler import EngineSettings
from srd.errors import ModelError


@pytest.fixture
def context() -> StageContext:
    return StageContext(EngineSettings(tile=64))


def test_limit_size_shrinks_only_what_is_too_big(context: StageContext) -> None:
    big = np.zeros((1000, 3000, 3), np.uint8)
    assert LimitSize(max_side=2000).apply(big, context).shape == (666, 2000, 3)
    assert LimitSize(max_pixels=750_000).apply(big, context).shape == (500, 1500, 3)
    small = np.zeros((100, 200), np.uint16)
    assert LimitSize(max_side=2000).apply(small, context) is small


def test_denoise_reduces_noise_in_eight_and_sixteen_bit(context: StageContext) -> None:
    rng = np.random.default_rng(1)
    clean = np.full((64, 64, 3), 120, np.uint8)
    noisy = np.clip(clean + rng.normal(0, 10, clean.shape), 0, 255).astype(np.uint8)
    out = Denoise(strength=10, colour_strength=10).apply(noisy, context)
    assert np.abs(out.astype(int) - clean).mean() < np.abs(noisy.astype(int) - clean).mean() / 2
    deep = noisy.astype(np.uint16) * 257
    out16 = Denoise(strength=10).apply(deep, context)
    assert out16.dtype == np.uint16
    assert np.abs(out16.astype(int) - 120 * 257).mean() < np.abs(deep.astype(int) - 120 * 257).mean() / 2


def test_contrast_stretches_lightness_and_leaves_alpha(context: StageContext) -> None:
    ramp = np.tile(np.linspace(100, 140, 128).astype(np.uint8), (128, 1))
    bgra = np.dstack([ramp, ramp, ramp, np.full_like(ramp, 77)])
    out = Contrast(clip_limit=4.0).apply(bgra, context)
    assert np.ptp(out[:, :, 0]) > np.ptp(ramp)
    assert (out[:, :, 3] == 77).all()


def test_sharpen_increases_edge_contrast(context: StageContext) -> None:
    edge = np.zeros((32, 32), np.uint8)
    edge[:, 16:] = 200
    soft = cv2.GaussianBlur(edge, (0, 0), 2)
    out = Sharpen(amount=1.0, radius=2.0).apply(soft, context)
    assert np.abs(np.diff(out.astype(int), axis=1)).max() > np.abs(np.diff(soft.astype(int), axis=1)).max()


def test_resize_to_width_height_box_or_factor(context: StageContext) -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    assert Resize(width=100).apply(image, context).shape == (50, 100, 3)
    assert Resize(width=400, height=100).apply(image, context).shape == (100, 200, 3)  # fits the box
    assert Resize(scale=1.5).apply(image, context).shape == (150, 300, 3)


def test_fractional_upscale_uses_the_next_model_scale_then_resamples(zoo: Path, context: StageContext) -> None:
    stage = Upscale(model=str(zoo / "ESPCN_x2.pb"), scale=1.5)
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    assert stage.spec(context).scale == 2
    assert stage.apply(image, context).shape == (60, 90, 3)


def test_integer_scale_without_its_model_is_an_error(zoo: Path, context: StageContext) -> None:
    with pytest.raises(ModelError):
        Upscale(model=str(zoo / "ESPCN_x2.pb"), scale=3).spec(context)


def test_fingerprint_is_stable_and_changes_with_settings_and_model_bytes(zoo: Path, tmp_path: Path) -> None:
    model = tmp_path / "ESPCN_x2.pb"
    model.write_bytes((zoo / "ESPCN_x2.pb").read_bytes())
    base = Pipeline((Upscale(model=str(model), scale=2),))
    first = base.fingerprint(StageContext())
    assert first == base.fingerprint(StageContext(EngineSettings(tile=32, threads=2)))  # speed knobs only
    assert first != Pipeline((*base.stages, Sharpen())).fingerprint(StageContext())
    assert first != base.fingerprint(StageContext(EngineSettings(chroma="bilinear")))
    moved = tmp_path / "elsewhere" / "ESPCN_x2.pb"
    moved.parent.mkdir()
    moved.write_bytes(model.read_bytes())
    assert Pipeline((Upscale(model=str(moved), scale=2),)).fingerprint(StageContext()) == first
    model.write_bytes((zoo / "ESPCN_x2.pb").read_bytes() + b"\x00")
    assert base.fingerprint(StageContext()) != first


def test_a_pinned_model_runs_only_the_bytes_it_was_pinned_to(zoo: Path, tmp_path: Path) -> None:
    """`Pipeline.pinned` ties each model to its file's bytes (the fingerprint is unchanged by it). A worker whose
    cache has the pinned weights keeps them whatever the file becomes; one that must load the file refuses other
    bytes; a new pin (a reload after the file was replaced) loads the new bytes instead of the cached weights."""
    model = tmp_path / "own.pb"
    model.write_bytes((zoo / "ESPCN_x2.pb").read_bytes())
    plain = Pipeline((Upscale(model=str(model), scale=2, convention="espcn"),))
    espcn = plain.pinned(StageContext())
    assert espcn.fingerprint(StageContext()) == plain.fingerprint(StageContext())
    image = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    worker = StageContext()
    espcn_out = espcn.run(image, worker)

    model.write_bytes((zoo / "FSRCNN_x2.pb").read_bytes())  # replaced in place, srd not reloaded
    assert np.array_equal(espcn.run(image, worker), espcn_out)  # the weights it was pinned to, from memory
    with pytest.raises(ModelError, match="replaced since srd checked it"):
        espcn.run(image, StageContext())  # a fresh worker must load the file: other bytes, refused

    fsrcnn = plain.pinned(StageContext())  # the reload
    fsrcnn_out = fsrcnn.run(image, worker)
    assert np.array_equal(fsrcnn_out, fsrcnn.run(image, StageContext()))
    assert not np.array_equal(fsrcnn_out, espcn_out)


def test_a_model_shared_by_profiles_is_run_once_per_check_and_verified_each_time(
        zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[object] = []
    monkeypatch.setattr("srd.engine.pipeline.check_model", lambda spec, engine: runs.append(spec))
    model = tmp_path / "own.pb"
    model.write_bytes((zoo / "ESPCN_x2.pb").read_bytes())
    checks = StageContext()
    pinned = Pipeline((Upscale(model=str(model), scale=2, convention="espcn"),)).pinned(checks)
    spec = pinned.models(checks)[0]
    checks.check(spec)
    checks.check(spec)
    assert runs == [spec]
    model.write_bytes((zoo / "FSRCNN_x2.pb").read_bytes())
    with pytest.raises(ModelError, match="replaced since srd checked it"):
        checks.check(spec)


def test_stage_problems_are_reported(context: StageContext) -> None:
    assert LimitSize().problems() == ["needs max_side or max_pixels"]
    assert Denoise(template_window=4).problems() == ["template_window must be a positive odd number"]
    assert "give either scale or width/height, not both" in Resize(scale=2, width=10).problems()
    assert Upscale(scale=9).problems() == ["scale must be between 1 and 8"]
