// Indexer distillation (Backend::IndexerDistill, kernels/backend.h): the KL of the indexer's softmax against a
// dense target and its gradients w.r.t. q, k and w, in five kernels over 32 × 32 tiles of (rows t, keys s):
//   1. ScoresKernel   I[t, s] = Σ_j w[t, j] · ReLU(q[t, j] · k[s]) for the tiles on or below the diagonal;
//   2. RowsKernel     per row: the target's mass, logsumexp, kl[t] (both in double) and G = softmax − p̂,
//                     written over I;
//   3. GradQwKernel   per (row tile, head): grad_q = Σ_s D·k[s] and grad_w = Σ_s G·ReLU(q·k), where
//                     D[t, s] = G[t, s] · w[t, j] · [q·k > 0] is rebuilt from a recomputed q·k;
//   4. GradKKernel    per (key tile, head group): Σ_t D[t, s] · q[t, j] for the group's heads;
//   5. SumGroupsKernel grad_k = Σ over head groups in group order (no atomics: the result is deterministic).
// Every dot product recomputes q·k from shared-memory tiles instead of keeping the T × T × H products. The
// scratch holds I / G ([T, T] F32) and, with several head groups, their partial grad_k.
#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace ic::kernels::cuda {
namespace {

constexpr int kTile = 32;                  // rows (t) and keys (s) per tile
constexpr int kThreads = 256;              // thread (r, c0) owns tile entries (r, c0 + 8·i), i < 4
constexpr int kCols = kTile * kTile / kThreads;
constexpr int kChunk = 64;                 // head_dim slice staged at a time by ScoresKernel

// q[t, j] · k[s] for the thread's four entries, from tiles Qs [32][ld] and Ks [32][ld] (ld = d + 1).
__device__ inline void TileDots(const float* Qs, const float* Ks, int ld, int d, int r, int c0, float dots[kCols]) {
  for (int i = 0; i < kCols; ++i) dots[i] = 0.0f;
  for (int x = 0; x < d; ++x) {
    const float qv = Qs[r * ld + x];
    for (int i = 0; i < kCols; ++i) dots[i] = fmaf(qv, Ks[(c0 + 8 * i) * ld + x], dots[i]);
  }
}

// rows [row0, row0 + 32) of src (row stride `stride`, `d` values from `col0`) into tile [32][ld]; zeros past n.
__device__ inline void LoadTile(float* tile, int ld, const float* src, int64_t stride, int row0, int n, int col0,
                                int d) {
  for (int idx = threadIdx.x; idx < kTile * d; idx += blockDim.x) {
    const int r = idx / d, x = idx % d;
    tile[r * ld + x] = row0 + r < n ? src[(row0 + r) * stride + col0 + x] : 0.0f;
  }
}

__global__ void ScoresKernel(float* I, const float* q, const float* k, const float* w, int T, int H, int d) {
  const int st = blockIdx.x, tt = blockIdx.y;
  if (st > tt) return;
  __shared__ float Qs[kTile * (kChunk + 1)], Ks[kTile * (kChunk + 1)];
  const int t0 = tt * kTile, s0 = st * kTile;
  const int r = threadIdx.x >> 3, c0 = threadIdx.x & 7;
  const int t = t0 + r;
  float acc[kCols] = {};
  for (int j = 0; j < H; ++j) {
    float dots[kCols] = {};
    for (int x0 = 0; x0 < d; x0 += kChunk) {
      const int n = min(kChunk, d - x0);
      LoadTile(Qs, kChunk + 1, q, static_cast<int64_t>(H) * d, t0, T, j * d + x0, n);
      LoadTile(Ks, kChunk + 1, k, d, s0, T, x0, n);
      __syncthreads();
      float part[kCols];
      TileDots(Qs, Ks, kChunk + 1, n, r, c0, part);
      for (int i = 0; i < kCols; ++i) dots[i] += part[i];
      __syncthreads();
    }
    const float wt = t < T ? w[static_cast<int64_t>(t) * H + j] : 0.0f;
    for (int i = 0; i < kCols; ++i) acc[i] = fmaf(wt, fmaxf(dots[i], 0.0f), acc[i]);
  }
  if (t >= T) return;
  for (int i = 0; i < kCols; ++i) {
    const int s = s0 + c0 + 8 * i;
    if (s <= t) I[static_cast<int64_t>(t) * T + s] = acc[i];
  }
}

__global__ void RowsKernel(float* IG, float* kl, const float* p, int T) {
  __shared__ double dscratch[32];
  __shared__ float fscratch[32];
  const int t = blockIdx.x;
  float* row = IG + static_cast<int64_t>(t) * T;
  const float* prow = p + static_cast<int64_t>(t) * T;
  double mass = 0;
  for (int s = threadIdx.x; s <= t; s += blockDim.x) mass += prow[s];
  mass = BlockSum(mass, dscratch);
  if (!(mass > 0)) {
    for (int s = threadIdx.x; s <= t; s += blockDim.x) row[s] = 0.0f;
    if (threadIdx.x == 0) kl[t] = 0.0f;
    return;
  }
  float mx = -INFINITY;
  for (int s = threadIdx.x; s <= t; s += blockDim.x) mx = fmaxf(mx, row[s]);
  mx = BlockMax(mx, fscratch);
  double z = 0;
  for (int s = threadIdx.x; s <= t; s += blockDim.x) z += exp(static_cast<double>(row[s]) - mx);
  z = BlockSum(z, dscratch);
  const double lse = mx + log(z);
  double part = 0;
  for (int s = threadIdx.x; s <= t; s += blockDim.x) {
    const double ph = prow[s] / mass, x = row[s];
    if (ph > 0) part += ph * (log(ph) - x + lse);
    row[s] = static_cast<float>(exp(x - lse) - ph);
  }
  part = BlockSum(part, dscratch);
  if (threadIdx.x == 0) kl[t] = static_cast<float>(part);
}

// Dynamic shared memory: Qs [32][d+1], Ks [32][d+1], Acc [32][d+1], Ds [32][33].
size_t GradSmemBytes(int d) { return sizeof(float) * (3 * kTile * (d + 1) + kTile * (kTile + 1)); }

__global__ void GradQwKernel(float* gq, float* gw, const float* q, const float* k, const float* w, const float* G,
                             int T, int H, int d) {
  extern __shared__ float smem[];
  const int ld = d + 1;
  float *Qs = smem, *Ks = Qs + kTile * ld, *Acc = Ks + kTile * ld, *Ds = Acc + kTile * ld;
  const int tt = blockIdx.x, j = blockIdx.y, t0 = tt * kTile;
  const int r = threadIdx.x >> 3, c0 = threadIdx.x & 7, t = t0 + r;
  LoadTile(Qs, ld, q, static_cast<int64_t>(H) * d, t0, T, j * d, d);
  for (int idx = threadIdx.x; idx < kTile * ld; idx += blockDim.x) Acc[idx] = 0.0f;
  const float wt = t < T ? w[static_cast<int64_t>(t) * H + j] : 0.0f;
  float gw_part = 0.0f;
  for (int st = 0; st <= tt; ++st) {
    const int s0 = st * kTile;
    LoadTile(Ks, ld, k, d, s0, T, 0, d);
    __syncthreads();
    float dots[kCols];
    TileDots(Qs, Ks, ld, d, r, c0, dots);
    for (int i = 0; i < kCols; ++i) {
      const int c = c0 + 8 * i, s = s0 + c;
      const bool on = t < T && s <= t && dots[i] > 0.0f;
      const float g = on ? G[static_cast<int64_t>(t) * T + s] : 0.0f;
      gw_part = fmaf(g, on ? dots[i] : 0.0f, gw_part);
      Ds[r * (kTile + 1) + c] = g * wt;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < kTile * d; idx += blockDim.x) {
      const int rr = idx / d, x = idx % d;
      float a = 0.0f;
      for (int c = 0; c < kTile; ++c) a = fmaf(Ds[rr * (kTile + 1) + c], Ks[c * ld + x], a);
      Acc[rr * ld + x] += a;
    }
    __syncthreads();
  }
  // The eight threads of row r are lanes 8·(r mod 4) .. +7 of one warp.
  for (int o = 4; o > 0; o >>= 1) gw_part += __shfl_xor_sync(0xffffffffu, gw_part, o);
  if (c0 == 0 && t < T) gw[static_cast<int64_t>(t) * H + j] = gw_part;
  for (int idx = threadIdx.x; idx < kTile * d; idx += blockDim.x) {
    const int rr = idx / d, x = idx % d;
    if (t0 + rr < T) gq[(static_cast<int64_t>(t0 + rr) * H + j) * d + x] = Acc[rr * ld + x];
  }
}

// Keys [s0, s0 + 32) against every row tile at or below them, for heads [j0, j1).
__global__ void GradKKernel(float* gk, const float* q, const float* k, const float* w, const float* G, int T, int H,
                            int d, int heads_per_group) {
  extern __shared__ float smem[];
  const int ld = d + 1;
  float *Qs = smem, *Ks = Qs + kTile * ld, *Acc = Ks + kTile * ld, *Ds = Acc + kTile * ld;
  const int st = blockIdx.x, s0 = st * kTile, nt = (T + kTile - 1) / kTile;
  const int j0 = blockIdx.y * heads_per_group, j1 = min(H, j0 + heads_per_group);
  const int r = threadIdx.x >> 3, c0 = threadIdx.x & 7;
  LoadTile(Ks, ld, k, d, s0, T, 0, d);
  for (int idx = threadIdx.x; idx < kTile * ld; idx += blockDim.x) Acc[idx] = 0.0f;
  for (int j = j0; j < j1; ++j) {
    for (int tt = st; tt < nt; ++tt) {
      const int t0 = tt * kTile, t = t0 + r;
      LoadTile(Qs, ld, q, static_cast<int64_t>(H) * d, t0, T, j * d, d);
      __syncthreads();
      float dots[kCols];
      TileDots(Qs, Ks, ld, d, r, c0, dots);
      const float wt = t < T ? w[static_cast<int64_t>(t) * H + j] : 0.0f;
      for (int i = 0; i < kCols; ++i) {
        const int c = c0 + 8 * i, s = s0 + c;
        const bool on = t < T && s <= t && dots[i] > 0.0f;
        Ds[r * (kTile + 1) + c] = on ? G[static_cast<int64_t>(t) * T + s] * wt : 0.0f;
      }
      __syncthreads();
      for (int idx = threadIdx.x; idx < kTile * d; idx += blockDim.x) {
        const int c = idx / d, x = idx % d;  // key s0 + c
        float a = 0.0f;
        for (int rr = 0; rr < kTile; ++rr) a = fmaf(Ds[rr * (kTile + 1) + c], Qs[rr * ld + x], a);
        Acc[c * ld + x] += a;
      }
      __syncthreads();
    }
  }
  float* out = gk + static_cast<int64_t>(blockIdx.y) * T * d;
  for (int idx = threadIdx.x; idx < kTile * d; idx += blockDim.x) {
    const int c = idx / d, x = idx % d;
    if (s0 + c < T) out[static_cast<int64_t>(s0 + c) * d + x] = Acc[c * ld + x];
  }
}

__global__ void SumGroupsKernel(float* gk, const float* parts, int groups, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float a = 0.0f;
    for (int g = 0; g < groups; ++g) a += parts[g * n + i];
    gk[i] = a;
  }
}

