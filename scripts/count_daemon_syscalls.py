"""Count the system calls of a warm daemon's main process (all its threads) while it takes in new files.

Why: on a busy machine CPU and wall figures of the daemon's own per-file work (a few ms against seconds of
engine) drown in noise; the number of opens, stats, reads and fsyncs per file does not. The daemon (one
worker, the zoo ESPCN ×2, ``settle_seconds`` 0.5) first processes one file; then ``strace -f -c`` is
attached to its main process and N new crops of real photos are dropped into its inbox. The table covers
the whole window (about 4 s of idle loop around the drop, the same in every run), so compare runs of the
same N. Workers are other processes (forked by the forkserver) and are not counted.

Example::

    python scripts/count_daemon_syscalls.py --files 20
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench_daemon import (
    DEFAULT_CATCHUP_MODEL,
    DEFAULT_PHOTOS,
    crops,
    drop_and_wait,
    find_photos,
    new_daemon,
    running,
    write_pngs,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20, help="new files dropped while strace counts")
    parser.add_argument("--side", type=int, default=64, help="side of those crops, px")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="srd-syscalls-", dir="/tmp"))
    try:
        daemon = new_daemon(work, model=str(DEFAULT_CATCHUP_MODEL), settle=0.5, workers=1, threads=1)
        inbox, outbox = work / "inbox", work / "outbox"
        photos = find_photos(DEFAULT_PHOTOS)
        with running(daemon):
            daemon.wait_event("daemon_ready", 120)
            drop_and_wait(daemon, write_pngs(crops(photos, 1, args.side, seed=7), work / "warm", "w"), inbox, outbox,
                          120)
            staged = write_pngs(crops(photos, args.files, args.side, seed=8), work / "stage", "f")
            time.sleep(1)
            table = work / "strace.txt"
            tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(table), "-p", str(daemon.pid)],
                                      stderr=subprocess.DEVNULL)
            time.sleep(2)  # attached to every thread
            drop_and_wait(daemon, staged, inbox, outbox, 300)
            time.sleep(2)  # the done records and source steps after the last output
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
        print(f"{args.files} files of {args.side}x{args.side} px; system calls of the daemon's main process:")
        print(table.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
