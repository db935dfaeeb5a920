// Tests of the CPU Gemm op against a double-precision loop: odd shapes, both B layouts, leading
// dimensions, batches (including a broadcast B), alpha/beta, k = 0, BF16 weights (b_bf16), block-scaled
// FP8 weights (b_fp8) and argument validation.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_test_util.h"

namespace ic::kernels::cpu {
namespace {

// The BF16 value nearest to x (ties to even), computed independently of the backend's bit trick: the
// significand rounded to 8 bits by nearbyint (the default rounding mode is to-nearest-even).
double RoundBf16(float x) {
  int e = 0;
  const double m = std::frexp(static_cast<double>(x), &e);  // x = m · 2^e, |m| in [0.5, 1)
  return std::ldexp(std::nearbyint(std::ldexp(m, 8)), e - 8);
}

uint16_t Bf16Bits(double rounded) {  // the bit pattern of a value RoundBf16 produced
  const float f = static_cast<float>(rounded);
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return static_cast<uint16_t>(u >> 16);
}

struct Case {
  int m, n, k, lda, ldb, ldc, batch;
  bool bt;
  float alpha, beta;
  int64_t sa, sb, sc;  // batch strides (sb may be 0: broadcast)
};

void RunCase(const Case& c, uint32_t seed, bool bf16 = false) {
  std::mt19937 rng(seed);
  const int lda = c.lda ? c.lda : c.k, ldb = c.ldb ? c.ldb : (c.bt ? c.k : c.n), ldc = c.ldc ? c.ldc : c.n;
  const int64_t a_size = c.sa * (c.batch - 1) + static_cast<int64_t>(c.m) * lda;
  const int64_t b_rows = c.bt ? c.n : c.k;
  const int64_t b_size = c.sb * (c.batch - 1) + b_rows * ldb;
  const int64_t c_size = c.sc * (c.batch - 1) + static_cast<int64_t>(c.m) * ldc;
  std::vector<float> a = testutil::RandomVector(a_size, rng), b = testutil::RandomVector(b_size, rng);
  std::vector<float> out = testutil::RandomVector(c_size, rng);
  const std::vector<float> before = out;
  std::vector<uint16_t> b_bits;
  if (bf16) {  // the reference below then reads the rounded operands
    for (float& v : b) {
      v = static_cast<float>(RoundBf16(v));
      b_bits.push_back(Bf16Bits(v));
    }
  }
  CpuBackend cpu;
  GemmArgs g{.c = out.data(), .a = a.data(), .b = b.data(), .m = c.m, .n = c.n, .k = c.k, .lda = c.lda, .ldb = c.ldb,
             .ldc = c.ldc, .b_transposed = c.bt, .alpha = c.alpha, .beta = c.beta, .batch = c.batch,
             .stride_a = c.sa, .stride_b = c.sb, .stride_c = c.sc};
  if (bf16) {
    g.b = nullptr;
    g.b_bf16 = b_bits.data();
  }
  ASSERT_TRUE(cpu.Gemm(g).ok());
  std::vector<bool> touched(c_size, false);
  for (int bi = 0; bi < c.batch; ++bi) {
    for (int i = 0; i < c.m; ++i) {
      for (int j = 0; j < c.n; ++j) {
        double acc = 0.0;
        for (int p = 0; p < c.k; ++p) {
          const float a_raw = a[bi * c.sa + static_cast<int64_t>(i) * lda + p];
          const double av = bf16 ? RoundBf16(a_raw) : a_raw;
          const double bv = c.bt ? b[bi * c.sb + static_cast<int64_t>(j) * ldb + p] : b[bi * c.sb + static_cast<int64_t>(p) * ldb + j];
          acc += av * bv;
        }
        const int64_t ci = bi * c.sc + static_cast<int64_t>(i) * ldc + j;
        const double want = c.alpha * acc + (c.beta == 0.0f ? 0.0 : c.beta * before[ci]);
        ASSERT_NEAR(out[ci], want, 1e-5 * (std::fabs(want) + c.k)) << "b " << bi << " i " << i << " j " << j;
        touched[ci] = true;
      }
    }
  }
  for (int64_t i = 0; i < c_size; ++i) {
    if (!touched[i]) ASSERT_EQ(out[i], before[i]) << "padding element " << i << " changed";
  }
}

TEST(CpuGemm, DenseTransposedWeight) { RunCase({7, 13, 29, 0, 0, 0, 1, true, 1.0f, 0.0f, 0, 0, 0}, 1); }
TEST(CpuGemm, DenseNotTransposed) { RunCase({33, 5, 17, 0, 0, 0, 1, false, 1.0f, 0.0f, 0, 0, 0}, 2); }
TEST(CpuGemm, StridesAlphaBeta) { RunCase({9, 11, 6, 10, 15, 14, 1, true, 0.5f, -2.0f, 0, 0, 0}, 3); }
TEST(CpuGemm, StridesNotTransposed) { RunCase({4, 11, 6, 8, 12, 13, 1, false, 2.0f, 1.0f, 0, 0, 0}, 4); }
TEST(CpuGemm, Batched) { RunCase({5, 7, 3, 0, 0, 9, 3, true, 1.0f, 0.5f, 20, 25, 50}, 5); }
TEST(CpuGemm, BatchedBroadcastB) { RunCase({6, 4, 8, 0, 0, 0, 4, false, 1.0f, 0.0f, 48, 0, 24}, 6); }

TEST(CpuGemm, Bf16WeightsDenseTransposed) { RunCase({7, 13, 29, 0, 0, 0, 1, true, 1.0f, 0.0f, 0, 0, 0}, 11, true); }
TEST(CpuGemm, Bf16WeightsStridesAlphaBeta) { RunCase({9, 11, 6, 10, 15, 14, 1, true, 0.5f, -2.0f, 0, 0, 0}, 12, true); }
TEST(CpuGemm, Bf16WeightsBatchedNotTransposed) {
  RunCase({5, 7, 3, 9, 11, 9, 3, false, 1.0f, 0.5f, 20, 40, 50}, 13, true);
}
TEST(CpuGemm, Bf16WeightsBatchedBroadcastB) { RunCase({6, 4, 8, 0, 0, 0, 4, false, 1.0f, 0.0f, 48, 0, 24}, 14, true); }

// The rounding differs from F32: a product the F32 path computes exactly comes out rounded.
TEST(CpuGemm, Bf16RoundsTheActivations) {
  CpuBackend cpu;
  const float a = 1.0f + 1.0f / 256 + 1.0f / 1024;  // BF16 neighbours 1 and 1 + 1/128; above their midpoint
  const uint16_t one = 0x3f80;                       // 1.0 in BF16
  float c = 0.0f;
  GemmArgs g{.c = &c, .a = &a, .b_bf16 = &one, .m = 1, .n = 1, .k = 1};
  ASSERT_TRUE(cpu.Gemm(g).ok());
  EXPECT_EQ(c, 1.0f + 1.0f / 128);
  g.b = &a;
  EXPECT_EQ(cpu.Gemm(g).code(), absl::StatusCode::kInvalidArgument);  // both b and b_bf16
  g.m = 0;
  EXPECT_EQ(cpu.Gemm(g).code(), absl::StatusCode::kInvalidArgument);  // even with nothing to compute
}

// Block-scaled FP8 weights on values FP8 holds exactly, so the expected product is exact arithmetic in
// double: each 128-column block of A has largest magnitude 448·2^e (its power-of-two scale is then 2^e and
// every a / 2^e is an E4M3 value), B's bytes are E4M3 codes of ±{0.5, 1, 1.5, 2} with an arbitrary scale per
// 128 × 128 block. k = 256 + 32 (a partial third block), n = 130 (two row blocks), ldc > n, beta.
TEST(CpuGemm, Fp8WeightsOnExactValues) {
  CpuBackend cpu;
  const int m = 3, n = 130, k = 288, ldc = 133, kb = 3, scale_ld = 4;  // scale_ld: ceil(288/128) = 3 → 4
  const uint8_t codes[] = {0x30, 0x38, 0x3c, 0x40, 0xb0, 0xb8, 0xbc, 0xc0};  // ±0.5, ±1, ±1.5, ±2
  const double values[] = {0.5, 1, 1.5, 2, -0.5, -1, -1.5, -2};
  std::mt19937 rng(5);
  std::vector<uint8_t> w(static_cast<size_t>(n) * k);
  std::vector<double> wv(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    const int c = static_cast<int>(rng() % 8);
    w[i] = codes[c];
    wv[i] = values[c];
  }
  const std::vector<float> scales = {0.25f, 3.0f, 0.0625f, -1.0f, 1.75f, 0.5f, 8.0f, -1.0f};  // [2, 4]
  std::vector<float> a(static_cast<size_t>(m) * k);
  for (int i = 0; i < m; ++i) {
    for (int b = 0; b < kb; ++b) {
      const float s = std::ldexp(1.0f, i - 2 * b);  // this block's scale
      for (int c = b * 128; c < std::min(k, b * 128 + 128); ++c) {
        a[static_cast<size_t>(i) * k + c] = static_cast<float>(values[rng() % 8]) * s;
      }
      a[static_cast<size_t>(i) * k + b * 128 + 5] = 448.0f * s;
    }
  }
  std::vector<float> c(static_cast<size_t>(m) * ldc, 1.0f);
  GemmArgs g{.c = c.data(), .a = a.data(), .b_fp8 = w.data(), .b_scale = scales.data(), .m = m, .n = n, .k = k,
             .ldc = ldc, .alpha = 2.0f, .beta = 0.5f};
  ASSERT_TRUE(cpu.Gemm(g).ok());
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double want = 0;
      for (int x = 0; x < k; ++x) {
        want += static_cast<double>(a[static_cast<size_t>(i) * k + x]) * wv[static_cast<size_t>(j) * k + x] *
                scales[(j / 128) * scale_ld + x / 128];
      }
      want = 2.0 * want + 0.5;
      EXPECT_NEAR(c[static_cast<size_t>(i) * ldc + j], want, 1e-6 * std::max(1.0, std::fabs(want))) << i << ", " << j;
    }
  }
  // A value between two E4M3 neighbours is rounded: 1 + 1/32 lies between 1 and 1.125 (nearer 1).
  std::vector<float> a2(128, 0.0f);
  a2[0] = 448.0f;
  a2[1] = 1.0f + 1.0f / 32;
  std::vector<uint8_t> w2(128, 0);
  w2[1] = 0x38;  // only a2[1] contributes, times 1.0
  const float one = 1.0f;
  float out = 0.0f;
  ASSERT_TRUE(cpu.Gemm({.c = &out, .a = a2.data(), .b_fp8 = w2.data(), .b_scale = &one, .b_scale_ld = 1, .m = 1,
                        .n = 1, .k = 128})
                  .ok());
  EXPECT_EQ(out, 1.0f);
  // A non-finite activation is not saturated to ±448: its block's scale is inf and the product NaN.
  a2[7] = std::numeric_limits<float>::infinity();
  w2[7] = 0x38;
  ASSERT_TRUE(cpu.Gemm({.c = &out, .a = a2.data(), .b_fp8 = w2.data(), .b_scale = &one, .b_scale_ld = 1, .m = 1,
                        .n = 1, .k = 128})
                  .ok());
  EXPECT_TRUE(std::isnan(out)) << out;
  // batch 0 is a no-op, as for the other weight formats; b_scale without b_fp8 is refused.
  ASSERT_TRUE(cpu.Gemm({.c = &out, .a = a2.data(), .b_fp8 = w2.data(), .b_scale = &one, .m = 1, .n = 1, .k = 128,
                        .batch = 0})
                  .ok());
  const absl::Status st = cpu.Gemm({.c = &out, .a = a2.data(), .b = a2.data(), .b_scale = &one, .m = 1, .n = 1, .k = 128});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("b_scale"), std::string::npos) << st;
}

