"""``srd train`` / ``python -m srd.train``: the command-line face of training, evaluation and export."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from srd.errors import ExitCode
from srd.train.model import FAMILIES, SESR_EXPAND, TAILS, Arch

# The two shipped tiers, and the candidates for the next two (see TRAINING.md for the speed measurements behind
# them): fast at edsr-lite's time per pixel or less, quality at half of edsr-base's or less.
PRESETS: dict[str, dict[str, object]] = {
    "lite": {"blocks": 8, "channels": 32, "tail": "espcn", "res_scale": 1.0},
    "base": {"blocks": 16, "channels": 64, "tail": "espcn", "res_scale": 1.0},
    "fast": {"blocks": 11, "channels": 32, "family": "sesr", "expand": SESR_EXPAND},
    "quality": {"blocks": 20, "channels": 48, "family": "sesr", "expand": SESR_EXPAND},
}


def _factors(text: str) -> tuple[float, ...]:
    factors = tuple(float(part) for part in text.split(","))
    if not all(0 < f < 1 for f in factors):
        raise argparse.ArgumentTypeError(f"downscale factors must lie between 0 and 1, not {text}")
    return factors


def _mix(text: str) -> str:
    from srd.quality.degrade import PhotoMix

    try:
        PhotoMix.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _fit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="train or resume a run (rerun the same command to resume)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="lite")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    p.add_argument("--name", help="run name (default <family>-<preset>-x<scale>, e.g. edsr-lite-x2)")
    p.add_argument("--blocks", type=int)
    p.add_argument("--channels", type=int)
    p.add_argument("--tail", choices=TAILS)
    p.add_argument("--res-scale", type=float)
    p.add_argument("--family", choices=FAMILIES, help="edsr (default), or sesr: plain 3x3 convs trained as "
                                                     "collapsible linear blocks (--blocks, --channels, --expand)")
    p.add_argument("--expand", type=int,
                   help=f"sesr: width of each linear block while training (default {SESR_EXPAND})")
    p.add_argument("--iters", type=int, required=True, help="total iterations; the cosine schedule spans them")
    p.add_argument("--stop-at", type=int, help="pause at this iteration and keep a copy runs/<name>/it<N>.pt "
                                                "for other runs to start from; rerun without it to go on")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=48, help="LR patch size")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-min", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard-fraction", type=float, default=1.0,
                   help="draw patches only from this fraction of them that bicubic reconstructs worst "
                        "(1: from anywhere)")
    p.add_argument("--downscales", type=_factors, default=(),
                   help="also train on each image shrunk by these factors first, e.g. 0.8,0.6 (scale augmentation)")
    p.add_argument("--degrade", choices=("photo",),
                   help="photo: make each LR patch by random real-world degradations (blur, resampling, noise, "
                        "JPEG) of its HR patch (see --mix), and evaluate on JPEG q75 and clean inputs")
    p.add_argument("--mix", type=_mix, default="",
                   help="with --degrade photo: changes to its mix, e.g. clean_probability=0.3,jpeg_quality=50-95 "
                        "(fields: srd.quality.degrade.PhotoMix)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast (automatic on CPUs "
                                                                "without AVX-512 or AMX, which emulate bf16 slowly)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the CUDA GPU when torch sees one, else the CPU")
    p.add_argument("--init", help="checkpoint or exported model (models/*.onnx) whose weights start a new run: "
                                  "all of them for the same architecture and scale (a warm restart), all but "
                                  "the tail otherwise")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--save-every-s", type=float, default=180.0)
    p.add_argument("--train-dir", default="../shared/datasets/train")
    p.add_argument("--bench-dir", default="../shared/datasets/bench")
    p.add_argument("--cache-dir", default=".cache/train_lr", help="where the LR training images are cached")
    p.add_argument("--runs-dir", default="runs")


def _cache_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="make the LR (and downscaled) copies of the training images ahead of "
                                     "runs, with several processes; fit makes any that are missing itself")
    p.add_argument("--scales", type=lambda text: [int(s) for s in text.split(",")], default=[2, 3, 4],
                   help="comma-separated, default 2,3,4")
    p.add_argument("--downscales", type=_factors, default=(), help="as for fit, e.g. 0.8,0.6")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: one per CPU)")
    p.add_argument("--train-dir", type=Path, default=Path("../shared/datasets/train"))
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/train_lr"), help="as for fit")


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's checkpoint to models/, verify and evaluate it via cv2.dnn")
    p.add_argument("--run", type=Path, required=True, help="run folder, e.g. runs/edsr-lite-x2")
    p.add_argument("--checkpoint", default="last", help="last, best, or it<N> (a --stop-at snapshot)")
    p.add_argument("--name", required=True, help="model name in the manifest, e.g. edsr-lite")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--bench-dir", type=Path, default=Path("../shared/datasets/bench"))
    p.add_argument("--threads", type=int, default=1)


def _fit(args: argparse.Namespace) -> ExitCode:
    from srd.train.loop import TrainConfig, train

    if args.mix and args.degrade != "photo":
        print("srd train fit: --mix changes the photo mix, so it needs --degrade photo", file=sys.stderr)
        return ExitCode.USAGE

    preset = dict(PRESETS[args.preset])
    for key in ("blocks", "channels", "tail", "res_scale", "family", "expand"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    if preset.get("family") == "sesr":
        preset.setdefault("expand", SESR_EXPAND)
    try:
        arch = Arch(scale=args.scale, **preset)  # type: ignore[arg-type]
    except ValueError as error:
        print(f"srd train fit: {error}", file=sys.stderr)
        return ExitCode.USAGE
    cfg = TrainConfig(
        name=args.name or f"{arch.family}-{args.preset}-x{args.scale}", arch=arch, iters=args.iters,
        batch=args.batch, patch=args.patch, lr=args.lr, lr_min=args.lr_min, seed=args.seed,
        hard_fraction=args.hard_fraction,
        downscales=args.downscales, degrade=args.degrade, mix=args.mix, bf16=not args.no_bf16, threads=args.threads,
        device=args.device, init=args.init,
        eval_every=args.eval_every, log_every=args.log_every, save_every_s=args.save_every_s, train_dir=args.train_dir,
        bench_dir=args.bench_dir, cache_dir=args.cache_dir, runs_dir=args.runs_dir,
    )
    try:
        finished = train(cfg, args.stop_at)
    except ValueError as error:  # a run that cannot start: no GPU, or a checkpoint of another architecture
        print(f"srd train fit: {error}", file=sys.stderr)
        return ExitCode.USAGE
    # 143 (as if killed by SIGTERM) when interrupted, so `set -e` queue scripts stop there.
    return ExitCode.OK if finished else ExitCode.TERMINATED


def _cache(args: argparse.Namespace) -> ExitCode:
    from srd.train.data import build_cache

    for scale in args.scales:
        build_cache(args.train_dir, scale, args.cache_dir, args.downscales, args.workers)
    return ExitCode.OK


def _export(args: argparse.Namespace) -> ExitCode:
    from srd.train.export import export_run

    ckpt = args.run / f"{args.checkpoint}.pt"
    if not ckpt.is_file():
        kept = sorted(p.stem for p in args.run.glob("*.pt")) if args.run.is_dir() else []
        print(f"srd train export: no checkpoint {ckpt}" + (f" (the run has: {', '.join(kept)})" if kept else ""),
              file=sys.stderr)
        return ExitCode.USAGE
    export_run(ckpt, args.name, args.models_dir, args.bench_dir, args.threads)
    return ExitCode.OK


def main(argv: list[str] | None = None) -> ExitCode:
    """Entry point: ``main(["fit", ...])``, ``main(["cache", ...])`` or ``main(["export", ...])``; returns
    the exit status."""
    parser = argparse.ArgumentParser(prog="srd train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _fit_parser(sub)
    _cache_parser(sub)
    _export_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return {"fit": _fit, "cache": _cache, "export": _export}[args.command](args)
