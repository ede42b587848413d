#!/usr/bin/env python3
"""Six training runs side by side on one CUDA GPU, sized to a fixed wall time.

Two plans (``--plan``):

  restarts  warm restarts of the six shipped models: each run starts from the model it will replace, the shipped
            ``models/edsr-<tier>_x<scale>.onnx`` (``fit --init`` reads its weights back), so a lease needs no
            checkpoint from an earlier machine; lr 1e-4. Runs are named ``edsr-<tier>-x<scale>-gpu-<tag>``.
  tiers     the candidates for the next two tiers (presets ``fast`` and ``quality``, sesr networks) at every
            scale, from scratch (lr 2e-4). Runs are named ``sesr-<tier>-x<scale>-gpu-<tag>``.

The tag is by default the day (UTC).

A GPU lease here is minutes long, so the runs are sized by measurement rather than by guess:

  probe   starts every run for a few seconds, all at once, and records each one's iterations per second
          (they share the GPU, so only a joint measurement is right);
  train   gives each run as many iterations as its measured rate fits into --train-s, so all six cosine
          schedules end together, and waits for them (SIGTERM at a deadline: a stopped run keeps last.pt).

Each run is an ordinary ``srd train fit`` whose command the manifest records at export; it reproduces the
model on any machine (on a CPU, in days). ``--weights-to DIR`` copies each finished run's ``last.pt`` there
without its Adam state, which a finished run no longer needs, to bring it back from the leased machine.
Run from the repository root; runs and caches default to the same places as scripts/train_all.sh.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import torch

HOME_CACHE = Path.home() / ".cache/srd"
MODELS = Path("models")  # relative, as the manifest will record each run's --init (run from the repository root)
SCALES = (2, 3, 4)
DOWNSCALES = "0.8,0.6"
TRAINING = ["--batch", "32", "--hard-fraction", "0.5", "--downscales", DOWNSCALES, "--threads", "2",
            "--eval-every", "2000"]
LOG_LINE = re.compile(r"^(\S+ \S+) INFO it (\d+) loss")


class Run(NamedTuple):
    name: str
    preset: str
    scale: int
    start: Path | None  # the shipped model it starts from; None: from scratch

    @property
    def key(self) -> str:
        """What the probe's rates are keyed by, so a train step on another day (another tag) finds them."""
        return f"{self.preset}_x{self.scale}"


def planned_runs(tag: str, plan: str = "restarts") -> list[Run]:
    """restarts: one run for each shipped model, from it; tiers: one for each new tier and scale, from scratch."""
    if plan == "tiers":
        return [Run(f"sesr-{preset}-x{scale}-gpu-{tag}", preset, scale, None)
                for preset in ("fast", "quality") for scale in SCALES]
    return [Run(f"edsr-{preset}-x{scale}-gpu-{tag}", preset, scale, MODELS / f"edsr-{preset}_x{scale}.onnx")
            for preset in ("lite", "base") for scale in SCALES]


def fit(args: argparse.Namespace, run: Run, iters: int, probe: bool) -> subprocess.Popen:
    name, preset, scale, start = run
    command = [sys.executable, "-m", "srd.train", "fit", "--preset", preset, "--scale", str(scale),
               "--iters", str(iters), *TRAINING, "--lr", "2e-4" if start is None else "1e-4",
               "--device", args.device, "--runs-dir", str(args.runs_dir), "--cache-dir", str(args.cache_dir)]
    if probe:  # from scratch (speed does not depend on the weights), logged often, never evaluated
        command += ["--name", f"{name}-probe", "--log-every", "20", "--eval-every", str(iters)]
    else:
        command += ["--name", name] + (["--init", str(start)] if start is not None else [])
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def measured_rate(log: Path) -> float:
    """Iterations per second between the first and the last progress line (start-up and cuDNN's tuning in
    the first iteration come before the first line)."""
    points = [(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp(), int(m[2]))
              for m in map(LOG_LINE.match, log.read_text().splitlines()) if m]
    if len(points) < 2:
        raise RuntimeError(f"{log}: too few progress lines to measure a rate ({len(points)})")
    (t0, i0), (t1, i1) = points[0], points[-1]
    return (i1 - i0) / (t1 - t0)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait()


def probe(args: argparse.Namespace) -> None:
    runs = planned_runs(args.tag, args.plan)
    procs = [fit(args, run, 10**6, probe=True) for run in runs]
    time.sleep(args.probe_s)
    stop_all(procs)
    probes = {run.key: args.runs_dir / f"{run.name}-probe" for run in runs}
    rates = {model: measured_rate(folder / "train.log") for model, folder in probes.items()}
    for folder in probes.values():
        shutil.rmtree(folder)
    args.rates.write_text(json.dumps(rates, indent=2) + "\n")
    print(json.dumps(rates, indent=2))


def train(args: argparse.Namespace) -> None:
    rates = json.loads(args.rates.read_text())
    plan = {run: max(100, int(rates[run.key] * args.train_s) // 100 * 100) for run in planned_runs(args.tag, args.plan)}
    print({run.name: iters for run, iters in plan.items()}, flush=True)
    procs = [fit(args, run, iters, probe=False) for run, iters in plan.items()]
    deadline = time.monotonic() + args.train_s * 1.25 + 60
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(2)
    stop_all(procs)
    for run, proc in zip(plan, procs, strict=True):
        print(run.name, "exit", proc.returncode, flush=True)
        if args.weights_to:
            ckpt = torch.load(args.runs_dir / run.name / "last.pt", map_location="cpu", weights_only=False)
            ckpt.pop("optimizer")
            torch.save(ckpt, args.weights_to / f"{run.name}.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("probe", "train"))
    parser.add_argument("--plan", choices=("restarts", "tiers"), default="restarts", help="which six runs (above)")
    parser.add_argument("--tag", default=datetime.now(UTC).strftime("%Y%m%d"),
                        help="ends each run's name (default: the day, UTC)")
    parser.add_argument("--rates", type=Path, default=HOME_CACHE / "gpu_rates.json")
    parser.add_argument("--probe-s", type=float, default=40)
    parser.add_argument("--train-s", type=float, default=360, help="seconds of training for every run")
    parser.add_argument("--runs-dir", type=Path, default=HOME_CACHE / "runs")
    parser.add_argument("--cache-dir", type=Path, default=HOME_CACHE / "train_lr")
    parser.add_argument("--weights-to", type=Path)
    parser.add_argument("--device", default="cuda", help="cpu only to try this script out")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "srd.train", "cache", "--downscales", DOWNSCALES,
                    "--cache-dir", str(args.cache_dir)], check=True)
    if args.step == "probe":
        probe(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
