#!/usr/bin/env bash
# Train the model queue in priority order, one process at a time; each run resumes from
# $RUNS/<name>/last.pt and a finished run returns at once, so rerunning this script continues the queue.
# Usage (from anywhere): nohup scripts/train_all.sh >> ~/.cache/srd/train_all.out 2>&1 &
# THREADS=2 gives training both cores when nobody else needs them.
#
# Every shipped model comes out of this queue; export each with the `export_command` its manifest entry
# records (TRAINING.md lists them). Runs and the LR cache live outside the work tree (a new session's
# checkout starts without ignored files): SRD_RUNS_DIR, default ~/.cache/srd/runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
threads="${THREADS:-1}"
runs="${SRD_RUNS_DIR:-$HOME/.cache/srd/runs}"
fit() { python -m srd.train fit --threads "$threads" --runs-dir "$runs" --cache-dir "$HOME/.cache/srd/train_lr" "$@"; }

# edsr-lite (8x32, ESPCN-style tail): about 0.2 s/it on one core, 5.3 h in all. x3 and x4 start from
# the x2 body; each scale then had a warm restart (x2 three: one more cosine, one on hard patches, one
# with downscaled copies of the images added).
# (edsr-lite-x4 was stretched from 4,000 to 7,000 iterations at iteration 236, so rerunning it differs
# slightly from the shipped run.)
fit --preset lite --scale 2 --iters 20000
fit --preset lite --scale 2 --name edsr-lite-x2-ft --iters 18000 --lr 1e-4 --init "$runs/edsr-lite-x2/last.pt"
fit --preset lite --scale 2 --name edsr-lite-x2-hard --iters 6000 --lr 1e-4 --hard-fraction 0.5 \
    --init "$runs/edsr-lite-x2-ft/last.pt"
fit --preset lite --scale 2 --name edsr-lite-x2-down --iters 6000 --lr 1e-4 --hard-fraction 0.5 \
    --downscales 0.8,0.6 --init "$runs/edsr-lite-x2-hard/last.pt"
fit --preset lite --scale 3 --iters 4000 --init "$runs/edsr-lite-x2/last.pt"
fit --preset lite --scale 3 --name edsr-lite-x3-ft --iters 6000 --lr 1e-4 --init "$runs/edsr-lite-x3/last.pt"
fit --preset lite --scale 4 --iters 7000 --init "$runs/edsr-lite-x2/last.pt"
fit --preset lite --scale 4 --name edsr-lite-x4-ft --iters 8000 --lr 1e-4 --init "$runs/edsr-lite-x4/last.pt"

# edsr-base (16x64, ESPCN-style tail): about 1.4 s/it on one core. The x2 run paused at 7,749 of its
# 40,000-iteration cosine (lr still 1.8e-4) and became the start of three short runs: a warm restart that
# finishes x2, and the x3/x4 runs from its body; x3 then had a warm restart with downscaled copies added.
#
# Each shipped model then had one more warm restart on a GPU, from the last run of its scale here:
# scripts/train_gpu.py (TRAINING.md, "The GPU runs").
fit --preset base --scale 2 --iters 40000 --stop-at 7749
fit --preset base --scale 2 --name edsr-base-x2-ft --iters 4500 --lr 1e-4 --hard-fraction 0.5 \
    --init "$runs/edsr-base-x2/it7749.pt"
fit --preset base --scale 3 --iters 4500 --init "$runs/edsr-base-x2/it7749.pt"
fit --preset base --scale 4 --iters 4500 --init "$runs/edsr-base-x2/it7749.pt"
fit --preset base --scale 3 --name edsr-base-x3-down --iters 3000 --lr 1e-4 --hard-fraction 0.5 \
    --downscales 0.8,0.6 --init "$runs/edsr-base-x3/last.pt"
