#!/usr/bin/env bash
# GPU inference figures, for a session that has an NVIDIA GPU: run from the repository root.
#
#   bash scripts/bench_gpu.sh [OUT_DIR]
#
# Installs srd with the `gpu` extra (onnxruntime-gpu, which replaces the CPU onnxruntime wheel) into a fresh
# venv, checks that onnxruntime really places srd's model on the GPU, then prints `srd bench speed` tables:
# onnxruntime on cuda:0 beside the CPU runtimes in the same run, for both tiers and the tile sizes that matter
# on a GPU (bigger tiles fill it better). JSON copies go to OUT_DIR (default: $OUT or /tmp/srd-bench-gpu).
# The "of peak" column compares with the CPU's matrix multiply: read only µs per LR pixel for the cuda rows.
set -euo pipefail
out=${1:-${OUT:-/tmp/srd-bench-gpu}}
mkdir -p "$out"
venv=${SRD_GPU_VENV:-/tmp/srd-gpu-venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# Offline machines: SRD_WHEELHOUSE names a folder of wheels (pip download -d DIR '.[gpu]' elsewhere).
"$venv/bin/pip" install -q ${SRD_WHEELHOUSE:+--no-index --find-links "$SRD_WHEELHOUSE"} -e '.[gpu]'
"$venv/bin/pip" uninstall -q -y onnxruntime 2>/dev/null || true  # the CPU wheel shadows the GPU one
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$venv/bin/python" - <<'PY'
import onnxruntime as ort
from srd.engine.registry import resolve_model
from srd.engine.runtime_choice import open_runtime
print("onnxruntime", ort.__version__, ort.get_available_providers())
runtime = open_runtime(resolve_model("edsr-lite", 2), "onnxruntime", "cuda:0")
print("edsr-lite x2 runs on:", runtime.device)
assert runtime.device == "cuda:0", "onnxruntime did not place the model on the GPU"
PY
srd="$venv/bin/srd"
for model in edsr-lite edsr-base; do
  "$srd" bench speed -s 2 -m "$model" --device cuda:0 --runtimes onnxruntime --threads 1 \
    --tiles 0,192,512 --size 1024x1536 --repeats 3 --rounds 2 | tee "$out/$model-cuda.txt"
  "$srd" bench speed -s 2 -m "$model" --device cuda:0 --runtimes onnxruntime --threads 1 \
    --tiles 0,192,512 --size 1024x1536 --repeats 3 --rounds 2 --json > "$out/$model-cuda.json"
done
# The same models on the CPU of that machine, for the ratio (all its cores).
cores=$(nproc)
"$srd" bench speed -s 2 -m edsr-lite -m edsr-base --device cpu --runtimes opencv-classic,onnxruntime \
  --threads "1,$cores" --tiles 192 --size 384x512 --rounds 2 | tee "$out/cpu.txt"
