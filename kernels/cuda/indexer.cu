// Lightning-indexer scores over the paged index-K cache (DeepSeek-V3.2 report, eq. 1):
//   I[t, s] = Σ_j w[t, j] · ReLU(q[t, j] · k[s]),  s ≤ pos(t).
// The backend processes query tiles: this kernel fills a [rows, max_len] slice of a workspace, and
// RowTopk (topk.cu) selects from it, so the L×L score matrix is never materialised whole.
//
// Block (kKeys threads) = one query token × kKeys consecutive keys; q[t] (heads × head_dim) and the keys
// are staged in shared memory and each thread owns one key. Two variants, same arithmetic order (the
// dot product runs over d in order with fmaf; heads are summed in ascending order):
//   * IndexerScoresFast<H> (H ∈ {16, 32, 64}, head_dim % 4 == 0, 16-byte aligned rows): keys stored
//     [key, head_dim + 4] (the pad makes the per-thread float4 reads conflict-free), all H dot products
//     accumulate in registers, q read as broadcast float4 → 4 FMAs per shared load;
//   * IndexerScoresKernel (any shape): keys transposed [head_dim, kKeys + 1], 4 heads at a time.
// BF16 (Precision::kBF16; backend.h):
//   * IndexerScoresTc<H, D, QPB> (H ∈ {8, 16, 32, 64}, D ∈ {64, 128}, 16-byte aligned key rows): tensor
//     cores (mma.sync m16n8k16, BF16 in, F32 accumulate). See the kernel's comment.
//   * any other shape: IndexerScoresKernel with q and k rounded to BF16 as they are staged.
// FP8 (Precision::kFP8): IndexerScoresFp8<H, D, QPB>, the same structure with mma.sync m16n8k32 E4M3 over
// the FP8 index-K cache; q quantised per (token, head) in registers; 8/16/32/64 heads × 64/128 only.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_pipeline.h>

#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace ic::kernels::cuda {
namespace {

constexpr int kKeys = 128;

__global__ void __launch_bounds__(kKeys) IndexerScoresKernel(float* ws, IndexerParams p, int t0,
                                                             int max_len, bool all_rows,
                                                             DeviceError* err) {
  extern __shared__ int64_t smem_i64[];
  const int H = p.heads, D = p.head_dim;
  int64_t* slots = smem_i64;                            // [kKeys]
  float* qs = reinterpret_cast<float*>(slots + kKeys);  // [H, D]
  float* ks = qs + H * D;                               // [D, kKeys + 1]
  const int row = blockIdx.y;
  const int t = t0 + row;
  const int pos = p.layout.token_pos[t];
  if (pos < 0 || pos + 1 > max_len) {
    if (blockIdx.x == 0 && threadIdx.x == 0) RecordError(err, kErrPosition, t, pos, max_len);
  }
  const int len = pos + 1 < max_len ? pos + 1 : max_len;
  if (!all_rows && pos + 1 <= p.k) return;
  const int s0 = blockIdx.x * kKeys;
  if (s0 >= len) return;
  const int nk = len - s0 < kKeys ? len - s0 : kKeys;
  const int seq = p.layout.token_seq[t];

  const float* qt = p.q + static_cast<int64_t>(t) * H * D;
  for (int i = threadIdx.x; i < H * D; i += kKeys) qs[i] = p.bf16 ? RoundBf16(qt[i]) : qt[i];
  if (threadIdx.x < nk) {
    slots[threadIdx.x] = CacheSlot(p.layout, seq, s0 + threadIdx.x, p.num_slots, t, err);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nk * D; i += kKeys) {
    const int key = i / D, d = i % D;
    const int64_t slot = slots[key];
    float kv = 0.0f;
    if (slot >= 0) {
      kv = p.k_bf16 != nullptr ? __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(p.k_bf16)[slot * p.k_stride + d])
                               : p.k_cache[slot * p.k_stride + d];
    }
    ks[d * (kKeys + 1) + key] = p.bf16 ? RoundBf16(kv) : kv;
  }
  __syncthreads();
  if (threadIdx.x >= nk) return;

