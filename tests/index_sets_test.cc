// Tests of the margin-aware index-set comparison (DESIGN.md §3): it accepts sets that differ only at
// the k-th score's margin and rejects everything else (wrong members, malformed rows).
#include "tests/index_sets.h"

#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace ic::test {
namespace {

// One row, 8 valid keys, k = 4. Scores: positions 0..7.
const std::vector<float> kScores = {0.1f, 5.0f, 3.0f, 2.0f, 2.0f + 1e-6f, 4.0f, 0.0f, -1.0f};
// Top-4: 1 (5.0), 5 (4.0), 2 (3.0), then 4 (2.000001) just above 3 (2.0): the k-th score is ~2.0.
const int32_t kLen[1] = {8};

TEST(IndexSets, EqualSetsInAnyOrderPass) {
  const std::vector<int32_t> a = {1, 5, 2, 4}, b = {4, 2, 5, 1};
  EXPECT_TRUE(IndexSetsMarginEqual(a.data(), b.data(), 1, 4, kScores.data(), 8, kLen, 1e-5f));
}

TEST(IndexSets, DifferenceAtTheMarginPasses) {
  const std::vector<int32_t> a = {1, 5, 2, 4}, b = {1, 5, 2, 3};  // 3 vs 4: 1e-6 apart, kth ≈ 2
  EXPECT_TRUE(IndexSetsMarginEqual(a.data(), b.data(), 1, 4, kScores.data(), 8, kLen, 1e-5f));
  // …but not with a margin tighter than their difference (1e-6 / 2 = 5e-7 relative).
  EXPECT_FALSE(IndexSetsMarginEqual(a.data(), b.data(), 1, 4, kScores.data(), 8, kLen, 1e-7f));
}

TEST(IndexSets, DifferenceAwayFromTheMarginFails) {
  const std::vector<int32_t> a = {1, 5, 2, 4}, b = {1, 5, 0, 4};  // 0.1 instead of 3.0
  const ::testing::AssertionResult r = IndexSetsMarginEqual(a.data(), b.data(), 1, 4, kScores.data(), 8, kLen, 1e-5f);
  EXPECT_FALSE(r);
  EXPECT_NE(std::string(r.message()).find("position"), std::string::npos) << r.message();
}

TEST(IndexSets, MalformedRowsFail) {
  const std::vector<int32_t> good = {1, 5, 2, 4};
  const std::vector<std::vector<int32_t>> bad = {
      {1, 5, -1, 4},  // −1 inside the valid prefix
      {1, 5, 5, 4},   // duplicate
      {1, 5, 2, 9},   // position ≥ valid_len
      {1, 5, 2, -1},  // too few valid entries
  };
  for (const auto& b : bad) {
    EXPECT_FALSE(IndexSetsMarginEqual(good.data(), b.data(), 1, 4, kScores.data(), 8, kLen, 1e-5f));
    EXPECT_FALSE(IndexSetsMarginEqual(b.data(), good.data(), 1, 4, kScores.data(), 8, kLen, 1e-5f));
    EXPECT_FALSE(IndexSetsWellFormed(b.data(), 1, 4, kLen));
  }
  EXPECT_TRUE(IndexSetsWellFormed(good.data(), 1, 4, kLen));
}

TEST(IndexSets, ShortRowsNeedEveryPositionThenMinusOne) {
  const int32_t len[2] = {3, 8};
  std::vector<float> scores(16, 1.0f);  // all tied: any 4 of row 1 are margin-equal
  const std::vector<int32_t> a = {2, 0, 1, -1, 0, 1, 2, 3}, b = {0, 1, 2, -1, 7, 6, 5, 4};
  EXPECT_TRUE(IndexSetsMarginEqual(a.data(), b.data(), 2, 4, scores.data(), 8, len, 1e-5f));
  const std::vector<int32_t> c = {0, 1, -1, -1, 0, 1, 2, 3};  // row 0 misses position 2
  EXPECT_FALSE(IndexSetsMarginEqual(a.data(), c.data(), 2, 4, scores.data(), 8, len, 1e-5f));
}

TEST(IndexSets, InfinityAndNanAtTheBoundary) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> s = {inf, inf, inf, 1.0f, nan, nan};
  const int32_t len[1] = {6};
  const std::vector<int32_t> a = {0, 1}, b = {1, 2};  // the k-th score is +inf: ties among +inf are fine
  EXPECT_TRUE(IndexSetsMarginEqual(a.data(), b.data(), 1, 2, s.data(), 6, len, 1e-5f));
  const std::vector<int32_t> c = {0, 3};  // 1.0 is not within any margin of +inf
  EXPECT_FALSE(IndexSetsMarginEqual(a.data(), c.data(), 1, 2, s.data(), 6, len, 1e-5f));
  const std::vector<int32_t> d = {0, 1, 2, 3, 4}, e = {0, 1, 2, 3, 5};  // k-th is NaN: NaNs interchangeable
  EXPECT_TRUE(IndexSetsMarginEqual(d.data(), e.data(), 1, 5, s.data(), 6, len, 1e-5f));
}

TEST(IndexSets, SortedValidAndRecall) {
  const std::vector<int32_t> row = {7, 3, 5, -1, -1};
  EXPECT_EQ(SortedValid(row.data(), 5), (std::vector<int32_t>{3, 5, 7}));
  const std::vector<int32_t> got = {1, 2, 3, 4, 9, 8, -1, -1}, ref = {4, 3, 2, 1, 8, 7, 6, -1};
  EXPECT_DOUBLE_EQ(MeanRecall(got.data(), ref.data(), 2, 4), (1.0 + 1.0 / 3.0) / 2.0);
}

}  // namespace
}  // namespace ic::test
