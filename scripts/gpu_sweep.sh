#!/usr/bin/env bash
# Runs a list of training variants on the GPU machine after scripts/gpu.sh build and prints one table.
# Each line of the plan file (or stdin) is: TAG CONFIG [key=value ...]. Logs and eval tables go to
# $OUT/sweep/TAG/ (checkpoints are not kept).
#
#   scripts/gpu_sweep.sh plan.txt
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-build-gpu/logs}/sweep
mkdir -p "$out"
bin=${FPRNN_BIN:-build-gpu/fprnn}
limit=${LIMIT:-150}
while read -r tag cfg overrides; do
  [ -z "${tag:-}" ] && continue
  case "$tag" in \#*) continue ;; esac
  run=build-gpu/runs/sweep_$tag
  rm -rf "$run"
  mkdir -p "$out/$tag"
  # shellcheck disable=SC2086
  timeout "$limit" "$bin" train --config "$cfg" --out "$run" $overrides >"$out/$tag/train.log" 2>&1
  rc=$?
  cp "$run"/eval_table.txt "$run"/metrics.jsonl "$run"/summary.json "$out/$tag/" 2>/dev/null
  printf '== %-22s rc=%d  %s\n' "$tag" "$rc" "$overrides"
  if [ -f "$run/eval_table.txt" ]; then sed 's/^/   /' "$run/eval_table.txt"; else tail -3 "$out/$tag/train.log"; fi
done <"${1:-/dev/stdin}"
