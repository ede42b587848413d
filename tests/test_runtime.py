"""Inference runtimes: selection (`runtime`, `device`), their fallbacks and errors, and agreement between them on
srd's real models (no mocks of inference)."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from srd.config import load_config
from srd.config.parse import parse_config
from srd.engine import runtime_choice
from srd.engine.onnx_runtime import OnnxRuntime
from srd.engine.pipeline import Pipeline, StageContext, Upscale
from srd.engine.registry import resolve_model
from srd.engine.runtime_choice import choose_runtime, open_runtime, visible_gpus
from srd.engine.upscaler import EngineSettings, Upscaler
from srd.errors import ConfigError, ModelError

SRD_MODELS = [(name, scale) for name in ("edsr-lite", "edsr-base") for scale in (2, 3, 4)]


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU warning is once per process: each test starts as a fresh worker would."""
    monkeypatch.setattr(runtime_choice, "_warned", set())


@pytest.fixture
def without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import onnxruntime` fails, as where the extra is not installed."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A driver folder listing two GPUs (the host has none): what `visible_gpus` reads."""
    folder = tmp_path / "gpus"
    for address in ("0000:01:00.0", "0000:02:00.0"):
        (folder / address).mkdir(parents=True)
    monkeypatch.setattr(runtime_choice, "_NVIDIA_GPUS", folder)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return folder


def _config(tmp_path: Path, engine: dict[str, object], **top: object) -> object:
    return parse_config({"engine": engine, **top}, base=tmp_path, source="test.yaml", check_folders=False)


# --- selection ---------------------------------------------------------------------------------------------


def test_auto_picks_onnxruntime_for_srd_models_and_opencv_for_zoo_graphs(zoo: Path) -> None:
    """By the measured table: onnxruntime is faster on srd's ONNX models; it can't read the zoo's .pb at all."""
    assert choose_runtime(resolve_model("edsr-lite", 2), "auto") == "onnxruntime"
    assert choose_runtime(resolve_model(str(zoo / "ESPCN_x2.pb"), 2), "auto") == "opencv"
    assert open_runtime(resolve_model(str(zoo / "ESPCN_x2.pb"), 2), "onnxruntime").name == "opencv"
    table = runtime_choice.MEASURED_US_PER_LR_PIXEL["onnx"]
    assert min(table, key=lambda name: table[name]) == "onnxruntime"


def test_auto_falls_back_to_opencv_where_onnxruntime_is_not_installed(without_onnxruntime: None) -> None:
    upscaler = Upscaler(resolve_model("edsr-lite", 2), EngineSettings(runtime="auto", device="auto"))
    assert upscaler.runtime.name == "opencv"
    assert upscaler.upscale(np.full((20, 24, 3), 128, np.uint8)).shape == (40, 48, 3)


def test_naming_onnxruntime_without_it_installed_is_an_error_naming_the_extra(
    without_onnxruntime: None, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as config_error:
        _config(tmp_path, {"runtime": "onnxruntime"})
    assert "at 'engine.runtime'" in str(config_error.value) and "srd[onnxruntime]" in str(config_error.value)
    with pytest.raises(ModelError, match=r"srd\[onnxruntime\]"):
        open_runtime(resolve_model("edsr-lite", 2), "onnxruntime", "cpu")


def test_config_rejects_unknown_runtimes_and_devices_with_their_location(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        _config(tmp_path, {"runtime": "tensorrt", "device": "gpu0"})
    text = str(error.value)
    assert "at 'engine.runtime': must be one of auto, opencv, onnxruntime" in text
    assert "at 'engine.device': must be auto, cpu, cuda or cuda:N" in text


def test_config_file_sets_runtime_and_device(tmp_path: Path) -> None:
    (tmp_path / "srd.yaml").write_text("engine:\n  runtime: opencv\n  device: cpu\n")
    config = load_config(tmp_path / "srd.yaml")
    assert (config.engine.runtime, config.engine.device) == ("opencv", "cpu")
    assert config.worker_engine().runtime == "opencv"


def test_cuda_without_its_provider_warns_once_and_runs_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's CPU wheel has no CUDAExecutionProvider: one warning line per process, then the CPU."""
    spec = resolve_model("edsr-lite", 2)
    with capture_logs() as logs:
        first = Upscaler(spec, EngineSettings(runtime="onnxruntime", device="cuda:0"))
        second = Upscaler(spec, EngineSettings(runtime="onnxruntime", device="cuda:0"))
    assert (first.runtime.name, first.runtime.device, second.runtime.device) == ("onnxruntime", "cpu", "cpu")
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["event"] == "gpu_unavailable_using_cpu" and "srd[gpu]" in warnings[0]["reason"]


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_cuda_provider_listed_but_unusable_warns_and_runs_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, fake_gpus: Path
) -> None:
    """A GPU build whose CUDA can't start (driver, libraries): onnxruntime itself would quietly use the CPU;
    srd says so."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider",
                                                                          "CPUExecutionProvider"])
    with capture_logs() as logs:
        runtime = open_runtime(resolve_model("edsr-lite", 2), "auto", "cuda:1")
    assert (runtime.name, runtime.device) == ("onnxruntime", "cpu")
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1 and "could not use cuda:1" in warnings[0]["reason"]


def test_cuda_with_the_opencv_runtime_warns_and_runs_on_the_cpu() -> None:
    with capture_logs() as logs:
        runtime = open_runtime(resolve_model("edsr-lite", 2), "opencv", "cuda")
    assert runtime.name == "opencv"
    assert [entry["reason"] for entry in logs] == ["runtime opencv runs on the CPU only (edsr-lite_x2.onnx)"]


def test_device_auto_without_gpus_is_the_cpu_in_silence() -> None:
    with capture_logs() as logs:
        runtime = open_runtime(resolve_model("edsr-lite", 2), "auto", "auto")
    assert runtime.device == "cpu" and logs == []


def test_visible_gpus_honours_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, fake_gpus: Path) -> None:
    assert visible_gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert visible_gpus() == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,-1,1")  # CUDA stops at the first invalid entry
    assert visible_gpus() == 1


def test_a_worker_per_gpu_by_default_with_device_cuda(fake_gpus: Path, tmp_path: Path) -> None:
    assert _config(tmp_path, {"device": "cuda"}).workers == 2
    assert _config(tmp_path, {"device": "cuda:1"}).workers == 1
    assert _config(tmp_path, {"device": "cuda"}, workers=3).workers == 3
    assert _config(tmp_path, {"device": "cpu"}, threads_per_worker=1).workers == _config(tmp_path, {}).workers


def test_runtime_and_device_leave_the_fingerprint_alone(tmp_path: Path) -> None:
    """They change speed and float noise (≤ 1 grey level), not the picture: no reprocessing for installing
    onnxruntime or a GPU."""
    pipeline = Pipeline((Upscale("edsr-lite", 2),))
    prints = {pipeline.fingerprint(StageContext(EngineSettings(runtime=runtime, device=device)))
              for runtime in ("auto", "opencv", "onnxruntime") for device in ("auto", "cpu", "cuda:0")}
    assert len(prints) == 1


# --- sessions -------------------------------------------------------------------------------------------------


def test_onnxruntime_sessions_share_a_model_per_thread_count_and_run_in_parallel(photo: np.ndarray) -> None:
    runtime = OnnxRuntime(resolve_model("edsr-lite", 2))
    one, other, two = runtime.open_session(1), runtime.open_session(1), runtime.open_session(2)
    assert one._session is other._session and two._session is not one._session
    assert two._session.get_session_options().intra_op_num_threads == 2
    blob = np.ascontiguousarray(photo[:64, :64].transpose(2, 0, 1)[None], dtype=np.float32) - 110
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda session: session.run(blob), [one, other, two, one]))
    assert all(np.array_equal(out, outputs[0]) for out in outputs[1:])


# --- agreement ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "scale"), SRD_MODELS, ids=[f"{n}-x{s}" for n, s in SRD_MODELS])
def test_runtimes_agree_within_one_grey_level_on_a_tiled_photo(photo: np.ndarray, name: str, scale: int) -> None:
    """The same model through OpenCV (both engines) and onnxruntime, tiled, on a real photo."""
    spec = resolve_model(name, scale)
    crop = photo[:120, :136]  # tiles of 48: a ragged last row and column
    outputs = {
        label: Upscaler(spec, EngineSettings(tile=48, tile_pad=16, threads=1, device="cpu", **settings)).upscale(crop)
        for label, settings in {"opencv-classic": {"runtime": "opencv"},
                                "opencv-new": {"runtime": "opencv", "onnx_engine": "new"},
                                "onnxruntime": {"runtime": "onnxruntime"}}.items()
    }
    reference = outputs["opencv-classic"].astype(np.int16)
    for label, out in outputs.items():
        difference = np.abs(out.astype(np.int16) - reference)
        assert difference.max() <= 1, f"{label}: max abs difference {difference.max()}"
        assert (difference > 0).mean() < 0.01, f"{label}: {(difference > 0).mean():.2%} of values differ"


def test_command_line_device_and_runtime_are_checked_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], without_onnxruntime: None
) -> None:
    from srd.cli.main import main

    for option, value, reason in (("--device", "gpu", "must be auto, cpu, cuda or cuda:N"),
                                  ("--runtime", "onnxruntime", "srd[onnxruntime]")):
        with pytest.raises(SystemExit) as exited:
            main(["process", str(tmp_path / "none.png"), "--out", str(tmp_path / "out"), option, value])
        assert exited.value.code == 2
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("runtime", "model", "reason"), [
    ("auto", "edsr-lite", "onnxruntime's CUDAExecutionProvider is not installed (pip install 'srd[gpu]')"),
    ("opencv", "edsr-lite", "runtime opencv runs on the CPU only (edsr-lite_x2.onnx)"),
    ("auto", "zoo", "ESPCN_x2.pb is a tensorflow model, which only OpenCV runs, on the CPU"),
])
def test_process_says_in_one_line_without_verbose_that_the_cpu_runs_what_a_gpu_was_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], zoo: Path, runtime: str, model: str, reason: str
) -> None:
    import cv2

    from srd.cli.main import main

    cv2.imwrite(str(tmp_path / "a.png"), np.full((24, 32, 3), 90, np.uint8))
    with pytest.raises(SystemExit) as exited:
        main(["process", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--device", "cuda",
              "--runtime", runtime, "--model", str(zoo / "ESPCN_x2.pb") if model == "zoo" else model, "--scale", "2",
              "-q"])
    assert exited.value.code == 0 and (tmp_path / "out" / "a.png").is_file()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"srd: device cuda: {reason}; running on the CPU"
    assert len(lines) == 2 and lines[1].startswith("srd: 1 processed, 0 failed")
