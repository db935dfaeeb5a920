// Elementwise and row-copy kernels: SiluMul, Copy2D, Scale2D, Embedding, CacheWrite, Gather/ScatterAdd.
// All are memory-bound grid-stride loops over [rows, cols]; one thread per element.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "kernels/cuda/common.cuh"

namespace ic::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void SiluMulKernel(float* out, const float* gate, const float* up, int tokens, int dim,
                              int gs, int us, int os) {
  const int64_t n = static_cast<int64_t>(tokens) * dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / dim, c = i % dim;
    const float g = gate[t * gs + c];
    out[t * os + c] = g / (1.0f + expf(-g)) * up[t * us + c];
  }
}

__global__ void Copy2DKernel(float* dst, const float* src, int rows, int cols, int ds, int ss,
                             bool accumulate) {
  const int64_t n = static_cast<int64_t>(rows) * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const float v = src[r * ss + c];
    if (accumulate) {
      dst[r * ds + c] += v;
    } else {
      dst[r * ds + c] = v;
    }
  }
}

__global__ void Scale2DKernel(float* c, int rows, int cols, int ld, int batch, int64_t stride,
                              float beta) {
  const int64_t per = static_cast<int64_t>(rows) * cols, n = per * batch;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / per, r = (i % per) / cols, col = i % cols;
    float* p = c + b * stride + r * ld + col;
    *p = beta == 0.0f ? 0.0f : beta * *p;
  }
}

// dst[b][r, c] = bf16(src[b·stride + r·ld + c]) into a dense [batch, rows, cols] buffer.
__global__ void CastToBf16Kernel(__nv_bfloat16* dst, const float* src, int rows, int cols, int ld,
                                 int batch, int64_t stride) {
  const int64_t per = static_cast<int64_t>(rows) * cols, n = per * batch;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / per, r = (i % per) / cols, col = i % cols;
    dst[i] = __float2bfloat16_rn(src[b * stride + r * ld + col]);
  }
}

// One warp per (row, 128-column block): amax, the power-of-two scale, 128 E4M3 bytes (4 per lane). Rows in
// [rows, rows_pad) are zero with scale 1 (cuBLASLt's FP8 GEMM wants the row count a multiple of 4).
// kDequant: instead of bytes and scales, the F32 values e4m3(x / s) · s into `out` (row stride out_ld; may
// be src itself: each thread reads its four values before it writes them).
template <bool kDequant>
__global__ void QuantizeFp8BlocksKernel(uint8_t* q, float* scales, float* out, int out_ld, const float* src, int rows,
                                        int rows_pad, int cols, int ld) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
  const int blocks = (cols + 127) / 128;
  if (warp >= static_cast<int64_t>(rows_pad) * blocks) return;
  const int r = static_cast<int>(warp / blocks), kb = static_cast<int>(warp % blocks);
  const int c0 = kb * 128 + lane * 4;
  float v[4];
  float amax = 0.0f;
  for (int i = 0; i < 4; ++i) {
    v[i] = r < rows && c0 + i < cols ? src[static_cast<int64_t>(r) * ld + c0 + i] : 0.0f;
    amax = fmaxf(amax, fabsf(v[i]));
  }
  amax = WarpMax(amax);
  const float s = Fp8Scale(amax), inv = 1.0f / s;  // s a power of two: x · (1/s) is x / s exactly
  if constexpr (kDequant) {
    float* dst = out + static_cast<int64_t>(r) * out_ld;
    for (int i = 0; i < 4; ++i) {
      if (r < rows && c0 + i < cols) {
        const __nv_fp8_storage_t b = __nv_cvt_float_to_fp8(v[i] * inv, __NV_SATFINITE, __NV_E4M3);
        dst[c0 + i] = __half2float(__half(__nv_cvt_fp8_to_halfraw(b, __NV_E4M3))) * s;
      }
    }
    return;
  }
  uint8_t* dst = q + static_cast<int64_t>(r) * cols;
  for (int i = 0; i < 4; ++i) {
    if (c0 + i < cols) dst[c0 + i] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(v[i] * inv, __NV_SATFINITE, __NV_E4M3));
  }
  if (lane == 0) scales[static_cast<int64_t>(kb) * rows_pad + r] = s;
}

__global__ void EmbeddingKernel(float* out, const float* table, const int32_t* ids, int tokens,
                                int dim, int vocab, DeviceError* err) {
  const int64_t n = static_cast<int64_t>(tokens) * dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / dim, c = i % dim;
    const int id = ids[t];
    if (id < 0 || id >= vocab) {
      if (c == 0) RecordError(err, kErrEmbeddingId, static_cast<int>(t), id, vocab);
      out[i] = 0.0f;
    } else {
      out[i] = table[static_cast<int64_t>(id) * dim + c];
    }
  }
}

