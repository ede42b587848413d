"""Benchmarks that print figures: quality (PSNR/SSIM-Y, docs/design.md §10 protocol) and speed (µs per LR pixel, RSS).

Every quality run includes bicubic in the same run, so a reader compares like with like; every
speed measurement runs in a fresh process so its peak RSS is its own.
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from srd.engine.conventions import LUMA_CONVENTIONS
from srd.engine.pipeline import Denoise, StageContext
from srd.engine.registry import ModelSpec
from srd.engine.upscaler import EngineSettings, Upscaler
from srd.errors import ImageError
from srd.imaging.imageheader import IMAGE_SUFFIXES
from srd.quality.bicubic import bicubic_up, make_lr
from srd.quality.degrade import BenchDegradation
from srd.quality.metrics import crop_to_multiple, psnr_y, ssim_y


@dataclass(frozen=True)
class QualityRow:
    method: str
    scores: dict[str, tuple[float, float]]  # image name -> (PSNR-Y, SSIM-Y)

    @property
    def psnr(self) -> float:
        return float(np.mean([p for p, _ in self.scores.values()]))

    @property
    def ssim(self) -> float:
        return float(np.mean([s for _, s in self.scores.values()]))


def bench_images(folder: Path) -> list[Path]:
    """HR images directly in `folder` (sub-folders such as LR_bicubic_matlab are not read)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _upsample_reference(spec: ModelSpec) -> cv2.dnn_superres.DnnSuperResImpl:
    """OpenCV's own `DnnSuperResImpl`, for checking that srd reproduces it."""
    impl = cv2.dnn_superres.DnnSuperResImpl.create()
    impl.readModel(str(spec.path))
    impl.setModel(spec.convention, spec.scale)
    return impl


def bench_quality(
    folder: Path,
    scale: int,
    specs: Sequence[ModelSpec],
    engine: EngineSettings,
    *,
    with_upsample: bool = False,
    degradation: BenchDegradation | None = None,
    denoise: Sequence[float] = (),
    ensemble: int = 1,
) -> list[QualityRow]:
    """Mean PSNR-Y and SSIM-Y over the HR images in `folder` (and PSNR-Y per image), bicubic first, then each
    model; with `degradation`, of LR inputs so degraded (scored against the clean HR image); with `denoise`,
    each model also after the pipeline's `denoise` stage at each of those strengths; with `ensemble` above 1,
    each model also as that self-ensemble."""
    methods: dict[str, dict[str, tuple[float, float]]] = {"bicubic (MATLAB)": {}}
    upscalers = [(f"{spec.name} x{spec.scale}", Upscaler(spec, engine)) for spec in specs]
    denoisers = [(strength, Denoise(strength=strength, colour_strength=strength)) for strength in denoise]
    context = StageContext(engine)
    references = []
    if with_upsample:
        references = [
            (f"{spec.name} x{spec.scale} via upsample()", _upsample_reference(spec))
            for spec in specs
            if spec.format == "tensorflow"
        ]
    for path in bench_images(folder):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ImageError(f"cannot decode benchmark image {path}")
        hr = crop_to_multiple(image, scale)
        lr = make_lr(hr, scale)
        if degradation is not None:
            lr = degradation.apply(lr)
        outputs = {"bicubic (MATLAB)": bicubic_up(lr, scale)}
        outputs.update({label: up.upscale(lr) for label, up in upscalers})
        if ensemble > 1:
            outputs.update({f"{label}, ensemble {ensemble}": up.upscale(lr, ensemble) for label, up in upscalers})
        for strength, stage in denoisers:
            clean = stage.apply(lr, context)
            outputs.update({f"denoise {strength:g} + {label}": up.upscale(clean) for label, up in upscalers})
        outputs.update({label: impl.upsample(lr) for label, impl in references})
        for label, sr in outputs.items():
            methods.setdefault(label, {})[path.stem] = (psnr_y(sr, hr, scale), ssim_y(sr, hr, scale))
    return [QualityRow(label, scores) for label, scores in methods.items()]


@dataclass(frozen=True)
class SpeedRow:
    method: str
    tile: int
    us_per_lr_pixel: float
    peak_rss_mb: float


@dataclass(frozen=True)
class SpeedSummary:
    """One model and method over several rounds: the time of each round, and the largest peak RSS."""

    model: str
    method: str
    us_per_lr_pixel: list[float]
    peak_rss_mb: float

    @property
    def median_us(self) -> float:
        return statistics.median(self.us_per_lr_pixel)


def _measure(spec: ModelSpec, engine: EngineSettings, size: tuple[int, int], repeats: int, reference: bool,
             queue: multiprocessing.Queue) -> None:
    """Child process: time `repeats` runs on a synthetic textured image; report µs/pixel and peak RSS."""
    rng = np.random.default_rng(0)
    height, width = size
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
    if reference:
        cv2.setNumThreads(engine.threads or cv2.getNumThreads())
        impl = _upsample_reference(spec)
        run: Callable[[np.ndarray], np.ndarray] = impl.upsample
    else:
        run = Upscaler(spec, engine).upscale
    run(image)  # warm-up: first inference allocates and tunes
    started = time.perf_counter()
    for _ in range(repeats):
        run(image)
    elapsed = (time.perf_counter() - started) / repeats
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((elapsed * 1e6 / (height * width), peak_mb))


def bench_speed(
    spec: ModelSpec,
    engine: EngineSettings,
    tiles: Sequence[int],
    size: tuple[int, int],
    *,
    repeats: int = 2,
    with_upsample: bool = True,
) -> list[SpeedRow]:
    """µs per LR pixel and whole-process peak RSS for each tile size (0 = untiled), plus upsample()."""
    context = multiprocessing.get_context("spawn")
    plans = [(f"srd tile {tile}" if tile else "srd untiled", tile, False) for tile in tiles]
    if with_upsample and spec.format == "tensorflow" and spec.convention in LUMA_CONVENTIONS | {"edsr"}:
        plans.append(("upsample()", 0, True))
    rows = []
    for label, tile, reference in plans:
        settings = EngineSettings(tile=tile, tile_pad=engine.tile_pad, onnx_engine=engine.onnx_engine,
                                  chroma=engine.chroma, threads=engine.threads)
        queue: multiprocessing.Queue = context.Queue()
        child = context.Process(target=_measure, args=(spec, settings, size, repeats, reference, queue))
        child.start()
        child.join()
        if child.exitcode != 0:
            rows.append(SpeedRow(f"{label} (failed, exit {child.exitcode})", tile, float("nan"), float("nan")))
            continue
        us, rss = queue.get()
        rows.append(SpeedRow(label, tile, us, rss))
    return rows


def compare_speed(
    specs: Sequence[ModelSpec],
    engine: EngineSettings,
    tiles: Sequence[int],
    size: tuple[int, int],
    *,
    repeats: int = 2,
    rounds: int = 1,
) -> list[SpeedSummary]:
    """`bench_speed` for every model, in alternating rounds (each model once per round), so that load
    from elsewhere on a noisy machine falls on all the models alike."""
    samples: dict[tuple[str, str], list[SpeedRow]] = {}
    for _ in range(rounds):
        for spec in specs:
            for row in bench_speed(spec, engine, tiles, size, repeats=repeats):
                samples.setdefault((f"{spec.name} x{spec.scale}", row.method), []).append(row)
    return [SpeedSummary(model, method, [r.us_per_lr_pixel for r in rows], max(r.peak_rss_mb for r in rows))
            for (model, method), rows in samples.items()]
