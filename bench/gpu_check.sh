#!/usr/bin/env bash
# The GPU checks of the README ("Devices and CUDA"), in order of importance, each under its own
# time limit, with a prebuilt CUDA binary of xtask:
#   1. device-check: logits on the GPU against the CPU's (f32, target 1e-3; f64; explicit and
#      fused attention; cached decoding), VQ latents and codes; f32 and bf16 training lower
#      the loss; with several GPUs, data-parallel training against one GPU;
#   2. experiments/gpu-350m.toml for a few steps (tokens/s and MFU in its metrics);
#   3. cargo xtask bench on the GPU, side by side with PyTorch when PYTHON has torch.
# Usage: BIN=path/to/xtask OUT=dir PYTHON=python3 bench/gpu_check.sh
set -u
BIN=${BIN:-target/release/xtask}
OUT=${OUT:-target/gpu-check}
PYTHON=${PYTHON:-python3}
STEPS_350M=${STEPS_350M:-20}
mkdir -p "$OUT"

step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "rc=$rc after $((SECONDS - start))s" | tee -a "$OUT/$name.log"
  # cubecl may print kernels (indented IR); keep the log's own lines apart.
  grep -vE '^[[:space:]]|^[}!]|^$|^outlined_attributes' "$OUT/$name.log" | head -n 400 >"$OUT/$name.summary"
  head -n 40 "$OUT/$name.log" >"$OUT/$name.head"
  tail -n 25 "$OUT/$name.summary"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
# With several GPUs, device-check also trains data-parallel across all of them (NCCL and the
# main thread's sum) against one GPU.
GPUS=$(nvidia-smi --list-gpus | wc -l)
DEVICES=cuda
[ "$GPUS" -gt 1 ] && DEVICES=$(seq -s, -f 'cuda:%g' 0 $((GPUS - 1)))
step device-check 150 "$BIN" --device "$DEVICES" device-check --steps 30
step train-350m 180 "$BIN" --device cuda train --config experiments/gpu-350m.toml \
  --run-dir "$OUT/gpu-350m" --max-steps "$STEPS_350M" --checkpoint-every 1000000
if [ -f "$OUT/gpu-350m/metrics.jsonl" ]; then
  cp "$OUT/gpu-350m/metrics.jsonl" "$OUT/gpu-350m-metrics.jsonl"
  rm -rf "$OUT/gpu-350m"/checkpoint-*
fi
vs=()
"$PYTHON" -c "import torch, transformers" 2>/dev/null && vs=(--vs-torch "$PYTHON")
step bench-f32 90 "$BIN" --device cuda bench --only peak,P1,P2,P3 ${vs[@]+"${vs[@]}"} --out "$OUT/bench-f32.json"
step bench-bf16 120 "$BIN" --device cuda bench --only peak,P1,P1-350m --precision bf16 ${vs[@]+"${vs[@]}"} \
  --out "$OUT/bench-bf16.json"
