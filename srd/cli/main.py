"""The `srd` command line; the only place that maps errors to exit codes and calls `sys.exit`."""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from srd import __version__
from srd.cli.daemon_cli import add_commands as add_daemon_commands
from srd.cli.speed_cli import add_speed_arguments, run_speed
from srd.config import Config, check_real_folders, load_config
from srd.engine.ensemble import ENSEMBLE_SIZES
from srd.engine.pipeline import StageContext
from srd.engine.registry import ModelSpec, available_models, resolve_model, user_models_dir
from srd.engine.runtime_choice import RUNTIMES, with_choice
from srd.engine.upscaler import EngineSettings
from srd.errors import (
    ConfigError,
    ExitCode,
    LockedError,
    ModelChoiceError,
    ModelError,
    OutputError,
    SrdError,
    StartupError,
    StateDirError,
    UsageError,
    exit_code_table,
)
from srd.interrupts import Terminated
from srd.ledger import LedgerError
from srd.logs import configure_logging
from srd.oneshot import run_process
from srd.quality.degrade import BenchDegradation
from srd.terminal import printable
from srd.web.command import add_commands as add_web_commands

# Most specific first: the first class an error is an instance of gives its exit code.
_EXIT_CODES: tuple[tuple[type[SrdError], ExitCode], ...] = (
    (ConfigError, ExitCode.USAGE),
    (UsageError, ExitCode.USAGE),
    (ModelChoiceError, ExitCode.USAGE),
    (ModelError, ExitCode.MODEL),
    (OutputError, ExitCode.OUTPUT),
    (LockedError, ExitCode.LOCKED),
    (StateDirError, ExitCode.STARTUP),  # before LedgerError: the state dir, not the ledger, is at fault
    (LedgerError, ExitCode.LEDGER),
    (StartupError, ExitCode.STARTUP),
    (SrdError, ExitCode.ERROR),
)


