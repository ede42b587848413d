"""The collapsible-block (sesr) family: the collapse is exact, the export runs in cv2.dnn like torch, and the
family travels through training, resume, export and the manifest's recorded command."""

from __future__ import annotations

import copy
import dataclasses
import shlex
from pathlib import Path

import pytest
from conftest import require_train_extra

require_train_extra()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from test_train import SHARED, tiny_config  # noqa: E402

from srd.train import checkpoint  # noqa: E402
from srd.train.collapsible import SESR, LinearBlock  # noqa: E402
from srd.train.command import main as train_main  # noqa: E402
from srd.train.export import export_run, training_command, with_conv_weights_as_fp16  # noqa: E402
from srd.train.loop import TrainConfig, train  # noqa: E402
from srd.train.model import DIV2K_MEAN_BGR, Arch, build_model, load_body  # noqa: E402
from srd.train.onnx_io import export_onnx, read_state_dict, store_weights_fp16  # noqa: E402

TINY_SESR = Arch(scale=2, blocks=2, channels=8, family="sesr", expand=16)


def _randomise(model: torch.nn.Module) -> None:
    """Weights far from their initial values, PReLU slopes included, so no term can hide behind a zero."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


@pytest.mark.parametrize(("kernel", "identity"), [(3, True), (5, False)])
def test_a_linear_block_runs_as_the_one_convolution_its_two_collapse_into(kernel: int, identity: bool) -> None:
    block = LinearBlock(6, 6, kernel, expand=20, identity=identity)
    _randomise(block)
    x = torch.randn(2, 6, 11, 13)
    wide = block.squeeze(block.expand(x)) + (x if identity else 0)
    with torch.no_grad():
        assert torch.allclose(block(x), wide, atol=1e-4)
        assert torch.allclose(block.to_conv()(x), wide, atol=1e-4)


def test_the_inference_network_is_plain_convolutions_computing_what_the_training_network_does() -> None:
    model = SESR(Arch(scale=3, blocks=3, channels=8, family="sesr", expand=24)).eval()
    _randomise(model)
    plain = model.inference()
    assert not any(isinstance(m, LinearBlock) for m in plain.modules())
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 3, 9, 14)
    with torch.no_grad():
        assert plain(x).shape == (1, 3, 27, 42)
        assert torch.allclose(plain(x), model(x), atol=1e-3)
    assert any(isinstance(m, LinearBlock) for m in model.modules())  # the copy, not the model, was collapsed


@pytest.mark.parametrize("classic", [True, False], ids=["classic", "new"])
def test_an_untrained_export_loads_in_both_cv2_engines(classic: bool, tmp_path: Path) -> None:
    """An untrained network's PReLU slopes are all equal, which torch's exporter shares through Identity nodes;
    the new engine refused that graph."""
    path = tmp_path / "untrained.onnx"
    export_onnx(build_model(TINY_SESR).inference(), path)
    net = cv2.dnn.readNetFromONNX(str(path), cv2.dnn.ENGINE_CLASSIC if classic else cv2.dnn.ENGINE_NEW)
    net.setInput(np.zeros((1, 3, 10, 12), np.float32))
    assert net.forward().shape == (1, 3, 20, 24)


@pytest.mark.e2e
def test_a_sesr_run_trains_resumes_and_exports_a_file_cv2_runs_as_torch_does(tmp_path: Path, train_dir: Path) -> None:
    cfg = tiny_config(tmp_path, train_dir, 4, arch=TINY_SESR)
    train(dataclasses.replace(cfg, iters=4), stop_at=2)
    train(cfg)
    ckpt = checkpoint.load(cfg.run_dir / "last.pt")
    assert ckpt["iteration"] == 4 and Arch(**ckpt["arch"]) == TINY_SESR
    assert "--family sesr --expand 16" in training_command(ckpt)

    entry = export_run(cfg.run_dir / "last.pt", "tiny-sesr", tmp_path / "models", SHARED / "bench")
    assert entry["architecture"] == {"blocks": 2, "channels": 8, "tail": "espcn", "res_scale": 1.0,
                                     "family": "sesr", "expand": 16}
    assert entry["parameters"] == sum(p.numel() for p in build_model(TINY_SESR).inference().parameters())

    model = build_model(TINY_SESR)
    model.load_state_dict(ckpt["model"])
    model.eval()
    blob = np.random.default_rng(1).uniform(0, 255, (1, 3, 23, 31)).astype(np.float32)
    blob -= np.asarray(DIV2K_MEAN_BGR, np.float32)[None, :, None, None]
    with torch.no_grad():
        reference = model(torch.from_numpy(blob)).numpy()
    path = tmp_path / "models" / "tiny-sesr_x2.onnx"
    outputs = [onnxruntime.InferenceSession(str(path)).run(None, {"input": blob})[0]]  # the daemon's other runtime
    for engine in (cv2.dnn.ENGINE_CLASSIC, cv2.dnn.ENGINE_NEW):
        net = cv2.dnn.readNetFromONNX(str(path), engine)
        net.setInput(blob)
        outputs.append(net.forward())
    for output in outputs:  # float16 weights (entry["weights"]) round the collapsed kernels: hundredths at most
        assert np.abs(output - reference).max() < 0.05


def test_a_float16_file_is_checked_against_what_it_rounds(tmp_path: Path) -> None:
    """store_weights_fp16 rounds convolution weights only (PReLU slopes stay float32, for cv2's new engine): the
    reference export compares the file with must round exactly those, or trained slopes far from 0.25 fail it."""
    model = build_model(TINY_SESR).eval()
    _randomise(model)
    with torch.no_grad():
        for act in model.acts:
            act.weight.copy_(torch.linspace(-0.7, 0.9, act.weight.numel()) + 1e-3 / 3)  # not float16-exact
    full, half = tmp_path / "full.onnx", tmp_path / "half.onnx"
    export_onnx(model.inference(), full)
    store_weights_fp16(full, half)
    blob = np.random.default_rng(2).uniform(-120, 140, (1, 3, 21, 26)).astype(np.float32)
    net = cv2.dnn.readNetFromONNX(str(half), cv2.dnn.ENGINE_NEW)
    net.setInput(blob)
    out = net.forward()
    with torch.no_grad():
        reference = with_conv_weights_as_fp16(model)(torch.from_numpy(blob)).numpy()
        all_rounded = copy.deepcopy(model.inference()).half().float()(torch.from_numpy(blob)).numpy()
    assert np.abs(out - reference).max() < 2e-3
    assert np.abs(all_rounded - reference).max() > 2e-3  # the slopes' rounding shows: the check can tell


def test_the_recorded_command_builds_the_same_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What export records as the run's command, run again, asks for the same architecture."""
    asked: list[Arch] = []
    monkeypatch.setattr("srd.train.loop.train", lambda cfg, stop_at=None: asked.append(cfg.arch) or True)
    ckpt = {"arch": TINY_SESR.to_dict(), "iteration": 4, "config": {
        "name": "n", "iters": 4, "batch": 4, "patch": 24, "lr": 1e-3, "lr_min": 1e-3, "seed": 0, "bf16": True,
        "runs_dir": str(tmp_path)}}
    argv = shlex.split(training_command(ckpt))[3:]  # past "python -m srd.train"
    assert train_main(argv) == 0 and asked == [TINY_SESR]


def test_another_scale_starts_from_the_x2_body_and_a_foreign_file_is_refused(
        tmp_path: Path, train_dir: Path) -> None:
    x2, x4 = build_model(TINY_SESR), build_model(dataclasses.replace(TINY_SESR, scale=4))
    copied = load_body(x4, x2.state_dict())
    assert copied and all(not name.startswith("tail.") for name in copied)
    assert len(copied) == len([k for k in x2.state_dict() if not k.startswith("tail.")])

    edsr = tiny_config(tmp_path / "e", train_dir, 1)
    train(edsr)
    sesr = tiny_config(tmp_path / "s", train_dir, 1, arch=TINY_SESR, init=str(edsr.run_dir / "last.pt"))
    with pytest.raises(ValueError, match="cannot start"):
        train(sesr)
    # The other way, from an export: an edsr network whose final body conv happens to match a sesr layer's name
    # and shape took those few tensors (outside attack: "initialised 3 tensors"); a body is all or nothing.
    export = tmp_path / "sesr.onnx"
    export_onnx(build_model(dataclasses.replace(TINY_SESR, blocks=3)).inference(), export)
    with pytest.raises(ValueError, match="body tensors"):
        load_body(build_model(Arch(scale=4, blocks=2, channels=8)), read_state_dict(export))


@pytest.mark.parametrize("bad", [
    {"family": "sesr", "expand": 0}, {"family": "sesr", "expand": 16, "tail": "shuffle"}, {"expand": 16},
    {"family": "resnet"},
])
def test_inconsistent_architectures_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Arch(scale=2, blocks=2, channels=8, **bad)  # type: ignore[arg-type]


def test_the_fit_command_knows_the_sesr_presets_defaults_an_expansion_and_refuses_an_edsr_one(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[TrainConfig] = []
    monkeypatch.setattr("srd.train.loop.train", lambda cfg, stop_at=None: asked.append(cfg) or True)
    assert train_main(["fit", "--scale", "2", "--iters", "1", "--family", "sesr"]) == 0
    assert asked[0].arch.family == "sesr" and asked[0].arch.expand == 256
    assert train_main(["fit", "--scale", "3", "--iters", "1", "--preset", "fast"]) == 0
    assert asked[1].arch == Arch(3, 11, 32, family="sesr", expand=256) and asked[1].name == "sesr-fast-x3"
    assert train_main(["fit", "--scale", "2", "--iters", "1", "--expand", "64"]) == 2
    assert "expand is for sesr networks only" in capsys.readouterr().err


def test_identity_needs_matching_channels() -> None:
    with pytest.raises(ValueError):
        LinearBlock(3, 8, 3, 16, identity=True)
