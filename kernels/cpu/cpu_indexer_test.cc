// Tests of the CPU IndexerTopk op: scores against a double-precision loop, exact index sets where the
// arithmetic is exact (integer inputs), cases C1–C4 through the indexer, short rows, paged caches with
// shuffled block tables and several sequences, and argument validation.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/cpu_test_util.h"

namespace ic::kernels::cpu {
namespace {

using testutil::MakeCache;
using testutil::MakeLayout;
using testutil::MakePaged;
using testutil::MakeTokens;
using testutil::Paged;
using testutil::Tokens;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// I[t, s] in double, s ≤ pos(t).
std::vector<double> NaiveScores(const std::vector<float>& q, const std::vector<float>& w, const std::vector<float>& kc,
                                int k_stride, const Paged& p, const Tokens& tk, int heads, int dim, int t) {
  const int pos = tk.pos[t];
  std::vector<double> out(pos + 1);
  for (int s = 0; s <= pos; ++s) {
    const float* krow = kc.data() + p.Slot(tk.seq[t], s) * k_stride;
    double acc = 0.0;
    for (int j = 0; j < heads; ++j) {
      double dot = 0.0;
      for (int i = 0; i < dim; ++i) dot += static_cast<double>(q[(t * heads + j) * dim + i]) * krow[i];
      acc += static_cast<double>(w[t * heads + j]) * std::max(dot, 0.0);
    }
    out[s] = acc;
  }
  return out;
}

// Top-k by full sort (ties → smaller position; NaN lowest), sorted ascending.
std::vector<int32_t> ReferenceTopk(const std::vector<double>& s, int k) {
  std::vector<int32_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  auto rank = [](double v) { return std::isnan(v) ? -kInf : v; };
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
    const bool na = std::isnan(s[a]), nb = std::isnan(s[b]);
    if (na != nb) return nb;
    return !na && rank(s[a]) > rank(s[b]);
  });
  idx.resize(std::min<size_t>(k, idx.size()));
  std::sort(idx.begin(), idx.end());
  return idx;
}

std::vector<int32_t> ValidSorted(const int32_t* row, int k, int expected_valid) {
  for (int i = 0; i < k; ++i) {
    if (i < expected_valid) {
      EXPECT_GE(row[i], 0) << "slot " << i;
    } else {
      EXPECT_EQ(row[i], -1) << "slot " << i;
    }
  }
  std::vector<int32_t> v(row, row + std::min(k, expected_valid));
  std::sort(v.begin(), v.end());
  return v;
}

// Random indexer inputs: sequences of `lens` tokens in 64-slot blocks whose rows first..len−1 are queries,
// an F32 index-K cache of `dim` (k_stride = dim), q [T, heads, dim] in [−1, 1) and w [T, heads] in
// [w_lo, w_hi), drawn from rng in that order.
struct Scene {
  Paged p;
  Tokens tk;
  int T = 0;
  std::vector<float> kc, q, w;
};
Scene MakeScene(std::mt19937& rng, const std::vector<int>& lens, const std::vector<int>& first, int heads, int dim,
                float w_lo, float w_hi) {
  Scene sc;
  sc.p = MakePaged(lens, 64, rng);
  sc.tk = MakeTokens(first, lens, rng);
  sc.T = static_cast<int>(sc.tk.seq.size());
  sc.kc = MakeCache(sc.p, dim, rng);
  sc.q = testutil::RandomVector(sc.T * heads * dim, rng);
  sc.w = testutil::RandomVector(sc.T * heads, rng, w_lo, w_hi);
  return sc;
}

