// Sharding plans: zig-zag rows (coverage, balance), key/head/expert splits, and the decode top-k merge
// against a single-rank top-k written here independently (class-based comparator, full sort), on random
// scores with ties, NaN and ±inf. Ends with the two top-k paths run over 1, 2 and 4 in-process ranks.
#include "parallel/sharding.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/inprocess_communicator.h"
#include "parallel/multirank_test_util.h"
#include "parallel/sharded_topk.h"

namespace ic::parallel {
namespace {

using ::testing::HasSubstr;

// ---- zig-zag ----

TEST(ZigZagTest, CoversEveryRowExactlyOnceAndGathersBack) {
  for (int tp : {1, 2, 3, 4, 8}) {
    for (int64_t n = 0; n <= 600; ++n) {
      std::vector<int> seen(n, 0);
      int64_t max_rows = 0;
      for (int r = 0; r < tp; ++r) {
        auto split = ZigZagRows(n, tp, r);
        ASSERT_TRUE(split.ok()) << split.status();
        for (const RowRange& range : split->ranges) {
          ASSERT_LE(0, range.begin);
          ASSERT_LE(range.begin, range.end);
          ASSERT_LE(range.end, n);
          for (int64_t t = range.begin; t < range.end; ++t) ++seen[t];
        }
        max_rows = std::max(max_rows, split->num_rows());
        EXPECT_EQ(split->max_rows, ZigZagRows(n, tp, 0)->max_rows);
      }
      for (int64_t t = 0; t < n; ++t) ASSERT_EQ(seen[t], 1) << "n=" << n << " tp=" << tp << " row " << t;
      auto gathered = ZigZagGatheredRows(n, tp);
      ASSERT_TRUE(gathered.ok());
      ASSERT_EQ(static_cast<int64_t>(gathered->size()), tp * max_rows);
      std::vector<int> back(n, 0);
      for (int64_t row : *gathered) {
        if (row >= 0) ++back[row];
      }
      for (int64_t t = 0; t < n; ++t) ASSERT_EQ(back[t], 1);
    }
  }
}

TEST(ZigZagTest, ChunksAreIAndMirror) {
  auto s = ZigZagRows(80, 4, 1);  // 8 chunks of 10
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->ranges[0].begin, 10);
  EXPECT_EQ(s->ranges[0].end, 20);
  EXPECT_EQ(s->ranges[1].begin, 60);
  EXPECT_EQ(s->ranges[1].end, 70);
  EXPECT_EQ(s->max_rows, 20);
}

// The bound stated in sharding.h: heaviest − lightest causal work ≤ N keys (exactly 0 when 2·tp | N),
// while contiguous blocks are off by ≈ N²(tp − 1)/tp².
TEST(ZigZagTest, BalancesCausalWorkWithinTheStatedBound) {
  for (int tp : {1, 2, 3, 4, 8}) {
    for (int64_t n = 0; n <= 600; ++n) {
      int64_t lo = std::numeric_limits<int64_t>::max(), hi = 0, total = 0;
      for (int r = 0; r < tp; ++r) {
        const int64_t w = CausalWork(*ZigZagRows(n, tp, r));
        lo = std::min(lo, w);
        hi = std::max(hi, w);
        total += w;
      }
      ASSERT_EQ(total, n * (n + 1) / 2);
      ASSERT_LE(hi - lo, n) << "n=" << n << " tp=" << tp;
      if (n % (2 * tp) == 0) ASSERT_EQ(hi, lo) << "n=" << n << " tp=" << tp;
    }
  }
  // For contrast: contiguous halves of 1000 rows are off by 250,000 keys; zig-zag by 0.
  EXPECT_EQ(CausalWork(*ZigZagRows(1000, 2, 0)), CausalWork(*ZigZagRows(1000, 2, 1)));
}

TEST(ZigZagTest, RejectsBadArgumentsNamingThem) {
  EXPECT_THAT(std::string(ZigZagRows(-1, 2, 0).status().message()), HasSubstr("num_rows = -1"));
  EXPECT_THAT(std::string(ZigZagRows(10, 0, 0).status().message()), HasSubstr("tp_size = 0"));
  EXPECT_THAT(std::string(ZigZagRows(10, 2, 2).status().message()), HasSubstr("rank = 2"));
}

// ---- keys, heads, experts ----

TEST(DecodeKeyRangeTest, ContiguousCoverWithSizesWithinOne) {
  for (int tp : {1, 2, 3, 4}) {
    for (int64_t n = 0; n < 50; ++n) {
      int64_t next = 0, lo = n, hi = 0;
      for (int r = 0; r < tp; ++r) {
        auto range = DecodeKeyRange(n, tp, r);
        ASSERT_TRUE(range.ok());
        ASSERT_EQ(range->begin, next);
        next = range->end;
        lo = std::min(lo, range->size());
        hi = std::max(hi, range->size());
      }
      ASSERT_EQ(next, n);
      ASSERT_LE(hi - lo, 1);
    }
  }
}

TEST(HeadShardTest, QueryHeads) {
  auto s = QueryHeadShard(128, 8, 3);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->begin, 48);
  EXPECT_EQ(s->count, 16);
  EXPECT_FALSE(s->replicated);
  EXPECT_THAT(std::string(QueryHeadShard(12, 8, 0).status().message()),
              HasSubstr("tp_size 8 does not divide num_heads 12"));
}

