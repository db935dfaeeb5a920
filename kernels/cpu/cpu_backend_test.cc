// Tests of the CPU backend's memory calls and elementwise ops (Embedding, RmsNorm, LayerNorm, Rope,
// SiluMul, Copy2D, CacheWrite, GatherRows, ScatterAddRows) against double-precision loops or
// hand-computed numbers, with strides and argument validation.
#include "kernels/cpu/cpu_backend.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <chrono>
#include <thread>
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_test_util.h"

namespace ic::kernels::cpu {
namespace {

using testutil::RandomVector;

TEST(CpuBackend, CreateBackendGivesCpu) {
  auto b = CreateBackend(DeviceKind::kCpu);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->kind(), DeviceKind::kCpu);
  EXPECT_EQ((*b)->name(), "cpu");
}

TEST(CpuBackend, MemoryRoundTrip) {
  CpuBackend cpu;
  auto p = cpu.Allocate(100);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(*p) % 64, 0u);
  std::vector<uint8_t> src(100), dst(100, 0);
  for (int i = 0; i < 100; ++i) src[i] = static_cast<uint8_t>(i * 3);
  ASSERT_TRUE(cpu.CopyToDevice(*p, src.data(), 100).ok());
  ASSERT_TRUE(cpu.CopyOnDevice(static_cast<uint8_t*>(*p) + 50, *p, 50).ok());
  ASSERT_TRUE(cpu.Memset(*p, 7, 10).ok());
  ASSERT_TRUE(cpu.CopyToHost(dst.data(), *p, 100).ok());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(dst[i], 7);
  for (int i = 10; i < 50; ++i) EXPECT_EQ(dst[i], src[i]);
  for (int i = 50; i < 100; ++i) EXPECT_EQ(dst[i], src[i - 50]);
  EXPECT_TRUE(cpu.Synchronize().ok());
  cpu.Free(*p);
  EXPECT_EQ(cpu.CopyToHost(nullptr, src.data(), 4).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cpu.Memset(nullptr, 0, 4).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CpuBackend, AllocateHugeIsResourceExhausted) {
  CpuBackend cpu;
  auto p = cpu.Allocate(size_t{1} << 62);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(CpuBackend, EmbeddingGathersRows) {
  CpuBackend cpu;
  std::vector<float> table(5 * 3);
  for (int i = 0; i < 15; ++i) table[i] = static_cast<float>(i);
  std::vector<int32_t> ids = {4, 0, 4, 2};
  std::vector<float> out(12);
  ASSERT_TRUE(cpu.Embedding({.out = out.data(), .table = table.data(), .ids = ids.data(), .tokens = 4, .dim = 3, .vocab = 5}).ok());
  EXPECT_EQ(out, (std::vector<float>{12, 13, 14, 0, 1, 2, 12, 13, 14, 6, 7, 8}));
}

// C9: a token id equal to vocab_size, and −1, are InvalidArgument naming the id and the vocabulary size.
TEST(CpuBackend, CaseC9EmbeddingBadTokens) {
  CpuBackend cpu;
  std::vector<float> table(320 * 2, 1.0f), out(4, 9.0f);
  for (int32_t bad : {320, -1}) {
    std::vector<int32_t> ids = {3, bad};
    absl::Status st = cpu.Embedding({.out = out.data(), .table = table.data(), .ids = ids.data(), .tokens = 2, .dim = 2, .vocab = 320});
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("token id " + std::to_string(bad) + " "), std::string::npos) << st;
    EXPECT_NE(st.message().find("vocab_size 320"), std::string::npos) << st;
    EXPECT_EQ(out[0], 9.0f) << "nothing is written on error";
  }
}

TEST(CpuBackend, RmsNormMatchesDoubleWithStridesAndInPlace) {
  std::mt19937 rng(1);
  const int rows = 5, dim = 37, in_stride = 40, out_stride = 39;
  std::vector<float> in = RandomVector(rows * in_stride, rng, -3, 3), w = RandomVector(dim, rng);
  std::vector<float> out(rows * out_stride, 0.0f);
  CpuBackend cpu;
  ASSERT_TRUE(cpu.RmsNorm({.out = out.data(), .in = in.data(), .weight = w.data(), .rows = rows, .dim = dim,
                           .in_stride = in_stride, .out_stride = out_stride, .eps = 1e-5f}).ok());
  for (int r = 0; r < rows; ++r) {
    double ss = 0.0;
    for (int i = 0; i < dim; ++i) ss += static_cast<double>(in[r * in_stride + i]) * in[r * in_stride + i];
    const double inv = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int i = 0; i < dim; ++i) EXPECT_NEAR(out[r * out_stride + i], in[r * in_stride + i] * inv * w[i], 1e-5);
  }
  std::vector<float> inplace = in;
  ASSERT_TRUE(cpu.RmsNorm({.out = inplace.data(), .in = inplace.data(), .weight = w.data(), .rows = rows, .dim = dim,
                           .in_stride = in_stride, .out_stride = in_stride, .eps = 1e-5f}).ok());
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < dim; ++i) EXPECT_EQ(inplace[r * in_stride + i], out[r * out_stride + i]);
  }
  EXPECT_EQ(cpu.RmsNorm({.out = out.data(), .in = in.data(), .weight = nullptr, .rows = 1, .dim = dim}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cpu.RmsNorm({.out = out.data(), .in = in.data(), .weight = w.data(), .rows = 1, .dim = dim, .in_stride = 3}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CpuBackend, LayerNormWithAndWithoutBias) {
  CpuBackend cpu;
  // Hand-computed: x = [1, 2, 3, 4], mean 2.5, var 1.25.
  const std::vector<float> x = {1, 2, 3, 4}, w = {1, 2, 1, 1}, b = {0.5f, 0, 0, -1};
  std::vector<float> out(4);
  ASSERT_TRUE(cpu.LayerNorm({.out = out.data(), .in = x.data(), .weight = w.data(), .bias = b.data(), .rows = 1, .dim = 4, .eps = 0.0f}).ok());
  const double sd = std::sqrt(1.25);
  EXPECT_NEAR(out[0], -1.5 / sd + 0.5, 1e-6);
  EXPECT_NEAR(out[1], 2 * (-0.5 / sd), 1e-6);
  EXPECT_NEAR(out[2], 0.5 / sd, 1e-6);
  EXPECT_NEAR(out[3], 1.5 / sd - 1, 1e-6);
  ASSERT_TRUE(cpu.LayerNorm({.out = out.data(), .in = x.data(), .weight = w.data(), .rows = 1, .dim = 4, .eps = 1e-6f}).ok());
  EXPECT_NEAR(out[3], 1.5 / std::sqrt(1.25 + 1e-6), 1e-6);
}

// Reference RoPE: the angle is the fp32 product pos·inv_freq (as HF computes it), cos/sin in double.
void ReferenceRope(std::vector<double>& x, const std::vector<int32_t>& pos, const std::vector<float>& inv_freq,
                   int tokens, int heads, int token_stride, int head_stride, int rot_offset, int rot_dim,
                   float scaling, RopeStyle style) {
  for (int t = 0; t < tokens; ++t) {
    for (int h = 0; h < heads; ++h) {
      double* v = x.data() + t * token_stride + h * head_stride + rot_offset;
      for (int i = 0; i < rot_dim / 2; ++i) {
        const float angle = static_cast<float>(pos[t]) * inv_freq[i];
        const double c = std::cos(static_cast<double>(angle)) * scaling, s = std::sin(static_cast<double>(angle)) * scaling;
        const int i0 = style == RopeStyle::kNeox ? i : 2 * i, i1 = style == RopeStyle::kNeox ? i + rot_dim / 2 : 2 * i + 1;
        const double a = v[i0], b = v[i1];
        v[i0] = a * c - b * s;
        v[i1] = b * c + a * s;
      }
    }
  }
}

TEST(CpuBackend, RopeBothStylesWithOffsetsAndScaling) {
  std::mt19937 rng(2);
  const int tokens = 6, heads = 3, head_stride = 20, token_stride = 64, rot_offset = 4, rot_dim = 12;
  std::vector<int32_t> pos = {0, 1, 7, 100, 4095, 163839};
  std::vector<float> inv_freq(rot_dim / 2);
  for (int i = 0; i < rot_dim / 2; ++i) inv_freq[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / rot_dim));
  for (RopeStyle style : {RopeStyle::kNeox, RopeStyle::kInterleaved}) {
    for (float scaling : {1.0f, 1.2f}) {
      std::vector<float> x = RandomVector(tokens * token_stride, rng);
      std::vector<double> ref(x.begin(), x.end());
      CpuBackend cpu;
      RopeArgs a{.x = x.data(), .positions = pos.data(), .inv_freq = inv_freq.data(), .tokens = tokens, .heads = heads,
                 .token_stride = token_stride, .head_stride = head_stride, .rot_offset = rot_offset,
                 .rot_dim = rot_dim, .attention_scaling = scaling, .style = style};
      ASSERT_TRUE(cpu.Rope(a).ok());
      ReferenceRope(ref, pos, inv_freq, tokens, heads, token_stride, head_stride, rot_offset, rot_dim, scaling, style);
      for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], ref[i], 2e-6) << "element " << i;
    }
  }
  // Hand-computed: position 1, inv_freq 0.5, NeoX on (1, 0) → (cos 0.5, sin 0.5).
  std::vector<float> v = {1.0f, 0.0f};
  const int32_t one = 1;
  const float f = 0.5f;
  CpuBackend cpu;
  ASSERT_TRUE(cpu.Rope({.x = v.data(), .positions = &one, .inv_freq = &f, .tokens = 1, .heads = 1, .rot_dim = 2}).ok());
  EXPECT_NEAR(v[0], std::cos(0.5), 1e-7);
  EXPECT_NEAR(v[1], std::sin(0.5), 1e-7);
  EXPECT_EQ(cpu.Rope({.x = v.data(), .positions = &one, .inv_freq = &f, .tokens = 1, .heads = 1, .rot_dim = 3}).code(),
            absl::StatusCode::kInvalidArgument);
  const int32_t neg = -2;
  EXPECT_EQ(cpu.Rope({.x = v.data(), .positions = &neg, .inv_freq = &f, .tokens = 1, .heads = 1, .rot_dim = 2}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CpuBackend, SiluMulWithStrides) {
  std::mt19937 rng(3);
  const int tokens = 4, dim = 9;
  std::vector<float> gate = RandomVector(tokens * 20, rng, -30, 30), up = RandomVector(tokens * 11, rng);
  std::vector<float> out(tokens * 10, 5.0f);
  CpuBackend cpu;
  ASSERT_TRUE(cpu.SiluMul({.out = out.data(), .gate = gate.data(), .up = up.data(), .tokens = tokens, .dim = dim,
                           .gate_stride = 20, .up_stride = 11, .out_stride = 10}).ok());
  for (int t = 0; t < tokens; ++t) {
    for (int i = 0; i < dim; ++i) {
      const double g = gate[t * 20 + i];
      EXPECT_NEAR(out[t * 10 + i], g / (1.0 + std::exp(-g)) * up[t * 11 + i], 1e-5);
    }
    EXPECT_EQ(out[t * 10 + 9], 5.0f);
  }
}

TEST(CpuBackend, Copy2DAndAccumulate) {
  std::vector<float> src = {1, 2, 3, 9, 4, 5, 6, 9}, dst(6, 1.0f);
  CpuBackend cpu;
  ASSERT_TRUE(cpu.Copy2D({.dst = dst.data(), .src = src.data(), .rows = 2, .cols = 3, .dst_stride = 3, .src_stride = 4}).ok());
  EXPECT_EQ(dst, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  ASSERT_TRUE(cpu.Copy2D({.dst = dst.data(), .src = src.data(), .rows = 2, .cols = 3, .src_stride = 4, .accumulate = true}).ok());
  EXPECT_EQ(dst, (std::vector<float>{2, 4, 6, 8, 10, 12}));
  EXPECT_EQ(cpu.Copy2D({.dst = dst.data(), .src = src.data(), .rows = 2, .cols = 3, .src_stride = 2}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CpuBackend, CacheWriteSkipsMinusOneAndRejectsBadSlots) {
  std::vector<float> cache(4 * 5, 0.0f), src = {1, 2, 3, 4, 5, 6};
  std::vector<int32_t> slots = {3, -1, 0};
  CpuBackend cpu;
  ASSERT_TRUE(cpu.CacheWrite({.cache = cache.data(), .src = src.data(), .slots = slots.data(), .tokens = 3, .dim = 2,
                              .cache_stride = 5, .src_stride = 2, .num_slots = 4}).ok());
  EXPECT_EQ(cache[15], 1.0f);
  EXPECT_EQ(cache[16], 2.0f);
  EXPECT_EQ(cache[0], 5.0f);
  EXPECT_EQ(cache[1], 6.0f);
  EXPECT_EQ(cache[17], 0.0f);
  slots = {1, 4, 2};
  absl::Status st = cpu.CacheWrite({.cache = cache.data(), .src = src.data(), .slots = slots.data(), .tokens = 3,
                                    .dim = 2, .cache_stride = 5, .src_stride = 2, .num_slots = 4});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("slots[1] = 4"), std::string::npos) << st;
  EXPECT_EQ(cache[5], 0.0f) << "nothing is written on error";
}

TEST(CpuBackend, GatherAndScatterAddRows) {
  std::vector<float> in = {1, 2, 3, 4, 5, 6};  // 3 rows of 2
  std::vector<int32_t> rows = {2, 0, 2};
  std::vector<float> out(6);
  CpuBackend cpu;
  ASSERT_TRUE(cpu.GatherRows({.out = out.data(), .in = in.data(), .rows = rows.data(), .count = 3, .dim = 2}).ok());
  EXPECT_EQ(out, (std::vector<float>{5, 6, 1, 2, 5, 6}));
  std::vector<float> acc(6, 0.0f);
  const std::vector<float> scale = {0.5f, 2.0f, 1.0f};
  ASSERT_TRUE(cpu.ScatterAddRows({.out = acc.data(), .in = in.data(), .rows = rows.data(), .scale = scale.data(), .count = 3, .dim = 2}).ok());
  EXPECT_EQ(acc, (std::vector<float>{6, 8, 0, 0, 5.5f, 7}));
  ASSERT_TRUE(cpu.ScatterAddRows({.out = acc.data(), .in = in.data(), .rows = rows.data(), .count = 1, .dim = 2}).ok());
  EXPECT_EQ(acc[4], 6.5f);
  rows[1] = -3;
  absl::Status st = cpu.GatherRows({.out = out.data(), .in = in.data(), .rows = rows.data(), .count = 3, .dim = 2});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("rows[1] = -3"), std::string::npos) << st;
}

// Time marks: ids count up from 0 after each reset, the seconds between two marks are the host time
// between the calls (non-negative, and at least a 20 ms sleep placed between them), and an id not issued
// since the reset is InvalidArgument.
TEST(CpuBackend, TimeMarks) {
  CpuBackend cpu;
  auto m0 = cpu.TimeMark();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto m1 = cpu.TimeMark();
  ASSERT_TRUE(m0.ok() && m1.ok());
  EXPECT_EQ(*m0, 0);
  EXPECT_EQ(*m1, 1);
  auto dt = cpu.SecondsBetween(*m0, *m1);
  ASSERT_TRUE(dt.ok()) << dt.status();
  EXPECT_GE(*dt, 0.020);
  EXPECT_LT(*dt, 10.0);
  EXPECT_EQ(cpu.SecondsBetween(0, 2).status().code(), absl::StatusCode::kInvalidArgument);
  cpu.ResetTimeMarks();
  EXPECT_EQ(cpu.SecondsBetween(0, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*cpu.TimeMark(), 0);
}

}  // namespace
}  // namespace ic::kernels::cpu
