// Tests of the CPU MoeRoute op: a hand-checked grouped routing, tie rules, bias (choice) vs weights
// (scores), normalisation and scaling, an independent reference on random inputs, and validation.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/cpu_test_util.h"

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

// MoeExperts by hand: hidden 2, inter 1, one expert. g = x·gate = 1, u = x·up = 2, act = SiLU(1)·2,
// y = down·act = [act, 3·act], added to out with weight 0.5.
TEST(CpuMoeExperts, HandChecked) {
  CpuBackend cpu;
  const std::vector<float> x = {1, 2}, gate = {1, 0}, up = {0, 1}, down = {1, 3}, w = {0.5f};
  const std::vector<int32_t> ids = {0};
  std::vector<float> out = {10, 20};
  const void* weights[3] = {gate.data(), up.data(), down.data()};
  MoeExpertsArgs a{.out = out.data(), .x = x.data(), .expert_ids = ids.data(), .expert_weights = w.data(),
                   .weights = weights, .tokens = 1, .hidden = 2, .inter = 1, .top_k = 1, .experts = 1};
  ASSERT_TRUE(cpu.MoeExperts(a).ok());
  const double act = 2.0 / (1.0 + std::exp(-1.0));
  EXPECT_NEAR(out[0], 10 + 0.5 * act, 1e-5);
  EXPECT_NEAR(out[1], 20 + 0.5 * 3 * act, 1e-5);
}

// The unfused path the engine runs for many tokens, as the reference for MoeExperts: per token and chosen
// expert, `gemm(c, in, matrix, n, k)` for gate and up, SiluMul, gemm for down, then the weighted sum into
// `want`; the shared expert (matrices 3E, 3E + 1, 3E + 2) last with weight 1.
template <typename Gemm>
void UnfusedMoe(CpuBackend& cpu, Gemm&& gemm, const std::vector<float>& x, const std::vector<int32_t>& ids,
                const std::vector<float>& w, int T, int H, int I, int E, int K, bool with_shared,
                std::vector<float>& want) {
  for (int t = 0; t < T; ++t) {
    for (int j = 0; j < K + (with_shared ? 1 : 0); ++j) {
      const bool sh = j == K;
      const int e = sh ? 0 : ids[t * K + j];
      std::vector<float> g(I), u(I), y(H);
      gemm(g.data(), &x[t * H], sh ? 3 * E : e, I, H);
      gemm(u.data(), &x[t * H], sh ? 3 * E + 1 : E + e, I, H);
      ASSERT_TRUE(cpu.SiluMul({.out = g.data(), .gate = g.data(), .up = u.data(), .tokens = 1, .dim = I}).ok());
      gemm(y.data(), g.data(), sh ? 3 * E + 2 : 2 * E + e, H, I);
      for (int c = 0; c < H; ++c) want[t * H + c] += (sh ? 1.0f : w[t * K + j]) * y[c];
    }
  }
}