// T = float (F32 cache) or __nv_bfloat16 (BF16 index-K cache: round to nearest even).
template <typename T>
__global__ void CacheWriteKernel(T* cache, const float* src, const int32_t* slots, int tokens,
                                 int dim, int cs, int ss, int64_t num_slots, DeviceError* err) {
  const int64_t n = static_cast<int64_t>(tokens) * dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / dim, c = i % dim;
    const int64_t slot = slots[t];
    if (slot < 0) {
      if (slot != -1 && c == 0) {
        RecordError(err, kErrCacheSlot, static_cast<int>(t), static_cast<int>(slot),
                    static_cast<int>(num_slots));
      }
      continue;
    }
    if (slot >= num_slots) {
      if (c == 0) {
        RecordError(err, kErrCacheSlot, static_cast<int>(t), static_cast<int>(slot),
                    static_cast<int>(num_slots));
      }
      continue;
    }
    if constexpr (sizeof(T) == 2) {
      cache[slot * cs + c] = __float2bfloat16_rn(src[t * ss + c]);
    } else {
      cache[slot * cs + c] = src[t * ss + c];
    }
  }
}

__global__ void GatherRowsKernel(float* out, const float* in, const int32_t* rows, int count,
                                 int dim, DeviceError* err) {
  const int64_t n = static_cast<int64_t>(count) * dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / dim, c = i % dim;
    const int64_t src = rows[r];
    if (src < 0 && c == 0) RecordError(err, kErrRow, static_cast<int>(r), static_cast<int>(src), 0);
    out[i] = src < 0 ? 0.0f : in[src * dim + c];
  }
}

__global__ void ScatterAddRowsKernel(float* out, const float* in, const int32_t* rows,
                                     const float* scale, int count, int dim, DeviceError* err) {
  const int64_t n = static_cast<int64_t>(count) * dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / dim, c = i % dim;
    const int64_t dst = rows[r];
    if (dst < 0) {
      if (c == 0) RecordError(err, kErrRow, static_cast<int>(r), static_cast<int>(dst), 0);
      continue;
    }
    const float s = scale != nullptr ? scale[r] : 1.0f;
    atomicAdd(out + dst * dim + c, s * in[i]);
  }
}

unsigned GridFor(int64_t n) {
  // Enough blocks to fill an H200 several times over; the loops stride beyond that.
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 132 * 32 ? 132 * 32 : b));
}

}  // namespace

cudaError_t LaunchSiluMul(float* out, const float* gate, const float* up, int tokens, int dim,
                          int gate_stride, int up_stride, int out_stride, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(tokens) * dim;
  if (n == 0) return cudaSuccess;
  SiluMulKernel<<<GridFor(n), kThreads, 0, stream>>>(out, gate, up, tokens, dim, gate_stride,
                                                      up_stride, out_stride);
  return cudaGetLastError();
}

cudaError_t LaunchCopy2D(float* dst, const float* src, int rows, int cols, int dst_stride,
                         int src_stride, bool accumulate, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(rows) * cols;
  if (n == 0) return cudaSuccess;
  Copy2DKernel<<<GridFor(n), kThreads, 0, stream>>>(dst, src, rows, cols, dst_stride, src_stride,
                                                     accumulate);
  return cudaGetLastError();
}

cudaError_t LaunchScale2D(float* c, int rows, int cols, int ld, int batch, int64_t stride, float beta,
                          cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(rows) * cols * batch;
  if (n == 0 || beta == 1.0f) return cudaSuccess;
  Scale2DKernel<<<GridFor(n), kThreads, 0, stream>>>(c, rows, cols, ld, batch, stride, beta);
  return cudaGetLastError();
}

cudaError_t LaunchCastToBf16(uint16_t* dst, const float* src, int rows, int cols, int ld, int batch,
                             int64_t stride, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(rows) * cols * batch;
  if (n == 0) return cudaSuccess;
  CastToBf16Kernel<<<GridFor(n), kThreads, 0, stream>>>(reinterpret_cast<__nv_bfloat16*>(dst), src, rows,
                                                         cols, ld, batch, stride);
  return cudaGetLastError();
}

cudaError_t LaunchQuantizeFp8Blocks(uint8_t* q, float* scales, const float* src, int rows, int rows_pad, int cols,
                                    int ld, cudaStream_t stream) {
  const int64_t warps = static_cast<int64_t>(rows_pad) * ((cols + 127) / 128);
  if (warps == 0) return cudaSuccess;
  QuantizeFp8BlocksKernel<false><<<static_cast<unsigned>((warps * 32 + kThreads - 1) / kThreads), kThreads, 0,
                                    stream>>>(q, scales, nullptr, 0, src, rows, rows_pad, cols, ld);
  return cudaGetLastError();
}

cudaError_t LaunchRoundFp8Blocks(float* out, int out_ld, const float* src, int rows, int cols, int ld,
                                 cudaStream_t stream) {
  const int64_t warps = static_cast<int64_t>(rows) * ((cols + 127) / 128);
  if (warps == 0) return cudaSuccess;
  QuantizeFp8BlocksKernel<true><<<static_cast<unsigned>((warps * 32 + kThreads - 1) / kThreads), kThreads, 0,
                                   stream>>>(nullptr, nullptr, out, out_ld, src, rows, rows, cols, ld);
  return cudaGetLastError();
}

