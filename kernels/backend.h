// The kernel interface: every op of the DSA forward pass, implemented by two backends.
//
//   kernels/cpu/   the reference (plain C++ + OpenBLAS); it defines what each op computes.
//   kernels/cuda/  CUDA kernels + cuBLASLt; checked against the CPU backend by tests/parity_test.cc.
//
// Conventions (DESIGN.md §6):
//   * Tensors are row-major; activations are F32; positions and indices are int32.
//   * Every pointer in an args struct lives in the backend's memory (host memory for the CPU backend,
//     device memory for CUDA); Allocate/Copy* move data across.
//   * Ops validate their arguments and return InvalidArgument naming the field; they never abort.
//   * Paged caches: a sequence's position p lives at slot
//       block_tables[seq * max_blocks_per_seq + p / block_size] * block_size + p % block_size
//     of a cache tensor laid out [num_slots, entry_stride].
//   * Top-k indices are logical positions inside the sequence, int32 [tokens, k]; the first
//     min(k, valid) slots are valid and the rest are -1 (DESIGN.md §3).
//
// Example (CPU):
//   auto backend = CreateBackend(DeviceKind::kCpu).value();
//   GemmArgs g{.c = y, .a = x, .b = w, .m = tokens, .n = out, .k = in};
//   IC_RETURN_IF_ERROR(backend->Gemm(g));
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/fp8_blocks.h"

