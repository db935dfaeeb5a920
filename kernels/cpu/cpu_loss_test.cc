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

}  // namespace
}  // namespace ic::kernels::cpu
