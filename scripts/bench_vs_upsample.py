"""srd against OpenCV's own `DnnSuperResImpl.upsample()` on one big photo: wall time and peak memory.

Each run is a fresh process: `srd process PHOTO -m MODEL` (the whole command: start-up, pool, decode, tiles,
encode; its memory is the peak summed RSS of its process tree, sampled) and a plain Python script that
reads the photo, calls `upsample()` and writes the result (its `ru_maxrss`; the `upsample()` call is also
timed alone). Both use OpenCV's default threads, rounds interleaved.

Example::

    python scripts/bench_vs_upsample.py --rounds 2 ../shared/models/opencv-zoo/ESPCN_x2.pb \\
        ../shared/models/opencv-zoo/FSRCNN_x2.pb
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
from bench_daemon import RssSampler, descendants, status_kb

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PHOTO_SOURCE = SHARED / "datasets/train/SunHays80/abbey_sun_asztnlqhlrvirneh.jpg"

UPSAMPLE = """
import cv2, resource, sys, time
model, name, scale, photo, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
started = time.perf_counter()
sr = cv2.dnn_superres.DnnSuperResImpl_create()
sr.readModel(model)
sr.setModel(name, scale)
image = cv2.imread(photo)
call = time.perf_counter()
result = sr.upsample(image)
call = time.perf_counter() - call
cv2.imwrite(out, result, [cv2.IMWRITE_JPEG_QUALITY, 95])
print(call, time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_photo(folder: Path, size: tuple[int, int]) -> Path:
    """A real photo resized to `size` and saved as a JPEG of quality 90 (as BENCHMARKS.md's memory section)."""
    source = cv2.imread(str(PHOTO_SOURCE))
    if source is None:
        raise SystemExit(f"cannot read {PHOTO_SOURCE}")
    image = cv2.resize(source, size, interpolation=cv2.INTER_CUBIC)
    photo = folder / "photo.jpg"
    cv2.imwrite(str(photo), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return photo


def run_srd(model: Path, scale: int, photo: Path, out: Path) -> dict[str, float]:
    """The command's wall time, the peak of its process tree's summed RSS (which counts the libraries each
    process maps once per process) and the largest peak of one process (the worker's, which holds the image)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "srd", "process", str(photo), "-o", str(out), "-m", str(model),
                                "-s", str(scale)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks: dict[int, int] = {}
    with RssSampler(process.pid, interval=0.05) as rss:
        while process.poll() is None:
            for pid in descendants(process.pid):
                peaks[pid] = max(peaks.get(pid, 0), status_kb(pid, "VmHWM"))
            time.sleep(0.05)
    if process.returncode:
        raise SystemExit(f"srd process failed: {process.stderr.read().decode() if process.stderr else ''}")
    return {"wall_s": time.perf_counter() - started, "peak_mb": rss.peak_kb / 1024,
            "peak_process_mb": max(peaks.values()) / 1024}


def run_upsample(model: Path, scale: int, photo: Path, out: Path) -> dict[str, float]:
    name = re.match(r"[A-Za-z]+", model.name)
    assert name is not None
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", UPSAMPLE, str(model), name.group(0).lower(), str(scale), str(photo),
                           str(out / "upsampled.jpg")], capture_output=True, text=True, check=True)
    call_s, _, maxrss_kb = (float(value) for value in done.stdout.split())
    return {"wall_s": time.perf_counter() - started, "call_s": call_s, "peak_mb": maxrss_kb / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+", help="OpenCV zoo .pb files (scale from the _xN name)")
    parser.add_argument("--size", default="4000x3000", help="the photo's size, WxH")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="srd-bench-upsample-") as tmp:
        photo = make_photo(Path(tmp), (width, height))
        for model in args.models:
            scale = int(re.search(r"_x(\d)", model.name).group(1))  # type: ignore[union-attr]
            srd, upsample = [], []
            for round_ in range(args.rounds):
                out = Path(tmp) / f"out-{model.stem}-{round_}"
                srd.append(run_srd(model, scale, photo, out))
                upsample.append(run_upsample(model, scale, photo, out))
            median = {side: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                      for side, runs in (("srd", srd), ("upsample", upsample))}
            rows.append({"model": model.name, "photo": args.size, "rounds": args.rounds, **median,
                         "time_ratio": median["srd"]["wall_s"] / median["upsample"]["wall_s"],
                         "memory_ratio": median["srd"]["peak_mb"] / median["upsample"]["peak_mb"]})
            print(json.dumps(rows[-1], indent=1), flush=True)
    print("| model | srd process: s, peak MB of the tree (of one process) | upsample() script: s (call alone), "
          "peak MB | time ratio | memory ratio (tree) |")
    print("|---|---|---|---|---|")
    for row in rows:
        s, u = row["srd"], row["upsample"]
        print(f"| {row['model']} | {s['wall_s']:.1f}, {s['peak_mb']:.0f} ({s['peak_process_mb']:.0f}) | "
              f"{u['wall_s']:.1f} ({u['call_s']:.1f}), {u['peak_mb']:.0f} | {row['time_ratio']:.2f} | "
              f"{row['memory_ratio']:.3f} |")


if __name__ == "__main__":
    main()
