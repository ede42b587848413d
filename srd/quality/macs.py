"""How much arithmetic a model does per LR pixel, and how much the CPU can do: the two ends of "GMAC/s, and
its fraction of the core's peak" in `srd bench speed`."""

from __future__ import annotations

import time

import numpy as np

from srd.engine.conventions import input_channels
from srd.engine.registry import ModelSpec
from srd.engine.runtime import load_net

_PROBE_SIDE = 32


def macs_per_lr_pixel(spec: ModelSpec) -> float:
    """Multiply-accumulates per LR pixel of the model's convolutions (the rest is noise beside them).

    Each convolution costs its output area × its weight count; the areas are read from a real forward pass on
    a small probe, so layers that run at HR resolution (LapSRN's pyramid) count at their true size.
    """
    net = load_net(spec)
    convolutions = [(name, net.getLayer(name)) for name in net.getLayerNames()]
    convolutions = [(name, layer) for name, layer in convolutions if layer.type == "Convolution"]
    net.setInput(np.zeros((1, input_channels(spec.convention), _PROBE_SIDE, _PROBE_SIDE), np.float32))
    outputs = net.forward([name for name, _ in convolutions])
    total = sum(out.shape[2] * out.shape[3] * layer.blobs[0].size
                for (_, layer), out in zip(convolutions, outputs, strict=True))
    return total / _PROBE_SIDE**2


def matmul_peak_gmacs(seconds: float = 0.5, side: int = 1024) -> float:
    """The best float32 matrix multiply rate (GMAC/s) numpy's BLAS reaches on its configured threads.

    A plain GEMM is the best case a CPU's vector units reach in practice, so it stands in for the peak.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((side, side), dtype=np.float32)
    b = rng.standard_normal((side, side), dtype=np.float32)
    a @ b  # warm-up: threads start, pages fault in
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return side**3 / best / 1e9
