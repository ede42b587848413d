"""Benchmark one full walk of a large inbox, as a polled (NFS/SMB) inbox does every `poll_interval`.

With `on_success: keep` (the default) processed photos stay in the inbox, so a NAS inbox can hold
tens of thousands of files and the poller walks all of them every few seconds. This builds a tree of
empty files (FOLDERS folders × FILES files, plus a few junk names the rules drop) and prints the best
of ROUNDS walks with `srd.daemon.scan.scan_inbox` and the default rules plus two user globs.

Example (compare commits by running it with another checkout first on PYTHONPATH)::

    python scripts/bench_scan.py --folders 20 --files 500
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from srd.daemon.scan import IgnoreRules, scan_inbox


def build_tree(root: Path, folders: int, files: int) -> None:
    for f in range(folders):
        folder = root / f"album{f:03d}" / "camera"
        folder.mkdir(parents=True)
        for i in range(files):
            (folder / f"IMG_{i:05d}.jpg").touch()
        for junk in (".DS_Store", "Thumbs.db", "IMG_00000.xmp"):
            (folder / junk).touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", type=int, default=20)
    parser.add_argument("--files", type=int, default=500, help="images per folder")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rules = IgnoreRules(["*.xmp", "*.json"])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tree(root, args.folders, args.files)
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            found = sum(1 for _ in scan_inbox(root, rules))
            times.append(time.perf_counter() - started)
    print(f"{found} files in {args.folders} folders: best {min(times) * 1000:.0f} ms per walk "
          f"({min(times) / found * 1e6:.1f} µs per file), worst {max(times) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