cudaError_t LaunchEmbedding(float* out, const float* table, const int32_t* ids, int tokens, int dim,
                            int vocab, DeviceError* err, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(tokens) * dim;
  if (n == 0) return cudaSuccess;
  EmbeddingKernel<<<GridFor(n), kThreads, 0, stream>>>(out, table, ids, tokens, dim, vocab, err);
  return cudaGetLastError();
}

cudaError_t LaunchCacheWrite(float* cache, const float* src, const int32_t* slots, int tokens, int dim,
                             int cache_stride, int src_stride, int64_t num_slots, DeviceError* err,
                             cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(tokens) * dim;
  if (n == 0) return cudaSuccess;
  CacheWriteKernel<float><<<GridFor(n), kThreads, 0, stream>>>(cache, src, slots, tokens, dim, cache_stride,
                                                                src_stride, num_slots, err);
  return cudaGetLastError();
}

// One warp per token: amax over the row, scale = amax / 448, E4M3 (round to nearest even, saturating).
__global__ void CacheWriteFp8Kernel(uint8_t* cache, float* scale, const float* src, const int32_t* slots, int tokens,
                                    int dim, int cs, int ss, int64_t num_slots, DeviceError* err) {
  const int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (t >= tokens) return;
  const int64_t slot = slots[t];
  if (slot < 0 || slot >= num_slots) {
    if (slot != -1 && lane == 0) {
      RecordError(err, kErrCacheSlot, t, static_cast<int>(slot), static_cast<int>(num_slots));
    }
    return;
  }
  const float* row = src + static_cast<int64_t>(t) * ss;
  float amax = 0.f;
  for (int c = lane; c < dim; c += 32) amax = fmaxf(amax, fabsf(row[c]));
  amax = WarpMax(amax);
  const float s = Fp8Scale(amax);
  uint8_t* dst = cache + slot * cs;
  for (int c = lane; c < dim; c += 32) {
    dst[c] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(row[c] / s, __NV_SATFINITE, __NV_E4M3));
  }
  if (lane == 0) scale[slot] = s;
}

cudaError_t LaunchCacheWriteFp8(uint8_t* cache, float* scale, const float* src, const int32_t* slots, int tokens,
                                int dim, int cache_stride, int src_stride, int64_t num_slots, DeviceError* err,
                                cudaStream_t stream) {
  if (tokens == 0 || dim == 0) return cudaSuccess;
  CacheWriteFp8Kernel<<<(tokens + 7) / 8, 256, 0, stream>>>(cache, scale, src, slots, tokens, dim, cache_stride,
                                                             src_stride, num_slots, err);
  return cudaGetLastError();
}

// One block per row; the same butterflies in the same order as the CPU backend (bitwise equal results).
__global__ void HadamardKernel(float* x, int dim, int stride, float norm) {
  extern __shared__ float row_s[];
  float* row = x + static_cast<int64_t>(blockIdx.x) * stride;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) row_s[i] = row[i];
  __syncthreads();
  for (int h = 1; h < dim; h *= 2) {
    for (int p = threadIdx.x; p < dim / 2; p += blockDim.x) {
      const int j = (p / h) * 2 * h + p % h;
      const float u = row_s[j], v = row_s[j + h];
      row_s[j] = u + v;
      row_s[j + h] = u - v;
    }
    __syncthreads();
  }
  for (int i = threadIdx.x; i < dim; i += blockDim.x) row[i] = row_s[i] * norm;
}

cudaError_t LaunchHadamard(float* x, int rows, int dim, int stride, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int threads = dim / 2 < 32 ? 32 : (dim / 2 > 512 ? 512 : dim / 2);
  HadamardKernel<<<rows, threads, sizeof(float) * dim, stream>>>(x, dim, stride, 1.0f / sqrtf(static_cast<float>(dim)));
  return cudaGetLastError();
}

cudaError_t LaunchCacheWriteBf16(uint16_t* cache, const float* src, const int32_t* slots, int tokens, int dim,
                                 int cache_stride, int src_stride, int64_t num_slots, DeviceError* err,
                                 cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(tokens) * dim;
  if (n == 0) return cudaSuccess;
  CacheWriteKernel<__nv_bfloat16><<<GridFor(n), kThreads, 0, stream>>>(
      reinterpret_cast<__nv_bfloat16*>(cache), src, slots, tokens, dim, cache_stride, src_stride, num_slots, err);
  return cudaGetLastError();
}

cudaError_t LaunchGatherRows(float* out, const float* in, const int32_t* rows, int count, int dim,
                             DeviceError* err, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(count) * dim;
  if (n == 0) return cudaSuccess;
  GatherRowsKernel<<<GridFor(n), kThreads, 0, stream>>>(out, in, rows, count, dim, err);
  return cudaGetLastError();
}

cudaError_t LaunchScatterAddRows(float* out, const float* in, const int32_t* rows, const float* scale,
                                 int count, int dim, DeviceError* err, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(count) * dim;
  if (n == 0) return cudaSuccess;
  ScatterAddRowsKernel<<<GridFor(n), kThreads, 0, stream>>>(out, in, rows, scale, count, dim, err);
  return cudaGetLastError();
}

}  // namespace ic::kernels::cuda
