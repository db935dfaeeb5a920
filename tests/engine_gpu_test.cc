// The whole engine on the GPU against the CPU reference: golden checkpoints (HF logits, top-k sets,
// greedy tokens) and synthetic models of every architecture (logits, margin-equal indices per layer,
// chunked prefill, batched decode). Skipped when no GPU is visible.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "sdk/distill_loop.h"
#include "sdk/engine.h"
#include "sdk/plan.h"
#include "sdk/safetensors.h"
#include "sdk/synthetic_model.h"
#include "tests/engine_test_util.h"
#include "tests/index_sets.h"

namespace ic {
namespace {

using kernels::DeviceKind;

std::string DataDir() {
  const char* env = std::getenv("IC_TEST_DATA");
  return env != nullptr ? env : IC_SOURCE_DIR "/tests/data";
}

class EngineGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible (or a build without CUDA)";
  }
};

struct Pass {
  std::vector<float> logits;
  std::map<int, std::vector<int32_t>> topk;
  std::map<int, std::vector<float>> scores;
};

Pass RunPass(std::shared_ptr<const Model> model, DeviceKind device, const std::vector<int32_t>& tokens,
             std::vector<int> chunks, kernels::Precision precision = kernels::Precision::kF32) {
  auto ctx = Context::Create(model, {.device = device, .max_tokens = 8192, .indexer_precision = precision});
  EXPECT_TRUE(ctx.ok()) << ctx.status();
  Pass p;
  if (!ctx.ok()) return p;
  const int seq = *(*ctx)->AddSequence();
  const int n = static_cast<int>(tokens.size()), V = model->config.vocab_size;
  p.logits.resize(static_cast<size_t>(n) * V);
  int off = 0;
  for (int chunk : chunks) {
    chunk = std::min(chunk, n - off);
    if (chunk <= 0) break;
    std::map<int, std::vector<int32_t>> topk;
    std::map<int, std::vector<float>> scores;
    Segment seg{seq, std::span(tokens).subspan(off, chunk)};
    EXPECT_TRUE((*ctx)->Forward({&seg, 1}, {.all_logits = p.logits.data() + static_cast<size_t>(off) * V,
                                            .topk_by_layer = &topk, .scores_by_layer = &scores})
                    .ok());
    for (auto& [l, v] : topk) p.topk[l].insert(p.topk[l].end(), v.begin(), v.end());
    for (auto& [l, v] : scores) {
      const int cols = static_cast<int>(v.size() / chunk);
      for (int r = 0; r < chunk; ++r) {
        std::vector<float> row(n, -INFINITY);
        std::copy(v.begin() + static_cast<size_t>(r) * cols, v.begin() + static_cast<size_t>(r + 1) * cols, row.begin());
        p.scores[l].insert(p.scores[l].end(), row.begin(), row.end());
      }
    }
    off += chunk;
  }
  return p;
}

using test::RelError;

