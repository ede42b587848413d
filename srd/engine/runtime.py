"""Inference runtimes: what runs one model on one blob. The tiling and colour handling around it are the
`Upscaler`'s, the same for every runtime.

A `Runtime` is a loaded model that opens `Session`s; a session runs one NCHW float32 blob at a time and is
used by one thread at a time (an OpenCV `Net` is not thread-safe), so running tiles in parallel takes one
session per thread. `open_session(threads)` gives the session that many threads of its own where the library
allows it: onnxruntime per session, OpenCV only per process (`cv2.setNumThreads`, the last call wins).
The runtimes: `OpenCvRuntime` here (the default, no dependency beyond OpenCV) and `OnnxRuntime`
(`onnx_runtime.py`); `runtime_choice.open_runtime` picks one.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np

from srd.engine.registry import ModelSpec, require_model_file
from srd.errors import ModelError

ONNX_ENGINES = {"classic": cv2.dnn.ENGINE_CLASSIC, "new": cv2.dnn.ENGINE_NEW, "auto": cv2.dnn.ENGINE_AUTO}


class Session(Protocol):
    """Runs the model on one blob; one thread at a time."""

    def run(self, blob: np.ndarray) -> np.ndarray:
        """The model's output for an NCHW float32 `blob`."""
        ...


class Runtime(Protocol):
    """A model loaded for one inference library."""

    name: str
    device: str

    def open_session(self, threads: int | None = None) -> Session:
        """A session of its own for the calling thread, running on `threads` threads (None: the library's
        default)."""
        ...


def _register_zoo_layers() -> None:
    """Make the zoo graphs' DepthToSpace loadable.

    Their DepthToSpace nodes carry no `blocksize`, which OpenCV's built-in layer requires; creating
    a `DnnSuperResImpl` registers dnn_superres's own DepthToSpace (it infers the block size from
    the channel count) for the whole process.
    """
    cv2.dnn_superres.DnnSuperResImpl.create()


def load_net(spec: ModelSpec, onnx_engine: str = "classic") -> cv2.dnn.Net:
    """Read the network of `spec` with OpenCV DNN.

    Raises:
        ModelError: the file is missing or OpenCV can't parse it.
    """
    require_model_file(spec.path)
    try:
        if spec.format == "onnx":
            net = cv2.dnn.readNetFromONNX(str(spec.path), engine=ONNX_ENGINES[onnx_engine])
        elif spec.format == "tensorflow":
            _register_zoo_layers()
            # dnn_superres loads these with the classic engine; the new one mishandled them (opencv_contrib#3833).
            net = cv2.dnn.readNetFromTensorflow(str(spec.path), engine=cv2.dnn.ENGINE_CLASSIC)
        else:
            raise ModelError(f"{spec.path}: unknown model format {spec.format!r}")
    except cv2.error as exc:
        raise ModelError(f"{spec.path}: OpenCV cannot load this model ({exc.err})") from exc
    if net.empty():
        raise ModelError(f"{spec.path}: OpenCV loaded an empty network")
    return net


class OpenCvSession:
    """One OpenCV `Net`: its own copy of the model, for one thread."""

    def __init__(self, net: cv2.dnn.Net) -> None:
        self._net = net

    def run(self, blob: np.ndarray) -> np.ndarray:
        self._net.setInput(blob)
        return self._net.forward()


class OpenCvRuntime:
    """OpenCV's DNN module (the default: no dependency beyond OpenCV itself).

    The first session is the one loaded to check the model, so a model that can't be read fails at
    construction; each further session reads the file again (a `Net` can't be shared between threads).
    """

    name = "opencv"
    device = "cpu"

    def __init__(self, spec: ModelSpec, onnx_engine: str = "classic") -> None:
        self._spec = spec
        self._onnx_engine = onnx_engine
        self._first: OpenCvSession | None = OpenCvSession(load_net(spec, onnx_engine))

    def open_session(self, threads: int | None = None) -> OpenCvSession:
        if threads is not None:
            cv2.setNumThreads(threads)
        if self._first is not None:
            session, self._first = self._first, None
            return session
        return OpenCvSession(load_net(self._spec, self._onnx_engine))