TEST(HeadShardTest, KvHeadsSplitWhereTheyDivideElseReplicated) {
  auto split = KvHeadShard(32, 8, 4, 2);  // 8 KV heads over 4 ranks: 2 each
  ASSERT_TRUE(split.ok());
  EXPECT_EQ(split->begin, 4);
  EXPECT_EQ(split->count, 2);
  EXPECT_FALSE(split->replicated);
  for (int r = 0; r < 4; ++r) {  // 8 query heads, 2 KV heads, tp 4: ranks 0,1 → KV 0; ranks 2,3 → KV 1
    auto rep = KvHeadShard(8, 2, 4, r);
    ASSERT_TRUE(rep.ok());
    EXPECT_EQ(rep->begin, r / 2);
    EXPECT_EQ(rep->count, 1);
    EXPECT_TRUE(rep->replicated);
  }
  // Every query head of a rank finds its KV head among the rank's KV heads (GQA group = 4).
  for (int tp : {1, 2, 4, 8}) {
    for (int r = 0; r < tp; ++r) {
      auto q = *QueryHeadShard(24, tp == 8 ? 8 : tp, r);
      auto kv = *KvHeadShard(24, 6, tp == 8 ? 8 : tp, r);
      for (int h = q.begin; h < q.begin + q.count; ++h) {
        EXPECT_GE(h / 4, kv.begin);
        EXPECT_LT(h / 4, kv.begin + kv.count);
      }
    }
  }
  EXPECT_FALSE(KvHeadShard(32, 5, 4, 0).ok());
}

TEST(ExpertShardTest, ContiguousBlocksAndOwner) {
  for (int ep : {1, 8, 16, 32}) {
    std::vector<int> owner(256, -1);
    for (int r = 0; r < ep; ++r) {
      auto s = ExpertShard(256, ep, r);
      ASSERT_TRUE(s.ok());
      for (int e = s->begin; e < s->begin + s->count; ++e) {
        ASSERT_EQ(owner[e], -1);
        owner[e] = r;
      }
    }
    for (int e = 0; e < 256; ++e) ASSERT_EQ(ExpertOwner(e, 256, ep), owner[e]);
  }
  EXPECT_THAT(std::string(ExpertShard(256, 3, 0).status().message()),
              HasSubstr("ep_size 3 does not divide num_experts 256"));
  EXPECT_EQ(ExpertOwner(0, 256, 3), -1);
}

