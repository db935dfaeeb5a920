// Lightning-indexer scores over the paged index-K cache (DeepSeek-V3.2 report, eq. 1):
//   I[t, s] = Σ_j w[t, j] · ReLU(q[t, j] · k[s]),  s ≤ pos(t).
// The backend processes query tiles: this kernel fills a [rows, max_len] slice of a workspace, and
// RowTopk (topk.cu) selects from it, so the L×L score matrix is never materialised whole.
//
// Block (kKeys threads) = one query token × kKeys consecutive keys; q[t] (heads × head_dim) and the keys
// are staged in shared memory and each thread owns one key. Two variants, same arithmetic order (the
// dot product runs over d in order with fmaf; heads are summed in ascending order):
//   * IndexerScoresFast<H> (H ∈ {16, 32, 64}, head_dim % 4 == 0, 16-byte aligned rows): keys stored
//     [key, head_dim + 4] (the pad makes the per-thread float4 reads conflict-free), all H dot products
//     accumulate in registers, q read as broadcast float4 → 4 FMAs per shared load;
//   * IndexerScoresKernel (any shape): keys transposed [head_dim, kKeys + 1], 4 heads at a time.
#include <cuda_pipeline.h>

#include "kernels/cuda/common.cuh"

namespace ic::kernels::cuda {
namespace {

constexpr int kKeys = 128;

__global__ void __launch_bounds__(kKeys) IndexerScoresKernel(float* ws, IndexerParams p, int t0,
                                                             int max_len, bool all_rows,
                                                             DeviceError* err) {
  extern __shared__ int64_t smem_i64[];
  const int H = p.heads, D = p.head_dim;
  int64_t* slots = smem_i64;                            // [kKeys]
  float* qs = reinterpret_cast<float*>(slots + kKeys);  // [H, D]
  float* ks = qs + H * D;                               // [D, kKeys + 1]
  const int row = blockIdx.y;
  const int t = t0 + row;
  const int pos = p.layout.token_pos[t];
  if (pos < 0 || pos + 1 > max_len) {
    if (blockIdx.x == 0 && threadIdx.x == 0) RecordError(err, kErrPosition, t, pos, max_len);
  }
  const int len = pos + 1 < max_len ? pos + 1 : max_len;
  if (!all_rows && pos + 1 <= p.k) return;
  const int s0 = blockIdx.x * kKeys;
  if (s0 >= len) return;
  const int nk = len - s0 < kKeys ? len - s0 : kKeys;
  const int seq = p.layout.token_seq[t];

  const float* qt = p.q + static_cast<int64_t>(t) * H * D;
  for (int i = threadIdx.x; i < H * D; i += kKeys) qs[i] = qt[i];
  if (threadIdx.x < nk) {
    slots[threadIdx.x] = CacheSlot(p.layout, seq, s0 + threadIdx.x, p.num_slots, t, err);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nk * D; i += kKeys) {
    const int key = i / D, d = i % D;
    const int64_t slot = slots[key];
    ks[d * (kKeys + 1) + key] = slot < 0 ? 0.0f : p.k_cache[slot * p.k_stride + d];
  }
  __syncthreads();
  if (threadIdx.x >= nk) return;

  const float* wt = p.w + static_cast<int64_t>(t) * H;
  const float* kcol = ks + threadIdx.x;
  float score = 0.0f;
  int j = 0;
  for (; j + 4 <= H; j += 4) {
    const float* q0 = qs + j * D;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma unroll 4
    for (int d = 0; d < D; ++d) {
      const float kv = kcol[d * (kKeys + 1)];
      a0 = fmaf(q0[d], kv, a0);
      a1 = fmaf(q0[D + d], kv, a1);
      a2 = fmaf(q0[2 * D + d], kv, a2);
      a3 = fmaf(q0[3 * D + d], kv, a3);
    }
    score += wt[j] * fmaxf(a0, 0.f);
    score += wt[j + 1] * fmaxf(a1, 0.f);
    score += wt[j + 2] * fmaxf(a2, 0.f);
    score += wt[j + 3] * fmaxf(a3, 0.f);
  }
  for (; j < H; ++j) {
    const float* q0 = qs + j * D;
    float a0 = 0.f;
    for (int d = 0; d < D; ++d) a0 = fmaf(q0[d], kcol[d * (kKeys + 1)], a0);
    score += wt[j] * fmaxf(a0, 0.f);
  }
  ws[static_cast<int64_t>(row) * max_len + s0 + threadIdx.x] = score;
}

template <int H>
__global__ void __launch_bounds__(kKeys) IndexerScoresFast(float* ws, IndexerParams p, int t0, int max_len,
                                                           bool all_rows, DeviceError* err) {
  extern __shared__ int64_t smem_i64[];
  const int D = p.head_dim, D4 = p.head_dim / 4, KS = p.head_dim + 4;
  int64_t* slots = smem_i64;                            // [kKeys]
  float* qs = reinterpret_cast<float*>(slots + kKeys);  // [H, D]
  float* ks = qs + H * D;                               // [kKeys, D + 4]
  const int row = blockIdx.y;
  const int t = t0 + row;
  const int pos = p.layout.token_pos[t];
  if (pos < 0 || pos + 1 > max_len) {
    if (blockIdx.x == 0 && threadIdx.x == 0) RecordError(err, kErrPosition, t, pos, max_len);
  }
  const int len = pos + 1 < max_len ? pos + 1 : max_len;
  if (!all_rows && pos + 1 <= p.k) return;
  const int s0 = blockIdx.x * kKeys;
  if (s0 >= len) return;
  const int nk = len - s0 < kKeys ? len - s0 : kKeys;
  const int seq = p.layout.token_seq[t];

  const float4* qt = reinterpret_cast<const float4*>(p.q + static_cast<int64_t>(t) * H * D);
  for (int i = threadIdx.x; i < H * D4; i += kKeys) reinterpret_cast<float4*>(qs)[i] = qt[i];
  if (threadIdx.x < nk) {
    slots[threadIdx.x] = CacheSlot(p.layout, seq, s0 + threadIdx.x, p.num_slots, t, err);
  }
  __syncthreads();
  // Asynchronous 16-byte copies (cp.async): all of a thread's loads are in flight at once.
  for (int i = threadIdx.x; i < nk * D4; i += kKeys) {
    const int key = i / D4, d4 = i % D4;
    const int64_t slot = slots[key];
    float4* dst = reinterpret_cast<float4*>(ks + key * KS) + d4;
    if (slot < 0) {
      *dst = make_float4(0.f, 0.f, 0.f, 0.f);
    } else {
      __pipeline_memcpy_async(dst, reinterpret_cast<const float4*>(p.k_cache + slot * p.k_stride) + d4, 16);
    }
  }
  __pipeline_commit();
  __pipeline_wait_prior(0);
  __syncthreads();
  if (threadIdx.x >= nk) return;

  float acc[H];
#pragma unroll
  for (int j = 0; j < H; ++j) acc[j] = 0.0f;
  const float4* kr = reinterpret_cast<const float4*>(ks + threadIdx.x * KS);
  const float4* q4 = reinterpret_cast<const float4*>(qs);
  for (int d4 = 0; d4 < D4; ++d4) {
    const float4 kv = kr[d4];
#pragma unroll
    for (int j = 0; j < H; ++j) {
      const float4 qv = q4[j * D4 + d4];
      acc[j] = fmaf(qv.x, kv.x, acc[j]);
      acc[j] = fmaf(qv.y, kv.y, acc[j]);
      acc[j] = fmaf(qv.z, kv.z, acc[j]);
      acc[j] = fmaf(qv.w, kv.w, acc[j]);
    }
  }
  const float* wt = p.w + static_cast<int64_t>(t) * H;
  float score = 0.0f;
#pragma unroll
  for (int j = 0; j < H; ++j) score += wt[j] * fmaxf(acc[j], 0.f);
  ws[static_cast<int64_t>(row) * max_len + s0 + threadIdx.x] = score;
}

size_t FastSharedBytes(int heads, int head_dim) {
  return sizeof(int64_t) * kKeys +
         sizeof(float) * (static_cast<size_t>(heads) * head_dim + static_cast<size_t>(kKeys) * (head_dim + 4));
}

size_t g_max_shared = 48 << 10;  // set by ConfigureIndexerKernels

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

__global__ void IndexerCopyScoresKernel(float* scores, int scores_stride, const float* ws, int max_len,
                                        const int32_t* token_pos, int t0) {
  const int row = blockIdx.y;
  const int t = t0 + row;
  const int pos = token_pos[t];
  for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < scores_stride; s += gridDim.x * blockDim.x) {
    scores[static_cast<int64_t>(t) * scores_stride + s] =
        (s <= pos && s < max_len) ? ws[static_cast<int64_t>(row) * max_len + s] : -INFINITY;
  }
}

}  // namespace

