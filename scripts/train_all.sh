#!/usr/bin/env bash
# Train the model queue in priority order, one process at a time; each run resumes from
# runs/<name>/last.pt and a finished run returns at once, so rerunning this script continues the queue.
# Usage (from anywhere): nohup scripts/train_all.sh > runs/train_all.out 2>&1 &
# THREADS=2 gives training both cores when nobody else needs them.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
threads="${THREADS:-1}"
fit() { python -m srd.train fit --threads "$threads" "$@"; }

# edsr-lite (8x32, ESPCN-style tail): the daemon default. x3/x4 start from the x2 body.
fit --preset lite --scale 2 --iters 20000
fit --preset lite --scale 3 --iters 4000 --init runs/edsr-lite-x2/last.pt
fit --preset lite --scale 4 --iters 7000 --init runs/edsr-lite-x2/last.pt
# edsr-base (16x64): about 1.35 s/it on one core, so these span several sessions.
fit --preset base --scale 2 --iters 40000
fit --preset base --scale 3 --iters 15000 --init runs/edsr-base-x2/last.pt
fit --preset base --scale 4 --iters 15000 --init runs/edsr-base-x2/last.pt
