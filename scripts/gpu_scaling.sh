#!/usr/bin/env bash
# Data-parallel scaling on the GPU machine: the LM-like training run (configs/scaling_lm_like.json) on 1 GPU
# and on N GPUs with the same per-GPU batch (8 sequences of 2048 tokens), and the efficiency
# tokens/s(N) / (N × tokens/s(1)). Throughput is the median of the logged windows after the first (warm-up).
#   scripts/gpu_scaling.sh [N ...]        default: every GPU count from 2 to nvidia-smi's
# Needs build-gpu/ (scripts/gpu.sh build). Writes $OUT/scaling.txt (or build-gpu/logs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-build-gpu/logs}
mkdir -p "$out"
gpus=$(nvidia-smi -L | wc -l)
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=($(seq 2 "$gpus"))
runs=$(mktemp -d)
export NCCL_NVLS_ENABLE=0
median_tok_s() {  # metrics.jsonl → median tokens_per_s of the train windows after the first
  python3 - "$1" <<'PY'
import json, statistics, sys
w = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[1]) if '"split": "train"' in l or '"split":"train"' in l]
print(statistics.median(w[1:]) if len(w) > 1 else w[0])
PY
}
./build-gpu/fprnn train --config configs/scaling_lm_like.json --out "$runs/g1" --no-eval -q >/dev/null
base=$(median_tok_s "$runs/g1/metrics.jsonl")
{
  echo "# fprnn launch scaling, configs/scaling_lm_like.json (4 layers, B 8 × T 2048 per GPU, d 768, HH r=1, 5 it, bf16)"
  nvidia-smi --query-gpu=name --format=csv,noheader | head -1
  printf '%-6s %14s %12s\n' gpus "tokens/s" efficiency
  printf '%-6s %14.0f %12s\n' 1 "$base" "1.000"
  for n in "${counts[@]}"; do
    ./build-gpu/fprnn launch --gpus "$n" -- train --config configs/scaling_lm_like.json \
      train.batch_size=$((8 * n)) --out "$runs/g$n" --no-eval -q >/dev/null
    tok=$(median_tok_s "$runs/g$n/metrics.jsonl")
    printf '%-6s %14.0f %12.3f\n' "$n" "$tok" "$(python3 -c "print($tok / ($n * $base))")"
  done
} | tee "$out/scaling.txt"
rm -rf "$runs"