int HeadGroups(int T, int H) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int nt = (T + kTile - 1) / kTile;
  return std::clamp((2 * sms + nt - 1) / nt, 1, H);  // about two blocks per SM
}

}  // namespace

cudaError_t ConfigureDistillKernels(size_t bytes) {
  cudaError_t e = cudaFuncSetAttribute(GradQwKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess) e = cudaFuncSetAttribute(GradKKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  return e;
}

size_t IndexerDistillSharedBytes(int d) { return GradSmemBytes(d); }

size_t IndexerDistillScratchBytes(int T, int H, int d) {
  const int groups = HeadGroups(T, H);
  return sizeof(float) * (static_cast<size_t>(T) * T + (groups > 1 ? static_cast<size_t>(groups) * T * d : 0));
}

cudaError_t LaunchIndexerDistill(float* kl, float* grad_q, float* grad_k, float* grad_w, const float* q,
                                 const float* k, const float* w, const float* p, int T, int H, int d, float* scratch,
                                 cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  const int nt = (T + kTile - 1) / kTile;
  float* IG = scratch;
  ScoresKernel<<<dim3(nt, nt), kThreads, 0, stream>>>(IG, q, k, w, T, H, d);
  RowsKernel<<<T, kThreads, 0, stream>>>(IG, kl, p, T);
  if (grad_q == nullptr) return cudaGetLastError();
  const size_t smem = GradSmemBytes(d);
  GradQwKernel<<<dim3(nt, H), kThreads, smem, stream>>>(grad_q, grad_w, q, k, w, IG, T, H, d);
  const int groups = HeadGroups(T, H), per_group = (H + groups - 1) / groups;
  const int used = (H + per_group - 1) / per_group;  // groups that hold at least one head
  float* parts = used > 1 ? IG + static_cast<size_t>(T) * T : grad_k;
  GradKKernel<<<dim3(nt, used), kThreads, smem, stream>>>(parts, q, k, w, IG, T, H, d, per_group);
  if (used > 1) {
    const int64_t n = static_cast<int64_t>(T) * d;
    const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
    SumGroupsKernel<<<blocks, kThreads, 0, stream>>>(grad_k, parts, used, n);
  }
  return cudaGetLastError();
}

}  // namespace ic::kernels::cuda