  const float* wt = p.w + static_cast<int64_t>(t) * H;
  const float* kcol = ks + threadIdx.x;
  float score = 0.0f;
  int j = 0;
  for (; j + 4 <= H; j += 4) {
    const float* q0 = qs + j * D;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma unroll 4
    for (int d = 0; d < D; ++d) {
      const float kv = kcol[d * (kKeys + 1)];
      a0 = fmaf(q0[d], kv, a0);
      a1 = fmaf(q0[D + d], kv, a1);
      a2 = fmaf(q0[2 * D + d], kv, a2);
      a3 = fmaf(q0[3 * D + d], kv, a3);
    }
    score += wt[j] * fmaxf(a0, 0.f);
    score += wt[j + 1] * fmaxf(a1, 0.f);
    score += wt[j + 2] * fmaxf(a2, 0.f);
    score += wt[j + 3] * fmaxf(a3, 0.f);
  }
  for (; j < H; ++j) {
    const float* q0 = qs + j * D;
    float a0 = 0.f;
    for (int d = 0; d < D; ++d) a0 = fmaf(q0[d], kcol[d * (kKeys + 1)], a0);
    score += wt[j] * fmaxf(a0, 0.f);
  }
  ws[static_cast<int64_t>(row) * max_len + s0 + threadIdx.x] = score;
}

template <int H>
__global__ void __launch_bounds__(kKeys) IndexerScoresFast(float* ws, IndexerParams p, int t0, int max_len,
                                                           bool all_rows, DeviceError* err) {
  extern __shared__ int64_t smem_i64[];
  const int D = p.head_dim, D4 = p.head_dim / 4, KS = p.head_dim + 4;
  int64_t* slots = smem_i64;                            // [kKeys]
  float* qs = reinterpret_cast<float*>(slots + kKeys);  // [H, D]
  float* ks = qs + H * D;                               // [kKeys, D + 4]
  const int row = blockIdx.y;
  const int t = t0 + row;
  const int pos = p.layout.token_pos[t];
  if (pos < 0 || pos + 1 > max_len) {
    if (blockIdx.x == 0 && threadIdx.x == 0) RecordError(err, kErrPosition, t, pos, max_len);
  }
  const int len = pos + 1 < max_len ? pos + 1 : max_len;
  if (!all_rows && pos + 1 <= p.k) return;
  const int s0 = blockIdx.x * kKeys;
  if (s0 >= len) return;
  const int nk = len - s0 < kKeys ? len - s0 : kKeys;
  const int seq = p.layout.token_seq[t];

  const float4* qt = reinterpret_cast<const float4*>(p.q + static_cast<int64_t>(t) * H * D);
  for (int i = threadIdx.x; i < H * D4; i += kKeys) reinterpret_cast<float4*>(qs)[i] = qt[i];
  if (threadIdx.x < nk) {
    slots[threadIdx.x] = CacheSlot(p.layout, seq, s0 + threadIdx.x, p.num_slots, t, err);
  }
  __syncthreads();
  // Asynchronous 16-byte copies (cp.async): all of a thread's loads are in flight at once.
  for (int i = threadIdx.x; i < nk * D4; i += kKeys) {
    const int key = i / D4, d4 = i % D4;
    const int64_t slot = slots[key];
    float4* dst = reinterpret_cast<float4*>(ks + key * KS) + d4;
    if (slot < 0) {
      *dst = make_float4(0.f, 0.f, 0.f, 0.f);
    } else {
      __pipeline_memcpy_async(dst, reinterpret_cast<const float4*>(p.k_cache + slot * p.k_stride) + d4, 16);
    }
  }
  __pipeline_commit();
  __pipeline_wait_prior(0);
  __syncthreads();
  if (threadIdx.x >= nk) return;

  float acc[H];
#pragma unroll
  for (int j = 0; j < H; ++j) acc[j] = 0.0f;
  const float4* kr = reinterpret_cast<const float4*>(ks + threadIdx.x * KS);
  const float4* q4 = reinterpret_cast<const float4*>(qs);
  for (int d4 = 0; d4 < D4; ++d4) {
    const float4 kv = kr[d4];
#pragma unroll
    for (int j = 0; j < H; ++j) {
      const float4 qv = q4[j * D4 + d4];
      acc[j] = fmaf(qv.x, kv.x, acc[j]);
      acc[j] = fmaf(qv.y, kv.y, acc[j]);
      acc[j] = fmaf(qv.z, kv.z, acc[j]);
      acc[j] = fmaf(qv.w, kv.w, acc[j]);
    }
  }
  const float* wt = p.w + static_cast<int64_t>(t) * H;
  float score = 0.0f;
#pragma unroll
  for (int j = 0; j < H; ++j) score += wt[j] * fmaxf(acc[j], 0.f);
  ws[static_cast<int64_t>(row) * max_len + s0 + threadIdx.x] = score;
}

