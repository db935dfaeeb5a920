// Row top-k with the DESIGN.md §3 rule, deterministic for any k (no per-k storage):
//   1. scores map to 32-bit keys whose unsigned order is the preference order
//      (+inf > finite > −inf > NaN; −0 == +0 so that ties match float comparison);
//   2. a 4-pass radix select (8 bits a pass, shared-memory histogram) finds the k-th largest key `thr`
//      and how many of the keys equal to `thr` are needed;
//   3. an ordered compaction (block scan over position order) keeps every key > thr and the first
//      `need` keys == thr, i.e. ties go to the smaller position. Output positions are ascending.
// Few long rows (decode: one row per sequence over up to 256K keys) split each row over several blocks
// (RowTopkMultiBlock: the same radix passes with global histograms, then per-block counts and an ordered
// compaction offset by the blocks before), so one row no longer waits on a single SM; many rows (prefill
// tiles) keep one block per row. Both give the same positions in the same order.
// The row is read 5 times (L2-resident for the rows the indexer produces).
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

// Ordered compaction of positions [begin, end) of row x (block scan in position order): writes every key
// > thr, and keys == thr while fewer than `need` of them have been seen (eq_seen counts those before
// `begin`), to o[written…] — ties go to the smaller positions. Called by the whole block.
__device__ __forceinline__ void OrderedCompaction(const float* x, int begin, int end, uint32_t thr, uint32_t need,
                                                  uint32_t written, uint32_t eq_seen, int32_t* o,
                                                  uint32_t* warp_sums, uint32_t* s_total) {
  for (int start = begin; start < end; start += kThreads) {
    const int i = start + threadIdx.x;
    const uint32_t key = i < end ? SortKey(x[i]) : 0u;
    const bool gt = i < end && key > thr;
    const bool eq = i < end && key == thr;
    // Pack both counts (each ≤ kThreads < 2^16) into one scan.
    const uint32_t ex = BlockExclusiveScan((gt ? 1u : 0u) | (eq ? 0x10000u : 0u), warp_sums, s_total);
    const uint32_t total = *s_total;
    const uint32_t left = need > eq_seen ? need - eq_seen : 0u;
    const uint32_t gt_before = ex & 0xffffu, eq_before = ex >> 16;
    const uint32_t eq_taken_before = eq_before < left ? eq_before : left;
    if (gt || (eq && eq_before < left)) o[written + gt_before + eq_taken_before] = i;
    const uint32_t eq_total = total >> 16;
    written += (total & 0xffffu) + (eq_total < left ? eq_total : left);
    eq_seen += eq_total;
    __syncthreads();  // *s_total is rewritten by the next chunk
  }
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

  OrderedCompaction(x, 0, len, thr, need, 0u, 0u, o, warp_sums, &s_total);
}

// ---- Multi-block rows. Per row, in the scratch: state {len, prefix, mask, need} and hist[256]; per row
// and block: {gt, eq} counts. Blocks cover chunks of kChunk positions.
constexpr int kChunk = 8192;
constexpr int kMultiBlockMaxRows = 64;
constexpr int kMultiBlockMinLen = 32768;

struct RowState {
  uint32_t len, prefix, mask, need;
};

__global__ void MbInitKernel(int32_t* out, RowState* state, uint32_t* hist, const int32_t* lengths,
                             const int32_t* positions, int max_len, int k, DeviceError* err) {
  const int row = blockIdx.x;
  int len = lengths != nullptr ? lengths[row] : positions[row] + 1;
  if ((len < 0 || len > max_len) && threadIdx.x == 0) RecordError(err, kErrLength, row, len, max_len);
  len = len < 0 ? 0 : (len > max_len ? max_len : len);
  for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[row * 256 + i] = 0;
  if (threadIdx.x == 0) state[row] = RowState{static_cast<uint32_t>(len), 0u, 0u, static_cast<uint32_t>(k)};
  if (len <= k) {  // every valid key, no selection (DESIGN.md §3 short rows)
    int32_t* o = out + static_cast<int64_t>(row) * k;
    for (int i = threadIdx.x; i < k; i += blockDim.x) o[i] = i < len ? i : -1;
  }
}

__global__ void __launch_bounds__(kThreads) MbHistKernel(const float* scores, int64_t stride,
                                                         const RowState* state, uint32_t* hist, int k,
                                                         int shift) {
  __shared__ uint32_t h[256];
  const int row = blockIdx.y;
  const RowState st = state[row];
  if (st.len <= static_cast<uint32_t>(k)) return;
  const int begin = blockIdx.x * kChunk, end = min(begin + kChunk, static_cast<int>(st.len));
  if (begin >= end) return;
  for (int i = threadIdx.x; i < 256; i += blockDim.x) h[i] = 0;
  __syncthreads();
  const float* x = scores + static_cast<int64_t>(row) * stride;
  for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const uint32_t key = SortKey(x[i]);
    if ((key & st.mask) == st.prefix) atomicAdd(&h[(key >> shift) & 255u], 1u);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    if (h[i] != 0) atomicAdd(&hist[row * 256 + i], h[i]);
  }
}

