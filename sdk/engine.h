// The DSA runtime: a context holds many sequences over a paged KV cache and runs prefill and decode
// with an IndexCache plan (DESIGN.md §3–4).
//
// One layer, Full or Shared:
//   x ─► RMSNorm ─► q path + KV cache append
//     Full:   lightning indexer ─► index scores ─► top-k (and index-K cache append)
//     Shared: reuse the top-k buffer written by the nearest preceding Full layer
//   sparse attention over the top-k ─► o_proj ─► + x ─► RMSNorm ─► MLP or MoE ─► + x
//
// Caches: paged, block size 64 tokens (ContextOptions::block_size). The KV cache has one entry per token
// and layer (MLA: the kv_lora_rank latent + the rope key; GQA: K and V of the KV heads). The index-K cache
// exists for Full layers only. A sequence holds ceil(len / block_size) blocks shared by all layers.
//
// Tensor parallel: a context may be one rank of an attention shard group (ContextOptions::shard_group;
// sdk/tensor_parallel.h says what is split, what is replicated, and how the top-k is shared).
//
// Thread safety: a Context is not thread-safe; forward passes on one context are serialised by the
// caller. Different contexts may run concurrently (they share the read-only Model).
//
//   IC_ASSIGN_OR_RETURN(auto ctx, Context::Create(model, {.plan = "FSSSFSSS"}));
//   IC_ASSIGN_OR_RETURN(int seq, ctx->AddSequence());
//   std::vector<float> logits(model->config.vocab_size);
//   IC_RETURN_IF_ERROR(ctx->Prefill(seq, prompt, logits.data()));
//   IC_RETURN_IF_ERROR(ctx->Decode({seq}, {next_token}, logits.data()));
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "sdk/metrics.h"
#include "sdk/plan.h"
#include "sdk/weights.h"

