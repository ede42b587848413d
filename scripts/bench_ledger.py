"""Benchmark the ledger at scale: load and compaction time, and memory, alone and in a starting daemon.

A NAS daemon keeps one ledger entry per photo it ever processed, so its memory grows with the library.
This writes a snapshot of N ``done`` entries (with their stat-cache lines) in the ledger's format 1 (what
srd wrote before), then measures, each in a fresh process:

- the first ``Ledger.open``, which migrates it to the current format (seconds, peak RSS);
- ``Ledger.open`` of the migrated ledger (seconds, RSS after, peak RSS), one ``compact`` waited for
  (seconds), and the calls of a loop that records 2,000 entries and looks up others while compactions run in
  the background (slowest call, 99th percentile, and how many calls ran during a compaction);
- ``srd run`` starting on it with an empty inbox: seconds to READY, RSS and peak RSS of the main process.

Example::

    python scripts/bench_ledger.py --entries 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

FINGERPRINT = "0123456789abcdef"
INBOX_ID = "photos-3f2a9c"

MIGRATE_PROBE = """
import json, sys, time
from pathlib import Path
from srd.ledger import Ledger
from srd.logs import configure_logging

configure_logging("warning", "json")
started = time.perf_counter()
Ledger.open(Path(sys.argv[1])).close()
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"migrate_s": time.perf_counter() - started, "peak_mb": peak / 1024}))
"""

LEDGER_PROBE = """
import hashlib, json, sys, time
from pathlib import Path
from srd.fs.fileversion import FileVersion
from srd.ledger import Ledger, make_key
from srd.logs import configure_logging

def kb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))

configure_logging("warning", "json")
started = time.perf_counter()
ledger = Ledger.open(Path(sys.argv[1]))
figures = {"open_s": time.perf_counter() - started, "rss_after_open_mb": kb("VmRSS") / 1024,
           "peak_after_open_mb": kb("VmHWM") / 1024}
started = time.perf_counter()
ledger.compact()
figures["compact_s"] = time.perf_counter() - started
ledger.close()
ledger = Ledger.open(Path(sys.argv[1]), compact_after=500)
during, n = [], int(sys.argv[2])
for i in range(2000):
    sha = hashlib.sha256(f"new-{i}".encode()).hexdigest()
    old = hashlib.sha256(f"photo-{i * 397 % n}".encode()).hexdigest()
    for call in (lambda: ledger.record_start(sha, sys.argv[3], inbox="bench", source=f"new/{i}.jpg"),
                 lambda: ledger.get(make_key(old, sys.argv[3])),
                 lambda: ledger.cached_hash("bench", f"new/{i}.jpg", FileVersion(1, 2, 3, 4)),
                 lambda: ledger.outputs_of("bench", f"new/{i}.jpg"),
                 lambda: ledger.record_done(make_key(sha, sys.argv[3]), output=Path(f"/o/{i}.jpg"), output_size=1)):
        t = time.perf_counter()
        call()
        if ledger.compacting:
            during.append(time.perf_counter() - t)
ledger.close()
during.sort()
figures.update(calls_during_compaction=len(during), slowest_call_ms=1000 * during[-1] if during else None,
               p99_call_ms=1000 * during[int(len(during) * 0.99)] if during else None,
               peak_after_compactions_mb=kb("VmHWM") / 1024)
print(json.dumps(figures))
"""


def write_snapshot(state: Path, entries: int) -> int:
    """A format-1 snapshot of `entries` done entries; returns its size in bytes."""
    records, hashes = {}, []
    for i in range(entries):
        sha = hashlib.sha256(f"photo-{i}".encode()).hexdigest()
        key = f"{sha}:{FINGERPRINT}"
        source = f"{2000 + i % 25}/album-{i // 500:04d}/IMG_{i:06d}.jpg"
        ts = 1_764_000_000.0 + i
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime(ts))
        records[key] = {
            "key": key, "sha256": sha, "fingerprint": FINGERPRINT, "inbox": INBOX_ID, "source": source,
            "state": "done", "attempts": 1, "created_at": stamp, "created_ts": ts, "updated_at": stamp,
            "updated_ts": ts, "output": f"/srv/photos/outbox/{source}", "output_size": 4_000_000 + i,
            "error": None, "disposition": "kept",
        }
        hashes.append([INBOX_ID, source, 3_000_000 + i, int(ts * 1e9), sha])
    state.mkdir(parents=True)
    path = state / "ledger.json"
    path.write_text(json.dumps({"format": 1, "seq": 3 * entries, "entries": records, "hashes": hashes},
                               separators=(",", ":")))
    return path.stat().st_size


def measure(probe: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", probe, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure_daemon(folder: Path, state: Path, timeout: float) -> dict[str, Any]:
    """Start `srd run` on `state`, wait for READY, read its memory, stop it."""
    config = {
        "state_dir": str(state), "workers": 1, "log": {"level": "info", "format": "json"},
        "inboxes": [{"path": str(folder / "inbox"), "outbox": str(folder / "outbox"),
                     "failed": str(folder / "failed")}],
    }
    for name in ("inbox", "outbox", "failed"):
        (folder / name).mkdir()
    (folder / "srd.yaml").write_text(yaml.safe_dump(config))
    log_path = folder / "daemon.log"
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "srd", "run", "--config", str(folder / "srd.yaml")],
                                stderr=log, stdout=log)
    try:
        while "daemon_ready" not in log_path.read_text():
            if proc.poll() is not None or time.perf_counter() - started > timeout:
                raise RuntimeError("the daemon did not become ready:\n" + log_path.read_text()[-2000:])
            time.sleep(0.02)
        ready_s = time.perf_counter() - started
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        kb = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmRSS", "VmHWM"))}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"ready_s": ready_s, "rss_mb": kb["VmRSS"] / 1024, "peak_mb": kb["VmHWM"] / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=300.0, help="limit for the daemon to become ready")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="srd-bench-ledger-") as tmp:
        folder = Path(tmp)
        size = write_snapshot(folder / "state", args.entries)
        figures = {"entries": args.entries, "snapshot_mb": size / 2**20,
                   "migration": measure(MIGRATE_PROBE, str(folder / "state")),
                   "ledger": measure(LEDGER_PROBE, str(folder / "state"), str(args.entries), FINGERPRINT),
                   "daemon": measure_daemon(folder, folder / "state", args.timeout)}
    print(json.dumps(_rounded(figures), indent=2))


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return round(value, 2) if isinstance(value, float) else value


if __name__ == "__main__":
    main()
