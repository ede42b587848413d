"""Benchmark a restart over a large finished inbox: how long `srd run` takes to be idle again, and its memory.

A NAS daemon restarted (an update, a reboot) finds every photo it ever processed still in the inbox
(``on_success: keep``). This builds such a state directly, fast, rather than by running the daemon on every
file: N tiny files in folders of 1,000, their outputs in the outbox, and a ledger whose done entries, output
owners and stat-cache lines match the files' real stats (written as one generation, as a compaction would).
Then it starts `srd run` and measures: seconds to READY, seconds until idle (status.json shows nothing
pending and the process tree is CPU-quiet for 1 s), the main process's CPU seconds and RSS at idle and its
peak RSS, and that no file was processed again (no ``file_processed`` line, no output rewritten).

Example::

    python scripts/bench_restart.py --files 100000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_daemon import DEFAULT_CATCHUP_MODEL, RssSampler, cpu_seconds, new_daemon, running, status_kb, wait_idle

from srd.config import load_config
from srd.daemon.inboxes import check_profiles, inbox_id
from srd.fs.atomic import write_bytes_atomic
from srd.ledger import SNAPSHOT_NAME, make_key
from srd.ledger.base import Base
from srd.ledger.generation import generation_name, write_generation
from srd.ledger.records import Owner, Row
from srd.ledger.snapshot import manifest
from srd.ledger.tables import Layer

FOLDER_SIZE = 1000


def build(folder: Path, files: int) -> Path:
    """The finished inbox, its outbox and its ledger; returns the daemon's config path."""
    daemon = new_daemon(folder, model=str(DEFAULT_CATCHUP_MODEL), settle=0.5, workers=1, threads=1)
    config = load_config(daemon.config)
    inbox = config.inboxes[0]
    fingerprint, inbox_key = check_profiles(config)[inbox.profile].fingerprint, inbox_id(inbox)
    layer = Layer()
    stamp = time.time()
    for i in range(files):
        rel = f"{i // FOLDER_SIZE:04d}/t{i:07d}.png"
        if i % FOLDER_SIZE == 0:
            (inbox.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (inbox.outbox / rel).parent.mkdir(parents=True, exist_ok=True)
        content = f"tiny photo {i}\n".encode()
        sha = hashlib.sha256(content).hexdigest()
        source, output = inbox.path / rel, inbox.outbox / rel
        for path, data in ((source, content), (output, content * 4)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.close(fd)
        st = os.stat(source)
        key = make_key(sha, fingerprint)
        layer.entries[key] = Row(inbox_key, rel, "done", 1, stamp, stamp, str(output), 4 * len(content), None,
                                 "kept", None, 0, False)
        layer.owners[str(output)] = Owner(inbox_key, rel, key)
        layer.hashes[(inbox_key, rel)] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, bytes.fromhex(sha))
    state = config.state_dir
    state.mkdir(parents=True, exist_ok=True)
    name = generation_name(2 * files)
    write_generation(state / name, Base.empty(), [layer], 2 * files)
    write_bytes_atomic(state / SNAPSHOT_NAME, manifest(name, 2 * files))
    return daemon.config


def measure(folder: Path, timeout: float) -> dict[str, Any]:
    daemon = new_daemon(folder, model=str(DEFAULT_CATCHUP_MODEL), settle=0.5, workers=1, threads=1)
    for stale in (daemon.log_path, daemon.state_dir / "status.json"):  # an earlier round's, in a kept folder
        stale.unlink(missing_ok=True)
    outbox = folder / "outbox"
    before = sum(entry.stat().st_mtime_ns for sub in os.scandir(outbox) for entry in os.scandir(sub.path))
    with running(daemon), RssSampler(daemon.pid) as rss:
        ready = daemon.wait_event("daemon_ready", timeout)
        idle_at = wait_idle(daemon, timeout)
        rss_idle_mb = status_kb(daemon.pid, "VmRSS") / 1024
        peak_main_mb = status_kb(daemon.pid, "VmHWM") / 1024
        cpu_main_s = cpu_seconds([daemon.pid])  # what the machine's load does not inflate
        time.sleep(2.0)  # give a late reprocessing a chance to show
        daemon.read_events()
        final = daemon.status() or {}
    after = sum(entry.stat().st_mtime_ns for sub in os.scandir(outbox) for entry in os.scandir(sub.path))
    return {
        "ready_s": ready - daemon.started_at,
        "idle_s": idle_at - daemon.started_at,
        "cpu_main_s_at_idle": cpu_main_s,
        "rss_main_at_idle_mb": rss_idle_mb,
        "peak_rss_main_mb": peak_main_mb,
        "peak_rss_tree_mb": rss.peak_kb / 1024,
        "outputs_rewritten": before != after,
        "processed_log_lines": sum(1 for _, r in daemon.events if r.get("event") == "file_processed"),
        "final_inbox_counters": [{k: i[k] for k in ("done", "failed", "duplicates", "skipped")}
                                 for i in final.get("inboxes", [])],
        "exit_status_after_sigterm": daemon.exit_status,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=900.0, help="limit for READY and for idle")
    parser.add_argument("--work", type=Path, default=None, help="folder to build in (default: a temp folder)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="build the inbox in this folder and keep it; if it holds one already, reuse it "
                             "(restarts of branches compared on the same files)")
    parser.add_argument("--rounds", type=int, default=1, help="restarts measured one after the other")
    args = parser.parse_args()
    if args.keep is not None:
        run(args.keep, args.files, args.timeout, args.rounds)
        return
    with tempfile.TemporaryDirectory(prefix="srd-bench-restart-", dir=args.work) as tmp:
        run(Path(tmp), args.files, args.timeout, args.rounds)


def run(folder: Path, files: int, timeout: float, rounds: int) -> None:
    built = folder / "built"
    build_s = 0.0
    if not built.exists():
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        build(folder, files)
        build_s = time.perf_counter() - started
        built.write_text(f"{files}\n")
        print(f"built {files} files in {build_s:.0f} s", file=sys.stderr, flush=True)
    files = int(built.read_text())
    for _ in range(rounds):
        figures = {"files": files, "build_s": round(build_s, 1), **measure(folder, timeout)}
        # Printed before the folder is removed: deleting a million files takes a while.
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}, indent=2),
              flush=True)


if __name__ == "__main__":
    main()
