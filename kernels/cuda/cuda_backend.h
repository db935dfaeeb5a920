// The CUDA backend: every op of kernels/backend.h on one GPU, F32 activations, cuBLASLt GEMM.
//
// This header is host-only (no CUDA headers); kernels/backend_registry.cc reaches it through
// CreateBackend(DeviceKind::kCuda, ordinal).
//
//   if (ic::kernels::cuda::VisibleDeviceCount() > 0) {
//     IC_ASSIGN_OR_RETURN(auto gpu, ic::kernels::cuda::CreateCudaBackend(0));
//     IC_RETURN_IF_ERROR(gpu->Gemm(args));   // enqueued on the backend's stream
//     IC_RETURN_IF_ERROR(gpu->Synchronize());
//   }
//
// Semantics are the CPU reference's (kernels/cpu/); differences are in the reduction order only.
// Execution model:
//   * All ops are enqueued on one non-blocking stream owned by the backend; CopyToHost and
//     CopyToDevice return after the copy is complete; Synchronize() waits for the stream.
//   * Argument checks that need only host values happen before launch (InvalidArgument naming the
//     field). Checks on device data: Embedding ids and CrossEntropy targets are checked before the op
//     returns (it synchronises); bad cache slots / block tables / positions seen by CacheWrite,
//     Attention and IndexerTopk are recorded on the device and reported by the next Synchronize().
//   * Scratch memory (cuBLASLt workspace, indexer score tiles, attention log-sum-exp) comes from a
//     workspace allocated at creation and grown on demand (a grow allocates: run Full-size shapes
//     once before capturing a CUDA graph).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace ic::kernels::cuda {

// Number of CUDA devices visible to this process (0 when there is none or the driver is missing).
int VisibleDeviceCount();

// A backend on device `device_ordinal`. Unavailable when no GPU is visible; InvalidArgument when the
// ordinal is out of range.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device_ordinal);

}  // namespace ic::kernels::cuda
