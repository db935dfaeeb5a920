#!/usr/bin/env bash
# Configures and builds the IndexCache SDK with CMake (Release, tests on, benchmarks off by default).
#
#   bash tools/build.sh                       # everything, into build/
#   bash tools/build.sh metrics_test ic_sdk   # only these targets
#   IC_BUILD_DIR=build-asan IC_CMAKE_ARGS="-DIC_SANITIZE=ON" bash tools/build.sh
#
# Environment: IC_BUILD_DIR (build), IC_BUILD_TYPE (Release), IC_JOBS (number of cores),
# IC_BUILD_BENCHMARKS (OFF), IC_CMAKE_ARGS (extra configure arguments, split on spaces).
# The CUDA backend is compiled whenever nvcc is found (no GPU needed); -DIC_ENABLE_CUDA=OFF skips it.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build_dir=${IC_BUILD_DIR:-build}
jobs=${IC_JOBS:-$(nproc)}
# shellcheck disable=SC2206
extra=(${IC_CMAKE_ARGS:-})

elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

t0=$(date +%s)
echo "[build] configure $build_dir (${IC_BUILD_TYPE:-Release}) ${extra[*]}"
cmake -S . -B "$build_dir" \
  -DCMAKE_BUILD_TYPE="${IC_BUILD_TYPE:-Release}" \
  -DIC_BUILD_TESTS=ON \
  -DIC_BUILD_BENCHMARKS="${IC_BUILD_BENCHMARKS:-OFF}" \
  "${extra[@]}"
echo "[build] configure took $(elapsed "$t0")"

t1=$(date +%s)
if [[ $# -gt 0 ]]; then
  echo "[build] build targets $* with -j$jobs"
  cmake --build "$build_dir" -j "$jobs" --target "$@"
else
  echo "[build] build all with -j$jobs"
  cmake --build "$build_dir" -j "$jobs"
fi
echo "[build] build took $(elapsed "$t1")"
