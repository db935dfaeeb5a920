// Engine semantics on synthetic models (DESIGN.md §3): chunked prefill, decode vs prefill, batched
// decode, IndexCache reuse, k ≥ context equals dense, capacity errors, bad tokens, missing indexers.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <iterator>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sdk/engine.h"
#include "sdk/synthetic_model.h"
#include "tests/engine_test_util.h"
#include "tests/index_sets.h"

namespace ic {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<const Model> Synthetic(Architecture arch, int layers = 4, int topk = 16, const std::string& plan = "") {
  return test::SmallSynthetic(arch, layers, topk, plan);
}
using test::RandomTokens;
double MaxRelError(const std::vector<float>& a, const std::vector<float>& b) { return test::RelError(a, b); }

// Everything one pass over `tokens` produces, run as segments of the given chunk sizes.
struct PassResult {
  std::vector<float> logits;                         // [tokens, vocab]
  std::map<int, std::vector<int32_t>> topk;          // layer → [tokens, k]
  std::map<int, std::vector<float>> scores;          // Full layer → [tokens, tokens] (−inf padded)
};

PassResult RunChunks(std::shared_ptr<const Model> model, const std::vector<int32_t>& tokens, std::vector<int> chunks,
              const std::string& plan = "",
              kernels::Precision precision = kernels::Precision::kF32) {
  const ModelConfig& c = model->config;
  auto ctx = Context::Create(model, {.max_tokens = 4096, .plan = plan, .indexer_precision = precision});
  EXPECT_TRUE(ctx.ok()) << ctx.status();
  const int seq = *(*ctx)->AddSequence();
  PassResult run;
  const int n = static_cast<int>(tokens.size());
  run.logits.resize(static_cast<size_t>(n) * c.vocab_size);
  int off = 0;
  for (int chunk : chunks) {
    if (off >= n) break;
    chunk = std::min(chunk, n - off);
    std::map<int, std::vector<int32_t>> topk;
    std::map<int, std::vector<float>> scores;
    Segment seg{seq, std::span(tokens).subspan(off, chunk)};
    ForwardOutputs out{.all_logits = run.logits.data() + static_cast<size_t>(off) * c.vocab_size,
                       .topk_by_layer = &topk, .scores_by_layer = &scores};
    EXPECT_TRUE((*ctx)->Forward({&seg, 1}, out).ok());
    for (auto& [l, v] : topk) run.topk[l].insert(run.topk[l].end(), v.begin(), v.end());
    for (auto& [l, v] : scores) {  // re-pad each chunk's rows to n columns
      const int cols = static_cast<int>(v.size() / chunk);
      auto& dst = run.scores[l];
      for (int r = 0; r < chunk; ++r) {
        std::vector<float> row(n, -INFINITY);
        std::copy(v.begin() + static_cast<size_t>(r) * cols, v.begin() + static_cast<size_t>(r + 1) * cols, row.begin());
        dst.insert(dst.end(), row.begin(), row.end());
      }
    }
    off += chunk;
  }
  return run;
}

void ExpectMarginEqual(const PassResult& a, const PassResult& b, const Model& model, int tokens, float rel_eps) {
  const int k = model.config.index_topk;
  std::vector<int32_t> valid(tokens);
  std::iota(valid.begin(), valid.end(), 1);
  for (auto& [l, idx] : a.topk) {
    const int src = model.plan.SourceLayer(l);
    const std::vector<float>& scores = b.scores.at(src);
    EXPECT_TRUE(test::IndexSetsMarginEqual(idx.data(), b.topk.at(l).data(), tokens, k, scores.data(), tokens,
                                     valid.data(), rel_eps))
        << "layer " << l;
  }
}

TEST(EngineTest, ChunkedPrefillMatchesOneShot_C5) {
  for (Architecture arch : {Architecture::kDeepseekV32, Architecture::kLlamaDsa}) {
    auto model = Synthetic(arch, 3, 32);
    const auto tokens = RandomTokens(1000, model->config.vocab_size, 5);
    PassResult one = RunChunks(model, tokens, {1000});
    PassResult chunked = RunChunks(model, tokens, {1, 7, 64, 333, 595});
    EXPECT_LT(MaxRelError(chunked.logits, one.logits), 1e-4);
    ExpectMarginEqual(chunked, one, *model, 1000, 1e-5f);
  }
}

TEST(EngineTest, DecodeAtPositionTEqualsPrefillRowT) {
  auto model = Synthetic(Architecture::kGlmMoeDsa, 4, 16, "FSFS");
  const ModelConfig& c = model->config;
  const auto tokens = RandomTokens(90, c.vocab_size, 7);
  PassResult ref = RunChunks(model, tokens, {90});
  PassResult dec = RunChunks(model, tokens, std::vector<int>(90, 1));  // 90 single-token passes = decode steps
  EXPECT_LT(MaxRelError(dec.logits, ref.logits), 1e-4);
  ExpectMarginEqual(dec, ref, *model, 90, 1e-5f);
}

TEST(EngineTest, BatchedDecodeOfMixedLengthsEqualsOneByOne) {
  auto model = Synthetic(Architecture::kDeepseekV32, 3, 8);
  const ModelConfig& c = model->config;
  auto ctx = *Context::Create(model, {.max_tokens = 2048});
  std::vector<int> seqs;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 3; ++i) {
    seqs.push_back(*ctx->AddSequence());
    prompts.push_back(RandomTokens(5 + 37 * i, c.vocab_size, 100 + i));
    ASSERT_TRUE(ctx->Prefill(seqs.back(), prompts.back()).ok());
  }
  const std::vector<int32_t> next = {3, 200, 77};
  std::vector<float> batched(3 * c.vocab_size);
  ASSERT_TRUE(ctx->Decode(seqs, next, batched.data()).ok());
  for (int i = 0; i < 3; ++i) {
    auto single = *Context::Create(model, {.max_tokens = 2048});
    const int s = *single->AddSequence();
    ASSERT_TRUE(single->Prefill(s, prompts[i]).ok());
    std::vector<float> one(c.vocab_size);
    ASSERT_TRUE(single->Decode({&s, 1}, {&next[i], 1}, one.data()).ok());
    std::vector<float> row(batched.begin() + i * c.vocab_size, batched.begin() + (i + 1) * c.vocab_size);
    EXPECT_LT(MaxRelError(row, one), 1e-5) << "sequence " << i;
    EXPECT_EQ(*ctx->SequenceLength(seqs[i]), static_cast<int64_t>(prompts[i].size()) + 1);
  }
}

