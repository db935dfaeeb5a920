// Attention over the paged KV cache, dense causal or sparse (top-k indices), F32.
//
// Block (kWarps warps) = one (query token, query head). Each warp takes every kWarps-th key: the lanes
// split the qk dims for the dot product (shuffle reduction), then update the warp's online softmax
// (running max m, sum l, accumulator over v_dim in shared memory, each lane owning the dims
// lane, lane + 32, …). The warps' partial states are merged at the end. A second kernel computes the
// head-averaged probabilities of the selected keys from the log-sum-exp (sparse only), so the result
// does not depend on atomics.
// v1: a K/V row is re-read by every head of its group (through L2); grouping the heads that share a
// KV head into one block is the next step for MLA decode.
#include "kernels/cuda/common.cuh"

namespace ic::kernels::cuda {
namespace {

constexpr int kWarps = 8;

__device__ __forceinline__ int KeyAt(const AttentionParams& p, int t, int pos, int i) {
  if (p.topk == nullptr) return i;  // dense: i ≤ pos by construction
  return p.topk[static_cast<int64_t>(t) * p.topk_k + i];
}

__global__ void __launch_bounds__(kWarps * 32) AttentionKernel(AttentionParams p, float* lse_out,
                                                               DeviceError* err) {
  extern __shared__ float smem[];
  const int t = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int D = p.qk_dim, V = p.v_dim;
  float* qs = smem;                   // [D]
  float* acc = qs + D;                // [kWarps, V]
  float* ms = acc + kWarps * V;       // [kWarps]
  float* ls = ms + kWarps;            // [kWarps]
  const int group = p.q_heads / p.kv_heads;
  const int g = h / group;
  const int pos = p.layout.token_pos[t];
  const int seq = p.layout.token_seq[t];
  const float* qh = p.q + static_cast<int64_t>(t) * p.q_stride + static_cast<int64_t>(h) * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) qs[i] = qh[i];
  float* my_acc = acc + warp * V;
  for (int i = lane; i < V; i += 32) my_acc[i] = 0.0f;
  __syncthreads();

  const int n = p.topk == nullptr ? pos + 1 : p.topk_k;
  float m = -INFINITY, l = 0.0f;
  for (int i = warp; i < n; i += kWarps) {
    const int key = KeyAt(p, t, pos, i);
    if (key < 0 || key > pos) continue;  // only 0 ≤ s ≤ pos are valid
    const int64_t slot = CacheSlot(p.layout, seq, key, p.num_slots, t, err);
    if (slot < 0) continue;
    const float* kr = p.k_cache + slot * p.k_stride + static_cast<int64_t>(g) * D;
    float dot = 0.0f;
    for (int d = lane; d < D; d += 32) dot = fmaf(qs[d], kr[d], dot);
    const float logit = WarpSum(dot) * p.scale;
    const float m_new = fmaxf(m, logit);
    if (m_new == -INFINITY) continue;  // a −inf logit contributes nothing
    const float corr = expf(m - m_new);
    const float pr = expf(logit - m_new);
    l = l * corr + pr;
    m = m_new;
    const float* vr = p.v_cache + slot * p.v_stride + static_cast<int64_t>(g) * V;
    for (int d = lane; d < V; d += 32) my_acc[d] = fmaf(my_acc[d], corr, pr * vr[d]);
  }
  if (lane == 0) {
    ms[warp] = m;
    ls[warp] = l;
  }
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, ms[w]);
  float L = 0.0f;
  float f[kWarps];
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    f[w] = ms[w] == -INFINITY ? 0.0f : expf(ms[w] - M);
    L += ls[w] * f[w];
  }
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;
  float* o = p.out + (static_cast<int64_t>(t) * p.q_heads + h) * V;
  for (int d = threadIdx.x; d < V; d += blockDim.x) {
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s = fmaf(acc[w * V + d], f[w], s);
    o[d] = s * inv;
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

}  // namespace

size_t AttentionSharedBytes(int qk_dim, int v_dim) {
  return sizeof(float) * (static_cast<size_t>(qk_dim) + static_cast<size_t>(kWarps) * v_dim +
                          2 * kWarps);
}

cudaError_t ConfigureAttentionKernels(size_t bytes) {
  return cudaFuncSetAttribute(AttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

cudaError_t LaunchAttention(const AttentionParams& p, float* lse_ws, DeviceError* err,
                            cudaStream_t stream) {
  if (p.layout.tokens == 0 || p.q_heads == 0) return cudaSuccess;
  float* lse = p.lse != nullptr ? p.lse : (p.probs != nullptr ? lse_ws : nullptr);
  AttentionKernel<<<dim3(p.layout.tokens, p.q_heads), kWarps * 32,
                    AttentionSharedBytes(p.qk_dim, p.v_dim), stream>>>(p, lse, err);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || p.probs == nullptr || p.topk == nullptr || p.topk_k == 0) return e;
  AttentionProbsKernel<<<dim3(p.layout.tokens, (p.topk_k + kWarps - 1) / kWarps), kWarps * 32, 0,
                         stream>>>(p, lse);
  return cudaGetLastError();
}

}  // namespace ic::kernels::cuda
