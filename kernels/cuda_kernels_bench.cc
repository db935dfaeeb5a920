// Google Benchmark suite for the CUDA kernels, through the Backend interface as the engine calls them:
// index scores + top-k (decode and prefill rows), sparse attention over top-k (MLA absorbed, decode and
// prefill), top-k alone, GEMM (cuBLASLt), the fused MoE experts, the distillation loss (IndexerDistill),
// and what a CUDA graph saves on a chain of decode-sized ops (DecodeChainGraph).
// Each iteration runs the op and synchronises (wall time; every
// case is long enough for the launch overhead not to matter, said per case). Counters:
//   TFLOP/s and pct_bf16_peak   against the H200's 989 dense BF16 TFLOP/s (our kernels are F32 today)
//   GB/s and pct_hbm_peak       the op's minimal traffic against 4.8 TB/s
// Shapes follow the paper's 30B model (GLM-4.7-Flash with DSA: 20 heads, MLA latent 512 + 64 rope; indexer
// 32 heads × 128, top-k 2048) at contexts up to 200,000 tokens.
//
//   cmake -S . -B build -DIC_BUILD_BENCHMARKS=ON && cmake --build build --target cuda_kernels_bench
//   build/kernels/cuda_kernels_bench --benchmark_filter=Indexer      (exits 0 with a note without a GPU)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/backend.h"

