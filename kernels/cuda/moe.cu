// DeepSeek-V3 MoE router (sigmoid scores, bias-corrected choice, group-limited top-k): one thread per
// token. Selection is repeated arg-max in the total order (value desc, index asc), so ties go to the
// smaller expert / group index and no per-expert scratch is needed. Experts come out in choice order.
#include <cuda_bf16.h>

#include "kernels/cuda/common.cuh"
#include "kernels/fp8_blocks.h"

namespace ic::kernels::cuda {
namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// True when (a, ia) comes before (b, ib) in the order value desc, index asc.
__device__ __forceinline__ bool Before(float a, int ia, float b, int ib) {
  return a > b || (a == b && ia < ib);
}

__global__ void MoeRouteKernel(int32_t* expert_ids, float* expert_weights, const float* logits,
                               const float* bias, int tokens, int experts, int top_k, int n_group,
                               int topk_group, bool norm, float scaling) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  const float* x = logits + static_cast<int64_t>(t) * experts;
  const int per_group = experts / n_group;
  auto choice = [&](int e) { return Sigmoid(x[e]) + (bias != nullptr ? bias[e] : 0.0f); };

  // Groups: score = sum of the top-2 choice values; keep the best topk_group (bitmask, n_group ≤ 64).
  uint64_t allowed = 0;
  if (n_group > 1) {
    float prev_v = INFINITY;
    int prev_i = -1;
    for (int pick = 0; pick < topk_group; ++pick) {
      float best_v = -INFINITY;
      int best_i = -1;
      for (int gi = 0; gi < n_group; ++gi) {
        float a = -INFINITY, b = -INFINITY;
        for (int e = gi * per_group; e < (gi + 1) * per_group; ++e) {
          const float c = choice(e);
          if (c > a) {
            b = a;
            a = c;
          } else if (c > b) {
            b = c;
          }
        }
        const float gs = per_group >= 2 ? a + b : a;
        const bool after_prev = prev_i < 0 || Before(prev_v, prev_i, gs, gi);
        if (after_prev && (best_i < 0 || Before(gs, gi, best_v, best_i))) {
          best_v = gs;
          best_i = gi;
        }
      }
      allowed |= 1ull << best_i;
      prev_v = best_v;
      prev_i = best_i;
    }
  } else {
    allowed = 1;
  }

  int32_t* ids = expert_ids + static_cast<int64_t>(t) * top_k;
  float* wts = expert_weights + static_cast<int64_t>(t) * top_k;
  float prev_v = INFINITY, sum = 0.0f;
  int prev_i = -1;
  for (int pick = 0; pick < top_k; ++pick) {
    float best_v = -INFINITY;
    int best_i = -1;
    for (int e = 0; e < experts; ++e) {
      if (!((allowed >> (n_group > 1 ? e / per_group : 0)) & 1ull)) continue;
      const float c = choice(e);
      const bool after_prev = prev_i < 0 || Before(prev_v, prev_i, c, e);
      if (after_prev && (best_i < 0 || Before(c, e, best_v, best_i))) {
        best_v = c;
        best_i = e;
      }
    }
    ids[pick] = best_i;
    const float s = best_i >= 0 ? Sigmoid(x[best_i]) : 0.0f;
    wts[pick] = s;
    sum += s;
    prev_v = best_v;
    prev_i = best_i;
  }
  const float f = norm ? scaling / (sum + 1e-20f) : scaling;
  for (int pick = 0; pick < top_k; ++pick) wts[pick] *= f;
}

}  // namespace

cudaError_t LaunchMoeRoute(int32_t* expert_ids, float* expert_weights, const float* logits,
                           const float* bias, int tokens, int experts, int top_k, int n_group,
                           int topk_group, bool norm_topk_prob, float routed_scaling_factor,
                           cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  MoeRouteKernel<<<(tokens + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
      expert_ids, expert_weights, logits, bias, tokens, experts, top_k, n_group, topk_group,
      norm_topk_prob, routed_scaling_factor);
  return cudaGetLastError();
}

