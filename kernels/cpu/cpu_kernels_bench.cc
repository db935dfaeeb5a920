// Google Benchmark suite for the CPU reference kernels: index scores + top-k, attention (dense and
// sparse over top-k), top-k alone, GEMM. Counters: FLOP/s and bytes/s of the op's minimal traffic.
//
//   cmake -S . -B build -DIC_BUILD_BENCHMARKS=ON && cmake --build build --target cpu_kernels_bench
//   build/kernels/cpu/cpu_kernels_bench --benchmark_filter=Indexer
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_test_util.h"

namespace ic::kernels::cpu {
namespace {

using testutil::MakeCache;
using testutil::MakeLayout;
using testutil::MakePaged;
using testutil::RandomVector;

// Decode-like (one query at the end of a context of L tokens) or prefill-like (the last `queries` rows).
struct Scene {
  testutil::Paged paged;
  testutil::Tokens tokens;
  TokenLayout layout;
  Scene(int context, int queries, std::mt19937& rng) {
    paged = MakePaged({context}, 64, rng, 0);
    for (int p = context - queries; p < context; ++p) {
      tokens.seq.push_back(0);
      tokens.pos.push_back(p);
    }
    layout = MakeLayout(paged, tokens);
  }
};

void BM_IndexerTopk(benchmark::State& state) {
  const int context = state.range(0), queries = state.range(1), heads = 32, dim = 128, k = 2048;
  std::mt19937 rng(1);
  Scene s(context, queries, rng);
  auto cache = MakeCache(s.paged, dim, rng);
  auto q = RandomVector(static_cast<size_t>(queries) * heads * dim, rng);
  auto w = RandomVector(static_cast<size_t>(queries) * heads, rng);
  std::vector<int32_t> out(static_cast<size_t>(queries) * k);
  CpuBackend be;
  IndexerArgs a{.indices = out.data(), .q = q.data(), .w = w.data(), .k_cache = cache.data(), .k_stride = dim,
                .num_slots = s.paged.num_slots, .heads = heads, .head_dim = dim, .k = k, .layout = s.layout};
  for (auto _ : state) benchmark::DoNotOptimize(be.IndexerTopk(a));
  double pairs = 0;
  for (int p : s.tokens.pos) pairs += p + 1;
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * pairs * heads * dim, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["B/s"] = benchmark::Counter(4.0 * context * dim, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_IndexerTopk)->Args({8192, 1})->Args({32768, 1})->Args({4096, 256})->Unit(benchmark::kMillisecond);

void BM_Attention(benchmark::State& state) {
  const int context = state.range(0), queries = state.range(1), sparse_k = state.range(2);
  const int heads = 16, latent = 512 + 64;  // MLA absorbed: one latent KV head of kv_lora + rope
  std::mt19937 rng(2);
  Scene s(context, queries, rng);
  auto cache = MakeCache(s.paged, latent, rng);
  auto q = RandomVector(static_cast<size_t>(queries) * heads * latent, rng);
  std::vector<float> out(static_cast<size_t>(queries) * heads * 512);
  std::vector<int32_t> topk;
  if (sparse_k > 0) {
    for (int p : s.tokens.pos) {
      for (int j = 0; j < sparse_k; ++j) topk.push_back(j <= p ? (p - j) : -1);
    }
  }
  CpuBackend be;
  AttentionArgs a{.out = out.data(), .q = q.data(), .k_cache = cache.data(), .v_cache = cache.data(),
                  .k_stride = latent, .v_stride = latent, .q_heads = heads, .kv_heads = 1, .qk_dim = latent,
                  .v_dim = 512, .num_slots = s.paged.num_slots, .scale = 0.07f, .layout = s.layout,
                  .topk = sparse_k > 0 ? topk.data() : nullptr, .topk_k = sparse_k};
  for (auto _ : state) benchmark::DoNotOptimize(be.Attention(a));
  double keys = 0;
  for (int p : s.tokens.pos) keys += sparse_k > 0 ? std::min(p + 1, sparse_k) : p + 1;
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * keys * heads * (latent + 512),
                                                benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Attention)
    ->Args({8192, 1, 0})->Args({8192, 1, 2048})->Args({4096, 128, 0})->Args({4096, 128, 2048})
    ->Unit(benchmark::kMillisecond);

void BM_Topk(benchmark::State& state) {
  const int n = state.range(0), k = 2048;
  std::mt19937 rng(3);
  auto scores = RandomVector(n, rng);
  std::vector<int32_t> lengths = {n}, out(k);
  CpuBackend be;
  TopkArgs a{.out = out.data(), .scores = scores.data(), .lengths = lengths.data(), .rows = 1, .stride = n, .k = k};
  for (auto _ : state) benchmark::DoNotOptimize(be.Topk(a));
  state.counters["B/s"] = benchmark::Counter(4.0 * n, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Topk)->Arg(65536)->Arg(200000)->Unit(benchmark::kMicrosecond);

void BM_Gemm(benchmark::State& state) {
  const int m = state.range(0), n = 2048, k = 2048;
  std::mt19937 rng(4);
  auto a = RandomVector(static_cast<size_t>(m) * k, rng), b = RandomVector(static_cast<size_t>(n) * k, rng);
  std::vector<float> c(static_cast<size_t>(m) * n);
  CpuBackend be;
  GemmArgs g{.c = c.data(), .a = a.data(), .b = b.data(), .m = m, .n = n, .k = k};
  for (auto _ : state) benchmark::DoNotOptimize(be.Gemm(g));
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * m * n * k, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Gemm)->Arg(1)->Arg(512)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace ic::kernels::cpu

BENCHMARK_MAIN();