TEST_F(EngineGpuTest, GoldenCheckpointsMatchTransformersOnTheGpu) {
  for (const char* name : {"dsv32-tiny", "glm5-tiny-indexcache", "llama-tiny-dense"}) {
    SCOPED_TRACE(name);
    const std::string dir = DataDir() + "/golden/" + name;
    auto model = LoadModel(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    auto golden = TensorStore::Open(dir + "/golden.safetensors");
    ASSERT_TRUE(golden.ok());
    const TensorInfo* ids_info = (*golden)->Find("input_ids");
    std::vector<int32_t> ids(ids_info->numel());
    std::memcpy(ids.data(), ids_info->data, ids.size() * 4);
    auto want = (*golden)->ReadF32(*(*golden)->Find("logits"));
    Pass gpu = RunPass(*model, DeviceKind::kCuda, ids, {80});
    EXPECT_LT(RelError(gpu.logits, *want), 1e-4);
    const ModelConfig& c = (*model)->config;
    for (int l = 0; l < c.num_hidden_layers && c.has_indexer; ++l) {
      if (!(*model)->plan.IsFull(l)) continue;
      const TensorInfo* t = (*golden)->Find("topk.layer" + std::to_string(l));
      for (int r = 0; r < 80; ++r) {
        std::vector<int32_t> a, b;
        for (int j = 0; j < c.index_topk; ++j) {
          const int32_t g = gpu.topk[l][r * c.index_topk + j];
          const int32_t w = reinterpret_cast<const int32_t*>(t->data)[r * c.index_topk + j];
          if (g >= 0) a.push_back(g);
          if (w <= r) b.push_back(w);
        }
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        ASSERT_EQ(a, b) << "layer " << l << " row " << r;
      }
    }
  }
}

// Every layer's GPU top-k margin-equal (DESIGN.md §3, relative ε) to the CPU's, on the CPU scores of the
// layer's source Full layer, for one sequence of n tokens prefilled from position 0.
void ExpectTopkMarginEqual(const Pass& gpu, const Pass& cpu, const Model& model, int n, float eps) {
  std::vector<int32_t> valid(n);
  std::iota(valid.begin(), valid.end(), 1);
  for (const auto& [l, idx] : gpu.topk) {
    const int src = model.plan.SourceLayer(l);
    EXPECT_TRUE(test::IndexSetsMarginEqual(idx.data(), cpu.topk.at(l).data(), n, model.config.index_topk,
                                           cpu.scores.at(src).data(), n, valid.data(), eps))
        << "layer " << l;
  }
}

// The small synthetic models the parity tests run: 4 layers, hidden 128, vocabulary 300, top-k 48, plan
// FSFS (dense Llama: no plan).
SyntheticModelOptions SmallModel(Architecture arch) {
  SyntheticModelOptions o;
  o.arch = arch;
  o.num_layers = 4;
  o.hidden_size = 128;
  o.vocab_size = 300;
  o.index_topk = 48;
  o.plan = arch == Architecture::kLlama ? "" : "FSFS";
  return o;
}

TEST_F(EngineGpuTest, SyntheticModelsMatchTheCpuReference) {
  for (Architecture arch : {Architecture::kDeepseekV32, Architecture::kGlmMoeDsa, Architecture::kLlamaDsa,
                            Architecture::kLlama}) {
    SCOPED_TRACE(std::string(ArchitectureName(arch)));
    SyntheticModelOptions o = SmallModel(arch);
    o.index_n_heads = 4;
    o.index_head_dim = 32;
    auto model = BuildSyntheticModel(o);
    ASSERT_TRUE(model.ok()) << model.status();
    const std::vector<int32_t> tokens = test::RandomTokens(700, o.vocab_size, 17);
    Pass cpu = RunPass(*model, DeviceKind::kCpu, tokens, {700});
    Pass gpu = RunPass(*model, DeviceKind::kCuda, tokens, {1, 255, 64, 380});  // chunked on the GPU
    EXPECT_LT(RelError(gpu.logits, cpu.logits), 1e-4);
    ExpectTopkMarginEqual(gpu, cpu, **model, 700, 1e-5f);
  }
}

// The BF16 indexer (tensor cores for these shapes: 16 heads × 64 and 8 heads × 128) against the CPU's
// BF16 emulation: index sets margin-equal on the CPU's BF16 scores with DESIGN.md §3's BF16 ε (1e-2: the
// F32 noise of the layers before an indexer can flip a BF16 rounding of its q or k, which moves a score
// by up to ~2^-8 relative), and logits within 5e-3 (a key swapped at such a near-tie changes attention a
// little: 3.3e-4 measured on the 16-core H200 host; 2.25e-3 on the 32-core 2-GPU host, where the CPU
// reference's OpenBLAS sums over 32 threads in another order and one near-tie flips — 16 or 1 threads
// there give < 2e-3; DESIGN.md §3's BF16 tolerance is 1e-2).
TEST_F(EngineGpuTest, Bf16IndexerMatchesTheCpuBf16Reference) {
  struct Shape {
    Architecture arch;
    int heads, dim;
  };
  for (const Shape& sh : {Shape{Architecture::kDeepseekV32, 16, 64}, Shape{Architecture::kGlmMoeDsa, 8, 128}}) {
    SCOPED_TRACE(std::string(ArchitectureName(sh.arch)));
    SyntheticModelOptions o = SmallModel(sh.arch);
    o.index_n_heads = sh.heads;
    o.index_head_dim = sh.dim;
    auto model = BuildSyntheticModel(o);
    ASSERT_TRUE(model.ok()) << model.status();
    const std::vector<int32_t> tokens = test::RandomTokens(600, o.vocab_size, 23);
    const auto bf16 = kernels::Precision::kBF16;
    Pass cpu = RunPass(*model, DeviceKind::kCpu, tokens, {600}, bf16);
    Pass gpu = RunPass(*model, DeviceKind::kCuda, tokens, {5, 300, 295}, bf16);
    EXPECT_LT(RelError(gpu.logits, cpu.logits), 5e-3);
    ExpectTopkMarginEqual(gpu, cpu, **model, 600, 1e-2f);
  }
}

// BF16 weights (cuBLASLt BF16 GEMMs) and block-scaled FP8 weights (cuBLASLt FP8, FP8 GEMV) against the CPU's
// reference of the same precision. Where no discrete decision
// (a top-k selection, an expert choice) amplifies the rare activation that rounds to the other BF16
// neighbour: layer 0's output with a prompt no longer than top-k (every architecture: MLA / GQA
// projections, indexer, dense MLP; chunked on the GPU), and a dense model's logits (every layer, LM head).
// The two runs of one precision must agree much more closely than either agrees with F32.
TEST_F(EngineGpuTest, Bf16AndFp8WeightsMatchTheCpuReference) {
  const auto f32 = kernels::Precision::kF32, bf16 = kernels::Precision::kBF16, fp8 = kernels::Precision::kFP8;
  struct Run {
    std::vector<float> logits;  // last token
    std::map<int, std::vector<float>> hidden;
  };
  auto run = [](std::shared_ptr<const Model> model, DeviceKind device, const std::vector<int32_t>& tokens,
                std::vector<int> chunks, kernels::Precision weights) {
    Run r;
    auto ctx = Context::Create(model, {.device = device, .max_tokens = 1024, .weight_precision = weights});
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    if (!ctx.ok()) return r;
    const int seq = *(*ctx)->AddSequence();
    r.logits.resize(model->config.vocab_size);
    size_t off = 0;
    for (int chunk : chunks) {
      std::map<int, std::vector<float>> hidden;
      Segment seg{seq, std::span(tokens).subspan(off, chunk)};
      EXPECT_TRUE((*ctx)->Forward({&seg, 1}, {.last_logits = r.logits.data(), .hidden_by_layer = &hidden}).ok());
      for (auto& [l, v] : hidden) r.hidden[l].insert(r.hidden[l].end(), v.begin(), v.end());
      off += chunk;
    }
    return r;
  };
  for (Architecture arch : {Architecture::kDeepseekV32, Architecture::kGlmMoeDsa, Architecture::kLlamaDsa,
                            Architecture::kLlama}) {
    SCOPED_TRACE(std::string(ArchitectureName(arch)));
    const SyntheticModelOptions o = SmallModel(arch);
    auto model = BuildSyntheticModel(o);
    ASSERT_TRUE(model.ok()) << model.status();
    const bool dense = !(*model)->config.has_indexer;
    const std::vector<int32_t> tokens = test::RandomTokens(dense ? 400 : 40, o.vocab_size, 29);
    const int n = static_cast<int>(tokens.size());
    const Run cpu_f32 = run(*model, DeviceKind::kCpu, tokens, {n}, f32);
    // BF16, then block-scaled FP8 (both backends quantise activations identically; an element whose F32
    // value differs by a rounding across an E4M3 boundary moves by one FP8 step, hence the looser bound).
    // Bounds: layer 0's output, and the logits after every layer (FP8: 2.75% measured on the H200, where
    // F32 against FP8 differs by more).
    for (const auto [weights, bound, logit_bound, name] :
         {std::tuple{bf16, 2e-3, 5e-3, "bf16"}, std::tuple{fp8, 1e-2, 5e-2, "fp8"}}) {
      SCOPED_TRACE(name);
      const Run cpu = run(*model, DeviceKind::kCpu, tokens, {n}, weights);
      const Run gpu = run(*model, DeviceKind::kCuda, tokens, {7, n - 7}, weights);  // GEMV rows, padded rows
      const double err = RelError(gpu.hidden.at(1), cpu.hidden.at(1));
      const double rounding = RelError(cpu.hidden.at(1), cpu_f32.hidden.at(1));
      EXPECT_LT(err, bound);
      EXPECT_GT(rounding, 3 * err);
      RecordProperty(std::string("layer0_") + name + "_gpu_vs_cpu", std::to_string(err));
      RecordProperty(std::string("layer0_") + name + "_vs_f32", std::to_string(rounding));
      if (dense) {
        const double logit_err = RelError(gpu.logits, cpu.logits);
        EXPECT_LT(logit_err, logit_bound);
        EXPECT_GT(RelError(cpu.logits, cpu_f32.logits), logit_err);
      }
    }
  }
}

TEST_F(EngineGpuTest, BatchedDecodeOnTheGpuMatchesTheCpu) {
  auto model = BuildSyntheticModel({.num_layers = 3, .hidden_size = 128, .vocab_size = 256, .index_topk = 16,
                                    .index_n_heads = 4, .index_head_dim = 32, .plan = "FSF"});
  ASSERT_TRUE(model.ok());
  std::vector<std::vector<float>> out;
  for (DeviceKind dev : {DeviceKind::kCpu, DeviceKind::kCuda}) {
    auto ctx = *Context::Create(*model, {.device = dev, .max_tokens = 4096});
    std::vector<int> seqs;
    for (int i = 0; i < 4; ++i) {
      seqs.push_back(*ctx->AddSequence());
      std::vector<int32_t> prompt(10 + 50 * i);
      for (size_t j = 0; j < prompt.size(); ++j) prompt[j] = (7 * j + i) % 256;
      ASSERT_TRUE(ctx->Prefill(seqs.back(), prompt).ok());
    }
    std::vector<float> logits(4 * 256);
    std::vector<int32_t> next = {1, 2, 3, 4};
    for (int step = 0; step < 5; ++step) ASSERT_TRUE(ctx->Decode(seqs, next, logits.data()).ok());
    out.push_back(logits);
  }
  EXPECT_LT(RelError(out[1], out[0]), 1e-4);
}

// CUDA-graph decode (ContextOptions::cuda_graphs) against eager decode on the same GPU: three sequences
// of mixed lengths decode 24 steps from fixed tokens; one crosses from 4 to 5 cache blocks, so the step
// shape changes (block tables padded to 4, then 8 blocks) and a second graph is captured. DSA models attend
// over top-k lists of a fixed width, so the graph steps give the eager logits bit for bit; the dense Llama
// model's attention splits its keys by the table width, so it agrees to F32 rounding (F32 weights: with
// BF16 ones a rounding flip at a GEMM input moves a logit by 2^-8 relative, 5e-4 measured on the H200).
// In between, a long prefill moves the scratch buffers, and the graph is recaptured rather than replayed.
TEST_F(EngineGpuTest, DecodeFromCudaGraphsMatchesEagerDecode) {
  struct Case {
    Architecture arch;
    kernels::Precision indexer, attention, weights;
  };
  using kernels::Precision;
  const Case cases[] = {
      {Architecture::kDeepseekV32, Precision::kF32, Precision::kF32, Precision::kF32},
      {Architecture::kDeepseekV32, Precision::kFP8, Precision::kBF16, Precision::kFP8},
      {Architecture::kGlmMoeDsa, Precision::kBF16, Precision::kF32, Precision::kBF16},
      {Architecture::kLlamaDsa, Precision::kF32, Precision::kF32, Precision::kF32},
      {Architecture::kLlama, Precision::kF32, Precision::kF32, Precision::kF32},
  };
  for (const Case& cs : cases) {
    SCOPED_TRACE(absl::StrCat(std::string(ArchitectureName(cs.arch)), " indexer ", static_cast<int>(cs.indexer), " attention ",
                              static_cast<int>(cs.attention), " weights ", static_cast<int>(cs.weights)));
    SyntheticModelOptions o = SmallModel(cs.arch);
    o.index_n_heads = 16;
    o.index_head_dim = 64;
    auto model = BuildSyntheticModel(o);
    ASSERT_TRUE(model.ok()) << model.status();
    const int V = o.vocab_size;
    std::vector<std::vector<float>> logits_by_mode;
    for (bool graphs : {false, true}) {
      auto ctx = Context::Create(*model, {.device = DeviceKind::kCuda, .max_tokens = 8192,
                                          .indexer_precision = cs.indexer, .attention_precision = cs.attention,
                                          .weight_precision = cs.weights, .cuda_graphs = graphs});
      ASSERT_TRUE(ctx.ok()) << ctx.status();
      std::vector<int> seqs;
      for (int len : {40, 100, 250}) {
        seqs.push_back(*(*ctx)->AddSequence());
        ASSERT_TRUE((*ctx)->Prefill(seqs.back(), test::RandomTokens(len, V, len)).ok());
      }
      std::vector<float> all;
      std::vector<float> logits(3 * static_cast<size_t>(V));
      Metrics::Totals before;
      for (int step = 0; step < 24; ++step) {
        if (step == 13) before = Metrics::Global().GetTotals();
        if (step == 12) {  // a long prefill of another sequence grows the scratch buffers the graph reads
          const int other = *(*ctx)->AddSequence();
          ASSERT_TRUE((*ctx)->Prefill(other, test::RandomTokens(600, V, 5)).ok());
          ASSERT_TRUE((*ctx)->RemoveSequence(other).ok());
        }
        const std::vector<int32_t> next = {(7 * step) % V, (7 * step + 1) % V, (7 * step + 2) % V};
        const absl::Status s = (*ctx)->Decode(seqs, next, logits.data());
        ASSERT_TRUE(s.ok()) << s;
        all.insert(all.end(), logits.begin(), logits.end());
      }
      // Steps 13–23 replay one shape's graphs (the first replay the timed one): every step still counts
      // its Full layers' indexer runs, a measured (sampled) indexer time and its Shared layers.
      const Metrics::Totals delta = Metrics::Global().GetTotals() - before;
      const int full = (*model)->config.has_indexer ? (*ctx)->plan().NumFull() : 0;
      EXPECT_EQ(delta.decode_passes, 11);
      EXPECT_EQ(delta.layers_run, 11 * full);
      // indexcache_decode_graph_*: step 13 eager (then captured), steps 14–23 replayed.
      EXPECT_EQ(delta.graph_eager_steps, graphs ? 1 : 0);
      EXPECT_EQ(delta.graph_captures, graphs ? 1 : 0);
      EXPECT_EQ(delta.graph_replays, graphs ? 10 : 0);
      EXPECT_EQ(delta.graph_capture_failures, 0);
      if (full > 0) {
        EXPECT_EQ(delta.layers_skipped, 11 * (o.num_layers - full));
        EXPECT_GT(delta.indexer_seconds, 0.0);
        EXPECT_GT(delta.saved_seconds, 0.0);
      }
      const DecodeGraphStats& st = (*ctx)->decode_graph_stats();
      if (graphs) {
        EXPECT_EQ(st.capture_failures, 0) << st.last_capture_error;
        // Shapes: 4 blocks (steps 0–5), 8 blocks (6–23), each captured at its second eager step; the
        // prefill at step 12 moves the buffers, and the shape is run eagerly twice and captured again.
        EXPECT_EQ(st.captures, 3);
        EXPECT_EQ(st.eager_steps, 6);
        EXPECT_EQ(st.replays, 18);
        EXPECT_EQ(st.graphs, 1u);
        EXPECT_GT(st.last_graph_nodes, static_cast<size_t>(10 * o.num_layers));  // a launch per op, 20–30 a layer
      } else {
        EXPECT_EQ(st.captures + st.replays + st.eager_steps, 0);
      }
      logits_by_mode.push_back(std::move(all));
    }
    if (cs.arch == Architecture::kLlama) {
      EXPECT_LT(RelError(logits_by_mode[1], logits_by_mode[0]), 1e-5);
    } else {
      EXPECT_EQ(logits_by_mode[1], logits_by_mode[0]);
    }
  }
}

// A graph replays whatever sequences the step holds: after a sequence is removed, another forked from a
// survivor, and the batch order swapped, the same shape replays the same graph on the new block tables and
// positions, and the logits still equal eager decode bit for bit (a DSA model).
TEST_F(EngineGpuTest, CudaGraphReplaysFollowSequenceChanges) {
  auto model = BuildSyntheticModel(SmallModel(Architecture::kDeepseekV32));
  ASSERT_TRUE(model.ok());
  const int V = 300;
  std::vector<std::vector<float>> by_mode;
  std::vector<DecodeGraphStats> stats;
  for (bool graphs : {false, true}) {
    auto ctx = *Context::Create(*model, {.device = DeviceKind::kCuda, .max_tokens = 4096, .cuda_graphs = graphs});
    const int a = *ctx->AddSequence(), b = *ctx->AddSequence();
    ASSERT_TRUE(ctx->Prefill(a, test::RandomTokens(90, V, 1)).ok());
    ASSERT_TRUE(ctx->Prefill(b, test::RandomTokens(70, V, 2)).ok());
    std::vector<float> all, logits(2 * static_cast<size_t>(V));
    auto step = [&](std::vector<int> seqs, int i) {
      const std::vector<int32_t> next = {(11 * i) % V, (13 * i + 5) % V};
      const absl::Status s = ctx->Decode(seqs, next, logits.data());
      ASSERT_TRUE(s.ok()) << s;
      all.insert(all.end(), logits.begin(), logits.end());
    };
    for (int i = 0; i < 4; ++i) step({a, b}, i);
    ASSERT_TRUE(ctx->RemoveSequence(b).ok());
    const int c = *ctx->ForkSequence(a);  // a's cache, another sequence id and other blocks
    for (int i = 4; i < 8; ++i) step({c, a}, i);
    by_mode.push_back(std::move(all));
    stats.push_back(ctx->decode_graph_stats());
  }
  EXPECT_EQ(by_mode[1], by_mode[0]);
  EXPECT_EQ(stats[1].captures, 1);  // one shape throughout: 2 sequences, 2 blocks each
  EXPECT_EQ(stats[1].replays, 6);
}

// Decode steps that need the host between ops stay eager with graphs on, and give the same results.
TEST_F(EngineGpuTest, CudaGraphsLeaveHostBoundStepsEager) {
  auto model = BuildSyntheticModel(SmallModel(Architecture::kDeepseekV32));
  ASSERT_TRUE(model.ok());
  auto ctx = *Context::Create(*model, {.device = DeviceKind::kCuda, .max_tokens = 4096});
  const int seq = *ctx->AddSequence();
  ASSERT_TRUE(ctx->Prefill(seq, test::RandomTokens(70, 300, 3)).ok());
  std::map<int, std::vector<int32_t>> topk;
  std::vector<float> logits(300);
  const int32_t token = 5;
  const Segment segment{.seq_id = seq, .tokens = {&token, 1}};
  ASSERT_TRUE(ctx->Forward({&segment, 1}, {.last_logits = logits.data(), .topk_by_layer = &topk}).ok());
  EXPECT_EQ(topk.size(), 4u);
  EXPECT_EQ(ctx->decode_graph_stats().eager_steps + ctx->decode_graph_stats().captures, 0);
  // A MoE batch above kMoeFusedMaxPairs (token, expert) pairs routes expert by expert through the host.
  std::vector<int> seqs;
  for (int i = 0; i < kernels::kMoeFusedMaxPairs; ++i) {
    seqs.push_back(*ctx->AddSequence());
    ASSERT_TRUE(ctx->Prefill(seqs.back(), test::RandomTokens(8, 300, i)).ok());
  }
  std::vector<float> many(seqs.size() * 300);
  ASSERT_TRUE(ctx->Decode(seqs, std::vector<int32_t>(seqs.size(), 1), many.data()).ok());
  EXPECT_EQ(ctx->decode_graph_stats().eager_steps + ctx->decode_graph_stats().captures, 0);
  // One sequence: eager twice, then captured, then replayed; turning graphs off frees them.
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(ctx->Decode({&seq, 1}, {&token, 1}, logits.data()).ok());
  EXPECT_EQ(ctx->decode_graph_stats().captures, 1);
  EXPECT_EQ(ctx->decode_graph_stats().replays, 2);
  EXPECT_EQ(ctx->decode_graph_stats().graphs, 1u);
  ctx->SetCudaGraphs(false);
  EXPECT_EQ(ctx->decode_graph_stats().graphs, 0u);
  ASSERT_TRUE(ctx->Decode({&seq, 1}, {&token, 1}, logits.data()).ok());
  EXPECT_EQ(ctx->decode_graph_stats().replays, 2);
  EXPECT_EQ(ctx->decode_graph_stats().eager_steps, 2);
}

}  // namespace
}  // namespace ic