size_t IndexerSharedBytes(int heads, int head_dim) {
  return sizeof(float) * (static_cast<size_t>(heads) * head_dim +
                          static_cast<size_t>(head_dim) * (kKeys + 1)) +
         sizeof(int64_t) * kKeys;
}

cudaError_t ConfigureIndexerKernels(size_t bytes) {
  g_max_shared = bytes;
  const int b = static_cast<int>(bytes);
  cudaError_t e = cudaFuncSetAttribute(IndexerScoresKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
  if (e == cudaSuccess) e = cudaFuncSetAttribute(IndexerScoresFast<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
  if (e == cudaSuccess) e = cudaFuncSetAttribute(IndexerScoresFast<32>, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
  if (e == cudaSuccess) e = cudaFuncSetAttribute(IndexerScoresFast<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, b);
  return e;
}

cudaError_t LaunchIndexerScores(float* ws, const IndexerParams& p, int t0, int rows, int max_len,
                                bool all_rows, DeviceError* err, cudaStream_t stream) {
  if (rows == 0 || max_len == 0) return cudaSuccess;
  const dim3 grid((max_len + kKeys - 1) / kKeys, rows);
  const bool fast_shape = p.head_dim % 4 == 0 && p.k_stride % 4 == 0 && Aligned16(p.q) &&
                          Aligned16(p.k_cache) && FastSharedBytes(p.heads, p.head_dim) <= g_max_shared;
  if (fast_shape && (p.heads == 16 || p.heads == 32 || p.heads == 64)) {
    const size_t smem = FastSharedBytes(p.heads, p.head_dim);
    switch (p.heads) {
      case 16:
        IndexerScoresFast<16><<<grid, kKeys, smem, stream>>>(ws, p, t0, max_len, all_rows, err);
        break;
      case 32:
        IndexerScoresFast<32><<<grid, kKeys, smem, stream>>>(ws, p, t0, max_len, all_rows, err);
        break;
      default:
        IndexerScoresFast<64><<<grid, kKeys, smem, stream>>>(ws, p, t0, max_len, all_rows, err);
        break;
    }
    return cudaGetLastError();
  }
  IndexerScoresKernel<<<grid, kKeys, IndexerSharedBytes(p.heads, p.head_dim), stream>>>(
      ws, p, t0, max_len, all_rows, err);
  return cudaGetLastError();
}

cudaError_t LaunchIndexerCopyScores(float* scores, int scores_stride, const float* ws, int max_len,
                                    const int32_t* token_pos, int t0, int rows, cudaStream_t stream) {
  if (rows == 0 || scores_stride == 0) return cudaSuccess;
  const dim3 grid((scores_stride + 255) / 256 < 64 ? (scores_stride + 255) / 256 : 64, rows);
  IndexerCopyScoresKernel<<<grid, 256, 0, stream>>>(scores, scores_stride, ws, max_len, token_pos, t0);
  return cudaGetLastError();
}

}  // namespace ic::kernels::cuda