// ---- BF16 tensor-core scores ------------------------------------------------------------------------
//
// A block of 8 warps stages a tile of kTcKeys keys of one sequence in shared memory as BF16 (rows padded
// by 8 elements: the ldmatrix reads are conflict-free) and computes, per warp, the logits of one query
// token against them as C = K_tile · qᵀ ([keys, heads], mma.sync m16n8k16: A = 16 keys × 16 dims from
// ldmatrix, B = 16 dims × 8 heads from registers — the warp's query stays in registers for the whole
// key range). The epilogue applies ReLU, the head weights and the sum over heads in registers: a thread
// holds two heads of each 8-head tile for two keys, sums its heads in ascending order, then two shuffles
// add the four threads of a key (fixed order: the scores are deterministic).
//   QPB = 8: eight query tokens per block, each warp a query and all key rows (prefill tiles);
//   QPB = 1: one query per block, the eight warps split the tile's 16-key rows (decode rows).
// Queries of a block that belong to different sequences (a batch boundary) are served one sequence at a
// time. Keys beyond a query's position are computed (a tile is shared) but never written.
constexpr int kTcWarps = 8;
constexpr int kTcKeys = 128;  // keys per shared-memory tile (8 rows of 16)

// The block's QPB query rows t0 + blockIdx.y·QPB + i into shared memory (every thread waits): the
// sequence (−1: not scored — beyond `rows`, a short row when !all_rows, or a position error, recorded)
// and the number of keys, pos + 1.
template <int QPB>
__device__ inline void LoadQueryRows(const IndexerParams& p, int t0, int rows, int max_len, bool all_rows,
                                     DeviceError* err, int* q_seq, int* q_len) {
  if (threadIdx.x < QPB) {
    const int r = blockIdx.y * QPB + threadIdx.x;
    int seq = -1, len = 0;
    if (r < rows) {
      const int t = t0 + r;
      const int pos = p.layout.token_pos[t];
      if (pos < 0 || pos + 1 > max_len) {
        if (blockIdx.x == 0) RecordError(err, kErrPosition, t, pos, max_len);
      } else if (all_rows || pos + 1 > p.k) {
        seq = p.layout.token_seq[t];
        len = pos + 1;
      }
    }
    q_seq[threadIdx.x] = seq;
    q_len[threadIdx.x] = len;
  }
  __syncthreads();
}

// The sequence the block serves in round `first` of its query rows: q_seq[first], or −1 when that row is
// not scored or its sequence was served in an earlier round; *seq_len = the most keys a row of it needs.
// (A block's rows straddle two sequences only at a batch boundary.)
template <int QPB>
__device__ inline int BlockSequence(int first, const int* q_seq, const int* q_len, int* seq_len) {
  const int seq = q_seq[first];
  bool seen = seq < 0;
  int len = 0;
  for (int j = 0; j < QPB; ++j) {
    if (j < first && q_seq[j] == seq) seen = true;
    if (q_seq[j] == seq) len = max(len, q_len[j]);
  }
  *seq_len = len;
  return seen ? -1 : seq;
}

