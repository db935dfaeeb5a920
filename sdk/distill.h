// Indexer distillation: the loss of DESIGN.md §3 ("Multi-layer distillation"), its exact analytic gradients
// w.r.t. the lightning-indexer parameters, and Adam with a learning-rate schedule.
//
// The indexer (DESIGN.md §2, computed exactly as sdk/forward.cc does):
//   q[t]   = x_q[t]·W_qᵀ                         [H_I, d_I]   (wq: [H_I·d_I, in_q])
//   k[t]   = LayerNorm(x[t]·W_kᵀ) (eps 1e-6)      [d_I]        (wk: [d_I, hidden])
//   w[t]   = x[t]·W_wᵀ · H_I^-½ · d_I^-½          [H_I]        (weights_proj: [H_I, hidden])
//   RoPE on the first index_rope_head_dim dims of every q head and of k (NeoX halves, or interleaved pairs
//   when config.indexer_rope_interleave), angle = positions[t]·inv_freq[i] (fp32 product, as HF and the CPU
//   kernel), cos/sin × attention_scaling, tables from ComputeRope(config.rope, index_rope_head_dim,
//   max_position_embeddings).
//   I[t,s] = Σ_j w[t,j]·ReLU(q[t,j]·k[s])          for s ≤ t (row index; positions only feed RoPE)
//
// The loss of one batch (one sequence, one Full layer ℓ):
//   loss = mean over counted rows t of KL(p_t ‖ softmax_{s∈D_t} I[t,s])
// where D_t is {0..t} for a dense target, and for a sparse target the row's selected positions (DeepSeek-V3.2's
// sparse stage: both p and the indexer softmax are restricted to the selected set S_t) unless
// `sparse_softmax_over_all_keys` asks for the softmax over all of 0..t. Rows whose p_t is empty (dense: the
// row is all zeros; sparse: no entries) are skipped and not counted; a batch with no counted row has loss 0
// and zero gradients. Each counted row of p is renormalised in double to sum exactly 1 (F32 targets sum to 1
// only within rounding; the validation accepts |sum − 1| <= kDistillRowSumTolerance).
//
// Target (computed by the caller). For a Full layer ℓ serving Shared layers ℓ+1..ℓ+m, with A^(i)_h[t,:] the
// attention probabilities of head h of layer i (causal softmax in the dense warm-up; over the selected set
// S_t, which is the same for all of ℓ..ℓ+m since they share ℓ's indices, in the sparse stage):
//   p_t = 1/(m+1) · Σ_{j=0..m} 1/H · Σ_h A^(ℓ+j)_h[t,:]
// DESIGN.md's loss Σ_j 1/(m+1)·KL(p^(ℓ+j)_t ‖ q_t) equals KL(p_t ‖ q_t) + [H(p_t) − 1/(m+1)·Σ_j H(p^(ℓ+j)_t)]:
// the bracket does not depend on the indexer, so the gradients are identical and the loss returned here is
// the paper's minus that constant (it is ≥ 0 and 0 exactly when q_t = p_t). m = 0 is DeepSeek's indexer loss.
//
// Precision: weights and inputs are F32 (as the engine stores them); every intermediate, the loss and the
// gradients are double (a backend, below, runs the score part in F32). Cost: projections O(T·(H_I·d_I·in_q + (d_I + H_I)·hidden)) through cblas_dgemm;
// scores and their backward O(Σ_t |D_t| · H_I · d_I) in plain loops (T² · H_I · d_I / 2 dense); memory
// O(T·(H_I·d_I + in_q + hidden)) — no T×T buffer is held.
//
//   IndexerBatch b{.tokens = T, .x_q = q_latent, .x = normed_hidden, .positions = pos, .p_dense = p};
//   IndexerGrads g;
//   IC_ASSIGN_OR_RETURN(double loss, IndexerDistillLoss(config, layer.indexer, b, &g));
//   IC_RETURN_IF_ERROR(AdamStep(g, LearningRate(step, total, 1e-3, 100), &adam, &layer.indexer));
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "sdk/config.h"
#include "sdk/weights.h"

