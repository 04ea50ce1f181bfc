#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a finished default run:
#   installs the Debian packages, builds clhost, runs configs/split_fmnist.toml.
# Options: --no-run (stop after the build), --build-dir DIR (default: build).
set -euo pipefail
cd "$(dirname "$0")/.."

run_default=1
build_dir=build
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-run) run_default=0 ;;
    --build-dir) build_dir="$2"; shift ;;
    *) echo "setup.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
mapfile -t packages < <(grep -v '^\s*#' tools/debian-packages.txt | grep -v '^\s*$')
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"
# LibTorch links libblas.so.3: make sure it resolves to OpenBLAS, not the ~10x slower reference BLAS.
blas=/usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3
if [[ -e $blas ]]; then
  "${sudo_cmd[@]}" update-alternatives --set libblas.so.3-x86_64-linux-gnu "$blas" >/dev/null \
    || echo "setup.sh: warning: could not select OpenBLAS for libblas.so.3" >&2
fi

cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build_dir" -j"$(nproc)"

if [[ $run_default -eq 1 ]]; then
  "$build_dir/bin/clhost" run --config configs/split_fmnist.toml
fi
