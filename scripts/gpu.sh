#!/usr/bin/env bash
# Build, test and benchmark fprnn on the GPU machine (the `device` tool): its python3 holds a CUDA build of
# torch, and nothing can be installed there, so the header-only dependencies and googletest travel in .deps/
# (made by scripts/vendor_deps.sh) and the fixtures in .fixtures/.
#
#   scripts/gpu.sh build            configure + build with CUDA into build-gpu/
#   scripts/gpu.sh test             CUDA tests, layer/solver tests and the fixtures on the GPU build
#   scripts/gpu.sh bench [ARGS]     fprnn bench on the GPU
#   scripts/gpu.sh all              all three; logs under $OUT when set
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-build-gpu/logs}
mkdir -p "$out"
jobs=$(nproc)

build() {
  local prefix
  prefix=$(python3 -c 'import torch, torch.utils; print(torch.utils.cmake_prefix_path)')
  local gen="Unix Makefiles"
  command -v ninja >/dev/null && gen=Ninja
  cmake -S . -B build-gpu -G "$gen" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
    -DFPRNN_DEPS_DIR="$PWD/.deps" -DFPRNN_FIXTURES_DIR="$PWD/.fixtures" -DFPRNN_WITH_CUDA=ON >"$out/configure.log" 2>&1 \
    || { tail -40 "$out/configure.log"; exit 1; }
  cmake --build build-gpu -j "$jobs" >"$out/build.log" 2>&1 || { grep -E "error|Error" "$out/build.log" | head -40; exit 1; }
  echo "build: ok ($(grep -c warning "$out/build.log" || true) warning lines)"
}

test_gpu() {
  local status=0
  nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader || true
  ./build-gpu/test_ops --gtest_brief=1 >"$out/test_ops.log" 2>&1 || status=1
  tail -3 "$out/test_ops.log"
  ./build-gpu/test_nn --gtest_brief=1 >"$out/test_nn.log" 2>&1 || status=1
  tail -3 "$out/test_nn.log"
  ./build-gpu/test_train --gtest_brief=1 --gtest_filter='Fixture*:*Fixture*' >"$out/test_fixtures.log" 2>&1 || status=1
  tail -3 "$out/test_fixtures.log"
  return $status
}

case "${1:-all}" in
  build) build ;;
  test) test_gpu ;;
  bench) shift; ./build-gpu/fprnn bench --device cuda "$@" ;;
  all)
    build
    test_gpu || echo "TESTS FAILED"
    ./build-gpu/fprnn bench --device cuda linrec layer --json "$out/bench.json" 2>&1 | tee "$out/bench.txt" ;;
  *) echo "usage: scripts/gpu.sh build|test|bench|all" >&2; exit 2 ;;
esac
