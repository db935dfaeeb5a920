// Tests of the CPU CrossEntropy op against a double-precision log-sum-exp, with large logits, ignored
// targets, a row stride, and validation.
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_test_util.h"

namespace ic::kernels::cpu {
namespace {

TEST(CpuCrossEntropy, MatchesDoubleReference) {
  std::mt19937 rng(3);
  const int tokens = 9, vocab = 1001, stride = 1010;
  std::vector<float> logits = testutil::RandomVector(tokens * stride, rng, -8.0f, 8.0f);
  for (int i = 0; i < vocab; ++i) logits[2 * stride + i] += 3.0e4f;  // large offsets must not overflow
  std::vector<int32_t> targets = {0, 1000, 5, -1, 17, 999, 3, -100, 500};
  std::vector<float> loss(tokens, 42.0f);
  CpuBackend cpu;
  CrossEntropyArgs a{.loss = loss.data(), .logits = logits.data(), .targets = targets.data(), .tokens = tokens,
                     .vocab = vocab, .stride = stride};
  ASSERT_TRUE(cpu.CrossEntropy(a).ok());
  for (int t = 0; t < tokens; ++t) {
    if (targets[t] < 0) {
      EXPECT_EQ(loss[t], 0.0f);
      continue;
    }
    const float* x = logits.data() + t * stride;
    double m = x[0];
    for (int i = 0; i < vocab; ++i) m = std::max(m, static_cast<double>(x[i]));
    double s = 0.0;
    for (int i = 0; i < vocab; ++i) s += std::exp(x[i] - m);
    const double want = std::log(s) + m - x[targets[t]];
    EXPECT_NEAR(loss[t], want, 1e-5 * std::max(1.0, std::fabs(want))) << "token " << t;
  }
}

TEST(CpuCrossEntropy, HandComputedUniform) {
  std::vector<float> logits(4, 2.0f);
  int32_t target = 3;
  float loss = 0.0f;
  CpuBackend cpu;
  ASSERT_TRUE(cpu.CrossEntropy({.loss = &loss, .logits = logits.data(), .targets = &target, .tokens = 1, .vocab = 4}).ok());
  EXPECT_NEAR(loss, std::log(4.0), 1e-6);
}

TEST(CpuCrossEntropy, RejectsTargetOutOfRange) {
  std::vector<float> logits(8, 0.0f), loss(2);
  std::vector<int32_t> targets = {1, 4};
  CpuBackend cpu;
  absl::Status st = cpu.CrossEntropy({.loss = loss.data(), .logits = logits.data(), .targets = targets.data(),
                                      .tokens = 2, .vocab = 4});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("target id 4"), std::string::npos) << st;
  EXPECT_NE(st.message().find("vocab_size 4"), std::string::npos) << st;
  st = cpu.CrossEntropy({.loss = loss.data(), .logits = logits.data(), .targets = targets.data(), .tokens = 2,
                         .vocab = 4, .stride = 3});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  st = cpu.CrossEntropy({.loss = nullptr, .logits = logits.data(), .targets = targets.data(), .tokens = 2, .vocab = 4});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
}

// IndexerDistill by hand (backend.h's formulas): T = 2, one head, d = 1. Row 0 has one key (softmax 1,
// target 1: KL and G are 0); row 1: I = w·ReLU(q·k) = [2, 1] against the target [0.25, 0.75].
TEST(CpuIndexerDistill, HandChecked) {
  const std::vector<float> q = {1.0f, 2.0f}, k = {1.0f, 0.5f}, w = {3.0f, 1.0f};
  const std::vector<float> p = {1.0f, 9.0f /* above the diagonal: ignored */, 0.25f, 0.75f};
  std::vector<float> kl(2), gq(2), gk(2), gw(2);
  CpuBackend cpu;
  ASSERT_TRUE(cpu.IndexerDistill({.kl = kl.data(), .grad_q = gq.data(), .grad_k = gk.data(), .grad_w = gw.data(),
                                  .q = q.data(), .k = k.data(), .w = w.data(), .p = p.data(), .tokens = 2,
                                  .heads = 1, .head_dim = 1})
                  .ok());
  const double s0 = std::exp(2.0) / (std::exp(2.0) + std::exp(1.0)), s1 = 1.0 - s0;  // softmax of [2, 1]
  const double g0 = s0 - 0.25, g1 = s1 - 0.75;                                       // G[1, :]
  EXPECT_NEAR(kl[0], 0.0, 1e-7);
  EXPECT_NEAR(kl[1], 0.25 * std::log(0.25 / s0) + 0.75 * std::log(0.75 / s1), 1e-6);
  EXPECT_NEAR(gw[0], 0.0, 1e-7);
  EXPECT_NEAR(gw[1], g0 * 2.0 + g1 * 1.0, 1e-6);            // Σ_s G · ReLU(q·k)
  EXPECT_NEAR(gq[0], 0.0, 1e-7);
  EXPECT_NEAR(gq[1], 1.0 * (g0 * 1.0 + g1 * 0.5), 1e-6);    // w · Σ_s G · k[s]
  EXPECT_NEAR(gk[0], g0 * 1.0 * 2.0, 1e-6);                 // G[1, 0] · w[1] · q[1] (row 0: G = 0)
  EXPECT_NEAR(gk[1], g1 * 1.0 * 2.0, 1e-6);
}

TEST(CpuIndexerDistill, RejectsBadArguments) {
  CpuBackend cpu;
  std::vector<float> v(4, 1.0f);
  IndexerDistillArgs a{.kl = v.data(), .q = v.data(), .k = v.data(), .w = v.data(), .p = v.data(), .tokens = 2,
                       .heads = 1, .head_dim = 1};
  ASSERT_TRUE(cpu.IndexerDistill(a).ok());
  IndexerDistillArgs bad = a;
  bad.tokens = kIndexerDistillMaxTokens + 1;  // its [T, T] scratch would not be addressable
  absl::Status st = cpu.IndexerDistill(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("tokens"), std::string::npos) << st;
  bad = a;
  bad.grad_q = v.data();  // without grad_k / grad_w
  EXPECT_EQ(cpu.IndexerDistill(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = a;
  bad.head_dim = kIndexerDistillMaxHeadDim + 1;
  EXPECT_EQ(cpu.IndexerDistill(bad).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ic::kernels::cpu
