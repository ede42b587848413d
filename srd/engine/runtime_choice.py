"""Which runtime and device run a model: `engine: {runtime: opencv|onnxruntime|auto, device: auto|cpu|cuda[:N]}`.

`auto` picks, among the installed runtimes that can read the model, the fastest by `MEASURED_US_PER_LR_PIXEL`
(figures from BENCHMARKS.md, "Runtimes side by side"), not by guess. A GPU that was asked for but can't be
used costs one warning line per process and the CPU, never the job.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from srd.engine.onnx_runtime import CUDA_PROVIDER, OnnxRuntime, import_onnxruntime
from srd.engine.registry import ModelSpec
from srd.engine.runtime import OpenCvRuntime, Runtime
from srd.errors import ModelError, UsageError

if TYPE_CHECKING:  # the Upscaler imports this module
    from srd.engine.upscaler import EngineSettings

log = structlog.get_logger(__name__)

RUNTIMES = ("auto", "opencv", "onnxruntime")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
EXTRAS = {"onnxruntime": "pip install 'srd[onnxruntime]' (or 'srd[gpu]' for CUDA)"}

# µs per LR pixel on one core, edsr-lite x2, tile 192: the idle measurement (onnxruntime 1.85, OpenCV
# classic 3.0), the same 1.5x as srd bench speed's loaded run (7.9 vs 12.1; BENCHMARKS.md "Runtimes side by
# side", 2026-12-07). The zoo's TensorFlow graphs have one candidate: OpenCV (ESPCN x2, BENCHMARKS.md).
MEASURED_US_PER_LR_PIXEL: dict[str, dict[str, float]] = {
    "onnx": {"onnxruntime": 1.85, "opencv": 3.0},
    "tensorflow": {"opencv": 0.72},
}

_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
_warned: set[str] = set()


def device_problem(device: str) -> str | None:
    """Why `device` is not a valid setting, or None."""
    return None if DEVICE_PATTERN.fullmatch(device) else "must be auto, cpu, cuda or cuda:N (e.g. cuda:0)"


def runtime_problem(runtime: str) -> str | None:
    """Why `runtime` can't be used in this installation, or None."""
    if runtime not in RUNTIMES:
        return f"must be one of {', '.join(RUNTIMES)}"
    if runtime == "onnxruntime" and import_onnxruntime() is None:
        return f"onnxruntime is not installed: {EXTRAS['onnxruntime']}"
    return None


def with_choice(engine: EngineSettings, runtime: str | None, device: str | None) -> EngineSettings:
    """`engine` with a command line's --runtime and --device where given.

    Raises:
        UsageError: either is unknown, or the runtime is not installed.
    """
    if device is not None and device_problem(device):
        raise UsageError(f"--device {device}: {device_problem(device)}")
    if runtime is not None and runtime_problem(runtime):
        raise UsageError(f"--runtime {runtime}: {runtime_problem(runtime)}")
    return replace(engine, runtime=engine.runtime if runtime is None else runtime,
                   device=engine.device if device is None else device)


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use: those the driver lists, limited by CUDA_VISIBLE_DEVICES."""
    present = len(list(_NVIDIA_GPUS.iterdir())) if _NVIDIA_GPUS.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    listed = 0
    for entry in visible.split(","):
        if not entry.strip() or entry.strip().startswith("-"):
            break  # CUDA stops at the first invalid entry
        listed += 1
    return min(present, listed)


def _cuda_provider_installed() -> bool:
    ort = import_onnxruntime()
    return ort is not None and CUDA_PROVIDER in ort.get_available_providers()


def _worker_slot() -> int:
    """This pool worker's number (0 for a process outside a pool), to spread workers over GPUs."""
    identity = getattr(multiprocessing.current_process(), "_identity", ())
    return identity[0] - 1 if identity else 0


def _warn_once(requested: str, reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        log.warning("gpu_unavailable_using_cpu", device=requested, reason=reason)


def choose_runtime(spec: ModelSpec, runtime: str, *, gpu: bool = False) -> str:
    """The runtime that runs `spec`: the one named if it can read the model, else by `auto`'s table.

    A model onnxruntime can't read (the zoo's TensorFlow graphs) runs on OpenCV whatever is named. On a GPU
    `auto` prefers onnxruntime, the only runtime here with a CUDA path.
    """
    candidates = MEASURED_US_PER_LR_PIXEL.get(spec.format, {"opencv": 0.0})
    if runtime != "auto":
        if runtime not in candidates:
            return "opencv"
        problem = runtime_problem(runtime)
        if problem:
            raise ModelError(f"engine.runtime: {problem}")
        return runtime
    installed = {name: us for name, us in candidates.items() if runtime_problem(name) is None}
    if gpu and "onnxruntime" in installed:
        return "onnxruntime"
    return min(installed, key=lambda name: installed[name])


def device_for(spec: ModelSpec, runtime: str, device: str) -> tuple[str | None, str | None]:
    """The CUDA device ('cuda:N') that runs `spec` under these settings, or None for the CPU; and, where a GPU
    was asked for but the CPU will run it, why (None otherwise: `auto` without a GPU is the CPU in silence).
    A loader that then fails on the GPU falls back too (`open_runtime`)."""
    if spec.format != "onnx" or runtime == "opencv":
        if not device.startswith("cuda"):
            return None, None
        if spec.format != "onnx":
            return None, f"{spec.path.name} is a {spec.format} model, which only OpenCV runs, on the CPU"
        return None, f"runtime opencv runs on the CPU only ({spec.path.name})"
    if device == "cpu":
        return None, None
    if device == "auto":
        gpus = visible_gpus() if _cuda_provider_installed() else 0
        return (f"cuda:{_worker_slot() % gpus}" if gpus else None), None
    if not _cuda_provider_installed():
        return None, "onnxruntime's CUDAExecutionProvider is not installed (pip install 'srd[gpu]')"
    gpus = visible_gpus()
    if not gpus:
        return None, "no NVIDIA GPU is visible to this process"
    index = device.partition(":")[2]
    return (f"cuda:{index}" if index else f"cuda:{_worker_slot() % gpus}"), None


def open_runtime(spec: ModelSpec, runtime: str = "auto", device: str = "auto", onnx_engine: str = "classic") -> Runtime:
    """Load `spec` in the runtime and on the device the settings choose.

    Raises:
        ModelError: the model can't be loaded, or the named runtime is not installed.
    """
    gpu, on_cpu_because = device_for(spec, runtime, device)
    if on_cpu_because:
        _warn_once(device, on_cpu_because)
    chosen = choose_runtime(spec, runtime, gpu=gpu is not None)
    if chosen != "onnxruntime":
        return OpenCvRuntime(spec, onnx_engine)
    if gpu is not None:
        try:
            return OnnxRuntime(spec, gpu)
        except ModelError as exc:
            _warn_once(device, str(exc))
    return OnnxRuntime(spec, "cpu")
