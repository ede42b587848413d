"""What each lever of OpenCV's DNN path gives on srd's own models: engine, Winograd, fp16 vs fp32 weights.

Tile size and thread count are `srd bench speed`'s (`--tiles`, `--threads`); this script covers the levers it
has no option for. Each measurement runs in a fresh process, in interleaved rounds (the machine is noisy):

    python scripts/bench_cv2_levers.py -m edsr-lite -m edsr-base -s 2 --size 384x512 --rounds 3

Prints a markdown table: µs per LR pixel (median and range over rounds) and peak RSS per lever.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from srd.engine.registry import ModelSpec, resolve_model
from srd.engine.upscaler import EngineSettings, Upscaler
from srd.quality.speed import _synthetic_image

LEVERS = {
    "classic, Winograd on, fp16 weights (srd's default)": ("classic", True, False),
    "classic, Winograd off": ("classic", False, False),
    "classic, fp32 weights": ("classic", True, True),
    "new engine": ("new", True, False),
    "new engine, fp32 weights": ("new", True, True),
}


def fp32_copy(spec: ModelSpec, folder: Path) -> ModelSpec:
    """The model with its fp16 initialisers stored as fp32 and their Cast nodes gone (needs the onnx package)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(spec.path))
    graph = model.graph
    halves = {init.name: init for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT16}
    casts = [node for node in graph.node if node.op_type == "Cast" and node.input[0] in halves]
    for node in casts:
        weight = numpy_helper.to_array(halves[node.input[0]]).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(weight, node.output[0]))
        graph.node.remove(node)
    for init in halves.values():
        graph.initializer.remove(init)
    path = folder / f"{spec.path.stem}-fp32.onnx"
    onnx.save(model, str(path))
    return replace(spec, path=path, expected_sha256=None)


def measure(spec: ModelSpec, engine: str, winograd: bool, size: tuple[int, int], tile: int, repeats: int,
            queue: multiprocessing.Queue) -> None:
    upscaler = Upscaler(spec, EngineSettings(runtime="opencv", onnx_engine=engine, tile=tile, threads=1))
    upscaler._session._net.enableWinograd(winograd)  # type: ignore[attr-defined]  # no setting: measured here
    image = _synthetic_image(size)
    upscaler.upscale(image)
    started = time.perf_counter()
    for _ in range(repeats):
        upscaler.upscale(image)
    elapsed = (time.perf_counter() - started) / repeats
    queue.put((elapsed * 1e6 / (size[0] * size[1]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", action="append", required=True)
    parser.add_argument("--scale", "-s", type=int, default=2)
    parser.add_argument("--size", default="384x512")
    parser.add_argument("--tile", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    context = multiprocessing.get_context("spawn")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        specs = {name: resolve_model(name, args.scale) for name in args.model}
        fp32 = {name: fp32_copy(spec, Path(folder)) for name, spec in specs.items()}
        for _ in range(args.rounds):
            for name in args.model:
                for lever, (engine, winograd, full_precision) in LEVERS.items():
                    spec = fp32[name] if full_precision else specs[name]
                    queue: multiprocessing.Queue = context.Queue()
                    child = context.Process(target=measure, args=(spec, engine, winograd, (height, width), args.tile,
                                                                  args.repeats, queue))
                    child.start()
                    child.join()
                    results.setdefault((name, lever), []).append(queue.get() if child.exitcode == 0
                                                                 else (float("nan"), float("nan")))
    print(f"{height}x{width} LR, x{args.scale}, tile {args.tile}, 1 thread, {args.rounds} rounds")
    print("| model | lever | µs per LR pixel: median (range) | peak RSS (MB) |\n|---|---|---|---|")
    for (name, lever), samples in results.items():
        times = [us for us, _ in samples]
        print(f"| {name} | {lever} | {statistics.median(times):.2f} ({min(times):.2f}–{max(times):.2f}) | "
              f"{max(rss for _, rss in samples):.0f} |")


if __name__ == "__main__":
    main()
