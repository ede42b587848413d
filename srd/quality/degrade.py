"""What happens to a photo before srd sees it, made on purpose: the benchmark's JPEG protocol, and the random
mix of real-world degradations the photo models learn to undo.

Photos reach a NAS JPEG-compressed (4:2:0 chroma, as cameras and OpenCV write them), often resized by some
software, sometimes noisy and slightly soft. A model trained only on clean bicubic inputs reads JPEG blocks and
noise as detail and sharpens them; one trained on this mix learns to remove them instead.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import cv2
import numpy as np

from srd.quality.bicubic import make_lr

# How each resampling kernel shrinks: "bicubic" is the antialiased MATLAB kernel (what photo software does),
# the other two are OpenCV's, bilinear without antialiasing (what a quick thumbnailer does).
RESAMPLERS = ("bicubic", "bilinear", "area")
_OPENCV_RESAMPLERS = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}


def jpeg_roundtrip(pixels: np.ndarray, quality: int, *, chroma_420: bool = True) -> np.ndarray:
    """`pixels` (BGR uint8) saved as a JPEG of `quality` and decoded again; 4:2:0 chroma (OpenCV's default) or
    4:4:4."""
    sampling = cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420 if chroma_420 else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality,
                                                cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {pixels.shape} image as JPEG")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ValueError(f"OpenCV could not decode its own JPEG of a {pixels.shape} image")
    return decoded


@dataclass(frozen=True)
class BenchDegradation:
    """The benchmark's degraded protocol: the standard MATLAB-bicubic LR input, then saved as a JPEG of
    `jpeg_quality` with OpenCV's defaults (4:2:0). PSNR is still measured against the clean HR image."""

    jpeg_quality: int

    @classmethod
    def parse(cls, text: str) -> BenchDegradation:
        """``jpeg:Q`` with Q from 1 to 100.

        Raises:
            ValueError: anything else, with what is accepted.
        """
        kind, _, value = text.partition(":")
        if kind != "jpeg" or not value.isdigit() or not 1 <= int(value) <= 100:
            raise ValueError(f"unknown degradation {text!r}: use jpeg:Q with a JPEG quality Q from 1 to 100")
        return cls(int(value))

    @property
    def label(self) -> str:
        return f"JPEG q{self.jpeg_quality} 4:2:0"

    def apply(self, lr: np.ndarray) -> np.ndarray:
        return jpeg_roundtrip(lr, self.jpeg_quality)


@dataclass(frozen=True)
class PhotoDegradation:
    """One draw from `PhotoMix`: the steps that turn an HR patch into its LR input, in this order.

    Attributes:
        blur_sigma: Gaussian blur before shrinking, in LR pixels (0: none): a soft lens or a camera's own
            processing.
        resample: How it is shrunk by the scale (one of `RESAMPLERS`).
        noise_sigma: Gaussian noise added after shrinking, in grey levels (0: none).
        grey_noise: The same noise on every channel (luminance noise) rather than each its own (chroma noise).
        jpeg_quality: Saved as a JPEG of this quality last (None: not compressed).
        chroma_420: The JPEG halves the chroma resolution (4:2:0) as cameras do, else keeps it (4:4:4).
    """

    blur_sigma: float
    resample: str
    noise_sigma: float
    grey_noise: bool
    jpeg_quality: int | None
    chroma_420: bool

    def apply(self, hr: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
        """The LR input for `hr` (BGR uint8, sides multiples of `scale`); `rng` draws the noise."""
        image = hr
        if self.blur_sigma > 0:
            image = cv2.GaussianBlur(image, (0, 0), self.blur_sigma * scale)
        if self.resample == "bicubic":
            lr = make_lr(image, scale)
        else:
            size = (image.shape[1] // scale, image.shape[0] // scale)
            lr = cv2.resize(image, size, interpolation=_OPENCV_RESAMPLERS[self.resample])
        if self.noise_sigma > 0:
            shape = (*lr.shape[:2], 1) if self.grey_noise else lr.shape
            noise = rng.normal(0.0, self.noise_sigma, shape).astype(np.float32)
            lr = np.clip(np.rint(lr.astype(np.float32) + noise), 0, 255).astype(np.uint8)
        if self.jpeg_quality is not None:
            lr = jpeg_roundtrip(lr, self.jpeg_quality, chroma_420=self.chroma_420)
        return lr


@dataclass(frozen=True)
class PhotoMix:
    """The distribution photo models are trained on: each step happens with its probability, with a strength
    drawn uniformly from its range. Mild on purpose: the model should restore, not repaint.

    ``clean_probability`` is the share of patches made exactly as the clean protocol makes them (MATLAB bicubic,
    nothing else): without them a photo model learns to smooth every input, clean ones included.
    """

    clean_probability: float = 0.0
    blur_probability: float = 0.4
    blur_sigma: tuple[float, float] = (0.2, 0.8)
    noise_probability: float = 0.4
    noise_sigma: tuple[float, float] = (1.0, 8.0)
    grey_noise_probability: float = 0.4
    jpeg_probability: float = 0.9
    jpeg_quality: tuple[int, int] = (30, 95)
    chroma_420_probability: float = 0.8

    @classmethod
    def parse(cls, text: str) -> PhotoMix:
        """The default mix with some fields changed: ``""`` or ``field=value,...``, a range as ``low-high``
        (``clean_probability=0.3,jpeg_quality=50-95``).

        Raises:
            ValueError: an unknown or repeated field or a value out of range, naming it.
        """
        defaults = cls()
        known = [f.name for f in fields(cls)]
        changes: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            if name not in known:
                raise ValueError(f"unknown photo mix field {name!r}: the fields are {', '.join(known)}")
            if name in changes:  # the recorded command must say one thing per field
                raise ValueError(f"photo mix field {name} is given twice")
            kind = int if name == "jpeg_quality" else float
            is_range = isinstance(getattr(defaults, name), tuple)
            try:
                parsed: object = tuple(kind(v) for v in value.split("-", 1)) if is_range else kind(value)
            except ValueError:
                raise ValueError(f"photo mix field {name} needs {'a range low-high' if is_range else 'a number'}, "
                                 f"not {value!r}") from None
            if isinstance(parsed, tuple) and (len(parsed) != 2 or parsed[0] > parsed[1]):
                raise ValueError(f"photo mix field {name} needs a range low-high, not {value!r}")
            changes[name] = parsed
        mix = replace(defaults, **changes)
        mix.check()
        return mix

    def check(self) -> None:
        """Raises ValueError for a probability outside 0–1, a negative strength or a JPEG quality outside 1–100."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_probability") and not 0 <= value <= 1:
                raise ValueError(f"photo mix field {f.name} is a probability from 0 to 1, not {value}")
            if f.name.endswith("_sigma") and value[0] < 0:
                raise ValueError(f"photo mix field {f.name} cannot be negative: {value}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"photo mix JPEG qualities lie from 1 to 100, not {self.jpeg_quality}")

    def describe(self) -> str:
        """The mix in words, as a model's provenance records it."""
        clean = ""
        if self.clean_probability > 0:
            clean = f"{self.clean_probability:g} of patches clean MATLAB bicubic, the rest: "
        return (f"photo mix: {clean}blur sigma {self.blur_sigma[0]:g}-{self.blur_sigma[1]:g} LR px "
                f"(p {self.blur_probability:g}), shrink by bicubic (antialiased), bilinear or area, Gaussian noise "
                f"sigma {self.noise_sigma[0]:g}-{self.noise_sigma[1]:g} (p {self.noise_probability:g}, luminance-only "
                f"p {self.grey_noise_probability:g}), JPEG q{self.jpeg_quality[0]}-{self.jpeg_quality[1]} "
                f"(p {self.jpeg_probability:g}, 4:2:0 p {self.chroma_420_probability:g})")

    def draw(self, rng: np.random.Generator) -> PhotoDegradation:
        """One set of steps; the same `rng` state always gives the same draw."""
        if rng.random() < self.clean_probability:
            return PhotoDegradation(0.0, "bicubic", 0.0, False, None, False)
        blur = float(rng.uniform(*self.blur_sigma)) if rng.random() < self.blur_probability else 0.0
        resample = RESAMPLERS[int(rng.integers(len(RESAMPLERS)))]
        noise = float(rng.uniform(*self.noise_sigma)) if rng.random() < self.noise_probability else 0.0
        grey = bool(rng.random() < self.grey_noise_probability)
        low, high = self.jpeg_quality
        quality = int(rng.integers(low, high + 1)) if rng.random() < self.jpeg_probability else None
        return PhotoDegradation(blur, resample, noise, grey, quality, bool(rng.random() < self.chroma_420_probability))
