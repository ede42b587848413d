"""Benchmark the whole machine on one photo: `srd process` with jobs sharing the cores against one thread per worker.

Two cases, each run through the real command (``srd process -m edsr-lite -s 2 --jobs W``) in a fresh process:

- *lone*: one 12 MP photo (a ../shared/datasets/train photo resized to 4000×3000, JPEG q90). Today's
  behaviour is ``--threads 1`` (what `srd process` gave each of its W workers on a W-core machine); the new
  default lets the lone job run its tiles on every core.
- *queue*: 8 photos of 1–3 MP on the same W workers: the new default must be no slower (one tile per job
  while the pool is full, the whole machine for the last photo).
- *engine*: why tiles in parallel rather than OpenCV's own threads: one process upscales a 1000×750 crop
  of the photo one tile at a time on 1 and on W OpenCV threads, and W tiles at once on 1 thread each.

Modes alternate within each round, so a change of load hits both; medians are compared. Peak RSS is the
largest sum, sampled every 0.1 s, over the command and all its descendants (the worker processes).
The machine is shared with other work: run it when it is idle, and say so if not.

Example::

    python scripts/bench_lone_job.py --rounds 2 --output /tmp/bench_lone_job.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "datasets" / "train" / "BSDS200"
QUEUE_SIZES = [(1200, 900), (1600, 1200), (2000, 1500), (1400, 1050)]  # 1.1 to 3.0 MP, in turn
MODES = {"one thread per worker (today)": ["--threads", "1"], "shared cores (new default)": []}


def make_inputs(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    """JPEGs (q90) of the given (width, height), resized from the BSDS200 photos in turn; their folder."""
    folder.mkdir(parents=True)
    photos = sorted(PHOTOS.glob("*.jpg"))
    for i, size in enumerate(sizes):
        image = cv2.imread(str(photos[i % len(photos)]), cv2.IMREAD_COLOR)
        assert image is not None, photos[i % len(photos)]
        cv2.imwrite(str(folder / f"photo{i}.jpg"), cv2.resize(image, size, interpolation=cv2.INTER_CUBIC),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


def _tree_rss(root: int) -> int:
    """Resident bytes of process `root` and all its descendants, from /proc (Linux)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            pages = int(Path(entry.path, "statm").read_text().split()[1])
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        parents[int(entry.name)] = int(fields[1])
        rss[int(entry.name)] = pages * page
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(rss.get(pid, 0) for pid in tree)


def peak_rss_of_tree(proc: subprocess.Popen[bytes], stop: threading.Event, peak: list[int]) -> None:
    """Sample the RSS of `proc` and its descendants until `stop`; keep the largest sum in `peak[0]`."""
    while not stop.wait(0.1):
        peak[0] = max(peak[0], _tree_rss(proc.pid))


def run_once(inputs: Path, out: Path, extra: list[str], workers: int) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one `srd process` run."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "srd", "process", str(inputs), "--out", str(out), "-m", "edsr-lite", "-s", "2",
               "--jobs", str(workers), "--quiet", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env)
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=peak_rss_of_tree, args=(proc, stop, peak))
    sampler.start()
    code = proc.wait()
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"srd process failed ({code}): {' '.join(command)}")
    return elapsed, peak[0]


def engine_modes(photo: Path, cores: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per run of each way to use `cores` on one picture, in alternating order (one process)."""
    from srd.engine.cores import CoreShare
    from srd.engine.registry import resolve_model
    from srd.engine.upscaler import EngineSettings, Upscaler

    image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
    assert image is not None, photo
    crop = cv2.resize(image, (1000, 750), interpolation=cv2.INTER_AREA)
    spec = resolve_model("edsr-lite", 2)
    modes = {
        "1 tile at a time, 1 OpenCV thread": (1, Upscaler(spec, EngineSettings(threads=1), CoreShare(1))),
        f"1 tile at a time, {cores} OpenCV threads": (cores, Upscaler(spec, EngineSettings(threads=1), CoreShare(1))),
        f"{cores} tiles at once, 1 OpenCV thread each": (1, Upscaler(spec, EngineSettings(threads=1),
                                                                      CoreShare(cores))),
    }
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_ in range(rounds + 1):  # the first round warms up every session
        for mode in (list(modes) if round_ % 2 else list(reversed(modes))):
            threads, upscaler = modes[mode]
            cv2.setNumThreads(threads)
            started = time.perf_counter()
            upscaler.upscale(crop)
            if round_:
                times[mode].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2: one per core here)")
    parser.add_argument("--queue", type=int, default=8, help="photos in the full-queue case")
    parser.add_argument("--cases", default="lone,queue,engine", help="comma-separated: lone, queue, engine")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args()

    cases = args.cases.split(",")
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cores": os.cpu_count(),
                               "workers": args.workers, "rounds": args.rounds, "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="srd-bench-lone-") as tmp:
        root = Path(tmp)
        inputs = {}
        if "lone" in cases:
            inputs["lone"] = make_inputs(root / "lone", [(4000, 3000)])
        if "queue" in cases:
            inputs["queue"] = make_inputs(root / "queue",
                                          [QUEUE_SIZES[i % len(QUEUE_SIZES)] for i in range(args.queue)])
        for case, folder in inputs.items():
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            peaks: dict[str, list[int]] = {mode: [] for mode in MODES}
            for round_ in range(args.rounds):
                order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    seconds, peak = run_once(folder, root / "out", MODES[mode], args.workers)
                    times[mode].append(seconds)
                    peaks[mode].append(peak)
                    print(f"{case} round {round_ + 1} {mode}: {seconds:.1f} s, peak RSS {peak / 2**20:.0f} MiB",
                          flush=True)
            old, new = (statistics.median(times[mode]) for mode in MODES)
            results[case] = {mode: {"seconds": times[mode], "median_s": statistics.median(times[mode]),
                                    "peak_rss_mib": [p / 2**20 for p in peaks[mode]]} for mode in MODES}
            results[case]["speedup"] = old / new
            print(f"{case}: median {old:.1f} s today, {new:.1f} s shared → {old / new:.2f}×", flush=True)
        if "engine" in cases:
            photo = sorted(PHOTOS.glob("*.jpg"))[0]
            engine_times = engine_modes(photo, args.workers, args.rounds * 3)
            results["engine"] = engine_times
            for mode, runs in engine_times.items():
                print(f"engine {mode}: median {statistics.median(runs):.2f} s, best {min(runs):.2f} s "
                      f"({len(runs)} runs)", flush=True)
    results["load_after"] = os.getloadavg()[0]
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
