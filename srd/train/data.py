"""Training data: HR images with cached MATLAB-bicubic LR copies, sampled as random aligned patches.

LR images are made once per scale from the whole (modcropped) HR image and rounded to uint8, exactly like
the benchmark inputs, then cached on disk; a training patch is then only two crops. Whole-image
downscaling (rather than per patch) keeps the antialiasing kernel's border handling identical to test time.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from srd.imaging.imageheader import IMAGE_SUFFIXES
from srd.quality.bicubic import imresize_uint8, make_lr, output_size
from srd.quality.degrade import PhotoMix
from srd.quality.metrics import crop_to_multiple
from srd.train.model import DIV2K_MEAN_BGR

log = logging.getLogger(__name__)

# Hard-patch candidates lie on a grid of this pitch (LR pixels): fine enough to centre on any texture.
HARD_PATCH_STRIDE = 8


@dataclass(frozen=True)
class Pair:
    """One HR image (BGR uint8, modcropped) and its ×s LR version."""

    name: str
    hr: np.ndarray
    lr: np.ndarray


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load_pairs(root: Path, scale: int, cache: Path, downscales: Sequence[float] = ()) -> list[Pair]:
    """Every image under ``root`` with its LR copy, plus one pair per factor in ``downscales`` made from the
    image first shrunk by that factor (MATLAB bicubic): scale augmentation, as in VDSR. Shrinking packs more
    texture into each patch, closer to the sampling limit. Derived images are computed on first use and
    cached under ``cache`` (`build_cache` makes them ahead, in parallel).
    """
    pairs = [pair for path in list_images(root) for pair in _image_pairs(path, root, scale, cache, tuple(downscales))]
    log.info("loaded %d training images (%d with downscales %s) for x%d from %s",
             len(pairs) // (1 + len(downscales)), len(pairs), list(downscales), scale, root)
    return pairs


def build_cache(root: Path, scale: int, cache: Path, downscales: Sequence[float] = (), workers: int = 1) -> None:
    """Make every derived image `load_pairs` would read, with ``workers`` processes."""
    paths = list_images(root)
    job = partial(_cache_image, root=root, scale=scale, cache=cache, downscales=tuple(downscales))
    with multiprocessing.Pool(workers) as pool:
        pool.map(job, paths, chunksize=4)
    log.info("cached x%d copies (downscales %s) of %d training images from %s", scale, list(downscales),
             len(paths), root)


def _cache_image(path: Path, root: Path, scale: int, cache: Path, downscales: tuple[float, ...]) -> None:
    _image_pairs(path, root, scale, cache, downscales)  # the arrays stay in the worker: only the files matter


def _image_pairs(path: Path, root: Path, scale: int, cache: Path, downscales: tuple[float, ...]) -> list[Pair]:
    """The pairs `load_pairs` makes of one image: itself, then one per downscale factor."""
    original = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if original is None:
        raise OSError(f"cannot decode training image {path}")
    rel = path.relative_to(root).with_suffix(".png")
    pairs = [_pair(str(rel), original, cache / f"x{scale}" / rel, scale)]
    for factor in downscales:
        folder = cache / f"down{factor:g}"
        size = (output_size(original.shape[0], factor), output_size(original.shape[1], factor))
        shrunk = _cached(folder / rel, size, partial(imresize_uint8, original, factor))
        pairs.append(_pair(f"{rel}@{factor:g}", shrunk, folder / f"x{scale}" / rel, scale))
    return pairs


def _pair(name: str, image: np.ndarray, lr_path: Path, scale: int) -> Pair:
    hr = crop_to_multiple(image, scale)
    size = (hr.shape[0] // scale, hr.shape[1] // scale)
    return Pair(name, hr, _cached(lr_path, size, lambda: make_lr(hr, scale)))


def _cached(path: Path, size: tuple[int, int], make: Callable[[], np.ndarray]) -> np.ndarray:
    """The image cached at ``path`` if it has ``size`` (height, width); else ``make()``, cached atomically."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.exists() else None
    if image is None or image.shape[:2] != size:
        image = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Per process: runs started side by side on an empty cache write the same files at once.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
        cv2.imwrite(str(tmp), image)
        tmp.replace(path)
    return image


