// Attention over the paged KV cache, dense causal or sparse (top-k indices), F32.
//
// Block = one query token × hb heads that share a KV head (hb = the largest of 8, 4, 2, 1 dividing
// q_heads / kv_heads), one warp per head. Keys go through in chunks of kChunk: the block loads the
// chunk's K and V rows into shared memory once (coalesced), then every warp walks the chunk in order:
// lanes split the qk dims for the dot product (shuffle reduction), then the warp updates its online
// softmax (running max m, sum l; the v_dim accumulator lives in shared memory, each lane owning dims
// lane, lane + 32, …). So a cached row is read from memory once per (token, head group) instead of
// once per head (MLA decode: 8× fewer L2 reads than one block per head). A second kernel computes the
// head-averaged probabilities of the selected keys from the log-sum-exp (sparse only), so the result
// does not depend on atomics.
// BF16 (AttentionArgs::precision kBF16): sparse absorbed-MLA attention (one latent KV head of 576 = 512 +
// 64 rope, V = its first 512 values, any number of query heads) runs on tensor cores: SparseMlaTcKernel.
// Other shapes and dense attention run the F32 kernels in either precision. A BF16 KV cache
// (AttentionArgs::k_cache_bf16) is read by every kernel: widened to F32 when staged by the F32 kernels,
// copied as it is by the tensor-core kernel.
// Next steps: tile several query tokens per block for prefill (a flash-attention tiling).
#include <cuda_bf16.h>
#include <cuda_pipeline.h>