namespace {

// ---- MoeExperts: a few tokens' routed experts as GEMVs over the chosen experts' weights ----
// Memory-bound (each chosen expert's rows read once per (token, j)); one warp per output row, lanes
// striding the reduction dimension (16-byte loads of 8 BF16 weights when rows are 16-byte aligned),
// a warp-shuffle sum. Kernel 1: act[pair, i] = SiLU(gate_e[i]·x) · (up_e[i]·x); kernel 2:
// out[t, c] += Σ_j w[t, j] · down_e[c]·act[pair] in j order, then the shared expert's down_s[c]·act (one
// writer per element: deterministic). Pairs: tokens · top_k routed (t · top_k + j), then one shared pair
// per token (tokens · top_k + t) when there is a shared expert. FP8 weights: x and then the SiLU products are
// first rounded to their FP8 blocks (two small launches), so that each weight row costs 16 bytes per lane
// per step and no conversions of the activations.

constexpr int kMoeWarps = 8, kMoeRowsPerWarp = 1;  // one row per warp: many blocks in flight for 1 token
constexpr int kMoeRowsPerBlock = kMoeWarps * kMoeRowsPerWarp;

__device__ __forceinline__ float Widen(float v) { return v; }
__device__ __forceinline__ float Widen(uint16_t b) { return Bf16BitsToFloat(b); }

// Σ_k in[k] · w[k] over n for one warp (lane-strided; `round`: in rounded to BF16 first).
template <typename W>
__device__ __forceinline__ float WarpDot(const float* in, const W* w, int n, bool round, bool vec) {
  float s = 0.0f;
  if constexpr (sizeof(W) == 2) {
    // 8 weights (16 bytes) per lane per step, when n is a multiple of 8 and both rows 16-byte aligned.
    if (vec && ((reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(in)) & 15) == 0) {
      const int lane = threadIdx.x % 32;
#pragma unroll 4
      for (int k = lane * 8; k < n; k += 32 * 8) {
        const uint4 packed = *reinterpret_cast<const uint4*>(w + k);
        const uint16_t* wv = reinterpret_cast<const uint16_t*>(&packed);
        const float4 a = *reinterpret_cast<const float4*>(in + k);
        const float4 b = *reinterpret_cast<const float4*>(in + k + 4);
        const float xs[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int q = 0; q < 8; ++q) s += (round ? RoundBf16(xs[q]) : xs[q]) * Widen(wv[q]);
      }
      return WarpSum(s);
    }
  }
  for (int k = threadIdx.x % 32; k < n; k += 32) {
    const float v = in[k];
    s += (round ? RoundBf16(v) : v) * Widen(w[k]);
  }
  return WarpSum(s);
}

// The FP8 form (MoeExpertsArgs::fp8): row r of an E4M3 matrix with `n` in-features and its 128 × 128 block
// scales (row stride ceil(n/128) rounded up to 4), against `in`, which the launcher has already rounded to
// its FP8 blocks (LaunchRoundFp8Blocks: e4m3(x / s) · s with s a power of two, so Σ in·w equals s · Σ q·w);
// rows and `in` 16-byte aligned (n % 16 == 0). 16 weight bytes per lane per step, a warp-shuffle sum.
__device__ __forceinline__ float WarpDotFp8(const float* in, const uint8_t* w, const float* scale, int64_t r, int n) {
  const int lane = threadIdx.x % 32;
  const float* s = scale + (r / kFp8Block) * Fp8ScaleLd(n);
  const uint8_t* row = w + r * n;
  float acc = 0.0f;
  for (int kk = lane * 16; kk < n; kk += 32 * 16) {
    float xs[16], wf[16];
    LoadF32x16(in + kk, xs);
    LoadFp8x16(row + kk, wf);
    float dot = 0.0f;
#pragma unroll
    for (int q = 0; q < 16; ++q) dot = fmaf(xs[q], wf[q], dot);
    acc = fmaf(dot, s[kk / 128], acc);
  }
  return WarpSum(acc);
}

// Row r of matrix `m` (W = float, BF16 bits, or E4M3 bytes with `scale`) against `in` of length n.
template <typename W>
__device__ __forceinline__ float RowDot(const float* in, const W* m, const float* scale, int64_t r, int n, bool round,
                                        bool vec) {
  if constexpr (sizeof(W) == 1) {
    return WarpDotFp8(in, m, scale, r, n);
  } else {
    return WarpDot(in, m + r * n, n, round, vec);
  }
}

struct SharedExpert {
  const void *gate, *up, *down;  // all nullptr: none
  const float *gate_scale, *up_scale, *down_scale;  // FP8 only
};

template <typename W>
__global__ void MoeGateUpKernel(float* act, const float* x, const int32_t* ids, const void* const* weights,
                                SharedExpert shared, int tokens, int hidden, int inter, int top_k, int experts,
                                bool round, bool vec, DeviceError* err) {
  const int pair = blockIdx.x;
  const W *gate, *up;
  const float *gate_s = nullptr, *up_s = nullptr;
  int t;
  if (pair < tokens * top_k) {
    t = pair / top_k;
    const int e = ids[pair];
    if (e < 0 || e >= experts) {
      if (blockIdx.y == 0 && threadIdx.x == 0) RecordError(err, kErrExpert, pair, e, experts);
      return;
    }
    gate = static_cast<const W*>(weights[e]);
    up = static_cast<const W*>(weights[experts + e]);
    if constexpr (sizeof(W) == 1) {
      gate_s = static_cast<const float*>(weights[3 * experts + e]);
      up_s = static_cast<const float*>(weights[4 * experts + e]);
    }
    if (gate == nullptr || up == nullptr || weights[2 * experts + e] == nullptr ||
        (sizeof(W) == 1 && (gate_s == nullptr || up_s == nullptr || weights[5 * experts + e] == nullptr))) {
      if (blockIdx.y == 0 && threadIdx.x == 0) RecordError(err, kErrExpertWeights, pair, e, experts);
      return;
    }
  } else {
    t = pair - tokens * top_k;
    gate = static_cast<const W*>(shared.gate);
    up = static_cast<const W*>(shared.up);
    gate_s = shared.gate_scale;
    up_s = shared.up_scale;
  }
  const float* xt = x + static_cast<int64_t>(t) * hidden;
  const int row0 = blockIdx.y * kMoeRowsPerBlock + (threadIdx.x / 32) * kMoeRowsPerWarp;
  for (int r = row0; r < min(row0 + kMoeRowsPerWarp, inter); ++r) {
    const float g = RowDot(xt, gate, gate_s, r, hidden, round, vec);
    const float u = RowDot(xt, up, up_s, r, hidden, round, vec);
    if (threadIdx.x % 32 == 0) act[static_cast<int64_t>(pair) * inter + r] = g / (1.0f + expf(-g)) * u;
  }
}

template <typename W>
__global__ void MoeDownKernel(float* out, const float* act, const int32_t* ids, const float* wts,
                              const void* const* weights, SharedExpert shared, int tokens, int hidden, int inter,
                              int top_k, int experts, bool round, bool vec) {
  const int t = blockIdx.x;
  for (int j = 0; j < top_k; ++j) {  // a bad id (recorded by MoeGateUpKernel): the token stays unchanged
    const int e = ids[t * top_k + j];
    if (e < 0 || e >= experts) return;
    if (weights[e] == nullptr || weights[experts + e] == nullptr || weights[2 * experts + e] == nullptr) return;
    if (sizeof(W) == 1 && (weights[3 * experts + e] == nullptr || weights[4 * experts + e] == nullptr ||
                           weights[5 * experts + e] == nullptr)) {
      return;
    }
  }
  const int c0 = blockIdx.y * kMoeRowsPerBlock + (threadIdx.x / 32) * kMoeRowsPerWarp;
  for (int c = c0; c < min(c0 + kMoeRowsPerWarp, hidden); ++c) {
    float acc = 0.0f;
    for (int j = 0; j < top_k; ++j) {
      const int pair = t * top_k + j;
      const W* down = static_cast<const W*>(weights[2 * experts + ids[pair]]);
      const float* down_s = sizeof(W) == 1 ? static_cast<const float*>(weights[5 * experts + ids[pair]]) : nullptr;
      acc += wts[pair] * RowDot(act + static_cast<int64_t>(pair) * inter, down, down_s, c, inter, round, vec);
    }
    if (shared.down != nullptr) {
      acc += RowDot(act + static_cast<int64_t>(tokens * top_k + t) * inter, static_cast<const W*>(shared.down),
                    shared.down_scale, c, inter, round, vec);
    }
    if (threadIdx.x % 32 == 0) out[static_cast<int64_t>(t) * hidden + c] += acc;
  }
}

}  // namespace