namespace ic {
namespace parallel {
class Communicator;
}  // namespace parallel

struct ContextOptions {
  kernels::DeviceKind device = kernels::DeviceKind::kCpu;
  int device_ordinal = 0;
  int64_t max_tokens = 16384;  // KV capacity over all sequences, in tokens (rounded up to blocks)
  int block_size = 64;
  int prefill_chunk = 512;     // tokens per prefill forward pass
  std::string plan;            // F/S string overriding the model's plan ("" = the model's)
  // Record this context's metrics (metrics.h), the indexer at Full layers timed with backend time marks
  // (no synchronisation inside a pass; profile_layers times it by synchronising instead); false: none.
  bool record_metrics = true;
  // Per-layer wall time (Context::layer_profile): synchronises the backend after every layer and around
  // each Full layer's indexer + top-k, and accumulates seconds per layer. For benchmarks (`indexcache
  // bench --preset`, layer-sampled composition); off = no synchronisation and no timing at all.
  bool profile_layers = false;
  // Tensor parallel (DESIGN.md §5; sdk/tensor_parallel.h): the attention shard group this context is
  // one rank of. nullptr = single rank (the unchanged path). Not owned; must outlive the context. Query
  // heads (and GQA KV heads where they divide) and the dense MLP are split, o_proj and MLP outputs are
  // all-reduced, a Full layer's top-k is split and gathered inside the group (bitwise-identical indices
  // on every rank). Every rank creates its context from the same model, plan and options and runs the
  // same forward passes in the same order. The group's buffers follow the device: a CPU context needs an
  // in-process communicator (parallel/inprocess_communicator.h), a CUDA context an NCCL one
  // (parallel/nccl_communicator.h, one GPU per rank; its host-side exchanges are staged through device
  // copies); the other kind is InvalidArgument at creation.
  parallel::Communicator* shard_group = nullptr;
  // Expert parallel (DESIGN.md §5): the expert group this context is one rank of. nullptr = every routed
  // expert local. Rank r of P holds routed experts [r·E/P, (r+1)·E/P) (E = n_routed_experts, divisible by
  // P); shared experts, the router and everything else follow the shard group (or are local). At each MoE
  // layer a rank sends each routed (token, expert) pair's input row to the expert's owner (all-to-all-v),
  // owners run their experts, and the outputs travel back (all-to-all-v) to be combined with the
  // router weights. Inside a shard group (tensor parallel) each rank dispatches its share of the tokens and
  // the routed outputs are summed over the group. The ranks may serve different sequences (data-parallel
  // attention), but every rank of
  // the group must run the same number of forward passes in the same order: a rank with nothing to run
  // calls IdleStep() (DeepSeek-style idle ranks still join the expert all-to-all). Prefill splits into
  // ceil(tokens / prefill_chunk) passes, so ranks prefilling different lengths use Forward() or equal
  // chunk counts. In-process on the CPU, NCCL on CUDA, like shard_group. Not owned; must outlive the context.
  parallel::Communicator* expert_group = nullptr;
  // The lightning indexer's q·k arithmetic (kernels/backend.h Precision): kF32 (the reference) or
  // kBF16 (q and index-K rounded to BF16, F32 accumulation: BF16 tensor cores on CUDA; the index-K cache
  // is then stored in BF16, half the bytes — DESIGN.md's layout) or kFP8 (q and k Hadamard-rotated, then
  // E4M3 with power-of-two per-token scales; index_head_dim a power of two ≤ 1024, else InvalidArgument at
  // the first forward pass).
  kernels::Precision indexer_precision = kernels::Precision::kF32;
  // Attention's arithmetic (kernels/backend.h AttentionArgs::precision): kBF16 runs sparse absorbed-MLA
  // attention on BF16 tensor cores on CUDA (q, k, v and probabilities at BF16, F32 accumulation) and keeps
  // the KV cache in BF16 (half the bytes; the values BF16 attention rounds k and v to anyway).
  kernels::Precision attention_precision = kernels::Precision::kF32;
  // The Linear weights' storage and GEMM arithmetic (kernels/backend.h GemmArgs::b_bf16): kF32 (the
  // reference) or kBF16 — every projection (attention, indexer wq / wk / weights_proj, dense and expert
  // MLPs, LM head) held as BF16 (half the bytes; a checkpoint's BF16 tensors come back bit-exact) and
  // multiplied on BF16 tensor cores with F32 accumulation, activations rounded to BF16 at each GEMM's
  // input. Norms, the embedding table and the MoE router stay F32. kFP8: DeepSeek-V3's block-scaled FP8 —
  // the attention projections (but MLA's kv_b), dense, shared and routed expert MLPs held as E4M3 with one
  // scale per 128 × 128 block (amax / 448, quantised at context creation; a DeepSeek FP8 checkpoint comes
  // back to its own bytes on one rank — tensor-parallel ranks quantise their own slices), activations
  // quantised per token and 128 channels at each GEMM (GemmArgs::b_fp8;
  // cuBLASLt's block-scaled FP8 on CUDA); the LM head, the indexer projections, kv_b and any weight whose
  // in-features are not a multiple of 16 are BF16 (and then, should that be a routed expert, the decode MoE
  // runs expert by expert instead of the fused MoeExperts op).
  kernels::Precision weight_precision = kernels::Precision::kF32;
  // Decode steps as CUDA graphs (CUDA backend; ignored on the CPU): the first two steps of each shape
  // (sequences in the step, block-table width rounded up to a power of two of blocks) run eagerly and the
  // second is captured; later steps of that shape replay the graph — one launch instead of 20–30 per layer, the
  // host's per-op work gone (DecodeGraphStats::last_graph_nodes counts them). The results are those of an
  // eager step of the same shape, bit for bit; on DSA
  // models (attention over top-k lists of a fixed width) also those of cuda_graphs off, while dense
  // attention (a model without an indexer) splits its keys by the padded table width and agrees with
  // cuda_graphs off to F32 rounding. Capturing at the second eager step leaves one-off shapes of a changing
  // batch eager; at most 64 graphs are kept, the least recently used evicted. Steps
  // that need the host between ops stay eager: per-pass plans or partial passes, captures (top-k, scores,
  // hidden states, attention, indexer inputs), loss, all-token logits, profile_layers, tensor or expert
  // parallel, and MoE models above kMoeFusedMaxPairs (token, expert) pairs per step (the unfused MoE
  // copies the expert ids to the host). A graph is recaptured after a larger pass moves the buffers it
  // reads (Context::decode_graph_stats counts captures, replays and eager steps).
  bool cuda_graphs = true;
};

// What ContextOptions::cuda_graphs did since the context was created.
struct DecodeGraphStats {
  int64_t captures = 0;          // graphs captured (one per decode shape, again after buffers moved)
  int64_t replays = 0;           // decode steps run from a graph
  int64_t eager_steps = 0;       // graph-eligible decode steps run eagerly (the first two of each shape)
  int64_t capture_failures = 0;  // captures that failed; those shapes stay eager (last_capture_error)
  size_t graphs = 0;             // shapes with graphs held now (at most 64; least recently used evicted)
  size_t last_graph_nodes = 0;   // nodes (kernel launches, copies, memsets) of the last plain graph captured
  std::string last_capture_error;
};

// One contiguous run of new tokens of one sequence inside a forward pass.
struct Segment {
  int seq_id = 0;
  std::span<const int32_t> tokens;
};

// What the lightning indexer of a layer reads (distillation inputs, sdk/distill.h), host copies.
struct IndexerInputs {
  std::vector<float> x;    // [tokens, hidden]: the layer's normed hidden state (input RMSNorm output)
  std::vector<float> x_q;  // MLA: [tokens, q_lora_rank] q_latent; GQA / Llama-DSA: empty (the query reads x)
};

// Wall seconds accumulated over the forward passes since the last reset (ContextOptions::profile_layers).
// layer_seconds[l]: layer l from its input RMSNorm to its FFN residual (the device synchronised at both
// ends); indexer_seconds[l]: the part of it spent in the lightning indexer + top-k (Full layers; 0 at
// Shared layers); other_seconds: the rest of each pass (input checks, token layout upload, embedding,
// final norm, LM head, logits copy). Their sum is at most the passes' wall time.
struct LayerProfile {
  std::vector<double> layer_seconds;    // [num_hidden_layers]
  std::vector<double> indexer_seconds;  // [num_hidden_layers]
  double other_seconds = 0;
  double total_seconds = 0;  // wall time of the passes, start of Forward to its end
  int64_t passes = 0;
};

// What a forward pass returns.
struct ForwardOutputs {
  // Logits of the last token of each segment: [segments, vocab] (when non-null).
  float* last_logits = nullptr;
  // Logits of every token of the pass: [tokens, vocab] (when non-null).
  float* all_logits = nullptr;
  // Per-layer top-k indices used by attention, [tokens, index_topk] each (when non-null; Full and
  // Shared layers alike, so tests can check reuse). Filled with host copies.
  std::map<int, std::vector<int32_t>>* topk_by_layer = nullptr;
  // Index scores of Full layers, [tokens, max_pos + 1] each with −inf past each row's position
  // (tests and audits only: O(tokens × context) memory).
  std::map<int, std::vector<float>>* scores_by_layer = nullptr;
  // The hidden state entering each layer that runs in this pass (layers >= ForwardOptions::start_layer),
  // [tokens, hidden] each, host copies (greedy plan search, sdk/search.h; O(tokens × hidden × layers)).
  std::map<int, std::vector<float>>* hidden_by_layer = nullptr;
  // Head-averaged attention distribution of each layer that runs in this pass, [tokens, max_pos + 1]
  // each, F32: row t holds 1/H · Σ_h softmax weights of head h over keys 0..pos(t) (dense layers) or over
  // the keys the layer attends to (sparse layers; 0 at the others), and 0 past pos(t). Columns are
  // positions in the row's own sequence. Distillation targets (DESIGN.md §3, "Multi-layer distillation").
  // Costs one extra attention pass per layer and O(tokens × context) memory per layer; single rank only
  // (InvalidArgument with a shard group).
  std::map<int, std::vector<float>>* attention_by_layer = nullptr;
  // As attention_by_layer, but always dense causal attention over keys 0..pos(t), from this pass's queries
  // and keys, also at sparse layers: what the layer's attention would be without top-k (the recall of the
  // selected set, sdk/selection_report.h). Same cost and limits.
  std::map<int, std::vector<float>>* dense_attention_by_layer = nullptr;
  // What each layer's indexer reads (or would read, in dense mode), host copies (distillation).
  std::map<int, IndexerInputs>* indexer_inputs_by_layer = nullptr;
  // Next-token loss: token_loss[t] = −log p(targets[t] | …) for targets[t] >= 0, else 0 ([tokens]).
  std::span<const int32_t> targets;
  float* token_loss = nullptr;
};

// Inputs of a partial forward pass (greedy plan search, sdk/search.h). The defaults run the whole model
// with the context's plan; nothing here costs anything when left at its default.
struct ForwardOptions {
  // Layers < start_layer are skipped: the pass starts from `initial_hidden` (the hidden state entering
  // start_layer, [tokens, hidden], host pointer, rows in segment order) instead of the embedding, with
  // the top-k buffer preset to `initial_topk` ([tokens, index_topk], host pointer: the indices the
  // nearest Full layer before start_layer selected; required when start_layer > 0 and the model has an
  // indexer). The skipped layers' KV and index-K caches are NOT written for these tokens, so such a pass
  // is only valid on a fresh sequence used for scoring (logits / loss), continued, if at all, only by
  // passes with the same start_layer and plan; never decode from it with a full pass.
  int start_layer = 0;
  const float* initial_hidden = nullptr;
  const int32_t* initial_topk = nullptr;
  // Plan for this pass only (nullptr = the context's). Its Full layers must be Full in the context's
  // plan (only those have an index-K cache and indexer weights); layer 0 Full.
  const Plan* plan = nullptr;
};

struct LossResult {
  double mean_loss = 0;     // mean next-token cross-entropy (nats)
  int64_t tokens = 0;       // predicted tokens (len − 1)
  double perplexity() const;
};

class Context {
 public:
  static absl::StatusOr<std::unique_ptr<Context>> Create(std::shared_ptr<const Model> model,
                                                         const ContextOptions& options = {});
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const Model& model() const { return *model_; }
  const Plan& plan() const { return plan_; }
  const ContextOptions& options() const { return options_; }
  kernels::Backend& backend() { return *backend_; }

