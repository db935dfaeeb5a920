// Rotary embedding, in place: one thread per (token, head, rotated pair).
// The angle is positions[t] · inv_freq[i] in float, as the CPU reference computes it.
#include "kernels/cuda/common.cuh"

namespace ic::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void RopeKernel(float* x, const int32_t* positions, const float* inv_freq, int tokens,
                           int heads, int token_stride, int head_stride, int rot_offset, int rot_dim,
                           float scaling, bool interleaved) {
  const int half = rot_dim / 2;
  const int64_t n = static_cast<int64_t>(tokens) * heads * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const int64_t th = idx / half;
    const int h = static_cast<int>(th % heads);
    const int64_t t = th / heads;
    float* base = x + t * token_stride + static_cast<int64_t>(h) * head_stride + rot_offset;
    const float angle = static_cast<float>(positions[t]) * inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    c *= scaling;
    s *= scaling;
    float* p0 = interleaved ? base + 2 * i : base + i;
    float* p1 = interleaved ? base + 2 * i + 1 : base + i + half;
    const float x0 = *p0, x1 = *p1;
    *p0 = x0 * c - x1 * s;
    *p1 = x1 * c + x0 * s;
  }
}

}  // namespace

cudaError_t LaunchRope(float* x, const int32_t* positions, const float* inv_freq, int tokens, int heads,
                       int token_stride, int head_stride, int rot_offset, int rot_dim,
                       float attention_scaling, bool interleaved, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(tokens) * heads * (rot_dim / 2);
  if (n == 0) return cudaSuccess;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  RopeKernel<<<static_cast<unsigned>(blocks > 132 * 32 ? 132 * 32 : blocks), kThreads, 0, stream>>>(
      x, positions, inv_freq, tokens, heads, token_stride, head_stride, rot_offset, rot_dim,
      attention_scaling, interleaved);
  return cudaGetLastError();
}

}  // namespace ic::kernels::cuda