namespace ic::kernels {
namespace {

constexpr double kBf16PeakFlops = 989e12, kHbmPeakBytes = 4.8e12;

Backend& Gpu() {
  static std::unique_ptr<Backend> be = *CreateBackend(DeviceKind::kCuda);
  return *be;
}

template <typename T>
T* Upload(const std::vector<T>& v) {
  void* p = *Gpu().Allocate(v.size() * sizeof(T));
  (void)Gpu().CopyToDevice(p, v.data(), v.size() * sizeof(T));
  return static_cast<T*>(p);
}

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// One sequence of `context` tokens in 64-token blocks (identity block table); the last `queries` positions
// are the query rows. Device copies of the layout arrays.
struct Scene {
  TokenLayout layout;
  int64_t num_slots = 0;
  std::vector<int32_t> pos;
  Scene(int context, int queries) {
    const int blocks = (context + 63) / 64;
    num_slots = static_cast<int64_t>(blocks) * 64;
    std::vector<int32_t> table(blocks), seq(queries, 0);
    for (int b = 0; b < blocks; ++b) table[b] = b;
    for (int p = context - queries; p < context; ++p) pos.push_back(p);
    layout.token_seq = Upload(seq);
    layout.token_pos = Upload(pos);
    layout.block_tables = Upload(table);
    layout.tokens = queries;
    layout.num_seqs = 1;
    layout.max_blocks_per_seq = blocks;
    layout.block_size = 64;
  }
};

void Report(benchmark::State& state, double flops, double bytes) {
  using C = benchmark::Counter;
  state.counters["TFLOP/s"] = C(flops / 1e12, C::kIsIterationInvariantRate);
  state.counters["pct_bf16_peak"] = C(100.0 * flops / kBf16PeakFlops, C::kIsIterationInvariantRate);
  state.counters["GB/s"] = C(bytes / 1e9, C::kIsIterationInvariantRate);
  state.counters["pct_hbm_peak"] = C(100.0 * bytes / kHbmPeakBytes, C::kIsIterationInvariantRate);
}

// Lightning indexer: I[t, s] = Σ_j w[t, j]·ReLU(q[t, j]·k[s]) over s ≤ t, then top-2048 (fused, tiled).
// Args: context, query rows, precision (0 = F32; 1 = BF16 tensor cores over a BF16 index-K cache, as the
// engine runs it; 2 = FP8 E4M3 over an FP8 cache with per-key scales), index heads (32: the 30B/GLM-5 assumption; 64: DeepSeek-V3.2). The scores' share is
// this minus BM_Topk on the same rows.
void BM_IndexerTopk(benchmark::State& state) {
  const int context = state.range(0), queries = state.range(1), dim = 128, k = 2048;
  const Precision precision = state.range(2) == 2   ? Precision::kFP8
                                     : state.range(2) == 1 ? Precision::kBF16
                                                           : Precision::kF32;
  const int heads = state.range(3);
  Scene s(context, queries);
  const std::vector<float> keys = Random(static_cast<size_t>(s.num_slots) * dim, 1);
  float* q = Upload(Random(static_cast<size_t>(queries) * heads * dim, 2));
  float* w = Upload(Random(static_cast<size_t>(queries) * heads, 3));
  int32_t* out = static_cast<int32_t*>(*Gpu().Allocate(sizeof(int32_t) * queries * k));
  IndexerArgs a{.indices = out, .q = q, .w = w, .k_stride = dim, .num_slots = s.num_slots,
                .heads = heads, .head_dim = dim, .k = k, .precision = precision, .layout = s.layout};
  double key_bytes = 4;
  if (precision == Precision::kFP8) {  // random E4M3 bytes (no NaN) and per-key scales
    std::vector<uint8_t> b(keys.size());
    std::mt19937 rng(8);
    for (uint8_t& x : b) x = static_cast<uint8_t>(rng() % 0x7e) | static_cast<uint8_t>((rng() & 1) << 7);
    a.k_cache_fp8 = Upload(b);
    a.k_scale = Upload(std::vector<float>(s.num_slots, 1.0f / 448));
    key_bytes = 1;
  } else if (precision == Precision::kBF16) {
    std::vector<uint16_t> b(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {  // truncation is fine for timing
      uint32_t u;
      std::memcpy(&u, &keys[i], sizeof u);
      b[i] = static_cast<uint16_t>(u >> 16);
    }
    a.k_cache_bf16 = Upload(b);
    key_bytes = 2;
  } else {
    a.k_cache = Upload(keys);
  }
  for (auto _ : state) {
    if (!Gpu().IndexerTopk(a).ok() || !Gpu().Synchronize().ok()) state.SkipWithError("IndexerTopk failed");
  }
  double pairs = 0;
  for (int p : s.pos) pairs += p + 1;
  Report(state, 2.0 * pairs * heads * dim, key_bytes * context * dim + 4.0 * queries * heads * dim);
}
BENCHMARK(BM_IndexerTopk)
    ->ArgsProduct({{10000, 60000, 120000, 200000}, {1}, {0, 1, 2}, {32}})  // decode rows
    ->ArgsProduct({{200000}, {64}, {1, 2}, {32}})                          // a decode batch
    ->ArgsProduct({{16384}, {1024}, {0, 1, 2}, {32, 64}})                  // prefill tiles
    ->ArgsProduct({{65536}, {256}, {0, 1, 2}, {32}})
    ->ArgsProduct({{200000}, {335}, {1, 2}, {32}})  // the engine's tile at 200K (256 MiB of scores)
    ->UseRealTime()->Unit(benchmark::kMillisecond);

// Sparse MLA attention over the top-2048 (absorbed: one latent KV head of 512 + 64 rope, 20 query heads).
// Args: context, query rows, precision (0 = F32 CUDA cores, 1 = BF16 tensor cores over an F32 cache, 2 = BF16
// tensor cores over a BF16 KV cache, as the engine runs it), query heads (20: the 30B model; 128: DeepSeek-V3.2).
void BM_SparseAttention(benchmark::State& state) {
  const int context = state.range(0), queries = state.range(1), latent = 576, v_dim = 512, k = 2048;
  const int heads = state.range(3);
  const Precision precision = state.range(2) ? Precision::kBF16 : Precision::kF32;
  const bool cache16 = state.range(2) == 2;
  Scene s(context, queries);
  const std::vector<float> cache_host = Random(static_cast<size_t>(s.num_slots) * latent, 4);
  float* cache = cache16 ? nullptr : Upload(cache_host);
  uint16_t* cache_bf16 = nullptr;
  if (cache16) {
    std::vector<uint16_t> bits(cache_host.size());
    for (size_t i = 0; i < bits.size(); ++i) {
      uint32_t u;
      std::memcpy(&u, &cache_host[i], sizeof u);
      bits[i] = static_cast<uint16_t>(u >> 16);
    }
    cache_bf16 = Upload(bits);
  }
  float* q = Upload(Random(static_cast<size_t>(queries) * heads * latent, 5));
  std::vector<int32_t> topk;
  std::mt19937 rng(6);
  for (int p : s.pos) {
    for (int j = 0; j < k; ++j) topk.push_back(j <= p ? static_cast<int32_t>(rng() % (p + 1)) : -1);
  }
  int32_t* d_topk = Upload(topk);
  float* out = static_cast<float*>(*Gpu().Allocate(sizeof(float) * queries * heads * v_dim));
  AttentionArgs a{.out = out, .q = q, .k_cache = cache, .v_cache = cache, .k_stride = latent, .v_stride = latent,
                  .q_heads = heads, .kv_heads = 1, .qk_dim = latent, .v_dim = v_dim, .num_slots = s.num_slots,
                  .scale = 0.07f, .layout = s.layout, .topk = d_topk, .topk_k = k, .precision = precision};
  a.k_cache_bf16 = a.v_cache_bf16 = cache_bf16;
  for (auto _ : state) {
    if (!Gpu().Attention(a).ok() || !Gpu().Synchronize().ok()) state.SkipWithError("Attention failed");
  }
  double keys = 0;
  for (int p : s.pos) keys += std::min(p + 1, k);
  Report(state, 2.0 * keys * heads * (latent + v_dim), (cache16 ? 2.0 : 4.0) * keys * latent);
}
BENCHMARK(BM_SparseAttention)
    ->ArgsProduct({{200000}, {1, 64}, {0, 1, 2}, {20}})->ArgsProduct({{16384}, {1024}, {0, 1, 2}, {20}})
    ->ArgsProduct({{200000}, {512}, {1, 2}, {20}})->ArgsProduct({{16384}, {1024}, {1, 2}, {128}})
    ->UseRealTime()->Unit(benchmark::kMillisecond);

// Top-k alone over precomputed scores (the bound: reading the scores once).
void BM_Topk(benchmark::State& state) {
  const int n = state.range(0), rows = state.range(1), k = 2048;
  float* scores = Upload(Random(static_cast<size_t>(n) * rows, 7));
  int32_t* lengths = Upload(std::vector<int32_t>(rows, n));
  int32_t* out = static_cast<int32_t*>(*Gpu().Allocate(sizeof(int32_t) * rows * k));
  TopkArgs a{.out = out, .scores = scores, .lengths = lengths, .rows = rows, .stride = n, .k = k};
  for (auto _ : state) {
    if (!Gpu().Topk(a).ok() || !Gpu().Synchronize().ok()) state.SkipWithError("Topk failed");
  }
  Report(state, 0, 4.0 * n * rows);
}
BENCHMARK(BM_Topk)->Args({200000, 1})->Args({200000, 64})->Args({16384, 1024})->Args({65536, 256})
    ->Args({200000, 335})->UseRealTime()->Unit(benchmark::kMicrosecond);

// F32 GEMM through cuBLASLt (the engine's weights and activations are F32 today).
void BM_Gemm(benchmark::State& state) {
  const int m = state.range(0), n = state.range(1), k = state.range(2);
  float* a = Upload(Random(static_cast<size_t>(m) * k, 8));
  float* b = Upload(Random(static_cast<size_t>(n) * k, 9));
  float* c = static_cast<float*>(*Gpu().Allocate(sizeof(float) * m * n));
  GemmArgs g{.c = c, .a = a, .b = b, .m = m, .n = n, .k = k};
  for (auto _ : state) {
    if (!Gpu().Gemm(g).ok() || !Gpu().Synchronize().ok()) state.SkipWithError("Gemm failed");
  }
  Report(state, 2.0 * m * n * k, 4.0 * (static_cast<double>(m) * k + static_cast<double>(n) * k + static_cast<double>(m) * n));
}
BENCHMARK(BM_Gemm)->Args({4096, 4096, 4096})->Args({1, 2048, 2048})->Args({8192, 2048, 768})
    ->UseRealTime()->Unit(benchmark::kMillisecond);

// BF16 weights (GemmArgs::b_bf16): F32 activations cast to BF16 by the backend, cuBLASLt BF16 tensor cores
// with F32 accumulation; the time includes the cast. Bytes: F32 A and C, BF16 B.
void BM_GemmBf16(benchmark::State& state) {
  const int m = state.range(0), n = state.range(1), k = state.range(2);
  float* a = Upload(Random(static_cast<size_t>(m) * k, 8));
  std::vector<uint16_t> bits(static_cast<size_t>(n) * k);
  std::mt19937 rng(9);
  for (uint16_t& v : bits) v = static_cast<uint16_t>(0x3c00 + rng() % 0x0400);  // BF16 values in [2^-7, 2^-6)
  uint16_t* b = Upload(bits);
  float* c = static_cast<float*>(*Gpu().Allocate(sizeof(float) * m * n));
  GemmArgs g{.c = c, .a = a, .b_bf16 = b, .m = m, .n = n, .k = k};
  for (auto _ : state) {
    if (!Gpu().Gemm(g).ok() || !Gpu().Synchronize().ok()) state.SkipWithError("Gemm failed");
  }
  Report(state, 2.0 * m * n * k,
         4.0 * static_cast<double>(m) * k + 2.0 * static_cast<double>(n) * k + 4.0 * static_cast<double>(m) * n);
}
BENCHMARK(BM_GemmBf16)->Args({4096, 4096, 4096})->Args({1, 2048, 2048})->Args({8192, 2048, 768})
    ->Args({8192, 1536, 2048})->Args({617, 1536, 2048})->UseRealTime()->Unit(benchmark::kMillisecond);

// The same shapes with block-scaled FP8 weights (GemmArgs::b_fp8: cuBLASLt VEC128 × BLK128x128 scales), the
// per-row, per-128-column quantisation of A included. The FP8 ceiling measured through cuBLAS is 1,429 TFLOP/s.
void BM_GemmFp8(benchmark::State& state) {
  const int m = state.range(0), n = state.range(1), k = state.range(2);
  float* a = Upload(Random(static_cast<size_t>(m) * k, 8));
  std::vector<uint8_t> bytes(static_cast<size_t>(n) * k);
  std::mt19937 rng(9);
  for (uint8_t& v : bytes) v = static_cast<uint8_t>(0x30 + rng() % 0x10);  // E4M3 values in [0.5, 1)
  const int scale_ld = Fp8ScaleLd(k);
  float* scale = Upload(std::vector<float>(static_cast<size_t>((n + 127) / 128) * scale_ld, 1.0f / 64));
  uint8_t* b = Upload(bytes);
  float* c = static_cast<float*>(*Gpu().Allocate(sizeof(float) * m * n));
  GemmArgs g{.c = c, .a = a, .b_fp8 = b, .b_scale = scale, .m = m, .n = n, .k = k};
  for (auto _ : state) {
    if (!Gpu().Gemm(g).ok() || !Gpu().Synchronize().ok()) state.SkipWithError("Gemm failed");
  }
  Report(state, 2.0 * m * n * k,
         4.0 * static_cast<double>(m) * k + static_cast<double>(n) * k + 4.0 * static_cast<double>(m) * n);
}
BENCHMARK(BM_GemmFp8)->Args({4096, 4096, 4096})->Args({1, 2048, 2048})->Args({8192, 2048, 768})
    ->Args({8192, 1536, 2048})->Args({617, 1536, 2048})->UseRealTime()->Unit(benchmark::kMillisecond);

// MoeExperts at the 30B model's decode shape (hidden 2048, expert intermediate 1536, 64 experts, top-4):
// `tokens` tokens, each reading its 4 experts' gate, up and down rows once. Second argument: 0 = BF16
// weights, 1 = block-scaled FP8 weights (half the bytes).
void BM_MoeExperts(benchmark::State& state) {
  const int tokens = state.range(0), H = 2048, I = 1536, E = 64, K = 4;
  const bool fp8 = state.range(1) == 1;
  std::vector<const void*> table((fp8 ? 6 : 3) * E);
  std::mt19937 rng(11);
  std::vector<uint16_t> bits(static_cast<size_t>(H) * I);
  for (uint16_t& v : bits) v = static_cast<uint16_t>(0x3c00 + rng() % 0x0400);
  std::vector<uint8_t> bytes(static_cast<size_t>(H) * I);
  for (uint8_t& v : bytes) v = static_cast<uint8_t>(0x30 + rng() % 0x10);
  const int scale_ld = Fp8ScaleLd(std::max(H, I));  // room for either orientation
  const std::vector<float> scale(static_cast<size_t>((std::max(H, I) + 127) / 128) * scale_ld, 1.0f / 64);
  for (int m = 0; m < 3 * E; ++m) {  // 3·64 distinct buffers: no cache reuse between experts
    table[m] = fp8 ? static_cast<const void*>(Upload(bytes)) : static_cast<const void*>(Upload(bits));
    if (fp8) table[3 * E + m] = Upload(scale);
  }
  const void* const* d_table = reinterpret_cast<const void* const*>(Upload(table));
  std::vector<int32_t> ids(static_cast<size_t>(tokens) * K);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 17 + 3) % E);
  int32_t* d_ids = Upload(ids);
  float* w = Upload(Random(ids.size(), 12));
  float* x = Upload(Random(static_cast<size_t>(tokens) * H, 13));
  float* out = Upload(Random(static_cast<size_t>(tokens) * H, 14));
  MoeExpertsArgs a{.out = out, .x = x, .expert_ids = d_ids, .expert_weights = w, .weights = d_table, .bf16 = !fp8,
                   .tokens = tokens, .hidden = H, .inter = I, .top_k = K, .experts = E, .fp8 = fp8};
  for (auto _ : state) {
    if (!Gpu().MoeExperts(a).ok() || !Gpu().Synchronize().ok()) state.SkipWithError("MoeExperts failed");
  }
  const double weights = 3.0 * H * I * K * tokens;  // weights read (and multiply-adds) per call
  Report(state, 2.0 * weights, (fp8 ? 1.0 : 2.0) * weights);  // 2 FLOPs; 2 bytes (BF16) or 1 (FP8) per weight
}
BENCHMARK(BM_MoeExperts)->Args({1, 0})->Args({4, 0})->Args({8, 0})->Args({1, 1})->Args({4, 1})->Args({8, 1})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);