// ---- decode top-k merge ----

// DESIGN.md §3 order, written as classes rather than bit keys: +inf (3) > finite (2) > −inf (1) > NaN (0);
// equal scores (−0 == +0, two infinities or two NaNs alike) → smaller position first.
int Class(float v) {
  if (std::isnan(v)) return 0;
  if (std::isinf(v)) return v > 0 ? 3 : 1;
  return 2;
}

bool RefBetter(float a, int32_t pa, float b, int32_t pb) {
  if (Class(a) != Class(b)) return Class(a) > Class(b);
  if (Class(a) == 2 && a != b) return a > b;
  return pa < pb;
}

// Single-rank top-k of scores[positions]: positions ascending, then −1.
std::vector<int32_t> RefTopk(const std::vector<float>& scores, const std::vector<int32_t>& positions, int k) {
  std::vector<int32_t> order = positions;
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return RefBetter(scores[a], a, scores[b], b); });
  order.resize(std::min<size_t>(order.size(), k));
  std::sort(order.begin(), order.end());
  order.resize(k, -1);
  return order;
}

std::vector<float> RandomScores(std::mt19937& rng, int n) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float special[] = {inf, -inf, nan, -nan, 0.0f, -0.0f, 1.0f, 1.0f, -2.5f, 3.0f};
  std::uniform_int_distribution<int> pick(0, 9);
  std::uniform_int_distribution<int> coin(0, 2);
  std::normal_distribution<float> normal;
  std::vector<float> s(n);
  for (float& v : s) v = coin(rng) == 0 ? special[pick(rng)] : normal(rng);
  return s;
}

// Local candidates of one rank: its top-per_rank over keys [begin, end), −1 padded.
std::vector<TopkCandidate> LocalCandidates(const std::vector<float>& scores, RowRange keys, int per_rank) {
  std::vector<int32_t> pos;
  for (int64_t t = keys.begin; t < keys.end; ++t) pos.push_back(static_cast<int32_t>(t));
  std::vector<int32_t> top = RefTopk(scores, pos, per_rank);
  std::vector<TopkCandidate> c(per_rank, TopkCandidate{0.0f, -1});
  for (int j = 0; j < per_rank; ++j) {
    if (top[j] >= 0) c[j] = {scores[top[j]], top[j]};
  }
  // A rank's candidates need not be ordered: shuffle to prove the merge does not rely on it.
  std::reverse(c.begin(), c.end());
  return c;
}

TEST(MergeTopkTest, EqualsSingleRankTopkOnRandomScoresWithTiesNanAndInf) {
  std::mt19937 rng(20261129);
  for (int trial = 0; trial < 400; ++trial) {
    const int ranks = 1 + trial % 4 + (trial % 7 == 0 ? 4 : 0);
    const int n = std::uniform_int_distribution<int>(0, 300)(rng);
    const int k = std::uniform_int_distribution<int>(1, 64)(rng);
    const int rows = 1 + trial % 3;
    std::vector<std::vector<float>> scores(rows);
    std::vector<TopkCandidate> gathered(static_cast<size_t>(ranks) * rows * k);
    for (int row = 0; row < rows; ++row) {
      scores[row] = RandomScores(rng, n);
      for (int r = 0; r < ranks; ++r) {
        std::vector<TopkCandidate> c = LocalCandidates(scores[row], *DecodeKeyRange(n, ranks, r), k);
        std::copy(c.begin(), c.end(), gathered.begin() + (static_cast<size_t>(r) * rows + row) * k);
      }
    }
    std::vector<int32_t> out(static_cast<size_t>(rows) * k, 7);
    ASSERT_TRUE(MergeTopkCandidates(gathered, ranks, rows, k, k, absl::MakeSpan(out)).ok());
    for (int row = 0; row < rows; ++row) {
      std::vector<int32_t> all(n);
      for (int t = 0; t < n; ++t) all[t] = t;
      std::vector<int32_t> expect = RefTopk(scores[row], all, k);
      std::vector<int32_t> got(out.begin() + row * k, out.begin() + (row + 1) * k);
      ASSERT_EQ(got, expect) << "trial " << trial << " row " << row << " ranks " << ranks << " n " << n << " k " << k;
    }
  }
}