def hard_patches(pairs: list[Pair], scale: int, patch: int, fraction: float) -> np.ndarray:
    """The LR corners ``(pair index, y, x)`` of the ``fraction`` of grid patches that bicubic upscaling
    reconstructs worst (largest squared error in grey), ranked across all images.

    Flat sky and walls teach a model little; sampling where bicubic fails puts the training on edges and
    texture (the idea of SamplingAug, Wang et al., BMVC 2021).
    """
    corners, errors = [], []
    for index, pair in enumerate(pairs):
        hr = cv2.cvtColor(pair.hr, cv2.COLOR_BGR2GRAY).astype(np.float32)
        up = cv2.resize(cv2.cvtColor(pair.lr, cv2.COLOR_BGR2GRAY), (hr.shape[1], hr.shape[0]),
                        interpolation=cv2.INTER_CUBIC).astype(np.float32)
        sums = cv2.integral((hr - up) ** 2, sdepth=cv2.CV_64F)
        ys = np.arange(0, pair.lr.shape[0] - patch + 1, HARD_PATCH_STRIDE)
        xs = np.arange(0, pair.lr.shape[1] - patch + 1, HARD_PATCH_STRIDE)
        y, x = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
        y0, x0, y1, x1 = y * scale, x * scale, (y + patch) * scale, (x + patch) * scale
        errors.append(sums[y1, x1] - sums[y0, x1] - sums[y1, x0] + sums[y0, x0])
        corners.append(np.stack([np.full_like(y, index), y, x], axis=1))
    ranked = np.argsort(-np.concatenate(errors), kind="stable")
    keep = ranked[: max(1, round(fraction * len(ranked)))]
    return np.concatenate(corners)[keep].astype(np.int32)


class PatchSampler:
    """Random aligned LR/HR patch batches with the 8 flips/rotations, from a seeded numpy Generator.

    With ``hard_fraction`` below 1 the patches come only from the hardest grid patches (`hard_patches`);
    otherwise from anywhere, uniformly. With ``photo_mix``, each LR patch is made from its HR patch by a fresh
    draw of real-world degradations (`PhotoMix`) instead of being cut from the clean LR image. The generator's
    state is part of a training checkpoint, so a resumed run draws the same batches it would have drawn
    without the interruption.
    """

    def __init__(self, pairs: list[Pair], scale: int, patch: int, seed: int, hard_fraction: float = 1.0,
                 photo_mix: PhotoMix | None = None) -> None:
        self.pairs = [p for p in pairs if min(p.lr.shape[:2]) >= patch]
        if not self.pairs:
            raise ValueError(f"no training image is at least {patch} LR pixels on each side")
        self.scale = scale
        self.patch = patch
        self.rng = np.random.default_rng(seed)
        self.hard = hard_patches(self.pairs, scale, patch, hard_fraction) if hard_fraction < 1 else None
        self.photo_mix = photo_mix

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (lr, hr) float32 NCHW batches, BGR 0–255 minus the DIV2K mean (the "edsr" convention)."""
        s, p = self.scale, self.patch
        lrs, hrs = [], []
        for pick in self.rng.integers(0, len(self.pairs if self.hard is None else self.hard), size):
            if self.hard is None:
                pair = self.pairs[pick]
                y = int(self.rng.integers(0, pair.lr.shape[0] - p + 1))
                x = int(self.rng.integers(0, pair.lr.shape[1] - p + 1))
            else:
                index, y, x = (int(v) for v in self.hard[pick])
                pair = self.pairs[index]
            hr = pair.hr[y * s : (y + p) * s, x * s : (x + p) * s]
            if self.photo_mix is None:
                lr = pair.lr[y : y + p, x : x + p]
            else:
                lr = self.photo_mix.draw(self.rng).apply(hr, s, self.rng)
            flip_h, flip_v, transpose = self.rng.integers(0, 2, 3)
            if flip_h:
                lr, hr = lr[:, ::-1], hr[:, ::-1]
            if flip_v:
                lr, hr = lr[::-1], hr[::-1]
            if transpose:
                lr, hr = lr.transpose(1, 0, 2), hr.transpose(1, 0, 2)
            lrs.append(lr)
            hrs.append(hr)
        return to_model_space(np.stack(lrs)), to_model_space(np.stack(hrs))

    def state(self) -> Mapping[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state


def to_model_space(bgr: np.ndarray) -> np.ndarray:
    """NHWC or HWC uint8 BGR → NCHW float32 minus the DIV2K mean."""
    batch = bgr if bgr.ndim == 4 else bgr[None]
    f = batch.astype(np.float32) - np.asarray(DIV2K_MEAN_BGR, dtype=np.float32)
    return np.ascontiguousarray(f.transpose(0, 3, 1, 2))


def from_model_space(out: np.ndarray) -> np.ndarray:
    """First image of an NCHW model output → HWC uint8 BGR (add the mean back, clip, round)."""
    img = out[0].transpose(1, 2, 0) + np.asarray(DIV2K_MEAN_BGR, dtype=np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def load_bench(root: Path, scale: int) -> list[Pair]:
    """A benchmark set (e.g. ../shared/datasets/bench/Set5) with its MATLAB-made LR files.

    Raises:
        ValueError: it holds no image (a wrong --bench-dir would otherwise score every evaluation NaN).
    """
    pairs = []
    for path in sorted(root.glob("*.png")):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot decode benchmark image {path}")
        hr = crop_to_multiple(image, scale)
        lr = cv2.imread(str(root / "LR_bicubic_matlab" / f"x{scale}" / path.name), cv2.IMREAD_COLOR)
        if lr is None:
            raise OSError(f"missing LR file for {path} at x{scale}")
        pairs.append(Pair(path.stem, hr, lr))
    if not pairs:
        raise ValueError(f"no benchmark images (*.png, with LR_bicubic_matlab/x{scale}/ beside them) in {root}")
    return pairs
