// Few-row GEMM with BF16 weights (decode): C[m, n] = alpha · bf16(A)[m, k] · Bᵀ + beta · C for m ≤ 8 and
// an HF Linear weight B [n, k] in BF16. cuBLASLt at m = 1 reads a 2048 × 2048 BF16 weight at ~7% of HBM
// (25 µs) and needs a separate launch to cast A; here one warp owns one output column, reads its weight row
// once (16-byte loads of 8 BF16 when rows are aligned) and applies it to all m rows of A, rounding A to
// BF16 as it goes (GemmArgs::b_bf16's semantics), F32 accumulation, a warp-shuffle sum. Memory-bound.
// The FP8 variant (GemmArgs::b_fp8) reads 16 weight bytes per lane per step and quantises A's 128-column
// blocks on the fly: the eight lanes that share a block reduce its amax with three shuffles, so A needs no
// separate quantisation launch and the weight is read once, at one byte per element.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "kernels/cuda/common.cuh"

namespace ic::kernels::cuda {
namespace {

constexpr int kWarps = 8;

// The warp's column: C[i, col] = alpha · Σ_lanes acc[i] + beta · C[i, col] (beta 0: C not read).
template <int M>
__device__ __forceinline__ void StoreColumn(const float (&acc)[M], float* c, int m, int ldc, int col, int lane,
                                            float alpha, float beta) {
#pragma unroll
  for (int i = 0; i < M; ++i) {
    if (i < m) {
      const float s = WarpSum(acc[i]);
      if (lane == 0) {
        float* out = c + static_cast<int64_t>(i) * ldc + col;
        *out = beta == 0.0f ? alpha * s : alpha * s + beta * *out;
      }
    }
  }
}

template <int M>
__global__ void __launch_bounds__(kWarps * 32) GemvBf16Kernel(float* c, const float* a, const uint16_t* b, int m,
                                                              int n, int k, int lda, int ldb, int ldc, float alpha,
                                                              float beta, bool vec) {
  const int col = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (col >= n) return;
  const uint16_t* w = b + static_cast<int64_t>(col) * ldb;
  float acc[M];
#pragma unroll
  for (int i = 0; i < M; ++i) acc[i] = 0.0f;
  if (vec) {  // k % 8 == 0, and every row of A and B 16-byte aligned (checked by the launcher)
#pragma unroll 2
    for (int kk = lane * 8; kk < k; kk += 32 * 8) {
      const uint4 packed = *reinterpret_cast<const uint4*>(w + kk);
      const uint16_t* wv = reinterpret_cast<const uint16_t*>(&packed);
      float wf[8];
#pragma unroll
      for (int q = 0; q < 8; ++q) wf[q] = Bf16BitsToFloat(wv[q]);
#pragma unroll
      for (int i = 0; i < M; ++i) {
        if (i < m) {
          const float* ar = a + static_cast<int64_t>(i) * lda + kk;
          const float4 x0 = *reinterpret_cast<const float4*>(ar);
          const float4 x1 = *reinterpret_cast<const float4*>(ar + 4);
          const float xs[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
          for (int q = 0; q < 8; ++q) acc[i] = fmaf(RoundBf16(xs[q]), wf[q], acc[i]);
        }
      }
    }
  } else {
    for (int kk = lane; kk < k; kk += 32) {
      const float wf = Bf16BitsToFloat(w[kk]);
#pragma unroll
      for (int i = 0; i < M; ++i) {
        if (i < m) acc[i] = fmaf(RoundBf16(a[static_cast<int64_t>(i) * lda + kk]), wf, acc[i]);
      }
    }
  }
  StoreColumn<M>(acc, c, m, ldc, col, lane, alpha, beta);
}

template <int M>
__global__ void __launch_bounds__(kWarps * 32) GemvFp8Kernel(float* c, const float* a, const uint8_t* b,
                                                             const float* b_scale, int scale_ld, int m, int n, int k,
                                                             int lda, int ldb, int ldc, float alpha, float beta) {
  const int col = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (col >= n) return;  // whole warps leave together: the shuffles below see all 32 lanes
  const uint8_t* w = b + static_cast<int64_t>(col) * ldb;
  const float* ws = b_scale + static_cast<int64_t>(col / 128) * scale_ld;
  float acc[M];
#pragma unroll
  for (int i = 0; i < M; ++i) acc[i] = 0.0f;
  for (int k0 = 0; k0 < k; k0 += 32 * 16) {
    const int kk = k0 + lane * 16;  // this lane's 16 columns, inside block kk / 128 (8 lanes per block)
    const bool valid = kk < k;      // k % 16 == 0: a lane's 16 columns are all valid or all not
    float wf[16], xs[16];
    if (valid) LoadFp8x16(w + kk, wf);
    const float sb = valid ? ws[kk / 128] : 0.0f;
#pragma unroll
    for (int i = 0; i < M; ++i) {
      if (i < m) {
        if (valid) LoadF32x16(a + static_cast<int64_t>(i) * lda + kk, xs);
        acc[i] = fmaf(Fp8BlockDot(xs, wf, valid), sb, acc[i]);
      }
    }
  }
  StoreColumn<M>(acc, c, m, ldc, col, lane, alpha, beta);
}

}  // namespace

bool GemvFp8Supported(const float* a, const uint8_t* b, int k, int lda, int ldb) {
  return k % 16 == 0 && lda % 4 == 0 && ldb % 16 == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(b) % 16 == 0;
}

cudaError_t LaunchGemvFp8(float* c, const float* a, const uint8_t* b, const float* b_scale, int scale_ld, int m,
                          int n, int k, int lda, int ldb, int ldc, float alpha, float beta, cudaStream_t stream) {
  if (m == 0 || n == 0) return cudaSuccess;
  const dim3 grid((n + kWarps - 1) / kWarps), block(kWarps * 32);
  if (m <= 1) {
    GemvFp8Kernel<1><<<grid, block, 0, stream>>>(c, a, b, b_scale, scale_ld, m, n, k, lda, ldb, ldc, alpha, beta);
  } else if (m <= 4) {
    GemvFp8Kernel<4><<<grid, block, 0, stream>>>(c, a, b, b_scale, scale_ld, m, n, k, lda, ldb, ldc, alpha, beta);
  } else {
    GemvFp8Kernel<kGemvBf16MaxRows><<<grid, block, 0, stream>>>(c, a, b, b_scale, scale_ld, m, n, k, lda, ldb, ldc,
                                                                alpha, beta);
  }
  return cudaGetLastError();
}

cudaError_t LaunchGemvBf16(float* c, const float* a, const uint16_t* b, int m, int n, int k, int lda, int ldb,
                           int ldc, float alpha, float beta, cudaStream_t stream) {
  if (m == 0 || n == 0) return cudaSuccess;
  const bool vec = k % 8 == 0 && lda % 4 == 0 && ldb % 8 == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(b) % 16 == 0;
  const dim3 grid((n + kWarps - 1) / kWarps), block(kWarps * 32);
  if (m <= 1) {
    GemvBf16Kernel<1><<<grid, block, 0, stream>>>(c, a, b, m, n, k, lda, ldb, ldc, alpha, beta, vec);
  } else if (m <= 4) {
    GemvBf16Kernel<4><<<grid, block, 0, stream>>>(c, a, b, m, n, k, lda, ldb, ldc, alpha, beta, vec);
  } else {
    GemvBf16Kernel<kGemvBf16MaxRows><<<grid, block, 0, stream>>>(c, a, b, m, n, k, lda, ldb, ldc, alpha, beta, vec);
  }
  return cudaGetLastError();
}

}  // namespace ic::kernels::cuda
