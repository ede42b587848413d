"""The reliability suite's shared machinery: layouts, reference outputs, audits, crash loops and load runs.

The tests (`tests/test_reliability_*.py`) run short versions of each scenario; `scripts/reliability.py`
runs the same functions with long settings and writes their figures to JSON. Everything here drives a
real `srd run` subprocess (through `daemon_helpers.DaemonProcess`) with the real zoo ESPCN ×2 model.

`SRD_LONG=1` selects the long settings in the tests too (see `scaled`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from daemon_helpers import (
    DaemonProcess,
    descendants_of,
    files_under,
    inbox_config,
    wait_for,
    write_config,
)
from structlog.testing import capture_logs

from srd.config import load_config
from srd.engine.pipeline import StageContext
from srd.executors.job import Job
from srd.executors.render import run_job
from srd.fs.atomic import is_temp_name
from srd.ledger import Ledger, State

LONG = os.environ.get("SRD_LONG") == "1"


def scaled(short: int, long: int) -> int:
    """`long` when the long suite is asked for (``SRD_LONG=1``), else `short`."""
    return long if LONG else short


def record_figures(name: str, **figures: Any) -> None:
    """Append one test's figures to the JSON-lines file named by ``SRD_FIGURES`` (scripts/reliability.py sets it)."""
    target = os.environ.get("SRD_FIGURES")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"test": name, **figures}) + "\n")


@dataclass(frozen=True)
class Layout:
    """One daemon under a test root: its config and the folders of its single inbox."""

    root: Path
    config: Path
    inbox: Path
    outbox: Path
    failed: Path
    state: Path


def make_layout(root: Path, *, inbox: dict[str, Any] | None = None, **top: Any) -> Layout:
    """Write a config for one inbox under `root` (zoo ESPCN ×2; `inbox` and `top` override settings)."""
    root.mkdir(parents=True, exist_ok=True)
    settings = inbox_config(root, **(inbox or {}))
    config = write_config(root, [settings], **top)
    return Layout(root, config, Path(settings["path"]), Path(settings["outbox"]), Path(settings["failed"]),
                  root / "state")


def image_bytes(suffix: str, size: tuple[int, int], seed: int) -> bytes:
    """A random-noise colour image encoded as `suffix` (noise defeats compression: sizes are predictable)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    ok, data = cv2.imencode(suffix, pixels)
    assert ok
    return data.tobytes()


def drop(path: Path, data: bytes) -> None:
    """Deliver a file the way most tools do: write a dot-temp name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    tmp.rename(path)


def reference_outputs(layout: Layout, inputs: dict[str, bytes]) -> dict[str, bytes]:
    """What a single clean run makes of each input: run in this process with the daemon's own profile.

    Uses one OpenCV thread, as the daemon's workers do (threads_per_worker: 1).
    """
    config = load_config(layout.config)
    profile = config.profiles[config.inboxes[0].profile]
    context = StageContext(config.worker_engine(), config.model_dirs)
    work = layout.root / "reference"
    (work / "in").mkdir(parents=True, exist_ok=True)
    (work / "out").mkdir(exist_ok=True)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with capture_logs():  # these jobs' log lines would only drown the daemon's
            expected = {}
            for name, data in inputs.items():
                source = work / "in" / name
                source.write_bytes(data)
                result = run_job(Job(source, work / "out", profile, config.max_input_pixels), context)
                assert result.ok and result.output is not None, result.error
                expected[name] = result.output.read_bytes()
        return expected
    finally:
        cv2.setNumThreads(threads)


