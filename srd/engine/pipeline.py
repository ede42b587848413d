"""The processing pipeline: an ordered tuple of small stages built from a profile.

Stages are frozen dataclasses, so a profile crosses process boundaries as plain data and its
settings hash into a stable fingerprint. Each stage maps pixels to pixels and keeps their
channels (grey, BGR, BGRA) and depth (8 or 16 bit); the metadata travels around the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import cv2
import numpy as np

from srd.engine.conventions import CONVENTIONS
from srd.engine.cores import CoreShare
from srd.engine.ensemble import ENSEMBLE_SIZES
from srd.engine.modelcheck import check_model
from srd.engine.registry import ModelSpec, file_sha256, resolve_model
from srd.engine.upscaler import EngineSettings, Upscaler
from srd.errors import ModelError, ModelUnavailableError
from srd.fs.fileversion import FileVersion

# Bumped when a stage's algorithm changes, so the ledger reprocesses with the new behaviour.
PIPELINE_VERSION = 1
INTERPOLATIONS = {
    "area": cv2.INTER_AREA,
    "bicubic": cv2.INTER_CUBIC,
    "bilinear": cv2.INTER_LINEAR,
    "lanczos": cv2.INTER_LANCZOS4,
    "nearest": cv2.INTER_NEAREST,
}


class StageContext:
    """What stages need beyond their settings: model lookup, loaded models and the share of cores, per process.

    `cores` says how many tiles a job may run at once (default: one, today's single lane).
    """

    def __init__(self, engine: EngineSettings = EngineSettings(), model_dirs: Iterable[Path] = (),
                 cores: CoreShare | None = None) -> None:
        self.engine = engine
        self.model_dirs = tuple(model_dirs)
        self.cores = cores or CoreShare()
        self._upscalers: dict[ModelSpec, Upscaler] = {}
        self._hashes: dict[tuple[Path, FileVersion], str] = {}
        self._specs: dict[tuple[str, int | None, str | None], ModelSpec] = {}
        self._checked: set[ModelSpec] = set()  # specs `check` ran

    def resolve(self, model: str, scale: int | None, convention: str | None) -> ModelSpec:
        """The model a stage names, looked up once per context (manifests are read from disk)."""
        key = (model, scale, convention)
        if key not in self._specs:
            self._specs[key] = resolve_model(model, scale, extra_dirs=self.model_dirs, convention=convention)
        return self._specs[key]

    def upscaler(self, spec: ModelSpec) -> Upscaler:
        """The loaded model for `spec`, loaded once per process (and again when a reload pins new bytes)."""
        if spec not in self._upscalers:
            # The same model pinned to other bytes (a reload after its file was replaced): the old weights go.
            unpinned = replace(spec, expected_sha256=None)
            for stale in [known for known in self._upscalers if replace(known, expected_sha256=None) == unpinned]:
                del self._upscalers[stale]
            try:
                self.verify(spec)
                self._upscalers[spec] = Upscaler(spec, self.engine, self.cores)
            except OSError as exc:  # the file went between the stat and the read
                raise ModelUnavailableError(f"{spec.path}: {exc.strerror or exc}") from exc
            except ModelError as exc:
                raise ModelUnavailableError(str(exc)) from exc
        return self._upscalers[spec]

    def sha256(self, spec: ModelSpec) -> str:
        stat = spec.path.stat()
        key = (spec.path, FileVersion.of(stat))
        if key not in self._hashes:
            self._hashes[key] = file_sha256(spec.path)
        return self._hashes[key]

    def check(self, spec: ModelSpec) -> None:
        """Verify `spec`'s bytes, then run it once (`modelcheck`): for the parent process, before files meet it. A
        model several profiles or stages share is loaded and run once per context (its bytes verified each time)."""
        self.verify(spec)
        if spec not in self._checked:
            check_model(spec, self.engine)
            self._checked.add(spec)

    def verify(self, spec: ModelSpec) -> None:
        """Refuse a model whose bytes differ from what its manifest or catalogue promises, or (a model file given by
        path) from those srd checked and pinned (`Upscale.sha256`)."""
        if spec.expected_sha256 and self.sha256(spec) != spec.expected_sha256:
            why = ("replaced since srd checked it (reloading srd run, or running srd process again, checks and uses "
                   "the new file)" if spec.origin == "file" else
                   f"a corrupt or different file (a {spec.origin} model is known by its sha256: new weights need a "
                   "name of their own); 'srd models verify' checks all")
            raise ModelError(f"{spec.path}: sha256 {self.sha256(spec)} does not match the expected "
                             f"{spec.expected_sha256}: {why}")


def _as_channels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Split off alpha: stages that change colours leave transparency alone."""
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return pixels[:, :, :3], pixels[:, :, 3]
    return pixels, None


def _with_alpha(colour: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    return colour if alpha is None else np.dstack([colour, alpha])


@dataclass(frozen=True)
class LimitSize:
    """Shrink (never enlarge) images over `max_side` or `max_pixels` before upscaling.

    Guards time and memory on very large inputs; INTER_AREA avoids aliasing.
    """

    max_side: int | None = None
    max_pixels: int | None = None

    def problems(self) -> list[str]:
        if self.max_side is None and self.max_pixels is None:
            return ["needs max_side or max_pixels"]
        return [f"{name} must be positive" for name in ("max_side", "max_pixels") if (getattr(self, name) or 1) < 1]

    def apply(self, pixels: np.ndarray, context: StageContext) -> np.ndarray:
        height, width = pixels.shape[:2]
        factor = 1.0
        if self.max_side:
            factor = min(factor, self.max_side / max(height, width))
        if self.max_pixels:
            factor = min(factor, math.sqrt(self.max_pixels / (height * width)))
        if factor >= 1.0:
            return pixels
        size = (max(1, int(width * factor)), max(1, int(height * factor)))
        return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class Denoise:
    """Non-local means denoising; `strength` is the filter strength h on the 8-bit scale."""

    strength: float = 5.0
    colour_strength: float = 5.0
    template_window: int = 7
    search_window: int = 21

    def problems(self) -> list[str]:
        found = [f"{name} must not be negative" for name in ("strength", "colour_strength") if getattr(self, name) < 0]
        for name in ("template_window", "search_window"):
            if getattr(self, name) < 1 or getattr(self, name) % 2 == 0:
                found.append(f"{name} must be a positive odd number")
        return found

    def apply(self, pixels: np.ndarray, context: StageContext) -> np.ndarray:
        colour, alpha = _as_channels(pixels)
        if colour.dtype == np.uint8 and colour.ndim == 3:
            out = cv2.fastNlMeansDenoisingColored(
                colour, None, self.strength, self.colour_strength, self.template_window, self.search_window
            )
        else:
            # 16-bit needs the L1 norm; h scales with the value range.
            h = self.strength * (257 if colour.dtype == np.uint16 else 1)
            norm = cv2.NORM_L1 if colour.dtype == np.uint16 else cv2.NORM_L2
            planes = [colour] if colour.ndim == 2 else cv2.split(colour)
            done = [
                cv2.fastNlMeansDenoising(
                    p, h=[h], templateWindowSize=self.template_window, searchWindowSize=self.search_window,
                    normType=norm,
                )
                for p in planes
            ]
            out = done[0] if colour.ndim == 2 else cv2.merge(done)
        return _with_alpha(out, alpha)


@dataclass(frozen=True)
class Contrast:
    """CLAHE on lightness (the Y of YCrCb), leaving colours' hue and saturation alone."""

    clip_limit: float = 2.0
    grid: int = 8

    def problems(self) -> list[str]:
        return (["clip_limit must be positive"] if self.clip_limit <= 0 else []) + (
            ["grid must be at least 1"] if self.grid < 1 else []
        )

    def apply(self, pixels: np.ndarray, context: StageContext) -> np.ndarray:
        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.grid, self.grid))
        colour, alpha = _as_channels(pixels)
        if colour.ndim == 2:
            return _with_alpha(clahe.apply(colour), alpha)
        ycrcb = cv2.cvtColor(colour, cv2.COLOR_BGR2YCrCb)
        ycrcb[:, :, 0] = clahe.apply(np.ascontiguousarray(ycrcb[:, :, 0]))
        return _with_alpha(cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR), alpha)


