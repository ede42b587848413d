"""The input/output conventions of OpenCV's `dnn_superres` models, kept exactly.

A zoo `.pb` must behave here as it does in `DnnSuperResImpl.upsample()`, so users get what they
expect from a file they downloaded:

- `edsr`: BGR float in 0–255 minus the DIV2K mean, NCHW; the mean is added back. srd's own
  ONNX models use this convention too.
- `espcn`, `fsrcnn`, `lapsrn`: the Y channel of OpenCV's YCrCb scaled to 0–1, one channel;
  Cr and Cb are resized separately.

Each convention turns a tile of integer pixels (uint8 or uint16, `max_value` 255 or 65535)
into the network's input blob and the network's output back into integer pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONVENTIONS = ("edsr", "espcn", "fsrcnn", "lapsrn")
LUMA_CONVENTIONS = frozenset({"espcn", "fsrcnn", "lapsrn"})
# BGR mean of DIV2K, as in OpenCV's dnn_superres.
DIV2K_BGR_MEAN = np.array([103.1545782, 111.561547, 114.35629928], dtype=np.float32)


@dataclass(frozen=True)
class LumaConvention:
    """One-channel models fed Y/`max_value`."""

    max_value: int
    dtype: np.dtype

    def to_blob(self, luma: np.ndarray) -> np.ndarray:
        return (luma.astype(np.float32) * np.float32(1.0 / self.max_value))[None, None]

    def from_blob(self, blob: np.ndarray) -> np.ndarray:
        luma = blob[0, 0] * np.float32(self.max_value)
        return np.rint(np.clip(luma, 0, self.max_value)).astype(self.dtype)


@dataclass(frozen=True)
class EdsrConvention:
    """Three-channel models fed BGR on the 0–255 scale minus the DIV2K mean."""

    max_value: int
    dtype: np.dtype

    def to_blob(self, bgr: np.ndarray) -> np.ndarray:
        scaled = bgr.astype(np.float32) * np.float32(255.0 / self.max_value) - DIV2K_BGR_MEAN
        return np.ascontiguousarray(scaled.transpose(2, 0, 1))[None]

    def from_blob(self, blob: np.ndarray) -> np.ndarray:
        bgr = (blob[0].transpose(1, 2, 0) + DIV2K_BGR_MEAN) * np.float32(self.max_value / 255.0)
        return np.rint(np.clip(bgr, 0, self.max_value)).astype(self.dtype)


def input_channels(convention: str) -> int:
    """How many channels a model of `convention` takes and gives back: Y alone, or BGR."""
    return 1 if convention in LUMA_CONVENTIONS else 3


def convention_for(name: str, dtype: np.dtype) -> LumaConvention | EdsrConvention:
    """The blob conversion for convention `name` on pixels of `dtype` (uint8 or uint16)."""
    max_value = int(np.iinfo(dtype).max)
    if name in LUMA_CONVENTIONS:
        return LumaConvention(max_value, np.dtype(dtype))
    if name == "edsr":
        return EdsrConvention(max_value, np.dtype(dtype))
    raise ValueError(f"unknown model convention {name!r} (choose from {', '.join(CONVENTIONS)})")
