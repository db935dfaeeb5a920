// Device helpers shared by the .cu files of the CUDA backend (no Abseil here).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_kernels.h"

namespace ic::kernels::cuda {

// Records the first data-dependent error (later ones are dropped).
__device__ inline void RecordError(DeviceError* err, int code, int index, int value, int limit) {
  if (err == nullptr) return;
  if (atomicCAS(&err->code, 0, -1) == 0) {
    err->index = index;
    err->value = value;
    err->limit = limit;
    __threadfence();
    atomicExch(&err->code, code);
  }
}

template <typename T>  // float or double
__device__ inline T WarpSum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ inline float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum/max; every thread gets the result. `scratch` holds ≥ 32 values; blockDim.x % 32 == 0.
template <typename T>  // float or double
__device__ inline T BlockSum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : T(0);
  return WarpSum(v);
}

__device__ inline float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : -INFINITY;
  return WarpMax(v);
}

// Paged-cache slot of position p of sequence `seq`, or −1 (recorded) when the tables are broken.
__device__ inline int64_t CacheSlot(const DevLayout& l, int seq, int p, int64_t num_slots, int token,
                                    DeviceError* err) {
  const int blk = p / l.block_size;
  if (seq < 0 || seq >= l.num_seqs || blk >= l.max_blocks_per_seq) {
    RecordError(err, kErrPosition, token, p, l.max_blocks_per_seq * l.block_size);
    return -1;
  }
  const int64_t b = l.block_tables[static_cast<int64_t>(seq) * l.max_blocks_per_seq + blk];
  const int64_t slot = b * l.block_size + p % l.block_size;
  if (b < 0 || slot >= num_slots) {
    RecordError(err, kErrBlockTable, token, static_cast<int>(b), static_cast<int>(num_slots));
    return -1;
  }
  return slot;
}

// The FP8 E4M3 scale of a row with largest magnitude amax: amax / 448 rounded up to a power of two, 1 for 0
// (the CPU backend's internal::Fp8Scale, bit for bit).
__device__ inline float Fp8Scale(float amax) {
  if (!(amax > 0.0f)) return 1.0f;
  if (isinf(amax)) return amax;
  int e = 0;
  const float m = frexpf(amax / 448.0f, &e);
  return ldexpf(1.0f, m == 0.5f ? e - 1 : e);
}

// ---- Tensor-core building blocks (sm_80+; the indexer and sparse attention kernels) ----------------

// x rounded to the nearest BF16 value (ties to even), kept in F32: the rounding every BF16 path applies.
__device__ __forceinline__ float RoundBf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// The F32 value of a BF16 bit pattern (exact).
__device__ __forceinline__ float Bf16BitsToFloat(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }

