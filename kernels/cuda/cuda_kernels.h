// Launchers of the CUDA kernels: the boundary between the host backend (cuda_backend.cc, Abseil) and
// the .cu files (no Abseil). Every launcher enqueues work on `stream` and returns the launch's
// cudaError_t; argument validation happens in the backend before a launcher is called.
//
// Data-dependent errors (an id outside the vocabulary, a slot outside the cache) cannot be seen on the
// host without a synchronisation, so kernels record the first one in a small device buffer
// (`DeviceError`); the backend reads it either right away (Embedding, CrossEntropy) or at Synchronize().
//
//   LaunchSiluMul(out, gate, up, tokens, dim, gate_stride, up_stride, out_stride, stream);
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace ic::kernels::cuda {

// First data-dependent error seen by a kernel (code 0 = none). Written with atomicCAS on `code`.
struct DeviceError {
  int code;
  int index;   // token / row where it happened
  int value;   // the offending value (id, slot, target, …)
  int limit;   // the bound it broke
};

enum DeviceErrorCode : int {
  kErrNone = 0,
  kErrEmbeddingId = 1,
  kErrTarget = 2,
  kErrCacheSlot = 3,
  kErrBlockTable = 4,
  kErrPosition = 5,
  kErrRow = 6,
  kErrLength = 7,
  kErrExpert = 8,
  kErrExpertWeights = 9,
};

// Where each query token lives (device pointers; see TokenLayout in kernels/backend.h).
struct DevLayout {
  const int32_t* token_seq;
  const int32_t* token_pos;
  const int32_t* block_tables;
  int tokens;
  int num_seqs;
  int max_blocks_per_seq;
  int block_size;
};

// ---- elementwise.cu ----
cudaError_t LaunchSiluMul(float* out, const float* gate, const float* up, int tokens, int dim,
                          int gate_stride, int up_stride, int out_stride, cudaStream_t stream);
cudaError_t LaunchCopy2D(float* dst, const float* src, int rows, int cols, int dst_stride,
                         int src_stride, bool accumulate, cudaStream_t stream);
// c[b][r, 0:cols] *= beta (beta == 0 writes zeros) for `batch` matrices `stride` elements apart.
cudaError_t LaunchScale2D(float* c, int rows, int cols, int ld, int batch, int64_t stride, float beta,
                          cudaStream_t stream);
// dst[b][r, c] = BF16(src[b·stride + r·ld + c]) (round to nearest even) into a dense [batch, rows, cols]
// buffer: the A operand of a BF16-weight Gemm.
cudaError_t LaunchCastToBf16(uint16_t* dst, const float* src, int rows, int cols, int ld, int batch,
                             int64_t stride, cudaStream_t stream);
// The A operand of an FP8 Gemm (GemmArgs::b_fp8): q[r, c] = E4M3(src[r·ld + c] / s[r, c/128]) into a dense
// [rows_pad, cols] byte buffer and s = Fp8Scale(amax of the 128-column block) into scales[(c/128)·rows_pad + r]
// (cuBLASLt's VEC128_32F layout); rows [rows, rows_pad) are zeros with scale 1.
cudaError_t LaunchQuantizeFp8Blocks(uint8_t* q, float* scales, const float* src, int rows, int rows_pad, int cols,
                                    int ld, cudaStream_t stream);
// The same rounding kept in F32: out[r, c] = E4M3(src[r, c] / s) · s per 128-column block (out may be src).
cudaError_t LaunchRoundFp8Blocks(float* out, int out_ld, const float* src, int rows, int cols, int ld,
                                 cudaStream_t stream);
// out[t, :] = table[ids[t], :]; a bad id is recorded in *err (kErrEmbeddingId) and its row zeroed.
cudaError_t LaunchEmbedding(float* out, const float* table, const int32_t* ids, int tokens, int dim,
                            int vocab, DeviceError* err, cudaStream_t stream);
// cache[slots[t], 0:dim] = src[t, 0:dim]; slot −1 skipped; slot ≥ num_slots recorded (kErrCacheSlot).
cudaError_t LaunchCacheWrite(float* cache, const float* src, const int32_t* slots, int tokens, int dim,
                             int cache_stride, int src_stride, int64_t num_slots, DeviceError* err,
                             cudaStream_t stream);
// The same into a BF16 cache (uint16 bit patterns; round to nearest even).
cudaError_t LaunchCacheWriteBf16(uint16_t* cache, const float* src, const int32_t* slots, int tokens, int dim,
                                 int cache_stride, int src_stride, int64_t num_slots, DeviceError* err,
                                 cudaStream_t stream);
// out[i, :] = in[rows[i], :] (rows[i] < 0: recorded as kErrRow, out row zeroed).
cudaError_t LaunchGatherRows(float* out, const float* in, const int32_t* rows, int count, int dim,
                             DeviceError* err, cudaStream_t stream);
// out[rows[i], :] += scale[i] · in[i, :] (rows[i] < 0: recorded, skipped). Atomic adds: the order
// of the contributions to one row is not fixed, so results may differ in the last bits between runs.
cudaError_t LaunchScatterAddRows(float* out, const float* in, const int32_t* rows, const float* scale,
                                 int count, int dim, DeviceError* err, cudaStream_t stream);

// ---- norm.cu ----
// layer_norm: (x − mean)·rsqrt(var + eps)·w + b; else x·rsqrt(mean(x²) + eps)·w. w/b may be null.
cudaError_t LaunchNorm(float* out, const float* in, const float* weight, const float* bias, int rows,
                       int dim, int in_stride, int out_stride, float eps, bool layer_norm,
                       cudaStream_t stream);

// ---- rope.cu ----
cudaError_t LaunchRope(float* x, const int32_t* positions, const float* inv_freq, int tokens, int heads,
                       int token_stride, int head_stride, int rot_offset, int rot_dim,
                       float attention_scaling, bool interleaved, cudaStream_t stream);

// ---- attention.cu ----
struct AttentionParams {
  float* out;
  float* lse;    // may be null
  float* probs;  // may be null (sparse only)
  const float* q;
  const float* k_cache;
  const float* v_cache;
  const uint16_t* k16;  // BF16 caches instead of k_cache / v_cache (AttentionArgs::k_cache_bf16); else null
  const uint16_t* v16;
  int q_stride, k_stride, v_stride;
  int q_heads, kv_heads, qk_dim, v_dim;
  int64_t num_slots;
  float scale;
  DevLayout layout;
  const int32_t* topk;  // null: dense causal
  int topk_k;
  bool bf16;            // AttentionArgs::precision kBF16: tensor cores where AttentionUsesTensorCores
};
// Whether LaunchAttention runs the BF16 tensor-core sparse MLA kernel for these parameters, and the
// split-K count to use with it.
bool AttentionUsesTensorCores(const AttentionParams& p);
int AttentionSplitsTc(int tokens, int topk_k);
// Dynamic shared memory the attention kernel needs (bytes) for these dims.
size_t AttentionSharedBytes(int qk_dim, int v_dim);
// Split-K over the key list: how many splits to use (1 when there is enough parallelism without), and
// the workspace the partial states need (0 for one split).
int AttentionSplits(int tokens, int q_heads, int kv_heads, int max_keys);
size_t AttentionPartialBytes(int tokens, int q_heads, int v_dim, int splits);
// `lse_ws`: [tokens, q_heads] floats, used when probs is wanted and lse is null; `part_ws`:
// AttentionPartialBytes(…) when splits > 1.
cudaError_t LaunchAttention(const AttentionParams& p, float* lse_ws, float* part_ws, int splits,
                            DeviceError* err, cudaStream_t stream);

// ---- topk.cu ----
// Row top-k, DESIGN.md §3 rule. Row r has length lengths[r] (if lengths) or positions[r] + 1, clamped
// to `max_len`; out[r, :] = the selected positions in ascending order, then −1. A length outside
// [0, max_len] is recorded (kErrLength) when `err` is set. Few long rows (≤ 64 rows, max_len ≥ 32K) run
// split over several blocks per row when `scratch` holds RowTopkScratchBytes(rows, max_len) bytes (else
// one block per row, the same result).
size_t RowTopkScratchBytes(int rows, int max_len);
cudaError_t LaunchRowTopk(int32_t* out, const float* scores, int64_t stride, const int32_t* lengths,
                          const int32_t* positions, int rows, int max_len, int k, DeviceError* err,
                          cudaStream_t stream, void* scratch = nullptr, size_t scratch_bytes = 0);

// ---- indexer.cu ----
struct IndexerParams {
  const float* q;        // [tokens, heads, head_dim]
  const float* w;        // [tokens, heads]
  const float* k_cache;  // [num_slots, k_stride]
  int k_stride;
  int64_t num_slots;
  int heads, head_dim, k;
  DevLayout layout;
  bool bf16;             // Precision::kBF16: q and k rounded to BF16, tensor cores where supported
  const uint16_t* k_bf16;  // a BF16 index-K cache instead of k_cache (nullptr: k_cache)
  const uint8_t* k_fp8;    // an FP8 E4M3 index-K cache (Precision::kFP8) …
  const float* k_scale;    // … and its per-slot scales
};
size_t IndexerSharedBytes(int heads, int head_dim);
// The FP8 kernel's shapes: 8/16/32/64 heads × 64/128, a k_stride that is a multiple of 16 bytes and a
// 16-byte aligned cache.
bool IndexerFp8Supported(int heads, int head_dim, int k_stride, const void* k_fp8);
// x[r] ← H·x[r] / √dim for rows r < rows (dim a power of two ≤ 1024; Backend::Hadamard).
cudaError_t LaunchHadamard(float* x, int rows, int dim, int stride, cudaStream_t stream);
// The FP8 cache write: per token, scale = amax / 448 (1 for an all-zero row), E4M3 of x / scale.
cudaError_t LaunchCacheWriteFp8(uint8_t* cache, float* scale, const float* src, const int32_t* slots, int tokens,
                                int dim, int cache_stride, int src_stride, int64_t num_slots, DeviceError* err,
                                cudaStream_t stream);
// Scores of tokens [t0, t0 + rows) into ws[(t − t0), s] for s ≤ min(pos(t), max_len − 1) (row stride
// max_len). Rows with pos + 1 ≤ k are skipped unless `all_rows`.
cudaError_t LaunchIndexerScores(float* ws, const IndexerParams& p, int t0, int rows, int max_len,
                                bool all_rows, DeviceError* err, cudaStream_t stream);
// scores[t, s] = ws[t − t0, s] for s ≤ pos(t) (and s < max_len), −inf after, for s < scores_stride.
cudaError_t LaunchIndexerCopyScores(float* scores, int scores_stride, const float* ws, int max_len,
                                    const int32_t* token_pos, int t0, int rows, cudaStream_t stream);

// ---- gemv.cu ----
// C[m, n] = alpha · bf16(A)[m, k] · Bᵀ + beta · C (beta 0: C not read) for m ≤ kGemvBf16MaxRows, B an
// [n, k] BF16 weight with row stride ldb: GemmArgs::b_bf16's arithmetic for decode-sized m in one launch.
constexpr int kGemvBf16MaxRows = 8;
cudaError_t LaunchGemvBf16(float* c, const float* a, const uint16_t* b, int m, int n, int k, int lda, int ldb,
                           int ldc, float alpha, float beta, cudaStream_t stream);

// The same for block-scaled FP8 weights (GemmArgs::b_fp8's arithmetic, A quantised per 128-column block in
// the kernel), m ≤ kGemvBf16MaxRows; GemvFp8Supported: the 16-byte alignment it needs.
bool GemvFp8Supported(const float* a, const uint8_t* b, int k, int lda, int ldb);
cudaError_t LaunchGemvFp8(float* c, const float* a, const uint8_t* b, const float* b_scale, int scale_ld, int m,
                          int n, int k, int lda, int ldb, int ldc, float alpha, float beta, cudaStream_t stream);

// ---- moe.cu ----
cudaError_t LaunchMoeRoute(int32_t* expert_ids, float* expert_weights, const float* logits,
                           const float* bias, int tokens, int experts, int top_k, int n_group,
                           int topk_group, bool norm_topk_prob, float routed_scaling_factor,
                           cudaStream_t stream);
// MoeExpertsArgs (backend.h), `act` a [tokens · (top_k + 1), inter] F32 workspace (the + 1: a shared
// expert), with FP8 weights followed by [tokens, hidden] more (x rounded to its FP8 blocks). A bad expert id
// is recorded in *err (kErrExpert) and that token's output left unchanged.
cudaError_t LaunchMoeExperts(float* out, float* act, const float* x, const int32_t* expert_ids,
                             const float* expert_weights, const void* const* weights, const void* shared_gate,
                             const void* shared_up, const void* shared_down, const float* const* shared_scales,
                             bool bf16, bool fp8, int tokens, int hidden, int inter, int top_k, int experts,
                             DeviceError* err, cudaStream_t stream);

// ---- cross_entropy.cu ----
cudaError_t LaunchCrossEntropy(float* loss, const float* logits, const int32_t* targets, int tokens,
                               int vocab, int stride, DeviceError* err, cudaStream_t stream);

// ---- distill.cu ----
// Backend::IndexerDistill (IndexerDistillArgs, backend.h); grad_q == nullptr: kl only. `scratch` holds
// IndexerDistillScratchBytes(T, H, d) bytes; the gradient kernels need IndexerDistillSharedBytes(d) of
// dynamic shared memory (ConfigureDistillKernels).
size_t IndexerDistillScratchBytes(int T, int H, int d);
size_t IndexerDistillSharedBytes(int d);
cudaError_t LaunchIndexerDistill(float* kl, float* grad_q, float* grad_k, float* grad_w, const float* q,
                                 const float* k, const float* w, const float* p, int T, int H, int d, float* scratch,
                                 cudaStream_t stream);

// Raise the dynamic shared-memory limit of the tile-staging kernels to `bytes` (the device's opt-in
// maximum, read once at backend creation).
cudaError_t ConfigureAttentionKernels(size_t bytes);
cudaError_t ConfigureIndexerKernels(size_t bytes);
cudaError_t ConfigureDistillKernels(size_t bytes);

}  // namespace ic::kernels::cuda
