#!/usr/bin/env bash
# The test command (README, CI): configure + build build/ with tools/build.sh, then run CTest.
#
#   bash tools/test.sh
#
# Without a visible GPU (`nvidia-smi -L` lists none) tests labelled "gpu" are skipped, and the script
# says so; with one, the CPU tests run in parallel and then the GPU tests one at a time. Exits non-zero
# on any configure, build or test failure. Environment: as tools/build.sh, plus IC_TEST_JOBS (parallel
# CPU tests, default the number of cores), IC_SKIP_LABELS (a label regex to skip too, e.g. "slow") and
# IC_CTEST_ARGS (extra ctest arguments, e.g. "-R metrics").
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build_dir=${IC_BUILD_DIR:-build}
test_jobs=${IC_TEST_JOBS:-$(nproc)}
# shellcheck disable=SC2206
ctest_extra=(${IC_CTEST_ARGS:-})

elapsed() { echo "$(( $(date +%s) - $1 ))s"; }
t0=$(date +%s)

bash tools/build.sh

gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)
ctest_common=(--test-dir "$build_dir" --output-on-failure --no-tests=error "${ctest_extra[@]}")
skip=${IC_SKIP_LABELS:-}
cpu_exclude="gpu${skip:+|$skip}"
gpu_exclude=()
if [[ -n $skip ]]; then
  gpu_exclude=(-LE "$skip")
  echo "[test] also skipping labels matching: $skip"
fi

t1=$(date +%s)
status=0
if [[ "$gpus" -gt 0 ]]; then
  echo "[test] $gpus GPU(s) visible: running every label (GPU tests one at a time)"
  ctest "${ctest_common[@]}" -LE "$cpu_exclude" -j "$test_jobs" || status=1
  # A filter (IC_CTEST_ARGS=-R ...) may leave no GPU test; that is not an error.
  ctest "${ctest_common[@]/--no-tests=error/--no-tests=ignore}" -L gpu "${gpu_exclude[@]}" -j 1 || status=1
else
  echo "[test] no GPU visible (nvidia-smi -L lists none): running ctest -LE '$cpu_exclude'"
  ctest "${ctest_common[@]}" -LE "$cpu_exclude" -j "$test_jobs" || status=1
  echo "[test] GPU tests (label gpu) were skipped because no GPU is visible"
fi
echo "[test] tests took $(elapsed "$t1"); total $(elapsed "$t0")"
if [[ $status -ne 0 ]]; then
  echo "[test] FAILED" >&2
  exit 1
fi
echo "[test] all tests passed"