// IndexerDistill (the distillation loss's O(T²) part with gradients): T tokens, H indexer heads × d. Args
// {1024, 4, 64}: the Llama-DSA indexers distilled for SmolLM2 (README); {2048, 64, 128}: DeepSeek-V3.2's
// indexer. FLOPs: q·k three times (scores, grad_q/grad_w, grad_k) and the two gradient products, 5·T²·H·d
// over the causal half. F32 CUDA cores (67 TFLOP/s peak on the H200), not tensor cores.
void BM_IndexerDistill(benchmark::State& state) {
  const int T = state.range(0), H = state.range(1), d = state.range(2);
  std::vector<float> p(static_cast<size_t>(T) * T, 0.0f);
  for (int t = 0; t < T; ++t) {
    for (int s = 0; s <= t; ++s) p[static_cast<size_t>(t) * T + s] = 1.0f / static_cast<float>(t + 1);
  }
  float* q = Upload(Random(static_cast<size_t>(T) * H * d, 21));
  float* k = Upload(Random(static_cast<size_t>(T) * d, 22));
  float* w = Upload(Random(static_cast<size_t>(T) * H, 23));
  float* dp = Upload(p);
  float* kl = Upload(std::vector<float>(T));
  float* gq = Upload(std::vector<float>(static_cast<size_t>(T) * H * d));
  float* gk = Upload(std::vector<float>(static_cast<size_t>(T) * d));
  float* gw = Upload(std::vector<float>(static_cast<size_t>(T) * H));
  IndexerDistillArgs a{.kl = kl, .grad_q = gq, .grad_k = gk, .grad_w = gw, .q = q, .k = k, .w = w, .p = dp,
                       .tokens = T, .heads = H, .head_dim = d};
  for (auto _ : state) {
    if (!Gpu().IndexerDistill(a).ok() || !Gpu().Synchronize().ok()) state.SkipWithError("IndexerDistill failed");
  }
  const double pairs = 0.5 * T * (T + 1.0) * H;
  Report(state, 5.0 * 2.0 * pairs * d, 4.0 * (2.0 * T * T + 2.0 * T * (H * d + d + H)));
}
BENCHMARK(BM_IndexerDistill)->Args({1024, 4, 64})->Args({2048, 64, 128})->UseRealTime()->Unit(benchmark::kMillisecond);

