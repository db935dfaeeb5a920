// Tensor parallelism of the engine inside a shard group (DESIGN.md §5): what one rank holds, and the
// sharded top-k of a Full layer.
//
// A context created with ContextOptions::shard_group (size tp, this rank r) holds:
//   * query heads [r·NH/tp, (r+1)·NH/tp) (QueryHeadShard): MLA q_b_proj and kv_b_proj rows, o_proj columns;
//     GQA q_proj rows and o_proj columns, and the KV heads of KvHeadShard (split where tp divides the KV
//     heads, else the ones its query heads use, replicated; the KV cache holds only those);
//   * the dense MLP's intermediate range (contiguous, sizes differing by at most one): gate/up rows, down
//     columns;
//   * everything else replicated: embeddings, norms, the MLA latent projections and cache, the indexer
//     weights and index-K cache, the router and every shared expert, and the routed experts unless the context
//     also has an expert group (ContextOptions::expert_group: routed experts split, all-to-all-v).
// The o_proj and dense-MLP partial outputs are all-reduced (sum) inside the group, so every rank holds
// the bitwise-identical residual stream after each layer.
//
// Top-k of a Full layer (ShardedTopk): every rank computes q_I, w and k_I for every row of the pass and
// appends k_I for every token to its (replicated) index-K cache; then
//   prefill (any pass that is not a decode pass): rows split zig-zag (ZigZagRows); a rank scores and
//     selects only its rows (a sub-TokenLayout over the same paged cache), then AllGatherZigZagIndices;
//   decode (every segment one token appended to existing context): each row's keys [0, pos] are split
//     contiguously (DecodeKeyRange); a rank scores its key range through a *virtual* layout (one virtual
//     sequence per row, block_size 1, the block table listing the slots of the range), so the unchanged
//     IndexerTopk op selects the local top-k and writes the local scores; the host turns them into
//     (score, position) candidates and AllGatherMergeTopk merges them. Rows with pos + 1 ≤ k select
//     0..pos on every rank without a collective (DESIGN.md §3 short rows).
// Both give bitwise-identical indices on every rank of the group. The top-k collectives run on host buffers:
// directly with the in-process communicator (CPU contexts); with NCCL (CUDA contexts) NcclCommunicator
// stages them through device copies (a few KB a Full layer: k indices or candidates per row). The o_proj /
// MLP all-reduces run on the backend's buffers (device memory on CUDA).
//
// Every rank of the group must create its context with the same model, plan and options, and run the
// same forward passes (same segments, same order): the collectives pair up by call order. A pass that
// fails on one rank before a collective (it cannot, given identical inputs) would leave the others
// waiting until the communicator's timeout, then DeadlineExceeded; every failed pass is rolled back.
//
//   // 2 ranks as threads of one process (tests/engine_tp_multirank_test.cc):
//   auto comms = parallel::InProcessGroup::Create(2).value();
//   // on thread r:
//   auto ctx = Context::Create(model, {.shard_group = comms[r].get()}).value();
//   int seq = ctx->AddSequence().value();
//   IC_RETURN_IF_ERROR(ctx->Prefill(seq, prompt, logits.data()));   // same logits on both ranks
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/sharding.h"
#include "sdk/config.h"

namespace ic {

// What one rank of a shard group holds (see above).
struct TensorParallelPlan {
  int size = 1, rank = 0;
  parallel::HeadShard q_heads;   // query heads of this rank
  parallel::HeadShard kv_heads;  // GQA KV heads of this rank (MLA: the one latent "head", replicated)
  // This rank's part [begin, end) of a dense MLP intermediate dimension of size `inter`.
  parallel::RowRange MlpRange(int64_t inter) const;
};

// InvalidArgument naming both numbers when tp does not divide the attention heads (or, for GQA, when
// neither tp divides the KV heads nor the KV heads divide tp). (A dense MLP smaller than tp is rejected
// at context creation, naming the layer.)
absl::StatusOr<TensorParallelPlan> PlanTensorParallel(const ModelConfig& config, int size, int rank);

// Scratch memory in the backend, by name (the engine's per-context scratch buffers).
using ScratchFn = std::function<absl::StatusOr<void*>(const std::string& name, size_t bytes)>;

// The top-k of a Full layer split across a shard group (see above). One per context; BeginPass once per
// forward pass (the row / key split depends only on the pass's layout), then Select at every Full layer.
class ShardedTopk {
 public:
  ShardedTopk(parallel::Communicator* comm, kernels::Backend* backend, ScratchFn scratch)
      : comm_(comm), be_(backend), scratch_(std::move(scratch)) {}

  // The pass: host copies of its layout (seq, pos per row; block tables [num_seqs, max_blocks]) and the
  // same layout on the device. decode: every row is a single token appended to existing context.
  struct Pass {
    std::span<const int32_t> seq, pos, tables;
    int num_seqs = 0, max_blocks = 0, block_size = 0;
    kernels::TokenLayout device;
    bool decode = false;
  };
  absl::Status BeginPass(const Pass& pass, int k);

  // full: the IndexerArgs of the whole pass (q, w for every row; layout = the pass's device layout;
  // indices/scores ignored). Writes the group's top-k [rows, k] to the device buffer `topk` and adds
  // the top-k bytes this rank sent to *topk_bytes.
  absl::Status Select(const kernels::IndexerArgs& full, int32_t* topk, int64_t* topk_bytes);

 private:
  template <typename T>
  absl::StatusOr<T*> Scratch(const std::string& name, size_t count) {
    absl::StatusOr<void*> p = scratch_(name, std::max<size_t>(count, 1) * sizeof(T));
    if (!p.ok()) return p.status();
    return static_cast<T*>(*p);
  }
  absl::Status SelectPrefill(const kernels::IndexerArgs& full, int32_t* topk);
  absl::Status SelectDecode(const kernels::IndexerArgs& full, int32_t* topk);

  parallel::Communicator* comm_;
  kernels::Backend* be_;
  ScratchFn scratch_;

  int k_ = 0;
  int rows_ = 0;
  bool decode_ = false;
  // Prefill: this rank's rows (zig-zag) and their sub-layout.
  parallel::ZigZagSplit split_;
  int32_t* d_local_rows_ = nullptr;
  kernels::TokenLayout sub_;
  // Decode: the rows with pos + 1 > k (the collective's rows), their key ranges on this rank, and the
  // virtual layout of those with a non-empty range.
  std::vector<int32_t> host_short_;      // [rows, k]: 0..pos then −1 for short rows (others unused)
  std::vector<int32_t> long_rows_;       // rows of the pass that take part in the merge
  std::vector<parallel::RowRange> long_range_;  // this rank's keys of each long row
  std::vector<int32_t> scored_;          // index into long_rows_ of each virtual sequence
  int32_t* d_scored_rows_ = nullptr;     // pass rows of the virtual sequences (device)
  kernels::TokenLayout virt_;
  int virt_max_len_ = 0;

  // Host buffers reused across layers and passes.
  std::vector<int32_t> local_idx_, gathered_idx_, out_idx_;
  std::vector<float> local_scores_;
  std::vector<parallel::TopkCandidate> candidates_, cand_scratch_;
};

}  // namespace ic
