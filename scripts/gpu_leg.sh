#!/usr/bin/env bash
# One leg of a GPU training run that spans several `device` calls (nothing survives between them, and a call
# lasts at most 10 minutes). Builds only the fprnn binary (tests off), then either starts CONFIG into
# runs/leg or resumes it from ck/ (the previous leg's files, carried in), trains until STOP_AFTER steps in total
# (or to the end), and leaves in $OUT what the next leg needs: run.tgz (the run directory without checkpoints)
# and the checkpoint in 15 MiB parts ck.part.NN (the device returns files of at most 16 MiB).
#
# With LEG_S set, the leg instead ends after LEG_S seconds of training: SIGINT, which `fprnn train` answers by
# finishing the current step and writing a checkpoint. Further arguments are config overrides (first leg only;
# a resumed run keeps the config it was started with).
#
#   leg 1:  OUT=... scripts/gpu_leg.sh configs/a5_len16_fpmamba1.json 8500         (carry: .deps/include)
#           OUT=... LEG_S=300 scripts/gpu_leg.sh CONFIG "" train.steps=6000        (a time-boxed leg)
#   here:   mkdir ck && cp <files_at>/{run.tgz,ck.part.*} ck/                       (ck/ is git-ignored)
#   leg 2:  OUT=... scripts/gpu_leg.sh configs/a5_len16_fpmamba1.json              (carry: ck, .deps/include)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cfg=${1:?usage: scripts/gpu_leg.sh CONFIG [STOP_AFTER] [overrides...]}
stop=${2:-}
shift $(( $# < 2 ? $# : 2 ))
limit=()
[ -n "${LEG_S:-}" ] && limit=(timeout -s INT -k 120 "$LEG_S")
out=${OUT:?set OUT to the folder that comes back}
prefix=$(python3 -c 'import torch, torch.utils; print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" -DFPRNN_BUILD_TESTS=OFF \
  -DFPRNN_DEPS_DIR="$PWD/.deps" -DFPRNN_WITH_CUDA=ON >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" --target fprnn >"$out/build.log" 2>&1 || { grep error "$out/build.log" | head; exit 1; }
rm -f "$out/configure.log" "$out/build.log"
args=()
[ -n "$stop" ] && args+=(--stop-after "$stop")
if [ -f ck/run.tgz ]; then
  tar xzf ck/run.tgz
  mkdir -p runs/leg/checkpoints
  cat ck/ck.part.* > runs/leg/checkpoints/last.safetensors
  "${limit[@]}" ./build-gpu/fprnn train --out runs/leg --resume "${args[@]}" 2>&1 | tee "$out/leg.log" || true
else
  "${limit[@]}" ./build-gpu/fprnn train --config "$cfg" --out runs/leg "${args[@]}" "$@" 2>&1 | tee "$out/leg.log" || true
fi
tar czf "$out/run.tgz" --exclude=checkpoints --exclude=model.safetensors runs/leg
if [ ! -f runs/leg/summary.json ]; then
  split -b 15M -d runs/leg/checkpoints/last.safetensors "$out/ck.part."
fi