// Two floats as a BF16 pair (round to nearest even), the lower index in the low half.
__device__ inline uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// c[0..3] += A·B, mma.sync m16n8k16 BF16 → F32. Fragment layouts (PTX ISA): a0/a1 rows g/g+8, cols
// 2t..2t+1; a2/a3 the same rows, cols 8+2t..; b0 rows (k) 2t..2t+1 of col g, b1 rows 8+2t..; c0,c1 row g,
// cols 2t, 2t+1; c2,c3 row g+8 (g = lane / 4, t = lane % 4).
__device__ inline void MmaBf16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8×8 b16 matrices from shared memory; lanes 8i..8i+7 give the row addresses of matrix i. With rows
// (lane & 7) + ((lane >> 3) & 1)·8 and column offset (lane >> 4)·8 the result is an mma A fragment.
__device__ inline void LdMatrixX4(uint32_t* r, const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// The same, transposed: from row-major [k][n] tiles, B fragments (b0, b1 of two 8-column tiles).
__device__ inline void LdMatrixX4Trans(uint32_t* r, const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c[0..3] += A·B, mma.sync m16n8k32 E4M3 → F32 (the same fragment pattern, 4 bytes per register: a0 row g,
// k 4t..4t+3; a2 k 16+4t..; b0 k 4t..4t+3 of col g, b1 k 16+4t..).
__device__ inline void MmaFp8(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// GemmArgs::b_fp8's arithmetic for one warp step over 512 columns: this lane's 16 consecutive activations
// `xs` and weights `wf` (E4M3 values, unscaled), `valid` false past the row's end. The 8 lanes of one
// 128-column block share its amax (3 shuffles; every lane of the warp must call), the activations are
// quantised with its power-of-two scale; returns this lane's Σ q_a·w times the activation scale (the
// caller applies the weight's block scale).
__device__ inline float Fp8BlockDot(const float xs[16], const float wf[16], bool valid) {
  float amax = 0.0f;
  if (valid) {
#pragma unroll
    for (int q = 0; q < 16; ++q) amax = fmaxf(amax, fabsf(xs[q]));
  }
  for (int o = 1; o < 8; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if (!valid) return 0.0f;
  const float sa = Fp8Scale(amax), inv = 1.0f / sa;  // a power of two: x · (1/s) is x / s exactly
  float dot = 0.0f;
#pragma unroll
  for (int q = 0; q < 16; ++q) {
    const __nv_fp8_storage_t qa = __nv_cvt_float_to_fp8(xs[q] * inv, __NV_SATFINITE, __NV_E4M3);
    dot = fmaf(__half2float(__half(__nv_cvt_fp8_to_halfraw(qa, __NV_E4M3))), wf[q], dot);
  }
  return dot * sa;
}

// The 16 E4M3 bytes at `w` (16-byte aligned) as floats.
__device__ inline void LoadFp8x16(const uint8_t* w, float wf[16]) {
  const uint4 packed = *reinterpret_cast<const uint4*>(w);
  const __nv_fp8_storage_t* wv = reinterpret_cast<const __nv_fp8_storage_t*>(&packed);
#pragma unroll
  for (int q = 0; q < 16; ++q) wf[q] = __half2float(__half(__nv_cvt_fp8_to_halfraw(wv[q], __NV_E4M3)));
}

// 16 floats at `x` (16-byte aligned).
__device__ inline void LoadF32x16(const float* x, float xs[16]) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const float4 v = *reinterpret_cast<const float4*>(x + 4 * q);
    xs[4 * q] = v.x, xs[4 * q + 1] = v.y, xs[4 * q + 2] = v.z, xs[4 * q + 3] = v.w;
  }
}

// Four floats as E4M3 (round to nearest even, saturating), the first in the lowest byte.
__device__ inline uint32_t PackFp8x4(float x0, float x1, float x2, float x3) {
  const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(x0, x1), __NV_SATFINITE, __NV_E4M3);
  const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(x2, x3), __NV_SATFINITE, __NV_E4M3);
  return lo | (hi << 16);
}

// ---- Staging cache rows into shared memory (all NTHREADS threads of the block take part) -----------

// dst[r·dst_stride + d] = BF16(src[slots[r]·src_stride + d]) for r < ROWS, d < D (D % 4 == 0; 16-byte
// aligned source rows), zeros where slots[r] < 0. float4 loads, 8-byte stores.
template <int ROWS, int D, int NTHREADS>
__device__ inline void StageRowsF32AsBf16(__nv_bfloat16* dst, int dst_stride, const float* src, int64_t src_stride,
                                          const int64_t* slots) {
  constexpr int D4 = D / 4;
#pragma unroll 4
  for (int i = threadIdx.x; i < ROWS * D4; i += NTHREADS) {
    const int row = i / D4, d4 = i % D4;
    const int64_t slot = slots[row];
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (slot >= 0) v = __ldg(reinterpret_cast<const float4*>(src + slot * src_stride) + d4);
    uint2 packed;
    packed.x = PackBf16(v.x, v.y);
    packed.y = PackBf16(v.z, v.w);
    *reinterpret_cast<uint2*>(dst + row * dst_stride + 4 * d4) = packed;
  }
}

// The first ROW_BYTES bytes (a multiple of 16) of rows slots[r] of `src` (row stride src_stride bytes) to
// dst (row stride dst_stride bytes) with cp.async, zeros where slots[r] < 0; returns once they landed.
template <int ROWS, int ROW_BYTES, int NTHREADS>
__device__ inline void StageRowsAsync(void* dst, int dst_stride, const void* src, int64_t src_stride,
                                      const int64_t* slots) {
  constexpr int CHUNKS = ROW_BYTES / 16;
#pragma unroll 4
  for (int i = threadIdx.x; i < ROWS * CHUNKS; i += NTHREADS) {
    const int row = i / CHUNKS, chunk = i % CHUNKS;
    const int64_t slot = slots[row];
    char* d = static_cast<char*>(dst) + row * dst_stride + 16 * chunk;
    if (slot < 0) {
      *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
    } else {
      __pipeline_memcpy_async(d, static_cast<const char*>(src) + slot * src_stride + 16 * chunk, 16);
    }
  }
  __pipeline_commit();
  __pipeline_wait_prior(0);
}

inline unsigned Blocks(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > (1 << 30) ? (1 << 30) : b));
}

}  // namespace ic::kernels::cuda