// ContextOptions::cuda_graphs is a CUDA option: a CPU context runs every decode step eagerly (the GPU side is
// engine_gpu_test's DecodeFromCudaGraphsMatchesEagerDecode).
TEST(EngineTest, CudaGraphsAreIgnoredOnTheCpu) {
  auto model = Synthetic(Architecture::kDeepseekV32, 3, 8);
  auto ctx = *Context::Create(model, {.max_tokens = 512, .cuda_graphs = true});
  const int seq = *ctx->AddSequence();
  ASSERT_TRUE(ctx->Prefill(seq, RandomTokens(20, model->config.vocab_size, 4)).ok());
  const int32_t token = 9;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ctx->Decode({&seq, 1}, {&token, 1}, nullptr).ok());
  const DecodeGraphStats& st = ctx->decode_graph_stats();
  EXPECT_EQ(st.captures + st.replays + st.eager_steps + st.capture_failures, 0);
  EXPECT_EQ(st.graphs, 0u);
}

TEST(EngineTest, SharedLayersReuseTheNearestFullLayersIndices) {
  auto model = Synthetic(Architecture::kDeepseekV32, 6, 8);
  const auto tokens = RandomTokens(100, model->config.vocab_size, 9);
  PassResult dsa = RunChunks(model, tokens, {100});
  PassResult ic = RunChunks(model, tokens, {100}, "FSSFSS");
  for (int l : {1, 2}) EXPECT_EQ(ic.topk[l], ic.topk[0]) << l;
  for (int l : {4, 5}) EXPECT_EQ(ic.topk[l], ic.topk[3]) << l;
  EXPECT_EQ(ic.topk[0], dsa.topk[0]);  // layer 0 sees identical inputs
  EXPECT_NE(ic.topk[3], ic.topk[0]);   // the Full layer 3 selects its own
  // An all-Full plan given as a parameter is plain DSA: bitwise the same pass.
  PassResult all_full = RunChunks(model, tokens, {100}, "FFFFFF");
  EXPECT_EQ(all_full.logits, dsa.logits);
  EXPECT_EQ(all_full.topk, dsa.topk);
}

