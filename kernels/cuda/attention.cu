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
// Next steps: tile several query tokens per block for prefill (a flash-attention tiling) and use the
// tensor cores where the accuracy budget allows.
#include <cuda_pipeline.h>

#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace ic::kernels::cuda {
namespace {

constexpr int kWarps = 8;   // heads per block at most, and warps of the probs kernel
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
  const float* kbase = p.k_cache + static_cast<int64_t>(g) * D;
  const float* vbase = p.v_cache + static_cast<int64_t>(g) * V;
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
    for (int r = 0; r < cn; ++r) {
      const int64_t slot = slots[r];
      if (slot < 0) continue;  // never read: the warps skip invalid rows
      const float* kr = kbase + slot * p.k_stride;
      const float* vr = vbase + slot * p.v_stride;
      for (int d = threadIdx.x; d < D; d += blockDim.x) __pipeline_memcpy_async(ks + r * D + d, kr + d, 4);
      for (int d = threadIdx.x; d < V; d += blockDim.x) __pipeline_memcpy_async(vs + r * V + d, vr + d, 4);
    }
    __pipeline_commit();
    __pipeline_wait_prior(0);
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
  const float* kbase = p.k_cache + static_cast<int64_t>(g) * D;
  const float* vbase = p.v_cache + static_cast<int64_t>(g) * V;

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
        const float* kr = p.k_cache + slot * p.k_stride + static_cast<int64_t>(h / group) * p.qk_dim;
        float dot = 0.0f;
        for (int d = lane; d < p.qk_dim; d += 32) dot = fmaf(qh[d], kr[d], dot);
        const float logit = WarpSum(dot) * p.scale;
        const float ls = lse[static_cast<int64_t>(t) * p.q_heads + h];
        if (ls != -INFINITY) total += expf(logit - ls);
      }
    }
  }
  if (lane == 0) p.probs[static_cast<int64_t>(t) * p.topk_k + i] = total / p.q_heads;
}


size_t SharedBytesFor(int hb, int qk_dim, int v_dim) {
  return sizeof(int64_t) * kChunk +
         sizeof(float) * (static_cast<size_t>(hb + kChunk) * qk_dim + static_cast<size_t>(hb + kChunk) * v_dim);
}

}  // namespace

size_t AttentionSharedBytes(int qk_dim, int v_dim) { return SharedBytesFor(kWarps, qk_dim, v_dim); }

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
  cudaError_t e = cudaFuncSetAttribute(AttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
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
