#!/usr/bin/env bash
# THERE (the H200, through the device tool's `run` with carry=[".deps/bundle"]): the machine line, the
# engine-on-GPU tests, the golden and engine tests, `indexcache demo` and `indexcache bench` on the
# GPU; logs to $OUT. Stages can be chosen: STAGES="tests demo bench kernels table1" (default: tests demo
# bench; kernels = the Google Benchmark suite of the CUDA kernels, kernels/cuda_kernels_bench.cc; graphs =
# `indexcache bench` with CUDA-graph decode on and off at batch 1 and 4, and the DecodeChainGraph benchmark
# of one kernel chain queued vs replayed (docs/results/gpu_engine.md#cuda-graph-decode); multigpu = the
# engine over NCCL on every visible GPU (engine_multigpu_gpu_test: tensor and expert parallel on 2 GPUs,
# NCCL_NVLS_ENABLE=0; docs/results/multi_gpu.md); table1 =
# the paper's Table 1 on the 30B preset with BF16 weights (cuBLASLt GEMMs), indexer and attention, about 40 s:
# docs/results/table1.md; TABLE1_ARGS overrides its precision options).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/gpu_out}"
mkdir -p "$OUT"
b=.deps/bundle
export LD_LIBRARY_PATH="$PWD/$b/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export IC_TEST_DATA="$PWD/tests/data"
stages=${STAGES:-"tests demo bench"}
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "bundle built from: $(cat "$b/COMMIT" 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvcc --version 2>/dev/null | grep release
} 2>&1 | tee "$OUT/machine.txt"
rc=0
if [[ $stages == *tests* ]]; then
  for t in engine_gpu_test backend_parity_gpu_test golden_test engine_test; do
    "$b/bin/$t" 2>&1 | tail -${TAIL:-15} | tee "$OUT/$t.log"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
  done
fi
if [[ $stages == *demo* ]]; then
  "$b/bin/indexcache" demo --device cuda ${DEMO_ARGS:-} 2>&1 | grep -v "^# \|^indexcache_" | tee "$OUT/demo.log"
fi
if [[ $stages == *kernels* ]]; then
  "$b/bin/cuda_kernels_bench" ${KERNEL_BENCH_ARGS:-} 2>&1 | tee "$OUT/cuda_kernels_bench.log"
fi
if [[ $stages == *table1* ]]; then
  "$b/bin/indexcache" bench --device cuda --preset glm-4.7-flash-dsa --contexts 10000,60000,120000,200000 \
    --decode-steps 8 --max-batch 64 ${TABLE1_ARGS:---indexer-precision bf16 --attention-precision bf16 --weight-precision bf16} 2>&1 |
    tee "$OUT/table1.log"
fi
if [[ $stages == *graphs* ]]; then
  for batch in 1 4; do
    for g in on off; do
      "$b/bin/indexcache" bench --device cuda ${GRAPH_BENCH_ARGS:---contexts 1024,8192 --decode-steps 64} \
        --batch $batch --cuda-graphs $g 2>&1 | tee "$OUT/bench_graphs_${g}_batch$batch.log"
    done
  done
  "$b/bin/cuda_kernels_bench" --benchmark_filter=DecodeChainGraph 2>&1 | tee "$OUT/decode_chain_graph.log"
fi
if [[ $stages == *multigpu* ]]; then
  nvidia-smi topo -m 2>&1 | tee "$OUT/topology.txt"
  NCCL_NVLS_ENABLE=0 "$b/bin/engine_multigpu_gpu_test" 2>&1 | tail -${TAIL:-15} | tee "$OUT/engine_multigpu_gpu_test.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
  # The C ABI over NCCL: one process per GPU (examples/multirank), TP × EP layouts of the visible GPUs.
  n=$(nvidia-smi -L | wc -l)
  for layout in "$n 1" "1 $n" "$n $n"; do
    read -r tp ep <<<"$layout"
    id="/tmp/ic_multirank_id_${tp}_${ep}_$$"
    rm -f "$id"
    pids=()
    for ((r = 0; r < n; ++r)); do
      NCCL_NVLS_ENABLE=0 "$b/bin/multirank" process $r $n $tp $ep "$id" >"$OUT/multirank_r$r.txt" 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait $p || rc=1; done
    echo "== multirank process, world $n, tp $tp, ep $ep" >>"$OUT/multirank.log"
    cat "$OUT"/multirank_r*.txt >>"$OUT/multirank.log"
    rm -f "$OUT"/multirank_r*.txt
  done
  cat "$OUT/multirank.log"
  # The whole-model bench on the embedded model: one GPU, then tensor / expert parallel over all of them.
  for layout in "1 1" "$n 1" "1 $n"; do
    read -r tp ep <<<"$layout"
    NCCL_NVLS_ENABLE=0 "$b/bin/indexcache" bench --device cuda --tp $tp --ep $ep \
      ${MULTIGPU_BENCH_ARGS:---contexts 1024,8192 --decode-steps 32} 2>&1 | tee -a "$OUT/bench_ranks.log"
  done
fi
if [[ $stages == *bench* ]]; then
  "$b/bin/indexcache" bench --device cuda ${BENCH_ARGS:---contexts 1024,4096,8192 --decode-steps 16} 2>&1 | tee "$OUT/bench.log"
fi
exit $rc
