"""The reliability suite's daemon-kill loop with the default ``max_attempts`` (3), to show that daemon deaths
are not charged to the files they interrupt.

The suite itself runs the loop with ``max_attempts: 1000``; here every kill may cost a file one of its three
attempts if the daemon wrongly blames it. Prints the loop's figures (outputs, failed, lost, duplicated …).

Example::

    python scripts/kill_loop.py --files 100 --kills 200
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import reliability_harness as harness  # lives beside the tests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--max-attempts", type=int, default=3)
    args = parser.parse_args()
    make_layout = harness.make_layout
    harness.make_layout = lambda root, **settings: make_layout(root, **{**settings, "max_attempts": args.max_attempts})
    with tempfile.TemporaryDirectory(prefix="srd-kill-loop-") as root:
        print(harness.crash_loop(Path(root), files=args.files, kills=args.kills, target="daemon", seed=7))


if __name__ == "__main__":
    main()
