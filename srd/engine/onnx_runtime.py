"""onnxruntime as an inference runtime (the `onnxruntime` extra on CPU, the `gpu` extra for CUDA).

One `InferenceSession` per thread count is shared by every `Session` opened with that count: its `run` is
thread-safe, and the weights are then held once per process. onnxruntime sets the thread count per
`InferenceSession`, so a different count needs (and gets) a session of its own.

srd's models store fp16 weights as initialisers behind Cast nodes; onnxruntime's graph optimisation folds
those casts at load, so inference runs on fp32 weights and matches OpenCV within float noise.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any

import numpy as np

from srd.engine.registry import ModelSpec, require_model_file
from srd.errors import ModelError

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def import_onnxruntime() -> ModuleType | None:
    """The onnxruntime module, or None where it is not installed (or cannot load)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


class OnnxSession:
    """One thread's handle on a shared `InferenceSession`."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._input = session.get_inputs()[0].name

    def run(self, blob: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._session.run(None, {self._input: blob})[0]
        return out


class OnnxRuntime:
    """An ONNX model loaded in onnxruntime on the CPU or one CUDA device.

    `device` is 'cpu' or 'cuda:N'. Loading on CUDA raises `ModelError` where onnxruntime could not
    place the model on the GPU (it would silently have used the CPU); `runtime_choice` turns that into a
    warning and a CPU runtime.
    """

    name = "onnxruntime"

    def __init__(self, spec: ModelSpec, device: str = "cpu") -> None:
        ort = import_onnxruntime()
        if ort is None:
            raise ModelError("runtime 'onnxruntime' is not installed: pip install 'srd[onnxruntime]'")
        if spec.format != "onnx":
            raise ModelError(f"{spec.path}: onnxruntime runs ONNX models only, not {spec.format}")
        require_model_file(spec.path)
        self._ort = ort
        self._spec = spec
        self.device = device
        self._sessions: dict[int | None, Any] = {}
        self._lock = threading.Lock()
        self._load(None)  # a model that can't be read fails here, not at the first tile

    def _providers(self) -> list[Any]:
        if self.device == "cpu":
            return [CPU_PROVIDER]
        # TF32 would round the fp32 convolutions' mantissas on Ampere and later: off, to match the CPU.
        options = {"device_id": self.device.partition(":")[2] or "0", "use_tf32": "0"}
        return [(CUDA_PROVIDER, options), CPU_PROVIDER]

    def _load(self, threads: int | None) -> Any:
        with self._lock:
            if threads in self._sessions:
                return self._sessions[threads]
            options = self._ort.SessionOptions()
            options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3  # onnxruntime's own warnings go to stderr, outside srd's log
            if threads is not None:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            try:
                session = self._ort.InferenceSession(str(self._spec.path), options, providers=self._providers())
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
                raise ModelError(f"{self._spec.path}: onnxruntime cannot load this model ({exc})") from exc
            if self.device != "cpu" and session.get_providers()[0] != CUDA_PROVIDER:
                raise ModelError(f"onnxruntime could not use {self.device} (providers: {session.get_providers()})")
            self._sessions[threads] = session
            return session

    def open_session(self, threads: int | None = None) -> OnnxSession:
        return OnnxSession(self._load(threads))