// The scores of keys g and g + 8 of a 16-key accumulator tile ([8·NH heads] per key; the thread holds heads
// 8n + 2t, 8n + 2t + 1): Σ_heads w · ReLU(logit), the thread's heads in ascending order, then its quad
// (xor 1, xor 2) — a fixed order, so the scores are deterministic. Every lane gets the sums.
template <int NH>
__device__ inline void HeadSum(const float (&acc)[NH][4], const float (&wv)[NH][2], float* lo_out, float* hi_out) {
  float lo = 0.f, hi = 0.f;
#pragma unroll
  for (int n = 0; n < NH; ++n) {
    lo += wv[n][0] * fmaxf(acc[n][0], 0.f) + wv[n][1] * fmaxf(acc[n][1], 0.f);
    hi += wv[n][0] * fmaxf(acc[n][2], 0.f) + wv[n][1] * fmaxf(acc[n][3], 0.f);
  }
  lo += __shfl_xor_sync(0xffffffffu, lo, 1);
  hi += __shfl_xor_sync(0xffffffffu, hi, 1);
  lo += __shfl_xor_sync(0xffffffffu, lo, 2);
  hi += __shfl_xor_sync(0xffffffffu, hi, 2);
  *lo_out = lo;
  *hi_out = hi;
}


// KBF16: the index-K cache is BF16 (p.k_bf16): tiles are copied with cp.async, 16 bytes at a time;
// otherwise F32 keys are loaded as float4 and rounded to BF16 on the way into shared memory.
template <int H, int D, int QPB, bool KBF16>
__global__ void __launch_bounds__(kTcWarps * 32) IndexerScoresTc(float* ws, IndexerParams p, int t0, int rows,
                                                                 int max_len, int keys_per_block, bool all_rows,
                                                                 DeviceError* err) {
  constexpr int DS = D + 8;          // BF16 row stride of the key tile
  constexpr int NH = H / 8;          // 8-head tiles (mma N)
  constexpr int KS = D / 16;         // 16-dim steps (mma K)
  constexpr int WPQ = kTcWarps / QPB;  // warps per query
  __shared__ __align__(16) __nv_bfloat16 ks[kTcKeys * DS];
  __shared__ int64_t slots[kTcKeys];
  __shared__ int q_seq[QPB], q_len[QPB];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int qi = warp % QPB;
  const int row = blockIdx.y * QPB + qi;
  LoadQueryRows<QPB>(p, t0, rows, max_len, all_rows, err, q_seq, q_len);
  const int s_begin = blockIdx.x * keys_per_block;
  const int s_stop = min(s_begin + keys_per_block, max_len);

  // The warp's query in registers as mma B fragments (b0: dims 2c, 2c+1; b1: dims 2c+8, 2c+9; head g of
  // each 8-head tile), and the weights of the two heads per tile this thread's accumulators hold.
  uint32_t qb[NH][KS][2];
  float wv[NH][2];
  const bool have_row = row < rows && q_seq[qi] >= 0;
  if (have_row) {
    const int t = t0 + row;
    const float* qt = p.q + static_cast<int64_t>(t) * H * D;
#pragma unroll
    for (int n = 0; n < NH; ++n) {
      const float* qh = qt + (n * 8 + g) * D;
#pragma unroll
      for (int k = 0; k < KS; ++k) {
        qb[n][k][0] = PackBf16(qh[k * 16 + 2 * c], qh[k * 16 + 2 * c + 1]);
        qb[n][k][1] = PackBf16(qh[k * 16 + 2 * c + 8], qh[k * 16 + 2 * c + 9]);
      }
      wv[n][0] = p.w[static_cast<int64_t>(t) * H + n * 8 + 2 * c];
      wv[n][1] = p.w[static_cast<int64_t>(t) * H + n * 8 + 2 * c + 1];
    }
  }
  float* out_row = ws + static_cast<int64_t>(row) * max_len;

  for (int first = 0; first < QPB; ++first) {
    int seq_len = 0;
    const int seq = BlockSequence<QPB>(first, q_seq, q_len, &seq_len);
    if (seq < 0) continue;  // block-uniform: every thread reads the same shared values  // block-uniform: every thread reads the same shared values
    const bool mine = have_row && q_seq[qi] == seq;
    const int my_len = mine ? q_len[qi] : 0;
    const int stop = min(s_stop, seq_len);
    for (int s0 = s_begin; s0 < stop; s0 += kTcKeys) {
      __syncthreads();  // the previous tile has been read
      if (threadIdx.x < kTcKeys) {
        const int s = s0 + threadIdx.x;
        slots[threadIdx.x] = s < stop ? CacheSlot(p.layout, seq, s, p.num_slots, t0 + blockIdx.y * QPB + first, err)
                                      : -1;
      }
      __syncthreads();
      if constexpr (KBF16) {
        StageRowsAsync<kTcKeys, 2 * D, kTcWarps * 32>(ks, 2 * DS, p.k_bf16, 2 * static_cast<int64_t>(p.k_stride),
                                                      slots);
      } else {
        StageRowsF32AsBf16<kTcKeys, D, kTcWarps * 32>(ks, DS, p.k_cache, p.k_stride, slots);
      }
      __syncthreads();
      if (!mine || s0 >= my_len) continue;
      for (int mt = warp / QPB; mt < kTcKeys / 16; mt += WPQ) {
        if (s0 + mt * 16 >= my_len) break;
        float acc[NH][4];
#pragma unroll
        for (int n = 0; n < NH; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
        const __nv_bfloat16* a_base = ks + (mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * DS + (lane >> 4) * 8;
#pragma unroll
        for (int k = 0; k < KS; ++k) {
          uint32_t a[4];
          LdMatrixX4(a, a_base + k * 16);
#pragma unroll
          for (int n = 0; n < NH; ++n) MmaBf16(acc[n], a, qb[n][k][0], qb[n][k][1]);
        }
        // acc[n][0..1]: key g, heads 8n + 2c, 8n + 2c + 1; acc[n][2..3]: key g + 8, the same heads.
        float lo, hi;
        HeadSum<NH>(acc, wv, &lo, &hi);
        if (c == 0) {
          const int s_lo = s0 + mt * 16 + g, s_hi = s_lo + 8;
          if (s_lo < my_len) out_row[s_lo] = lo;
          if (s_hi < my_len) out_row[s_hi] = hi;
        }
      }
    }
  }
}

// FP8: keys arrive as E4M3 bytes with a per-key scale (cp.async, 16 bytes at a time); the warp's query is
// quantised per head (scale amax / 448; the four threads of a quad hold one head's dims) into mma B
// fragments; C = K_tile·qᵀ with mma.sync m16n8k32 (A by ldmatrix on byte rows); the epilogue folds the
// query scales into the head weights and multiplies each key's sum by its scale.
template <int H, int D, int QPB>
__global__ void __launch_bounds__(kTcWarps * 32) IndexerScoresFp8(float* ws, IndexerParams p, int t0, int rows,
                                                                  int max_len, int keys_per_block, bool all_rows,
                                                                  DeviceError* err) {
  constexpr int DS = D + 16;  // byte row stride of the key tile
  constexpr int NH = H / 8;
  constexpr int KS = D / 32;
  constexpr int WPQ = kTcWarps / QPB;
  __shared__ __align__(16) uint8_t ks[kTcKeys * DS];
  __shared__ int64_t slots[kTcKeys];
  __shared__ float kscale[kTcKeys];
  __shared__ int q_seq[QPB], q_len[QPB];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int qi = warp % QPB;
  const int row = blockIdx.y * QPB + qi;
  LoadQueryRows<QPB>(p, t0, rows, max_len, all_rows, err, q_seq, q_len);
  const int s_begin = blockIdx.x * keys_per_block;
  const int s_stop = min(s_begin + keys_per_block, max_len);

  uint32_t qb[NH][KS][2];
  float wv[NH][2];
  const bool have_row = row < rows && q_seq[qi] >= 0;
  if (have_row) {
    const int t = t0 + row;
    const float* qt = p.q + static_cast<int64_t>(t) * H * D;
#pragma unroll
    for (int n = 0; n < NH; ++n) {
      const float* qh = qt + (n * 8 + g) * D;
      float amax = 0.f;
#pragma unroll
      for (int k = 0; k < KS; ++k) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          amax = fmaxf(amax, fabsf(qh[k * 32 + 4 * c + e]));
          amax = fmaxf(amax, fabsf(qh[k * 32 + 16 + 4 * c + e]));
        }
      }
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
      const float sq = Fp8Scale(amax);  // this thread's head 8n + g
      const float inv = 1.0f / sq;      // exact: a power of two
#pragma unroll
      for (int k = 0; k < KS; ++k) {
        const float* b = qh + k * 32 + 4 * c;
        qb[n][k][0] = PackFp8x4(b[0] * inv, b[1] * inv, b[2] * inv, b[3] * inv);
        qb[n][k][1] = PackFp8x4(b[16] * inv, b[17] * inv, b[18] * inv, b[19] * inv);
      }
      // The accumulators hold heads 8n + 2c and 8n + 2c + 1: their scales live in quads 2c and 2c + 1.
      const float sq0 = __shfl_sync(0xffffffffu, sq, (2 * c) * 4);
      const float sq1 = __shfl_sync(0xffffffffu, sq, (2 * c + 1) * 4);
      wv[n][0] = p.w[static_cast<int64_t>(t) * H + n * 8 + 2 * c] * sq0;
      wv[n][1] = p.w[static_cast<int64_t>(t) * H + n * 8 + 2 * c + 1] * sq1;
    }
  }
  float* out_row = ws + static_cast<int64_t>(row) * max_len;

  for (int first = 0; first < QPB; ++first) {
    int seq_len = 0;
    const int seq = BlockSequence<QPB>(first, q_seq, q_len, &seq_len);
    if (seq < 0) continue;  // block-uniform: every thread reads the same shared values
    const bool mine = have_row && q_seq[qi] == seq;
    const int my_len = mine ? q_len[qi] : 0;
    const int stop = min(s_stop, seq_len);
    for (int s0 = s_begin; s0 < stop; s0 += kTcKeys) {
      __syncthreads();
      if (threadIdx.x < kTcKeys) {
        const int s = s0 + threadIdx.x;
        const int64_t slot =
            s < stop ? CacheSlot(p.layout, seq, s, p.num_slots, t0 + blockIdx.y * QPB + first, err) : -1;
        slots[threadIdx.x] = slot;
        kscale[threadIdx.x] = slot >= 0 ? p.k_scale[slot] : 0.f;
      }
      __syncthreads();
      StageRowsAsync<kTcKeys, D, kTcWarps * 32>(ks, DS, p.k_fp8, p.k_stride, slots);
      __syncthreads();
      if (!mine || s0 >= my_len) continue;
      for (int mt = warp / QPB; mt < kTcKeys / 16; mt += WPQ) {
        if (s0 + mt * 16 >= my_len) break;
        float acc[NH][4];
#pragma unroll
        for (int n = 0; n < NH; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
        const uint8_t* a_base = ks + (mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * DS + (lane >> 4) * 16;
#pragma unroll
        for (int k = 0; k < KS; ++k) {
          uint32_t a[4];
          LdMatrixX4(a, a_base + k * 32);
#pragma unroll
          for (int n = 0; n < NH; ++n) MmaFp8(acc[n], a, qb[n][k][0], qb[n][k][1]);
        }
        float lo, hi;
        HeadSum<NH>(acc, wv, &lo, &hi);
        if (c == 0) {
          const int s_lo = s0 + mt * 16 + g, s_hi = s_lo + 8;
          if (s_lo < my_len) out_row[s_lo] = lo * kscale[mt * 16 + g];
          if (s_hi < my_len) out_row[s_hi] = hi * kscale[mt * 16 + g + 8];
        }
      }
    }
  }
}

// Calls launch(H, D, QPB, grid, keys_per_block) with the tensor-core kernels' compile-time shape (H ∈ {8, 16,
// 32, 64} heads, D ∈ {64, 128}; as std::integral_constant) and grid: prefill tiles (rows ≥ 8) put 8 queries
// in a block sharing each key tile, 8 tiles per block; decode rows one query per block, 2 tiles per block.
template <int V>
using Int = std::integral_constant<int, V>;
template <class Launch>
cudaError_t LaunchTcShape(const IndexerParams& p, int rows, int max_len, Launch launch) {
  const bool prefill = rows >= 8;
  const int kpb = (prefill ? 8 : 2) * kTcKeys;
  const dim3 grid((max_len + kpb - 1) / kpb, prefill ? (rows + 7) / 8 : rows);
  auto with_qpb = [&](auto h, auto d) {
    return prefill ? launch(h, d, Int<8>{}, grid, kpb) : launch(h, d, Int<1>{}, grid, kpb);
  };
  auto with_d = [&](auto h) { return p.head_dim == 64 ? with_qpb(h, Int<64>{}) : with_qpb(h, Int<128>{}); };
  switch (p.heads) {
    case 8: return with_d(Int<8>{});
    case 16: return with_d(Int<16>{});
    case 32: return with_d(Int<32>{});
    default: return with_d(Int<64>{});
  }
}

size_t FastSharedBytes(int heads, int head_dim) {
  return sizeof(int64_t) * kKeys +
         sizeof(float) * (static_cast<size_t>(heads) * head_dim + static_cast<size_t>(kKeys) * (head_dim + 4));
}

size_t g_max_shared = 48 << 10;  // set by ConfigureIndexerKernels

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

__global__ void IndexerCopyScoresKernel(float* scores, int scores_stride, const float* ws, int max_len,
                                        const int32_t* token_pos, int t0) {
  const int row = blockIdx.y;
  const int t = t0 + row;
  const int pos = token_pos[t];
  for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < scores_stride; s += gridDim.x * blockDim.x) {
    scores[static_cast<int64_t>(t) * scores_stride + s] =
        (s <= pos && s < max_len) ? ws[static_cast<int64_t>(row) * max_len + s] : -INFINITY;
  }
}

}  // namespace