namespace ic::kernels {

enum class DeviceKind { kCpu, kCuda };

// C[b] = alpha · A[b] · op(B[b]) + beta · C[b] for b in [0, batch).
//   A: [m, k] with row stride lda.
//   B: b_transposed ? [n, k] (an HF Linear weight: y = x·Wᵀ) : [k, n]; row stride ldb.
//   C: [m, n] with row stride ldc.
// A zero stride (lda == 0 etc.) means "dense": k, k or n, n.
//
// BF16 weights: set b_bf16 instead of b. B then holds BF16 bit patterns (round to nearest even) in the
// same layout, strides in elements; A stays F32 in memory and is rounded to BF16 (nearest even) before
// the product; products accumulate in F32 and C stays F32 (the mixed-precision GEMM of every BF16 LLM
// runtime: cuBLASLt with CUDA_R_16BF inputs and CUBLAS_COMPUTE_32F; the CPU reference rounds A, widens
// B and runs its F32 sgemm, so the two differ only in summation order; for decode-sized m ≤ 8 with one
// [n, k] matrix the CUDA backend runs its own memory-bound GEMV with the same roundings).
//
// FP8 weights (DeepSeek-V3's block-scaled FP8, quantization_config weight_block_size [128, 128]): set b_fp8
// instead of b. B is then [n, k] E4M3 bytes (b_transposed, batch 1, ldb in bytes) with one F32 scale per
// 128 × 128 block, b_scale [ceil(n/128), b_scale_ld] (0 = Fp8ScaleLd(k), kernels/fp8_blocks.h: ceil(k/128)
// rounded up to a multiple of 4, the layout cuBLASLt implies; DeepSeek checkpoints store ceil(k/128) per
// row): B[i, j] = e4m3(b_fp8[i·ldb + j]) ·
// b_scale[(i/128)·b_scale_ld + j/128]. A stays F32 in memory and is quantised as DeepSeek-V3 quantises
// activations, per row and 128-column block: s = amax / 448 rounded up to a power of two (1 for an all-zero
// block), q = e4m3(a / s) (nearest even, saturating); C = alpha · Σ_blocks s_a·s_b·Σ q_a·q_b + beta · C with
// F32 accumulation. CUDA: cuBLASLt's block-scaled FP8 (CUDA_R_8F_E4M3, VEC128_32F scales for A and
// BLK128x128_32F for B; sm_90), which needs k and ldb multiples of 16, b_scale_ld 0 (its default) and a
// 16-byte-aligned b_fp8 (else InvalidArgument naming the value); the CPU reference quantises A the same
// way, widens B and runs its F32 sgemm. Exactly one of b / b_bf16 / b_fp8 is set (more: InvalidArgument).
struct GemmArgs {
  float* c = nullptr;
  const float* a = nullptr;
  const float* b = nullptr;
  const uint16_t* b_bf16 = nullptr;
  const uint8_t* b_fp8 = nullptr;
  const float* b_scale = nullptr;
  int b_scale_ld = 0;
  int m = 0, n = 0, k = 0;
  int lda = 0, ldb = 0, ldc = 0;
  bool b_transposed = true;
  float alpha = 1.0f, beta = 0.0f;
  int batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;  // elements between batch entries
};

// out[t, :] = table[ids[t], :].  out [tokens, dim], table [vocab, dim], ids int32 [tokens].
// An id outside [0, vocab) is InvalidArgument naming the id and the vocabulary size.
struct EmbeddingArgs {
  float* out = nullptr;
  const float* table = nullptr;
  const int32_t* ids = nullptr;
  int tokens = 0, dim = 0, vocab = 0;
};

// RMSNorm: out = in · rsqrt(mean(in²) + eps) · weight, row by row.
// LayerNorm (when bias != nullptr or layer_norm): out = (in − mean) · rsqrt(var + eps) · weight + bias.
// in/out: [rows, dim] with row strides in_stride/out_stride (0 = dim). In-place allowed.
struct NormArgs {
  float* out = nullptr;
  const float* in = nullptr;
  const float* weight = nullptr;
  const float* bias = nullptr;  // LayerNorm only
  int rows = 0, dim = 0;
  int in_stride = 0, out_stride = 0;
  float eps = 1e-6f;
};

enum class RopeStyle {
  kInterleaved,  // pairs (x0, x1), (x2, x3), … rotate together (DeepSeek MLA, GLM-5 indexer)
  kNeox,         // halves (x_i, x_{i+d/2}) rotate together (Llama, DeepSeek-V3.2 indexer)
};

// In-place rotary embedding on x [tokens, heads, …]:
//   for token t, head h, the rot_dim values starting at x + t·token_stride + h·head_stride + rot_offset
//   are rotated by angle positions[t] · inv_freq[i] (i < rot_dim/2), and multiplied by attention_scaling
//   (the YaRN cos/sin factor; 1 otherwise).
// Interleaved style writes its output in the same interleaved layout (HF de-interleaves; both q and k
// get the same permutation, so dot products are identical).
struct RopeArgs {
  float* x = nullptr;
  const int32_t* positions = nullptr;  // [tokens]
  const float* inv_freq = nullptr;     // [rot_dim / 2]
  int tokens = 0, heads = 0;
  int token_stride = 0, head_stride = 0, rot_offset = 0, rot_dim = 0;
  float attention_scaling = 1.0f;
  RopeStyle style = RopeStyle::kNeox;
};

// out[t, i] = silu(gate[t, i]) · up[t, i].  [tokens, dim]; strides 0 = dim.
struct SiluMulArgs {
  float* out = nullptr;
  const float* gate = nullptr;
  const float* up = nullptr;
  int tokens = 0, dim = 0;
  int gate_stride = 0, up_stride = 0, out_stride = 0;
};

// dst[r, 0:cols] = src[r, 0:cols] (+ dst when accumulate).  Strides in elements.
struct Copy2DArgs {
  float* dst = nullptr;
  const float* src = nullptr;
  int rows = 0, cols = 0;
  int dst_stride = 0, src_stride = 0;
  bool accumulate = false;
};

// cache[slots[t], 0:dim] = src[t, 0:dim] for each token (slot −1: skipped).
// cache [num_slots, cache_stride]; src [tokens, src_stride].
// cache_bf16 instead of cache: a BF16 cache (uint16 bit patterns, round to nearest even; the BF16
// index-K cache of Precision::kBF16). Exactly one of the two is set.
// cache_fp8 + scale instead: an FP8 E4M3 cache with one F32 scale per slot (scale[slot] = amax / 448 of
// the row rounded up to a power of two, 1 for an all-zero row; values round to nearest even,
// saturating): the index-K cache of Precision::kFP8.
struct CacheWriteArgs {
  float* cache = nullptr;
  uint16_t* cache_bf16 = nullptr;
  uint8_t* cache_fp8 = nullptr;
  float* scale = nullptr;  // [num_slots], with cache_fp8
  const float* src = nullptr;
  const int32_t* slots = nullptr;
  int tokens = 0, dim = 0, cache_stride = 0, src_stride = 0;
  int64_t num_slots = 0;
};

// Arithmetic precision of the indexer (IndexerArgs) and of attention (AttentionArgs; see there).
// For the indexer's q·k products (the ReLU, the head weights and the sum over heads are F32 in every mode):
//   kF32:  F32 inputs, F32 products and sums (the reference semantics).
//   kBF16: q and k are rounded to BF16 (round to nearest even) before the dot products, which are
//          accumulated in F32 — what a BF16 tensor-core kernel computes (the CUDA backend runs
//          mma.sync m16n8k16 for 8–64 heads of dimension 64 or 128). Products of two BF16 values are
//          exact in F32, so the CPU and the GPU differ only by the order of the F32 sums.
//   kFP8:  (indexer only) FP8 E4M3 as DeepSeek-V3.2's indexer: each key is stored quantised with its own
//          F32 scale (an FP8 index-K cache written by CacheWrite), each (token, head) row of q is quantised
//          the same way when the indexer runs; the scale is amax / 448 rounded up to a power of two (1 for
//          an all-zero row), values round to nearest even and saturate at ±448. I[t, s] = s_k[s] · Σ_j w[t, j] · s_q[t, j] · ReLU(q8[t, j] · k8[s]) — the scales are
//          positive, so this equals eq. 1 on the dequantised values. Products of two E4M3 values are exact
//          in F32; the tensor cores (mma.sync m16n8k32) accumulate with fewer bits than F32, so CPU and
//          GPU scores agree to ~1e-3 relative. DeepSeek's Hadamard rotation of q and k before quantising
//          is the caller's (Backend::Hadamard; the engine applies it). CUDA: 8/16/32/64 heads × 64/128.
enum class Precision { kF32, kBF16, kFP8 };

// Where each query token of a batch lives: its sequence (row of block_tables) and its position.
struct TokenLayout {
  const int32_t* token_seq = nullptr;     // [tokens]
  const int32_t* token_pos = nullptr;     // [tokens]; valid keys of token t are positions 0..token_pos[t]
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int tokens = 0;
  int num_seqs = 0;
  int max_blocks_per_seq = 0;
  int block_size = 64;
};

// Attention of every query token over its sequence's cached keys (paged):
//   dense (topk == nullptr): keys 0..pos (causal);   sparse: the valid entries of topk[t, :].
//   out[t, h, :] = Σ_s softmax_s(scale · q[t,h]·k[s, g(h)]) · v[s, g(h)],  g(h) = h / (q_heads / kv_heads).
// q: [tokens, q_heads, qk_dim] with row stride q_stride (0 = q_heads·qk_dim).
// k_cache: [num_slots, k_stride], kv head g at offset g·qk_dim.
// v_cache: [num_slots, v_stride], kv head g at offset g·v_dim (may alias k_cache: MLA absorbed form,
//   where the value is the first v_dim = kv_lora_rank entries of the latent).
// out: [tokens, q_heads, v_dim].  lse (optional): [tokens, q_heads] natural-log sum-exp of the logits.
// probs (optional, sparse only): [tokens, topk_k] head-averaged attention weight of each selected key.
// precision kBF16: the kernel may round q, k, v and the probabilities to BF16 (F32 accumulation, F32
//   softmax statistics): the CUDA backend runs sparse absorbed-MLA attention (kv_heads 1, qk_dim 576,
//   v_dim 512 aliasing the latent, any number of query heads) on tensor cores; every other case is F32.
//   The CPU reference rounds q, k and v and keeps the probabilities in F32; outputs agree with kF32 to
//   about 2^-8 relative (DESIGN.md §3's BF16 tolerance, 1e-2). kFP8 is the indexer's only: an error here.
// BF16 KV cache (precision kBF16 only): k_cache_bf16 / v_cache_bf16 instead of k_cache / v_cache, BF16 bit
//   patterns in the same layout (strides in elements; v may alias k as above). The values are the ones the
//   kBF16 arithmetic rounds to anyway, so results equal those over an F32 cache of the same values.
struct AttentionArgs {
  float* out = nullptr;
  float* lse = nullptr;
  float* probs = nullptr;
  const float* q = nullptr;
  const float* k_cache = nullptr;
  const float* v_cache = nullptr;
  const uint16_t* k_cache_bf16 = nullptr;
  const uint16_t* v_cache_bf16 = nullptr;
  int q_stride = 0, k_stride = 0, v_stride = 0;
  int q_heads = 0, kv_heads = 0, qk_dim = 0, v_dim = 0;
  int64_t num_slots = 0;
  float scale = 1.0f;
  TokenLayout layout;
  const int32_t* topk = nullptr;  // [tokens, topk_k] or nullptr (dense causal)
  int topk_k = 0;
  Precision precision = Precision::kF32;
};


// Lightning indexer + top-k (DeepSeek-V3.2 report, eq. 1):
//   I[t, s] = Σ_j w[t, j] · ReLU(q[t, j] · k[s])   for s ≤ pos(t),
// then indices[t, :] = top-k of I[t, 0..pos(t)] with the rule of DESIGN.md §3 (ties → smaller position;
// +inf > finite > −inf > NaN; rows with pos + 1 ≤ k select 0..pos then −1 without scoring).
// Scale factors (H^-½ · d^-½ in DeepSeek) are folded into w by the caller.
// q: [tokens, heads, head_dim]; w: [tokens, heads]; k_cache: [num_slots, k_stride] (head_dim used).
// scores (optional): [tokens, scores_stride] receives I[t, s] for s ≤ pos(t) and −inf after, for
//   s < scores_stride (tests and audits; the fused path never materialises it).
struct IndexerArgs {
  int32_t* indices = nullptr;  // [tokens, k]
  float* scores = nullptr;
  int scores_stride = 0;
  const float* q = nullptr;
  const float* w = nullptr;
  const float* k_cache = nullptr;
  // Instead of k_cache (precision kBF16 only): the index-K cache in BF16 (uint16 bit patterns), the same
  // [num_slots, k_stride] layout; half the bytes a decode row reads. Exactly one of the two is set.
  const uint16_t* k_cache_bf16 = nullptr;
  // Instead of k_cache (precision kFP8 only): the FP8 E4M3 index-K cache [num_slots, k_stride] and its
  // per-slot F32 scales [num_slots] (CacheWrite's cache_fp8 / scale).
  const uint8_t* k_cache_fp8 = nullptr;
  const float* k_scale = nullptr;
  int k_stride = 0;
  int64_t num_slots = 0;
  int heads = 0, head_dim = 0, k = 0;
  Precision precision = Precision::kF32;
  TokenLayout layout;
};

// Top-k over explicit scores, DESIGN.md §3 rule: for row r, candidates are positions 0..lengths[r]−1 of
// scores[r, :] (row stride `stride`); out[r, :] holds min(k, length) positions, then −1.
struct TopkArgs {
  int32_t* out = nullptr;          // [rows, k]
  const float* scores = nullptr;   // [rows, stride]
  const int32_t* lengths = nullptr;// [rows]
  int rows = 0, stride = 0, k = 0;
};

// DeepSeek-V3 router: s = sigmoid(logits); choice = s + bias; groups ranked by the sum of their top-2
// choice scores; the best topk_group groups stay; top_k experts by choice; weight = s of the chosen
// (normalised to sum 1 when norm_topk_prob) · routed_scaling_factor.
// logits [tokens, experts]; bias [experts] or nullptr; expert_ids/expert_weights [tokens, top_k].
struct MoeRouteArgs {
  int32_t* expert_ids = nullptr;
  float* expert_weights = nullptr;
  const float* logits = nullptr;
  const float* bias = nullptr;
  int tokens = 0, experts = 0, top_k = 0, n_group = 1, topk_group = 1;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.0f;
};

// The routed experts of a few tokens (decode), fused: for every token t
//   out[t, :] += Σ_j expert_weights[t, j] · down_e(SiLU(gate_e · x[t]) ⊙ (up_e · x[t])),  e = expert_ids[t, j],
// j in [0, top_k) summed in that order (deterministic). Expert e's weights (HF Linear layout, dense rows):
// weights[e] = gate [inter, hidden], weights[experts + e] = up [inter, hidden], weights[2·experts + e] =
// down [hidden, inter]; `weights` is an array of 3·experts pointers in backend memory. bf16: the weights
// are BF16 bit patterns and the inputs of both products (x and the SiLU product) are rounded to BF16
// first, as Gemm with b_bf16 does; F32 accumulation either way. Reads each chosen expert's weights once
// per (token, j): for a handful of tokens it replaces a gather / GEMM / scatter per expert and the host
// round trip of the expert ids (the engine uses it for tokens · top_k ≤ kMoeFusedMaxPairs).
// x, out [tokens, hidden]; expert_ids int32 / expert_weights F32 [tokens, top_k]. An id outside
// [0, experts), or a chosen expert with a null weight pointer, is InvalidArgument (CUDA: reported at the
// next Synchronize, that token's output unchanged).
// Optionally a shared expert of the same intermediate size (shared_gate / shared_up / shared_down, backend
// memory, all three or none): added with weight 1 after the routed ones, into the same sum.
// fp8 (instead of bf16): block-scaled FP8 weights, GemmArgs::b_fp8's layout and arithmetic — E4M3 bytes
// with one F32 scale per 128 × 128 block (scale row stride Fp8ScaleLd(cols)), and x and the
// SiLU product quantised per 128 values with power-of-two scales. `weights` then holds 6·experts pointers:
// the 3·experts byte matrices as above, then their scales in the same order (weights[3·experts + e] is
// gate e's, …); a shared expert also needs shared_gate_scale / shared_up_scale / shared_down_scale.
// hidden and inter must be multiples of 16.
struct MoeExpertsArgs {
  float* out = nullptr;
  const float* x = nullptr;
  const int32_t* expert_ids = nullptr;
  const float* expert_weights = nullptr;
  const void* const* weights = nullptr;
  const void *shared_gate = nullptr, *shared_up = nullptr, *shared_down = nullptr;
  bool bf16 = false;
  int tokens = 0, hidden = 0, inter = 0, top_k = 0, experts = 0;
  bool fp8 = false;
  const float *shared_gate_scale = nullptr, *shared_up_scale = nullptr, *shared_down_scale = nullptr;
};
constexpr int kMoeFusedMaxPairs = 32;

// The argument checks both backends run for MoeExperts (InvalidArgument naming the field).
inline absl::Status ValidateMoeExperts(const MoeExpertsArgs& a) {
  if (a.tokens < 0 || a.hidden < 0 || a.inter < 0 || a.top_k < 0 || a.experts < 0) {
    return absl::InvalidArgumentError(absl::StrCat("MoeExperts: negative size tokens = ", a.tokens, ", hidden = ",
                                                   a.hidden, ", inter = ", a.inter, ", top_k = ", a.top_k,
                                                   ", experts = ", a.experts));
  }
  if (a.tokens == 0 || a.hidden == 0 || a.top_k == 0) return absl::OkStatus();
  if (a.experts == 0 || a.inter == 0) {
    return absl::InvalidArgumentError(absl::StrCat("MoeExperts: experts = ", a.experts, " and inter = ", a.inter,
                                                   " must be positive"));
  }
  if (a.out == nullptr || a.x == nullptr || a.expert_ids == nullptr || a.expert_weights == nullptr ||
      a.weights == nullptr) {
    return absl::InvalidArgumentError("MoeExperts: out, x, expert_ids, expert_weights or weights is null");
  }
  const int shared = (a.shared_gate != nullptr) + (a.shared_up != nullptr) + (a.shared_down != nullptr);
  if (shared != 0 && shared != 3) {
    return absl::InvalidArgumentError("MoeExperts: shared_gate, shared_up and shared_down go together (all or none)");
  }
  if (a.fp8) {
    if (a.bf16) return absl::InvalidArgumentError("MoeExperts: fp8 and bf16 are both set");
    if (a.hidden % 16 != 0 || a.inter % 16 != 0) {
      return absl::InvalidArgumentError(absl::StrCat("MoeExperts: fp8 needs hidden and inter multiples of 16, got ",
                                                     a.hidden, " and ", a.inter));
    }
    const int scales = (a.shared_gate_scale != nullptr) + (a.shared_up_scale != nullptr) +
                       (a.shared_down_scale != nullptr);
    if (scales != shared) {
      return absl::InvalidArgumentError("MoeExperts: fp8 with a shared expert needs shared_gate_scale, "
                                        "shared_up_scale and shared_down_scale (and none without one)");
    }
  }
  return absl::OkStatus();
}

// out[i, :] = in[rows[i], :]  (gather)            in [*, dim], out [count, dim]
// out[rows[i], :] += scale[i] · in[i, :]  (scatter-add; scale may be nullptr = 1)
struct RowsArgs {
  float* out = nullptr;
  const float* in = nullptr;
  const int32_t* rows = nullptr;
  const float* scale = nullptr;
  int count = 0, dim = 0;
};

// loss[t] = −log softmax(logits[t])[targets[t]]; targets[t] < 0: loss 0 (ignored).
// logits [tokens, vocab] (row stride 0 = vocab). A target ≥ vocab is InvalidArgument.
struct CrossEntropyArgs {
  float* loss = nullptr;
  const float* logits = nullptr;
  const int32_t* targets = nullptr;
  int tokens = 0, vocab = 0, stride = 0;
};

// Indexer distillation with a dense target, the O(T²·H·d) part of sdk/distill.h (DESIGN.md §3, "Multi-layer
// distillation"; the KL of DeepSeek-V3.2's indexer warm-up, averaged over served layers by IndexCache,
// arXiv 2603.12201 §3.2). For rows t and keys s ≤ t (one sequence, row index = position):
//   I[t, s]   = Σ_j w[t, j] · ReLU(q[t, j] · k[s])                         (the indexer's scores)
//   p̂[t, s]  = p[t, s] / Σ_{s' ≤ t} p[t, s']                             (rows with zero mass are skipped)
//   kl[t]     = Σ_{s ≤ t, p̂ > 0} p̂ · (log p̂ − I[t, s] + logsumexp_{s' ≤ t} I[t, s'])   (0 when skipped)
//   G[t, s]   = softmax_{s ≤ t}(I[t])_s − p̂[t, s]                         (= ∂kl[t] / ∂I[t, s])
// and, when the gradients are asked for, those of Σ_t kl[t] (the sum, not the mean; ReLU's gradient is 0 at
// and below 0):
//   grad_w[t, j]    = Σ_{s ≤ t} G[t, s] · ReLU(q[t, j] · k[s])
//   grad_q[t, j, :] = Σ_{s ≤ t} G[t, s] · w[t, j] · [q[t, j] · k[s] > 0] · k[s]
//   grad_k[s, :]    = Σ_{t ≥ s} Σ_j G[t, s] · w[t, j] · [q[t, j] · k[s] > 0] · q[t, j]
// q [tokens, heads, head_dim], k [tokens, head_dim], w [tokens, heads], p [tokens, tokens] (entries s > t
// are ignored), kl [tokens]; grad_q / grad_k / grad_w have the shapes of q / k / w, all three or none.
// All F32; the CPU reference accumulates in double, the CUDA kernels the per-row sums (softmax, KL) in
// double and the products in F32. q, k and w must be finite and p finite and ≥ 0 (the caller checks:
// sdk/distill.cc; a NaN q·k would read as a score of 0 through ReLU on both backends). Scratch: the CPU
// reference holds G as [T, T] doubles (ResourceExhausted when that does not fit), CUDA as F32.
// head_dim in [1, kIndexerDistillMaxHeadDim].
struct IndexerDistillArgs {
  float* kl = nullptr;
  float* grad_q = nullptr;
  float* grad_k = nullptr;
  float* grad_w = nullptr;
  const float* q = nullptr;
  const float* k = nullptr;
  const float* w = nullptr;
  const float* p = nullptr;
  int tokens = 0, heads = 0, head_dim = 0;
};
constexpr int kIndexerDistillMaxHeadDim = 512;
constexpr int kIndexerDistillMaxTokens = 1 << 20;  // T² scratch entries must be addressable

// The argument checks both backends run for IndexerDistill (InvalidArgument naming the field).
inline absl::Status ValidateIndexerDistill(const IndexerDistillArgs& a) {
  if (a.tokens < 0 || a.heads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("IndexerDistill: negative size tokens = ", a.tokens, ", heads = ", a.heads));
  }
  if (a.tokens > kIndexerDistillMaxTokens) {
    return absl::InvalidArgumentError(absl::StrCat("IndexerDistill: tokens = ", a.tokens, " exceeds ",
                                                   kIndexerDistillMaxTokens, " (the [tokens, tokens] scratch)"));
  }
  if (a.head_dim < 1 || a.head_dim > kIndexerDistillMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("IndexerDistill: head_dim = ", a.head_dim, " must be in [1, ",
                                                   kIndexerDistillMaxHeadDim, "]"));
  }
  if (a.tokens == 0) return absl::OkStatus();
  if (a.heads == 0) return absl::InvalidArgumentError("IndexerDistill: heads must be positive");
  if (a.kl == nullptr || a.q == nullptr || a.k == nullptr || a.w == nullptr || a.p == nullptr) {
    return absl::InvalidArgumentError("IndexerDistill: kl, q, k, w or p is null");
  }
  const int grads = (a.grad_q != nullptr) + (a.grad_k != nullptr) + (a.grad_w != nullptr);
  if (grads != 0 && grads != 3) {
    return absl::InvalidArgumentError("IndexerDistill: grad_q, grad_k and grad_w go together (all or none)");
  }
  return absl::OkStatus();
}