// ContextOptions::indexer_precision reaches the indexer: layer 0 (whose inputs do not depend on the
// indexer) gets scores that moved by BF16 rounding (more than F32 noise, less than 2^-7 of the scale),
// and its index sets differ from F32 only at positions whose F32 score is within twice that change of
// the row's k-th score.
// (Later layers see different inputs; on this random-weight model their logits move ~10%.)
TEST(EngineTest, Bf16PrecisionChangesOnlyTheIndexerArithmetic) {
  auto model = Synthetic(Architecture::kDeepseekV32, 4, 16);
  const auto tokens = RandomTokens(200, model->config.vocab_size, 5);
  PassResult f32 = RunChunks(model, tokens, {200});
  PassResult bf16 = RunChunks(model, tokens, {120, 80}, "", kernels::Precision::kBF16);
  const std::vector<float>& a = f32.scores.at(0);
  const std::vector<float>& b = bf16.scores.at(0);
  ASSERT_EQ(a.size(), b.size());
  double scale = 0.0, max_diff = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) {
      ASSERT_EQ(a[i], b[i]) << i;  // the same −inf padding
      continue;
    }
    scale = std::max(scale, std::fabs(static_cast<double>(a[i])));
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  EXPECT_GT(max_diff, 1e-5 * scale);
  EXPECT_LT(max_diff, std::ldexp(1.0, -7) * scale);
  const int k = 16;
  int rows_differing = 0;
  for (int r = k; r < 200; ++r) {  // rows with more than k keys
    std::vector<float> row(a.begin() + r * 200, a.begin() + r * 200 + r + 1);
    std::nth_element(row.begin(), row.begin() + (k - 1), row.end(), std::greater<float>());
    const double kth = row[k - 1];
    std::vector<int32_t> x(f32.topk.at(0).begin() + r * k, f32.topk.at(0).begin() + (r + 1) * k);
    std::vector<int32_t> y(bf16.topk.at(0).begin() + r * k, bf16.topk.at(0).begin() + (r + 1) * k);
    std::sort(x.begin(), x.end());
    std::sort(y.begin(), y.end());
    std::vector<int32_t> diff;
    std::set_symmetric_difference(x.begin(), x.end(), y.begin(), y.end(), std::back_inserter(diff));
    rows_differing += !diff.empty();
    for (int32_t s : diff) {
      EXPECT_LE(std::fabs(a[r * 200 + s] - kth), 2 * max_diff) << "row " << r << " position " << s;
    }
  }
  RecordProperty("rows_differing", rows_differing);
}

// ContextOptions::attention_precision reaches attention: the output of layer 0 (the input of layer 1),
// which depends on nothing else that changes, moves by BF16 rounding of q, k, v: more than F32 noise,
// within DESIGN.md §3's BF16 tolerance.
TEST(EngineTest, Bf16AttentionPrecisionChangesLayerZerosOutputByRoundingOnly) {
  auto model = Synthetic(Architecture::kDeepseekV32, 4, 16);
  const auto tokens = RandomTokens(120, model->config.vocab_size, 6);
  std::map<int, std::vector<float>> hidden[2];
  for (int i = 0; i < 2; ++i) {
    auto ctx = Context::Create(model, {.max_tokens = 512,
                                       .attention_precision = i ? kernels::Precision::kBF16 : kernels::Precision::kF32});
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    const int seq = *(*ctx)->AddSequence();
    Segment seg{seq, tokens};
    ASSERT_TRUE((*ctx)->Forward({&seg, 1}, {.hidden_by_layer = &hidden[i]}).ok());
  }
  const double err = MaxRelError(hidden[1].at(1), hidden[0].at(1));
  EXPECT_GT(err, 1e-6);
  EXPECT_LT(err, 1e-2);
}