cudaError_t LaunchMoeExperts(float* out, float* act, const float* x, const int32_t* expert_ids,
                             const float* expert_weights, const void* const* weights, const void* shared_gate,
                             const void* shared_up, const void* shared_down, const float* const* shared_scales,
                             bool bf16, bool fp8, int tokens, int hidden, int inter, int top_k, int experts,
                             DeviceError* err, cudaStream_t stream) {
  if (tokens == 0 || hidden == 0 || top_k == 0) return cudaSuccess;
  const SharedExpert shared{shared_gate,      shared_up,        shared_down,
                            shared_scales[0], shared_scales[1], shared_scales[2]};
  const int pairs = tokens * top_k + (shared_gate != nullptr ? tokens : 0);
  const dim3 block(kMoeWarps * 32);
  const dim3 g1(pairs, (inter + kMoeRowsPerBlock - 1) / kMoeRowsPerBlock);
  const dim3 g2(tokens, (hidden + kMoeRowsPerBlock - 1) / kMoeRowsPerBlock);
  // 16-byte loads need rows of a multiple of 8 elements (and aligned rows, checked in WarpDot).
  const bool vec1 = hidden % 8 == 0, vec2 = inter % 8 == 0;
  if (fp8) {  // x and the SiLU products rounded to their FP8 blocks once, not per weight row
    float* xq = act + static_cast<int64_t>(tokens) * (top_k + 1) * inter;
    cudaError_t e = LaunchRoundFp8Blocks(xq, hidden, x, tokens, hidden, hidden, stream);
    if (e != cudaSuccess) return e;
    MoeGateUpKernel<uint8_t><<<g1, block, 0, stream>>>(act, xq, expert_ids, weights, shared, tokens, hidden, inter,
                                                       top_k, experts, false, false, err);
    e = LaunchRoundFp8Blocks(act, inter, act, pairs, inter, inter, stream);
    if (e != cudaSuccess) return e;
    MoeDownKernel<uint8_t><<<g2, block, 0, stream>>>(out, act, expert_ids, expert_weights, weights, shared, tokens,
                                                     hidden, inter, top_k, experts, false, false);
  } else if (bf16) {
    MoeGateUpKernel<uint16_t><<<g1, block, 0, stream>>>(act, x, expert_ids, weights, shared, tokens, hidden, inter,
                                                        top_k, experts, true, vec1, err);
    MoeDownKernel<uint16_t><<<g2, block, 0, stream>>>(out, act, expert_ids, expert_weights, weights, shared, tokens,
                                                      hidden, inter, top_k, experts, true, vec2);
  } else {
    MoeGateUpKernel<float><<<g1, block, 0, stream>>>(act, x, expert_ids, weights, shared, tokens, hidden, inter,
                                                     top_k, experts, false, false, err);
    MoeDownKernel<float><<<g2, block, 0, stream>>>(out, act, expert_ids, expert_weights, weights, shared, tokens,
                                                   hidden, inter, top_k, experts, false, false);
  }
  return cudaGetLastError();
}

}  // namespace ic::kernels::cuda