// Memory of the backend's device: the GPU's (cudaMemGetInfo) or, for the CPU backend, the host's
// (MemAvailable and MemTotal of /proc/meminfo). Process-wide, not per backend: what every user of the
// device holds counts as used.
struct MemoryInfo {
  uint64_t free_bytes = 0;
  uint64_t total_bytes = 0;
  uint64_t used_bytes() const { return total_bytes - free_bytes; }
};

// In-place orthonormal Walsh–Hadamard rotation of each row: x[r, 0:dim] ← H·x[r, 0:dim] / √dim, H the
// Sylvester-ordered ±1 matrix (H_1 = [1], H_2n = [[H_n, H_n], [H_n, −H_n]]); dim a power of two in
// [1, 1024]; row stride `stride` (0 = dim). Dot products between rotated rows are those of the originals;
// DeepSeek-V3.2 rotates q and k of its FP8 indexer this way before quantising (DESIGN.md).
struct HadamardArgs {
  float* x = nullptr;
  int rows = 0, dim = 0, stride = 0;
};

// An executable CUDA graph made by Backend::EndCapture (opaque; destroying it frees the graph).
class CapturedGraph {
 public:
  virtual ~CapturedGraph() = default;
  // Nodes in the graph: kernel launches, memsets, copies and event records, one each (cuBLASLt GEMMs may
  // add more than one).
  virtual size_t num_nodes() const = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceKind kind() const = 0;
  virtual std::string name() const = 0;