@dataclass(frozen=True)
class Upscale:
    """Super-resolution by `scale` with `model` (a name like 'edsr-lite' or a model file path).

    A scale with no model of its own (e.g. 1.5) runs the smallest available larger model scale
    and then area-resamples to the exact size. `ensemble` above 1 averages that many flipped/rotated runs of
    every tile (`srd.engine.ensemble`): more quality for that many times the time.

    `sha256` is not a config key: `Pipeline.pinned` sets it to the bytes of the model file that were checked and
    fingerprinted, and a worker then runs only a file with those bytes (`StageContext.verify`). A model replaced
    after srd checked it is refused rather than run under a fingerprint that names other weights, and a worker
    that loaded the old file loads again after a reload pins the new one.
    """

    model: str = "edsr-lite"
    scale: float = 2
    convention: str | None = None
    ensemble: int = 1
    sha256: str | None = None

    def problems(self) -> list[str]:
        found = [] if 1 <= self.scale <= 8 else ["scale must be between 1 and 8"]
        if self.convention is not None and self.convention not in CONVENTIONS:
            found.append(f"convention must be one of {', '.join(CONVENTIONS)}")
        if self.ensemble not in ENSEMBLE_SIZES:
            found.append(f"ensemble must be one of {', '.join(map(str, ENSEMBLE_SIZES))}")
        return found

    def model_scale(self) -> int:
        return max(2, math.ceil(self.scale))

    def spec(self, context: StageContext) -> ModelSpec:
        """The model this stage runs, choosing the smallest model scale that covers `scale`."""
        wanted = self.model_scale()
        last_error: ModelError | None = None
        for model_scale in range(wanted, 9):
            try:
                spec = context.resolve(self.model, model_scale, self.convention)
                return spec if self.sha256 is None else replace(spec, expected_sha256=self.sha256)
            except ModelError as exc:
                last_error = last_error or exc
                if self.scale == wanted:  # an integer scale needs its own model
                    break
        assert last_error is not None
        raise last_error

    def apply(self, pixels: np.ndarray, context: StageContext) -> np.ndarray:
        spec = self.spec(context)
        out = context.upscaler(spec).upscale(pixels, self.ensemble)
        if spec.scale == self.scale:
            return out
        height, width = pixels.shape[:2]
        size = (round(width * self.scale), round(height * self.scale))
        return cv2.resize(out, size, interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class Resize:
    """Plain resampling to a factor, a width, a height, or to fit a width×height box."""

    scale: float | None = None
    width: int | None = None
    height: int | None = None
    interpolation: str = "auto"

    def problems(self) -> list[str]:
        found = []
        if self.scale is None and self.width is None and self.height is None:
            found.append("needs scale, width or height")
        if self.scale is not None and (self.width is not None or self.height is not None):
            found.append("give either scale or width/height, not both")
        found += [
            f"{name} must be positive" for name in ("scale", "width", "height") if (getattr(self, name) or 1) <= 0
        ]
        if self.interpolation != "auto" and self.interpolation not in INTERPOLATIONS:
            found.append(f"interpolation must be auto or one of {', '.join(INTERPOLATIONS)}")
        return found

    def apply(self, pixels: np.ndarray, context: StageContext) -> np.ndarray:
        height, width = pixels.shape[:2]
        if self.scale is not None:
            factor = self.scale
        else:
            factors = [self.width / width if self.width else None, self.height / height if self.height else None]
            factor = min(f for f in factors if f is not None)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        if size == (width, height):
            return pixels
        method = self.interpolation
        if method == "auto":
            method = "area" if factor < 1 else "bicubic"
        return cv2.resize(pixels, size, interpolation=INTERPOLATIONS[method])


@dataclass(frozen=True)
class Sharpen:
    """Unsharp mask: add `amount` × (image − blurred image) where the difference exceeds `threshold`."""

    amount: float = 0.5
    radius: float = 1.0
    threshold: int = 0

    def problems(self) -> list[str]:
        found = ["amount must not be negative"] if self.amount < 0 else []
        found += ["radius must be positive"] if self.radius <= 0 else []
        return found + (["threshold must not be negative"] if self.threshold < 0 else [])

    def apply(self, pixels: np.ndarray, context: StageContext) -> np.ndarray:
        colour, alpha = _as_channels(pixels)
        source = colour.astype(np.float32)
        detail = source - cv2.GaussianBlur(source, (0, 0), self.radius)
        if self.threshold:
            detail[np.abs(detail) < self.threshold] = 0
        top = np.iinfo(colour.dtype).max
        sharpened = np.rint(np.clip(source + self.amount * detail, 0, top)).astype(colour.dtype)
        return _with_alpha(sharpened, alpha)


STAGES: dict[str, type] = {
    "limit_size": LimitSize,
    "denoise": Denoise,
    "contrast": Contrast,
    "upscale": Upscale,
    "resize": Resize,
    "sharpen": Sharpen,
}
Stage = LimitSize | Denoise | Contrast | Upscale | Resize | Sharpen
# Stage fields srd sets itself, never read from a config.
NOT_CONFIGURABLE = ("sha256",)


def stage_name(stage: Stage) -> str:
    return next(name for name, kind in STAGES.items() if isinstance(stage, kind))


@dataclass(frozen=True)
class Pipeline:
    """An ordered tuple of stages; `run` applies them in order."""

    stages: tuple[Stage, ...] = field(default_factory=tuple)

    def run(self, pixels: np.ndarray, context: StageContext) -> np.ndarray:
        for stage in self.stages:
            pixels = stage.apply(pixels, context)
        return pixels

    def models(self, context: StageContext) -> list[ModelSpec]:
        return [stage.spec(context) for stage in self.stages if isinstance(stage, Upscale)]

    def pinned(self, context: StageContext) -> Pipeline:
        """This pipeline with each model pinned to the bytes its file has now (`Upscale.sha256`)."""
        return Pipeline(tuple(replace(stage, sha256=context.sha256(stage.spec(context)))
                              if isinstance(stage, Upscale) else stage for stage in self.stages))

    def fingerprint(self, context: StageContext) -> str:
        """Stable hash of what determines the output: stage settings and model bytes.

        A model is identified by its sha256, not its path, so moving a model folder changes
        nothing while swapping the weights means deliberate reprocessing.
        """
        described = []
        for stage in self.stages:
            settings = {f.name: getattr(stage, f.name) for f in fields(stage)}
            if isinstance(stage, Upscale):
                spec = stage.spec(context)
                settings["model"] = stage.sha256 or context.sha256(spec)
                settings["model_scale"] = spec.scale
                settings["convention"] = spec.convention
                del settings["sha256"]  # the pin: the model's bytes are named just above
                if stage.ensemble == 1:
                    del settings["ensemble"]  # added later: profiles without it keep the fingerprints they had
            described.append({stage_name(stage): settings})
        # Tiling, threads and the ONNX engine change speed, not the picture (beyond float noise).
        engine = {"chroma": context.engine.chroma}
        blob = json.dumps({"version": PIPELINE_VERSION, "stages": described, "engine": engine}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