// What a CUDA graph saves on a decode-like chain of small ops (Backend::BeginCapture): `ops` RmsNorms of one
// 2048-wide row (a decode step has 20–30 ops per layer, most this small), queued one by one (graph 0) or
// replayed from a graph of the same chain (graph 1); marks 1 adds a pair of time marks around every 8th op,
// as the engine times a Full layer's indexer (inside a graph: event-record nodes). Reports µs per op.
void BM_DecodeChainGraph(benchmark::State& state) {
  const int ops = static_cast<int>(state.range(0)), dim = 2048;
  const bool graph = state.range(1) != 0, marks = state.range(2) != 0;
  float* x = Upload(Random(dim, 7));
  float* w = Upload(Random(dim, 8));
  auto chain = [&]() -> absl::Status {
    for (int i = 0; i < ops; ++i) {
      if (marks && i % 8 == 0) {
        absl::StatusOr<int> m = Gpu().TimeMark();
        if (!m.ok()) return m.status();
      }
      if (absl::Status s = Gpu().RmsNorm({.out = x, .in = x, .weight = w, .rows = 1, .dim = dim}); !s.ok()) return s;
      if (marks && i % 8 == 7) {
        absl::StatusOr<int> m = Gpu().TimeMark();
        if (!m.ok()) return m.status();
      }
    }
    return absl::OkStatus();
  };
  std::unique_ptr<CapturedGraph> g;
  if (graph) {
    Gpu().ResetTimeMarks();
    absl::Status s = chain();  // create the events outside the capture
    if (s.ok()) s = Gpu().Synchronize();
    Gpu().ResetTimeMarks();
    if (s.ok()) s = Gpu().BeginCapture();
    if (s.ok()) s = chain();
    absl::StatusOr<std::unique_ptr<CapturedGraph>> captured = Gpu().EndCapture();
    if (!s.ok() || !captured.ok()) {
      state.SkipWithError("capture failed");
      return;
    }
    g = *std::move(captured);
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    Gpu().ResetTimeMarks();
    const absl::Status s = graph ? Gpu().LaunchGraph(*g) : chain();
    if (!s.ok() || !Gpu().Synchronize().ok()) state.SkipWithError("chain failed");
  }
  const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  state.counters["us_per_op"] = us / (static_cast<double>(state.iterations()) * ops);  // a plain number (µs)
  Gpu().Free(x);
  Gpu().Free(w);
}
BENCHMARK(BM_DecodeChainGraph)
    ->ArgsProduct({{64, 512}, {0, 1}, {0, 1}})
    ->ArgNames({"ops", "graph", "marks"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace ic::kernels

int main(int argc, char** argv) {
  if (ic::kernels::CudaDeviceCount() == 0) {
    std::printf("cuda_kernels_bench: no CUDA device visible (or a build without CUDA): nothing to measure\n");
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
