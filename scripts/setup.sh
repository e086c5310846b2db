#!/usr/bin/env bash
# Installs what fprnn needs to build and writes the LibTorch CMake prefix to build/.torch_prefix.
#
# Idempotent: a second run with everything present does nothing but check.
#   1. Debian packages: the compiler tool chain and the -dev libraries the build uses.
#   2. LibTorch, first found of:
#        $Torch_DIR (a folder holding TorchConfig.cmake)
#        the project's virtualenv .venv (made by an earlier run of this script)
#        the torch of the system python3 (the GPU machine has one)
#      and otherwise installs torch==$FPRNN_TORCH_VERSION (a CPU wheel) into .venv.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${BUILD_DIR:-$root/build}
torch_version=${FPRNN_TORCH_VERSION:-2.13.0}
say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# ---- 1. Debian packages -------------------------------------------------------------------------
pkgs=(cmake ninja-build ccache g++ make python3-venv nlohmann-json3-dev libgtest-dev libcli11-dev libfmt-dev
      gnuplot-nox libgloo-dev)
missing=()
if command -v dpkg-query >/dev/null 2>&1 && [ -z "${FPRNN_SKIP_APT:-}" ]; then
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq || die "apt-get update failed"
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi

# ---- 2. LibTorch ---------------------------------------------------------------------------------
torch_prefix_of() {  # $1 = python interpreter; prints torch's CMake prefix or fails
  "$1" - <<'EOF' 2>/dev/null
import torch, torch.utils
print(torch.utils.cmake_prefix_path)
EOF
}

prefix=""
if [ -n "${Torch_DIR:-}" ]; then
  [ -f "$Torch_DIR/TorchConfig.cmake" ] || die "Torch_DIR=$Torch_DIR holds no TorchConfig.cmake"
  prefix=$(cd "$Torch_DIR/.." && pwd)   # <...>/share/cmake/Torch -> <...>/share/cmake
elif [ -x "$root/.venv/bin/python" ] && prefix=$(torch_prefix_of "$root/.venv/bin/python"); then
  :
elif command -v python3 >/dev/null 2>&1 && prefix=$(torch_prefix_of python3); then
  :
else
  command -v python3 >/dev/null 2>&1 || die "python3 is needed to install LibTorch (or set Torch_DIR)"
  say "installing torch==$torch_version into $root/.venv (a few minutes, once)"
  rm -rf "$root/.venv"
  python3 -m venv "$root/.venv" || die "python3 -m venv failed (install python3-venv)"
  "$root/.venv/bin/pip" install -q --disable-pip-version-check "torch==$torch_version" \
    || die "pip install torch==$torch_version failed"
  prefix=$(torch_prefix_of "$root/.venv/bin/python") || die "torch installed but cannot be imported"
fi

mkdir -p "$build_dir"
tmp="$build_dir/.torch_prefix.tmp"
printf '%s\n' "$prefix" >"$tmp" && mv "$tmp" "$build_dir/.torch_prefix"
say "LibTorch: $prefix"
