#!/usr/bin/env bash
# Train the model queue in priority order, one process at a time; each run resumes from
# $RUNS/<name>/last.pt and a finished run returns at once, so rerunning this script continues the queue.
# Usage (from anywhere): nohup scripts/train_all.sh >> ~/.cache/srd/train_all.out 2>&1 &
# THREADS=2 gives training both cores when nobody else needs them.
#
# Runs and the LR cache live outside the work tree (a new session's checkout starts without ignored
# files): SRD_RUNS_DIR, default ~/.cache/srd/runs. The edsr-lite runs are finished and shipped in
# models/ (their exact commands are in models/manifest.json); this queue trains the base tier.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
threads="${THREADS:-1}"
runs="${SRD_RUNS_DIR:-$HOME/.cache/srd/runs}"
fit() { python -m srd.train fit --threads "$threads" --runs-dir "$runs" --cache-dir "$HOME/.cache/srd/train_lr" "$@"; }

# edsr-base (16x64, ESPCN-style tail): about 1.4 s/it on one core, so these span several sessions.
# Session 3 shipped x2 from this run's best.pt at 6,000 iterations (lr still high), and started x3 and x4
# from a copy of its last.pt at 7,800 iterations (it7800.pt) with short schedules of their own.
fit --preset base --scale 3 --iters 4500 --init "$runs/edsr-base-x2/it7800.pt"
fit --preset base --scale 4 --iters 4500 --init "$runs/edsr-base-x2/it7800.pt"
fit --preset base --scale 2 --iters 40000
