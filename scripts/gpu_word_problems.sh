#!/usr/bin/env bash
# BASELINES.md "Small word problems with the reference layer" on the GPU machine: for each group, the FP model
# (16 training iterations, evaluation to convergence) and the "few" model (1 iteration), same config otherwise.
# Run after scripts/gpu.sh build. Writes each run (without checkpoints) and a table under $OUT/word_problems.
#
#   scripts/gpu_word_problems.sh [GROUP ...]        (default: S3 A5)
#   MODELS="fp" EXTRA="train.dtype=float32" TAG=_f32 scripts/gpu_word_problems.sh A5   (variants)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-build-gpu/logs}/word_problems
mkdir -p "$out"
bin=build-gpu/fprnn
groups=("$@")
[ ${#groups[@]} -eq 0 ] && groups=(S3 A5)
for g in "${groups[@]}"; do
  cfg=configs/ref_small_${g,,}.json
  for model in ${MODELS:-fp few}; do
    extra=(${EXTRA:-})
    [ "$model" = few ] && extra=(solver.max_iter=1 solver.eval_max_iter=1)
    run=build-gpu/runs/${g}_${model}${TAG:-}
    rm -rf "$run"
    echo "== $g $model"
    limit=150; [ "$model" = few ] && limit=80
    timeout $limit "$bin" train --config "$cfg" --out "$run" "${extra[@]}" >"$out/${g}_${model}${TAG:-}.log" 2>&1
    echo "exit $?"; tail -8 "$out/${g}_${model}${TAG:-}.log"
    mkdir -p "$out/${g}_${model}${TAG:-}"
    cp "$run"/summary.json "$run"/eval_table.txt "$run"/config.json "$out/${g}_${model}${TAG:-}/" 2>/dev/null
  done
done
