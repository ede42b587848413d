"""The tiled engine reproduces OpenCV's dnn_superres on real zoo models and keeps channels and depth."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, SHARED

from srd.engine.pipeline import StageContext
from srd.engine.registry import bundled_models_dir, read_manifest, resolve_model
from srd.engine.tiling import plan_tiles
from srd.engine.upscaler import EngineSettings, Upscaler
from srd.errors import ModelChoiceError, ModelError
from srd.quality.bicubic import bicubic_up, make_lr
from srd.quality.metrics import crop_to_multiple, psnr_y

UNTILED_BILINEAR = EngineSettings(tile=0, chroma="bilinear")


def _upsample(path: Path, convention: str, scale: int, image: np.ndarray) -> np.ndarray:
    impl = cv2.dnn_superres.DnnSuperResImpl_create()
    impl.readModel(str(path))
    impl.setModel(convention, scale)
    return impl.upsample(image)


def _luma(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)[:, :, 0].astype(np.int16)


@pytest.mark.parametrize("file", ["FSRCNN_x3.pb", "FSRCNN-small_x2.pb", "ESPCN_x4.pb", "LapSRN_x2.pb"])
def test_untiled_output_matches_dnn_superres_upsample(zoo: Path, photo: np.ndarray, file: str) -> None:
    """Same luma; colour within 3 grey levels (mean < 0.2).

    srd enlarges Cr/Cb in 8 bits where upsample() does it in float then rounds, which moves a few
    chroma values by one level; after YCrCb→BGR that is at most a few levels on some pixels.
    """
    spec = resolve_model(str(zoo / file), None)
    image = photo[:160, :200]
    ours = Upscaler(spec, UNTILED_BILINEAR).upscale(image)
    theirs = _upsample(spec.path, spec.convention, spec.scale, image)
    assert ours.shape == theirs.shape
    assert np.abs(_luma(ours) - _luma(theirs)).max() <= 1
    diff = np.abs(ours.astype(np.int16) - theirs)
    assert diff.max() <= 3
    assert diff.mean() < 0.2


def test_bicubic_chroma_keeps_luma_identical_to_upsample(zoo: Path, photo: np.ndarray) -> None:
    spec = resolve_model(str(zoo / "ESPCN_x2.pb"), None)
    ours = Upscaler(spec, EngineSettings(tile=0, chroma="bicubic")).upscale(photo)
    theirs = _upsample(spec.path, spec.convention, spec.scale, photo)
    assert np.abs(_luma(ours) - _luma(theirs)).max() <= 1


@pytest.mark.e2e
def test_tiled_output_equals_untiled_on_a_large_real_photo(zoo: Path) -> None:
    path = SHARED / "datasets" / "train" / "SunHays80" / "abbey_sun_asztnlqhlrvirneh.jpg"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image.shape[0] >= 800 and image.shape[1] >= 1000
    for file in ("FSRCNN_x2.pb", "ESPCN_x2.pb"):
        spec = resolve_model(str(zoo / file), None)
        whole = Upscaler(spec, EngineSettings(tile=0)).upscale(image)
        tiled = Upscaler(spec, EngineSettings(tile=96, tile_pad=16)).upscale(image)
        assert np.abs(whole.astype(np.int16) - tiled).max() <= 1, file


def test_tiles_cover_every_pixel_exactly_once() -> None:
    coverage = np.zeros((101, 257), np.int32)
    for tile in plan_tiles(101, 257, tile=32, pad=7):
        coverage[tile.core] += 1
        rows, cols = tile.outer
        assert rows.start >= 0 and cols.start >= 0 and rows.stop <= 101 and cols.stop <= 257
    assert (coverage == 1).all()


def test_sixteen_bit_stays_sixteen_bit_and_agrees_with_eight_bit(zoo: Path, photo: np.ndarray) -> None:
    spec = resolve_model(str(zoo / "ESPCN_x2.pb"), None)
    upscaler = Upscaler(spec, EngineSettings(tile=64))
    deep = photo.astype(np.uint16) * 257
    out16 = upscaler.upscale(deep)
    out8 = upscaler.upscale(photo)
    assert out16.dtype == np.uint16 and out16.shape == out8.shape
    # The 8-bit path rounds YCrCb to 8 bits on the way in and out; 16-bit keeps that precision.
    assert np.abs(out16.astype(np.float64) / 257 - out8).mean() < 1.0
    assert len(np.unique(out16 % 257)) > 1  # real 16-bit values, not 8-bit ones scaled up


def test_grey_stays_single_channel_and_alpha_is_kept(zoo: Path, photo: np.ndarray) -> None:
    spec = resolve_model(str(zoo / "FSRCNN_x2.pb"), None)
    upscaler = Upscaler(spec, EngineSettings(tile=64))
    grey = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    assert upscaler.upscale(grey).shape == (grey.shape[0] * 2, grey.shape[1] * 2)

    alpha = np.zeros(photo.shape[:2], np.uint8)
    alpha[:, photo.shape[1] // 2 :] = 255  # left half transparent
    out = upscaler.upscale(np.dstack([photo, alpha]))
    assert out.shape == (photo.shape[0] * 2, photo.shape[1] * 2, 4)
    half = out.shape[1] // 2
    assert out[:, : half - 4, 3].max() == 0 and out[:, half + 4 :, 3].min() == 255


def test_model_scale_and_convention_come_from_zoo_file_names(zoo: Path, tmp_path: Path) -> None:
    spec = resolve_model(str(zoo / "LapSRN_x8.pb"), None)
    assert (spec.convention, spec.scale, spec.format) == ("lapsrn", 8, "tensorflow")
    with pytest.raises(ModelError, match="x8 model, but scale 2"):
        resolve_model(str(zoo / "LapSRN_x8.pb"), 2)
    odd = tmp_path / "mine.pb"
    odd.write_bytes((zoo / "ESPCN_x3.pb").read_bytes())
    with pytest.raises(ModelError, match="cannot infer the scale"):
        resolve_model(str(odd), None)
    assert resolve_model(str(odd), 3, convention="espcn").convention == "espcn"


def test_a_file_srd_exported_is_described_by_the_manifest_beside_it(tmp_path: Path) -> None:
    """Its name need not tell scale or convention: `srd train export --models-dir D` wrote both beside it."""
    bundled = next(spec for spec in read_manifest(bundled_models_dir()) if spec.path.name == "edsr-lite_x3.onnx")
    (tmp_path / "trial.onnx").write_bytes(bundled.path.read_bytes())
    entry = {**bundled.info, "name": "trial", "file": "trial.onnx"}
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "models": [entry]}))
    spec = resolve_model(str(tmp_path / "trial.onnx"), None)
    assert (spec.name, spec.scale, spec.convention) == ("trial", 3, "edsr")
    assert spec.expected_sha256 == bundled.expected_sha256
    assert resolve_model(str(tmp_path / "trial.onnx"), 3, convention="fsrcnn").convention == "fsrcnn"
    with pytest.raises(ModelChoiceError, match=r"trial\.onnx is a x3 model, but scale 2 was asked for"):
        resolve_model(str(tmp_path / "trial.onnx"), 2)
    (tmp_path / "other.onnx").write_bytes(bundled.path.read_bytes())  # beside it, but not in the manifest
    with pytest.raises(ModelChoiceError, match="cannot infer the scale"):
        resolve_model(str(tmp_path / "other.onnx"), None)
    # An entry naming a file elsewhere by the same name describes that file, not this one.
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.onnx").write_bytes(bundled.path.read_bytes())
    (tmp_path / "sub" / "manifest.json").write_text(json.dumps({"version": 1, "models": [
        {**entry, "file": "../other.onnx"}]}))
    with pytest.raises(ModelChoiceError, match="cannot infer the scale"):
        resolve_model(str(tmp_path / "sub" / "other.onnx"), None)
    # A file that is not what its manifest says is refused when loaded, as any manifest model is.
    (tmp_path / "trial.onnx").write_bytes(b"x" + bundled.path.read_bytes())
    context = StageContext()
    with pytest.raises(ModelError, match="sha256"):
        context.upscaler(context.resolve(str(tmp_path / "trial.onnx"), None, None))


def test_unknown_model_name_says_what_exists_and_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="srd models fetch edsr --scale 4"):
        resolve_model("edsr", 4, extra_dirs=[tmp_path])


def test_a_file_that_is_not_a_model_gives_a_model_error(tmp_path: Path) -> None:
    bogus = tmp_path / "FSRCNN_x2.pb"
    bogus.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelError, match="cannot load"):
        Upscaler(resolve_model(str(bogus), None))


def test_a_model_path_that_is_no_regular_file_says_so_not_that_it_is_missing(tmp_path: Path) -> None:
    (tmp_path / "FSRCNN_x2.pb").mkdir()
    os.mkfifo(tmp_path / "ESPCN_x2.pb")
    for name in ("FSRCNN_x2.pb", "ESPCN_x2.pb"):
        with pytest.raises(ModelError, match=f"^{re.escape(str(tmp_path / name))}: not a regular file$"):
            resolve_model(str(tmp_path / name), None)
    with pytest.raises(ModelError, match=r"^model file not found: "):
        resolve_model(str(tmp_path / "LapSRN_x2.pb"), None)


@pytest.mark.e2e
def test_bundled_model_tiles_seamlessly_and_keeps_grey(photo: np.ndarray) -> None:
    """srd's own ONNX model (the 'edsr' convention): default tiling equals whole-image inference."""
    spec = resolve_model("edsr-lite", 2)
    assert (spec.format, spec.convention, spec.origin) == ("onnx", "edsr", "bundled")
    image = photo[:200, :230]
    whole = Upscaler(spec, EngineSettings(tile=0)).upscale(image)
    tiled = Upscaler(spec, EngineSettings(tile=64, tile_pad=16)).upscale(image)
    assert np.abs(whole.astype(np.int16) - tiled).max() <= 1
    grey = Upscaler(spec).upscale(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    assert grey.shape == (image.shape[0] * 2, image.shape[1] * 2)


BUNDLED = [(m["name"], m["scale"]) for m in json.loads((REPO / "models" / "manifest.json").read_text())["models"]]


@pytest.mark.parametrize(("name", "scale"), BUNDLED, ids=[f"{n}-x{s}" for n, s in BUNDLED])
def test_every_bundled_model_loads_by_name_and_beats_bicubic(name: str, scale: int, bench: Path) -> None:
    """Each model the manifest lists resolves by name and scale, enlarges by its scale, and beats bicubic
    on Set5 'butterfly' by more than 2 dB (the zoo models manage about 1 at ×2, barely 0 at ×4)."""
    hr = crop_to_multiple(cv2.imread(str(bench / "Set5" / "butterfly.png"), cv2.IMREAD_COLOR), scale)
    lr = make_lr(hr, scale)
    sr = Upscaler(resolve_model(name, scale)).upscale(lr)
    assert sr.shape == hr.shape
    assert psnr_y(sr, hr, scale) > psnr_y(bicubic_up(lr, scale), hr, scale) + 2


def test_bundled_model_gives_the_same_result_after_a_zoo_model_was_loaded(
    zoo: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    """Loading a zoo .pb swaps in dnn_superres's DepthToSpace process-wide; srd's models must not care."""
    image = photo[:64, :96]
    np.save(tmp_path / "in.npy", image)
    script = (
        "import sys, numpy as np\n"
        "from srd.engine.registry import resolve_model\nfrom srd.engine.upscaler import Upscaler\n"
        "np.save(sys.argv[2], Upscaler(resolve_model('edsr-lite', 2)).upscale(np.load(sys.argv[1])))\n"
    )
    subprocess.run([sys.executable, "-c", script, tmp_path / "in.npy", tmp_path / "out.npy"], check=True)
    clean_process = np.load(tmp_path / "out.npy")
    Upscaler(resolve_model(str(zoo / "ESPCN_x2.pb"), None)).upscale(image)
    after_zoo = Upscaler(resolve_model("edsr-lite", 2)).upscale(image)
    assert np.abs(after_zoo.astype(np.int16) - clean_process).max() <= 1