// Integer-valued q and k and w in quarters: every score is exact in float, so sets must match exactly
// (with many ties, exercising the tie rule end to end).
TEST(CpuIndexer, ExactScoresAndSetsOnIntegerInputs) {
  std::mt19937 rng(11);
  const std::vector<int> lens = {301, 77, 1000, 5};
  const std::vector<int> first = {250, 0, 900, 4};
  const int heads = 5, dim = 24, k = 64, k_stride = 31;
  Paged p = MakePaged(lens, 16, rng);
  Tokens tk = MakeTokens(first, lens, rng);
  std::uniform_int_distribution<int> small(-2, 2), quarter(-4, 8);
  std::vector<float> kc = MakeCache(p, k_stride, rng);
  for (int64_t s = 0; s < p.num_slots; ++s) {
    if (!p.used_slot[s]) continue;
    for (int i = 0; i < k_stride; ++i) kc[s * k_stride + i] = static_cast<float>(small(rng));
  }
  const int T = static_cast<int>(tk.seq.size());
  std::vector<float> q(T * heads * dim), w(T * heads);
  for (float& x : q) x = static_cast<float>(small(rng));
  for (float& x : w) x = 0.25f * quarter(rng);
  const int scores_stride = 1001;
  std::vector<float> scores(T * scores_stride, 3.0f);
  std::vector<int32_t> idx(T * k, 999);
  CpuBackend cpu;
  IndexerArgs a{.indices = idx.data(), .scores = scores.data(), .scores_stride = scores_stride, .q = q.data(),
                .w = w.data(), .k_cache = kc.data(), .k_stride = k_stride, .num_slots = p.num_slots,
                .heads = heads, .head_dim = dim, .k = k, .layout = MakeLayout(p, tk)};
  ASSERT_TRUE(cpu.IndexerTopk(a).ok());
  for (int t = 0; t < T; ++t) {
    const std::vector<double> ref = NaiveScores(q, w, kc, k_stride, p, tk, heads, dim, t);
    const int valid = tk.pos[t] + 1;
    for (int s = 0; s < scores_stride; ++s) {
      const float got = scores[t * scores_stride + s];
      if (s < valid) {
        ASSERT_EQ(got, static_cast<float>(ref[s])) << "token " << t << " s " << s;
      } else {
        ASSERT_EQ(got, -kInf) << "token " << t << " s " << s;
      }
    }
    EXPECT_EQ(ValidSorted(idx.data() + t * k, k, std::min(k, valid)), ReferenceTopk(ref, k)) << "token " << t;
  }

  // Without the scores output: same indices; short rows select 0..pos without scoring.
  std::vector<int32_t> idx2(T * k, 999);
  a.indices = idx2.data();
  a.scores = nullptr;
  a.scores_stride = 0;
  ASSERT_TRUE(cpu.IndexerTopk(a).ok());
  EXPECT_EQ(idx, idx2);
}

// Random float inputs: scores within float tolerance of the double loop, and the indices are exactly
// the top-k of the scores the op reports (same code, same inputs).
TEST(CpuIndexer, RandomFloatsScoresAndSelfConsistentTopk) {
  std::mt19937 rng(12);
  const std::vector<int> lens = {700, 129, 64};
  const std::vector<int> first = {0, 100, 63};
  const int heads = 8, dim = 32, k = 48;
  auto [p, tk, T, kc, q, w] = MakeScene(rng, lens, first, heads, dim, -0.5f, 1.0f);
  const int stride = 700;
  std::vector<float> scores(T * stride);
  std::vector<int32_t> idx(T * k);
  CpuBackend cpu;
  IndexerArgs a{.indices = idx.data(), .scores = scores.data(), .scores_stride = stride, .q = q.data(), .w = w.data(),
                .k_cache = kc.data(), .num_slots = p.num_slots, .heads = heads, .head_dim = dim, .k = k,
                .layout = MakeLayout(p, tk)};
  ASSERT_TRUE(cpu.IndexerTopk(a).ok());
  std::vector<int32_t> lengths(T), again(T * k);
  for (int t = 0; t < T; ++t) {
    // Per score, the error is bounded by a few ulps of the absolute sum Σ_j |w_j| Σ_i |q_ji·k_i|.
    const std::vector<double> ref = NaiveScores(q, w, kc, dim, p, tk, heads, dim, t);
    for (size_t s = 0; s < ref.size(); ++s) {
      const float* krow = kc.data() + p.Slot(tk.seq[t], static_cast<int>(s)) * dim;
      double bound = 0.0;
      for (int j = 0; j < heads; ++j) {
        double abs_dot = 0.0;
        for (int i = 0; i < dim; ++i) abs_dot += std::fabs(static_cast<double>(q[(t * heads + j) * dim + i]) * krow[i]);
        bound += std::fabs(w[t * heads + j]) * abs_dot;
      }
      ASSERT_LE(std::fabs(ref[s] - scores[t * stride + s]), 4e-6 * bound + 1e-30) << "token " << t << " s " << s;
    }
    for (int s = tk.pos[t] + 1; s < stride; ++s) ASSERT_EQ(scores[t * stride + s], -kInf);
    lengths[t] = tk.pos[t] + 1;
  }
  TopkArgs ta{.out = again.data(), .scores = scores.data(), .lengths = lengths.data(), .rows = T, .stride = stride, .k = k};
  ASSERT_TRUE(cpu.Topk(ta).ok());
  for (int t = 0; t < T; ++t) {
    EXPECT_EQ(ValidSorted(idx.data() + t * k, k, std::min(k, lengths[t])),
              ValidSorted(again.data() + t * k, k, std::min(k, lengths[t])));
  }
}