// ContextOptions::attention_precision kBF16 stores the KV cache in BF16 (the values BF16 attention rounds
// to): half the KV bytes of an F32 context, MLA (one latent cache) and GQA (K and V caches) alike; a forked
// sequence copies its BF16 blocks, so the fork and the original decode the same logits.
TEST(EngineTest, Bf16AttentionKeepsAHalfSizeKvCache) {
  for (Architecture arch : {Architecture::kDeepseekV32, Architecture::kLlama}) {
    SCOPED_TRACE(std::string(ArchitectureName(arch)));
    auto model = Synthetic(arch, 4, 16);
    auto f32 = Context::Create(model, {.max_tokens = 512});
    auto bf16 = Context::Create(model, {.max_tokens = 512, .attention_precision = kernels::Precision::kBF16});
    ASSERT_TRUE(f32.ok() && bf16.ok());
    EXPECT_EQ((*f32)->cache_bytes().kv, 2 * (*bf16)->cache_bytes().kv);
    Context& ctx = **bf16;
    const auto tokens = RandomTokens(40, model->config.vocab_size, 8);
    const int seq = *ctx.AddSequence();
    ASSERT_TRUE(ctx.Prefill(seq, tokens, nullptr).ok());
    auto fork = ctx.ForkSequence(seq);
    ASSERT_TRUE(fork.ok()) << fork.status();
    std::vector<float> a(model->config.vocab_size), b(model->config.vocab_size);
    const int32_t next = 5;
    ASSERT_TRUE(ctx.Decode({&seq, 1}, {&next, 1}, a.data()).ok());
    ASSERT_TRUE(ctx.Decode({&*fork, 1}, {&next, 1}, b.data()).ok());
    EXPECT_EQ(a, b);
  }
}

// ContextOptions::weight_precision kBF16 moves results by BF16 rounding of the weights and of the GEMM
// inputs: more than F32 noise, within DESIGN.md §3's BF16 tolerance. Measured where no discrete decision
// (a top-k selection, an expert choice) can amplify a rounding: layer 0's output with a prompt no longer
// than top-k (every architecture: MLA / GQA projections, indexer, dense MLP), and the logits of a dense
// model (every layer, the LM head).
TEST(EngineTest, Bf16WeightsMoveResultsByRoundingOnly) {
  for (Architecture arch : {Architecture::kDeepseekV32, Architecture::kGlmMoeDsa, Architecture::kLlamaDsa,
                            Architecture::kLlama}) {
    SCOPED_TRACE(std::string(ArchitectureName(arch)));
    auto model = Synthetic(arch, 4, 16);
    const bool dense = !model->config.has_indexer;
    const auto tokens = RandomTokens(dense ? 96 : 16, model->config.vocab_size, 12);
    std::vector<float> logits[2];
    std::map<int, std::vector<float>> hidden[2];
    for (int i = 0; i < 2; ++i) {
      auto ctx = Context::Create(model, {.max_tokens = 512,
                                         .weight_precision = i ? kernels::Precision::kBF16 : kernels::Precision::kF32});
      ASSERT_TRUE(ctx.ok()) << ctx.status();
      const int seq = *(*ctx)->AddSequence();
      logits[i].resize(model->config.vocab_size);
      Segment seg{seq, tokens};
      ASSERT_TRUE((*ctx)->Forward({&seg, 1}, {.last_logits = logits[i].data(), .hidden_by_layer = &hidden[i]}).ok());
    }
    const double err = MaxRelError(hidden[1].at(1), hidden[0].at(1));
    EXPECT_GT(err, 1e-5);
    EXPECT_LT(err, 1e-2);
    if (dense) {
      const double logit_err = MaxRelError(logits[1], logits[0]);
      EXPECT_GT(logit_err, 1e-5);
      EXPECT_LT(logit_err, 2e-2);
    }
  }
}

