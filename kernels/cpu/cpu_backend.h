// The CPU reference backend: plain C++ plus OpenBLAS (cblas_sgemm) for matrix products.
//
// It defines what every op of kernels/backend.h computes; the CUDA backend is checked against it.
// Memory is host memory (Allocate = aligned new), every call is synchronous, and ops validate their
// arguments, returning InvalidArgument naming the field and the value; nothing aborts on bad input.
//
// One op family per file:
//   cpu_backend.cc    memory, Embedding, norms, Rope, SiluMul, Copy2D, CacheWrite, Gather/ScatterAddRows
//   cpu_gemm.cc       Gemm (cblas_sgemm, strides, batches; BF16 and block-scaled FP8 weights widened)
//   cpu_attention.cc  dense causal and sparse top-k attention (query tiles × gathered paged K/V, sgemm)
//   cpu_indexer.cc    lightning indexer scores + top-k (tiled sgemm, ReLU, weighted head sum)
//   cpu_topk.cc       Topk with the DESIGN.md §3 total order (full-candidate selection)
//   cpu_moe.cc        MoeRoute (DeepSeek-V3 grouped sigmoid router), MoeExperts (fused routed experts)
//   cpu_loss.cc       CrossEntropy, Hadamard, IndexerDistill (the indexer's distillation KL and gradients)
//   cpu_layout.cc     paged-cache validation, grouping of query tokens by sequence, row gathers
//   cpu_parallel.cc   the small thread pool used by the non-BLAS loops (IC_CPU_THREADS overrides its size)
//   cpu_internal.h    helpers shared by those files (not installed, not part of the interface)
//
// Choices where backend.h leaves room (the CUDA backend should match them):
//   * Gemm: a batch stride of 0 broadcasts A or B; stride_c = 0 with batch > 1 is InvalidArgument.
//   * Attention: a query row with no valid selected key gets out = 0 and lse = −inf; duplicated top-k
//     entries count twice; entries outside 0..pos are ignored. probs without topk is InvalidArgument.
//   * RmsNorm/LayerNorm need a weight; Rope rejects negative positions; GatherRows/ScatterAddRows can
//     only reject negative row ids (RowsArgs carries no row count for the other side).
//   * Allocate refuses sizes beyond the host's physical memory (ResourceExhausted).
//
// Example:
//   ic::kernels::cpu::CpuBackend cpu;
//   IC_RETURN_IF_ERROR(cpu.Topk({.out = idx, .scores = s, .lengths = len, .rows = 1, .stride = n, .k = 16}));
#pragma once

#include <string>
#include <vector>

#include "kernels/backend.h"

namespace ic::kernels::cpu {

class CpuBackend final : public Backend {
 public:
  CpuBackend() = default;
  ~CpuBackend() override = default;

  DeviceKind kind() const override { return DeviceKind::kCpu; }
  std::string name() const override { return "cpu"; }

  absl::StatusOr<void*> Allocate(size_t bytes) override;
  void Free(void* ptr) override;
  absl::Status CopyToDevice(void* dst, const void* host_src, size_t bytes) override;
  absl::Status CopyToHost(void* host_dst, const void* src, size_t bytes) override;
  absl::Status CopyOnDevice(void* dst, const void* src, size_t bytes) override;
  absl::Status Memset(void* dst, int value, size_t bytes) override;
  absl::Status Synchronize() override { return absl::OkStatus(); }
  absl::StatusOr<int> TimeMark() override;
  absl::StatusOr<double> SecondsBetween(int from, int to) override;
  void ResetTimeMarks() override { marks_.clear(); }
  absl::StatusOr<MemoryInfo> GetMemoryInfo() override;  // the host's (/proc/meminfo)

  absl::Status Gemm(const GemmArgs& args) override;
  absl::Status Embedding(const EmbeddingArgs& args) override;
  absl::Status RmsNorm(const NormArgs& args) override;
  absl::Status LayerNorm(const NormArgs& args) override;
  absl::Status Rope(const RopeArgs& args) override;
  absl::Status SiluMul(const SiluMulArgs& args) override;
  absl::Status Copy2D(const Copy2DArgs& args) override;
  absl::Status CacheWrite(const CacheWriteArgs& args) override;
  absl::Status Attention(const AttentionArgs& args) override;
  absl::Status IndexerTopk(const IndexerArgs& args) override;
  absl::Status Topk(const TopkArgs& args) override;
  absl::Status MoeRoute(const MoeRouteArgs& args) override;
  absl::Status MoeExperts(const MoeExpertsArgs& args) override;
  absl::Status GatherRows(const RowsArgs& args) override;
  absl::Status ScatterAddRows(const RowsArgs& args) override;
  absl::Status CrossEntropy(const CrossEntropyArgs& args) override;
  absl::Status Hadamard(const HadamardArgs& args) override;
  absl::Status IndexerDistill(const IndexerDistillArgs& args) override;

 private:
  absl::Status GemmFp8(const GemmArgs& g, int lda, int ldb, int ldc);

  std::vector<double> marks_;  // TimeMark: host seconds
};

}  // namespace ic::kernels::cpu
