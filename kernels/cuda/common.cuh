// Device helpers shared by the .cu files of the CUDA backend (no Abseil here).
#pragma once

#include <cstdint>

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

__device__ inline float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ inline float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum/max; every thread gets the result. `scratch` holds ≥ 32 floats; blockDim.x % 32 == 0.
__device__ inline float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0.0f;
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

inline unsigned Blocks(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > (1 << 30) ? (1 << 30) : b));
}

}  // namespace ic::kernels::cuda
