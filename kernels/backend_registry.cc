// Backend factory: CPU always; CUDA when built with it and a GPU is visible.
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#ifdef IC_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace ic::kernels {

int CudaDeviceCount() {
#ifdef IC_HAVE_CUDA
  return cuda::VisibleDeviceCount();
#else
  return 0;
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(DeviceKind kind, int device_ordinal) {
  switch (kind) {
    case DeviceKind::kCpu:
      return std::unique_ptr<Backend>(new cpu::CpuBackend());
    case DeviceKind::kCuda:
#ifdef IC_HAVE_CUDA
      return cuda::CreateCudaBackend(device_ordinal);
#else
      return absl::UnavailableError("this build of IndexCache has no CUDA backend (nvcc was not found)");
#endif
  }
  return absl::InvalidArgumentError("unknown device kind");
}

}  // namespace ic::kernels
