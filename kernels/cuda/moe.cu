// DeepSeek-V3 MoE router (sigmoid scores, bias-corrected choice, group-limited top-k): one thread per
// token. Selection is repeated arg-max in the total order (value desc, index asc), so ties go to the
// smaller expert / group index and no per-expert scratch is needed. Experts come out in choice order.
#include "kernels/cuda/common.cuh"

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

}  // namespace ic::kernels::cuda
