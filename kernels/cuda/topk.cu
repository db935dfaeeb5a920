// Row top-k with the DESIGN.md §3 rule, deterministic for any k (no per-k storage):
//   1. scores map to 32-bit keys whose unsigned order is the preference order
//      (+inf > finite > −inf > NaN; −0 == +0 so that ties match float comparison);
//   2. a 4-pass radix select (8 bits a pass, shared-memory histogram) finds the k-th largest key `thr`
//      and how many of the keys equal to `thr` are needed;
//   3. an ordered compaction (block scan over position order) keeps every key > thr and the first
//      `need` keys == thr, i.e. ties go to the smaller position. Output positions are ascending.
// One block per row; the row is read 5 times (L2-resident for the rows the indexer produces).
#include "kernels/cuda/common.cuh"

namespace ic::kernels::cuda {
namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ uint32_t SortKey(float f) {
  if (isnan(f)) return 0u;
  uint32_t u = __float_as_uint(f);
  if (u == 0x80000000u) u = 0u;  // −0 ties with +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive block scan of v (blockDim.x == kThreads); *total receives the block sum.
__device__ __forceinline__ uint32_t BlockExclusiveScan(uint32_t v, uint32_t* warp_sums,
                                                       uint32_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  if (lane == 31) warp_sums[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    uint32_t w = lane < kThreads / 32 ? warp_sums[lane] : 0u;
    uint32_t wi = w;
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t n = __shfl_up_sync(0xffffffffu, wi, o);
      if (lane >= o) wi += n;
    }
    if (lane < kThreads / 32) warp_sums[lane] = wi - w;  // exclusive prefix of warps
    if (lane == 31) *total = wi;
  }
  __syncthreads();
  const uint32_t r = warp_sums[warp] + inc - v;
  __syncthreads();  // warp_sums is reused by the next call
  return r;
}

__global__ void __launch_bounds__(kThreads) RowTopkKernel(int32_t* out, const float* scores,
                                                          int64_t stride, const int32_t* lengths,
                                                          const int32_t* positions, int max_len,
                                                          int k, DeviceError* err) {
  __shared__ uint32_t hist[256];
  __shared__ uint32_t warp_sums[32];
  __shared__ uint32_t s_prefix, s_need, s_total;
  const int row = blockIdx.x;
  int len = lengths != nullptr ? lengths[row] : positions[row] + 1;
  if ((len < 0 || len > max_len) && threadIdx.x == 0) RecordError(err, kErrLength, row, len, max_len);
  len = len < 0 ? 0 : (len > max_len ? max_len : len);
  int32_t* o = out + static_cast<int64_t>(row) * k;
  if (len <= k) {
    for (int i = threadIdx.x; i < k; i += blockDim.x) o[i] = i < len ? i : -1;
    return;
  }
  const float* x = scores + static_cast<int64_t>(row) * stride;

  uint32_t prefix = 0, mask = 0, need = static_cast<uint32_t>(k);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < len; i += blockDim.x) {
      const uint32_t key = SortKey(x[i]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint32_t cum = 0;
      for (int b = 255; b >= 0; --b) {
        if (cum + hist[b] >= need) {
          s_prefix = prefix | (static_cast<uint32_t>(b) << shift);
          s_need = need - cum;
          break;
        }
        cum += hist[b];
      }
    }
    __syncthreads();
    prefix = s_prefix;
    need = s_need;
    mask |= 255u << shift;
  }
  const uint32_t thr = prefix;  // the k-th largest key; `need` keys equal to it are selected

  uint32_t written = 0, eq_seen = 0;
  for (int start = 0; start < len; start += kThreads) {
    const int i = start + threadIdx.x;
    const uint32_t key = i < len ? SortKey(x[i]) : 0u;
    const bool gt = i < len && key > thr;
    const bool eq = i < len && key == thr;
    // Pack both counts (each ≤ kThreads < 2^16) into one scan.
    const uint32_t ex = BlockExclusiveScan((gt ? 1u : 0u) | (eq ? 0x10000u : 0u), warp_sums, &s_total);
    const uint32_t total = s_total;
    const uint32_t left = need > eq_seen ? need - eq_seen : 0u;
    const uint32_t gt_before = ex & 0xffffu, eq_before = ex >> 16;
    const uint32_t eq_taken_before = eq_before < left ? eq_before : left;
    if (gt || (eq && eq_before < left)) o[written + gt_before + eq_taken_before] = i;
    const uint32_t eq_total = total >> 16;
    written += (total & 0xffffu) + (eq_total < left ? eq_total : left);
    eq_seen += eq_total;
    __syncthreads();  // s_total is rewritten by the next chunk
  }
}

}  // namespace

cudaError_t LaunchRowTopk(int32_t* out, const float* scores, int64_t stride, const int32_t* lengths,
                          const int32_t* positions, int rows, int max_len, int k, DeviceError* err,
                          cudaStream_t stream) {
  if (rows == 0 || k == 0) return cudaSuccess;
  RowTopkKernel<<<rows, kThreads, 0, stream>>>(out, scores, stride, lengths, positions, max_len, k, err);
  return cudaGetLastError();
}

}  // namespace ic::kernels::cuda