// Block-scaled FP8 weights (kFP8): E4M3 keeps 3 mantissa bits, so the hidden state moves by a few per cent
// (more than BF16's rounding, less than a broken GEMM's garbage), on every architecture, MoE included (the
// routed experts then run expert by expert). The Gemm's arithmetic itself: cpu_gemm_test, parity_test.
TEST(EngineTest, Fp8WeightsMoveResultsByQuantisationOnly) {
  for (Architecture arch : {Architecture::kDeepseekV32, Architecture::kGlmMoeDsa, Architecture::kLlamaDsa,
                            Architecture::kLlama}) {
    SCOPED_TRACE(std::string(ArchitectureName(arch)));
    auto model = Synthetic(arch, 4, 16);
    const auto tokens = RandomTokens(16, model->config.vocab_size, 13);
    std::map<int, std::vector<float>> hidden[3];
    const kernels::Precision precisions[] = {kernels::Precision::kF32, kernels::Precision::kBF16,
                                             kernels::Precision::kFP8};
    for (int i = 0; i < 3; ++i) {
      auto ctx = Context::Create(model, {.max_tokens = 512, .weight_precision = precisions[i]});
      ASSERT_TRUE(ctx.ok()) << ctx.status();
      const int seq = *(*ctx)->AddSequence();
      std::vector<float> logits(model->config.vocab_size);
      Segment seg{seq, tokens};
      ASSERT_TRUE((*ctx)->Forward({&seg, 1}, {.last_logits = logits.data(), .hidden_by_layer = &hidden[i]}).ok());
      for (float x : logits) ASSERT_TRUE(std::isfinite(x));
    }
    const double bf16 = MaxRelError(hidden[1].at(1), hidden[0].at(1));  // after layer 0
    const double fp8 = MaxRelError(hidden[2].at(1), hidden[0].at(1));
    EXPECT_GT(fp8, 2 * bf16);  // FP8 rounds coarser than BF16 ...
    EXPECT_LT(fp8, 0.1);       // ... but stays an approximation of the same layer
  }
  auto model = Synthetic(Architecture::kDeepseekV32, 2, 16);
  auto bad = Context::Create(model, {.weight_precision = static_cast<kernels::Precision>(7)});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("weight_precision"));
}

// ContextOptions::indexer_precision kFP8: the index-K cache is d_I + 4 bytes per token (E4M3 + scale), and
// layer 0's sets (its inputs do not depend on the indexer) keep most of the F32 sets. A model with
// index_head_dim 48 (not a power of two: no Hadamard rotation) is refused with the reason.
TEST(EngineTest, Fp8IndexerKeepsLayerZerosSetsAndItsCacheSize) {
  auto model = Synthetic(Architecture::kDeepseekV32, 4, 32);
  const int dI = model->config.index_head_dim;
  const auto tokens = RandomTokens(300, model->config.vocab_size, 8);
  PassResult f32 = RunChunks(model, tokens, {300});
  PassResult fp8 = RunChunks(model, tokens, {200, 100}, "", kernels::Precision::kFP8);
  double recall = 0.0;
  int rows = 0;
  for (int r = 32; r < 300; ++r) {
    std::vector<int32_t> x(f32.topk.at(0).begin() + r * 32, f32.topk.at(0).begin() + (r + 1) * 32);
    std::vector<int32_t> y(fp8.topk.at(0).begin() + r * 32, fp8.topk.at(0).begin() + (r + 1) * 32);
    std::sort(x.begin(), x.end());
    std::sort(y.begin(), y.end());
    std::vector<int32_t> both;
    std::set_intersection(x.begin(), x.end(), y.begin(), y.end(), std::back_inserter(both));
    recall += both.size() / 32.0;
    ++rows;
  }
  recall /= rows;
  RecordProperty("fp8_layer0_recall", std::to_string(recall));
  EXPECT_GT(recall, 0.9);
  auto ctx = Context::Create(model, {.max_tokens = 1024, .indexer_precision = kernels::Precision::kFP8});
  ASSERT_TRUE(ctx.ok());
  EXPECT_EQ((*ctx)->cache_bytes().index_k, 4 * 1024 * (dI + 4));  // 4 Full layers, 1024 slots
  SyntheticModelOptions o;
  o.index_head_dim = 48;
  auto odd = *BuildSyntheticModel(o);
  auto c2 = Context::Create(odd, {.max_tokens = 256, .indexer_precision = kernels::Precision::kFP8});
  ASSERT_TRUE(c2.ok());
  const int seq = *(*c2)->AddSequence();
  const auto toks = RandomTokens(80, odd->config.vocab_size, 2);
  absl::Status s = (*c2)->Prefill(seq, toks);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("power of two"));
}