#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace ic::kernels::cuda {
namespace {

constexpr int kWarps = 8;   // heads per block at most, and warps of the probs kernel
size_t g_attention_max_shared = 48 << 10;  // set by ConfigureAttentionKernels
constexpr int kChunk = 16;  // keys staged per step

__device__ __forceinline__ int KeyAt(const AttentionParams& p, int t, int i) {
  if (p.topk == nullptr) return i;  // dense: i ≤ pos by construction
  return p.topk[static_cast<int64_t>(t) * p.topk_k + i];
}

int HeadsPerBlock(int group) {
  for (int hb : {8, 4, 2}) {
    if (group % hb == 0) return hb;
  }
  return 1;
}

// Stages the K and V rows of KV head g for cache slots slots[0..cn) (−1: skipped, never read) into shared
// memory as F32: cp.async from an F32 cache (every thread keeps all its loads in flight), widening loads
// from a BF16 cache.
__device__ __forceinline__ void StageKvRows(const AttentionParams& p, int g, const int64_t* slots, int cn,
                                            float* ks, float* vs) {
  const int D = p.qk_dim, V = p.v_dim;
  if (p.k16 != nullptr) {
    const uint16_t* kbase = p.k16 + static_cast<int64_t>(g) * D;
    const uint16_t* vbase = p.v16 + static_cast<int64_t>(g) * V;
    for (int r = 0; r < cn; ++r) {
      const int64_t slot = slots[r];
      if (slot < 0) continue;
      const uint16_t* kr = kbase + slot * p.k_stride;
      const uint16_t* vr = vbase + slot * p.v_stride;
      for (int d = threadIdx.x; d < D; d += blockDim.x) ks[r * D + d] = Bf16BitsToFloat(kr[d]);
      for (int d = threadIdx.x; d < V; d += blockDim.x) vs[r * V + d] = Bf16BitsToFloat(vr[d]);
    }
    return;
  }
  const float* kbase = p.k_cache + static_cast<int64_t>(g) * D;
  const float* vbase = p.v_cache + static_cast<int64_t>(g) * V;
  for (int r = 0; r < cn; ++r) {
    const int64_t slot = slots[r];
    if (slot < 0) continue;
    const float* kr = kbase + slot * p.k_stride;
    const float* vr = vbase + slot * p.v_stride;
    for (int d = threadIdx.x; d < D; d += blockDim.x) __pipeline_memcpy_async(ks + r * D + d, kr + d, 4);
    for (int d = threadIdx.x; d < V; d += blockDim.x) __pipeline_memcpy_async(vs + r * V + d, vr + d, 4);
  }
  __pipeline_commit();
  __pipeline_wait_prior(0);
}

// part == nullptr: writes out/lse. Otherwise (split-K, gridDim.z splits of the key list): writes the
// partial state [acc(v_dim), m, l] of (token, head, split) to part, merged by AttentionCombineKernel.
__global__ void __launch_bounds__(kWarps * 32) AttentionKernel(AttentionParams p, float* lse_out,
                                                               float* part, DeviceError* err) {
  extern __shared__ int64_t smem_i64[];
  int64_t* slots = smem_i64;        // [kChunk] (dynamic: the opt-in limit covers dynamic memory only)
  const int t = blockIdx.x;
  const int hb = blockDim.x >> 5;
  const int h0 = blockIdx.y * hb;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int h = h0 + warp;
  const int D = p.qk_dim, V = p.v_dim;
  float* qs = reinterpret_cast<float*>(slots + kChunk);  // [hb, D]
  float* ks = qs + hb * D;          // [kChunk, D]
  float* vs = ks + kChunk * D;      // [kChunk, V]
  float* acc = vs + kChunk * V;     // [hb, V]
  const int g = h0 / (p.q_heads / p.kv_heads);  // hb divides the group: one KV head per block
  const int pos = p.layout.token_pos[t];
  const int seq = p.layout.token_seq[t];
  const float* qrow = p.q + static_cast<int64_t>(t) * p.q_stride + static_cast<int64_t>(h0) * D;
  for (int i = threadIdx.x; i < hb * D; i += blockDim.x) qs[i] = qrow[i];
  for (int i = threadIdx.x; i < hb * V; i += blockDim.x) acc[i] = 0.0f;
  float* my_acc = acc + warp * V;
  const float* my_q = qs + warp * D;

  const int n_all = p.topk == nullptr ? pos + 1 : p.topk_k;
  const int per = (n_all + gridDim.z - 1) / gridDim.z;
  const int begin = blockIdx.z * per;
  const int n = n_all < begin + per ? n_all : begin + per;
  float m = -INFINITY, l = 0.0f;
  for (int c0 = begin; c0 < n; c0 += kChunk) {
    const int cn = n - c0 < kChunk ? n - c0 : kChunk;
    __syncthreads();  // the previous chunk is consumed
    if (threadIdx.x < cn) {
      const int key = KeyAt(p, t, c0 + threadIdx.x);
      slots[threadIdx.x] = (key >= 0 && key <= pos)  // only 0 ≤ s ≤ pos are valid
                               ? CacheSlot(p.layout, seq, key, p.num_slots, t, err)
                               : -1;
    }
    __syncthreads();
    // Asynchronous copies (cp.async): every thread keeps all its loads in flight at once.
    StageKvRows(p, g, slots, cn, ks, vs);
    __syncthreads();
    for (int r = 0; r < cn; ++r) {
      if (slots[r] < 0) continue;  // uniform over the block
      const float* kr = ks + r * D;
      float dot = 0.0f;
      for (int d = lane; d < D; d += 32) dot = fmaf(my_q[d], kr[d], dot);
      const float logit = WarpSum(dot) * p.scale;  // identical in every lane
      const float m_new = fmaxf(m, logit);
      if (m_new == -INFINITY) continue;  // a −inf logit contributes nothing
      const float corr = expf(m - m_new);
      const float pr = expf(logit - m_new);
      l = l * corr + pr;
      m = m_new;
      const float* vr = vs + r * V;
      for (int d = lane; d < V; d += 32) my_acc[d] = fmaf(my_acc[d], corr, pr * vr[d]);
    }
  }
  __syncthreads();  // every warp's last update of acc is visible (not needed per warp; cheap)
  if (part != nullptr) {
    float* pp = part + ((static_cast<int64_t>(t) * p.q_heads + h) * gridDim.z + blockIdx.z) * (V + 2);
    for (int d = lane; d < V; d += 32) pp[d] = my_acc[d];
    if (lane == 0) {
      pp[V] = m;
      pp[V + 1] = l;
    }
    return;
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  float* o = p.out + (static_cast<int64_t>(t) * p.q_heads + h) * V;
  for (int d = lane; d < V; d += 32) o[d] = my_acc[d] * inv;
  if (lane == 0 && lse_out != nullptr) {
    lse_out[static_cast<int64_t>(t) * p.q_heads + h] = l > 0.0f ? m + logf(l) : -INFINITY;
  }
}

// Register variant for the common shapes (qk_dim ≤ 32·QPL, v_dim ≤ 32·VPL): each lane keeps its q
// dims and its share of the v accumulator in registers and a warp takes 4 keys per step (4 independent
// dot products and shuffle reductions, one rescale of the accumulator), so each FMA costs about one
// shared-memory load instead of two to three. Same staging, split-K and outputs as AttentionKernel.
template <int QPL, int VPL>
__global__ void __launch_bounds__(kWarps * 32) AttentionRegKernel(AttentionParams p, float* lse_out,
                                                                  float* part, DeviceError* err) {
  extern __shared__ int64_t smem_i64[];
  int64_t* slots = smem_i64;                              // [kChunk]
  float* ks = reinterpret_cast<float*>(slots + kChunk);   // [kChunk, D]
  const int t = blockIdx.x;
  const int hb = blockDim.x >> 5;
  const int h0 = blockIdx.y * hb;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int h = h0 + warp;
  const int D = p.qk_dim, V = p.v_dim;
  float* vs = ks + kChunk * D;                            // [kChunk, V]
  const int g = h0 / (p.q_heads / p.kv_heads);
  const int pos = p.layout.token_pos[t];
  const int seq = p.layout.token_seq[t];
  const float* qh = p.q + static_cast<int64_t>(t) * p.q_stride + static_cast<int64_t>(h) * D;
  float q[QPL], acc[VPL];
#pragma unroll
  for (int i = 0; i < QPL; ++i) q[i] = i * 32 + lane < D ? qh[i * 32 + lane] : 0.0f;
#pragma unroll
  for (int i = 0; i < VPL; ++i) acc[i] = 0.0f;
  const int n_all = p.topk == nullptr ? pos + 1 : p.topk_k;
  const int per = (n_all + gridDim.z - 1) / gridDim.z;
  const int begin = blockIdx.z * per;
  const int n = n_all < begin + per ? n_all : begin + per;
  float m = -INFINITY, l = 0.0f;
  for (int c0 = begin; c0 < n; c0 += kChunk) {
    const int cn = n - c0 < kChunk ? n - c0 : kChunk;
    __syncthreads();
    if (threadIdx.x < kChunk) {
      int64_t slot = -1;
      if (threadIdx.x < cn) {
        const int key = KeyAt(p, t, c0 + threadIdx.x);
        if (key >= 0 && key <= pos) slot = CacheSlot(p.layout, seq, key, p.num_slots, t, err);
      }
      slots[threadIdx.x] = slot;
    }
    __syncthreads();
    StageKvRows(p, g, slots, cn, ks, vs);
    __syncthreads();
    for (int r = 0; r < cn; r += 4) {
      bool valid[4];
      float logit[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        valid[j] = r + j < cn && slots[r + j] >= 0;  // uniform over the block
        const float* kr = ks + (r + j) * D;
        float dot = 0.0f;
        if (valid[j]) {
#pragma unroll
          for (int i = 0; i < QPL; ++i) {
            if (i * 32 + lane < D) dot = fmaf(q[i], kr[i * 32 + lane], dot);
          }
        }
        logit[j] = dot;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) logit[j] = valid[j] ? WarpSum(logit[j]) * p.scale : -INFINITY;
      const float m_new = fmaxf(fmaxf(m, fmaxf(logit[0], logit[1])), fmaxf(logit[2], logit[3]));
      if (m_new == -INFINITY) continue;
      const float corr = expf(m - m_new);
      float pr[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) pr[j] = valid[j] ? expf(logit[j] - m_new) : 0.0f;
      l = l * corr + ((pr[0] + pr[1]) + (pr[2] + pr[3]));
      m = m_new;
#pragma unroll
      for (int i = 0; i < VPL; ++i) {
        const int d = i * 32 + lane;
        if (d < V) {
          float a = acc[i] * corr;
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            if (valid[j]) a = fmaf(pr[j], vs[(r + j) * V + d], a);
          }
          acc[i] = a;
        }
      }
    }
  }
  if (part != nullptr) {
    float* pp = part + ((static_cast<int64_t>(t) * p.q_heads + h) * gridDim.z + blockIdx.z) * (V + 2);
#pragma unroll
    for (int i = 0; i < VPL; ++i) {
      if (i * 32 + lane < V) pp[i * 32 + lane] = acc[i];
    }
    if (lane == 0) {
      pp[V] = m;
      pp[V + 1] = l;
    }
    return;
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  float* o = p.out + (static_cast<int64_t>(t) * p.q_heads + h) * V;
#pragma unroll
  for (int i = 0; i < VPL; ++i) {
    if (i * 32 + lane < V) o[i * 32 + lane] = acc[i] * inv;
  }
  if (lane == 0 && lse_out != nullptr) {
    lse_out[static_cast<int64_t>(t) * p.q_heads + h] = l > 0.0f ? m + logf(l) : -INFINITY;
  }
}

// Merges the split-K partial states of one (token, head): block = (token, head), 128 threads.
__global__ void AttentionCombineKernel(AttentionParams p, const float* part, int splits, float* lse_out) {
  const int t = blockIdx.x, h = blockIdx.y, V = p.v_dim;
  const float* pp = part + (static_cast<int64_t>(t) * p.q_heads + h) * splits * (V + 2);
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, pp[s * (V + 2) + V]);
  float L = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float ms = pp[s * (V + 2) + V];
    if (ms != -INFINITY) L += pp[s * (V + 2) + V + 1] * expf(ms - M);
  }
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;
  float* o = p.out + (static_cast<int64_t>(t) * p.q_heads + h) * V;
  for (int d = threadIdx.x; d < V; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float ms = pp[s * (V + 2) + V];
      if (ms != -INFINITY) acc = fmaf(pp[s * (V + 2) + d], expf(ms - M), acc);
    }
    o[d] = acc * inv;
  }
  if (threadIdx.x == 0 && lse_out != nullptr) {
    lse_out[static_cast<int64_t>(t) * p.q_heads + h] = L > 0.0f ? M + logf(L) : -INFINITY;
  }
}

