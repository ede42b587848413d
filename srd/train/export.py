"""Export a training checkpoint to ``models/``: ONNX file, cv2.dnn check, benchmark, manifest entry.

The quality recorded in the manifest is measured on the exported file through cv2.dnn (not torch), with the
docs/design.md §10 protocol, so it is what daemon users get.
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from srd.engine.registry import file_sha256, read_manifest
from srd.quality.degrade import BenchDegradation, PhotoMix
from srd.quality.metrics import psnr_y, ssim_y
from srd.train import checkpoint
from srd.train.data import load_bench
from srd.train.loop import PHOTO_EVAL, describe_hardware
from srd.train.model import Arch, Network, build_model, count_parameters
from srd.train.onnx_io import export_onnx, load_net, run_net, store_weights_fp16

log = logging.getLogger("srd.train")

CONVENTION = "edsr"
BENCH_SETS = ("Set5", "Set14")
# Non-square sizes catch exporters that froze a dummy input's shape into the graph.
CHECK_SIZES = ((37, 53), (64, 96))
MAX_ABS_DIFF = 1e-2
# The bound for storing weights as float16 (half the file size) rather than float32.
MAX_FP16_LOSS_DB = 0.02


def model_from_checkpoint(ckpt: dict[str, Any]) -> Network:
    model = build_model(Arch(**ckpt["arch"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def check_against_torch(model: Network, path: Path, classic: bool = True) -> float:
    """Largest |cv2.dnn − torch| over random inputs of several non-square sizes (0–255 scale)."""
    net = load_net(path, classic)
    rng = np.random.default_rng(0)
    worst = 0.0
    for h, w in CHECK_SIZES:
        blob = rng.uniform(-110, 140, (1, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(blob)).numpy()
        net.setInput(blob)
        out = net.forward()
        if out.shape != ref.shape:
            raise RuntimeError(f"cv2.dnn output {out.shape} != torch {ref.shape} for input {h}x{w}")
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def evaluate_onnx(path: Path, bench_dir: Path, scale: int,
                  degradation: BenchDegradation | None = None) -> dict[str, dict[str, float]]:
    """Mean PSNR-Y / SSIM-Y per benchmark set, running whole images through cv2.dnn (classic engine); with
    `degradation`, of its LR inputs (scored against the clean HR all the same)."""
    net = load_net(path, classic=True)
    quality = {}
    for name in BENCH_SETS:
        psnrs, ssims = [], []
        for pair in load_bench(bench_dir / name, scale):
            lr = pair.lr if degradation is None else degradation.apply(pair.lr)
            sr = np.clip(np.round(run_net(net, lr)), 0, 255).astype(np.uint8)
            psnrs.append(psnr_y(sr, pair.hr, scale))
            ssims.append(ssim_y(sr, pair.hr, scale))
        quality[name] = {"psnr_y": round(float(np.mean(psnrs)), 3), "ssim": round(float(np.mean(ssims)), 4)}
    return quality


def training_command(ckpt: dict[str, Any]) -> str:
    """The ``fit`` command (explicit flags, no preset) that reproduces the checkpoint: with ``--stop-at``
    when it was taken part-way through the schedule."""
    cfg, arch = ckpt["config"], ckpt["arch"]
    parts = [
        "python -m srd.train fit", f"--name {cfg['name']}", f"--scale {arch['scale']}",
        f"--blocks {arch['blocks']}", f"--channels {arch['channels']}", f"--tail {arch['tail']}",
        f"--res-scale {arch['res_scale']}",
        *([f"--family {arch['family']}", f"--expand {arch['expand']}"] if arch.get("family", "edsr") != "edsr" else []),
        f"--iters {cfg['iters']}", f"--batch {cfg['batch']}",
        f"--patch {cfg['patch']}", f"--lr {cfg['lr']}", f"--lr-min {cfg['lr_min']}", f"--seed {cfg['seed']}",
    ]
    if ckpt["iteration"] < cfg["iters"]:
        parts.append(f"--stop-at {ckpt['iteration']}")
    if cfg.get("hard_fraction", 1.0) < 1:
        parts.append(f"--hard-fraction {cfg['hard_fraction']}")
    if cfg.get("downscales"):
        parts.append(f"--downscales {','.join(f'{f:g}' for f in cfg['downscales'])}")
    if cfg.get("degrade"):
        parts.append(f"--degrade {cfg['degrade']}")
    if cfg.get("mix"):
        parts.append(f"--mix {cfg['mix']}")
    if cfg.get("init"):
        parts.append(f"--init {_in_runs_dir(Path(cfg['init']), cfg)}")
    if not cfg["bf16"]:
        parts.append("--no-bf16")
    return " ".join(parts)


def export_command(ckpt_path: Path, name: str, cfg: dict[str, Any]) -> str:
    """The ``export`` command that reproduces this export from the run's checkpoint."""
    which = "" if ckpt_path.stem == "last" else f" --checkpoint {ckpt_path.stem}"
    return f"python -m srd.train export --run {_in_runs_dir(ckpt_path.parent, cfg)}{which} --name {name}"