TEST(EngineTest, SharedLayersGetNoIndexKCache) {
  auto model = Synthetic(Architecture::kDeepseekV32, 8, 8);
  auto dsa = *Context::Create(model, {.max_tokens = 1024});
  auto ic = *Context::Create(model, {.max_tokens = 1024, .plan = "FSSSFSSS"});
  EXPECT_EQ(dsa->cache_bytes().kv, ic->cache_bytes().kv);
  EXPECT_EQ(ic->cache_bytes().index_k * 4, dsa->cache_bytes().index_k);
  EXPECT_EQ(dsa->cache_bytes().index_k, int64_t{8} * 1024 * model->config.index_head_dim * 4);
}

TEST(EngineTest, TopkCoveringTheContextEqualsDenseAttention_C11) {
  for (Architecture arch : {Architecture::kDeepseekV32, Architecture::kLlamaDsa}) {
    auto sparse = Synthetic(arch, 3, 128);
    auto dense_model = std::make_shared<Model>(*sparse);
    dense_model->config.has_indexer = false;  // same weights, dense causal attention
    const auto tokens = RandomTokens(128, sparse->config.vocab_size, 11);
    PassResult s = RunChunks(sparse, tokens, {50, 78});
    PassResult d = RunChunks(dense_model, tokens, {128});
    EXPECT_LT(MaxRelError(s.logits, d.logits), 1e-5);
  }
}

TEST(EngineTest, EvalLossIsTheMeanNextTokenCrossEntropy) {
  auto model = Synthetic(Architecture::kLlamaDsa, 2, 16);
  const ModelConfig& c = model->config;
  const auto tokens = RandomTokens(150, c.vocab_size, 13);
  PassResult run = RunChunks(model, tokens, {150});
  double want = 0;
  for (int t = 0; t + 1 < 150; ++t) {
    const float* row = run.logits.data() + static_cast<size_t>(t) * c.vocab_size;
    const double mx = *std::max_element(row, row + c.vocab_size);
    double z = 0;
    for (int v = 0; v < c.vocab_size; ++v) z += std::exp(row[v] - mx);
    want += -(row[tokens[t + 1]] - mx - std::log(z));
  }
  want /= 149;
  auto ctx = *Context::Create(model, {.max_tokens = 1024, .prefill_chunk = 64});
  auto loss = ctx->EvalLoss(tokens);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_EQ(loss->tokens, 149);
  EXPECT_NEAR(loss->mean_loss, want, 1e-4 * want);
  EXPECT_NEAR(loss->perplexity(), std::exp(want), 1e-3 * std::exp(want));
  EXPECT_EQ(ctx->FreeTokens(), 1024);  // the temporary sequence is gone
}

TEST(EngineTest, RunningOutOfCapacityLeavesSequencesAsTheyWere) {
  auto model = Synthetic(Architecture::kDeepseekV32, 2, 8);
  auto ctx = *Context::Create(model, {.max_tokens = 200, .block_size = 64});  // 4 blocks = 256 tokens
  const int a = *ctx->AddSequence();
  const int b = *ctx->AddSequence();
  ASSERT_TRUE(ctx->Prefill(a, RandomTokens(130, 256, 1)).ok());  // 3 blocks
  EXPECT_EQ(ctx->FreeTokens(), 64);
  absl::Status s = ctx->Prefill(b, RandomTokens(100, 256, 2));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()), HasSubstr("KV cache full"));
  EXPECT_EQ(*ctx->SequenceLength(b), 0);
  EXPECT_EQ(*ctx->SequenceLength(a), 130);
  EXPECT_EQ(ctx->FreeTokens(), 64);
  // A decode batch that needs one block too many fails as a whole.
  ASSERT_TRUE(ctx->Prefill(b, RandomTokens(64, 256, 3)).ok());  // takes the last block
  const std::vector<int> both = {a, b};
  const std::vector<int32_t> next = {1, 2};
  s = ctx->Decode(both, next, nullptr);  // b needs a 5th block
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(*ctx->SequenceLength(a), 130);
  EXPECT_EQ(*ctx->SequenceLength(b), 64);
  // Removing a sequence frees its blocks.
  ASSERT_TRUE(ctx->RemoveSequence(a).ok());
  EXPECT_EQ(ctx->FreeTokens(), 192);
  EXPECT_EQ(ctx->RemoveSequence(a).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ctx->Decode({&b, 1}, {&next[1], 1}, nullptr).ok());
}