// Against the unfused path the engine runs for many tokens (Gemm per expert, SiluMul, weighted sum), F32
// and BF16 weights, with and without a shared expert: the same roundings, so only the summation order
// differs.
TEST(CpuMoeExperts, MatchesGemmPerExpert) {
  for (const int variant : {0, 1, 2, 3}) {
    const bool bf16 = variant & 1, with_shared = variant & 2;
    SCOPED_TRACE(std::string(bf16 ? "bf16" : "f32") + (with_shared ? " + shared" : ""));
    CpuBackend cpu;
    std::mt19937 rng(5);
    const int T = 3, H = 24, I = 10, E = 5, K = 2;
    std::vector<std::vector<float>> mats(3 * E + 3);  // the last three: the shared expert
    std::vector<std::vector<uint16_t>> bits(3 * E + 3);
    std::vector<const void*> ptrs(3 * E + 3);
    for (int m = 0; m < 3 * E + 3; ++m) {
      mats[m] = testutil::RandomVector(static_cast<size_t>(H) * I, rng);
      for (float& v : mats[m]) {
        bits[m].push_back(internal::FloatToBf16(v));
        if (bf16) v = internal::Bf16ToFloat(bits[m].back());
      }
      ptrs[m] = bf16 ? static_cast<const void*>(bits[m].data()) : mats[m].data();
    }
    const std::vector<float> x = testutil::RandomVector(static_cast<size_t>(T) * H, rng);
    const std::vector<int32_t> ids = {4, 1, 0, 4, 2, 3};
    const std::vector<float> w = {0.7f, 0.3f, 1.5f, -0.5f, 0.25f, 0.75f};
    std::vector<float> fused = testutil::RandomVector(static_cast<size_t>(T) * H, rng), want = fused;
    MoeExpertsArgs a{.out = fused.data(), .x = x.data(), .expert_ids = ids.data(), .expert_weights = w.data(),
                     .weights = ptrs.data(), .bf16 = bf16, .tokens = T, .hidden = H, .inter = I, .top_k = K,
                     .experts = E};
    if (with_shared) a.shared_gate = ptrs[3 * E], a.shared_up = ptrs[3 * E + 1], a.shared_down = ptrs[3 * E + 2];
    ASSERT_TRUE(cpu.MoeExperts(a).ok());
    UnfusedMoe(
        cpu,
        [&](float* c, const float* in, int m, int n, int k) {
          GemmArgs ga{.c = c, .a = in, .m = 1, .n = n, .k = k};
          if (bf16) {
            ga.b_bf16 = bits[m].data();
          } else {
            ga.b = mats[m].data();
          }
          ASSERT_TRUE(cpu.Gemm(ga).ok());
        },
        x, ids, w, T, H, I, E, K, with_shared, want);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(fused[i], want[i], 1e-5 * (1 + std::fabs(want[i]))) << i;
  }
}