// probs[t, i] = mean_h exp(scale · q[t,h]·k[key_i] − lse[t,h]); one warp per selected key.
__global__ void __launch_bounds__(kWarps * 32) AttentionProbsKernel(AttentionParams p,
                                                                    const float* lse) {
  const int t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int i = blockIdx.y * kWarps + warp;
  if (i >= p.topk_k) return;
  const int key = p.topk[static_cast<int64_t>(t) * p.topk_k + i];
  float total = 0.0f;
  if (key >= 0 && key <= p.layout.token_pos[t]) {
    const int64_t slot = CacheSlot(p.layout, p.layout.token_seq[t], key, p.num_slots, t, nullptr);
    if (slot >= 0) {
      const int group = p.q_heads / p.kv_heads;
      for (int h = 0; h < p.q_heads; ++h) {
        const float* qh = p.q + static_cast<int64_t>(t) * p.q_stride + static_cast<int64_t>(h) * p.qk_dim;
        const int64_t k_off = slot * p.k_stride + static_cast<int64_t>(h / group) * p.qk_dim;
        const float* kr = p.k_cache + k_off;
        float dot = 0.0f;
        if (p.k16 != nullptr) {  // a BF16 cache: the values the BF16 kernels use
          for (int d = lane; d < p.qk_dim; d += 32) {
            dot = fmaf(RoundBf16(qh[d]), Bf16BitsToFloat(p.k16[k_off + d]), dot);
          }
        } else if (p.bf16) {  // the same rounded inputs as the BF16 kernels
          for (int d = lane; d < p.qk_dim; d += 32) {
            dot = fmaf(RoundBf16(qh[d]), RoundBf16(kr[d]), dot);
          }
        } else {
          for (int d = lane; d < p.qk_dim; d += 32) dot = fmaf(qh[d], kr[d], dot);
        }
        const float logit = WarpSum(dot) * p.scale;
        const float ls = lse[static_cast<int64_t>(t) * p.q_heads + h];
        if (ls != -INFINITY) total += expf(logit - ls);
      }
    }
  }
  if (lane == 0) p.probs[static_cast<int64_t>(t) * p.topk_k + i] = total / p.q_heads;
}


