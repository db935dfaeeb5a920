// Tests of the CPU Topk op: the DESIGN.md §3 rule (ties → smaller position; +inf > finite > −inf > NaN;
// short rows) and cases C1–C4 of shared/cases/README.md, against an independent full-sort reference.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"

namespace ic::kernels::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Rank of a score class in the §3 order: NaN 0, −inf 1, finite 2, +inf 3.
int ClassOf(float v) {
  if (std::isnan(v)) return 0;
  if (v == -kInf) return 1;
  if (v == kInf) return 3;
  return 2;
}

// Reference: stable full sort by (class desc, value desc, position asc); first min(k, len), sorted.
std::vector<int32_t> ReferenceTopk(const float* s, int len, int k) {
  std::vector<int32_t> idx(len);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
    if (ClassOf(s[a]) != ClassOf(s[b])) return ClassOf(s[a]) > ClassOf(s[b]);
    if (ClassOf(s[a]) == 2 && s[a] != s[b]) return s[a] > s[b];
    return false;  // stable: smaller position first
  });
  idx.resize(std::min(k, len));
  std::sort(idx.begin(), idx.end());
  return idx;
}

std::vector<int32_t> RunTopk(const std::vector<float>& scores, int len, int k) {
  CpuBackend cpu;
  std::vector<int32_t> out(k, 12345);
  const int32_t lengths[1] = {len};
  TopkArgs a{.out = out.data(), .scores = scores.data(), .lengths = lengths, .rows = 1,
             .stride = static_cast<int>(scores.size()), .k = k};
  EXPECT_TRUE(cpu.Topk(a).ok());
  return out;
}

// Valid prefix (asserting no −1 inside it and only −1 after it), sorted.
std::vector<int32_t> ValidSorted(const std::vector<int32_t>& row, int expected_valid) {
  for (int i = 0; i < static_cast<int>(row.size()); ++i) {
    if (i < expected_valid) {
      EXPECT_GE(row[i], 0) << "slot " << i;
    } else {
      EXPECT_EQ(row[i], -1) << "slot " << i;
    }
  }
  std::vector<int32_t> v(row.begin(), row.begin() + std::min<size_t>(expected_valid, row.size()));
  std::sort(v.begin(), v.end());
  return v;
}

TEST(CpuTopk, CaseC1Plateau) {
  std::mt19937 rng(1);
  const int len = 8320, k = 2048;
  std::vector<float> s(len, 0.0f);
  std::vector<int32_t> perm(len);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  std::set<int32_t> expected;
  for (int i = 0; i < 100; ++i) {
    s[perm[i]] = u(rng);
    expected.insert(perm[i]);
  }
  for (int p = 0; static_cast<int>(expected.size()) < k; ++p) expected.insert(p);  // smallest zero positions
  // Some plateau zeros are −0 (w < 0 times ReLU 0): they tie with +0.
  for (int p = 1; p < len; p += 7) {
    if (s[p] == 0.0f) s[p] = -0.0f;
  }
  const std::vector<int32_t> got = ValidSorted(RunTopk(s, len, k), k);
  EXPECT_EQ(got, std::vector<int32_t>(expected.begin(), expected.end()));
}

TEST(CpuTopk, CaseC2ShortContext) {
  std::mt19937 rng(2);
  std::vector<float> s(300);
  for (float& x : s) x = std::uniform_real_distribution<float>(-5, 5)(rng);
  const std::vector<int32_t> out = RunTopk(s, 300, 2048);
  std::vector<int32_t> expected(300);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(ValidSorted(out, 300), expected);
  EXPECT_EQ(std::count(out.begin(), out.end(), -1), 1748);
}

