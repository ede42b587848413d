"""Training, resuming and ONNX export produce models the daemon can load through cv2.dnn."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import multiprocessing
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TRAIN_IMAGES, require_train_extra

require_train_extra()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from srd.quality.bicubic import imresize, make_lr  # noqa: E402
from srd.quality.degrade import BenchDegradation, PhotoMix  # noqa: E402
from srd.quality.metrics import crop_to_multiple  # noqa: E402
from srd.train import checkpoint  # noqa: E402
from srd.train import export as srd_export  # noqa: E402
from srd.train.command import main as train_main  # noqa: E402
from srd.train.data import Pair, PatchSampler, load_pairs  # noqa: E402
from srd.train.export import export_run, provenance, training_command, update_manifest  # noqa: E402
from srd.train.loop import TrainConfig, bf16_is_fast, describe_hardware, resolve_device, train  # noqa: E402
from srd.train.model import DIV2K_MEAN_BGR, EDSR, Arch, load_body  # noqa: E402
from srd.train.onnx_io import export_onnx, read_state_dict, store_weights_fp16  # noqa: E402

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"

def tiny_config(tmp_path: Path, train_dir: Path, iters: int, **kw: object) -> TrainConfig:
    config = TrainConfig(
        name="tiny", arch=Arch(scale=2, blocks=2, channels=8), iters=iters, batch=4, patch=24,
        lr=1e-3, lr_min=1e-3, eval_every=3, train_dir=str(train_dir), bench_dir=str(SHARED / "bench"),
        cache_dir=str(tmp_path / "cache"), runs_dir=str(tmp_path / "runs"),
    )
    return dataclasses.replace(config, **kw)  # type: ignore[arg-type]


@pytest.mark.e2e
@pytest.mark.parametrize("degrade", [None, "photo"])
def test_resume_continues_exactly(tmp_path: Path, train_dir: Path, degrade: str | None) -> None:
    """Stopping after 3 iterations and resuming to 6 gives the same weights as 6 iterations straight, also when
    every LR patch is a random degradation of its HR patch (the draws come from the checkpointed generator).
    A photo run is scored on JPEG q75 and clean inputs both, and records its mix."""
    mix = "clean_probability=0.25,jpeg_quality=60-95" if degrade else ""
    straight = tiny_config(tmp_path / "a", train_dir, 6, degrade=degrade, mix=mix)
    assert train(straight)
    resumed = tiny_config(tmp_path / "b", train_dir, 3, degrade=degrade, mix=mix)
    assert train(resumed)
    assert train(dataclasses.replace(resumed, iters=6))
    a = checkpoint.load(straight.run_dir / "last.pt")
    b = checkpoint.load(resumed.run_dir / "last.pt")
    assert a["iteration"] == b["iteration"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [it for it, _ in b["history"]] == [3, 6]
    evals = re.findall(r"Set5 x2 PSNR-Y [\d.]+ dB, Set14 [\d.]+ dB \(torch fp32(.*)\)",
                       (resumed.run_dir / "train.log").read_text())
    assert evals == ["", ""] if degrade is None else [", JPEG q75 4:2:0 inputs"] * 2
    log = (resumed.run_dir / "train.log").read_text()
    jpeg = [float(v) for v in re.findall(r"Set5 x2 PSNR-Y ([\d.]+) dB, Set14", log)]
    clean = [float(v) for v in re.findall(r"Set5 x2 PSNR-Y ([\d.]+) dB on clean inputs", log)]
    if degrade is None:
        assert clean == [] and [psnr for _, psnr in b["history"]] == pytest.approx(jpeg, abs=1e-3)
    else:
        assert len(clean) == 2 and all(c > j for c, j in zip(clean, jpeg, strict=True))
        means = [(c + j) / 2 for c, j in zip(clean, jpeg, strict=True)]
        assert [psnr for _, psnr in b["history"]] == pytest.approx(means, abs=2e-3)  # best.pt's criterion
    made = provenance(b)
    assert made["degradation"] == ("MATLAB bicubic" if degrade is None else PhotoMix.parse(mix).describe())
    recorded = "--degrade photo --mix clean_probability=0.25,jpeg_quality=60-95" in made["command"]
    assert recorded is (degrade == "photo")


@pytest.mark.e2e
def test_stop_at_pauses_inside_the_schedule_and_keeps_a_snapshot(tmp_path: Path, train_dir: Path) -> None:
    """Pausing at 3 of 6 iterations keeps the cosine of all 6 (resuming ends where a straight run does),
    leaves it3.pt for other runs to start from, and the command recorded for it3.pt says --stop-at 3;
    rerunning the paused command touches nothing."""
    straight = dataclasses.replace(tiny_config(tmp_path / "a", train_dir, 6), lr_min=1e-5)
    assert train(straight)
    paused = dataclasses.replace(tiny_config(tmp_path / "b", train_dir, 6), lr_min=1e-5)
    assert train(paused, stop_at=3)
    snapshot = checkpoint.load(paused.run_dir / "it3.pt")
    assert snapshot["iteration"] == checkpoint.load(paused.run_dir / "last.pt")["iteration"] == 3
    assert "paused tiny at iteration 3 of 6" in (paused.run_dir / "train.log").read_text()
    assert " --iters 6 " in training_command(snapshot) and training_command(snapshot).endswith("--stop-at 3")
    # Rerunning the paused command (a queue pass) returns at once: no data read (there is none), nothing rewritten.
    kept = sorted(p for p in paused.run_dir.iterdir() if p.name != "train.log")
    stamps = [path.stat().st_mtime_ns for path in kept]
    assert train(dataclasses.replace(paused, train_dir=str(tmp_path / "absent")), stop_at=3)
    assert [path.stat().st_mtime_ns for path in kept] == stamps
    assert "tiny is already at iteration 3 of 6" in (paused.run_dir / "train.log").read_text()
    assert train(paused)
    # Past 3 now: a pause at 3 is still passed (its snapshot is there), one at 4 was never made and is refused.
    assert train(paused, stop_at=3)
    with pytest.raises(ValueError, match=r"at iteration 6, past --stop-at 4: the snapshot it4\.pt asked for"):
        train(paused, stop_at=4)
    a = checkpoint.load(straight.run_dir / "last.pt")["model"]
    b = checkpoint.load(paused.run_dir / "last.pt")["model"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    assert "--stop-at" not in training_command(checkpoint.load(paused.run_dir / "last.pt"))


def test_downscales_add_a_cached_shrunk_copy_of_every_image(tmp_path: Path, train_dir: Path) -> None:
    """Scale augmentation: each factor adds, per image, a pair whose HR is the image shrunk by MATLAB bicubic
    and whose LR is that HR's own protocol LR; a second load reads both from the cache; the recorded training
    command carries the factors."""
    cache = tmp_path / "cache"
    pairs = load_pairs(train_dir, 2, cache, downscales=(0.5,))
    assert [p.name for p in pairs] == [n for rel in sorted(TRAIN_IMAGES)
                                       for n in (str(Path(rel).with_suffix(".png")),
                                                 f"{Path(rel).with_suffix('.png')}@0.5")]
    original = cv2.imread(str(train_dir / "T91/t1.png"), cv2.IMREAD_COLOR)
    shrunk = next(p for p in pairs if p.name == "T91/t1.png@0.5")
    expected = crop_to_multiple(np.clip(np.round(imresize(original, 0.5)), 0, 255).astype(np.uint8), 2)
    assert np.array_equal(shrunk.hr, expected) and np.array_equal(shrunk.lr, make_lr(expected, 2))
    cached = [cache / "down0.5" / "T91/t1.png", cache / "down0.5" / "x2" / "T91/t1.png"]
    stamps = [path.stat().st_mtime_ns for path in cached]
    again = load_pairs(train_dir, 2, cache, downscales=(0.5,))
    assert all(np.array_equal(a.lr, b.lr) and np.array_equal(a.hr, b.hr) for a, b in zip(pairs, again, strict=True))
    assert [path.stat().st_mtime_ns for path in cached] == stamps
    cfg = dataclasses.replace(tiny_config(tmp_path, train_dir, 2), downscales=(0.8, 0.6))
    command = training_command({"config": cfg.to_dict(), "arch": cfg.arch.to_dict(), "iteration": 2})
    assert command.endswith("--downscales 0.8,0.6")


@pytest.mark.e2e
def test_cache_made_by_worker_processes_equals_one_made_in_process(tmp_path: Path, train_dir: Path) -> None:
    """``srd train cache`` fills the cache with several processes; fit then reads exactly what it would have
    made itself."""
    assert train_main(["cache", "--scales", "2,4", "--downscales", "0.5", "--workers", "2",
                       "--train-dir", str(train_dir), "--cache-dir", str(tmp_path / "pool")]) == 0
    for scale in (2, 4):
        assert (tmp_path / "pool" / f"x{scale}" / "T91/t2.png").exists()
        assert (tmp_path / "pool" / "down0.5" / f"x{scale}" / "BSDS200/35091.png").exists()
        pooled = load_pairs(train_dir, scale, tmp_path / "pool", (0.5,))
        single = load_pairs(train_dir, scale, tmp_path / f"single{scale}", (0.5,))
        assert [p.name for p in pooled] == [p.name for p in single]
        assert all(
            np.array_equal(a.lr, b.lr) and np.array_equal(a.hr, b.hr) for a, b in zip(pooled, single, strict=True)
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_without_a_gpu_auto_trains_on_the_cpu_and_cuda_is_a_one_line_error(
        tmp_path: Path, train_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    status = train_main(["fit", "--scale", "2", "--iters", "2", "--device", "cuda", "--train-dir", str(train_dir),
                         "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")])
    assert status == 2
    assert capsys.readouterr().err.strip() == "srd train fit: device cuda was asked for, but torch sees no CUDA GPU"
    assert not (tmp_path / "runs").exists()


def test_a_bench_dir_without_images_is_a_one_line_error_not_nan_evaluations(
        tmp_path: Path, train_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Outside attack, session 12: run from another folder, the default --bench-dir held nothing, and the run
    went on with every evaluation NaN and no best.pt."""
    status = train_main(["fit", "--scale", "2", "--iters", "2", "--train-dir", str(train_dir),
                         "--bench-dir", str(tmp_path / "nowhere"), "--runs-dir", str(tmp_path / "runs"),
                         "--cache-dir", str(tmp_path / "cache")])
    assert status == 2
    nowhere = tmp_path / "nowhere" / "Set5"
    assert capsys.readouterr().err.strip() == (
        f"srd train fit: no benchmark images (*.png, with LR_bicubic_matlab/x2/ beside them) in {nowhere}")
    assert not (tmp_path / "cache").exists()  # refused before the training images were read


