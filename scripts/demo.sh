#!/usr/bin/env bash
# The demo: train the same small FP-RNN twice on the S3 word problem — once with the fixed-point
# iteration (up to 16 iterations in training, to convergence in evaluation) and once limited to a single
# iteration (the diagonal baseline) — then print both models' accuracy by sequence length.
#
#   scripts/demo.sh [FPRNN_BINARY] [OUT_DIR]        (make demo runs it with build/fprnn runs/demo)
set -euo pipefail
bin=${1:-build/fprnn}
out=${2:-runs/demo}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
config=$root/configs/demo_s3.json
[ -x "$bin" ] || { echo "demo: $bin not found; run 'make' first" >&2; exit 1; }

stamp=$(date +%Y%m%d-%H%M%S)
run=$out/$stamp
mkdir -p "$run"
echo "demo: writing to $run" >&2

"$bin" train --config "$config" --out "$run/fp-rnn"
"$bin" train --config "$config" --out "$run/diagonal" solver.max_iter=1 solver.eval_max_iter=1
"$bin" report "$run/fp-rnn" "$run/diagonal" --names FP-RNN "diagonal (1 iteration)" --out "$run/report"
ln -sfn "$stamp" "$out/latest"
echo "demo: table in $run/report.md, plot in $run/report.png" >&2