TEST(EngineTest, TokenIdsOutsideTheVocabularyAreRejected_C9) {
  auto model = Synthetic(Architecture::kLlamaDsa, 2, 8);
  auto ctx = *Context::Create(model);
  const int s = *ctx->AddSequence();
  for (int32_t bad : {256, -1}) {
    const std::vector<int32_t> tokens = {1, 2, bad, 3};
    absl::Status st = ctx->Prefill(s, tokens);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(st.message()), HasSubstr("token id " + std::to_string(bad)));
    EXPECT_THAT(std::string(st.message()), HasSubstr("256"));
    EXPECT_EQ(*ctx->SequenceLength(s), 0);
  }
  EXPECT_EQ(ctx->Prefill(s, {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ctx->Prefill(999, std::vector<int32_t>{1}).code(), absl::StatusCode::kNotFound);
}

TEST(EngineTest, InvalidPlansAreRejectedAtContextCreation_C7) {
  auto model = Synthetic(Architecture::kDeepseekV32, 4, 8);
  for (const char* plan : {"SFFF", "FFXF", "FFF", "FFFFF"}) {
    auto ctx = Context::Create(model, {.plan = plan});
    EXPECT_EQ(ctx.status().code(), absl::StatusCode::kInvalidArgument) << plan;
  }
}

TEST(EngineTest, CheckpointsWithoutSharedLayerIndexersLoad_C8) {
  const std::string root = ::testing::TempDir() + "/ic_engine_c8";
  auto model = Synthetic(Architecture::kGlmMoeDsa, 4, 8, "FSFS");
  ASSERT_TRUE(SaveModel(*model, root + "/glm52", /*drop_shared_indexers=*/true).ok());
  auto loaded = LoadModel(root + "/glm52");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->plan.ToString(), "FSFS");
  auto ctx = Context::Create(*loaded);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  // Same logits as the in-memory model with its full set of weights.
  const auto tokens = RandomTokens(40, 256, 4);
  PassResult a = RunChunks(model, tokens, {40});
  PassResult b = RunChunks(*loaded, tokens, {40});
  EXPECT_EQ(a.logits, b.logits);
  // A plan that makes a weightless layer Full fails naming the tensor.
  auto bad = Context::Create(*loaded, {.plan = "FFFS"});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("model.layers.1.self_attn.indexer."));

  // A Full layer 3 without indexer.wk.weight: loading works, context creation names the tensor.
  auto broken = std::make_shared<Model>(*Synthetic(Architecture::kDeepseekV32, 4, 8));
  broken->weights.layers[3].indexer.wk = {};
  ASSERT_TRUE(SaveModel(*broken, root + "/no_wk").ok());
  auto no_wk = LoadModel(root + "/no_wk");
  ASSERT_TRUE(no_wk.ok()) << no_wk.status();
  auto ctx2 = Context::Create(*no_wk);
  EXPECT_EQ(ctx2.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ctx2.status().message()), HasSubstr("model.layers.3.self_attn.indexer.wk.weight"));
  std::filesystem::remove_all(root);
}

TEST(EngineTest, MetricsCountIndexerRunSkippedAndSaved) {
  auto model = Synthetic(Architecture::kDeepseekV32, 8, 8);
  auto ctx = *Context::Create(model, {.max_tokens = 1024, .plan = "FSSSFSSS"});
  const int s = *ctx->AddSequence();
  const Metrics::Totals before = Metrics::Global().GetTotals();
  ASSERT_TRUE(ctx->Prefill(s, RandomTokens(200, 256, 21)).ok());
  const Metrics::Totals after = Metrics::Global().GetTotals();
  EXPECT_EQ(after.layers_run - before.layers_run, 2);
  EXPECT_EQ(after.layers_skipped - before.layers_skipped, 6);
  const double run = after.indexer_seconds - before.indexer_seconds;
  const double saved = after.saved_seconds - before.saved_seconds;
  EXPECT_GT(run, 0);
  EXPECT_NEAR(saved, run / 2 * 6, 1e-9);  // mean Full-layer time × Shared layers
  EXPECT_NEAR(after.baseline_seconds - before.baseline_seconds, run + saved, 1e-9);
  EXPECT_EQ(after.prompt_tokens - before.prompt_tokens, 200);
}

}  // namespace
}  // namespace ic
