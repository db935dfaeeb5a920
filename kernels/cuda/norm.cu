// RMSNorm and LayerNorm: one block per row, two passes over the row (statistics, then output).
// Each thread writes only the elements it read, after the block reduction, so in-place is safe.
#include "kernels/cuda/common.cuh"

namespace ic::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void NormKernel(float* out, const float* in, const float* weight, const float* bias,
                           int dim, int in_stride, int out_stride, float eps, bool layer_norm) {
  __shared__ float scratch[32];
  const float* x = in + static_cast<int64_t>(blockIdx.x) * in_stride;
  float* y = out + static_cast<int64_t>(blockIdx.x) * out_stride;
  float mean = 0.0f;
  if (layer_norm) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) s += x[i];
    mean = BlockSum(s, scratch) / dim;
  }
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const float d = x[i] - mean;
    ss += d * d;
  }
  const float inv = rsqrtf(BlockSum(ss, scratch) / dim + eps);
  __syncthreads();  // every read of x (which may alias y) is done
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = (x[i] - mean) * inv;
    if (weight != nullptr) v *= weight[i];
    if (bias != nullptr) v += bias[i];
    y[i] = v;
  }
}

}  // namespace

cudaError_t LaunchNorm(float* out, const float* in, const float* weight, const float* bias, int rows,
                       int dim, int in_stride, int out_stride, float eps, bool layer_norm,
                       cudaStream_t stream) {
  if (rows == 0 || dim == 0) return cudaSuccess;
  NormKernel<<<rows, kThreads, 0, stream>>>(out, in, weight, bias, dim, in_stride, out_stride, eps,
                                            layer_norm);
  return cudaGetLastError();
}

}  // namespace ic::kernels::cuda
