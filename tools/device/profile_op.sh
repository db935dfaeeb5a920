#!/usr/bin/env bash
# THERE (H200, carry=[".deps/parity"]): Nsight Compute on the first launch of one kernel of op_timing.
#   run(command="KERNEL=AttentionKernel bash tools/device/profile_op.sh", carry=[".deps/parity"])
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/profile_out}"
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/.deps/parity/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ncu --clock-control none --kernel-name "regex:${KERNEL:-AttentionKernel}" --launch-skip "${SKIP:-0}" --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis --section SchedulerStats --section ComputeWorkloadAnalysis \
  .deps/parity/bin/op_timing 2>&1 | tee "$OUT/ncu.txt" | grep -vE "^==PROF==|^ *-+ *$" | tail -150
