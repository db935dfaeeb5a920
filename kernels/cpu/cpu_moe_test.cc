// Tests of the CPU MoeRoute op: a hand-checked grouped routing, tie rules, bias (choice) vs weights
// (scores), normalisation and scaling, an independent reference on random inputs, and validation.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"

namespace ic::kernels::cpu {
namespace {

float Logit(double s) { return static_cast<float>(std::log(s / (1.0 - s))); }
float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

TEST(CpuMoeRoute, HandCheckedGroupedRouting) {
  // s = [0.9, 0.1 | 0.6, 0.6 | 0.5, 0.55 | 0.2, 0.3]; group scores 1.0, 1.2, 1.05, 0.5 → groups 1, 2;
  // experts among {2, 3, 4, 5}: 2 and 3 (tie → lower id first), then 5. Expert 0 (0.9) is excluded.
  const std::vector<double> s = {0.9, 0.1, 0.6, 0.6, 0.5, 0.55, 0.2, 0.3};
  std::vector<float> logits(8);
  for (int i = 0; i < 8; ++i) logits[i] = Logit(s[i]);
  std::vector<int32_t> ids(3);
  std::vector<float> w(3);
  CpuBackend cpu;
  MoeRouteArgs a{.expert_ids = ids.data(), .expert_weights = w.data(), .logits = logits.data(), .tokens = 1,
                 .experts = 8, .top_k = 3, .n_group = 4, .topk_group = 2, .norm_topk_prob = true,
                 .routed_scaling_factor = 2.5f};
  ASSERT_TRUE(cpu.MoeRoute(a).ok());
  EXPECT_EQ(ids, (std::vector<int32_t>{2, 3, 5}));
  const double sum = 0.6 + 0.6 + 0.55;
  EXPECT_NEAR(w[0], 0.6 / sum * 2.5, 1e-6);
  EXPECT_NEAR(w[1], 0.6 / sum * 2.5, 1e-6);
  EXPECT_NEAR(w[2], 0.55 / sum * 2.5, 1e-6);

  // Without normalisation: raw scores times the scaling factor.
  a.norm_topk_prob = false;
  ASSERT_TRUE(cpu.MoeRoute(a).ok());
  EXPECT_NEAR(w[0], 0.6 * 2.5, 1e-6);
  EXPECT_NEAR(w[2], 0.55 * 2.5, 1e-6);
}

TEST(CpuMoeRoute, BiasSelectsButWeightsUseScores) {
  // 4 experts, 1 group: bias lifts expert 3 (s = 0.2) above expert 0 (s = 0.7).
  const std::vector<double> s = {0.7, 0.4, 0.5, 0.2};
  std::vector<float> logits(4);
  for (int i = 0; i < 4; ++i) logits[i] = Logit(s[i]);
  const std::vector<float> bias = {0.0f, 0.0f, 0.0f, 1.0f};
  std::vector<int32_t> ids(2);
  std::vector<float> w(2);
  CpuBackend cpu;
  MoeRouteArgs a{.expert_ids = ids.data(), .expert_weights = w.data(), .logits = logits.data(), .bias = bias.data(),
                 .tokens = 1, .experts = 4, .top_k = 2, .n_group = 1, .topk_group = 1};
  ASSERT_TRUE(cpu.MoeRoute(a).ok());
  EXPECT_EQ(ids, (std::vector<int32_t>{3, 0}));
  EXPECT_NEAR(w[0], 0.2 / (0.2 + 0.7), 1e-6);
  EXPECT_NEAR(w[1], 0.7 / (0.2 + 0.7), 1e-6);
}

TEST(CpuMoeRoute, TiedGroupsGoToLowerIndex) {
  // All experts equal: groups tie → groups 0 and 1 kept; experts tie → lowest ids.
  std::vector<float> logits(12, 0.3f);
  std::vector<int32_t> ids(3);
  std::vector<float> w(3);
  CpuBackend cpu;
  MoeRouteArgs a{.expert_ids = ids.data(), .expert_weights = w.data(), .logits = logits.data(), .tokens = 1,
                 .experts = 12, .top_k = 3, .n_group = 4, .topk_group = 2};
  ASSERT_TRUE(cpu.MoeRoute(a).ok());
  EXPECT_EQ(ids, (std::vector<int32_t>{0, 1, 2}));
  for (float x : w) EXPECT_NEAR(x, 1.0 / 3.0, 1e-6);
}

// Independent reference: enumerate groups by score (desc, index asc), then experts (desc, id asc).
TEST(CpuMoeRoute, RandomMatchesReference) {
  std::mt19937 rng(7);
  const int tokens = 50, experts = 64, n_group = 8, topk_group = 3, top_k = 6, per = experts / n_group;
  std::vector<float> logits(tokens * experts), bias(experts);
  for (float& x : logits) x = std::uniform_real_distribution<float>(-3, 3)(rng);
  for (float& x : bias) x = std::uniform_real_distribution<float>(-0.1f, 0.1f)(rng);
  std::vector<int32_t> ids(tokens * top_k);
  std::vector<float> w(tokens * top_k);
  CpuBackend cpu;
  MoeRouteArgs a{.expert_ids = ids.data(), .expert_weights = w.data(), .logits = logits.data(), .bias = bias.data(),
                 .tokens = tokens, .experts = experts, .top_k = top_k, .n_group = n_group, .topk_group = topk_group,
                 .routed_scaling_factor = 1.5f};
  ASSERT_TRUE(cpu.MoeRoute(a).ok());
  for (int t = 0; t < tokens; ++t) {
    std::vector<float> sc(experts), ch(experts);
    for (int e = 0; e < experts; ++e) {
      sc[e] = Sigmoid(logits[t * experts + e]);
      ch[e] = sc[e] + bias[e];
    }
    std::vector<std::pair<float, int>> groups;
    for (int g = 0; g < n_group; ++g) {
      std::vector<float> v(ch.begin() + g * per, ch.begin() + (g + 1) * per);
      std::sort(v.rbegin(), v.rend());
      groups.push_back({v[0] + v[1], g});
    }
    std::sort(groups.begin(), groups.end(), [](auto x, auto y) { return x.first != y.first ? x.first > y.first : x.second < y.second; });
    std::vector<std::pair<float, int>> cand;
    for (int i = 0; i < topk_group; ++i) {
      for (int e = 0; e < per; ++e) cand.push_back({ch[groups[i].second * per + e], groups[i].second * per + e});
    }
    std::sort(cand.begin(), cand.end(), [](auto x, auto y) { return x.first != y.first ? x.first > y.first : x.second < y.second; });
    double sum = 0.0;
    for (int i = 0; i < top_k; ++i) sum += sc[cand[i].second];
    for (int i = 0; i < top_k; ++i) {
      ASSERT_EQ(ids[t * top_k + i], cand[i].second) << "token " << t << " slot " << i;
      ASSERT_NEAR(w[t * top_k + i], sc[cand[i].second] / sum * 1.5, 1e-6);
    }
  }
}

TEST(CpuMoeRoute, RejectsBadArguments) {
  std::vector<float> logits(8, 0.0f), w(2);
  std::vector<int32_t> ids(2);
  CpuBackend cpu;
  MoeRouteArgs ok{.expert_ids = ids.data(), .expert_weights = w.data(), .logits = logits.data(), .tokens = 1,
                  .experts = 8, .top_k = 2, .n_group = 2, .topk_group = 1};
  ASSERT_TRUE(cpu.MoeRoute(ok).ok());
  MoeRouteArgs a = ok;
  a.n_group = 3;
  absl::Status st = cpu.MoeRoute(a);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("n_group = 3"), std::string::npos) << st;
  a = ok;
  a.topk_group = 3;
  EXPECT_EQ(cpu.MoeRoute(a).code(), absl::StatusCode::kInvalidArgument);
  a = ok;
  a.top_k = 5;  // only 4 experts in one kept group
  EXPECT_EQ(cpu.MoeRoute(a).code(), absl::StatusCode::kInvalidArgument);
  a = ok;
  a.logits = nullptr;
  EXPECT_EQ(cpu.MoeRoute(a).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ic::kernels::cpu