namespace ic {
namespace {

// The distillation and evaluation captures on the GPU against the CPU on fresh random tokens: the
// head-averaged attention (dense at a dense model; over the selected keys and dense at a DSA model), the
// indexer inputs, and the selection report built from them. Top-k sets may differ where scores tie within
// float noise (DESIGN.md §3), so the DSA model's sparse capture is compared on rows whose sets agree.
TEST_F(EngineGpuTest, AttentionCapturesMatchTheCpu) {
  for (Architecture arch : {Architecture::kLlama, Architecture::kLlamaDsa, Architecture::kDeepseekV32}) {
    SyntheticModelOptions o;
    o.arch = arch;
    o.num_layers = 3;
    o.hidden_size = 128;
    o.vocab_size = 256;
    o.index_topk = 16;
    o.index_n_heads = 4;
    o.index_head_dim = 32;
    auto model = BuildSyntheticModel(o);
    ASSERT_TRUE(model.ok()) << model.status();
    std::mt19937 rng(static_cast<uint32_t>(std::random_device{}()));
    std::uniform_int_distribution<int32_t> tok(0, 255);
    std::vector<int32_t> tokens(77);
    for (auto& t : tokens) t = tok(rng);
    struct Captured {
      std::map<int, std::vector<float>> attention, dense;
      std::map<int, IndexerInputs> inputs;
      std::map<int, std::vector<int32_t>> topk;
    };
    auto capture = [&](DeviceKind device) {
      Captured c;
      auto ctx = Context::Create(*model, {.device = device, .max_tokens = 128});
      EXPECT_TRUE(ctx.ok()) << ctx.status();
      const int seq = *(*ctx)->AddSequence();
      Segment seg{seq, tokens};
      ForwardOutputs out;
      out.attention_by_layer = &c.attention;
      out.dense_attention_by_layer = &c.dense;
      out.indexer_inputs_by_layer = &c.inputs;
      if ((*model)->config.has_indexer) out.topk_by_layer = &c.topk;
      EXPECT_TRUE((*ctx)->Forward({&seg, 1}, out).ok());
      return c;
    };
    const Captured cpu = capture(DeviceKind::kCpu), gpu = capture(DeviceKind::kCuda);
    const std::string name(ArchitectureName(arch));
    for (int l = 0; l < 3; ++l) {
      EXPECT_LT(RelError(gpu.dense.at(l), cpu.dense.at(l)), 1e-4) << name << " layer " << l;
      EXPECT_LT(RelError(gpu.inputs.at(l).x, cpu.inputs.at(l).x), 1e-5) << name << " layer " << l;
      EXPECT_LT(RelError(gpu.inputs.at(l).x_q, cpu.inputs.at(l).x_q), 1e-5) << name << " layer " << l;
      EXPECT_EQ(gpu.inputs.at(l).x_q.empty(), !(*model)->config.mla);
      if (!(*model)->config.has_indexer) {
        EXPECT_LT(RelError(gpu.attention.at(l), cpu.attention.at(l)), 1e-4) << name << " layer " << l;
        continue;
      }
      const int K = (*model)->config.index_topk, T = static_cast<int>(tokens.size());
      std::vector<float> a, b;
      for (int t = 0; t < T; ++t) {
        std::vector<int32_t> x(cpu.topk.at(l).begin() + t * K, cpu.topk.at(l).begin() + (t + 1) * K);
        std::vector<int32_t> y(gpu.topk.at(l).begin() + t * K, gpu.topk.at(l).begin() + (t + 1) * K);
        std::sort(x.begin(), x.end());
        std::sort(y.begin(), y.end());
        if (x != y) continue;
        a.insert(a.end(), gpu.attention.at(l).begin() + t * T, gpu.attention.at(l).begin() + (t + 1) * T);
        b.insert(b.end(), cpu.attention.at(l).begin() + t * T, cpu.attention.at(l).begin() + (t + 1) * T);
      }
      EXPECT_GT(a.size(), static_cast<size_t>(T) * T / 2) << name << " layer " << l << ": few rows agree";
      EXPECT_LT(RelError(a, b), 1e-4) << name << " layer " << l;
    }
  }
}

// Distillation with the GPU teacher and the GPU's loss kernels (Backend::IndexerDistill) against the CPU's
// double path: the per-layer losses before training, and after three Adam steps the indexer weights (the
// first Adam steps move each weight by about ±lr, so a gradient near 0 may move the other way: bounded in
// norm, not per element) and the losses again.
TEST_F(EngineGpuTest, DistillationOnTheGpuMatchesTheCpu) {
  auto model =
      BuildSyntheticModel({.arch = Architecture::kLlama, .num_layers = 4, .hidden_size = 128, .vocab_size = 256});
  ASSERT_TRUE(model.ok()) << model.status();
  auto plan = ParsePlan("FSFF", 4);
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto init = InitIndexerTraining((*model)->config, {.n_heads = 4, .head_dim = 32, .topk = 16}, *plan, 7);
  ASSERT_TRUE(init.ok()) << init.status();
  const uint32_t seed = std::random_device{}();
  std::vector<std::vector<int32_t>> windows;
  for (uint32_t i = 0; i < 3; ++i) windows.push_back(test::RandomTokens(150, 256, seed + i));
  DistillOptions d;
  d.steps = 3;
  d.learning_rate = 1e-3;
  d.warmup_steps = 0;
  IndexerTrainingState cpu = *init, gpu = *init;
  for (int pass = 0; pass < 2; ++pass) {
    auto lc = EvaluateIndexers(*model, windows, cpu, DeviceKind::kCpu);
    auto lg = EvaluateIndexers(*model, windows, gpu, DeviceKind::kCuda);
    ASSERT_TRUE(lc.ok() && lg.ok()) << lc.status() << lg.status();
    for (int l : {0, 2, 3}) {
      EXPECT_GT((*lc)[l], 0) << "layer " << l;
      EXPECT_NEAR((*lg)[l], (*lc)[l], 1e-4 * (*lc)[l]) << "pass " << pass << " layer " << l;
    }
    EXPECT_EQ((*lg)[1], 0);  // Shared
    if (pass == 1) break;
    d.device = DeviceKind::kCpu;
    ASSERT_TRUE(TrainIndexers(*model, windows, d, &cpu).ok());
    d.device = DeviceKind::kCuda;
    ASSERT_TRUE(TrainIndexers(*model, windows, d, &gpu).ok());
    for (int l : {0, 2, 3}) {
      for (auto [a, b] : {std::pair{&cpu.indexers[l].wq, &gpu.indexers[l].wq},
                          std::pair{&cpu.indexers[l].wk, &gpu.indexers[l].wk},
                          std::pair{&cpu.indexers[l].weights_proj, &gpu.indexers[l].weights_proj}}) {
        EXPECT_LT(RelError(b->data, a->data), 1e-3) << "layer " << l;
      }
    }
  }
}

}  // namespace
}  // namespace ic