TEST(CpuTopk, CaseC3BigTieBucket) {
  std::mt19937 rng(3);
  const int len = 65536, k = 2048;
  std::vector<int32_t> perm(len);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<float> s(len);
  std::vector<int32_t> ones, high;
  for (int i = 0; i < len; ++i) {
    const int p = perm[i];
    if (i < 60000) {
      s[p] = std::uniform_real_distribution<float>(-1.0f, 0.9f)(rng);
    } else if (i < 65000) {
      s[p] = 1.0f;
      ones.push_back(p);
    } else {
      s[p] = std::uniform_real_distribution<float>(1.1f, 2.0f)(rng);
      high.push_back(p);
    }
  }
  std::sort(ones.begin(), ones.end());
  std::vector<int32_t> expected = high;
  expected.insert(expected.end(), ones.begin(), ones.begin() + 1512);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(ValidSorted(RunTopk(s, len, k), k), expected);
}

TEST(CpuTopk, CaseC4NanAndInf) {
  std::mt19937 rng(4);
  const int len = 4096, k = 16;
  std::vector<float> s(len);
  for (float& x : s) x = std::uniform_real_distribution<float>(-3, 3)(rng);
  s[7] = kInf;
  for (int p = 100; p < 200; ++p) s[p] = kNaN;
  const std::vector<int32_t> got = ValidSorted(RunTopk(s, len, k), k);
  EXPECT_TRUE(std::binary_search(got.begin(), got.end(), 7));
  for (int32_t p : got) EXPECT_FALSE(p >= 100 && p < 200) << "NaN key " << p << " selected";
  EXPECT_EQ(got, ReferenceTopk(s.data(), len, k));
}

TEST(CpuTopk, NanSelectedOnlyWhenFiniteKeysRunOut) {
  // 10 keys: 3 finite, 1 −inf, 6 NaN; k = 6 → the 3 finite, −inf, then the 2 NaN with smallest positions.
  std::vector<float> s = {kNaN, 1.0f, kNaN, -kInf, 2.0f, kNaN, kNaN, -1.0f, kNaN, kNaN};
  const std::vector<int32_t> got = ValidSorted(RunTopk(s, 10, 6), 6);
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 2, 3, 4, 7}));
}

TEST(CpuTopk, RandomRowsWithTiesMatchReference) {
  std::mt19937 rng(5);
  CpuBackend cpu;
  const int rows = 37, stride = 1000;
  for (int k : {1, 5, 64, 999, 1000, 1500}) {
    std::vector<float> s(rows * stride);
    std::vector<int32_t> lengths(rows);
    for (int r = 0; r < rows; ++r) {
      lengths[r] = std::uniform_int_distribution<int>(0, stride)(rng);
      for (int i = 0; i < stride; ++i) {
        const int c = std::uniform_int_distribution<int>(0, 40)(rng);  // many ties, some specials
        s[r * stride + i] = c == 0 ? kNaN : c == 1 ? kInf : c == 2 ? -kInf : static_cast<float>(c % 9) * 0.25f;
      }
    }
    std::vector<int32_t> out(rows * k, 777);
    TopkArgs a{.out = out.data(), .scores = s.data(), .lengths = lengths.data(), .rows = rows, .stride = stride, .k = k};
    ASSERT_TRUE(cpu.Topk(a).ok());
    for (int r = 0; r < rows; ++r) {
      std::vector<int32_t> row(out.begin() + r * k, out.begin() + (r + 1) * k);
      EXPECT_EQ(ValidSorted(row, std::min(k, lengths[r])), ReferenceTopk(s.data() + r * stride, lengths[r], k))
          << "k " << k << " row " << r;
    }
  }
}

TEST(CpuTopk, RejectsBadArguments) {
  CpuBackend cpu;
  std::vector<float> s(10, 0.0f);
  std::vector<int32_t> out(4);
  int32_t len = 11;
  TopkArgs a{.out = out.data(), .scores = s.data(), .lengths = &len, .rows = 1, .stride = 10, .k = 4};
  absl::Status st = cpu.Topk(a);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("lengths[0] = 11"), std::string::npos) << st;
  len = 5;
  a.k = -1;
  EXPECT_EQ(cpu.Topk(a).code(), absl::StatusCode::kInvalidArgument);
  a.k = 4;
  a.out = nullptr;
  st = cpu.Topk(a);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("out"), std::string::npos);
  a.out = out.data();
  a.lengths = nullptr;
  EXPECT_EQ(cpu.Topk(a).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ic::kernels::cpu
