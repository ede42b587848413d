"""Benchmark the running daemon (`srd run`) against the engine alone: throughput, latency, catch-up.

Why a script and not a test: these are figures for BENCHMARKS.md, measured on real subprocesses of
``srd run`` with their real watcher, settle tracker, ledger and worker pool (docs/design.md §10). The machine is
noisy, so every daemon figure comes with a baseline measured in the same run, and ratios are reported.

Three measurements (``--phases``):

- ``throughput``: N crops of real photos dropped into a warm daemon's inbox, drop → last output, against
  the same images through the engine in this process (1 thread) and through ``srd process -j 1 / -j 2``.
- ``overhead`` (not in the default set): photo-sized JPEGs (real photos scaled to ``--photo-side``) through
  a warm one-worker daemon, against the engine alone on one thread and ``srd process -j 1``: wall per job,
  and the CPU seconds of the daemon's main process and of its whole tree per file against the engine's.
- ``latency``: one small image dropped into an idle, warm daemon, drop → output, with the given
  ``settle_seconds`` and with the default 2 s.
- ``catchup``: many tiny files already in the inbox and a ledger pre-filled with old entries; time to
  READY, files/s until every output exists, peak RSS of the daemon and its workers; then a restart with
  everything done: time until idle, and whether anything was reprocessed.

Everything lives in a temporary folder under /tmp that is removed at the end; every daemon started is
stopped (SIGTERM, then SIGKILL of its process group) even when a measurement fails or times out.

Example::

    python scripts/bench_daemon.py --output /tmp/bench_daemon.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

# Imported once, up front: others may edit srd while a long run is going, and a module imported late
# would mix two versions of the code in this process.
from srd.config import load_config
from srd.daemon.inboxes import check_profiles, inbox_id
from srd.engine.pipeline import StageContext
from srd.executors.job import Job
from srd.executors.render import run_job
from srd.ledger import Ledger
from srd.logs import configure_logging

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_PHOTOS = SHARED / "datasets" / "train"
DEFAULT_CATCHUP_MODEL = SHARED / "models" / "opencv-zoo" / "ESPCN_x2.pb"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
POLL_S = 0.01
IDLE_SAMPLE_S = 5.0
SRD = [sys.executable, "-m", "srd"]


class BenchTimeout(RuntimeError):
    """A wait ran past its deadline: the daemon is stuck or far slower than expected."""


def wait_until(what: str, done: Callable[[], bool], timeout: float, poll: float = POLL_S) -> float:
    """Poll `done` until true; return the perf_counter time it became true.

    Raises:
        BenchTimeout: `timeout` seconds passed first, so the script always ends by itself.
    """
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        if done():
            return now
        if now > deadline:
            raise BenchTimeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


# -- images -------------------------------------------------------------------------------------------------


def find_photos(root: Path) -> list[Path]:
    """Real photos to crop from, in a stable order (so runs are comparable)."""
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    if not found:
        raise SystemExit(f"no photos under {root}")
    return found


def crops(photos: Sequence[Path], count: int, size: int, seed: int) -> list[np.ndarray]:
    """`count` different size×size crops of real photos; `seed` picks another set of crops.

    Photos smaller than `size` are skipped; each crop comes from the next photo in turn.
    """
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    index = seed * count
    while len(out) < count:
        if index > (seed + 1) * count + len(photos):
            raise SystemExit(f"too few photos of at least {size} px")
        image = cv2.imread(str(photos[index % len(photos)]), cv2.IMREAD_COLOR)
        index += 1
        if image is None or min(image.shape[:2]) < size:
            continue
        y = int(rng.integers(0, image.shape[0] - size + 1))
        x = int(rng.integers(0, image.shape[1] - size + 1))
        out.append(np.ascontiguousarray(image[y:y + size, x:x + size]))
    return out


def write_pngs(images: Sequence[np.ndarray], folder: Path, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{prefix}{i:05d}.png"
        if not cv2.imwrite(str(path), image):
            raise OSError(f"cannot write {path}")
        paths.append(path)
    return paths


def drop(staged: Sequence[Path], inbox: Path) -> list[Path]:
    """Move staged files into the inbox by rename, as a careful uploader would: each appears complete."""
    moved = []
    for path in staged:
        target = inbox / path.name
        os.rename(path, target)
        moved.append(target)
    return moved


def flush_disk() -> None:
    """Write back set-up files before a timed step: srd fsyncs every output and journal record, and on
    ext4 such an fsync can wait for unrelated dirty data (e.g. 10,000 fresh inputs) to reach the disk."""
    os.sync()


def count_outputs(outbox: Path) -> int:
    """Finished outputs (srd's temp files are dot-files until their atomic rename)."""
    with os.scandir(outbox) as entries:
        return sum(1 for e in entries if not e.name.startswith("."))


# -- processes and memory -----------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (the daemon forks a forkserver, which forks the workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def status_kb(pid: int, field_name: str) -> int:
    """A `/proc/<pid>/status` memory field in KiB (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples the summed VmRSS of a process tree every `interval` s in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.peak_processes = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            tree = descendants(self.pid)
            total = sum(status_kb(p, "VmRSS") for p in tree)
            if total > self.peak_kb:
                self.peak_kb, self.peak_processes = total, len(tree)
            self.samples.append((time.perf_counter() - start, total))
            self._stop.wait(self.interval)


@dataclass
class Daemon:
    """One `srd run --config FILE` subprocess in its own process group, logging JSON lines to a file."""

    config: Path
    log_path: Path
    state_dir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)
    exit_status: int | None = field(default=None, init=False)
    _log_offset: int = field(default=0, init=False)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list, init=False)

    def start(self) -> None:
        self.started_at = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([*SRD, "run", "--config", str(self.config)], stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def read_events(self) -> list[tuple[float, dict[str, Any]]]:
        """New log records since the last call, each stamped with the time this script read it."""
        now = time.perf_counter()
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_offset)
            data = fh.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._log_offset += len(complete)
        new = []
        for line in complete.splitlines():
            try:
                new.append((now, json.loads(line)))
            except ValueError:
                new.append((now, {"event": "unparsed", "text": line.decode(errors="replace")}))
        self.events.extend(new)
        return new

    def forget_log(self) -> None:
        """Ignore what earlier runs logged (the log file is appended to across restarts)."""
        self._log_offset = self.log_path.stat().st_size
        self.events.clear()

    def find_event(self, name: str) -> dict[str, Any] | None:
        return next((record for _, record in self.events if record.get("event") == name), None)

    def wait_event(self, name: str, timeout: float) -> float:
        """Time (perf_counter) at which this script first saw log event `name`."""
        found: list[float] = []

        def seen() -> bool:
            self.read_events()
            self.check_alive()
            hit = next((t for t, r in self.events if r.get("event") == name), None)
            if hit is not None:
                found.append(hit)
            return hit is not None

        wait_until(f"log event {name}", seen, timeout)
        return found[0]

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return None

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"srd run exited with {self.process.returncode}; log tail:\n{tail}")

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM (the daemon drains), then SIGKILL to its whole process group if it doesn't exit.

        `exit_status` keeps the status SIGTERM led to (None if it had to be killed), so a run can show
        that the daemon shut down cleanly.
        """
        if self.process is None:
            return
        self.exit_status = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.exit_status = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"bench: daemon {self.pid} ignored SIGTERM for {timeout:.0f} s; killing it", file=sys.stderr)
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # leftovers: workers, forkserver, resource tracker
        self.process.wait()


@contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    """Start `daemon` and guarantee it is stopped, whatever happens inside."""
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


def write_config(folder: Path, *, model: str, settle: float, workers: int, threads: int) -> tuple[Path, dict]:
    """A daemon config in `folder` (inbox, outbox, failed, state all inside it); returns its path and data."""
    data = {
        "state_dir": str(folder / "state"),
        "workers": workers,
        "threads_per_worker": threads,
        "reconcile_interval": 3600,
        "log": {"level": "info", "format": "json"},
        "profiles": {"bench": {"stages": [{"upscale": {"model": model, "scale": 2}}], "output": {"format": "png"}}},
        "inboxes": [{
            "path": str(folder / "inbox"), "outbox": str(folder / "outbox"), "failed": str(folder / "failed"),
            "profile": "bench", "settle_seconds": settle, "on_success": "keep",
        }],
    }
    for name in ("inbox", "outbox", "failed"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    path = folder / "srd.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, data


def new_daemon(folder: Path, **settings: Any) -> Daemon:
    config, data = write_config(folder, **settings)
    return Daemon(config, folder / "daemon.log", Path(data["state_dir"]))


def drop_and_wait(daemon: Daemon, staged: Sequence[Path], inbox: Path, outbox: Path, timeout: float) -> float:
    """Drop files and return seconds until all their outputs exist in the outbox."""
    expected = [outbox / p.name for p in staged]
    t0 = time.perf_counter()
    drop(staged, inbox)

    def all_there() -> bool:
        daemon.check_alive()
        return all(p.exists() for p in expected)

    return wait_until(f"{len(expected)} outputs in {outbox}", all_there, timeout) - t0


# -- 1. throughput ------------------------------------------------------------------------------------------


def engine_in_process(config_path: Path, inputs: Sequence[Path], out: Path) -> float:
    """Seconds for the engine alone (decode, pipeline, encode, atomic write) in this process, 1 thread, warm."""
    config = load_config(config_path)
    profile = config.profiles["bench"]
    context = StageContext(config.worker_engine(), config.model_dirs)
    (out / "warm").mkdir(parents=True, exist_ok=True)
    run_job(Job(inputs[0], out / "warm", profile, config.max_input_pixels), context)  # loads the model
    started = time.perf_counter()
    for path in inputs:
        result = run_job(Job(path, out, profile, config.max_input_pixels), context)
        if not result.ok:
            raise RuntimeError(f"engine failed on {path}: {result.error}")
    return time.perf_counter() - started


def srd_process(model: str, inputs: Path, out: Path, jobs: int, timeout: float,
                output_format: str | None = None) -> tuple[float, list[str]]:
    """Wall seconds of a whole `srd process` run (Python start-up and model loading included)."""
    command = [*SRD, "process", str(inputs), "--out", str(out), "--model", model, "--scale", "2",
               "--jobs", str(jobs), "--threads", "1", *(["--format", output_format] if output_format else [])]
    started = time.perf_counter()
    subprocess.run(command, check=True, timeout=timeout, cwd=REPO, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, command


def measure_throughput(args: argparse.Namespace, work: Path, photos: Sequence[Path]) -> dict[str, Any]:
    """Daemon (2 workers × 1 thread, warm) vs the engine alone, on the same images in each round."""
    daemon = new_daemon(work / "daemon", model=args.model, settle=args.settle, workers=2, threads=1)
    inbox, outbox = work / "daemon" / "inbox", work / "daemon" / "outbox"
    rounds = []
    with running(daemon):
        daemon.wait_event("daemon_ready", args.timeout)
        warm = write_pngs(crops(photos, 2, args.size, seed=99), work / "stage-warm", "warm")
        drop_and_wait(daemon, warm, inbox, outbox, args.timeout)  # two at once: each worker loads the model
        for r in range(args.repeats):
            source = work / f"set{r}"
            images = crops(photos, args.images, args.size, seed=r)
            inputs = write_pngs(images, source, f"r{r}_")
            staged = write_pngs(images, work / f"stage{r}", f"r{r}_")
            flush_disk()
            engine_s = engine_in_process(daemon.config, inputs, work / f"engine{r}")
            single_s, single_cmd = srd_process(args.model, source, work / f"proc1_{r}", 1, args.timeout)
            pool_s, pool_cmd = srd_process(args.model, source, work / f"proc2_{r}", 2, args.timeout)
            daemon_s = drop_and_wait(daemon, staged, inbox, outbox, args.timeout)
            rounds.append({"engine_1proc_1thread_s": engine_s, "srd_process_j1_s": single_s,
                           "srd_process_j2_s": pool_s, "daemon_s": daemon_s})
            print(f"throughput round {r}: " + ", ".join(f"{k} {v:.2f}" for k, v in rounds[-1].items()), flush=True)
        failed = count_outputs(work / "daemon" / "failed")
    n = args.images
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}

    def ratio(baseline: str) -> dict[str, float]:
        """Daemon time over a baseline's, per round (same images, same minutes): median and range."""
        values = [r["daemon_s"] / r[baseline] for r in rounds]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {
        "images": n, "size": args.size, "model": args.model, "settle_seconds": args.settle,
        "daemon": {"workers": 2, "threads_per_worker": 1},
        "rounds": rounds,
        "images_per_s_median": {key.removesuffix("_s"): n / value for key, value in median.items()},
        "daemon_over_srd_process_j2": ratio("srd_process_j2_s"),
        "daemon_over_srd_process_j1": ratio("srd_process_j1_s"),
        "daemon_over_engine_1proc": ratio("engine_1proc_1thread_s"),
        "failed_files": failed,
        "commands": {"srd_process_j1": " ".join(single_cmd), "srd_process_j2": " ".join(pool_cmd)},
    }


# -- 1b. overhead on photo-sized jobs ------------------------------------------------------------------------


def photo_jpegs(photos: Sequence[Path], folder: Path, count: int, long_side: int, first: int) -> list[Path]:
    """`count` real photos scaled (bicubic) to `long_side` px on their long side, as quality-90 JPEGs: camera-like
    1–2 MP inputs from a set of ≤ 1 MP photos. `first` picks which photos, so rounds differ."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for index in range(first, first + count):
        image = cv2.imread(str(photos[index % len(photos)]), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot read {photos[index % len(photos)]}")
        factor = long_side / max(image.shape[:2])
        size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
        path = folder / f"p{index:04d}.jpg"
        if not cv2.imwrite(str(path), cv2.resize(image, size, interpolation=cv2.INTER_CUBIC),
                           [cv2.IMWRITE_JPEG_QUALITY, 90]):
            raise OSError(f"cannot write {path}")
        paths.append(path)
    return paths


def engine_cost(config_path: Path, inputs: Sequence[Path], out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of the engine alone (`run_job`: read, decode, pipeline, encode, atomic write) in
    this process on one thread, model warm: the cost any path pays, against which the daemon's is compared."""
    cv2.setNumThreads(1)
    config = load_config(config_path)
    profile = config.profiles["bench"]
    context = StageContext(config.worker_engine(), config.model_dirs)
    (out / "warm").mkdir(parents=True, exist_ok=True)
    run_job(Job(inputs[0], out / "warm", profile, config.max_input_pixels), context)  # loads the model
    wall, cpu = time.perf_counter(), time.process_time()
    for path in inputs:
        result = run_job(Job(path, out, profile, config.max_input_pixels), context)
        if not result.ok:
            raise RuntimeError(f"engine failed on {path}: {result.error}")
    return time.perf_counter() - wall, time.process_time() - cpu


def daemon_cost(daemon: Daemon, staged: Sequence[Path], inbox: Path, outbox: Path,
                timeout: float) -> dict[str, float]:
    """Drop files into a warm daemon; wall seconds until each is recorded done, and the CPU seconds its main
    process and its whole tree (workers, forkserver) used meanwhile; first, its main process's CPU seconds per
    second while idle (the loop's ticks, status writes), the part of its cost that grows with time, not files."""
    idle_from, idle_cpu = time.perf_counter(), cpu_seconds([daemon.pid])
    time.sleep(IDLE_SAMPLE_S)
    idle_rate = (cpu_seconds([daemon.pid]) - idle_cpu) / (time.perf_counter() - idle_from)
    tree = descendants(daemon.pid)
    main_cpu, tree_cpu = cpu_seconds([daemon.pid]), cpu_seconds(tree)
    daemon.read_events()
    done_before = sum(1 for _, r in daemon.events if r.get("event") == "file_processed")
    wall = drop_and_wait(daemon, staged, inbox, outbox, timeout)

    def recorded() -> bool:  # the output lands before the ledger's done record: count that too
        daemon.read_events()
        return sum(1 for _, r in daemon.events if r.get("event") == "file_processed") - done_before >= len(staged)

    wait_until("the daemon's done records", recorded, timeout)
    tree = sorted(set(tree) | set(descendants(daemon.pid)))
    return {"wall_s": wall, "main_cpu_s": cpu_seconds([daemon.pid]) - main_cpu,
            "tree_cpu_s": cpu_seconds(tree) - tree_cpu, "idle_main_cpu_s_per_s": idle_rate}


def measure_overhead(args: argparse.Namespace, work: Path, photos: Sequence[Path]) -> dict[str, Any]:
    """Daemon overhead on photo-sized jobs: one worker × one thread against the engine alone on one thread and
    `srd process -j 1`, the same JPEGs in each round, the three one after the other in every round."""
    folder = work / "overhead"
    daemon = new_daemon(folder, model=args.photo_model, settle=args.settle, workers=1, threads=1)
    settings = yaml.safe_load(daemon.config.read_text())
    settings["profiles"]["bench"]["output"]["format"] = "same"  # JPEG in, JPEG out, as a camera folder would
    daemon.config.write_text(yaml.safe_dump(settings, sort_keys=False))
    inbox, outbox = folder / "inbox", folder / "outbox"
    n, rounds = args.photo_images, []
    with running(daemon):
        daemon.wait_event("daemon_ready", args.timeout)
        warm = photo_jpegs(photos, work / "photo-warm", 1, args.photo_side, first=900)
        drop_and_wait(daemon, warm, inbox, outbox, args.timeout)
        for r in range(args.repeats):
            inputs = photo_jpegs(photos, work / f"photo-set{r}", n, args.photo_side, first=r * n)
            staged = photo_jpegs(photos, work / f"photo-stage{r}", n, args.photo_side, first=r * n)
            flush_disk()
            engine_wall, engine_cpu = engine_cost(daemon.config, inputs, work / f"photo-engine{r}")
            process_s, command = srd_process(args.photo_model, inputs[0].parent, work / f"photo-proc{r}", 1,
                                             args.timeout, output_format="same")
            flush_disk()
            cost = daemon_cost(daemon, staged, inbox, outbox, args.timeout)
            rounds.append({"engine_wall_s": engine_wall, "engine_cpu_s": engine_cpu, "srd_process_j1_s": process_s,
                           "daemon_wall_s": cost["wall_s"], "daemon_main_cpu_s": cost["main_cpu_s"],
                           "daemon_tree_cpu_s": cost["tree_cpu_s"],
                           "daemon_idle_main_cpu_s_per_s": cost["idle_main_cpu_s_per_s"]})
            print(f"overhead round {r}: " + ", ".join(f"{k} {v:.2f}" for k, v in rounds[-1].items()), flush=True)
        failed = count_outputs(folder / "failed")

    def median_of(value: Callable[[dict[str, float]], float]) -> float:
        return statistics.median(value(r) for r in rounds)

    engine_cpu_per_file = median_of(lambda r: r["engine_cpu_s"] / n)
    return {
        "images": n, "long_side": args.photo_side, "model": args.photo_model, "settle_seconds": args.settle,
        "daemon": {"workers": 1, "threads_per_worker": 1}, "rounds": rounds,
        "engine_wall_s_per_file": median_of(lambda r: r["engine_wall_s"] / n),
        "engine_cpu_s_per_file": engine_cpu_per_file,
        # Per round, so each ratio compares minutes with the same load; medians over the rounds.
        "daemon_wall_over_engine": median_of(lambda r: r["daemon_wall_s"] / r["engine_wall_s"]),
        "srd_process_wall_over_engine": median_of(lambda r: r["srd_process_j1_s"] / r["engine_wall_s"]),
        "daemon_main_cpu_s_per_file": median_of(lambda r: r["daemon_main_cpu_s"] / n),
        "daemon_cpu_overhead_s_per_file": median_of(lambda r: (r["daemon_tree_cpu_s"] - r["engine_cpu_s"]) / n),
        "daemon_cpu_over_engine": median_of(lambda r: r["daemon_tree_cpu_s"] / r["engine_cpu_s"]),
        "failed_files": failed, "srd_process_command": " ".join(command),
    }


# -- 2. latency ---------------------------------------------------------------------------------------------


def latency_series(args: argparse.Namespace, folder: Path, photos: Sequence[Path], settle: float) -> dict[str, Any]:
    """Drop-to-output times of single small files into an idle, warm daemon."""
    daemon = new_daemon(folder, model=args.model, settle=settle, workers=2, threads=1)
    inbox, outbox = folder / "inbox", folder / "outbox"
    times = []
    with running(daemon):
        daemon.wait_event("daemon_ready", args.timeout)
        warm = write_pngs(crops(photos, 2, args.latency_size, seed=199), folder / "stage-warm", "warm")
        drop_and_wait(daemon, warm, inbox, outbox, args.timeout)
        for i in range(args.latency_repeats):
            time.sleep(1.0)  # idle: nothing settling or running
            image = crops(photos, 1, args.latency_size, seed=200 + i)
            staged = write_pngs(image, folder / f"stage{i}", f"lat{i}_")
            flush_disk()
            times.append(drop_and_wait(daemon, staged, inbox, outbox, args.timeout))
        daemon.read_events()
        job_ms = [r["ms"] for _, r in daemon.events if r.get("event") == "file_processed"]
    return {"settle_seconds": settle, "size": args.latency_size, "times_s": times,
            "median_s": statistics.median(times), "max_s": max(times), "min_s": min(times),
            "worker_job_ms_median": statistics.median(job_ms) if job_ms else None}


def measure_latency(args: argparse.Namespace, work: Path, photos: Sequence[Path]) -> dict[str, Any]:
    """Latency at the chosen settle time and at the default 2 s: settling dominates it, so show both."""
    series = []
    for settle in dict.fromkeys((args.settle, 2.0)):
        series.append(latency_series(args, work / f"latency-{settle}", photos, settle))
        print(f"latency settle {settle}: median {series[-1]['median_s']:.3f} s, max {series[-1]['max_s']:.3f} s",
              flush=True)
    return {"model": args.model, "series": series}


# -- 3. catch-up --------------------------------------------------------------------------------------------


def tiny_pngs(folder: Path, count: int, side: int) -> None:
    """`count` distinct side×side PNGs (seeded noise: every file has its own content and hash)."""
    rng = np.random.default_rng(7)
    for i in range(count):
        image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        if not cv2.imwrite(str(folder / f"t{i:06d}.png"), image):
            raise OSError(f"cannot write in {folder}")


def fill_ledger(config_path: Path, entries: int) -> float:
    """Pre-populate the ledger with `entries` done records under the real fingerprint; return seconds taken.

    Uses the `Ledger` API (start + done per entry, each fsynced), then compacts once, so the daemon finds
    what a long-running one leaves after a compaction: a big snapshot and an empty journal.
    Compacting only at the end avoids rewriting an ever larger snapshot every 10,000 records.
    """
    config = load_config(config_path)
    inbox = config.inboxes[0]
    fingerprint = check_profiles(config)[inbox.profile].fingerprint
    started = time.perf_counter()
    with Ledger.open(config.state_dir, compact_after=2 * entries + 1) as ledger:
        for i in range(entries):
            sha = hashlib.sha256(f"old-{i}".encode()).hexdigest()
            entry = ledger.record_start(sha, fingerprint, inbox=inbox_id(inbox), source=f"old/{i:06d}.png")
            ledger.record_done(entry.key, output=inbox.outbox / "old" / f"{i:06d}.png", output_size=1000)
        ledger.compact()
    return time.perf_counter() - started


def pending(status: dict[str, Any] | None) -> int | None:
    """Files the daemon still has to look at (settling, queued, in flight), or None without a status."""
    if status is None or status.get("state") != "running":
        return None
    return sum(i["settling"] + i["queued"] + i["in_flight"] for i in status["inboxes"])


def catchup_run(args: argparse.Namespace, daemon: Daemon, outbox: Path, files: int) -> dict[str, Any]:
    """Start the daemon on a full inbox; time READY and every output; sample RSS throughout."""
    progress: list[tuple[float, int]] = []
    with running(daemon), RssSampler(daemon.pid) as rss:
        ready_at = daemon.wait_event("daemon_ready", args.timeout) - daemon.started_at

        def all_out() -> bool:
            daemon.check_alive()
            progress.append((time.perf_counter() - daemon.started_at, count_outputs(outbox)))
            return progress[-1][1] >= files

        done_at = wait_until(f"{files} outputs", all_out, args.catchup_timeout, poll=0.25) - daemon.started_at
        tree = descendants(daemon.pid)
        hwm = {p: status_kb(p, "VmHWM") for p in tree}
        cpu_main, cpu_tree = cpu_seconds([daemon.pid]), cpu_seconds(tree)
        daemon.read_events()
    first = next(t for t, n in progress if n > 0)
    half = next(t for t, n in progress if n >= files // 2)
    return {
        "ready_s": ready_at,
        "ledger_open_ms": (daemon.find_event("ledger_opened") or {}).get("ms"),
        "first_output_s": first,
        "all_outputs_s": done_at,
        "files_per_s_ready_to_all": files / (done_at - ready_at),
        "files_per_s_first_half": (files // 2) / (half - first),
        "files_per_s_second_half": (files - files // 2) / (done_at - half),
        "peak_rss_tree_mb": rss.peak_kb / 1024,
        "peak_rss_tree_processes": rss.peak_processes,
        "daemon_vmhwm_mb": hwm.get(daemon.pid, 0) / 1024,
        "vmhwm_tree_mb": sum(hwm.values()) / 1024,
        "cpu_s_daemon_main_process": cpu_main,
        "cpu_s_workers_and_helpers": cpu_tree - cpu_main,
        "rss_mb_over_time": [(round(t, 1), round(kb / 1024))
                             for t, kb in rss.samples[:: max(1, len(rss.samples) // 20)]],
        "compactions": sum(1 for _, r in daemon.events if r.get("event") == "ledger_compacted"),
        "compaction_ms": [r["ms"] for _, r in daemon.events if r.get("event") == "ledger_compacted"],
        "processed_log_lines": sum(1 for _, r in daemon.events if r.get("event") == "file_processed"),
        "exit_status_after_sigterm": daemon.exit_status,
    }


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time consumed so far by these processes."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_idle(daemon: Daemon, timeout: float, window: float = 1.0, quiet_cpu: float = 0.03) -> float:
    """Time (perf_counter) from which the daemon is idle: nothing pending in status.json, and its process
    tree used at most `quiet_cpu` CPU seconds over the following `window` seconds.

    The status file alone can't say when a startup scan is over: it is written at most once a second and
    may show an empty queue before the scanner's hints arrive. CPU quiet alone can't either (a settle wait
    is quiet). Both together can. Resolution: about 0.1 s plus up to one status period.
    """
    history: list[tuple[float, float]] = []
    found: list[float] = []

    def quiet() -> bool:
        daemon.check_alive()
        now = time.perf_counter()
        history.append((now, cpu_seconds(descendants(daemon.pid))))
        while len(history) > 1 and history[1][0] <= now - window:
            history.pop(0)
        start, cpu_then = history[0]
        if now - start >= window and history[-1][1] - cpu_then <= quiet_cpu and pending(daemon.status()) == 0:
            found.append(start)
            return True
        return False

    wait_until("the daemon to become idle", quiet, timeout, poll=0.1)
    return found[0]


def restart_run(args: argparse.Namespace, daemon: Daemon, outbox: Path) -> dict[str, Any]:
    """Restart with every file already done: time until idle, and prove nothing is reprocessed."""
    before = {e.name: e.stat().st_mtime_ns for e in os.scandir(outbox)}
    daemon.forget_log()
    with running(daemon), RssSampler(daemon.pid) as rss:
        ready = daemon.wait_event("daemon_ready", args.timeout)
        idle_at = wait_idle(daemon, args.catchup_timeout)
        time.sleep(2.0)  # give a late reprocessing a chance to show
        daemon.read_events()
        final = daemon.status() or {}
    after = {e.name: e.stat().st_mtime_ns for e in os.scandir(outbox)}
    changed = sum(1 for name, mtime in after.items() if before.get(name) != mtime)
    return {
        "ready_s": ready - daemon.started_at,
        "idle_s": idle_at - daemon.started_at,
        "outputs_changed_or_new": changed,
        "processed_log_lines": sum(1 for _, r in daemon.events if r.get("event") == "file_processed"),
        "peak_rss_tree_mb": rss.peak_kb / 1024,
        "final_ledger_counts": final.get("ledger"),
        "final_inbox_counters": [{k: i[k] for k in ("done", "failed", "duplicates", "skipped")}
                                 for i in final.get("inboxes", [])],
        "exit_status_after_sigterm": daemon.exit_status,
    }


def measure_catchup(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    folder = work / "catchup"
    daemon = new_daemon(folder, model=args.catchup_model, settle=args.settle, workers=2, threads=1)
    outbox = folder / "outbox"
    started = time.perf_counter()
    tiny_pngs(folder / "inbox", args.files, args.tiny_size)
    make_files_s = time.perf_counter() - started
    flush_disk()
    sample = sorted((folder / "inbox").iterdir())[: args.engine_sample]
    engine_s = engine_in_process(daemon.config, sample, work / "catchup-engine")
    fill_s = fill_ledger(daemon.config, args.ledger_entries)
    flush_disk()
    print(f"catch-up set-up: {args.files} files in {make_files_s:.1f} s, ledger of {args.ledger_entries} "
          f"in {fill_s:.1f} s; engine alone {len(sample) / engine_s:.0f} files/s", flush=True)
    first = catchup_run(args, daemon, outbox, args.files)
    print(f"catch-up: ready {first['ready_s']:.2f} s, all outputs {first['all_outputs_s']:.1f} s, "
          f"{first['files_per_s_ready_to_all']:.1f} files/s, peak RSS {first['peak_rss_tree_mb']:.0f} MB", flush=True)
    again = restart_run(args, daemon, outbox)
    print(f"restart: ready {again['ready_s']:.2f} s, idle {again['idle_s']:.2f} s, "
          f"changed outputs {again['outputs_changed_or_new']}", flush=True)
    return {"files": args.files, "side": args.tiny_size, "ledger_entries": args.ledger_entries,
            "model": args.catchup_model, "settle_seconds": args.settle, "ledger_fill_s": fill_s,
            "engine_1proc_1thread_files_per_s": len(sample) / engine_s, "engine_sample": len(sample),
            "daemon_rate_over_engine": first["files_per_s_ready_to_all"] / (len(sample) / engine_s),
            "first_start": first, "restart": again}


# -- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="JSON file for the figures")
    parser.add_argument("--phases", default="throughput,latency,catchup", help="comma-separated subset")
    parser.add_argument("--model", default="edsr-lite", help="model for throughput and latency (name or file)")
    parser.add_argument("--catchup-model", default=str(DEFAULT_CATCHUP_MODEL), help="cheap model for catch-up")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of real photos to crop")
    parser.add_argument("--photo-set", type=Path, default=DEFAULT_PHOTOS / "SunHays80",
                        help="overhead: folder of real photos (the largest here, ≤ 1 MP) to scale up")
    parser.add_argument("--images", type=int, default=40, help="throughput: images per round")
    parser.add_argument("--size", type=int, default=256, help="throughput: crop side")
    parser.add_argument("--repeats", type=int, default=3, help="throughput: rounds (medians are reported)")
    parser.add_argument("--photo-model", default=str(DEFAULT_CATCHUP_MODEL),
                        help="overhead: model for photo-sized jobs (a cheap one shows the daemon's share most)")
    parser.add_argument("--photo-images", type=int, default=6, help="overhead: photos per round")
    parser.add_argument("--photo-side", type=int, default=1400, help="overhead: long side of those photos, px")
    parser.add_argument("--settle", type=float, default=0.5, help="settle_seconds of the inboxes")
    parser.add_argument("--latency-size", type=int, default=128)
    parser.add_argument("--latency-repeats", type=int, default=5)
    parser.add_argument("--files", type=int, default=10_000, help="catch-up: files already in the inbox")
    parser.add_argument("--tiny-size", type=int, default=16, help="catch-up: side of those files")
    parser.add_argument("--engine-sample", type=int, default=1000,
                        help="catch-up: how many of those files the engine-alone baseline processes")
    parser.add_argument("--ledger-entries", type=int, default=100_000, help="catch-up: old ledger entries")
    parser.add_argument("--timeout", type=float, default=300.0, help="limit for each ordinary wait, seconds")
    parser.add_argument("--catchup-timeout", type=float, default=1200.0, help="limit for the catch-up, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (for inspection)")
    return parser.parse_args(argv)


def machine() -> dict[str, Any]:
    """Where and on what code the figures were taken (others commit to this checkout while it runs)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "opencv": cv2.__version__,
            "loadavg_at_start": os.getloadavg(), "git_head": git("rev-parse", "--short", "HEAD"),
            "srd_modified": git("status", "--porcelain", "--", "srd").splitlines()}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging("warning", "console")  # the in-process engine and ledger fill: only problems
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - {"throughput", "overhead", "latency", "catchup"}
    if unknown:
        raise SystemExit(f"unknown phases: {', '.join(sorted(unknown))}")
    figures: dict[str, Any] = {"machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    work = Path(tempfile.mkdtemp(prefix="srd-bench-daemon-", dir="/tmp"))
    try:
        photos = find_photos(args.photos) if set(phases) & {"throughput", "overhead", "latency"} else []
        for phase in phases:
            started = time.perf_counter()
            if phase == "throughput":
                figures[phase] = measure_throughput(args, work, photos)
            elif phase == "overhead":
                figures[phase] = measure_overhead(args, work, sorted(find_photos(args.photo_set)))
            elif phase == "latency":
                figures[phase] = measure_latency(args, work, photos)
            else:
                figures[phase] = measure_catchup(args, work)
            figures[phase]["phase_wall_s"] = time.perf_counter() - started
            args.output.write_text(json.dumps(figures, indent=2) + "\n")  # keep what is done if a later phase fails
    finally:
        if args.keep:
            print(f"bench: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