  // Sequences. AddSequence returns a new id; RemoveSequence frees its blocks (NotFound for unknown ids).
  absl::StatusOr<int> AddSequence();
  absl::Status RemoveSequence(int seq_id);
  absl::StatusOr<int64_t> SequenceLength(int seq_id) const;
  // A new sequence whose KV and index-K cache blocks are copies of src's (same length, same tokens):
  // parallel sampling (n > 1) and benchmarks at large batch need one prefill only. The copy runs on the
  // backend (device to device) and costs O(length) cache bytes per layer. NotFound for an unknown src;
  // ResourceExhausted when the free blocks cannot hold the copy (nothing changes then).
  absl::StatusOr<int> ForkSequence(int src_seq_id);
  int64_t FreeTokens() const;  // tokens that fit in the free blocks

  // Bytes of cache this context allocated: the KV cache (all layers) and the index-K cache (Full layers
  // only; Shared layers get none).
  struct CacheBytes {
    int64_t kv = 0, index_k = 0;
  };
  CacheBytes cache_bytes() const;

  // CUDA-graph decode counters (ContextOptions::cuda_graphs; all zero on the CPU).
  const DecodeGraphStats& decode_graph_stats() const;
  // Turns CUDA-graph decode on or off from the next step (ContextOptions::cuda_graphs); off frees the
  // captured graphs.
  void SetCudaGraphs(bool enabled);

