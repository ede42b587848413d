"""Run a super-resolution model on any picture srd accepts, tile by tile.

`DnnSuperResImpl.upsample()` is not used: it has no tiling (memory grows with the image), rejects
alpha and 16-bit, and always resizes chroma bilinearly. Its conventions are kept (see
`conventions.py`), so the same `.pb` gives the same luma.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from srd.engine.conventions import LUMA_CONVENTIONS, convention_for
from srd.engine.cores import CoreShare
from srd.engine.ensemble import run_ensembled
from srd.engine.registry import ModelSpec
from srd.engine.runtime import Runtime, Session
from srd.engine.runtime_choice import open_runtime
from srd.engine.tiling import upscale_tiled
from srd.errors import ModelError

CHROMA_INTERPOLATIONS = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR}


@dataclass(frozen=True)
class EngineSettings:
    """How inference runs; plain data so it can cross process boundaries.

    Attributes:
        tile: core tile side in LR pixels; 0 runs the whole image at once (memory grows with it).
        tile_pad: LR pixels of context around each tile.
        onnx_engine: OpenCV DNN engine for ONNX models ('classic' measured fastest here).
        chroma: how luma-only models' Cr/Cb are enlarged; 'bilinear' reproduces upsample().
        threads: inference threads of each session (None leaves the runtime's default); with tiles run in
            parallel (see `CoreShare`) these are the threads of each tile.
        runtime: 'opencv', 'onnxruntime' or 'auto' (the fastest installed, by a measured table).
        device: 'auto', 'cpu', 'cuda' or 'cuda:N' (CUDA through onnxruntime; CPU where it can't be had).
    """

    tile: int = 192
    tile_pad: int = 16
    onnx_engine: str = "classic"
    chroma: str = "bicubic"
    threads: int | None = None
    runtime: str = "auto"
    device: str = "auto"


class Upscaler:
    """A loaded model plus the settings to apply it to whole pictures.

    Tiles run on as many lanes at once as `cores` allows, each lane with a session of its own; sessions
    are opened on first use and kept, so a process holds at most `cores.cores` of them (each one a copy
    of the model in memory).
    """

    def __init__(self, spec: ModelSpec, settings: EngineSettings = EngineSettings(),
                 cores: CoreShare | None = None) -> None:
        if settings.threads is not None:
            cv2.setNumThreads(settings.threads)
        self.spec = spec
        self.settings = settings
        self.cores = cores or CoreShare()
        self._runtime = open_runtime(spec, settings.runtime, settings.device, settings.onnx_engine)
        self._sessions: list[Session] = [self._runtime.open_session(settings.threads)]
        self._opening = threading.Lock()

    @property
    def runtime(self) -> Runtime:
        """The runtime the model was loaded in (as chosen: `auto` and device fallbacks resolved)."""
        return self._runtime

    def _session(self, lane: int) -> Session:
        with self._opening:
            while len(self._sessions) <= lane:
                self._sessions.append(self._runtime.open_session(self.settings.threads))
            return self._sessions[lane]

    @property
    def scale(self) -> int:
        return self.spec.scale

    def upscale(self, pixels: np.ndarray, ensemble: int = 1) -> np.ndarray:
        """Upscale grey, BGR or BGRA pixels (uint8 or uint16), keeping channels and depth; with `ensemble`
        above 1, each tile is the mean of that many flipped/rotated runs (`srd.engine.ensemble`).

        Alpha is not seen by the model: it is enlarged with bicubic interpolation, which keeps
        soft edges soft and never invents colour.
        """
        if pixels.ndim == 3 and pixels.shape[2] == 4:
            colour = self.upscale(pixels[:, :, :3], ensemble)
            alpha = cv2.resize(pixels[:, :, 3], colour.shape[1::-1], interpolation=cv2.INTER_CUBIC)
            return np.dstack([colour, alpha])
        if self.spec.convention in LUMA_CONVENTIONS:
            return self._upscale_luma_model(pixels, ensemble)
        return self._upscale_colour_model(pixels, ensemble)

    def _upscale_luma_model(self, pixels: np.ndarray, ensemble: int) -> np.ndarray:
        if pixels.ndim == 2:
            return self._run(pixels, ensemble)
        ycrcb = cv2.cvtColor(pixels, cv2.COLOR_BGR2YCrCb)
        luma = self._run(np.ascontiguousarray(ycrcb[:, :, 0]), ensemble)
        size = luma.shape[1::-1]
        interpolation = CHROMA_INTERPOLATIONS[self.settings.chroma]
        chroma = [cv2.resize(np.ascontiguousarray(ycrcb[:, :, channel]), size, interpolation=interpolation)
                  for channel in (1, 2)]
        # One full-size colour image, converted in place: at 108 MP (x3 of a 12 MP photo) `np.dstack` and a
        # second image for the conversion cost 3.3 s and 650 MB more than `merge` and an in-place conversion.
        merged = cv2.merge([luma, *chroma])
        return cv2.cvtColor(merged, cv2.COLOR_YCrCb2BGR, dst=merged)

    def _upscale_colour_model(self, pixels: np.ndarray, ensemble: int) -> np.ndarray:
        if pixels.ndim == 2:
            colour = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
            return cv2.cvtColor(self._run(colour, ensemble), cv2.COLOR_BGR2GRAY)
        return self._run(pixels, ensemble)

    def _run(self, source: np.ndarray, ensemble: int) -> np.ndarray:
        convention = convention_for(self.spec.convention, source.dtype)
        scale = self.spec.scale
        target = np.empty((source.shape[0] * scale, source.shape[1] * scale, *source.shape[2:]), source.dtype)

        def run_tile(tile: np.ndarray, lane: int) -> np.ndarray:
            out = run_ensembled(self._session(lane).run, convention.to_blob(tile), ensemble)
            expected = (tile.shape[0] * scale, tile.shape[1] * scale)
            if out.shape[2:] != expected:
                raise ModelError(
                    f"{self.spec.path.name}: output {out.shape[2]}x{out.shape[3]} for a "
                    f"{tile.shape[0]}x{tile.shape[1]} input is not x{scale}"
                )
            return convention.from_blob(out)

        widest = upscale_tiled(source, target, scale, run_tile, tile=self.settings.tile, pad=self.settings.tile_pad,
                               lanes=self.cores.lanes, most_lanes=self.cores.cores)
        self.cores.note(widest)
        return target
