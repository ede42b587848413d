"""Quality benchmark that prints figures: PSNR/SSIM-Y (docs/design.md §10 protocol); speed is `speed.py`.

Every quality run includes bicubic in the same run, so a reader compares like with like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

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
