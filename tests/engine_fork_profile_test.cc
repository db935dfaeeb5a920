// Context::ForkSequence and ContextOptions::profile_layers (engine.h) on the CPU backend.
#include <chrono>
#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sdk/engine.h"
#include "tests/engine_test_util.h"

namespace ic {
namespace {

using ::testing::HasSubstr;

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// F32 and BF16 indexer precision (the BF16 index-K cache has 2-byte entries: the fork copies bytes).
class ForkSequenceTest : public ::testing::TestWithParam<kernels::Precision> {};
INSTANTIATE_TEST_SUITE_P(Precisions, ForkSequenceTest,
                         ::testing::Values(kernels::Precision::kF32, kernels::Precision::kBF16));

TEST_P(ForkSequenceTest, ForkDecodesBitwiseLikeSourceAndAFreshPrefill) {
  auto model = test::SmallSynthetic(Architecture::kDeepseekV32, 4, 16, "FSFS");
  const int V = model->config.vocab_size;
  const std::vector<int32_t> prompt = test::RandomTokens(150, V, 11);  // 3 blocks, the last one partial
  auto ctx = Context::Create(model, {.max_tokens = 1024, .block_size = 64, .prefill_chunk = 64,
                                     .indexer_precision = GetParam()});
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  Context& c = **ctx;
  const int src = *c.AddSequence();
  ASSERT_TRUE(c.Prefill(src, prompt).ok());
  auto fork = c.ForkSequence(src);
  ASSERT_TRUE(fork.ok()) << fork.status();
  EXPECT_NE(*fork, src);
  EXPECT_EQ(*c.SequenceLength(*fork), 150);
  EXPECT_EQ(c.FreeTokens(), 1024 - 2 * 192);

  const int fresh = *c.AddSequence();
  ASSERT_TRUE(c.Prefill(fresh, prompt).ok());
  const int32_t next = 42;
  std::vector<float> a(V), b(V), f(V);
  ASSERT_TRUE(c.Decode({&src, 1}, {&next, 1}, a.data()).ok());
  ASSERT_TRUE(c.Decode({&*fork, 1}, {&next, 1}, b.data()).ok());
  ASSERT_TRUE(c.Decode({&fresh, 1}, {&next, 1}, f.data()).ok());
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, f);
  // The two continue independently: a different token in the fork changes only the fork.
  const int32_t t1 = 7, t2 = 9;
  std::vector<float> a2(V), b2(V);
  ASSERT_TRUE(c.Decode({&src, 1}, {&t1, 1}, a2.data()).ok());
  ASSERT_TRUE(c.Decode({&*fork, 1}, {&t2, 1}, b2.data()).ok());
  EXPECT_NE(a2, b2);
  // Removing the source leaves the fork intact.
  ASSERT_TRUE(c.RemoveSequence(src).ok());
  EXPECT_EQ(*c.SequenceLength(*fork), 152);
}

TEST(ForkSequenceErrors, BadIdAndFullCache) {
  auto model = test::SmallSynthetic(Architecture::kGlmMoeDsa, 2, 16);
  const int V = model->config.vocab_size;
  auto ctx = Context::Create(model, {.max_tokens = 256, .block_size = 64});
  ASSERT_TRUE(ctx.ok());
  Context& c = **ctx;
  auto bad = c.ForkSequence(12345);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(bad.status().message(), HasSubstr("12345"));

  const int src = *c.AddSequence();
  ASSERT_TRUE(c.Prefill(src, test::RandomTokens(100, V, 3)).ok());  // 2 of 4 blocks
  auto f1 = c.ForkSequence(src);
  ASSERT_TRUE(f1.ok()) << f1.status();
  EXPECT_EQ(c.FreeTokens(), 0);
  auto f2 = c.ForkSequence(src);
  EXPECT_EQ(f2.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(f2.status().message(), HasSubstr("KV cache full"));
  // The context is still usable: free the fork, decode the source, fork again.
  EXPECT_EQ(c.FreeTokens(), 0);
  ASSERT_TRUE(c.RemoveSequence(*f1).ok());
  const int32_t t = 5;
  std::vector<float> logits(V);
  ASSERT_TRUE(c.Decode({&src, 1}, {&t, 1}, logits.data()).ok());
  auto f3 = c.ForkSequence(src);
  ASSERT_TRUE(f3.ok()) << f3.status();
  EXPECT_EQ(*c.SequenceLength(*f3), 101);
}

TEST(ProfileLayersTest, PerLayerSecondsArePositiveAndBoundedByThePass) {
  auto model = test::SmallSynthetic(Architecture::kDeepseekV32, 4, 16, "FSFS");
  const int L = model->config.num_hidden_layers;
  auto ctx = Context::Create(model, {.max_tokens = 1024, .prefill_chunk = 1024, .profile_layers = true});
  ASSERT_TRUE(ctx.ok());
  Context& c = **ctx;
  const int seq = *c.AddSequence();
  const double t0 = Now();
  ASSERT_TRUE(c.Prefill(seq, test::RandomTokens(300, model->config.vocab_size, 5)).ok());
  const double wall = Now() - t0;
  const LayerProfile& p = c.layer_profile();
  ASSERT_EQ(p.layer_seconds.size(), static_cast<size_t>(L));
  ASSERT_EQ(p.indexer_seconds.size(), static_cast<size_t>(L));
  EXPECT_EQ(p.passes, 1);
  double sum = 0;
  for (int l = 0; l < L; ++l) {
    EXPECT_GT(p.layer_seconds[l], 0) << "layer " << l;
    sum += p.layer_seconds[l];
    if (l % 2 == 0) {  // Full layers ran their indexer, inside the layer's time
      EXPECT_GT(p.indexer_seconds[l], 0) << "layer " << l;
      EXPECT_LE(p.indexer_seconds[l], p.layer_seconds[l]);
    } else {
      EXPECT_EQ(p.indexer_seconds[l], 0) << "layer " << l;
    }
  }
  EXPECT_GE(p.other_seconds, 0);
  EXPECT_LE(sum, p.total_seconds);
  EXPECT_LE(p.total_seconds, wall);
  EXPECT_NEAR(sum + p.other_seconds, p.total_seconds, 1e-9);

  const int32_t t = 3;
  ASSERT_TRUE(c.Decode({&seq, 1}, {&t, 1}, nullptr).ok());
  EXPECT_EQ(c.layer_profile().passes, 2);
  c.ResetLayerProfile();
  EXPECT_EQ(c.layer_profile().passes, 0);
  EXPECT_EQ(c.layer_profile().total_seconds, 0);
  EXPECT_EQ(std::accumulate(c.layer_profile().layer_seconds.begin(), c.layer_profile().layer_seconds.end(), 0.0), 0);
}

TEST(ProfileLayersTest, OffRecordsNothing) {
  auto model = test::SmallSynthetic(Architecture::kDeepseekV32, 2, 16);
  auto ctx = Context::Create(model, {.max_tokens = 512});
  ASSERT_TRUE(ctx.ok());
  const int seq = *(*ctx)->AddSequence();
  ASSERT_TRUE((*ctx)->Prefill(seq, test::RandomTokens(100, model->config.vocab_size, 1)).ok());
  const LayerProfile& p = (*ctx)->layer_profile();
  EXPECT_TRUE(p.layer_seconds.empty());
  EXPECT_TRUE(p.indexer_seconds.empty());
  EXPECT_EQ(p.passes, 0);
  EXPECT_EQ(p.total_seconds, 0);
  EXPECT_EQ(p.other_seconds, 0);
}

}  // namespace
}  // namespace ic
