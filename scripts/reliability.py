"""Run the long reliability suite and write its figures to JSON (the numbers in RELIABILITY.md).

    python scripts/reliability.py --output reliability.json

It runs, against a real `srd run` with the zoo ESPCN ×2:

1. the crash loop with the daemon's whole process group SIGKILLed at random moments (200 kills) while 100
   files arrive, with the default max_attempts: no file may end in the failed folder;
2. the same with random workers SIGKILLed instead;
3. a batch of 2,000 files dropped at once (throughput, peak RSS);
4. every reliability test (`tests/test_reliability_*.py`) with ``SRD_LONG=1``: hostile input with a
   4000×3000 image, ten share outages per watch mode, disk full, config and permissions.

Each of 1–3 is audited: every input must end with exactly one output identical to a clean run's (or in
the failed folder with a reason), no temp file may remain, and the ledger must agree with the outbox.
The exit status is non-zero if any audit finds a problem or any test fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from reliability_harness import crash_loop, load_run  # noqa: E402 (needs tests/ on sys.path, put there above)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import cv2

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:")))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 1024**2, 1),
            "kernel": platform.release(), "python": platform.python_version(), "opencv": cv2.__version__,
            "load_average_at_start": os.getloadavg()}


def run_pytest_long() -> dict[str, Any]:
    """Every reliability test with the long settings; returns the outcome and the summary line."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_reliability_hostile.py",
               "tests/test_reliability_outage.py", "tests/test_reliability_disk.py",
               "tests/test_reliability_config.py", "tests/test_reliability_symlinks.py",
               "tests/test_reliability_ledger.py", "tests/test_faults.py"]
    started = time.monotonic()
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as figures:
        env = {**os.environ, "SRD_LONG": "1", "SRD_FIGURES": figures.name}
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, check=False)
        recorded = [json.loads(line) for line in figures.read().splitlines() if line.strip()]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return {"command": "SRD_LONG=1 python " + " ".join(command[1:]), "returncode": result.returncode,
            "summary": lines[-1] if lines else "", "seconds": round(time.monotonic() - started, 1),
            "failures": [line for line in lines if line.startswith("FAILED")], "figures": recorded}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "reliability.json", help="where to write the figures")
    parser.add_argument("--daemon-files", type=int, default=100, help="inputs of the daemon crash loop")
    parser.add_argument("--daemon-kills", type=int, default=200, help="SIGKILLs of the daemon's process group")
    parser.add_argument("--files", type=int, default=300, help="inputs of the worker crash loop")
    parser.add_argument("--kills", type=int, default=60, help="SIGKILLs of random workers")
    parser.add_argument("--load-files", type=int, default=2000, help="files in the load batch")
    parser.add_argument("--skip-tests", action="store_true", help="only the crash loops and the load run")
    args = parser.parse_args()

    report: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="srd-reliability-") as scratch:
        root = Path(scratch)
        sizes = {"daemon": (args.daemon_files, args.daemon_kills), "worker": (args.files, args.kills)}
        for target, (files, kills) in sizes.items():
            print(f"crash loop, killing the {target}: {files} files, {kills} kills …", flush=True)
            figures = crash_loop(root / f"crash-{target}", files=files, kills=kills, target=target, seed=7)
            report[f"crash_{target}"] = asdict(figures)
            print(json.dumps(report[f"crash_{target}"]), flush=True)
        print(f"load: {args.load_files} files at once …", flush=True)
        report["load"] = asdict(load_run(root / "load", files=args.load_files))
        print(json.dumps(report["load"]), flush=True)
    if not args.skip_tests:
        print("long reliability tests (SRD_LONG=1) …", flush=True)
        report["tests_long"] = run_pytest_long()
        print(json.dumps(report["tests_long"]), flush=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {args.output}")
    clean = all(not report[k]["problems"] for k in ("crash_daemon", "crash_worker", "load"))
    return 0 if clean and report.get("tests_long", {"returncode": 0})["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
