// Greedy plan search (search.h) and its engine hook (ForwardOptions::start_layer, hidden_by_layer):
// a partial pass reproduces the full pass; the search equals a brute-force greedy over full passes.
#include "sdk/search.h"

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sdk/engine.h"
#include "sdk/synthetic_model.h"
#include "tests/engine_test_util.h"

namespace ic {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<const Model> Synthetic(Architecture arch, int layers = 6, int hidden = 64, int topk = 16) {
  SyntheticModelOptions o;
  o.arch = arch;
  o.num_layers = layers;
  o.hidden_size = hidden;
  o.vocab_size = 128;
  o.index_topk = topk;
  o.index_n_heads = 2;
  o.index_head_dim = 32;
  auto m = BuildSyntheticModel(o);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

using test::RandomTokens;
using test::RelError;

std::vector<std::vector<int32_t>> Windows(const Model& m, int count = 2, int len = 96) {
  std::vector<std::vector<int32_t>> w;
  for (int i = 0; i < count; ++i) w.push_back(RandomTokens(len, m.config.vocab_size, 100 + i));
  return w;
}

// (a) A pass from layer ℓ with the captured hidden state and top-k reproduces the full pass's logits.
TEST(SearchTest, PartialPassReproducesFullPass) {
  for (Architecture arch : {Architecture::kDeepseekV32, Architecture::kLlamaDsa}) {
    auto model = Synthetic(arch);
    const ModelConfig& c = model->config;
    const auto tokens = RandomTokens(96, c.vocab_size, 3);
    const int T = static_cast<int>(tokens.size());
    for (const std::string pattern : {"FFFFFF", "FSFSSF"}) {
      auto ctx = Context::Create(model, {.max_tokens = 512, .plan = pattern, .record_metrics = false});
      ASSERT_TRUE(ctx.ok()) << ctx.status();
      std::vector<float> full(static_cast<size_t>(T) * c.vocab_size);
      std::map<int, std::vector<float>> hidden;
      std::map<int, std::vector<int32_t>> topk;
      const int seq = *(*ctx)->AddSequence();
      Segment seg{seq, tokens};
      ASSERT_TRUE((*ctx)->Forward({&seg, 1}, {.all_logits = full.data(), .topk_by_layer = &topk,
                                              .hidden_by_layer = &hidden}).ok());
      ASSERT_EQ(hidden.size(), static_cast<size_t>(c.num_hidden_layers));
      ASSERT_EQ(hidden[0].size(), static_cast<size_t>(T) * c.hidden_size);
      for (int l = 1; l < c.num_hidden_layers; ++l) {
        const int fresh = *(*ctx)->AddSequence();
        Segment s2{fresh, tokens};
        std::vector<float> part(full.size());
        std::map<int, std::vector<float>> hidden2;
        ForwardOptions fo{.start_layer = l, .initial_hidden = hidden[l].data(), .initial_topk = topk[l - 1].data()};
        ASSERT_TRUE((*ctx)->Forward({&s2, 1}, {.all_logits = part.data(), .hidden_by_layer = &hidden2}, fo).ok());
        EXPECT_LT(RelError(part, full), 1e-5) << pattern << " from layer " << l;
        EXPECT_EQ(hidden2.count(l - 1), 0u);  // skipped layers are not captured
        EXPECT_EQ(hidden2.count(l), 1u);
        ASSERT_TRUE((*ctx)->RemoveSequence(fresh).ok());
      }
    }
  }
}

TEST(SearchTest, PartialPassErrors) {
  auto model = Synthetic(Architecture::kLlamaDsa);
  auto ctx = *Context::Create(model, {.max_tokens = 512, .plan = "FSFSSF"});
  const auto tokens = RandomTokens(8, model->config.vocab_size, 3);
  const int seq = *ctx->AddSequence();
  Segment seg{seq, tokens};
  std::vector<float> hidden(8 * model->config.hidden_size, 0.0f);
  EXPECT_THAT(ctx->Forward({&seg, 1}, {}, {.start_layer = 2}).message(), HasSubstr("initial_hidden"));
  EXPECT_THAT(ctx->Forward({&seg, 1}, {}, {.start_layer = 2, .initial_hidden = hidden.data()}).message(),
              HasSubstr("initial_topk"));
  EXPECT_THAT(ctx->Forward({&seg, 1}, {}, {.start_layer = 6}).message(), HasSubstr("outside"));
  Plan p = *ParsePlan("FFFSSF", 6);  // layer 1 is Shared in the context's plan
  EXPECT_THAT(ctx->Forward({&seg, 1}, {}, {.plan = &p}).message(), HasSubstr("no index-K cache"));
  EXPECT_EQ(*ctx->SequenceLength(seq), 0);
}

// Brute-force greedy with plain full passes (Context::EvalLoss per candidate plan).
struct Greedy {
  std::vector<int> flips;
  std::vector<double> losses;
  std::string plan;
};
Greedy BruteForce(std::shared_ptr<const Model> model, const std::vector<std::vector<int32_t>>& windows, int target) {
  const int N = model->config.num_hidden_layers;
  auto loss_of = [&](const std::string& pattern) {
    auto ctx = Context::Create(model, {.max_tokens = 512, .plan = pattern, .record_metrics = false});
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    double sum = 0;
    int64_t n = 0;
    for (const auto& w : windows) {
      auto r = (*ctx)->EvalLoss(w);
      EXPECT_TRUE(r.ok()) << r.status();
      sum += r->mean_loss * r->tokens;
      n += r->tokens;
    }
    return sum / n;
  };
  Greedy g;
  g.plan = std::string(N, 'F');
  g.losses.push_back(loss_of(g.plan));
  for (int full = N; full > target; --full) {
    int best = -1;
    double best_loss = 0;
    for (int l = 1; l < N; ++l) {
      if (g.plan[l] != 'F') continue;
      std::string cand = g.plan;
      cand[l] = 'S';
      const double loss = loss_of(cand);
      if (best < 0 || loss < best_loss) {
        best = l;
        best_loss = loss;
      }
    }
    g.plan[best] = 'S';
    g.flips.push_back(best);
    g.losses.push_back(best_loss);
  }
  return g;
}

// (b) + (c): the search equals the brute-force greedy; losses per step; target Full layers, layer 0 Full.
TEST(SearchTest, MatchesBruteForceGreedy) {
  for (Architecture arch : {Architecture::kLlamaDsa, Architecture::kDeepseekV32}) {
    auto model = Synthetic(arch);
    const auto windows = Windows(*model);
    const int target = 2;  // keep 1/4 of 6 layers: ceil(6 / 4)
    std::vector<int> flips;
    std::vector<SearchProgress> progress;
    SearchOptions o;
    o.keep_label = "1/4";
    o.prefill_chunk = 64;  // windows of 96 tokens run as two chunks, like EvalLoss with this chunk
    o.on_step = [&](const SearchStep& s) { flips.push_back(s.layer); };
    o.progress = [&](const SearchProgress& p) { progress.push_back(p); };
    auto plan = SearchPlan(model, windows, target, o);
    ASSERT_TRUE(plan.ok()) << plan.status();
    const Greedy g = BruteForce(model, windows, target);
    EXPECT_EQ(plan->ToString(), g.plan);
    EXPECT_EQ(flips, g.flips);
    ASSERT_EQ(plan->search_losses.size(), g.losses.size());
    ASSERT_EQ(plan->search_losses.size(), static_cast<size_t>(6 - target + 1));
    for (size_t i = 0; i < g.losses.size(); ++i) {
      EXPECT_NEAR(plan->search_losses[i], g.losses[i], 1e-4) << "step " << i;
    }
    EXPECT_EQ(plan->NumFull(), target);
    EXPECT_TRUE(plan->IsFull(0));
    EXPECT_THAT(plan->source, HasSubstr("search keep=1/4"));
    ASSERT_FALSE(progress.empty());
    EXPECT_EQ(progress.back().step, 6 - target);
    EXPECT_GE(progress.back().remaining_seconds, 0.0);
  }
}

TEST(SearchTest, TargetAllFullIsNoStep) {
  auto model = Synthetic(Architecture::kLlamaDsa);
  auto plan = SearchPlan(model, Windows(*model, 1, 32), 6, {});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->ToString(), "FFFFFF");
  EXPECT_EQ(plan->search_losses.size(), 1u);
  auto one = SearchPlan(model, Windows(*model, 1, 32), 1, {});
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->ToString(), "FSSSSS");
  EXPECT_EQ(one->search_losses.size(), 6u);
}

