// Indexer distillation loop: turns a dense checkpoint into a DSA one by training lightning indexers
// against the model's own attention (DeepSeek-V3.2's dense warm-up; with a plan, IndexCache's
// training-aware multi-layer distillation, arXiv 2603.12201 §3.2; DESIGN.md §3).
//
// Per step, for each calibration window (a fresh sequence of T tokens, positions 0..T−1):
//   1. the frozen dense model runs one forward pass (CPU or CUDA) capturing, per layer, the indexer's
//      input (the normed hidden state) and the head-averaged dense attention A^(i) [T, T];
//   2. each Full layer ℓ serving Shared layers ℓ+1..ℓ+m gets the target p = 1/(m+1) · Σ_j A^(ℓ+j) and
//      the loss mean_t KL(p_t ‖ softmax(I_t^(ℓ))) with its gradients (sdk/distill.h). On the CPU, in double
//      precision, Full layers (independent problems) on `threads` threads; with device kCuda, the O(T²)
//      score part of each layer on the GPU (Backend::IndexerDistill, F32 products, double row sums; one
//      layer at a time) and the rest (projections, their backward, the targets) on the host threads;
//   3. gradients are averaged over the step's windows; Adam with linear warm-up + cosine decay.
// Only indexer parameters train; the model is never modified. The window order is a seeded shuffle per
// epoch, a pure function of (seed, step), so a run resumed from a checkpoint takes exactly the steps
// the uninterrupted run would have (bitwise: the weights and Adam moments are saved exactly).
//
// Memory: the captures of one window, layers × T² × 4 B (30 layers at T = 1024: 120 MiB) plus
// layers × T × hidden × 4 B (with kCuda also about 2·T² × 4 B of GPU memory). Time: on the CPU dominated by
// the gradient, O(Full layers × T² × H_I × d_I) per window.
//
//   IC_ASSIGN_OR_RETURN(auto state, InitIndexerTraining(dense->config, {.n_heads = 4, .head_dim = 64,
//                                                                      .topk = 256}, plan, /*seed=*/0));
//   IC_RETURN_IF_ERROR(TrainIndexers(dense, windows, {.steps = 200}, &state));
//   IC_RETURN_IF_ERROR(WriteDsaModel(dense->path, state, "/models/smollm2-dsa", DType::kBF16));
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "sdk/distill.h"
#include "sdk/plan.h"
#include "sdk/safetensors.h"
#include "sdk/weights.h"