namespace ic {

// One sequence's detached inputs for one Full layer, row-major F32.
struct IndexerBatch {
  int tokens = 0;                  // T
  std::vector<float> x_q;          // [T, in_q]: q_latent (MLA, in_q = q_lora_rank) or the normed hidden (Llama-DSA)
  std::vector<float> x;            // [T, hidden]: the layer's normed hidden state
  std::vector<int32_t> positions;  // [T], >= 0: RoPE positions

  // Target, exactly one form non-empty:
  // dense: [T, T], row t a distribution over s ≤ t (entries s > t must be 0), or all zeros (row skipped).
  std::vector<float> p_dense;
  // sparse (CSR): row t's entries are p_index/p_prob[p_offsets[t] .. p_offsets[t+1]); positions distinct,
  // in [0, t]; probabilities >= 0 summing to 1; an empty row is skipped. p_offsets has T+1 entries.
  std::vector<int32_t> p_offsets;
  std::vector<int32_t> p_index;
  std::vector<float> p_prob;
  // Sparse form only: false (default, DeepSeek-V3.2's sparse stage) = the indexer's softmax runs over the
  // row's selected positions; true = over all s ≤ t (p is 0 outside the selected set).
  bool sparse_softmax_over_all_keys = false;

  bool sparse() const { return !p_offsets.empty(); }
};

// Row sums of p must be within this of 1 (F32 targets summed over up to a few thousand keys).
inline constexpr double kDistillRowSumTolerance = 1e-3;

// Gradients of the loss, same shapes and order as IndexerWeights, in double. Overwritten (not accumulated)
// by IndexerDistillLoss; sum several with Add to accumulate batches.
struct IndexerGrads {
  std::vector<double> wq, wk, k_norm_weight, k_norm_bias, weights_proj;
  void Add(const IndexerGrads& other, double scale = 1.0);  // this += scale · other (resizes an empty this)
  void Scale(double factor);
};

// The loss above; when `grads` != nullptr also its gradients w.r.t. every indexer parameter.
// `backend` (optional, not owned): with a dense target, the O(T²·H_I·d_I) part (scores, softmax, KL and the
// backward from I to q, k and w) runs as Backend::IndexerDistill on it, in F32 products with double row
// sums (kernels/backend.h); the projections, LayerNorm, RoPE and their backward stay on the host in double.
// The loss and gradients then match the all-double path to about 1e-5 relative. nullptr, or a sparse
// target: everything on the host in double. The backend's memory holds q, k, w, p and a [T, T] F32 scratch.
// Threads may share one backend (its calls from here are serialised by a process-wide lock) as long as
// nothing else uses that backend meanwhile.
// InvalidArgument naming the field on a shape or value error (config indexer fields, weight shapes, x_q, x,
// positions, p_dense / p_offsets / p_index / p_prob, non-finite inputs, bad row sums); ResourceExhausted
// when the backend's memory runs out.
absl::StatusOr<double> IndexerDistillLoss(const ModelConfig& config, const IndexerWeights& weights,
                                          const IndexerBatch& batch, IndexerGrads* grads,
                                          kernels::Backend* backend = nullptr);

// Indexer scores I[t, s] for s ≤ t (double, [T, T], entries s > t are -inf): the forward above, exposed for
// tests and evaluation (recall of the target mass inside the top-k).
absl::StatusOr<std::vector<double>> IndexerScores(const ModelConfig& config, const IndexerWeights& weights,
                                                  const IndexerBatch& batch);

// Adam (Kingma & Ba) with bias correction: m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;
// θ −= lr · m̂ / (sqrt(v̂) + ε), m̂ = m / (1−β1^step), v̂ = v / (1−β2^step). Moments in double; the F32
// weights are updated in place. The state is sized on the first step.
struct AdamOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};
struct AdamState {
  int64_t step = 0;  // steps taken
  IndexerGrads m, v;
};
// InvalidArgument when a gradient's size differs from its weight's (or from the state's).
absl::Status AdamStep(const IndexerGrads& grads, double lr, AdamState* state, IndexerWeights* weights,
                      const AdamOptions& options = {});

// Learning rate at 0-based `step` of `total`: linear warm-up base·(step+1)/warmup for step < warmup, then
// cosine decay base·½·(1 + cos(π·(step − warmup)/(total − warmup))) (positive for every step < total);
// step >= total gives 0; warmup <= 0 means no warm-up.
double LearningRate(int64_t step, int64_t total, double base, int64_t warmup);

}  // namespace ic
