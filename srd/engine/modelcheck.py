"""Run a model once on a small input where it is chosen, before any file meets it.

A model that fails only inside the workers fails every file it is given and moves them all to `failed/`,
each with the same reason. So the daemon (at start and on each reload) and `srd process` (before touching a
file) check each model they will use: it must load in the configured runtime, take the input its convention
makes (one channel of Y, or three of BGR) and give back as many channels at `scale` times the size. That one
run catches a corrupt or truncated file with no manifest to check it against, a `--convention` the network
contradicts and a file whose true scale is not the one its name or `--scale` says.
"""

from __future__ import annotations

import cv2
import numpy as np

from srd.engine.conventions import input_channels
from srd.engine.registry import ModelSpec
from srd.engine.runtime_choice import open_runtime
from srd.engine.upscaler import EngineSettings
from srd.errors import ModelError

# Small enough to cost a few milliseconds with any model; big enough for every zoo network's receptive field.
PROBE_SIDE = 16
_GIST_CHARS = 300


def check_model(spec: ModelSpec, engine: EngineSettings) -> None:
    """Load `spec` as `engine` would (on the CPU) and run it once on a blank `PROBE_SIDE`-square input.

    Raises:
        ModelError: the runtime can't load it, it fails on its convention's input, or its output has other
            channels or another scale than `spec` says.
    """
    runtime = open_runtime(spec, engine.runtime, "cpu", engine.onnx_engine)
    channels = input_channels(spec.convention)
    log_level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its shape errors come back in the message
    try:
        out = runtime.open_session().run(np.zeros((1, channels, PROBE_SIDE, PROBE_SIDE), np.float32))
    except Exception as exc:  # cv2.error, or onnxruntime's own exception types
        raise ModelError(
            f"{spec.path}: fails on a {channels}-channel input, which its convention {spec.convention!r} "
            f"feeds it ({_gist(exc)}); is that convention right for this network?"
        ) from exc
    finally:
        cv2.utils.logging.setLogLevel(log_level)
    _check_output(spec, channels, out.shape)


def _check_output(spec: ModelSpec, channels: int, shape: tuple[int, ...]) -> None:
    expected = (1, channels, PROBE_SIDE * spec.scale, PROBE_SIDE * spec.scale)
    if tuple(shape) == expected:
        return
    if len(shape) != 4:
        raise ModelError(f"{spec.path}: gives a {len(shape)}-dimensional output, not an image")
    if shape[1] != channels:
        raise ModelError(f"{spec.path}: gives {shape[1]} channel(s) for {channels}; convention "
                         f"{spec.convention!r} expects the same number back")
    height, width = shape[2:]
    true_scale = height / PROBE_SIDE
    told = f"x{true_scale:g}" if height == width else f"{height}x{width} from {PROBE_SIDE}x{PROBE_SIDE}"
    raise ModelError(f"{spec.path}: upscales {told}, not x{spec.scale} as it is chosen for")


def _gist(exc: Exception) -> str:
    """A library's error on one line (onnxruntime's span several), cut to a readable length."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= _GIST_CHARS else text[: _GIST_CHARS - 1] + "…"