  // Per-layer timing (ContextOptions::profile_layers; all zero and empty vectors when off).
  const LayerProfile& layer_profile() const;
  void ResetLayerProfile();

  // Appends `tokens` to a sequence in chunks of prefill_chunk; writes the last token's logits
  // [vocab] to `last_logits` when non-null. On error, the sequence is left as it was.
  absl::Status Prefill(int seq_id, std::span<const int32_t> tokens, float* last_logits = nullptr);

  // One decode step for several sequences (mixed lengths): appends tokens[i] to seq_ids[i];
  // logits [n, vocab]. On error, every sequence is left as it was.
  absl::Status Decode(std::span<const int> seq_ids, std::span<const int32_t> tokens, float* logits);

  // Expert parallel: one pass with no tokens of this rank's own, joining every MoE layer's exchange so
  // that the other ranks of the expert group can run theirs (ContextOptions::expert_group). A no-op
  // without an expert group.
  absl::Status IdleStep();

  // Next-token LM loss of `tokens` as a fresh sequence (prefilled in chunks, then removed).
  absl::StatusOr<LossResult> EvalLoss(std::span<const int32_t> tokens);

  // The general forward pass (all of the above use it). Validates every token id and the capacity
  // before touching any state; on error every sequence is left as it was.
  // `options`: a partial pass and/or a per-pass plan (ForwardOptions; search only).
  absl::Status Forward(std::span<const Segment> segments, const ForwardOutputs& outputs,
                       const ForwardOptions& options = {});

 private:
  struct Impl;
  Context() = default;
  std::shared_ptr<const Model> model_;
  Plan plan_;
  ContextOptions options_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ic
