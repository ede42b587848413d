"""The training loop: resumable, logged, periodically evaluated on Set5 and Set14.

Runs take many CPU hours spread over several sessions, so everything needed to continue exactly where a
run stopped (weights, Adam state, iteration, numpy and torch RNG states) is saved atomically every few
minutes to ``<runs>/<name>/last.pt``; rerunning the same command resumes from it, on a CPU or a CUDA GPU
(cuDNN's convolutions are not bit-reproducible, so a GPU run repeats only up to that).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import TypedDict, cast

import numpy as np
import torch
from torch import nn

from srd.quality.degrade import BenchDegradation, PhotoMix
from srd.quality.metrics import psnr_y
from srd.train import checkpoint
from srd.train.data import (
    Pair,
    PatchSampler,
    from_model_space,
    load_bench,
    load_pairs,
    to_model_space,
)
from srd.train.model import Arch, build_model, count_parameters, load_body
from srd.train.onnx_io import read_state_dict

log = logging.getLogger("srd.train")

# The protocol photo models are evaluated on while they train (srd bench quality --degrade jpeg:75).
PHOTO_EVAL = BenchDegradation(75)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved in the run folder and in each checkpoint.

    The learning rate is a pure function of the iteration (cosine from ``lr`` to ``lr_min`` over
    ``iters``), so the iteration number is the whole scheduler state.
    """

    name: str
    arch: Arch
    iters: int
    batch: int = 16
    patch: int = 48
    lr: float = 2e-4
    lr_min: float = 1e-6
    seed: int = 0
    hard_fraction: float = 1.0
    downscales: tuple[float, ...] = ()
    degrade: str | None = None
    mix: str = ""  # PhotoMix.parse's changes to the default photo mix
    bf16: bool = True
    threads: int = 1
    device: str = "auto"
    init: str | None = None
    eval_every: int = 1000
    log_every: int = 100
    save_every_s: float = 180.0
    train_dir: str = "../shared/datasets/train"
    bench_dir: str = "../shared/datasets/bench"
    cache_dir: str = ".cache/train_lr"
    runs_dir: str = "runs"

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def learning_rate(cfg: TrainConfig, iteration: int) -> float:
    t = min(iteration, cfg.iters) / max(cfg.iters, 1)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * t))


def resolve_device(name: str) -> torch.device:
    """``auto`` is the CUDA GPU when torch sees one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(name)


class _Progress(TypedDict):
    """What a checkpoint records of a run's progress, beside its weights and random states."""

    iteration: int
    elapsed_s: float
    history: list[tuple[int, float]]  # (iteration, Set5 PSNR-Y; for photo runs the mean of JPEG q75 and clean)
    best_psnr: float
    hardware: list[str]


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast speeds training up here: on CUDA GPUs and AVX-512/AMX CPUs; an AVX2 CPU emulates
    it (measured 23 s against 2.1 s per edsr-lite step in fp32)."""
    capability = torch.backends.cpu.get_cpu_capability()
    return device.type == "cuda" or "AVX512" in capability or "AMX" in capability


def describe_hardware(device: torch.device, threads: int, bf16: bool) -> str:
    """What trains a run, as the manifest's provenance reports it."""
    precision = "bf16 autocast" if bf16 else "fp32"
    version = torch.__version__.split("+")[0]
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} GPU ({precision}), torch {version} CUDA {torch.version.cuda}"
    return f"{os.cpu_count()}-core CPU ({threads} training thread(s), {precision}), torch {version} CPU"


def evaluate_torch(model: nn.Module, pairs: list[Pair], scale: int) -> float:
    """Mean PSNR-Y (shave = scale) of the model in fp32 on whole images: the quick progress signal."""
    model.eval()
    device = next(model.parameters()).device
    scores = []
    with torch.no_grad():
        for pair in pairs:
            out = model(torch.from_numpy(to_model_space(pair.lr)).to(device)).cpu().numpy()
            scores.append(psnr_y(from_model_space(out), pair.hr, scale))
    model.train()
    return float(np.mean(scores))