def exit_code_for(error: SrdError) -> ExitCode:
    """The exit code of an expected error: one place, one table."""
    return next(code for cls, code in _EXIT_CODES if isinstance(error, cls))


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than `minimum` (the config's bound for the same setting)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tile", type=_at_least(0), help="tile side in LR pixels (0: whole image at once)")
    parser.add_argument("--tile-pad", type=_at_least(0), help="LR pixels of context around each tile")
    parser.add_argument("--threads", type=_at_least(1),
                        help="inference threads per worker process, one tile at a time (default for srd process: "
                             "jobs share the cores, a lone photo runs tiles on all of them)")
    _add_device_options(parser)


def _add_device_options(parser: argparse.ArgumentParser, *, runtime: bool = True) -> None:
    if runtime:
        parser.add_argument("--runtime", choices=RUNTIMES, help="inference runtime (default: the config's, auto)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (CUDA through onnxruntime; default: the config's)")


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    parser = argparse.ArgumentParser(
        prog="srd", description="Super-resolution daemon: watch folders and upscale images with EDSR-family models.",
        epilog=f"exit codes:\n{exit_code_table()}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"srd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    process = sub.add_parser("process", help="upscale files or folders once and exit",
                             description="Upscale images once. Each output is OUT/<input name>; two inputs that "
                                         "map to one name get -1, -2 …. Outputs never land on inputs unless "
                                         "--in-place is given.")
    process.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    process.add_argument("--out", "-o", type=Path, required=True, help="output folder (created if missing)")
    process.add_argument("--config", "-c", type=Path, help="YAML config (for profiles, model folders, engine)")
    process.add_argument("--profile", "-p", help="profile name from the config (default: 'default')")
    process.add_argument("--model", "-m", help="model name (e.g. edsr-lite) or model file path")
    process.add_argument("--scale", "-s", type=float,
                         help="upscaling factor (with --model; default: from a zoo file name like FSRCNN_x3.pb)")
    process.add_argument("--convention", help="model convention for a file whose name doesn't tell it")
    process.add_argument("--format", "-f", help="output format: same, jpg, png, webp, tiff, bmp")
    process.add_argument("--quality", type=int, help="JPEG/WebP quality 1-100")
    process.add_argument("--jobs", "-j", type=int, help="parallel worker processes (default: from config)")
    process.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders, mirroring them")
    process.add_argument("--in-place", action="store_true",
                         help="allow outputs to replace their own inputs (each atomically, once complete)")
    process.add_argument("--overwrite", action="store_true",
                         help="allow outputs to replace files in --out that srd did not write (its own earlier "
                              "outputs are always replaced)")
    process.add_argument("--reprocess", action="store_true",
                         help="upscale inputs that are srd's own outputs again (skipped otherwise, so a rerun "
                              "never upscales a photo twice)")
    process.add_argument("--verbose", "-v", action="store_true", help="log every job")
    process.add_argument("--quiet", "-q", action="store_true", help="print only failures and the summary")
    process.add_argument("--json", action="store_true",
                         help="one JSON object per file on stdout: source, output, status, reason, ms, sizes")
    _add_engine_options(process)

    models = sub.add_parser("models", help="list, verify or download models")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    for name, text in (("list", "list the models srd can use"), ("verify", "check model files' sha256")):
        action = models_sub.add_parser(name, help=text, description=text)
        action.add_argument("--config", "-c", type=Path, help="YAML config (adds its model_dirs)")
    fetch = models_sub.add_parser("fetch", help="download an OpenCV-zoo model (verified, atomic)",
                                  description="Download OpenCV-zoo models: edsr, espcn, fsrcnn, fsrcnn-small, lapsrn.")
    fetch.add_argument("name", help="zoo model family (e.g. edsr, fsrcnn) or file name (EDSR_x3.pb)")
    fetch.add_argument("--scale", "-s", type=int, help="only this scale (default: every scale)")
    fetch.add_argument("--dest", type=Path, help=f"folder (default: first config model_dir, else {user_models_dir()})")
    fetch.add_argument("--config", "-c", type=Path, help="YAML config (its first model_dir is the default --dest)")
    fetch.add_argument("--base-url", help="mirror holding the zoo files side by side")

    config = sub.add_parser("config", help="validate a config file")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="report every problem in a config, with its location",
                                  description="Validate a config; with no FILE, the built-in defaults.")
    check.add_argument("file", nargs="?", type=Path, help="YAML config file")

    bench = sub.add_parser("bench", help="quality and speed benchmarks (print figures)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="KIND")
    quality = bench_sub.add_parser("quality", help="PSNR-Y/SSIM-Y on a benchmark set, bicubic beside",
                                   description="The standard protocol (docs/design.md §10): MATLAB bicubic LR, "
                                               "PSNR on Y, scale-pixel shave.")
    quality.add_argument("--set", type=Path, required=True, help="folder of HR images (e.g. Set5)")
    quality.add_argument("--scale", "-s", type=int, required=True)
    quality.add_argument("--model", "-m", action="append", default=[], help="model name or file; repeatable")
    quality.add_argument("--upsample", action="store_true", help="also run zoo .pb files through upsample()")
    quality.add_argument("--per-image", action="store_true", help="also print each image's PSNR-Y")
    quality.add_argument("--degrade", type=_degradation, metavar="jpeg:Q",
                         help="compress the LR inputs as JPEGs of quality Q (4:2:0) first; scored against clean HR")
    quality.add_argument("--denoise", type=float, action="append", default=[], metavar="H",
                         help="also run each model after the denoise stage at strength H; repeatable")
    quality.add_argument("--ensemble", type=int, choices=ENSEMBLE_SIZES, default=1,
                         help="also run each model as a self-ensemble of this many flips/rotations")
    quality.add_argument("--config", "-c", type=Path, help="YAML config (model_dirs, engine)")
    _add_engine_options(quality)
    speed = bench_sub.add_parser("speed", help="runtimes, threads and tiles side by side: µs per LR pixel, "
                                               "GMAC/s against the CPU's peak, peak RSS",
                                 description="Each measurement runs in a fresh process so peak RSS is its own; "
                                             "everything is measured in alternating rounds.")
    add_speed_arguments(speed)
    _add_device_options(speed, runtime=False)

    train = sub.add_parser("train", help="train and export srd's own models (needs the 'train' extra)",
                           add_help=False)
    train.add_argument("train_args", nargs=argparse.REMAINDER)
    return parser, {**add_daemon_commands(sub), **add_web_commands(sub)}


def _degradation(text: str) -> BenchDegradation:
    try:
        return BenchDegradation.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _engine_from(config: Config, args: argparse.Namespace, default_threads: int | None) -> EngineSettings:
    """The configured engine settings, with the command line's tile, tile pad and threads where it gives them."""
    tile: int | None = getattr(args, "tile", None)
    tile_pad: int | None = getattr(args, "tile_pad", None)
    threads: int | None = getattr(args, "threads", None)
    engine = with_choice(config.engine, getattr(args, "runtime", None), getattr(args, "device", None))
    return replace(
        engine,
        tile=engine.tile if tile is None else tile,
        tile_pad=engine.tile_pad if tile_pad is None else tile_pad,
        threads=default_threads if threads is None else threads,
    )


def _model_status(spec: ModelSpec, context: StageContext) -> str:
    if not spec.path.is_file():
        return "missing"
    if not spec.expected_sha256:
        return "unverified"
    return "verified" if context.sha256(spec) == spec.expected_sha256 else "MISMATCH"


def _run_models(args: argparse.Namespace) -> ExitCode:
    from srd.engine.fetch import fetch_model
    from srd.engine.zoo import ZOO, find_zoo

    config = load_config(getattr(args, "config", None))
    configure_logging("warning", config.log_format)
    context = StageContext(config.engine, config.model_dirs)
    if args.models_command == "fetch":
        wanted = find_zoo(args.name, args.scale)
        if not wanted:
            names = sorted({m.name for m in ZOO})
            raise ModelError(f"no OpenCV-zoo model {args.name!r}" + (f" at scale {args.scale}" if args.scale else "")
                             + f" (known: {', '.join(names)})")
        dest = args.dest or (config.model_dirs[0] if config.model_dirs else user_models_dir())
        for model in wanted:
            path = fetch_model(model, dest, base_url=args.base_url)
            print(f"{model.name} x{model.scale}: {path} (sha256 verified)")
        return ExitCode.OK
    specs = list(available_models(config.model_dirs))
    if args.models_command == "verify":
        bad = 0
        for spec in specs:
            status = _model_status(spec, context)
            bad += status in ("MISMATCH", "missing")
            print(f"{status:<10} {spec.name} x{spec.scale}  {spec.path}")
        if not specs:
            print("no models found")
        return ExitCode.MODEL if bad else ExitCode.OK
    print(f"{'name':<14} {'scale':>5} {'format':<10} {'convention':<10} {'size':>9}  {'status':<10} path")
    shown = set()
    for spec in specs:
        key = (spec.name.lower(), spec.scale)
        if key in shown:
            continue  # shadowed by an earlier folder
        shown.add(key)
        size = f"{spec.path.stat().st_size / 1e6:.2f} MB" if spec.path.is_file() else "-"
        print(f"{spec.name:<14} {spec.scale:>5} {spec.format:<10} {spec.convention:<10} {size:>9}  "
              f"{_model_status(spec, context):<10} {spec.path}")
    missing = sorted({f"{m.name} x{m.scale}" for m in ZOO if (m.name, m.scale) not in shown})
    if missing:
        print(f"\ndownloadable with 'srd models fetch NAME --scale S': {', '.join(missing)}")
    return ExitCode.OK


def _missing_inboxes(config: Config) -> list[str]:
    """Warnings for inbox folders that don't exist: valid (a share may not be mounted yet), but worth a look."""
    return [f"at 'inboxes[{i}].path': {inbox.path} does not exist; srd run reports this inbox unhealthy until it "
            "appears" for i, inbox in enumerate(config.inboxes) if not inbox.path.is_dir()]


def _run_config_check(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.file, check_models=True)
    check_real_folders(config)
    warnings = _missing_inboxes(config)
    for warning in warnings:
        print(f"warning: {warning}")
    print(f"{config.source}: ok ({len(config.inboxes)} inbox(es), profiles: {', '.join(config.profiles)}, "
          f"{config.workers} worker(s) x {config.threads_per_worker or 'shared'} thread(s)"
          + (f"; {len(warnings)} warning(s))" if warnings else ")"))
    return ExitCode.OK


def _run_bench(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    configure_logging("warning", config.log_format)
    specs = [resolve_model(m, args.scale, extra_dirs=config.model_dirs) for m in args.model]
    if args.bench_command == "quality":
        _print_bench_quality(args, specs, _engine_from(config, args, args.threads))
    else:
        run_speed(args, specs, _engine_from(config, args, None))
    return ExitCode.OK


def _print_bench_quality(args: argparse.Namespace, specs: list[ModelSpec], engine: EngineSettings) -> None:
    from srd.quality import bench

    rows = bench.bench_quality(args.set, args.scale, specs, engine, with_upsample=args.upsample,
                               degradation=args.degrade, denoise=args.denoise, ensemble=args.ensemble)
    protocol = "standard protocol" + (f", LR inputs as {args.degrade.label}" if args.degrade else "")
    print(f"{args.set.name} x{args.scale}  ({protocol}, tile {engine.tile}, pad {engine.tile_pad})")
    print(f"| {'method':<42} | PSNR-Y (dB) | SSIM-Y |")
    print(f"|{'-' * 44}|-------------|--------|")
    for row in rows:
        print(f"| {row.method:<42} | {row.psnr:11.2f} | {row.ssim:.4f} |")
    if args.per_image:
        print(f"\nPSNR-Y (dB) per image\n| image | {' | '.join(row.method for row in rows)} |")
        print("|---" * (len(rows) + 1) + "|")
        for name in rows[0].scores:
            print(f"| {name} | {' | '.join(f'{row.scores[name][0]:.2f}' for row in rows)} |")


def _run_train(args: argparse.Namespace) -> ExitCode:
    try:
        from srd.train.command import main as train_main
    except ImportError as exc:
        raise SrdError(f"training needs the 'train' extra: pip install -e '.[train]' ({exc})") from exc
    return train_main(args.train_args)


def main(argv: Sequence[str] | None = None) -> None:
    parser, daemon_handlers = _build_parser()
    # `srd train --help`: argparse leaves an option in front of a REMAINDER positional unparsed, so such
    # leading options reach the train command here.
    args, unparsed = parser.parse_known_args(argv)
    if args.command == "train":
        args.train_args = [*unparsed, *args.train_args]
    elif unparsed:
        parser.error(f"unrecognized arguments: {' '.join(unparsed)}")
    handlers = {
        **daemon_handlers,
        "process": run_process,
        "models": _run_models,
        "config": _run_config_check,
        "bench": _run_bench,
        "train": _run_train,
    }
    # A process started with SIGINT ignored (a script's `srd process … &` in a shell without job control)
    # keeps it ignored, and the interpreter respects that: a Ctrl-C or `kill -INT` would be lost and the
    # batch run to its end. Every command stops on SIGINT (the daemon installs its own handler for it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = handlers[args.command](args)
    except ConfigError as exc:
        print(f"srd: invalid configuration ({printable(exc.source)}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {printable(problem)}", file=sys.stderr)
        code = exit_code_for(exc)
    except SrdError as exc:
        print(f"srd: error: {printable(str(exc))}", file=sys.stderr)  # one line, whatever a path holds
        code = exit_code_for(exc)
    except KeyboardInterrupt:
        print("srd: interrupted", file=sys.stderr)
        code = ExitCode.INTERRUPTED
    except Terminated:
        print("srd: terminated", file=sys.stderr)
        code = ExitCode.TERMINATED
    except BrokenPipeError as exc:
        if not _stdout_reader_gone():
            # Some other pipe broke (a helper process died): a failure like any other, never success.
            code = _unforeseen(exc)
        else:
            # The reader went away (`srd status | head`): not an error of srd's. Point stdout at /dev/null so
            # the interpreter's final flush does not raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = ExitCode.OK
    except OSError as exc:
        code = _unforeseen(exc)
    sys.exit(int(code))


def _unforeseen(exc: OSError) -> ExitCode:
    """An OS error that no command foresaw: still one line, and never exit 1 ("inputs failed")."""
    where = ": ".join(os.fsdecode(name) for name in (exc.filename, exc.filename2) if name)
    print(f"srd: error: {printable(exc.strerror or str(exc))}" + (f": {printable(where)}" if where else ""),
          file=sys.stderr)
    return ExitCode.ERROR


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on its end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # stdout closed or replaced by an object without a descriptor
        return False