def _in_runs_dir(path: Path, cfg: dict[str, Any]) -> str:
    """``path`` relative to ``runs/`` (the default runs dir) when it lies in the run's own runs dir, so a
    recorded command carries no machine's home folder."""
    runs_dir = Path(cfg["runs_dir"]).resolve()
    if path.resolve().is_relative_to(runs_dir):
        return str(Path("runs") / path.resolve().relative_to(runs_dir))
    return str(path)


def provenance(ckpt: dict[str, Any]) -> dict[str, Any]:
    cfg = ckpt["config"]
    train_dir = Path(cfg["train_dir"])
    folders = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    count = sum(1 for p in train_dir.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    init = cfg.get("init")
    init_label, init_provenance = _init_source(Path(init)) if init else ("scratch", None)
    return {
        "trainer": "srd.train",
        "data": f"{cfg['train_dir']} ({count} images: {', '.join(folders)})",
        "degradation": PhotoMix.parse(cfg.get("mix", "")).describe() if cfg.get("degrade") == "photo"
        else "MATLAB bicubic",
        "iterations": int(ckpt["iteration"]),
        "batch": cfg["batch"],
        "patch_lr": cfg["patch"],
        "hours": round(float(ckpt["elapsed_s"]) / 3600, 2),
        # Checkpoints from before training recorded its hardware were all trained on this CPU.
        "hardware": " + ".join(ckpt.get("hardware") or
                               [describe_hardware(torch.device("cpu"), cfg["threads"], cfg["bf16"])]),
        "init": init_label,
        "command": training_command(ckpt),
        **({"init_provenance": init_provenance} if init_provenance is not None else {}),
    }


def _init_source(path: Path) -> tuple[str, dict[str, Any] | None]:
    """What a run started from, and how that was made where it can still be told, so the manifest alone says
    how to make a model: a run started from another (another scale's body, or a warm restart) is reproduced by
    both commands.

    An exported model is told by its sha256 and its manifest entry's provenance, while the file is still the
    one that entry describes (export replaces it).
    """
    if path.suffix != ".onnx":
        return f"from {path.parent.name} ({path.name})", provenance(checkpoint.load(path)) if path.exists() else None
    if not path.exists():
        return f"from {path.name}", None
    sha = file_sha256(path)
    made = next((spec.info.get("provenance") for spec in read_manifest(path.parent)
                 if spec.path.name == path.name and spec.expected_sha256 == sha), None)
    return f"from {path.name} (sha256 {sha[:16]})", made


def with_conv_weights_as_fp16(model: Network) -> Network:
    """A copy of ``model``'s inference network with what :func:`store_weights_fp16` stores as float16, the
    convolutions' weights and biases, rounded to it (a sesr network's collapsed kernels, not its training ones)."""
    rounded = copy.deepcopy(model.inference())
    for module in rounded.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.half().float()
    return rounded


def _check_file(model: Network, path: Path) -> None:
    """Raise unless both cv2.dnn engines give what torch gives, on several sizes."""
    diffs = {engine: check_against_torch(model, path, classic) for engine, classic in
             (("classic", True), ("new", False))}
    log.info("%s: cv2.dnn vs torch max abs diff (0-255 scale): %s", path.name, diffs)
    if max(diffs.values()) > MAX_ABS_DIFF:
        raise RuntimeError(f"exported model disagrees with torch: {diffs}")


@dataclass(frozen=True)
class StoredWeights:
    """How the exported file stores its weights, the quality of that file, and what float16 cost per set."""

    dtype: str
    quality: dict[str, dict[str, float]]
    fp16_loss: dict[str, float]


def _store_fp16_if_lossless(model: Network, path: Path, half: Path, quality: dict[str, dict[str, float]],
                            bench_dir: Path) -> StoredWeights:
    """Rewrite ``path`` with float16 weights (written first to ``half``) if that costs at most MAX_FP16_LOSS_DB
    of PSNR on every benchmark set, measured through cv2.dnn like ``quality``, the float32 file's."""
    store_weights_fp16(path, half)
    # The file must match torch running the same float16-rounded weights: the conversion itself is exact.
    _check_file(with_conv_weights_as_fp16(model), half)
    half_quality = evaluate_onnx(half, bench_dir, model.arch.scale)
    loss = {name: round(quality[name]["psnr_y"] - half_quality[name]["psnr_y"], 3) for name in quality}
    log.info("fp16 weights: quality %s, PSNR loss %s dB", half_quality, loss)
    if max(loss.values()) > MAX_FP16_LOSS_DB:
        return StoredWeights("float32", quality, loss)
    os.replace(half, path)
    return StoredWeights("float16", half_quality, loss)


def update_manifest(manifest_path: Path, entry: dict[str, Any]) -> None:
    """Replace or add the (name, scale) entry, keep the others, sort, and write atomically.

    The read-modify-write holds an exclusive ``flock`` on the manifest's folder, so exports run side by side
    (one per scale) cannot drop each other's entries.
    """
    folder = os.open(manifest_path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        manifest: dict[str, Any] = (
            json.loads(manifest_path.read_text()) if manifest_path.exists() else {"version": 1, "models": []}
        )
        models = [m for m in manifest["models"] if (m["name"], m["scale"]) != (entry["name"], entry["scale"])]
        models.append(entry)
        manifest["models"] = sorted(models, key=lambda m: (m["name"], m["scale"]))
        tmp = manifest_path.with_name(f".{manifest_path.name}.tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, manifest_path)
    finally:
        os.close(folder)  # releases the lock


def export_run(ckpt_path: Path, name: str, models_dir: Path, bench_dir: Path, threads: int = 1) -> dict[str, Any]:
    """Export ``ckpt_path`` as ``models_dir/<name>_x<s>.onnx`` and record it in ``models_dir/manifest.json``.

    Reads the checkpoint only, so it is safe while the run is still training.

    Returns:
        The manifest entry written.
    """
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    ckpt = checkpoint.load(ckpt_path)
    model = model_from_checkpoint(ckpt)
    arch = model.arch
    # Before the export replaces a model this run may have started from (see _init_source).
    made = {**provenance(ckpt), "export_command": export_command(ckpt_path, name, ckpt["config"])}
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / f"{name}_x{arch.scale}.onnx"
    tmp = models_dir / f".{final.name}.tmp.onnx"
    half = models_dir / f".{final.name}.fp16.tmp.onnx"
    try:
        export_onnx(model.inference(), tmp)
        _check_file(model, tmp)
        quality = evaluate_onnx(tmp, bench_dir, arch.scale)
        log.info("quality via cv2.dnn: %s", quality)
        weights = _store_fp16_if_lossless(model, tmp, half, quality, bench_dir)
        os.replace(tmp, final)
    finally:  # whatever failed, no temporary file is left beside the models
        tmp.unlink(missing_ok=True)
        half.unlink(missing_ok=True)
    entry = {
        "name": name, "scale": arch.scale, "file": final.name, "format": "onnx", "convention": CONVENTION,
        "sha256": file_sha256(final), "size_bytes": final.stat().st_size,
        "architecture": {key: value for key, value in arch.to_dict().items() if key != "scale"},
        "parameters": count_parameters(model.inference()), "weights": weights.dtype,
        "provenance": made,
        "quality": weights.quality, "fp16_psnr_loss": weights.fp16_loss,
    }
    if ckpt["config"].get("degrade") == "photo":  # what the model is for, beside the clean protocol above
        entry[f"quality_jpeg_q{PHOTO_EVAL.jpeg_quality}"] = evaluate_onnx(final, bench_dir, arch.scale, PHOTO_EVAL)
    update_manifest(models_dir / "manifest.json", entry)
    log.info("wrote %s and its manifest entry", final)
    return entry
