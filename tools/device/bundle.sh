#!/usr/bin/env bash
# HERE (no GPU needed): builds the main tree for sm_90a (Release, CUDA on) into build-sm90/ and bundles
# the CLI and the GPU-relevant test binaries with the shared libraries a bare H200 host lacks (Abseil,
# Protobuf, prometheus-cpp, civetweb, OpenBLAS + its Fortran runtime) into .deps/bundle/ (git-ignored):
#
#   bash tools/device/bundle.sh
#   run(command="bash tools/device/run_gpu.sh", carry=[".deps/bundle"])
#
# CUDA's own libraries (cudart, cuBLASLt) are not bundled: the device image has CUDA 13.0.
# A binary built on Debian 12 (glibc 2.36) runs on the device's Ubuntu 24.04.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
build="${BUILD_DIR:-build-sm90}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a -DIC_BUILD_BENCHMARKS=ON >/dev/null
# CLI_ONLY=1: just the CLI (the real-model jobs, tools/device/real_model.sh), a smaller bundle.
if [[ "${CLI_ONLY:-0}" == 1 ]]; then
  targets=(indexcache_cli)
else
  targets=(indexcache_cli engine_gpu_test backend_parity_gpu_test golden_test engine_test cpu_kernels_bench
           cuda_kernels_bench engine_multigpu_gpu_test example_multirank)
fi
cmake --build "$build" -j"${JOBS:-2}" --target "${targets[@]}"
out=.deps/bundle
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
cp "$build/indexcache" "$out/bin/"
if [[ "${CLI_ONLY:-0}" != 1 ]]; then
  cp "$build/tests/engine_gpu_test" "$build/tests/backend_parity_gpu_test" "$build/tests/golden_test" \
     "$build/tests/engine_test" "$build/kernels/cpu/cpu_kernels_bench" "$build/kernels/cuda_kernels_bench" \
     "$build/tests/engine_multigpu_gpu_test" "$build/examples/multirank" "$out/bin/"
fi
strip "$out"/bin/*
for bin in "$out"/bin/*; do
  ldd "$bin" | awk '/=>/ {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
    libcuda*|libcublas*|libcudart*|libnccl*) ;;
    *) cp -L "$lib" "$out/lib/" ;;
  esac
done
git describe --always --dirty >"$out/COMMIT" 2>/dev/null || echo unknown >"$out/COMMIT"  # the tree it was built from
du -sh "$out"
echo "bundle ready in $out"