@dataclass
class Audit:
    """What a finished run left behind, judged against the inputs: every list must be empty.

    `lost`: inputs with neither an output nor a place in the failed folder; `duplicated`: inputs with more
    than one result (an extra suffixed output, or output *and* failure); `half_written`: outputs that
    don't decode; `mismatched`: outputs that decode but differ from a clean run's bytes; `temps`: srd temp
    files anywhere; `unexplained_failures`: failed inputs without a reason file; `ledger`: disagreements
    between the ledger and the outbox.
    """

    inputs: int
    outputs: int
    failed: int
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    half_written: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)
    unexplained_failures: list[str] = field(default_factory=list)
    ledger: list[str] = field(default_factory=list)

    @property
    def problems(self) -> dict[str, list[str]]:
        return {k: v for k, v in asdict(self).items() if isinstance(v, list) and v}

    def figures(self) -> dict[str, int]:
        return {"inputs": self.inputs, "outputs": self.outputs, "failed": self.failed,
                **{k: len(v) for k, v in asdict(self).items() if isinstance(v, list)}}


def audit(layout: Layout, expected: dict[str, bytes]) -> Audit:
    """Compare outbox, failed folder and ledger with `expected` (input name → clean-run output bytes).

    Call with the daemon stopped: the ledger is opened (and locked) here.
    """
    outputs = {rel: p for rel, p in files_under(layout.outbox).items() if not is_temp_name(p.name)}
    failed = {rel: p for rel, p in files_under(layout.failed).items()
              if not rel.endswith(".error.json") and not is_temp_name(p.name)}
    result = Audit(inputs=len(expected), outputs=len(outputs), failed=len(failed))
    result.temps = sorted(str(p) for p in layout.root.rglob("*") if is_temp_name(p.name))
    for name, want in expected.items():
        homes = [rel for rel in outputs if rel == name or _suffixed(rel, name)] + [rel for rel in failed if rel == name]
        if not homes:
            result.lost.append(name)
        elif len(homes) > 1:
            result.duplicated.append(name)
        if name in outputs:
            data = outputs[name].read_bytes()
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
            if decoded is None:
                result.half_written.append(name)
            elif data != want:
                result.mismatched.append(name)
    result.duplicated.extend(sorted(rel for rel in outputs if rel not in expected and not any(
        _suffixed(rel, name) for name in expected)))
    for rel, path in failed.items():
        report = path.with_name(path.name + ".error.json")
        if not report.is_file() or '"reason"' not in report.read_text():
            result.unexplained_failures.append(rel)
    result.ledger = ledger_disagreements(layout, outputs)
    return result


def _suffixed(rel: str, name: str) -> bool:
    stem, suffix = Path(name).stem, Path(name).suffix
    return rel.startswith(stem + "-") and rel.endswith(suffix) and rel[len(stem) + 1: -len(suffix) or None].isdigit()


def ledger_disagreements(layout: Layout, outputs: dict[str, Path]) -> list[str]:
    """Every done entry names an existing output of the recorded size, every output has an entry, none
    is left started."""
    problems = []
    with capture_logs(), Ledger.open(layout.state) as ledger:
        entries = list(ledger.entries())
    recorded = set()
    for entry in entries:
        if entry.state == State.STARTED:
            problems.append(f"{entry.source}: left started")
        if entry.state != State.DONE or entry.output is None:
            continue
        recorded.add(entry.output)
        if not entry.output.is_file():
            problems.append(f"{entry.source}: recorded output {entry.output} missing")
        elif entry.output.stat().st_size != entry.output_size:
            problems.append(f"{entry.source}: output size {entry.output.stat().st_size} != {entry.output_size}")
    for rel, path in outputs.items():
        if path not in recorded:
            problems.append(f"output {rel} has no ledger entry")
    return problems


# -- process measurements ------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of one process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples the resident memory of a daemon and all its descendants (forkserver, workers) every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_daemon_kib = 0
        self.peak_total_kib = 0
        self.peak_process_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            own = rss_kib(self.pid)
            others = [rss_kib(p) for p in descendants_of(self.pid)]
            self.peak_daemon_kib = max(self.peak_daemon_kib, own)
            self.peak_total_kib = max(self.peak_total_kib, own + sum(others))
            self.peak_process_kib = max(self.peak_process_kib, own, *others)
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def worker_pids(daemon_pid: int) -> list[int]:
    """The daemon's pool workers: its grandchildren (daemon → forkserver → workers)."""
    children = {int(p) for p in Path(f"/proc/{daemon_pid}/task/{daemon_pid}/children").read_text().split()}
    return [p for p in descendants_of(daemon_pid) if p not in children]