// ---- BF16 tensor-core sparse MLA attention ---------------------------------------------------------
//
// Block = one query token × 32 of its heads (they share the token's top-k keys, so each gathered key row is
// read once per 32 heads: once per token for the 20-head 30B model, 2× for GLM-5's 64, 4× for DeepSeek-V3.2's
// 128), 8 warps; gridDim.y = ⌈q_heads / 32⌉. Per chunk of kTcChunk selected keys the block gathers the latent rows
// into shared memory as BF16 ([key, 576 + 8]), then
//   S = Q·Kᵀ:  warp (m, j) computes heads 16m..16m+15 × keys 8j..8j+7 (mma.sync m16n8k16, Q from
//              shared memory by ldmatrix, K rows as B fragments);
//   softmax:   the chunk's row max goes through shared memory (the four warps of a head tile), then each
//              warp rescales its running state and writes P = exp(S − m) as BF16 to shared memory;
//   O += P·V:  warp (m, j) owns output columns 128j..128j+127 of its 16 heads: A = P by ldmatrix, B = the
//              same latent rows, transposed by ldmatrix.trans (V is the first 512 values of each row).
// The row sums l are kept per warp (only its own keys) and added at the end; the rescale factor is common.
// Heads beyond q_heads are zero rows. gridDim.z > 1 splits the top-k list (decode) into partial states
// merged by AttentionCombineKernel.
constexpr int kTcChunk = 32;
constexpr int kTcQk = 576, kTcV = 512;
constexpr int kTcRow = kTcQk + 8;       // BF16 row stride of Q and K tiles
constexpr int kTcPRow = kTcChunk + 8;   // BF16 row stride of P

