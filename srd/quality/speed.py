"""`srd bench speed`: runtimes, thread counts and tile sizes side by side, in one run.

Each measurement runs in a fresh process, so its peak RSS is its own and no runtime inherits another's
threads or caches. Rounds interleave everything (the CPU peak too), so load from elsewhere on a noisy machine
falls on every row alike. Each row reports µs per LR pixel, the GMAC/s that makes (the model's MACs per LR
pixel ÷ its time) and that rate's fraction of a plain float32 matrix multiply's on as many threads.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from srd.engine.conventions import LUMA_CONVENTIONS
from srd.engine.registry import ModelSpec
from srd.engine.upscaler import EngineSettings, Upscaler
from srd.quality.macs import macs_per_lr_pixel, matmul_peak_gmacs

# What `--runtimes` accepts: 'default' is the engine as configured (runtime: auto picks by its table).
RUNTIME_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "opencv-classic": {"runtime": "opencv", "onnx_engine": "classic"},
    "opencv-new": {"runtime": "opencv", "onnx_engine": "new"},
    "onnxruntime": {"runtime": "onnxruntime"},
}
UPSAMPLE = "upsample()"
_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Plan:
    """One row of the table: a model run one way."""

    spec: ModelSpec
    runtime: str  # a RUNTIME_VARIANTS key, or UPSAMPLE
    threads: int
    tile: int


@dataclass(frozen=True)
class SpeedSummary:
    """One plan over several rounds: the time of each round, the largest peak RSS, and its arithmetic rate."""

    model: str
    variant: str  # as asked: a RUNTIME_VARIANTS key or UPSAMPLE
    runtime: str  # as run, e.g. 'onnxruntime' or 'opencv-classic'
    threads: int
    tile: int
    us_per_lr_pixel: list[float]
    peak_rss_mb: float
    macs_per_lr_pixel: float
    peak_gmacs: float  # the matrix multiply's, median over rounds, on `threads` threads

    @property
    def median_us(self) -> float:
        return statistics.median(self.us_per_lr_pixel)

    @property
    def gmacs(self) -> float:
        return self.macs_per_lr_pixel / self.median_us / 1e3

    @property
    def peak_fraction(self) -> float:
        return self.gmacs / self.peak_gmacs

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "variant": self.variant, "runtime": self.runtime, "threads": self.threads,
                "tile": self.tile,
                "us_per_lr_pixel": self.us_per_lr_pixel, "median_us_per_lr_pixel": self.median_us,
                "peak_rss_mb": self.peak_rss_mb, "macs_per_lr_pixel": self.macs_per_lr_pixel,
                "gmacs": self.gmacs, "matmul_peak_gmacs": self.peak_gmacs, "peak_fraction": self.peak_fraction}


def _runtime_label(upscaler: Upscaler) -> str:
    runtime = upscaler.runtime
    label = runtime.name
    if runtime.name == "opencv" and upscaler.spec.format == "onnx":
        label += f"-{upscaler.settings.onnx_engine}"
    return label if runtime.device == "cpu" else f"{label} ({runtime.device})"


def _synthetic_image(size: tuple[int, int]) -> np.ndarray:
    """A textured picture (smoothed noise): no flat areas for a runtime to skip through."""
    height, width = size
    base = np.random.default_rng(0).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)


def _measure(plan: Plan, engine: EngineSettings, size: tuple[int, int], repeats: int,
             queue: multiprocessing.Queue) -> None:
    """Child process: time `repeats` runs after a warm-up; report µs per LR pixel, peak RSS and the runtime."""
    image = _synthetic_image(size)
    if plan.runtime == UPSAMPLE:
        cv2.setNumThreads(plan.threads)
        impl = cv2.dnn_superres.DnnSuperResImpl.create()
        impl.readModel(str(plan.spec.path))
        impl.setModel(plan.spec.convention, plan.spec.scale)
        run: Callable[[np.ndarray], np.ndarray] = impl.upsample
        label = UPSAMPLE
    else:
        settings = replace(engine, tile=plan.tile, threads=plan.threads, **RUNTIME_VARIANTS[plan.runtime])
        upscaler = Upscaler(plan.spec, settings)
        run, label = upscaler.upscale, _runtime_label(upscaler)
    run(image)  # warm-up: the first inference allocates and tunes
    started = time.perf_counter()
    for _ in range(repeats):
        run(image)
    elapsed = (time.perf_counter() - started) / repeats
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((elapsed * 1e6 / (size[0] * size[1]), peak_mb, label))


def _measure_peak(queue: multiprocessing.Queue) -> None:
    queue.put(matmul_peak_gmacs())


def _in_child(target: Callable[..., None], args: tuple[Any, ...], env: dict[str, str] | None = None) -> Any:
    """Run `target(*args, queue)` in a fresh process; its answer, or None if it died."""
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})  # a spawned child reads its environment at start: BLAS sizes its pool then
    try:
        child = context.Process(target=target, args=(*args, queue))
        child.start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    child.join()
    return queue.get() if child.exitcode == 0 else None


def plans_for(specs: Sequence[ModelSpec], runtimes: Sequence[str], thread_counts: Sequence[int],
              tiles: Sequence[int], *, with_upsample: bool = True) -> list[Plan]:
    """Every model × runtime × thread count × tile, plus `upsample()` (whole image) where it reads the model.

    Models only OpenCV reads (the zoo's TensorFlow graphs) get one row per thread count and tile, not one per
    runtime named.
    """
    plans = []
    for spec in specs:
        variants = runtimes if spec.format == "onnx" else ["default"]
        for threads in thread_counts:
            plans += [Plan(spec, runtime, threads, tile) for runtime in variants for tile in tiles]
            if with_upsample and spec.format == "tensorflow" and spec.convention in LUMA_CONVENTIONS | {"edsr"}:
                plans.append(Plan(spec, UPSAMPLE, threads, 0))
    return plans


def compare_speed(
    plans: Sequence[Plan],
    engine: EngineSettings,
    size: tuple[int, int],
    *,
    repeats: int = 2,
    rounds: int = 1,
) -> list[SpeedSummary]:
    """Run every plan once per round, rounds one after another, with the matrix-multiply peak measured for
    each thread count in every round."""
    samples: dict[Plan, list[tuple[float, float, str]]] = {}
    peaks: dict[int, list[float]] = {}
    for _ in range(rounds):
        for threads in sorted({plan.threads for plan in plans}):
            env = dict.fromkeys(_BLAS_THREAD_VARIABLES, str(threads))
            peak = _in_child(_measure_peak, (), env)
            if peak is not None:
                peaks.setdefault(threads, []).append(peak)
        for plan in plans:
            result = _in_child(_measure, (plan, engine, size, repeats))
            samples.setdefault(plan, []).append(result or (float("nan"), float("nan"), f"{plan.runtime} (failed)"))
    macs = {spec: macs_per_lr_pixel(spec) for spec in {plan.spec for plan in plans}}
    return [
        SpeedSummary(
            model=f"{plan.spec.name} x{plan.spec.scale}", variant=plan.runtime, runtime=rows[0][2],
            threads=plan.threads, tile=plan.tile,
            us_per_lr_pixel=[us for us, _, _ in rows], peak_rss_mb=max(rss for _, rss, _ in rows),
            macs_per_lr_pixel=macs[plan.spec],
            peak_gmacs=statistics.median(peaks.get(plan.threads, [float("nan")])),
        )
        for plan, rows in samples.items()
    ]