// Round to 8 significant bits, ties to even, through frexp/nearbyint (independent of the bit trick the
// backend uses).
float Bf16ByFrexp(float x) {
  if (!std::isfinite(x) || x == 0.0f) return x;
  int e = 0;
  const double m = std::frexp(static_cast<double>(x), &e);  // |m| in [0.5, 1)
  return static_cast<float>(std::ldexp(std::nearbyint(m * 256.0), e - 8));
}

// Precision::kBF16 is the F32 indexer on BF16-rounded q and k: the scores equal (bitwise) an F32
// run on inputs rounded beforehand, match a double-precision loop on the rounded inputs, and differ
// from the F32 scores of the raw inputs (the rounding is applied).
TEST(CpuIndexer, Bf16PrecisionRoundsQueriesAndKeys) {
  std::mt19937 rng(31);
  const std::vector<int> lens = {300, 90};
  const std::vector<int> first = {0, 40};
  const int heads = 8, dim = 64, k = 32;
  auto [p, tk, T, kc, q, w] = MakeScene(rng, lens, first, heads, dim, 0.1f, 1.0f);
  std::vector<float> kc_r = kc, q_r = q;
  for (float& v : kc_r) v = Bf16ByFrexp(v);
  for (float& v : q_r) v = Bf16ByFrexp(v);
  const int stride = 300;
  auto run = [&](const std::vector<float>& qq, const std::vector<float>& kk, Precision precision,
                 std::vector<float>* scores, std::vector<int32_t>* idx) {
    scores->assign(static_cast<size_t>(T) * stride, 0.0f);
    idx->assign(static_cast<size_t>(T) * k, 0);
    IndexerArgs a{.indices = idx->data(), .scores = scores->data(), .scores_stride = stride, .q = qq.data(),
                  .w = w.data(), .k_cache = kk.data(), .num_slots = p.num_slots, .heads = heads, .head_dim = dim,
                  .k = k, .precision = precision, .layout = MakeLayout(p, tk)};
    CpuBackend cpu;
    ASSERT_TRUE(cpu.IndexerTopk(a).ok());
  };
  std::vector<float> s_bf16, s_pre, s_f32;
  std::vector<int32_t> i_bf16, i_pre, i_f32;
  run(q, kc, Precision::kBF16, &s_bf16, &i_bf16);
  run(q_r, kc_r, Precision::kF32, &s_pre, &i_pre);
  run(q, kc, Precision::kF32, &s_f32, &i_f32);
  EXPECT_EQ(s_bf16, s_pre);
  EXPECT_EQ(i_bf16, i_pre);
  double max_rel_change = 0.0;
  for (int t = 0; t < T; ++t) {
    const std::vector<double> ref = NaiveScores(q_r, w, kc_r, dim, p, tk, heads, dim, t);
    for (size_t s = 0; s < ref.size(); ++s) {
      const double got = s_bf16[t * stride + s];
      ASSERT_NEAR(got, ref[s], 1e-5 * (1.0 + std::fabs(ref[s]))) << "token " << t << " s " << s;
      const double f32 = s_f32[t * stride + s];
      max_rel_change = std::max(max_rel_change, std::fabs(got - f32) / (1.0 + std::fabs(f32)));
    }
  }
  EXPECT_GT(max_rel_change, 1e-4);  // BF16 keeps 8 bits: scores move by ~2^-9 relative
  // An out-of-range precision is rejected.
  IndexerArgs bad{.indices = i_bf16.data(), .q = q.data(), .w = w.data(), .k_cache = kc.data(),
                  .num_slots = p.num_slots, .heads = heads, .head_dim = dim, .k = k,
                  .precision = static_cast<Precision>(7), .layout = MakeLayout(p, tk)};
  CpuBackend cpu;
  absl::Status st = cpu.IndexerTopk(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("precision"), std::string::npos) << st;
}

