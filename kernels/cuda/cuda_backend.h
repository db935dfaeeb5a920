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
//   * Scratch memory: the cuBLASLt workspace (32 MiB) is allocated at creation; indexer score tiles
//     (≤ 256 MiB by default, IC_CUDA_INDEXER_TILE_BYTES overrides) and the attention split-K partials /
//     log-sum-exp come from one scratch buffer grown on demand. A grow synchronises, allocates and bumps
//     WorkspaceGeneration(), so run the largest shapes once before capturing a CUDA graph.
//   * CUDA graphs (Backend::BeginCapture): stream capture in thread-local mode. While capturing, Embedding
//     and CrossEntropy record their id / target checks in the deferred slot (reported by the Synchronize
//     after a launch) instead of synchronising; Allocate, Free, host copies, Synchronize, SecondsBetween and
//     a workspace grow are refused with FailedPrecondition, and EndCapture returns the first refusal;
//     TimeMark records an external event node, so each launch re-records the capture's marks.
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
