#!/usr/bin/env bash
# Copies the header-only dependencies (nlohmann-json, CLI11) and googletest's sources from this machine's
# Debian packages into .deps/ (git-ignored), for machines that cannot install packages (the GPU machine:
# configure there with -DFPRNN_DEPS_DIR=$PWD/.deps). Also copies ../shared/fixtures to .fixtures/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -rf .deps .fixtures
mkdir -p .deps/include
cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/gloo .deps/include/
cp -r /usr/src/googletest .deps/googletest
cp -r ../shared/fixtures .fixtures
du -sh .deps .fixtures