size_t SparseMlaTcSharedBytes() {
  return sizeof(__nv_bfloat16) * (static_cast<size_t>(32 + kTcChunk) * kTcRow + 32 * kTcPRow) +
         sizeof(float) * 2 * 8 * 16 + sizeof(int64_t) * kTcChunk;
}

// kCache16: the KV cache is BF16 (AttentionParams::k16), rows copied with cp.async; else F32 rows converted
// while staged. Two instantiations, so that neither carries the other's staging registers (one kernel with a
// runtime branch needed 164 registers: one block per SM instead of two).
template <bool kCache16>
__global__ void __launch_bounds__(256) SparseMlaTcKernel(AttentionParams p, float* lse_out, float* part,
                                                         DeviceError* err) {
  extern __shared__ int64_t smem_i64[];
  int64_t* slots = smem_i64;                                              // [kTcChunk]
  float* red_max = reinterpret_cast<float*>(slots + kTcChunk);            // [8 warps][16 rows]
  float* red_l = red_max + 8 * 16;                                        // [8][16]
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(red_l + 8 * 16);  // [32, kTcRow]
  __nv_bfloat16* ks = qs + 32 * kTcRow;                                   // [kTcChunk, kTcRow]
  __nv_bfloat16* ps = ks + kTcChunk * kTcRow;                             // [32, kTcPRow]
  const int t = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int mt = warp >> 2, wq = warp & 3;  // head tile, quarter (S: 8 keys; O: 128 columns)
  const int pos = p.layout.token_pos[t];
  const int seq = p.layout.token_seq[t];
  const float* qrow = p.q + static_cast<int64_t>(t) * p.q_stride;
  for (int i = threadIdx.x; i < 32 * (kTcQk / 2); i += 256) {
    const int h = i / (kTcQk / 2), d = 2 * (i % (kTcQk / 2));
    const int hq = blockIdx.y * 32 + h;  // this block's 32 heads
    float x0 = 0.f, x1 = 0.f;
    if (hq < p.q_heads) {
      x0 = qrow[hq * kTcQk + d];
      x1 = qrow[hq * kTcQk + d + 1];
    }
    *reinterpret_cast<uint32_t*>(qs + h * kTcRow + d) = PackBf16(x0, x1);
  }
  const int n_all = p.topk_k;
  const int per = (n_all + gridDim.z - 1) / gridDim.z;
  const int begin = blockIdx.z * per;
  const int n = n_all < begin + per ? n_all : begin + per;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;
  float o[16][4];
#pragma unroll
  for (int j = 0; j < 16; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_col = (lane >> 4) * 8;

  for (int c0 = begin; c0 < n; c0 += kTcChunk) {
    __syncthreads();  // the previous chunk's K and P have been read
    if (threadIdx.x < kTcChunk) {
      int64_t slot = -1;
      if (c0 + threadIdx.x < n) {
        const int key = p.topk[static_cast<int64_t>(t) * p.topk_k + c0 + threadIdx.x];
        if (key >= 0 && key <= pos) slot = CacheSlot(p.layout, seq, key, p.num_slots, t, err);
      }
      slots[threadIdx.x] = slot;
    }
    __syncthreads();
    if constexpr (kCache16) {  // BF16 cache: rows copied as they are (cp.async)
      StageRowsAsync<kTcChunk, kTcQk * 2, 256>(ks, kTcRow * 2, p.k16, static_cast<int64_t>(p.k_stride) * 2, slots);
    } else {
      StageRowsF32AsBf16<kTcChunk, kTcQk, 256>(ks, kTcRow, p.k_cache, p.k_stride, slots);
    }
    __syncthreads();

    // S for heads 16·mt.. × keys 8·wq + {2c, 2c+1} (rows g, g + 8).
    float s[4] = {0.f, 0.f, 0.f, 0.f};
    const __nv_bfloat16* a_base = qs + (mt * 16 + a_row) * kTcRow + a_col;
    const __nv_bfloat16* b_base = ks + (wq * 8 + g) * kTcRow + 2 * c;
#pragma unroll 4
    for (int k = 0; k < kTcQk / 16; ++k) {
      uint32_t a[4];
      LdMatrixX4(a, a_base + k * 16);
      const uint32_t b0 = *reinterpret_cast<const uint32_t*>(b_base + k * 16);
      const uint32_t b1 = *reinterpret_cast<const uint32_t*>(b_base + k * 16 + 8);
      MmaBf16(s, a, b0, b1);
    }
    const bool v0 = slots[wq * 8 + 2 * c] >= 0, v1 = slots[wq * 8 + 2 * c + 1] >= 0;
    const float x0 = v0 ? s[0] * p.scale : -INFINITY, x1 = v1 ? s[1] * p.scale : -INFINITY;
    const float x2 = v0 ? s[2] * p.scale : -INFINITY, x3 = v1 ? s[3] * p.scale : -INFINITY;
    float mx_lo = fmaxf(x0, x1), mx_hi = fmaxf(x2, x3);
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
    if (c == 0) {
      red_max[warp * 16 + g] = mx_lo;
      red_max[warp * 16 + g + 8] = mx_hi;
    }
    __syncthreads();
    float cm_lo = -INFINITY, cm_hi = -INFINITY;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      cm_lo = fmaxf(cm_lo, red_max[(mt * 4 + w) * 16 + g]);
      cm_hi = fmaxf(cm_hi, red_max[(mt * 4 + w) * 16 + g + 8]);
    }
    const float new_lo = fmaxf(m_lo, cm_lo), new_hi = fmaxf(m_hi, cm_hi);
    const float corr_lo = new_lo == -INFINITY ? 1.f : __expf(m_lo - new_lo);
    const float corr_hi = new_hi == -INFINITY ? 1.f : __expf(m_hi - new_hi);
    const float p0 = x0 == -INFINITY ? 0.f : __expf(x0 - new_lo), p1 = x1 == -INFINITY ? 0.f : __expf(x1 - new_lo);
    const float p2 = x2 == -INFINITY ? 0.f : __expf(x2 - new_hi), p3 = x3 == -INFINITY ? 0.f : __expf(x3 - new_hi);
    l_lo = l_lo * corr_lo + (p0 + p1);
    l_hi = l_hi * corr_hi + (p2 + p3);
    m_lo = new_lo;
    m_hi = new_hi;
    *reinterpret_cast<uint32_t*>(ps + (mt * 16 + g) * kTcPRow + wq * 8 + 2 * c) = PackBf16(p0, p1);
    *reinterpret_cast<uint32_t*>(ps + (mt * 16 + g + 8) * kTcPRow + wq * 8 + 2 * c) = PackBf16(p2, p3);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      o[j][0] *= corr_lo;
      o[j][1] *= corr_lo;
      o[j][2] *= corr_hi;
      o[j][3] *= corr_hi;
    }
    __syncthreads();  // P complete

    // O[heads 16·mt.., columns 128·wq..] += P · V.
#pragma unroll
    for (int kk = 0; kk < kTcChunk / 16; ++kk) {
      uint32_t a[4];
      LdMatrixX4(a, ps + (mt * 16 + a_row) * kTcPRow + kk * 16 + a_col);
      const __nv_bfloat16* v_base = ks + (kk * 16 + a_row) * kTcRow + wq * 128 + a_col;
#pragma unroll
      for (int jp = 0; jp < 8; ++jp) {
        uint32_t b[4];
        LdMatrixX4Trans(b, v_base + jp * 16);
        MmaBf16(o[2 * jp], a, b[0], b[1]);
        MmaBf16(o[2 * jp + 1], a, b[2], b[3]);
      }
    }
  }

  // Row sums: this thread's keys → the quad (xor 1, 2) → the four warps of the head tile.
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
  __syncthreads();
  if (c == 0) {
    red_l[warp * 16 + g] = l_lo;
    red_l[warp * 16 + g + 8] = l_hi;
  }
  __syncthreads();
  float L_lo = 0.f, L_hi = 0.f;
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    L_lo += red_l[(mt * 4 + w) * 16 + g];
    L_hi += red_l[(mt * 4 + w) * 16 + g + 8];
  }
  const int h_lo = mt * 16 + g, h_hi = h_lo + 8;
  for (int half = 0; half < 2; ++half) {
    const int h = blockIdx.y * 32 + (half ? h_hi : h_lo);
    if (h >= p.q_heads) continue;
    const float m = half ? m_hi : m_lo, L = half ? L_hi : L_lo;
    if (part != nullptr) {
      float* pp = part + ((static_cast<int64_t>(t) * p.q_heads + h) * gridDim.z + blockIdx.z) * (kTcV + 2);
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int col = wq * 128 + j * 8 + 2 * c;
        pp[col] = o[j][half * 2];
        pp[col + 1] = o[j][half * 2 + 1];
      }
      if (wq == 0 && c == 0) {
        pp[kTcV] = m;
        pp[kTcV + 1] = L;
      }
      continue;
    }
    const float inv = L > 0.f ? 1.f / L : 0.f;
    float* out = p.out + (static_cast<int64_t>(t) * p.q_heads + h) * kTcV;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int col = wq * 128 + j * 8 + 2 * c;
      *reinterpret_cast<float2*>(out + col) = make_float2(o[j][half * 2] * inv, o[j][half * 2 + 1] * inv);
    }
    if (wq == 0 && c == 0 && lse_out != nullptr) {
      lse_out[static_cast<int64_t>(t) * p.q_heads + h] = L > 0.f ? m + logf(L) : -INFINITY;
    }
  }
}