namespace ic {

// Size of the indexers to add (Llama-DSA keys of DESIGN.md §3).
struct IndexerShape {
  int n_heads = 4;        // index_n_heads
  int head_dim = 64;      // index_head_dim
  int topk = 256;         // index_topk
  int rope_head_dim = 0;  // index_rope_head_dim; 0 = head_dim / 2
};

// `dense` (a Llama checkpoint without indexers) as LlamaDsaForCausalLM with `shape`.
// InvalidArgument when `dense` is not a dense Llama model or a size is out of range.
absl::StatusOr<ModelConfig> DsaConfigFor(const ModelConfig& dense, const IndexerShape& shape);

// Everything a run needs to continue: what a checkpoint holds.
struct IndexerTrainingState {
  ModelConfig config;                    // Llama-DSA (DsaConfigFor)
  Plan plan;                             // Full layers own (and train) an indexer
  std::vector<IndexerWeights> indexers;  // [num_layers]; Shared layers' entries are empty
  std::vector<AdamState> adam;           // [num_layers]
  int64_t step = 0;                      // optimizer steps taken
  uint64_t seed = 0;                     // initialisation and window order
};

// Fresh indexers for the Full layers of `plan`: wq, wk, weights_proj ~ N(0, hidden^−1) from a seeded
// generator (one stream per layer), k_norm weight 1 and bias 0.
absl::StatusOr<IndexerTrainingState> InitIndexerTraining(const ModelConfig& dense, const IndexerShape& shape,
                                                         const Plan& plan, uint64_t seed);

// Replaces the Full layers' indexers of `state` by the tensors of an indexer safetensors file (one
// WriteIndexerWeights wrote, or any Llama-DSA checkpoint's): starts training-aware distillation from a
// warmed-up DSA model. Adam restarts. InvalidArgument naming a missing tensor or a shape mismatch.
absl::Status LoadInitialIndexers(const std::string& path, IndexerTrainingState* state);

struct DistillProgress {
  int64_t step = 0, steps = 0;    // steps done (after this one) of the run's total
  double loss = 0;                // mean over Full layers of this step's loss (nats; KL, see distill.h)
  std::vector<double> layer_loss; // [num_layers], 0 for Shared layers
  double learning_rate = 0;
  double elapsed_seconds = 0, remaining_seconds = 0;
  double teacher_seconds = 0, gradient_seconds = 0;  // this run so far: forward captures / loss + gradients
};

struct DistillOptions {
  int64_t steps = 200;            // total optimizer steps of the run (a resumed run continues to this)
  int windows_per_step = 1;       // calibration windows averaged per step
  double learning_rate = 1e-3;    // peak (after warm-up)
  int64_t warmup_steps = 10;
  kernels::DeviceKind device = kernels::DeviceKind::kCpu;  // the teacher's forward pass and, kCuda, the loss's scores
  int threads = 0;                // host gradient threads over Full layers; 0 = hardware concurrency
  std::string checkpoint_path;    // "" = no checkpoints
  int64_t checkpoint_every = 0;   // steps between checkpoints (0 = only after the last step)
  std::function<void(const DistillProgress&)> on_step;
  // Asked after each step (after on_step): true stops the run there — the checkpoint, when configured, is
  // written first so that it can be resumed — and TrainIndexers returns Cancelled.
  std::function<bool()> should_stop;
};

// Trains `state` from state->step to options.steps on `windows` (each >= 2 tokens, ids < vocab).
// InvalidArgument: `dense` has indexers (distil from its dense base), no windows, a short window, a token
// outside the vocabulary, a state of another model; OutOfMemory-like errors from the context. On error
// the state holds the last completed step (and the checkpoint, when configured, the last one written).
absl::Status TrainIndexers(std::shared_ptr<const Model> dense, std::span<const std::vector<int32_t>> windows,
                           const DistillOptions& options, IndexerTrainingState* state);

// Mean distillation loss of every layer over `windows` without training ([num_layers], 0 for Shared).
absl::StatusOr<std::vector<double>> EvaluateIndexers(std::shared_ptr<const Model> dense,
                                                     std::span<const std::vector<int32_t>> windows,
                                                     const IndexerTrainingState& state,
                                                     kernels::DeviceKind device = kernels::DeviceKind::kCpu,
                                                     int threads = 0);

// Checkpoint: one safetensors file: the indexers (F32, HF names), Adam moments (F64, "optimizer.m.<name>",
// "optimizer.v.<name>") and metadata (format, step, seed, plan, the Llama-DSA config.json). Written to
// a temporary file and renamed, so a crash never leaves a torn checkpoint.
absl::Status SaveIndexerCheckpoint(const std::string& path, const IndexerTrainingState& state);
// InvalidArgument when the file is not a checkpoint, is of another model (`dense` differs), or is corrupt.
absl::StatusOr<IndexerTrainingState> LoadIndexerCheckpoint(const std::string& path, const ModelConfig& dense);

// The Full layers' indexers as safetensors (`model.layers.N.self_attn.indexer.*`; F32 or BF16).
absl::Status WriteIndexerWeights(const std::string& path, const IndexerTrainingState& state, DType dtype);

// A loadable Llama-DSA checkpoint directory: out_dir/config.json (LlamaDsaForCausalLM, indexer_types =
// the plan), out_dir/indexer.safetensors (dtype), the dense model's safetensors files hard-linked (copied
// across filesystems), model.safetensors.index.json mapping every tensor, and the tokenizer and
// generation files copied. out_dir is created; files of the same names are replaced.
absl::Status WriteDsaModel(const std::string& dense_dir, const IndexerTrainingState& state, const std::string& out_dir,
                           DType dtype);

// Checks, before any training, that WriteDsaModel can write `out_dir` (and that `checkpoint`, when not empty,
// can be written): out_dir is not the dense model's directory (symlinks resolved), not an existing
// non-directory, and its nearest existing ancestor is a writable directory; the same for the checkpoint's
// directory, and an existing checkpoint must be a regular file. InvalidArgument naming the path.
absl::Status CheckDistillOutputs(const std::string& dense_dir, const std::string& out_dir,
                                 const std::string& checkpoint = "");

}  // namespace ic