// One block of 256 threads per row: the digit of this pass (the same scan as RowTopkKernel), then clears
// the histogram for the next pass.
__global__ void MbSelectKernel(RowState* state, uint32_t* hist, int k, int shift) {
  const int row = blockIdx.x;
  RowState st = state[row];
  if (st.len <= static_cast<uint32_t>(k)) return;
  if (threadIdx.x == 0) {
    uint32_t cum = 0;
    for (int b = 255; b >= 0; --b) {
      const uint32_t c = hist[row * 256 + b];
      if (cum + c >= st.need) {
        st.prefix |= static_cast<uint32_t>(b) << shift;
        st.need -= cum;
        break;
      }
      cum += c;
    }
    st.mask |= 255u << shift;
    state[row] = st;
  }
  __syncthreads();
  hist[row * 256 + threadIdx.x] = 0;
}

__global__ void __launch_bounds__(kThreads) MbCountKernel(const float* scores, int64_t stride,
                                                          const RowState* state, uint2* counts, int k) {
  __shared__ uint32_t s_gt, s_eq;
  const int row = blockIdx.y;
  const RowState st = state[row];
  if (st.len <= static_cast<uint32_t>(k)) return;
  if (threadIdx.x == 0) s_gt = s_eq = 0;
  __syncthreads();
  const int begin = blockIdx.x * kChunk, end = min(begin + kChunk, static_cast<int>(st.len));
  const float* x = scores + static_cast<int64_t>(row) * stride;
  uint32_t gt = 0, eq = 0;
  for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const uint32_t key = SortKey(x[i]);
    gt += key > st.prefix;
    eq += key == st.prefix;
  }
  if (gt != 0) atomicAdd(&s_gt, gt);
  if (eq != 0) atomicAdd(&s_eq, eq);
  __syncthreads();
  if (threadIdx.x == 0) counts[static_cast<int64_t>(row) * gridDim.x + blockIdx.x] = make_uint2(s_gt, s_eq);
}

// Ordered compaction of one chunk, starting at the output offset of the selected keys of the chunks
// before it; ties (keys == the k-th) go to the smallest positions across the whole row.
__global__ void __launch_bounds__(kThreads) MbWriteKernel(int32_t* out, const float* scores, int64_t stride,
                                                          const RowState* state, const uint2* counts, int k) {
  __shared__ uint32_t warp_sums[32];
  __shared__ uint32_t s_total, s_written, s_eq_before;
  const int row = blockIdx.y;
  const RowState st = state[row];
  if (st.len <= static_cast<uint32_t>(k)) return;
  const int begin = blockIdx.x * kChunk, end = min(begin + kChunk, static_cast<int>(st.len));
  if (begin >= end) return;
  if (threadIdx.x == 0) {
    uint32_t gt_before = 0, eq_before = 0;
    for (int b = 0; b < static_cast<int>(blockIdx.x); ++b) {
      const uint2 c = counts[static_cast<int64_t>(row) * gridDim.x + b];
      gt_before += c.x;
      eq_before += c.y;
    }
    s_written = gt_before + (eq_before < st.need ? eq_before : st.need);
    s_eq_before = eq_before;
  }
  __syncthreads();
  const uint32_t thr = st.prefix, need = st.need;
  const float* x = scores + static_cast<int64_t>(row) * stride;
  int32_t* o = out + static_cast<int64_t>(row) * k;
  OrderedCompaction(x, begin, end, thr, need, s_written, s_eq_before, o, warp_sums, &s_total);
}

bool UseMultiBlock(int rows, int max_len) { return rows <= kMultiBlockMaxRows && max_len >= kMultiBlockMinLen; }
int ChunksPerRow(int max_len) { return (max_len + kChunk - 1) / kChunk; }

}  // namespace

size_t RowTopkScratchBytes(int rows, int max_len) {
  if (!UseMultiBlock(rows, max_len)) return 0;
  return static_cast<size_t>(rows) * (sizeof(RowState) + 256 * sizeof(uint32_t) + ChunksPerRow(max_len) * sizeof(uint2));
}

cudaError_t LaunchRowTopk(int32_t* out, const float* scores, int64_t stride, const int32_t* lengths,
                          const int32_t* positions, int rows, int max_len, int k, DeviceError* err,
                          cudaStream_t stream, void* scratch, size_t scratch_bytes) {
  if (rows == 0 || k == 0) return cudaSuccess;
  const size_t need = RowTopkScratchBytes(rows, max_len);
  if (need == 0 || scratch == nullptr || scratch_bytes < need) {
    RowTopkKernel<<<rows, kThreads, 0, stream>>>(out, scores, stride, lengths, positions, max_len, k, err);
    return cudaGetLastError();
  }
  auto* state = static_cast<RowState*>(scratch);
  auto* hist = reinterpret_cast<uint32_t*>(state + rows);
  auto* counts = reinterpret_cast<uint2*>(hist + static_cast<size_t>(rows) * 256);
  const dim3 grid(ChunksPerRow(max_len), rows);
  MbInitKernel<<<rows, 256, 0, stream>>>(out, state, hist, lengths, positions, max_len, k, err);
  for (int shift = 24; shift >= 0; shift -= 8) {
    MbHistKernel<<<grid, kThreads, 0, stream>>>(scores, stride, state, hist, k, shift);
    MbSelectKernel<<<rows, 256, 0, stream>>>(state, hist, k, shift);
  }
  MbCountKernel<<<grid, kThreads, 0, stream>>>(scores, stride, state, counts, k);
  MbWriteKernel<<<grid, kThreads, 0, stream>>>(out, scores, stride, state, counts, k);
  return cudaGetLastError();
}

}  // namespace ic::kernels::cuda
