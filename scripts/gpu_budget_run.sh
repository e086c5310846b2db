#!/usr/bin/env bash
# Train a config on the GPU machine within a wall-clock budget: a 40-step probe measures seconds per step,
# then the run is sized to fill BUDGET_S of training (cosine schedule over that many steps, capped at the
# config's train.steps) and finishes with its evaluation sweep. Results (the run's log, eval table, CSV,
# summary, metrics) are copied to $OUT/<name>/.
#   scripts/gpu_budget_run.sh CONFIG BUDGET_S [overrides...]      (FPRNN=path/to/fprnn to use another build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cfg=$1 budget=$2
shift 2
name=$(basename "$cfg" .json)
out=${OUT:-build-gpu/logs}/$name
mkdir -p "$out"
probe=$(mktemp -d)
${FPRNN:-./build-gpu/fprnn} train --config "$cfg" "$@" train.steps=40 train.log_every=20 train.eval_every=100000 \
  --no-eval -q --out "$probe/p"
per_step=$(python3 - "$probe/p/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
# the second window (steps 21..40) excludes the start-up costs of the first
print((rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (rows[-1]["step"] - rows[0]["step"]))
PY
)
max_steps=$(${FPRNN:-./build-gpu/fprnn} train --config "$cfg" "$@" --out "$probe/x" --print-config |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["train"]["steps"])')
steps=$(python3 -c "print(max(100, min($max_steps, int($budget / $per_step))))")
echo "probe: $per_step s/step → $steps steps (config: $max_steps)" | tee "$out/sizing.txt"
/usr/bin/time -f "wall %e s" ${FPRNN:-./build-gpu/fprnn} train --config "$cfg" "$@" train.steps="$steps" --out "$probe/run" \
  > "$out/train.log" 2> >(tee "$out/time.txt" >&2) || true
tail -25 "$out/train.log"
for f in eval_table.txt eval.csv summary.json metrics.jsonl config.json eval.png; do
  [ -f "$probe/run/$f" ] && cp "$probe/run/$f" "$out/"
done
rm -rf "$probe"
