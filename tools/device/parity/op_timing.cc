// Times the CUDA backend's heavy ops at DeepSeek-V3.2-like sizes through the Backend interface
// (wall clock around Synchronize(), median of `reps` after warm-up). Prints one line per case with
// the time and the achieved rate against the counted FLOPs or bytes. Inputs are random (never zeros);
// large caches are tiled copies of one random block.
//   op_timing            (needs a GPU; prints "no GPU" and exits 0 otherwise)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/backend.h"

using namespace ic::kernels;

namespace {

std::unique_ptr<Backend> gpu;
std::mt19937 rng(7);

template <typename T>
T* Upload(const std::vector<T>& h) {
  T* p = static_cast<T*>(gpu->Allocate(h.size() * sizeof(T)).value());
  if (!gpu->CopyToDevice(p, h.data(), h.size() * sizeof(T)).ok()) std::abort();
  return p;
}

float* RandomDevice(size_t n, float scale = 1.0f, bool positive = false) {
  const size_t block = std::min<size_t>(n, size_t{1} << 24);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> h(block);
  for (float& x : h) x = positive ? std::fabs(d(rng)) : d(rng);
  float* p = static_cast<float*>(gpu->Allocate(n * sizeof(float)).value());
  for (size_t off = 0; off < n; off += block) {
    const size_t m = std::min(block, n - off);
    if (off == 0) {
      if (!gpu->CopyToDevice(p, h.data(), m * sizeof(float)).ok()) std::abort();
    } else if (!gpu->CopyOnDevice(p + off, p, m * sizeof(float)).ok()) {
      std::abort();
    }
  }
  return p;
}

double TimeMs(const std::function<absl::Status()>& fn, int reps = 7) {
  for (int i = 0; i < 2; ++i) {
    absl::Status s = fn();
    if (s.ok()) s = gpu->Synchronize();
    if (!s.ok()) {
      std::printf("  error: %s\n", s.ToString().c_str());
      return NAN;
    }
  }
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto a = std::chrono::steady_clock::now();
    (void)fn();
    (void)gpu->Synchronize();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// One sequence per entry of `lens`, contiguous blocks; tokens = the last q_per_seq positions.
struct Layout {
  std::vector<int32_t> seq, pos, tables;
  int max_blocks = 0, block_size = 64;
  int64_t num_slots = 0;
  TokenLayout dev{};
};

Layout MakeLayout(int num_seqs, int len, int q_per_seq) {
  Layout l;
  l.max_blocks = (len + l.block_size - 1) / l.block_size;
  l.num_slots = static_cast<int64_t>(num_seqs) * l.max_blocks * l.block_size;
  l.tables.resize(static_cast<size_t>(num_seqs) * l.max_blocks);
  std::iota(l.tables.begin(), l.tables.end(), 0);
  std::shuffle(l.tables.begin(), l.tables.end(), rng);
  for (int s = 0; s < num_seqs; ++s) {
    for (int i = 0; i < q_per_seq; ++i) {
      l.seq.push_back(s);
      l.pos.push_back(len - q_per_seq + i);
    }
  }
  l.dev = {Upload(l.seq), Upload(l.pos), Upload(l.tables), static_cast<int>(l.seq.size()), num_seqs, l.max_blocks,
           l.block_size};
  return l;
}

}  // namespace

int main() {
  if (CudaDeviceCount() == 0) {
    std::printf("no GPU visible: nothing timed\n");
    return 0;
  }
  gpu = CreateBackend(DeviceKind::kCuda).value();
  std::printf("%s\n", gpu->name().c_str());

  {  // GEMM F32 (CUBLAS_COMPUTE_32F)
    const int m = 4096, n = 4096, k = 4096;
    float *a = RandomDevice(size_t{1} * m * k), *b = RandomDevice(size_t{1} * n * k), *c = RandomDevice(size_t{1} * m * n);
    const double ms = TimeMs([&] { return gpu->Gemm({.c = c, .a = a, .b = b, .m = m, .n = n, .k = k}); });
    std::printf("gemm f32 %dx%dx%d (B^T): %.3f ms, %.1f TFLOP/s\n", m, n, k, ms, 2.0 * m * n * k / ms / 1e9);
  }
  const int H = 64, D = 128, K = 2048;
  {  // Indexer prefill: one sequence of L tokens, all rows scored.
    for (int L : {4096, 16384}) {
      Layout l = MakeLayout(1, L, L);
      float* kc = RandomDevice(l.num_slots * D);
      float* q = RandomDevice(size_t{1} * L * H * D);
      float* w = RandomDevice(size_t{1} * L * H, 1.0f / std::sqrt(H * D), true);
      int32_t* idx = static_cast<int32_t*>(gpu->Allocate(sizeof(int32_t) * L * K).value());
      IndexerArgs a{.indices = idx, .q = q, .w = w, .k_cache = kc, .k_stride = D, .num_slots = l.num_slots, .heads = H,
                    .head_dim = D, .k = K, .layout = l.dev};
      const double ms = TimeMs([&] { return gpu->IndexerTopk(a); }, 3);
      const double flops = 2.0 * H * D * (static_cast<double>(L) * (L + 1) / 2 - static_cast<double>(K) * (K + 1) / 2);
      std::printf("indexer+topk prefill L=%d H=%d d=%d k=%d: %.2f ms, %.1f TFLOP/s (scores only counted)\n", L, H, D, K,
                  ms, flops / ms / 1e9);
    }
  }
  {  // Indexer decode: S sequences of context C, one token each.
    const int S = 64, C = 32768;
    Layout l = MakeLayout(S, C, 1);
    float* kc = RandomDevice(l.num_slots * D);
    float* q = RandomDevice(size_t{1} * S * H * D);
    float* w = RandomDevice(size_t{1} * S * H, 1.0f / std::sqrt(H * D), true);
    int32_t* idx = static_cast<int32_t*>(gpu->Allocate(sizeof(int32_t) * S * K).value());
    IndexerArgs a{.indices = idx, .q = q, .w = w, .k_cache = kc, .k_stride = D, .num_slots = l.num_slots, .heads = H,
                  .head_dim = D, .k = K, .layout = l.dev};
    const double ms = TimeMs([&] { return gpu->IndexerTopk(a); });
    const double bytes = 4.0 * S * C * D;
    std::printf("indexer+topk decode %d seqs x ctx %d, k=%d: %.3f ms, index-K read %.2f TB/s\n", S, C, K, ms,
                bytes / ms / 1e9);
  }
  {  // Sparse MLA attention decode (absorbed: qk 576, v = first 512 of the latent), 128 heads, k = 2048.
    const int S = 32, C = 16384, Hq = 128, QK = 576, V = 512;
    Layout l = MakeLayout(S, C, 1);
    float* kv = RandomDevice(l.num_slots * QK);
    float* q = RandomDevice(size_t{1} * S * Hq * QK);
    float* out = RandomDevice(size_t{1} * S * Hq * V);
    std::vector<int32_t> topk(static_cast<size_t>(S) * K);
    for (int s = 0; s < S; ++s) {
      std::vector<int32_t> c(C);
      std::iota(c.begin(), c.end(), 0);
      std::shuffle(c.begin(), c.end(), rng);
      std::copy(c.begin(), c.begin() + K, topk.begin() + static_cast<size_t>(s) * K);
    }
    int32_t* tk = Upload(topk);
    AttentionArgs a{.out = out, .q = q, .k_cache = kv, .v_cache = kv, .k_stride = QK, .v_stride = QK, .q_heads = Hq,
                    .kv_heads = 1, .qk_dim = QK, .v_dim = V, .num_slots = l.num_slots, .scale = 0.04f, .layout = l.dev,
                    .topk = tk, .topk_k = K};
    const double ms = TimeMs([&] { return gpu->Attention(a); });
    const double flops = 2.0 * S * Hq * K * (QK + V);
    std::printf("sparse MLA attention decode %d tokens, %d heads, k=%d: %.3f ms, %.2f TFLOP/s, latent read once %.2f TB/s\n",
                S, Hq, K, ms, flops / ms / 1e9, 4.0 * S * K * QK / ms / 1e9);
  }
  {  // Dense GQA attention prefill.
    const int L = 4096, Hq = 32, Hk = 8, Dh = 128;
    Layout l = MakeLayout(1, L, L);
    float* kc = RandomDevice(l.num_slots * Hk * Dh);
    float* vc = RandomDevice(l.num_slots * Hk * Dh);
    float* q = RandomDevice(size_t{1} * L * Hq * Dh);
    float* out = RandomDevice(size_t{1} * L * Hq * Dh);
    AttentionArgs a{.out = out, .q = q, .k_cache = kc, .v_cache = vc, .q_heads = Hq, .kv_heads = Hk, .qk_dim = Dh,
                    .v_dim = Dh, .num_slots = l.num_slots, .scale = 0.088f, .layout = l.dev};
    const double ms = TimeMs([&] { return gpu->Attention(a); }, 3);
    const double flops = 2.0 * Hq * (2.0 * Dh) * L * (L + 1) / 2;
    std::printf("dense GQA attention prefill L=%d, %d/%d heads, d=%d: %.2f ms, %.2f TFLOP/s\n", L, Hq, Hk, Dh, ms,
                flops / ms / 1e9);
  }
  return 0;
}