// (d) errors.
TEST(SearchTest, Errors) {
  auto model = Synthetic(Architecture::kLlamaDsa);
  const auto windows = Windows(*model, 1, 16);
  std::vector<std::vector<int32_t>> none;
  EXPECT_THAT(SearchPlan(model, none, 2).status().message(), HasSubstr("calibration set is empty"));
  std::vector<std::vector<int32_t>> short_window = {windows[0], {5}};
  auto s = SearchPlan(model, short_window, 2).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("window 1 has 1 token"));
  for (int bad : {0, 7, -1}) {
    EXPECT_THAT(SearchPlan(model, windows, bad).status().message(), HasSubstr("outside [1, 6]")) << bad;
  }
  std::vector<std::vector<int32_t>> bad_token = {windows[0]};
  bad_token[0][3] = model->config.vocab_size;
  EXPECT_THAT(SearchPlan(model, bad_token, 2).status().message(), HasSubstr("window 0, index 3"));
  bad_token[0][3] = -2;
  EXPECT_THAT(SearchPlan(model, bad_token, 2).status().message(), HasSubstr("outside the vocabulary"));

  SearchOptions small;
  small.max_capture_bytes = 1000;
  s = SearchPlan(model, windows, 2, small).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("shorter windows"));

  SyntheticModelOptions dense;
  dense.arch = Architecture::kLlama;
  dense.num_layers = 2;
  dense.hidden_size = 64;
  dense.vocab_size = 128;
  auto dense_model = BuildSyntheticModel(dense);
  ASSERT_TRUE(dense_model.ok()) << dense_model.status();
  s = SearchPlan(*dense_model, windows, 1).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("nothing to search"));
}

}  // namespace
}  // namespace ic
