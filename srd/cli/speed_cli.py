"""`srd bench speed`: its arguments and its table (or JSON)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from srd.engine.registry import ModelSpec
from srd.engine.upscaler import EngineSettings
from srd.errors import UsageError


def _numbers(minimum: int) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
        if any(value < minimum for value in values):
            raise argparse.ArgumentTypeError(f"every value must be at least {minimum}")
        return values
    return parse


def _at_least_zero(text: str) -> int:
    value = int(text)  # argparse reports a ValueError as an invalid value
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def add_speed_arguments(speed: argparse.ArgumentParser) -> None:
    from srd.quality.speed import RUNTIME_VARIANTS

    speed.add_argument("--model", "-m", action="append", required=True, help="model name or file; repeatable")
    speed.add_argument("--scale", "-s", type=int)
    speed.add_argument("--runtimes", default="default",
                       help=f"comma-separated, of: {', '.join(RUNTIME_VARIANTS)} ('default': the configured engine)")
    speed.add_argument("--threads", dest="thread_counts", type=_numbers(1), default=[1],
                       help="comma-separated thread counts (default 1)")
    speed.add_argument("--tiles", type=_numbers(0), default=[0, 64, 128, 192, 256],
                       help="comma-separated tile sizes (0: untiled)")
    speed.add_argument("--tile-pad", type=_at_least_zero, help="LR pixels of context around each tile")
    speed.add_argument("--size", default="512x512", help="LR image size HxW")
    speed.add_argument("--repeats", type=int, default=2, help="timed runs per measurement, after a warm-up")
    speed.add_argument("--rounds", type=int, default=1, help="measure everything this many times, alternating")
    speed.add_argument("--no-upsample", action="store_true", help="leave out the zoo models' upsample() rows")
    speed.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    speed.add_argument("--config", "-c", type=Path, help="YAML config (model_dirs, engine)")


def run_speed(args: argparse.Namespace, specs: list[ModelSpec], engine: EngineSettings) -> None:
    from srd.quality.speed import RUNTIME_VARIANTS, compare_speed, plans_for

    runtimes = args.runtimes.split(",")
    unknown = [name for name in runtimes if name not in RUNTIME_VARIANTS]
    if unknown:
        raise UsageError(f"--runtimes: unknown {', '.join(unknown)} (known: {', '.join(RUNTIME_VARIANTS)})")
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size: expected HxW such as 384x512, got {args.size!r}") from None
    plans = plans_for(specs, runtimes, args.thread_counts, args.tiles, with_upsample=not args.no_upsample)
    rows = compare_speed(plans, engine, (height, width), repeats=args.repeats, rounds=args.rounds)
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=1))
        return
    peaks = ", ".join(f"{row.threads} thread(s) {row.peak_gmacs:.1f}" for row in
                      {row.threads: row for row in rows}.values())
    print(f"{height}x{width} LR, pad {engine.tile_pad}, device {engine.device}, {args.rounds} round(s) of "
          f"{args.repeats} timed run(s); float32 matmul peak GMAC/s: {peaks}")
    print("| model | runtime | threads | tile | µs per LR pixel: median (range) | GMAC/s | of peak | "
          "peak RSS (MB) | time ÷ first model's |")
    print("|---|---|---|---|---|---|---|---|---|")
    first = {(row.variant, row.threads, row.tile): row.median_us for row in rows if row.model == rows[0].model}
    for row in rows:
        spread = f"{min(row.us_per_lr_pixel):.2f}–{max(row.us_per_lr_pixel):.2f}"
        key = (row.variant, row.threads, row.tile)
        ratio = f"{row.median_us / first[key]:.2f}" if key in first else "–"
        runtime = f"default: {row.runtime}" if row.variant == "default" else row.runtime
        print(f"| {row.model} | {runtime} | {row.threads} | {row.tile or 'untiled'} | {row.median_us:.2f} "
              f"({spread}) | {row.gmacs:.1f} | {row.peak_fraction:.0%} | {row.peak_rss_mb:.0f} | {ratio} |")