size_t SharedBytesFor(int hb, int qk_dim, int v_dim) {
  return sizeof(int64_t) * kChunk +
         sizeof(float) * (static_cast<size_t>(hb + kChunk) * qk_dim + static_cast<size_t>(hb + kChunk) * v_dim);
}

}  // namespace

size_t AttentionSharedBytes(int qk_dim, int v_dim) { return SharedBytesFor(kWarps, qk_dim, v_dim); }

bool AttentionUsesTensorCores(const AttentionParams& p) {
  return p.bf16 && p.topk != nullptr && p.kv_heads == 1 && p.q_heads <= 1024 && p.qk_dim == kTcQk &&
         p.v_dim == kTcV && p.v_cache == p.k_cache && p.v16 == p.k16 && p.v_stride == p.k_stride &&
         p.k_stride % (p.k16 != nullptr ? 8 : 4) == 0 &&
         reinterpret_cast<uintptr_t>(p.k16 != nullptr ? static_cast<const void*>(p.k16) : p.k_cache) % 16 == 0 &&
         p.q_stride % 2 == 0 &&
         reinterpret_cast<uintptr_t>(p.q) % 8 == 0 && reinterpret_cast<uintptr_t>(p.out) % 8 == 0 &&
         SparseMlaTcSharedBytes() <= g_attention_max_shared;
}