TEST(CpuGemm, ZeroInnerDimensionScalesC) {
  CpuBackend cpu;
  std::vector<float> c = {1, 2, 3, 4};
  GemmArgs g{.c = c.data(), .m = 2, .n = 2, .k = 0, .beta = 3.0f};
  ASSERT_TRUE(cpu.Gemm(g).ok());
  EXPECT_EQ(c, (std::vector<float>{3, 6, 9, 12}));
  g.beta = 0.0f;
  ASSERT_TRUE(cpu.Gemm(g).ok());
  EXPECT_EQ(c, (std::vector<float>{0, 0, 0, 0}));
}

TEST(CpuGemm, RejectsBadArguments) {
  CpuBackend cpu;
  std::vector<float> a(64), b(64), c(64);
  GemmArgs ok{.c = c.data(), .a = a.data(), .b = b.data(), .m = 4, .n = 4, .k = 4};
  ASSERT_TRUE(cpu.Gemm(ok).ok());
  GemmArgs g = ok;
  g.m = -1;
  EXPECT_EQ(cpu.Gemm(g).code(), absl::StatusCode::kInvalidArgument);
  g = ok;
  g.ldc = 3;
  absl::Status st = cpu.Gemm(g);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("ldc = 3"), std::string::npos) << st;
  g = ok;
  g.lda = 2;
  EXPECT_EQ(cpu.Gemm(g).code(), absl::StatusCode::kInvalidArgument);
  g = ok;
  g.b = nullptr;
  st = cpu.Gemm(g);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("b is null"), std::string::npos) << st;
  g = ok;
  g.batch = 2;  // stride_c = 0 would make the batch entries overwrite each other
  EXPECT_EQ(cpu.Gemm(g).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ic::kernels::cpu