def status_of(layout: Layout) -> dict[str, Any] | None:
    """The daemon's status.json, or None before the first one (or mid-replace on an odd filesystem)."""
    try:
        return json.loads((layout.state / "status.json").read_text())
    except (OSError, ValueError):
        return None


def settled_count(outbox: Path, failed: Path, names: set[str]) -> int:
    """How many of `names` have an output in `outbox` or a place in the `failed` folder."""
    outputs = set(files_under(outbox))
    failures = set(files_under(failed))
    return sum(1 for n in names if n in outputs or n in failures)


def finish(layout: Layout, names: set[str], timeout: float) -> DaemonProcess:
    """Start a daemon and wait until every input has a result and the ledger has caught up; return it running."""
    daemon = DaemonProcess(layout.config)
    try:
        settle_all(daemon, layout, names, timeout)
    except BaseException:
        daemon.proc.kill()
        raise
    return daemon


def settle_all(daemon: DaemonProcess, layout: Layout, names: set[str], timeout: float) -> None:
    """Wait until every input has a result and the running daemon's ledger and queues are idle."""
    wait_for(lambda: settled_count(layout.outbox, layout.failed, names) == len(names), timeout,
             f"all {len(names)} inputs to have a result\n" + daemon.log_tail())
    wait_for(lambda: (s := status_of(layout)) is not None and s["pid"] == daemon.pid
             and s["ledger"].get("started", 0) == 0 and s["inboxes"][0]["in_flight"] == 0
             and s["inboxes"][0]["queued"] == 0, 30, "the ledger to settle\n" + daemon.log_tail())


# -- the crash loop ------------------------------------------------------------------------------------------


@dataclass
class CrashFigures:
    target: str
    files: int
    kills: int
    kills_mid_job: int
    jobs_interrupted: int
    restarts: int
    seconds: float
    audit: dict[str, int]
    problems: dict[str, list[str]]


def arrive(path: Path, data: bytes, *, in_place: bool) -> None:
    """An input arrives either written in place (seen half-written) or renamed in whole."""
    if in_place:
        path.write_bytes(data)
    else:
        drop(path, data)


class _Feeder:
    """Drops `inputs` into the inbox one by one over `spread_s` seconds, in a thread."""

    def __init__(self, inbox: Path, inputs: dict[str, bytes], spread_s: float, seed: int) -> None:
        self._items = list(inputs.items())
        self._gap = spread_s / max(1, len(self._items))
        self._inbox = inbox
        self._rng = random.Random(seed)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for i, (name, data) in enumerate(self._items):
            arrive(self._inbox / name, data, in_place=i % 3 == 0)
            time.sleep(self._rng.uniform(0, 2 * self._gap))

    def join(self) -> None:
        self._thread.join()


def crash_inputs(count: int, seed: int) -> dict[str, bytes]:
    """Small images of varied size and format, so jobs end at scattered moments."""
    rng = random.Random(seed)
    inputs = {}
    for i in range(count):
        suffix = ".png" if i % 2 else ".jpg"
        size = (rng.randrange(60, 300), rng.randrange(60, 400))
        inputs[f"img{i:04d}{suffix}"] = image_bytes(suffix, size, seed * 100_000 + i)
    return inputs