int AttentionSplitsTc(int tokens, int topk_k) {
  if (tokens <= 0 || tokens >= 264) return 1;  // 2 blocks per SM on 132 SMs
  const int by_keys = std::max(1, topk_k / 128);
  return std::max(1, std::min({(264 + tokens - 1) / tokens, by_keys, 16}));
}

int AttentionSplits(int tokens, int q_heads, int kv_heads, int max_keys) {
  if (max_keys <= 256 || tokens <= 0) return 1;
  const int64_t blocks = static_cast<int64_t>(tokens) * (q_heads / HeadsPerBlock(q_heads / kv_heads));
  int64_t splits = 4096 / std::max<int64_t>(blocks, 1);
  splits = std::min<int64_t>({splits, 16, (max_keys + 127) / 128});
  return static_cast<int>(std::max<int64_t>(splits, 1));
}

size_t AttentionPartialBytes(int tokens, int q_heads, int v_dim, int splits) {
  return splits <= 1 ? 0 : sizeof(float) * static_cast<size_t>(tokens) * q_heads * splits * (v_dim + 2);
}

cudaError_t ConfigureAttentionKernels(size_t bytes) {
  const int b = static_cast<int>(bytes);
  g_attention_max_shared = bytes;
  cudaError_t e = cudaFuncSetAttribute(AttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
  if (e == cudaSuccess) {
    e = cudaFuncSetAttribute(SparseMlaTcKernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
  }
  if (e == cudaSuccess) {
    e = cudaFuncSetAttribute(SparseMlaTcKernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
  }
  if (e == cudaSuccess) {
    e = cudaFuncSetAttribute(AttentionRegKernel<4, 4>, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
  }
  if (e == cudaSuccess) {
    e = cudaFuncSetAttribute(AttentionRegKernel<20, 16>, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
  }
  return e;
}

cudaError_t LaunchAttention(const AttentionParams& p, float* lse_ws, float* part_ws, int splits,
                            DeviceError* err, cudaStream_t stream) {
  if (p.layout.tokens == 0 || p.q_heads == 0) return cudaSuccess;
  float* lse = p.lse != nullptr ? p.lse : (p.probs != nullptr ? lse_ws : nullptr);
  const int hb = HeadsPerBlock(p.q_heads / p.kv_heads);
  if (splits < 1 || part_ws == nullptr) splits = 1;
  if (AttentionUsesTensorCores(p)) {
    const dim3 grid(p.layout.tokens, (p.q_heads + 31) / 32, splits);
    if (p.k16 != nullptr) {
      SparseMlaTcKernel<true><<<grid, 256, SparseMlaTcSharedBytes(), stream>>>(p, lse, splits > 1 ? part_ws : nullptr, err);
    } else {
      SparseMlaTcKernel<false><<<grid, 256, SparseMlaTcSharedBytes(), stream>>>(p, lse, splits > 1 ? part_ws : nullptr, err);
    }
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && splits > 1) {
      AttentionCombineKernel<<<dim3(p.layout.tokens, p.q_heads), 128, 0, stream>>>(p, part_ws, splits, lse);
      e = cudaGetLastError();
    }
    if (e != cudaSuccess || p.probs == nullptr) return e;
    AttentionProbsKernel<<<dim3(p.layout.tokens, (p.topk_k + kWarps - 1) / kWarps), kWarps * 32, 0, stream>>>(
        p, lse);
    return cudaGetLastError();
  }
  const dim3 grid(p.layout.tokens, p.q_heads / hb, splits);
  const size_t smem = SharedBytesFor(hb, p.qk_dim, p.v_dim);
  float* part = splits > 1 ? part_ws : nullptr;
  if (p.qk_dim <= 128 && p.v_dim <= 128) {
    AttentionRegKernel<4, 4><<<grid, hb * 32, smem, stream>>>(p, lse, part, err);
  } else if (p.qk_dim <= 640 && p.v_dim <= 512) {
    AttentionRegKernel<20, 16><<<grid, hb * 32, smem, stream>>>(p, lse, part, err);
  } else {
    AttentionKernel<<<grid, hb * 32, smem, stream>>>(p, lse, part, err);
  }
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess && splits > 1) {
    AttentionCombineKernel<<<dim3(p.layout.tokens, p.q_heads), 128, 0, stream>>>(p, part_ws, splits, lse);
    e = cudaGetLastError();
  }
  if (e != cudaSuccess || p.probs == nullptr || p.topk == nullptr || p.topk_k == 0) return e;
  AttentionProbsKernel<<<dim3(p.layout.tokens, (p.topk_k + kWarps - 1) / kWarps), kWarps * 32, 0,
                         stream>>>(p, lse);
  return cudaGetLastError();
}

}  // namespace ic::kernels::cuda
