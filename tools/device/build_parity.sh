#!/usr/bin/env bash
# HERE (no GPU needed): builds the CPU-vs-CUDA parity test for sm_90a with the stand-alone CMake project
# in tools/device/parity/ and bundles it with the shared libraries the bare H200 machine lacks
# (Abseil, OpenBLAS and its Fortran runtime) under .deps/parity/ (ignored by git), ready to carry:
#
#   tools/device/build_parity.sh
#   run(command="tools/device/run_parity.sh", carry=[".deps/parity"])
#
# CUDA's own libraries (cudart, cuBLASLt) are NOT bundled: the device image has CUDA 13.0.
# Why build here: the device has no network, no Abseil and no OpenBLAS; a binary built on this Debian 12
# image (glibc 2.36) runs on the device's newer Ubuntu image.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
build="${BUILD_DIR:-build-parity}"
cmake -S tools/device/parity -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"${JOBS:-2}"
out=.deps/parity
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
cp "$build/backend_parity_gpu_test" "$build/op_timing" "$out/bin/"
# Every resolved dependency except glibc/libstdc++/libgcc and CUDA's (present on the device).
ldd "$out/bin/backend_parity_gpu_test" | awk '/=>/ {print $3}' | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
    libcuda*|libcublas*|libcudart*) ;;
    *) cp -L "$lib" "$out/lib/" ;;
  esac
done
du -sh "$out"
echo "bundle ready in $out"