  // Memory. Allocate returns ResourceExhausted (naming the size) when memory runs out.
  virtual absl::StatusOr<void*> Allocate(size_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
  virtual absl::Status CopyToDevice(void* dst, const void* host_src, size_t bytes) = 0;
  virtual absl::Status CopyToHost(void* host_dst, const void* src, size_t bytes) = 0;
  virtual absl::Status CopyOnDevice(void* dst, const void* src, size_t bytes) = 0;
  virtual absl::Status Memset(void* dst, int value, size_t bytes) = 0;
  virtual absl::Status Synchronize() = 0;
  virtual absl::StatusOr<MemoryInfo> GetMemoryInfo() = 0;

  // Timing a stretch of the queued work without synchronising (the engine's indexer metrics).
  // TimeMark() queues a timestamp behind everything queued so far and returns its id (0, 1, … since the
  // last ResetTimeMarks()); SecondsBetween(from, to) waits for mark `to` and returns the seconds between
  // the two marks (CUDA: cudaEvent elapsed time, ~0.5 µs resolution; CPU, whose ops run synchronously:
  // the host clock at each call). An id not issued since the last reset is InvalidArgument.
  virtual absl::StatusOr<int> TimeMark() = 0;
  virtual absl::StatusOr<double> SecondsBetween(int from, int to) = 0;
  virtual void ResetTimeMarks() = 0;

  // Ops (see the args structs above).
  virtual absl::Status Gemm(const GemmArgs& args) = 0;
  virtual absl::Status Embedding(const EmbeddingArgs& args) = 0;
  virtual absl::Status RmsNorm(const NormArgs& args) = 0;
  virtual absl::Status LayerNorm(const NormArgs& args) = 0;
  virtual absl::Status Rope(const RopeArgs& args) = 0;
  virtual absl::Status SiluMul(const SiluMulArgs& args) = 0;
  virtual absl::Status Copy2D(const Copy2DArgs& args) = 0;
  virtual absl::Status CacheWrite(const CacheWriteArgs& args) = 0;
  virtual absl::Status Attention(const AttentionArgs& args) = 0;
  virtual absl::Status IndexerTopk(const IndexerArgs& args) = 0;
  virtual absl::Status Topk(const TopkArgs& args) = 0;
  virtual absl::Status MoeRoute(const MoeRouteArgs& args) = 0;
  virtual absl::Status MoeExperts(const MoeExpertsArgs& args) = 0;
  virtual absl::Status GatherRows(const RowsArgs& args) = 0;
  virtual absl::Status ScatterAddRows(const RowsArgs& args) = 0;
  virtual absl::Status CrossEntropy(const CrossEntropyArgs& args) = 0;
  virtual absl::Status Hadamard(const HadamardArgs& args) = 0;
  virtual absl::Status IndexerDistill(const IndexerDistillArgs& args) = 0;

  // CUDA graphs (the plan/run split of decode; ContextOptions::cuda_graphs). BeginCapture() starts
  // recording the ops queued on the backend's stream instead of running them; EndCapture() stops and returns
  // the executable graph; LaunchGraph() queues one run of it (no host work per op: what a decode step of
  // 20–30 launches per layer spends most of its time on at small batch). Ops record their arguments —
  // pointers and sizes — as they are at capture: a graph reruns the same work on whatever those buffers
  // hold when it is launched, so the caller keeps its buffers alive and in place (WorkspaceGeneration).
  // While capturing, what cannot be recorded is refused with FailedPrecondition naming it: Allocate,
  // Free, host copies, Synchronize, SecondsBetween, and a workspace that would have to grow (run the same
  // ops once outside capture first); EndCapture() then discards the capture and returns that error.
  // Device-side errors of the captured ops (kernels/cuda/cuda_kernels.h) are reported by the Synchronize()
  // after a launch. Time marks taken while capturing are re-issued by each launch of the graph: after
  // LaunchGraph, the marks the capture issued (ids 0 … n−1 when it began with ResetTimeMarks) read that
  // run's times (each event node costs ~2 µs of graph time on the H200); launching a graph captured without
  // marks leaves the issued marks as they were. The CPU backend runs ops synchronously and has no graphs:
  // Unimplemented.
  virtual absl::Status BeginCapture() { return absl::UnimplementedError(name() + " has no CUDA graphs"); }
  virtual absl::StatusOr<std::unique_ptr<CapturedGraph>> EndCapture() {
    return absl::UnimplementedError(name() + " has no CUDA graphs");
  }
  virtual absl::Status LaunchGraph(CapturedGraph& graph) {
    return absl::UnimplementedError(name() + " has no CUDA graphs");
  }
  // Changes whenever one of the backend's internal workspaces (op scratch, cuBLASLt operand copies) is
  // reallocated: a graph captured at another generation reads freed memory and must not be launched.
  virtual uint64_t WorkspaceGeneration() const { return 0; }
};

// The argument checks both backends run for an FP8 Gemm (InvalidArgument naming the field); OK for a Gemm
// without b_fp8 unless it sets b_scale.
inline absl::Status ValidateGemmFp8(const GemmArgs& g) {
  if (g.b_fp8 == nullptr) {
    return g.b_scale == nullptr ? absl::OkStatus()
                                : absl::InvalidArgumentError("Gemm: b_scale is set without b_fp8 (it scales FP8 weights only)");
  }
  if (g.b != nullptr || g.b_bf16 != nullptr) {
    return absl::InvalidArgumentError("Gemm: b_fp8 is set together with b or b_bf16 (set exactly one)");
  }
  if (!g.b_transposed || g.batch > 1) {
    return absl::InvalidArgumentError(absl::StrCat("Gemm: b_fp8 needs b_transposed and batch = 1 (got b_transposed = ",
                                                   g.b_transposed, ", batch = ", g.batch, ")"));
  }
  const int k_blocks = (g.k + 127) / 128;
  if (g.b_scale == nullptr) return absl::InvalidArgumentError("Gemm: b_fp8 is set but b_scale is null");
  if (g.b_scale_ld != 0 && g.b_scale_ld < k_blocks) {
    return absl::InvalidArgumentError(absl::StrCat("Gemm: b_scale_ld = ", g.b_scale_ld, " < ceil(k / 128) = ",
                                                   k_blocks));
  }
  return absl::OkStatus();
}

// Creates a backend. kCuda returns Unavailable when the build has no CUDA or no GPU is visible.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(DeviceKind kind, int device_ordinal = 0);

// Number of CUDA devices visible (0 in a CUDA-less build or without a GPU).
int CudaDeviceCount();

}  // namespace ic::kernels