size_t IndexerSharedBytes(int heads, int head_dim) {
  return sizeof(float) * (static_cast<size_t>(heads) * head_dim +
                          static_cast<size_t>(head_dim) * (kKeys + 1)) +
         sizeof(int64_t) * kKeys;
}

cudaError_t ConfigureIndexerKernels(size_t bytes) {
  g_max_shared = bytes;
  const int b = static_cast<int>(bytes);
  cudaError_t e = cudaFuncSetAttribute(IndexerScoresKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
  if (e == cudaSuccess) e = cudaFuncSetAttribute(IndexerScoresFast<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
  if (e == cudaSuccess) e = cudaFuncSetAttribute(IndexerScoresFast<32>, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
  if (e == cudaSuccess) e = cudaFuncSetAttribute(IndexerScoresFast<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
  return e;
}

cudaError_t LaunchIndexerScores(float* ws, const IndexerParams& p, int t0, int rows, int max_len,
                                bool all_rows, DeviceError* err, cudaStream_t stream) {
  if (rows == 0 || max_len == 0) return cudaSuccess;
  if (p.k_fp8 != nullptr) {  // shapes checked by the backend (IndexerFp8Supported)
    return LaunchTcShape(p, rows, max_len, [&](auto h, auto d, auto qpb, dim3 grid, int kpb) {
      IndexerScoresFp8<decltype(h)::value, decltype(d)::value, decltype(qpb)::value>
          <<<grid, kTcWarps * 32, 0, stream>>>(ws, p, t0, rows, max_len, kpb, all_rows, err);
      return cudaGetLastError();
    });
  }
  if (p.bf16) {
    const bool aligned = p.k_bf16 != nullptr ? p.k_stride % 8 == 0 && Aligned16(p.k_bf16)
                                             : p.k_stride % 4 == 0 && Aligned16(p.k_cache);
    const bool tc_shape = (p.heads == 8 || p.heads == 16 || p.heads == 32 || p.heads == 64) &&
                          (p.head_dim == 64 || p.head_dim == 128) && aligned;
    if (tc_shape) {
      return LaunchTcShape(p, rows, max_len, [&](auto h, auto d, auto qpb, dim3 grid, int kpb) {
        if (p.k_bf16 != nullptr) {
          IndexerScoresTc<decltype(h)::value, decltype(d)::value, decltype(qpb)::value, true>
              <<<grid, kTcWarps * 32, 0, stream>>>(ws, p, t0, rows, max_len, kpb, all_rows, err);
        } else {
          IndexerScoresTc<decltype(h)::value, decltype(d)::value, decltype(qpb)::value, false>
              <<<grid, kTcWarps * 32, 0, stream>>>(ws, p, t0, rows, max_len, kpb, all_rows, err);
        }
        return cudaGetLastError();
      });
    }
    const dim3 grid((max_len + kKeys - 1) / kKeys, rows);
    IndexerScoresKernel<<<grid, kKeys, IndexerSharedBytes(p.heads, p.head_dim), stream>>>(
        ws, p, t0, max_len, all_rows, err);
    return cudaGetLastError();
  }
  const dim3 grid((max_len + kKeys - 1) / kKeys, rows);
  const bool fast_shape = p.head_dim % 4 == 0 && p.k_stride % 4 == 0 && Aligned16(p.q) &&
                          Aligned16(p.k_cache) && FastSharedBytes(p.heads, p.head_dim) <= g_max_shared;
  if (fast_shape && (p.heads == 16 || p.heads == 32 || p.heads == 64)) {
    const size_t smem = FastSharedBytes(p.heads, p.head_dim);
    switch (p.heads) {
      case 16:
        IndexerScoresFast<16><<<grid, kKeys, smem, stream>>>(ws, p, t0, max_len, all_rows, err);
        break;
      case 32:
        IndexerScoresFast<32><<<grid, kKeys, smem, stream>>>(ws, p, t0, max_len, all_rows, err);
        break;
      default:
        IndexerScoresFast<64><<<grid, kKeys, smem, stream>>>(ws, p, t0, max_len, all_rows, err);
        break;
    }
    return cudaGetLastError();
  }
  IndexerScoresKernel<<<grid, kKeys, IndexerSharedBytes(p.heads, p.head_dim), stream>>>(
      ws, p, t0, max_len, all_rows, err);
  return cudaGetLastError();
}

bool IndexerFp8Supported(int heads, int head_dim, int k_stride, const void* k_fp8) {
  return (heads == 8 || heads == 16 || heads == 32 || heads == 64) && (head_dim == 64 || head_dim == 128) &&
         k_stride % 16 == 0 && Aligned16(k_fp8);
}

cudaError_t LaunchIndexerCopyScores(float* scores, int scores_stride, const float* ws, int max_len,
                                    const int32_t* token_pos, int t0, int rows, cudaStream_t stream) {
  if (rows == 0 || scores_stride == 0) return cudaSuccess;
  const dim3 grid((scores_stride + 255) / 256 < 64 ? (scores_stride + 255) / 256 : 64, rows);
  IndexerCopyScoresKernel<<<grid, 256, 0, stream>>>(scores, scores_stride, ws, max_len, token_pos, t0);
  return cudaGetLastError();
}

}  // namespace ic::kernels::cuda
