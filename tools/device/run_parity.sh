#!/usr/bin/env bash
# THERE (the H200 machine, through the device tool's `run`, with carry=[".deps/parity"]):
# prints the machine (GPU, driver, CUDA), runs the parity test (all CPU-vs-CUDA op comparisons), then
# the same under compute-sanitizer memcheck, and writes logs + the gtest XML to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/parity_out}"
mkdir -p "$OUT"
bundle=.deps/parity
libs="$PWD/$bundle/lib"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && libs="$libs:$d"
done
# cuBLASLt from the Python wheels if the toolkit's copy is missing.
if ! ls /usr/local/cuda/lib64/libcublasLt.so.13 >/dev/null 2>&1; then
  w=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null || true)
  [ -n "$w" ] && libs="$libs:$w"
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  nvcc --version 2>/dev/null | tail -2
  uname -r
  ldd "$bundle/bin/backend_parity_gpu_test" | grep -E "not found|cublas|cudart" || true
} 2>&1 | tee "$OUT/machine.txt"
set -o pipefail
"$bundle/bin/backend_parity_gpu_test" --gtest_output="xml:$OUT/parity.xml" 2>&1 | tee "$OUT/parity.log"
rc=$?
echo "parity rc=$rc"
if [ "${SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  timeout "${SANITIZE_TIMEOUT:-240}" compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
    "$bundle/bin/backend_parity_gpu_test" 2>&1 | tail -40 | tee "$OUT/memcheck.log"
  echo "memcheck rc=${PIPESTATUS[0]}"
fi
if [ "${TIMING:-1}" = 1 ]; then
  timeout "${TIMING_TIMEOUT:-180}" "$bundle/bin/op_timing" 2>&1 | tee "$OUT/op_timing.log"
fi
grep -o 'name="[^"]*" value="[^"]*"' "$OUT/parity.xml" | sed 's/name=//; s/ value=/ = /' | tee "$OUT/errors.txt"
exit $rc