TEST(MergeTopkTest, TieRuleAndOrderOfSpecials) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(TopkBefore({inf, 9}, {1e30f, 0}));
  EXPECT_TRUE(TopkBefore({-1e30f, 9}, {-inf, 0}));
  EXPECT_TRUE(TopkBefore({-inf, 9}, {nan, 0}));
  EXPECT_TRUE(TopkBefore({1.0f, 3}, {1.0f, 4}));
  EXPECT_TRUE(TopkBefore({-0.0f, 3}, {0.0f, 4}));
  EXPECT_TRUE(TopkBefore({nan, 3}, {nan, 4}));
  // Two ranks, all scores tied: the k smallest positions win, whichever rank holds them.
  std::vector<TopkCandidate> c = {{1.0f, 5}, {1.0f, 6}, {1.0f, 0}, {1.0f, 7}};
  std::vector<int32_t> out(3);
  ASSERT_TRUE(MergeTopkCandidates(c, 2, 1, 2, 3, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, (std::vector<int32_t>{0, 5, 6}));
  // Fewer valid candidates than k: valid prefix, then −1.
  std::vector<TopkCandidate> few = {{2.0f, 1}, {0.0f, -1}, {nan, 0}, {0.0f, -1}};
  std::vector<int32_t> out4(4);
  ASSERT_TRUE(MergeTopkCandidates(few, 2, 1, 2, 4, absl::MakeSpan(out4)).ok());
  EXPECT_EQ(out4, (std::vector<int32_t>{0, 1, -1, -1}));
}