// E4M3 conversion: every byte round-trips; halfway values go to the even neighbour; saturation at ±448;
// subnormals (multiples of 2^-9 below 2^-6).
TEST(CpuIndexer, E4m3ConversionRoundTripsAndRoundsToNearestEven) {
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) continue;  // NaN
    const float v = internal::E4m3ToFloat(static_cast<uint8_t>(b));
    EXPECT_EQ(internal::FloatToE4m3(v), b == 0x80 ? 0x80 : b) << b << " " << v;
  }
  EXPECT_EQ(internal::E4m3ToFloat(0x7e), 448.0f);
  EXPECT_EQ(internal::E4m3ToFloat(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(internal::E4m3ToFloat(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(internal::FloatToE4m3(1000.0f), 0x7e);
  EXPECT_EQ(internal::FloatToE4m3(-1e30f), 0xfe);
  EXPECT_EQ(internal::E4m3ToFloat(internal::FloatToE4m3(1.0625f)), 1.0f);    // halfway 1 | 1.125: even (1.0)
  EXPECT_EQ(internal::E4m3ToFloat(internal::FloatToE4m3(1.1875f)), 1.25f);   // halfway 1.125 | 1.25: even (1.25)
  EXPECT_EQ(internal::E4m3ToFloat(internal::FloatToE4m3(1.07f)), 1.125f);
  EXPECT_EQ(internal::E4m3ToFloat(internal::FloatToE4m3(3.0f * std::ldexp(1.0f, -10))), std::ldexp(1.0f, -8));  // 1.5 quanta → 2
  EXPECT_EQ(internal::E4m3ToFloat(internal::FloatToE4m3(std::ldexp(1.0f, -11))), 0.0f);  // a quarter quantum
  EXPECT_TRUE(std::isnan(internal::E4m3ToFloat(internal::FloatToE4m3(kNaN))));
}

// Precision::kFP8 (DESIGN.md §3): scores follow eq. 1 on the dequantised q and k (per-row scales), the
// index sets recall ≥ 0.99 of the BF16 path's on random inputs (mean over rows), and the CacheWrite
// scales are amax / 448. At DSA's proportions (k = 2048 over 2.4K–4K keys, 32 heads × 128). With k = 64
// over ≤ 900 keys the recall is 0.975: E4M3's 3-bit mantissa swaps near-tied keys, and a small k leaves a
// larger share of the set near the boundary.
TEST(CpuIndexer, Fp8PrecisionRecallsTheBf16Sets) {
  std::mt19937 rng(41);
  const std::vector<int> lens = {4000, 2600};
  const std::vector<int> first = {3900, 2400};  // the last rows: contexts of 2.4K–4K, k = 2048 as in DSA
  const int heads = 32, dim = 128, k = 2048;
  auto [p, tk, T, kc, q, w] = MakeScene(rng, lens, first, heads, dim, 0.1f, 1.0f);
  CpuBackend cpu;
  // The FP8 cache through CacheWrite (slot = row of kc).
  std::vector<int32_t> slots(p.num_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::vector<uint8_t> k8(p.num_slots * dim);
  std::vector<float> kscale(p.num_slots);
  ASSERT_TRUE(cpu.CacheWrite({.cache_fp8 = k8.data(), .scale = kscale.data(), .src = kc.data(), .slots = slots.data(),
                              .tokens = static_cast<int>(p.num_slots), .dim = dim, .num_slots = p.num_slots})
                  .ok());
  for (int64_t s = 0; s < p.num_slots; ++s) {
    float amax = 0.0f;
    for (int c = 0; c < dim; ++c) amax = std::max(amax, std::fabs(kc[s * dim + c]));
    // amax / 448 rounded up to a power of two; an all-zero row keeps scale 1.
    ASSERT_EQ(kscale[s], amax > 0.0f ? std::exp2(std::ceil(std::log2(amax / 448.0))) : 1.0) << s;
  }
  const int stride = 4000;
  std::vector<float> s8(T * stride), s16(T * stride);
  std::vector<int32_t> i8(T * k), i16(T * k);
  IndexerArgs a{.scores_stride = stride, .q = q.data(), .w = w.data(), .num_slots = p.num_slots, .heads = heads,
                .head_dim = dim, .k = k, .layout = MakeLayout(p, tk)};
  IndexerArgs a8 = a, a16 = a;
  a8.indices = i8.data(), a8.scores = s8.data(), a8.k_cache_fp8 = k8.data(), a8.k_scale = kscale.data();
  a8.precision = Precision::kFP8;
  a16.indices = i16.data(), a16.scores = s16.data(), a16.k_cache = kc.data(), a16.precision = Precision::kBF16;
  ASSERT_TRUE(cpu.IndexerTopk(a8).ok());
  ASSERT_TRUE(cpu.IndexerTopk(a16).ok());
  // Scores: a double loop over the dequantised values.
  for (int t = 0; t < T; t += 97) {
    std::vector<double> qd(heads * dim);
    std::vector<double> qs(heads);
    for (int j = 0; j < heads; ++j) {
      float amax = 0.0f;
      for (int c = 0; c < dim; ++c) amax = std::max(amax, std::fabs(q[(t * heads + j) * dim + c]));
      qs[j] = std::exp2(std::ceil(std::log2(amax / 448.0)));
      for (int c = 0; c < dim; ++c) {
        qd[j * dim + c] = internal::E4m3ToFloat(internal::FloatToE4m3(q[(t * heads + j) * dim + c] / static_cast<float>(qs[j])));
      }
    }
    for (int s = 0; s <= tk.pos[t]; ++s) {
      const int64_t slot = p.Slot(tk.seq[t], s);
      double total = 0.0;
      for (int j = 0; j < heads; ++j) {
        double dot = 0.0;
        for (int c = 0; c < dim; ++c) dot += qd[j * dim + c] * internal::E4m3ToFloat(k8[slot * dim + c]);
        total += static_cast<double>(w[t * heads + j]) * qs[j] * std::max(dot, 0.0);
      }
      total *= kscale[slot];
      ASSERT_NEAR(s8[t * stride + s], total, 1e-5 * (1.0 + std::fabs(total))) << t << " " << s;
    }
  }
  double recall = 0.0;
  int rows = 0;
  for (int t = 0; t < T; ++t) {
    if (tk.pos[t] + 1 <= k) continue;
    std::vector<int32_t> x(i8.begin() + t * k, i8.begin() + (t + 1) * k), y(i16.begin() + t * k, i16.begin() + (t + 1) * k);
    std::sort(x.begin(), x.end());
    std::sort(y.begin(), y.end());
    std::vector<int32_t> both;
    std::set_intersection(x.begin(), x.end(), y.begin(), y.end(), std::back_inserter(both));
    recall += static_cast<double>(both.size()) / k;
    ++rows;
  }
  ASSERT_GT(rows, 200);
  EXPECT_GE(recall / rows, 0.99) << "mean recall of the BF16 sets by the FP8 sets";
  RecordProperty("fp8_recall_of_bf16", std::to_string(recall / rows));
  // FP8 arithmetic needs the FP8 cache, and the FP8 cache needs FP8 arithmetic.
  IndexerArgs bad = a8;
  bad.precision = Precision::kBF16;
  EXPECT_EQ(cpu.IndexerTopk(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = a16;
  bad.precision = Precision::kFP8;
  EXPECT_EQ(cpu.IndexerTopk(bad).code(), absl::StatusCode::kInvalidArgument);
}

// The Hadamard rotation: against the explicit Sylvester matrix at dim 8, orthonormal (H·H = I, norms kept)
// at 128, and argument checks.
TEST(CpuIndexer, HadamardRotationIsTheOrthonormalSylvesterTransform) {
  CpuBackend cpu;
  std::mt19937 rng(5);
  std::vector<float> x = testutil::RandomVector(3 * 8, rng);
  std::vector<float> y = x;
  ASSERT_TRUE(cpu.Hadamard({.x = y.data(), .rows = 3, .dim = 8}).ok());
  for (int r = 0; r < 3; ++r) {
    for (int i = 0; i < 8; ++i) {
      double want = 0.0;
      for (int j = 0; j < 8; ++j) want += (__builtin_popcount(i & j) % 2 ? -1.0 : 1.0) * x[r * 8 + j];
      EXPECT_NEAR(y[r * 8 + i], want / std::sqrt(8.0), 1e-6) << r << " " << i;
    }
  }
  std::vector<float> z = testutil::RandomVector(4 * 130, rng);  // stride 130, dim 128
  std::vector<float> w = z;
  ASSERT_TRUE(cpu.Hadamard({.x = w.data(), .rows = 4, .dim = 128, .stride = 130}).ok());
  for (int r = 0; r < 4; ++r) {
    double n0 = 0, n1 = 0;
    for (int i = 0; i < 128; ++i) n0 += z[r * 130 + i] * z[r * 130 + i], n1 += w[r * 130 + i] * w[r * 130 + i];
    EXPECT_NEAR(n1, n0, 1e-4 * n0);
    EXPECT_EQ(w[r * 130 + 128], z[r * 130 + 128]);  // beyond dim: untouched
  }
  ASSERT_TRUE(cpu.Hadamard({.x = w.data(), .rows = 4, .dim = 128, .stride = 130}).ok());
  for (size_t i = 0; i < z.size(); ++i) EXPECT_NEAR(w[i], z[i], 1e-5) << i;
  EXPECT_EQ(cpu.Hadamard({.x = w.data(), .rows = 1, .dim = 96}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cpu.Hadamard({.x = w.data(), .rows = 1, .dim = 2048}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cpu.Hadamard({.x = w.data(), .rows = 1, .dim = 128, .stride = 64}).code(),
            absl::StatusCode::kInvalidArgument);
}

// One query over explicit per-key scores: heads = 1, dim = 1, q = 1, w = 1, k_I = score, so
// I[s] = ReLU(score[s]).
std::vector<int32_t> RunSingleQuery(const std::vector<float>& key_scores, int k, int block_size = 64) {
  std::mt19937 rng(99);
  const int len = static_cast<int>(key_scores.size());
  Paged p = MakePaged({len}, block_size, rng);
  std::vector<float> kc = MakeCache(p, 1, rng);
  for (int s = 0; s < len; ++s) kc[p.Slot(0, s)] = key_scores[s];
  Tokens tk{{0}, {len - 1}};
  const float q = 1.0f, w = 1.0f;
  std::vector<int32_t> idx(k, 5555);
  CpuBackend cpu;
  IndexerArgs a{.indices = idx.data(), .q = &q, .w = &w, .k_cache = kc.data(), .num_slots = p.num_slots,
                .heads = 1, .head_dim = 1, .k = k, .layout = MakeLayout(p, tk)};
  EXPECT_TRUE(cpu.IndexerTopk(a).ok());
  return idx;
}

TEST(CpuIndexer, CaseC1Plateau) {
  std::mt19937 rng(21);
  const int len = 8320, k = 2048;
  std::vector<float> s(len);
  for (float& x : s) x = std::uniform_real_distribution<float>(-2.0f, -0.01f)(rng);  // ReLU → exactly 0
  std::vector<int32_t> perm(len);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> expected;
  for (int i = 0; i < 100; ++i) {
    s[perm[i]] = std::uniform_real_distribution<float>(0.5f, 1.5f)(rng);
    expected.push_back(perm[i]);
  }
  std::sort(expected.begin(), expected.end());
  for (int pos = 0; static_cast<int>(expected.size()) < k; ++pos) {
    if (!std::binary_search(expected.begin(), expected.begin() + 100, pos)) expected.push_back(pos);
  }
  std::sort(expected.begin(), expected.end());
  const std::vector<int32_t> got = RunSingleQuery(s, k);
  EXPECT_EQ(ValidSorted(got.data(), k, k), expected);
}

TEST(CpuIndexer, CaseC2ShortContext) {
  std::vector<float> s(300, kNaN);  // never scored: short rows skip scoring
  const std::vector<int32_t> got = RunSingleQuery(s, 2048);
  for (int i = 0; i < 2048; ++i) ASSERT_EQ(got[i], i < 300 ? i : -1) << "slot " << i;
}

TEST(CpuIndexer, CaseC3BigTieBucket) {
  std::mt19937 rng(23);
  const int len = 65536, k = 2048;
  std::vector<int32_t> perm(len);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<float> s(len);
  std::vector<int32_t> ones, expected;
  for (int i = 0; i < len; ++i) {
    const int p = perm[i];
    if (i < 60000) {
      s[p] = std::uniform_real_distribution<float>(-1.0f, 0.9f)(rng);
    } else if (i < 65000) {
      s[p] = 1.0f;
      ones.push_back(p);
    } else {
      s[p] = std::uniform_real_distribution<float>(1.1f, 2.0f)(rng);
      expected.push_back(p);
    }
  }
  std::sort(ones.begin(), ones.end());
  expected.insert(expected.end(), ones.begin(), ones.begin() + 1512);
  std::sort(expected.begin(), expected.end());
  const std::vector<int32_t> got = RunSingleQuery(s, k);
  EXPECT_EQ(ValidSorted(got.data(), k, k), expected);
}

TEST(CpuIndexer, CaseC4NanAndInf) {
  std::mt19937 rng(24);
  std::vector<float> s(4096);
  for (float& x : s) x = std::uniform_real_distribution<float>(0.0f, 3.0f)(rng);
  s[7] = kInf;
  for (int p = 100; p < 200; ++p) s[p] = kNaN;
  const std::vector<int32_t> got = ValidSorted(RunSingleQuery(s, 16).data(), 16, 16);
  EXPECT_TRUE(std::binary_search(got.begin(), got.end(), 7));
  for (int32_t p : got) EXPECT_FALSE(p >= 100 && p < 200) << "NaN key " << p << " selected";
  std::vector<double> ref(s.begin(), s.end());
  EXPECT_EQ(got, ReferenceTopk(ref, 16));
}

TEST(CpuIndexer, RejectsBadArguments) {
  std::mt19937 rng(25);
  Paged p = MakePaged({100}, 16, rng);
  std::vector<float> kc = MakeCache(p, 8, rng);
  Tokens tk{{0, 0}, {98, 99}};
  std::vector<float> q(2 * 2 * 8, 1.0f), w(2 * 2, 1.0f);
  std::vector<int32_t> idx(2 * 4);
  CpuBackend cpu;
  IndexerArgs a{.indices = idx.data(), .q = q.data(), .w = w.data(), .k_cache = kc.data(), .num_slots = p.num_slots,
                .heads = 2, .head_dim = 8, .k = 4, .layout = MakeLayout(p, tk)};
  ASSERT_TRUE(cpu.IndexerTopk(a).ok());
  IndexerArgs bad = a;
  bad.q = nullptr;
  EXPECT_EQ(cpu.IndexerTopk(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = a;
  bad.k = 0;
  EXPECT_EQ(cpu.IndexerTopk(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = a;
  bad.k_stride = 3;
  EXPECT_EQ(cpu.IndexerTopk(bad).code(), absl::StatusCode::kInvalidArgument);
  Tokens far{{0}, {5000}};
  bad = a;
  bad.layout = MakeLayout(p, far);
  absl::Status st = cpu.IndexerTopk(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("token_pos[0] = 5000"), std::string::npos) << st;
  Tokens wrong_seq{{3}, {1}};
  bad = a;
  bad.layout = MakeLayout(p, wrong_seq);
  st = cpu.IndexerTopk(bad);
  EXPECT_NE(st.message().find("token_seq[0] = 3"), std::string::npos) << st;
  bad = a;
  bad.num_slots = 16;  // block table entries point past the cache
  st = cpu.IndexerTopk(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("block_tables"), std::string::npos) << st;
}

}  // namespace
}  // namespace ic::kernels::cpu