// FP8 weights (MoeExpertsArgs::fp8): the same comparison against Gemm with b_fp8 per expert (both quantise x
// and the SiLU product per 128 values the same way). hidden 144 (a partial second block), inter 32.
TEST(CpuMoeExperts, Fp8MatchesGemmPerExpert) {
  for (const bool with_shared : {false, true}) {
    SCOPED_TRACE(with_shared ? "fp8 + shared" : "fp8");
    CpuBackend cpu;
    std::mt19937 rng(6);
    const int T = 2, H = 144, I = 32, E = 3, K = 2;
    std::vector<std::vector<uint8_t>> bytes(3 * E + 3);  // the last three: the shared expert
    std::vector<std::vector<float>> scales(3 * E + 3);
    std::vector<const void*> table(6 * E);
    for (int m = 0; m < 3 * E + 3; ++m) {
      const bool down = m % 3 == 2 && m < 3 * E ? m >= 2 * E : m == 3 * E + 2;
      const int rows = down ? H : I, cols = down ? I : H;
      bytes[m].resize(static_cast<size_t>(rows) * cols);
      for (uint8_t& b : bytes[m]) {
        do b = static_cast<uint8_t>(rng() & 0xff);
        while ((b & 0x7f) == 0x7f || (b & 0x78) > 0x48);  // no NaN; |value| ≤ 4 (exponent ≤ 9)
      }
      const int scale_ld = Fp8ScaleLd(cols);
      scales[m].resize(static_cast<size_t>((rows + 127) / 128) * scale_ld);
      for (float& v : scales[m]) v = 0.01f + 0.02f * static_cast<float>(rng() % 8);
      if (m < 3 * E) table[m] = bytes[m].data(), table[3 * E + m] = scales[m].data();
    }
    const std::vector<float> x = testutil::RandomVector(static_cast<size_t>(T) * H, rng);
    const std::vector<int32_t> ids = {2, 0, 1, 2};
    const std::vector<float> w = {0.6f, 0.4f, 1.25f, -0.5f};
    std::vector<float> fused = testutil::RandomVector(static_cast<size_t>(T) * H, rng), want = fused;
    MoeExpertsArgs a{.out = fused.data(), .x = x.data(), .expert_ids = ids.data(), .expert_weights = w.data(),
                     .weights = table.data(), .tokens = T, .hidden = H, .inter = I, .top_k = K, .experts = E,
                     .fp8 = true};
    if (with_shared) {
      a.shared_gate = bytes[3 * E].data(), a.shared_up = bytes[3 * E + 1].data(), a.shared_down = bytes[3 * E + 2].data();
      a.shared_gate_scale = scales[3 * E].data(), a.shared_up_scale = scales[3 * E + 1].data();
      a.shared_down_scale = scales[3 * E + 2].data();
    }
    ASSERT_TRUE(cpu.MoeExperts(a).ok());
    UnfusedMoe(
        cpu,
        [&](float* c, const float* in, int m, int n, int k) {
          ASSERT_TRUE(cpu.Gemm({.c = c, .a = in, .b_fp8 = bytes[m].data(), .b_scale = scales[m].data(), .m = 1, .n = n,
                                .k = k})
                          .ok());
        },
        x, ids, w, T, H, I, E, K, with_shared, want);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(fused[i], want[i], 1e-5 * (1 + std::fabs(want[i]))) << i;
  }
  // fp8 with bf16, sizes not multiples of 16, a shared expert without its scales: InvalidArgument.
  CpuBackend cpu;
  const std::vector<float> x(16), w = {1.0f};
  std::vector<float> out(16);
  const std::vector<uint8_t> m(256);
  const std::vector<float> s(4, 1.0f);
  const void* table[6] = {m.data(), m.data(), m.data(), s.data(), s.data(), s.data()};
  const std::vector<int32_t> ids = {0};
  MoeExpertsArgs ok{.out = out.data(), .x = x.data(), .expert_ids = ids.data(), .expert_weights = w.data(),
                    .weights = table, .tokens = 1, .hidden = 16, .inter = 16, .top_k = 1, .experts = 1, .fp8 = true};
  ASSERT_TRUE(cpu.MoeExperts(ok).ok());
  MoeExpertsArgs bad = ok;
  bad.bf16 = true;
  EXPECT_EQ(cpu.MoeExperts(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = ok;
  bad.hidden = 8;
  EXPECT_EQ(cpu.MoeExperts(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = ok;
  bad.shared_gate = bad.shared_up = bad.shared_down = m.data();
  EXPECT_EQ(cpu.MoeExperts(bad).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CpuMoeExperts, RejectsBadArguments) {
  CpuBackend cpu;
  const std::vector<float> x = {1, 2}, m = {1, 0}, w = {1.0f};
  std::vector<float> out = {5, 6};
  const void* weights[3] = {m.data(), m.data(), m.data()};
  std::vector<int32_t> ids = {1};  // only expert 0 exists
  MoeExpertsArgs a{.out = out.data(), .x = x.data(), .expert_ids = ids.data(), .expert_weights = w.data(),
                   .weights = weights, .tokens = 1, .hidden = 2, .inter = 1, .top_k = 1, .experts = 1};
  absl::Status st = cpu.MoeExperts(a);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("expert_ids[0, 0] = 1"), std::string::npos) << st;
  EXPECT_EQ(out, (std::vector<float>{5, 6}));  // left as it was
  ids[0] = 0;
  a.weights = nullptr;
  EXPECT_EQ(cpu.MoeExperts(a).code(), absl::StatusCode::kInvalidArgument);
  const void* holes[3] = {m.data(), nullptr, m.data()};  // expert 0's up is missing
  a.weights = holes;
  st = cpu.MoeExperts(a);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("null weight pointer"), std::string::npos) << st;
  a.weights = weights;
  a.shared_gate = m.data();  // without shared_up / shared_down
  EXPECT_EQ(cpu.MoeExperts(a).code(), absl::StatusCode::kInvalidArgument);
  a.shared_gate = nullptr;
  a.inter = -1;
  EXPECT_EQ(cpu.MoeExperts(a).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ic::kernels::cpu