TEST(ShardedTopkArgsTest, RejectsBadShapes) {
  auto comms = *InProcessGroup::Create(1);
  std::vector<int32_t> idx_scratch, out(10 * 4);
  std::vector<int32_t> local(3);
  EXPECT_EQ(AllGatherZigZagIndices(*comms[0], 10, 4, local, absl::MakeSpan(out), idx_scratch).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<TopkCandidate> cand(3), cand_scratch;
  EXPECT_EQ(AllGatherMergeTopk(*comms[0], 2, 2, cand, absl::MakeSpan(out), cand_scratch).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comms[0]->stats()[Collective::kAllGather].calls, 0);
}

TEST(MergeTopkTest, RejectsBadShapesAndDuplicates) {
  std::vector<TopkCandidate> c = {{1.0f, 5}, {2.0f, 5}};
  std::vector<int32_t> out(2);
  absl::Status s = MergeTopkCandidates(c, 2, 1, 1, 2, absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("position 5"));
  EXPECT_EQ(MergeTopkCandidates(c, 3, 1, 1, 2, absl::MakeSpan(out)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MergeTopkCandidates(c, 2, 1, 1, 3, absl::MakeSpan(out)).code(), absl::StatusCode::kInvalidArgument);
}

// ---- both top-k paths over in-process ranks (sharded_topk.h) ----

class ShardedTopkTest : public ::testing::TestWithParam<int> {};

// Decode: keys split, local top-k, all-gather of candidates, merge — every rank holds bitwise-identical
// indices equal to the single-rank top-k.
TEST_P(ShardedTopkTest, DecodeKeySplitMergeIsExactAndIdenticalOnEveryRank) {
  const int tp = GetParam();
  auto comms = *InProcessGroup::Create(tp);
  std::mt19937 rng(7 + tp);
  const int k = 32, rows = 3;
  std::vector<int> lengths = {0, 20, 257};  // decode positions t + 1 = valid keys per row
  std::vector<std::vector<float>> scores;
  for (int row = 0; row < rows; ++row) scores.push_back(RandomScores(rng, lengths[row]));
  std::vector<std::vector<int32_t>> results(tp);
  testing::RunRanks(comms, [&](Communicator& c) {
    std::vector<TopkCandidate> mine(static_cast<size_t>(rows) * k);
    for (int row = 0; row < rows; ++row) {
      auto local = LocalCandidates(scores[row], *DecodeKeyRange(lengths[row], tp, c.rank()), k);
      std::copy(local.begin(), local.end(), mine.begin() + row * k);
    }
    std::vector<TopkCandidate> scratch;
    results[c.rank()].resize(static_cast<size_t>(rows) * k);
    ASSERT_TRUE(AllGatherMergeTopk(c, rows, k, mine, absl::MakeSpan(results[c.rank()]), scratch).ok());
    EXPECT_EQ(c.stats()[Collective::kAllGather].bytes_sent, static_cast<int64_t>(rows) * k * 8 * (tp - 1));
  });
  for (int r = 1; r < tp; ++r) {
    ASSERT_EQ(std::memcmp(results[r].data(), results[0].data(), results[0].size() * 4), 0) << "rank " << r;
  }
  for (int row = 0; row < rows; ++row) {
    std::vector<int32_t> all(lengths[row]);
    for (int t = 0; t < lengths[row]; ++t) all[t] = t;
    std::vector<int32_t> got(results[0].begin() + row * k, results[0].begin() + (row + 1) * k);
    EXPECT_EQ(got, RefTopk(scores[row], all, k)) << "row " << row;
  }
}

// Prefill: query rows split zig-zag, each rank selects its rows, all-gather of int32 indices, then the
// gathered slots map back to rows — every rank holds the single-rank result.
TEST_P(ShardedTopkTest, PrefillZigZagRowsGatherToTheSingleRankResult) {
  const int tp = GetParam();
  auto comms = *InProcessGroup::Create(tp);
  std::mt19937 rng(99 + tp);
  const int n = 101, k = 16;
  std::vector<std::vector<float>> scores;  // row t: scores of keys 0..t
  for (int t = 0; t < n; ++t) scores.push_back(RandomScores(rng, t + 1));
  auto row_topk = [&](int t) {
    std::vector<int32_t> pos(t + 1);
    for (int s = 0; s <= t; ++s) pos[s] = s;
    return RefTopk(scores[t], pos, k);
  };
  std::vector<std::vector<int32_t>> results(tp);
  testing::RunRanks(comms, [&](Communicator& c) {
    ZigZagSplit split = *ZigZagRows(n, tp, c.rank());
    std::vector<int32_t> mine(split.max_rows * k, -1);
    int64_t j = 0;
    for (const RowRange& range : split.ranges) {
      for (int64_t t = range.begin; t < range.end; ++t, ++j) {
        std::vector<int32_t> top = row_topk(static_cast<int>(t));
        std::copy(top.begin(), top.end(), mine.begin() + j * k);
      }
    }
    std::vector<int32_t>& out = results[c.rank()];
    out.assign(static_cast<size_t>(n) * k, -2);
    std::vector<int32_t> scratch;
    ASSERT_TRUE(AllGatherZigZagIndices(c, n, k, mine, absl::MakeSpan(out), scratch).ok());
    EXPECT_EQ(c.stats()[Collective::kAllGather].bytes_sent, split.max_rows * k * 4 * (tp - 1));
  });
  for (int r = 0; r < tp; ++r) {
    for (int t = 0; t < n; ++t) {
      std::vector<int32_t> got(results[r].begin() + t * k, results[r].begin() + (t + 1) * k);
      ASSERT_EQ(got, row_topk(t)) << "rank " << r << " row " << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, ShardedTopkTest, ::testing::Values(1, 2, 4),
                         [](const ::testing::TestParamInfo<int>& info) { return absl::StrCat(info.param, "ranks"); });

}  // namespace
}  // namespace ic::parallel
