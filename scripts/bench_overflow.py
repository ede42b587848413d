"""Measure whether a real `srd run` stays quiet on a big inbox tree (inotify, native mode).

For each tree size it builds an inbox of FOLDERS empty sub-folders (100 per parent) before starting
`srd run` on it, or with ``--while-running`` after (a big folder tree copied into a watched inbox), and
after a warm-up reports over SECONDS of idling: the daemon's CPU use (% of one core), the
inotify queue overflows it saw (status.json's ``events_lost``, or watchdog's own overflow warnings on
stderr for versions that don't report them), and how long a file dropped into the deepest folder then
took to be processed (found by an event: the reconcile scan is an hour away).

``--burst N`` first writes N files that srd ignores (dot-files) into the inbox at once, as an unzip or a
sync would: a burst bigger than the kernel's inotify queue (``fs.inotify.max_queued_events``) overflows it,
and what matters is whether the daemon settles down afterwards. The daemon is stopped (SIGSTOP) while the
burst is written, as a busy or swapped-out process would be, so that the overflow happens for certain.

Example::

    python scripts/bench_overflow.py --folders 5000 50000 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
ESPCN_X2 = REPO.parent / "shared" / "models" / "opencv-zoo" / "ESPCN_x2.pb"
TICKS = os.sysconf("SC_CLK_TCK")


def build_tree(inbox: Path, folders: int, flat: bool = False) -> Path:
    """`folders` folders, 100 under each parent (or all in the inbox itself); returns the last one."""
    last = inbox
    for i in range(folders):
        last = inbox / f"d{i:06d}" if flat else inbox / f"p{i // 100:04d}" / f"d{i % 100:02d}"
        last.mkdir(parents=True, exist_ok=True)
    return last


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(folders: int, seconds: float, warmup: float, while_running: bool, flat: bool,
            burst: int) -> dict[str, float | int | None]:
    with tempfile.TemporaryDirectory(prefix="srd-overflow-") as tmp:
        root = Path(tmp)
        inbox = root / "in"
        inbox.mkdir()
        deepest = inbox if while_running else build_tree(inbox, folders, flat)
        config = root / "srd.yaml"
        config.write_text(yaml.safe_dump({
            "state_dir": str(root / "state"), "workers": 1, "threads_per_worker": 1, "reconcile_interval": 3600,
            "profiles": {"p": {"stages": [{"upscale": {"model": str(ESPCN_X2), "scale": 2}}]}},
            "inboxes": [{"path": str(inbox), "outbox": str(root / "out"), "failed": str(root / "failed"),
                         "profile": "p", "mode": "native", "settle_seconds": 0.3}],
            "log": {"level": "info", "format": "json"},
        }))
        proc = subprocess.Popen([sys.executable, "-m", "srd", "run", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 300
            while not any('"daemon_ready"' in line for line in lines):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("srd run did not start:\n" + "".join(lines[-20:]))
                time.sleep(0.1)
            if while_running:
                deepest = build_tree(inbox, folders, flat)
            if burst:
                proc.send_signal(signal.SIGSTOP)
                for i in range(burst):
                    (inbox / f".burst{i:06d}").write_bytes(b"x")
                proc.send_signal(signal.SIGCONT)
            time.sleep(warmup)
            overflows_before = _overflows(root, lines)
            cpu_before, started = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(seconds)
            cpu = (cpu_seconds(proc.pid) - cpu_before) / (time.monotonic() - started) * 100
            overflows_total = _overflows(root, lines)
            rescans = sum('"inbox_events_lost_rescanning"' in line for line in list(lines))

            data = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
            dropped = time.monotonic()
            cv2.imwrite(str(deepest / "late.png"), data)
            output = root / "out" / deepest.relative_to(inbox) / "late.png"
            found_s = None
            while time.monotonic() - dropped < 60:
                if output.exists():
                    found_s = time.monotonic() - dropped
                    break
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"folders": folders, "cpu_percent": round(cpu, 1), "overflows": overflows_total,
            "idle_overflows": overflows_total - overflows_before, "rescans": rescans,
            "new_file_found_s": None if found_s is None else round(found_s, 2)}


def _overflows(root: Path, lines: list[str]) -> int:
    """Overflows so far: status.json's count where srd reports it, else watchdog's warnings."""
    try:
        status = json.loads((root / "state" / "status.json").read_text())
        lost = status["inboxes"][0].get("events_lost")
    except (OSError, ValueError, KeyError, IndexError):
        lost = None
    if lost is not None:
        return int(lost)
    return sum("queue overflowed" in line.lower() for line in list(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--seconds", type=float, default=20, help="idle time measured")
    parser.add_argument("--warmup", type=float, default=10, help="seconds after start-up before measuring")
    parser.add_argument("--burst", type=int, default=0, help="ignored files written at once before measuring")
    parser.add_argument("--flat", action="store_true", help="all folders directly in the inbox")
    parser.add_argument("--while-running", action="store_true", help="build the tree after srd has started")
    args = parser.parse_args()
    print(f"{'folders':>8} {'cpu % (idle)':>13} {'overflows':>10} {'while idle':>11} {'rescans':>8} "
          f"{'new file found after (s)':>25}")
    for folders in args.folders:
        row = measure(folders, args.seconds, args.warmup, args.while_running, args.flat, args.burst)
        print(f"{row['folders']:>8} {row['cpu_percent']:>13} {row['overflows']:>10} {row['idle_overflows']:>11} "
              f"{row['rescans']:>8} {row['new_file_found_s']!s:>25}", flush=True)


if __name__ == "__main__":
    main()
