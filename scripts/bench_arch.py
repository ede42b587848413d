"""Measure inference cost (µs per LR pixel through cv2.dnn) and training step time of candidate networks.

Untrained weights: the cost of a conv graph does not depend on the values. Prints a table and writes it
to the path given by --out (default runs/bench_arch.txt).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from srd.train.model import SESR_EXPAND, Arch, build_model, count_parameters
from srd.train.onnx_io import export_onnx, load_net


def time_infer(path: Path, classic: bool, size: int, repeats: int) -> float:
    net = load_net(path, classic)
    blob = np.random.default_rng(0).uniform(-100, 100, (1, 3, size, size)).astype(np.float32)
    net.setInput(blob)
    net.forward()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        net.setInput(blob)
        net.forward()
        best = min(best, time.perf_counter() - t)
    return best / (size * size) * 1e6


def time_train(arch: Arch, steps: int) -> float:
    model = build_model(arch).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(16, 3, 48, 48).contiguous(memory_format=torch.channels_last)
    y = torch.randn(16, 3, 48 * arch.scale, 48 * arch.scale)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (model(x).float() - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def parse_candidate(text: str, scale: int) -> Arch:
    """``<blocks>x<channels>:<tail>`` for EDSR, ``<blocks>x<channels>:sesr`` for the collapsible-block family."""
    shape, kind = text.split(":")
    blocks, ch = (int(v) for v in shape.split("x"))
    if kind == "sesr":
        return Arch(scale, blocks, ch, family="sesr", expand=SESR_EXPAND)
    return Arch(scale, blocks, ch, kind)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--candidates", default="8x32:espcn,8x32:shuffle,6x32:espcn,8x24:espcn,16x64:shuffle,16x64:espcn")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench_arch.txt"))
    args = p.parse_args()
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    lines = [f"scale x{args.scale}, {args.size}px input, {args.threads} threads; us per LR pixel (best of 5)"]
    with tempfile.TemporaryDirectory() as tmp:
        for cand in args.candidates.split(","):
            arch = parse_candidate(cand, args.scale)
            path = Path(tmp) / f"{cand.replace(':', '_')}.onnx"
            network = build_model(arch).inference()
            export_onnx(network, path)
            classic = time_infer(path, True, args.size, 5)
            new = time_infer(path, False, args.size, 5)
            line = f"{cand:14s} params {count_parameters(network):8d}  classic {classic:6.2f}  new {new:6.2f}"
            if args.train_steps:
                line += f"  train bf16 {time_train(arch, args.train_steps):.3f} s/it"
            print(line, flush=True)
            lines.append(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