def initial_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights a new run starts from: a run's checkpoint, or a model that export wrote (``models/*.onnx``),
    which every checkout has, while checkpoints stay on the machine that trained them."""
    if path.suffix == ".onnx":
        return read_state_dict(path)
    return checkpoint.load(path)["model"]


class _StopFlag:
    """Set by SIGTERM/SIGINT so the loop can save a checkpoint before exiting."""

    def __init__(self) -> None:
        self.raised = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.raised = True


def train(cfg: TrainConfig, stop_at: int | None = None) -> bool:
    """Train (or resume) the run described by ``cfg`` until ``cfg.iters``, or until ``stop_at`` if that
    comes first: a pause part-way through the schedule, which also keeps a snapshot ``it<stop_at>.pt``
    that later runs can start from (``last.pt`` moves on when the run is resumed).

    Returns:
        True when the run reached its target; False when SIGTERM/SIGINT stopped it (state saved), so a
        queue driver can stop instead of moving on to the next run.
    """
    device = resolve_device(cfg.device)  # before anything is written: a run that cannot start leaves no trace
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(cfg.run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    stop = _StopFlag()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _train(cfg, device, stop, min(cfg.iters, stop_at or cfg.iters))
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        log.removeHandler(handler)
        handler.close()


def _train(cfg: TrainConfig, device: torch.device, stop: _StopFlag, target: int) -> bool:
    torch.set_num_threads(cfg.threads)
    run_dir = cfg.run_dir
    last = run_dir / "last.pt"
    ckpt = checkpoint.load(last) if last.exists() else None
    if ckpt is not None and Arch(**ckpt["arch"]) != cfg.arch:
        raise ValueError(f"{last} holds architecture {ckpt['arch']}, not {cfg.arch.to_dict()}")
    if ckpt is not None and ckpt["iteration"] >= target:
        if target < cfg.iters and not (run_dir / f"it{target}.pt").exists():
            raise ValueError(f"{cfg.name} is at iteration {ckpt['iteration']}, past --stop-at {target}: the "
                             f"snapshot it{target}.pt asked for was never kept and can't be made now")
        # A queue rerun passes every finished run: return before loading its data, and rewrite nothing.
        log.info("%s is already at iteration %d of %d", cfg.name, ckpt["iteration"], cfg.iters)
        return True

    # First, so that a wrong --bench-dir is refused at once, not after the training images are read.
    set5, set14 = (load_bench(Path(cfg.bench_dir) / name, cfg.arch.scale) for name in ("Set5", "Set14"))
    torch.manual_seed(cfg.seed)  # before building the model: it fixes the initial weights
    model = build_model(cfg.arch)
    photo = cfg.degrade == "photo"
    sampler = PatchSampler(load_pairs(Path(cfg.train_dir), cfg.arch.scale, Path(cfg.cache_dir), cfg.downscales),
                           cfg.arch.scale, cfg.patch, cfg.seed, cfg.hard_fraction,
                           PhotoMix.parse(cfg.mix) if photo else None)
    clean_set5 = set5
    if photo:
        # A photo model is judged on what it is for, the benchmark's JPEG q75 inputs, and on clean ones, which it
        # must not get worse at: best.pt is chosen on the mean of both.
        set5, set14 = ([Pair(p.name, p.hr, PHOTO_EVAL.apply(p.lr)) for p in pairs] for pairs in (set5, set14))

    state: _Progress = {"iteration": 0, "elapsed_s": 0.0, "history": [], "best_psnr": -1.0, "hardware": []}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        sampler.set_state(ckpt["numpy_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        # Runs from before "hardware" was recorded lack it.
        state = cast(_Progress, {k: ckpt.get(k, default) for k, default in state.items()})
        log.info("resumed %s at iteration %d", cfg.name, state["iteration"])
    else:
        if cfg.init:
            init = initial_weights(Path(cfg.init))
            own = model.state_dict()
            if own.keys() == init.keys() and all(own[k].shape == v.shape for k, v in init.items()):
                model.load_state_dict(init)  # same model and scale: a warm restart of all of it
                log.info("initialised every tensor from %s", cfg.init)
            else:
                try:
                    copied = load_body(model, init)
                except ValueError as error:
                    raise ValueError(f"{cfg.init} cannot start {cfg.arch}: {error}") from None
                log.info("initialised %d tensors (all but the tail) from %s", len(copied), cfg.init)
        log.info("new run %s: %s, %d parameters", cfg.name, cfg.arch, count_parameters(model))
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str) + "\n")

    model = model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.train()
    on_gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = on_gpu  # patches have one shape: let cuDNN pick its fastest kernels
    # Made after the move to the device, so a resumed Adam state is loaded onto it too.
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=on_gpu)
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
    bf16 = cfg.bf16 and bf16_is_fast(device)
    if cfg.bf16 and not bf16:
        log.info("bf16 autocast off: this CPU (%s) has no bf16 arithmetic, so torch emulates it about 10x slower "
                 "than fp32; training in fp32", torch.backends.cpu.get_cpu_capability())
    hardware = describe_hardware(device, cfg.threads, bf16)
    if hardware not in state["hardware"]:
        state["hardware"] = [*state["hardware"], hardware]
    log.info("training on %s", hardware)

    def snapshot() -> dict[str, object]:
        return {
            "arch": cfg.arch.to_dict(), "config": cfg.to_dict(), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "numpy_rng": sampler.state(), "torch_rng": torch.get_rng_state(),
            **state,
        }

    it = state["iteration"]
    t_start = time.monotonic()
    elapsed0 = state["elapsed_s"]
    t_saved = t_log = t_start
    # The loss is summed on the device and read only when logged: reading it each step would make the CPU
    # wait for the GPU instead of preparing the next batch meanwhile.
    loss_sum, loss_n, it_log = torch.zeros((), device=device), 0, it
    while it < target and not stop.raised:
        lr_t, hr_t = (_to_device(torch.from_numpy(a), device) for a in sampler.batch(cfg.batch))
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, it)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(lr_t.contiguous(memory_format=torch.channels_last))
        loss = torch.nn.functional.l1_loss(out.float(), hr_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        loss_sum += loss.detach()
        loss_n += 1
        now = time.monotonic()
        state["iteration"] = it
        state["elapsed_s"] = elapsed0 + now - t_start
        if it % cfg.log_every == 0:
            log.info("it %d loss %.4f lr %.2e %.2f it/s", it, loss_sum.item() / loss_n, learning_rate(cfg, it),
                     (it - it_log) / (now - t_log))
            loss_sum, loss_n, it_log, t_log = torch.zeros((), device=device), 0, it, now
        if it % cfg.eval_every == 0 or it == cfg.iters:
            psnr = evaluate_torch(model, set5, cfg.arch.scale)
            # Set14 (more texture than Set5) is only logged; best.pt is chosen on Set5.
            log.info("eval it %d Set5 x%d PSNR-Y %.3f dB, Set14 %.3f dB (torch fp32%s)", it, cfg.arch.scale, psnr,
                     evaluate_torch(model, set14, cfg.arch.scale), f", {PHOTO_EVAL.label} inputs" if photo else "")
            if photo:
                clean = evaluate_torch(model, clean_set5, cfg.arch.scale)
                psnr = (psnr + clean) / 2
                log.info("eval it %d Set5 x%d PSNR-Y %.3f dB on clean inputs; mean of both %.3f dB", it,
                         cfg.arch.scale, clean, psnr)
            state["history"] = [*state["history"], (it, psnr)]
            if psnr > state["best_psnr"]:
                state["best_psnr"] = psnr
                checkpoint.save_atomic(snapshot(), run_dir / "best.pt")
            checkpoint.save_atomic(snapshot(), last)
            t_saved = time.monotonic()
            t_log = t_saved
            it_log = it
        elif now - t_saved >= cfg.save_every_s:
            checkpoint.save_atomic(snapshot(), last)
            t_saved = time.monotonic()
    checkpoint.save_atomic(snapshot(), last)
    if it == target < cfg.iters:
        checkpoint.save_atomic(snapshot(), run_dir / f"it{it}.pt")
    outcome = "stopped" if stop.raised else "paused" if it < cfg.iters else "finished"
    log.info("%s %s at iteration %d of %d (%.2f h of training)", outcome, cfg.name, it, cfg.iters,
             state["elapsed_s"] / 3600)
    return not stop.raised


def _to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch on ``device``; through pinned memory to a GPU, so the copy does not stall the host."""
    if device.type == "cpu":
        return batch
    return batch.pin_memory().to(device, non_blocking=True)