def test_a_mix_without_photo_degradation_or_with_an_unknown_field_is_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["fit", "--scale", "2", "--iters", "2", "--runs-dir", str(tmp_path / "runs")]
    assert train_main([*common, "--mix", "clean_probability=0.3"]) == 2
    assert capsys.readouterr().err.strip() == "srd train fit: --mix changes the photo mix, so it needs --degrade photo"
    with pytest.raises(SystemExit) as refused:
        train_main([*common, "--degrade", "photo", "--mix", "clean=0.3"])
    assert refused.value.code == 2
    assert "unknown photo mix field 'clean'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_export_of_a_missing_checkpoint_is_a_one_line_error_naming_those_there(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    for name in ("last", "it300"):
        (run / f"{name}.pt").write_bytes(b"")
    assert train_main(["export", "--run", str(run), "--checkpoint", "it30", "--name", "x"]) == 2
    expected = f"srd train export: no checkpoint {run / 'it30.pt'} (the run has: it300, last)"
    assert capsys.readouterr().err.strip() == expected
    assert train_main(["export", "--run", str(tmp_path / "absent"), "--name", "x"]) == 2
    assert capsys.readouterr().err.strip() == f"srd train export: no checkpoint {tmp_path / 'absent' / 'last.pt'}"


def _gpu_script() -> object:
    path = Path(__file__).resolve().parents[1] / "scripts" / "train_gpu.py"
    spec = importlib.util.spec_from_file_location("train_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_script_measures_rates_from_the_log_and_starts_from_the_shipped_models(tmp_path: Path) -> None:
    """The GPU plan rests on the probe's rate: iterations between the first and last progress lines over the
    time between them (start-up comes before the first). Each run starts from the model it will replace."""
    gpu = _gpu_script()
    log = tmp_path / "train.log"
    log.write_text("2026-11-27 07:13:00,000 INFO new run x\n"
                   "2026-11-27 07:13:10,000 INFO it 20 loss 9.1 lr 1.00e-04 0.50 it/s\n"
                   "2026-11-27 07:13:11,000 INFO it 40 loss 9.0 lr 1.00e-04 20.00 it/s\n"
                   "2026-11-27 07:13:16,000 INFO it 100 loss 8.9 lr 1.00e-04 12.00 it/s\n")
    assert gpu.measured_rate(log) == pytest.approx(80 / 6)
    runs = gpu.planned_runs("20261127")
    assert len(runs) == 6 and len({start for *_, start in runs}) == 6
    assert gpu.Run("edsr-base-x3-gpu-20261127", "base", 3, gpu.MODELS / "edsr-base_x3.onnx") in runs
    assert all((Path(__file__).resolve().parents[1] / start).is_file() for *_, start in runs)
    tiers = gpu.planned_runs("20261127", "tiers")
    assert gpu.Run("sesr-quality-x4-gpu-20261127", "quality", 4, None) in tiers
    assert len({run.key for run in runs + tiers}) == 12  # each run its own probed rate


@pytest.mark.e2e
def test_each_checkpoint_records_the_hardware_that_trained_it(tmp_path: Path, train_dir: Path) -> None:
    """A run resumed on the same machine lists it once; one continued elsewhere lists both, and the manifest's
    provenance joins them. Checkpoints from before the field existed were all trained on this CPU."""
    cfg = tiny_config(tmp_path, train_dir, 2)
    assert train(cfg)
    assert train(dataclasses.replace(cfg, iters=4))
    ckpt = checkpoint.load(cfg.run_dir / "last.pt")
    bf16 = bf16_is_fast(torch.device("cpu"))
    here = describe_hardware(torch.device("cpu"), cfg.threads, bf16)
    assert ckpt["hardware"] == [here] and here.endswith("CPU") and ("bf16 autocast" if bf16 else "fp32") in here
    assert provenance(ckpt)["hardware"] == here
    assert provenance({**ckpt, "hardware": ["NVIDIA H200 GPU (bf16 autocast)", here]})["hardware"] == \
        f"NVIDIA H200 GPU (bf16 autocast) + {here}"
    del ckpt["hardware"]  # such runs had the precision their config asked for
    assert provenance(ckpt)["hardware"] == describe_hardware(torch.device("cpu"), cfg.threads, cfg.bf16)


def test_hard_patches_come_only_from_where_bicubic_fails() -> None:
    """On an image whose left half is flat grey and right half noise, the hardest quarter of the patches
    all lie in the noise, so no drawn patch is flat; uniform sampling draws flat ones."""
    hr = np.full((96, 192, 3), 128, np.uint8)
    hr[:, 96:] = np.random.default_rng(0).integers(0, 256, (96, 96, 3))
    pair = Pair("half", hr, make_lr(hr, 2))

    def flat_patches(sampler: PatchSampler) -> int:
        _, hr_batch = sampler.batch(64)
        return int((hr_batch.std(axis=(2, 3)).max(axis=1) < 1).sum())

    hard = PatchSampler([pair], 2, 16, seed=0, hard_fraction=0.25)
    assert hard.hard is not None and len(hard.hard) == 14 and (hard.hard[:, 2] >= 48).all()
    assert flat_patches(hard) == 0
    assert flat_patches(PatchSampler([pair], 2, 16, seed=0)) > 0


@pytest.mark.parametrize(("capability", "fast"), [("AVX2", False), ("NO AVX", False), ("AVX512", True),
                                                  ("AMX", True)])
def test_bf16_autocast_only_where_the_cpu_has_bf16_arithmetic(
    monkeypatch: pytest.MonkeyPatch, capability: str, fast: bool
) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert bf16_is_fast(torch.device("cpu")) is fast
    assert bf16_is_fast(torch.device("cuda"))


def test_photo_patches_are_degraded_from_their_hr_patch_the_same_way_under_the_same_seed() -> None:
    hr = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    hr = cv2.GaussianBlur(hr, (0, 0), 1.5)
    pair = Pair("noise", hr, make_lr(hr, 2))
    clean_lr, clean_hr = PatchSampler([pair], 2, 24, seed=5).batch(8)
    photo = [PatchSampler([pair], 2, 24, seed=5, photo_mix=PhotoMix()).batch(8) for _ in range(2)]
    assert np.array_equal(photo[0][0], photo[1][0]) and np.array_equal(photo[0][1], photo[1][1])
    assert photo[0][0].shape == clean_lr.shape and photo[0][1].shape == clean_hr.shape
    assert not np.array_equal(photo[0][0], clean_lr)


@pytest.mark.e2e
def test_sigterm_saves_and_exits_143(tmp_path: Path, train_dir: Path) -> None:
    """The CLI saves a resumable checkpoint on SIGTERM and exits 143, so the queue script stops there."""
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "srd.train", "fit", "--scale", "2", "--blocks", "1", "--channels", "4",
           "--iters", "1000000", "--batch", "2", "--patch", "16", "--eval-every", "20", "--name", "sig",
           "--train-dir", str(train_dir), "--bench-dir", str(SHARED / "bench"),
           "--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(runs)]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (runs / "sig" / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        proc.kill()
    ckpt = checkpoint.load(runs / "sig" / "last.pt")
    assert 20 <= ckpt["iteration"] < 1000000
    assert "stopped sig" in (runs / "sig" / "train.log").read_text()


@pytest.mark.e2e
def test_export_loads_in_cv2_dnn_at_any_size(tmp_path: Path, train_dir: Path) -> None:
    """The exported ONNX runs in cv2.dnn on a non-square image, ×scale, matching torch; manifest is right."""
    cfg = tiny_config(tmp_path, train_dir, 4)
    train(cfg)
    models = tmp_path / "models"
    entry = export_run(cfg.run_dir / "last.pt", "tiny", models, SHARED / "bench")

    path = models / "tiny_x2.onnx"
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = json.loads((models / "manifest.json").read_text())
    assert manifest["models"] == [entry]
    assert entry["convention"] == "edsr" and entry["provenance"]["iterations"] == 4
    assert set(entry["quality"]) == {"Set5", "Set14"} and "quality_jpeg_q75" not in entry  # not a photo model
    # Stored as float16 because that cost (almost) nothing; cv2.dnn then runs the fp16-rounded weights.
    assert entry["weights"] == "float16" and max(entry["fp16_psnr_loss"].values()) <= 0.02

    model = EDSR(cfg.arch)
    model.load_state_dict(checkpoint.load(cfg.run_dir / "last.pt")["model"])
    model = model.half().float().eval()
    blob = np.random.default_rng(0).uniform(0, 255, (1, 3, 37, 53)).astype(np.float32)
    blob -= np.asarray(DIV2K_MEAN_BGR, np.float32)[None, :, None, None]
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(blob)
    out = net.forward()
    assert out.shape == (1, 3, 74, 106)
    with torch.no_grad():
        ref = model(torch.from_numpy(blob)).numpy()
    assert np.abs(out - ref).max() < 2e-3


@pytest.mark.e2e
def test_a_photo_model_is_recorded_with_its_jpeg_q75_quality_beside_the_clean_one(
        tmp_path: Path, train_dir: Path) -> None:
    cfg = tiny_config(tmp_path, train_dir, 2, degrade="photo", mix="clean_probability=0.5")
    train(cfg)
    entry = export_run(cfg.run_dir / "last.pt", "tiny-photo", tmp_path / "models", SHARED / "bench")
    jpeg = entry["quality_jpeg_q75"]
    assert set(jpeg) == {"Set5", "Set14"}
    assert all(jpeg[name]["psnr_y"] < entry["quality"][name]["psnr_y"] for name in jpeg)  # JPEG costs detail
    assert jpeg == srd_export.evaluate_onnx(tmp_path / "models" / "tiny-photo_x2.onnx", SHARED / "bench", 2,
                                            BenchDegradation(75))
    assert "0.5 of patches clean" in entry["provenance"]["degradation"]


@pytest.mark.e2e
def test_float16_weights_halve_the_file_and_are_kept_only_within_the_loss_bound(
        tmp_path: Path, train_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tmp_path, train_dir, 2)
    train(cfg)
    half = export_run(cfg.run_dir / "last.pt", "half", tmp_path / "half", SHARED / "bench")
    monkeypatch.setattr("srd.train.export.MAX_FP16_LOSS_DB", -1.0)  # no loss is small enough now
    full = export_run(cfg.run_dir / "last.pt", "full", tmp_path / "full", SHARED / "bench")
    assert (half["weights"], full["weights"]) == ("float16", "float32")
    assert full["fp16_psnr_loss"] == half["fp16_psnr_loss"]
    # The weights are most of the file: float16 takes a little over half of float32's bytes.
    assert 0.5 < half["size_bytes"] / full["size_bytes"] < 0.75
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["full_x2.onnx", "manifest.json"]


@pytest.mark.e2e
@pytest.mark.parametrize("failing_check", ["float32", "float16"])
def test_an_export_that_fails_a_check_leaves_no_file_behind(
        failing_check: str, tmp_path: Path, train_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file is checked with both engines: calls 1-2 check the float32 file, 3-4 the float16 one."""
    cfg = tiny_config(tmp_path, train_dir, 1)
    train(cfg)
    real_check, calls = srd_export.check_against_torch, []

    def check(model: EDSR, path: Path, classic: bool = True) -> float:
        calls.append(path.name)
        failing = len(calls) <= 2 if failing_check == "float32" else len(calls) > 2
        return 1.0 if failing else real_check(model, path, classic)

    monkeypatch.setattr(srd_export, "check_against_torch", check)
    with pytest.raises(RuntimeError, match="disagrees with torch"):
        export_run(cfg.run_dir / "last.pt", "bad", tmp_path / "models", SHARED / "bench")
    assert list((tmp_path / "models").iterdir()) == []


def test_manifest_update_keeps_other_entries_sorted(tmp_path: Path) -> None:
    """Re-exporting one (name, scale) replaces only that entry and keeps the list sorted."""
    manifest = tmp_path / "manifest.json"
    for name, scale, size in [("edsr-lite", 4, 1), ("edsr-base", 2, 2), ("edsr-lite", 2, 3), ("edsr-lite", 4, 9)]:
        update_manifest(manifest, {"name": name, "scale": scale, "size_bytes": size})
    models = json.loads(manifest.read_text())["models"]
    assert [(m["name"], m["scale"], m["size_bytes"]) for m in models] == [
        ("edsr-base", 2, 2), ("edsr-lite", 2, 3), ("edsr-lite", 4, 9)]


def _add_entries(manifest: Path, name: str) -> None:
    for scale in range(200):
        update_manifest(manifest, {"name": name, "scale": scale})


@pytest.mark.e2e
def test_manifest_updates_from_processes_side_by_side_lose_nothing(tmp_path: Path) -> None:
    """Two exporters updating one manifest at once (a read-modify-write each) keep every entry of both."""
    manifest = tmp_path / "manifest.json"
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_add_entries, args=(manifest, name)) for name in ("a", "b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    entries = {(m["name"], m["scale"]) for m in json.loads(manifest.read_text())["models"]}
    assert entries == {(name, scale) for name in ("a", "b") for scale in range(200)}


def test_other_scale_starts_from_x2_body() -> None:
    """Loading a ×2 checkpoint into a ×4 model copies everything but the upsampler."""
    x2, x4 = EDSR(Arch(2, 2, 8)), EDSR(Arch(4, 2, 8))
    copied = load_body(x4, x2.state_dict())
    assert copied and not any(k.startswith("tail.") for k in copied)
    assert torch.equal(x4.head.weight, x2.head.weight)
    assert not torch.equal(x4.tail[0].weight[:12], x2.tail[0].weight)


@pytest.mark.e2e
def test_init_from_the_same_model_and_scale_is_a_warm_restart_of_every_tensor(tmp_path: Path, train_dir: Path) -> None:
    """A new run started (`init`) from a finished run of the same architecture and scale begins with all its
    weights, the tail included: a fine-tune with a fresh learning-rate schedule."""
    first = tiny_config(tmp_path / "a", train_dir, 2)
    assert train(first)
    second = dataclasses.replace(tiny_config(tmp_path / "b", train_dir, 0), init=str(first.run_dir / "last.pt"))
    assert train(second)
    before, after = (checkpoint.load(c.run_dir / "last.pt")["model"] for c in (first, second))
    assert any(k.startswith("tail.") for k in after)
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert "initialised every tensor" in (second.run_dir / "train.log").read_text()


@pytest.mark.e2e
def test_the_manifest_records_both_runs_of_a_model_started_from_another(tmp_path: Path, train_dir: Path) -> None:
    """Exporting a run that started from another (`init`) records the earlier run's provenance too, so the
    manifest alone says how to make the model; the --init and --run paths are given relative to the runs folder."""
    runs = tmp_path / "runs"
    first = dataclasses.replace(tiny_config(tmp_path, train_dir, 2), runs_dir=str(runs.resolve()))
    assert train(first)
    second = dataclasses.replace(first, name="tuned", iters=1, init=str((first.run_dir / "last.pt").resolve()))
    assert train(second)
    entry = export_run(second.run_dir / "last.pt", "tiny", tmp_path / "models", SHARED / "bench")
    made = entry["provenance"]
    assert made["command"].endswith("--init runs/tiny/last.pt") and made["iterations"] == 1
    assert made["export_command"] == "python -m srd.train export --run runs/tuned --name tiny"
    assert made["init_provenance"]["command"].startswith("python -m srd.train fit --name tiny ")
    assert made["init_provenance"]["iterations"] == 2 and "init_provenance" not in made["init_provenance"]


@pytest.mark.parametrize("tail", ["shuffle", "espcn"])
@pytest.mark.parametrize("half", [False, True])
def test_an_exported_file_gives_back_the_weights_it_was_made_from(tail: str, half: bool, tmp_path: Path) -> None:
    """Reading an export undoes it: the fp16 casts, and the channel order each DepthToSpace was rewritten to
    (×4 with the paper's tail has two of them)."""
    torch.manual_seed(0)
    model = EDSR(Arch(4, 1, 8, tail)).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    if half:
        store_weights_fp16(path, path)
        model = model.half().float()
    read = read_state_dict(path)
    assert read.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(read[key], value), key


@pytest.mark.e2e
def test_a_run_can_start_from_an_exported_model_and_the_manifest_says_how_that_was_made(
        tmp_path: Path, train_dir: Path) -> None:
    """A checkout has the shipped models but not the checkpoints they came from: a warm restart from the
    .onnx starts from its weights, and exporting over it records its sha256 and its manifest entry's
    provenance. An .onnx of another scale gives its body."""
    first = tiny_config(tmp_path / "a", train_dir, 2)
    assert train(first)
    models = tmp_path / "models"
    shipped = export_run(first.run_dir / "last.pt", "tiny", models, SHARED / "bench")
    second = dataclasses.replace(tiny_config(tmp_path / "b", train_dir, 1), init=str(models / "tiny_x2.onnx"))
    assert train(second)
    assert "initialised every tensor" in (second.run_dir / "train.log").read_text()
    entry = export_run(second.run_dir / "last.pt", "tiny", models, SHARED / "bench")
    made = entry["provenance"]
    assert made["init"] == f"from tiny_x2.onnx (sha256 {shipped['sha256'][:16]})"
    assert made["init_provenance"] == shipped["provenance"]
    assert made["command"].endswith(f"--init {models / 'tiny_x2.onnx'}")
    assert entry["sha256"] != shipped["sha256"]

    x3 = dataclasses.replace(tiny_config(tmp_path / "c", train_dir, 0), arch=Arch(3, 2, 8),
                             init=str(models / "tiny_x2.onnx"))
    assert train(x3)
    assert re.search(r"initialised \d+ tensors \(all but the tail\)", (x3.run_dir / "train.log").read_text())


@pytest.mark.parametrize("tail", ["shuffle", "espcn"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_model_upscales_by_scale(tail: str, scale: int) -> None:
    model = EDSR(Arch(scale, 1, 8, tail))
    assert model(torch.zeros(1, 3, 5, 7)).shape == (1, 3, 5 * scale, 7 * scale)