def crash_loop(root: Path, *, files: int, kills: int, target: str, seed: int = 1) -> CrashFigures:
    """Feed a running daemon `files` inputs while SIGKILLing it (or its workers) `kills` times at random.

    target ``daemon``: the daemon (and with it its workers) is killed and restarted each time.
    target ``worker``: one daemon runs throughout; a random worker is killed each time (as the OOM killer
    would). Then a daemon runs until every input has a result, and the result is audited.
    """
    # A daemon's death is never charged to the files it had in flight, so the daemon loop runs with the
    # default max_attempts and must fail nothing. A worker's death while the daemon lives is charged to its
    # file by design; random worker kills get room so that they test recovery, not the poison rule.
    attempts = {} if target == "daemon" else {"max_attempts": 1000}
    layout = make_layout(root, inbox={"settle_seconds": 0.2}, workers=2, **attempts)
    rng = random.Random(seed)
    inputs = crash_inputs(files, seed)
    expected = reference_outputs(layout, inputs)
    started = time.monotonic()
    mid_job = 0
    interrupted = 0
    restarts = 0
    if target == "daemon":
        feeder = _Feeder(layout.inbox, inputs, spread_s=kills * 0.9, seed=seed)
        for _ in range(kills):
            spawned = time.time()
            daemon = DaemonProcess(layout.config)
            restarts += 1
            time.sleep(rng.uniform(0.2, 1.6))
            daemon.kill(group=True)
            # Jobs this daemon journaled as started and never finished: the kill cut them short.
            with capture_logs(), Ledger.open(layout.state) as ledger:
                cut = sum(1 for e in ledger.unfinished() if e.updated_ts >= spawned)
            interrupted += cut
            mid_job += cut > 0
        feeder.join()
        daemon = finish(layout, set(inputs), timeout=60 + files * 0.5)
        restarts += 1
        assert daemon.stop() == 0
    else:
        daemon = DaemonProcess(layout.config)
        restarts += 1
        try:
            daemon.wait_ready(30)
            # Inputs arrive in one batch per kill, so there is work, and so a worker, to kill each time:
            # the pool starts workers only for work, and a machine fast enough could otherwise finish
            # the whole batch before the last kill.
            items = list(inputs.items())
            for k in range(kills):
                for i, (name, data) in enumerate(items[k * files // kills:(k + 1) * files // kills]):
                    arrive(layout.inbox / name, data, in_place=i % 3 == 0)
                    time.sleep(rng.uniform(0, 0.1))
                pids = wait_for(lambda: worker_pids(daemon.pid), 20, "a worker\n" + daemon.log_tail())
                time.sleep(rng.uniform(0.05, 0.4))
                lost_before = len(daemon.events("job_lost_retrying"))
                with suppress(ProcessLookupError):  # it ended on its own: the kill is a no-op
                    os.kill(rng.choice(pids), signal.SIGKILL)
                time.sleep(0.3)  # time for the daemon to notice
                cut = len(daemon.events("job_lost_retrying")) - lost_before
                interrupted += cut
                mid_job += cut > 0
                assert daemon.proc.poll() is None, "the daemon died with its worker\n" + daemon.log_tail()
            # The same daemon finishes the batch: a restart would clean up after the killed workers and
            # hide any temp file they left behind.
            settle_all(daemon, layout, set(inputs), timeout=60 + files * 0.5)
            assert daemon.stop() == 0
        finally:
            if daemon.proc.poll() is None:
                daemon.kill()
    result = audit(layout, expected)
    return CrashFigures(target, files, kills, mid_job, interrupted, restarts, round(time.monotonic() - started, 1),
                        result.figures(), result.problems)


# -- load ------------------------------------------------------------------------------------------------------


@dataclass
class LoadFigures:
    files: int
    seconds: float
    files_per_s: float
    peak_daemon_rss_mib: float
    peak_tree_rss_mib: float
    peak_process_rss_mib: float
    audit: dict[str, int]
    problems: dict[str, list[str]]


def load_run(root: Path, *, files: int, workers: int = 2) -> LoadFigures:
    """Drop `files` small images into the inbox at once, with the daemon running; measure and audit."""
    layout = make_layout(root, inbox={"settle_seconds": 0.5}, workers=workers)
    staging = root / "staging"
    staging.mkdir()
    names = set()
    for i in range(files):
        name = f"load{i:05d}.png"
        (staging / name).write_bytes(image_bytes(".png", (24, 32), i))
        names.add(name)
    sample = sorted(names)[:: max(1, files // 20)]
    expected_sample = reference_outputs(layout, {n: (staging / n).read_bytes() for n in sample})
    daemon = DaemonProcess(layout.config)
    sampler = RssSampler(daemon.pid)
    try:
        daemon.wait_ready(30)
        started = time.monotonic()
        staging.rename(layout.inbox / "batch")  # all at once: one rename brings the whole batch in
        wait_for(lambda: settled_count(layout.outbox / "batch", layout.failed / "batch", names) == files,
                 60 + files * 0.5,
                 f"{files} outputs\n" + daemon.log_tail(), interval=0.2)
        seconds = time.monotonic() - started
        assert daemon.stop() == 0
    finally:
        sampler.stop()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    expected = {f"batch/{n}": b"" for n in names}
    result = audit(layout, expected)
    result.mismatched = [n for n in sample if (layout.outbox / "batch" / n).read_bytes() != expected_sample[n]]
    return LoadFigures(files, round(seconds, 1), round(files / seconds, 1), round(sampler.peak_daemon_kib / 1024, 1),
                       round(sampler.peak_total_kib / 1024, 1), round(sampler.peak_process_kib / 1024, 1),
                       result.figures(), result.problems)


# -- hand-made images OpenCV can't write ------------------------------------------------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def palette_png(width: int, height: int, seed: int) -> bytes:
    """An 8-bit palette (colour type 3) PNG with a 16-colour palette."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(16, 3), dtype=np.uint8).tobytes()
    indices = rng.integers(0, 16, size=(height, width), dtype=np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in indices)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"PLTE", palette)
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def cmyk_jpeg(blocks_w: int, blocks_h: int, seed: int) -> bytes:
    """A baseline 4-component (Adobe CMYK) JPEG of flat 8×8 blocks, encoded by hand.

    Each block holds only a DC coefficient; the Huffman tables are minimal (DC categories 0–11 with
    4-bit codes; AC: end-of-block only). OpenCV can decode CMYK JPEGs but not write them.
    """
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 256, size=(blocks_h, blocks_w, 4))

    def segment(marker: int, body: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body

    adobe = b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0)  # transform 0: no colour transform (CMYK)
    dqt = b"\x00" + bytes([1] * 64)
    sof = struct.pack(">BHHB", 8, blocks_h * 8, blocks_w * 8, 4) + b"".join(bytes([c + 1, 0x11, 0]) for c in range(4))
    dc_table = b"\x00" + bytes([0, 0, 0, 12] + [0] * 12) + bytes(range(12))
    ac_table = b"\x10" + bytes([1] + [0] * 15) + b"\x00"
    sos = b"\x04" + b"".join(bytes([c + 1, 0x00]) for c in range(4)) + b"\x00\x3f\x00"
    bits: list[str] = []
    previous = [0, 0, 0, 0]
    for by in range(blocks_h):
        for bx in range(blocks_w):
            for c in range(4):
                dc = 8 * (int(values[by, bx, c]) - 128)
                diff, previous[c] = dc - previous[c], dc
                size = abs(diff).bit_length()
                bits.append(format(size, "04b"))
                if size:
                    bits.append(format(diff if diff > 0 else diff + (1 << size) - 1, f"0{size}b"))
                bits.append("0")  # AC: end of block
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytes(int(stream[i:i + 8], 2) for i in range(0, len(stream), 8)).replace(b"\xff", b"\xff\x00")
    return (b"\xff\xd8" + segment(0xEE, adobe) + segment(0xDB, dqt) + segment(0xC0, sof)
            + segment(0xC4, dc_table) + segment(0xC4, ac_table) + segment(0xDA, sos) + data + b"\xff\xd9")


# -- mounts ---------------------------------------------------------------------------------------------------


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """Mount a size-limited tmpfs on `folder` for the duration; always unmounted afterwards.

    Skips (with the reason) only where mounting is impossible: not root, or no mount permission.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
