// Cross-entropy per token: one block per row; max, then Σ exp(x − max), then log-sum-exp − x[target].
#include "kernels/cuda/common.cuh"

namespace ic::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void CrossEntropyKernel(float* loss, const float* logits, const int32_t* targets,
                                   int vocab, int stride, DeviceError* err) {
  __shared__ float scratch[32];
  const int t = blockIdx.x;
  const int target = targets[t];
  if (target < 0) {
    if (threadIdx.x == 0) loss[t] = 0.0f;
    return;
  }
  if (target >= vocab) {
    if (threadIdx.x == 0) {
      RecordError(err, kErrTarget, t, target, vocab);
      loss[t] = 0.0f;
    }
    return;
  }
  const float* x = logits + static_cast<int64_t>(t) * stride;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, x[i]);
  m = BlockMax(m, scratch);
  float s = 0.0f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += expf(x[i] - m);
  s = BlockSum(s, scratch);
  if (threadIdx.x == 0) loss[t] = logf(s) + m - x[target];
}

}  // namespace

cudaError_t LaunchCrossEntropy(float* loss, const float* logits, const int32_t* targets, int tokens,
                               int vocab, int stride, DeviceError* err, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  CrossEntropyKernel<<<tokens, kThreads, 0, stream>>>(loss, logits, targets, vocab, stride, err);
  return cudaGetLastError();
}

}  // namespace ic::kernels::cuda
