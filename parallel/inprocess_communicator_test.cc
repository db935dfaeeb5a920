// In-process Communicator with 1, 2 and 4 ranks: every collective against values computed here
// independently, byte counting, deadlines (a rank that never arrives), Abort, destruction, mismatches,
// Split. The only timing assertion is the hang bound: an error arrives within timeout + slack.
#include "parallel/inprocess_communicator.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/multirank_test_util.h"

namespace ic::parallel {
namespace {

using ::ic::parallel::testing::RunRanks;
using ::testing::HasSubstr;

// Exactly representable values (multiples of 1/4 below 2^10): sums of up to 4 are exact in any order.
float Value(int rank, size_t i) {
  return static_cast<float>((rank * 7919 + static_cast<int>(i) * 31) % 1000) * 0.25f - 100.0f;
}

uint8_t Byte(int from, int to, size_t j) { return static_cast<uint8_t>(from * 31 + to * 7 + j * 13 + 1); }

std::vector<std::unique_ptr<Communicator>> Group(int world, absl::Duration timeout = absl::Seconds(60)) {
  CommunicatorOptions opt;
  opt.timeout = timeout;
  auto comms = InProcessGroup::Create(world, opt);
  EXPECT_TRUE(comms.ok()) << comms.status();
  return *std::move(comms);
}

class CollectivesTest : public ::testing::TestWithParam<int> {};

TEST_P(CollectivesTest, AllGather) {
  const int world = GetParam();
  auto comms = Group(world);
  for (size_t n : {size_t{0}, size_t{1}, size_t{37}, size_t{1000}}) {
    RunRanks(comms, [&](Communicator& c) {
      std::vector<float> mine(n), all(n * world, -1.0f);
      for (size_t i = 0; i < n; ++i) mine[i] = Value(c.rank(), i);
      ASSERT_TRUE(c.AllGather(mine.data(), all.data(), n * sizeof(float)).ok());
      for (int q = 0; q < world; ++q) {
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(all[q * n + i], Value(q, i)) << "q=" << q << " i=" << i;
      }
      // In place: my piece already sits at my slot.
      std::vector<float> inplace(n * world, -1.0f);
      if (n > 0) std::memcpy(inplace.data() + c.rank() * n, mine.data(), n * sizeof(float));
      ASSERT_TRUE(c.AllGather(inplace.data() + c.rank() * n, inplace.data(), n * sizeof(float)).ok());
      ASSERT_EQ(inplace, all);
    });
  }
}

TEST_P(CollectivesTest, AllReduceSum) {
  const int world = GetParam();
  auto comms = Group(world);
  std::vector<std::vector<float>> results(world);
  RunRanks(comms, [&](Communicator& c) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{1001}}) {
      std::vector<float> x(n), y(n, 0.0f);
      for (size_t i = 0; i < n; ++i) x[i] = Value(c.rank(), i);
      ASSERT_TRUE(c.AllReduceSum(x.data(), y.data(), n).ok());
      for (size_t i = 0; i < n; ++i) {
        float expect = 0.0f;
        for (int q = 0; q < world; ++q) expect += Value(q, i);
        ASSERT_EQ(y[i], expect) << "i=" << i;
      }
      ASSERT_TRUE(c.AllReduceSum(x.data(), x.data(), n).ok());  // in place
      ASSERT_EQ(x, y);
    }
    // Inexact values: every rank gets the same bits (rank-order sum).
    std::mt19937 rng(1234 + c.rank());
    std::normal_distribution<float> normal;
    std::vector<float> x(4096);
    for (float& v : x) v = normal(rng);
    results[c.rank()].resize(x.size());
    ASSERT_TRUE(c.AllReduceSum(x.data(), results[c.rank()].data(), x.size()).ok());
  });
  for (int q = 1; q < world; ++q) {
    ASSERT_EQ(std::memcmp(results[q].data(), results[0].data(), results[0].size() * sizeof(float)), 0) << "rank " << q;
  }
}

TEST_P(CollectivesTest, ReduceScatterSum) {
  const int world = GetParam();
  auto comms = Group(world);
  for (size_t n : {size_t{0}, size_t{1}, size_t{250}}) {
    RunRanks(comms, [&](Communicator& c) {
      std::vector<float> x(n * world), y(n, 0.0f);
      for (size_t i = 0; i < x.size(); ++i) x[i] = Value(c.rank(), i);
      ASSERT_TRUE(c.ReduceScatterSum(x.data(), y.data(), n).ok());
      for (size_t i = 0; i < n; ++i) {
        float expect = 0.0f;
        for (int q = 0; q < world; ++q) expect += Value(q, c.rank() * n + i);
        ASSERT_EQ(y[i], expect);
      }
    });
  }
}

TEST_P(CollectivesTest, Broadcast) {
  const int world = GetParam();
  auto comms = Group(world);
  for (int root = 0; root < world; ++root) {
    RunRanks(comms, [&](Communicator& c) {
      const size_t n = 333;
      std::vector<uint8_t> buf(n);
      for (size_t j = 0; j < n; ++j) buf[j] = c.rank() == root ? Byte(root, 0, j) : 0;
      ASSERT_TRUE(c.Broadcast(buf.data(), buf.data(), n, root).ok());  // in place
      for (size_t j = 0; j < n; ++j) ASSERT_EQ(buf[j], Byte(root, 0, j));
      std::vector<uint8_t> out(n, 0);
      ASSERT_TRUE(c.Broadcast(c.rank() == root ? buf.data() : nullptr, out.data(), n, root).ok());
      ASSERT_EQ(out, buf);
    });
  }
}

// Bytes rank `from` sends to rank `to` (zero for some pairs, self included).
size_t Count(int from, int to) { return static_cast<size_t>((from + 1) * (to + 2) * 5 % 11); }

TEST_P(CollectivesTest, AllToAllV) {
  const int world = GetParam();
  auto comms = Group(world);
  RunRanks(comms, [&](Communicator& c) {
    const int r = c.rank();
    std::vector<size_t> sc(world), so(world), rc(world), ro(world);
    size_t at = 3;  // gaps before and between pieces: offsets need not be packed
    for (int p = 0; p < world; ++p) {
      sc[p] = Count(r, p);
      so[p] = at;
      at += sc[p] + 2;
    }
    std::vector<uint8_t> send(at, 0xEE);
    for (int p = 0; p < world; ++p) {
      for (size_t j = 0; j < sc[p]; ++j) send[so[p] + j] = Byte(r, p, j);
    }
    at = 1;
    for (int p = world - 1; p >= 0; --p) {  // reversed placement on the receive side
      rc[p] = Count(p, r);
      ro[p] = at;
      at += rc[p] + 1;
    }
    std::vector<uint8_t> recv(at, 0xAA);
    ASSERT_TRUE(c.AllToAllV(send.data(), sc, so, recv.data(), rc, ro).ok());
    std::vector<uint8_t> expect(at, 0xAA);
    for (int p = 0; p < world; ++p) {
      for (size_t j = 0; j < rc[p]; ++j) expect[ro[p] + j] = Byte(p, r, j);
    }
    ASSERT_EQ(recv, expect);
    int64_t sent = 0;
    for (int p = 0; p < world; ++p) sent += p == r ? 0 : static_cast<int64_t>(sc[p]);
    EXPECT_EQ(c.stats()[Collective::kAllToAllV].bytes_sent, sent);
  });
}

TEST_P(CollectivesTest, ByteCounting) {
  const int world = GetParam();
  auto comms = Group(world);
  RunRanks(comms, [&](Communicator& c) {
    const int64_t n = world;
    std::vector<float> a(64 * world, 1.0f), b(64 * world);
    ASSERT_TRUE(c.AllGather(a.data(), b.data(), 40).ok());
    ASSERT_TRUE(c.AllGather(a.data(), b.data(), 24).ok());
    ASSERT_TRUE(c.AllReduceSum(a.data(), b.data(), 64).ok());
    ASSERT_TRUE(c.ReduceScatterSum(a.data(), b.data(), 16).ok());
    ASSERT_TRUE(c.Broadcast(a.data(), b.data(), 100, world - 1).ok());
    ASSERT_TRUE(c.Barrier().ok());
    const CommunicatorStats& s = c.stats();
    EXPECT_EQ(s[Collective::kAllGather].calls, 2);
    EXPECT_EQ(s[Collective::kAllGather].bytes_sent, (40 + 24) * (n - 1));
    EXPECT_EQ(s[Collective::kAllReduce].bytes_sent, 2 * 64 * 4 * (n - 1) / n);
    EXPECT_EQ(s[Collective::kReduceScatter].bytes_sent, 16 * 4 * (n - 1));
    EXPECT_EQ(s[Collective::kBroadcast].bytes_sent, c.rank() == world - 1 ? 100 * (n - 1) : 0);
    EXPECT_EQ(s[Collective::kBarrier].calls, 1);
    EXPECT_EQ(s[Collective::kBarrier].bytes_sent, 0);
    EXPECT_EQ(s[Collective::kAllToAllV].calls, 0);
    EXPECT_EQ(s.total_bytes_sent(),
              s[Collective::kAllGather].bytes_sent + s[Collective::kAllReduce].bytes_sent +
                  s[Collective::kReduceScatter].bytes_sent + s[Collective::kBroadcast].bytes_sent);
    for (const CollectiveStats& k : s.per_kind) EXPECT_EQ(k.errors, 0);
    if (world == 1) EXPECT_EQ(s.total_bytes_sent(), 0);
    c.ResetStats();
    EXPECT_EQ(c.stats()[Collective::kAllGather].calls, 0);
  });
}

TEST_P(CollectivesTest, SplitByParityWithReversedKeys) {
  const int world = GetParam();
  auto comms = Group(world);
  RunRanks(comms, [&](Communicator& c) {
    auto child = c.Split(c.rank() % 2, -c.rank());
    ASSERT_TRUE(child.ok()) << child.status();
    ASSERT_NE(*child, nullptr);
    std::vector<int> members;
    for (int q = world - 1; q >= 0; --q) {
      if (q % 2 == c.rank() % 2) members.push_back(q);  // key −rank: larger world rank first
    }
    ASSERT_EQ((*child)->size(), static_cast<int>(members.size()));
    ASSERT_EQ(members[(*child)->rank()], c.rank());
    float x = static_cast<float>(c.rank()), sum = 0.0f;
    ASSERT_TRUE((*child)->AllReduceSum(&x, &sum, 1).ok());
    float expect = 0.0f;
    for (int q : members) expect += static_cast<float>(q);
    EXPECT_EQ(sum, expect);
    // The parent still works after the split, and a negative color gets no communicator.
    auto none = c.Split(-1, 0);
    ASSERT_TRUE(none.ok());
    EXPECT_EQ(*none, nullptr);
    EXPECT_TRUE(c.Barrier().ok());
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, CollectivesTest, ::testing::Values(1, 2, 4),
                         [](const ::testing::TestParamInfo<int>& info) { return absl::StrCat(info.param, "ranks"); });

// ---- failures ----

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

constexpr double kSlackSeconds = 10.0;  // generous: only a hang should trip it

TEST(InProcessFailureTest, RankThatNeverArrivesGivesDeadlineExceededNamingIt) {
  for (int world : {2, 4}) {
    const absl::Duration timeout = absl::Milliseconds(200);
    auto comms = Group(world, timeout);
    const int missing = world - 1;
    RunRanks(comms, [&](Communicator& c) {
      if (c.rank() == missing) return;  // never arrives
      std::vector<int32_t> mine(8, c.rank()), all(8 * world);
      const auto start = std::chrono::steady_clock::now();
      absl::Status s = c.AllGather(mine.data(), all.data(), mine.size() * sizeof(int32_t));
      EXPECT_LT(Seconds(start), absl::ToDoubleSeconds(timeout) + kSlackSeconds);
      EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
      EXPECT_THAT(std::string(s.message()), HasSubstr("AllGather"));
      EXPECT_THAT(std::string(s.message()),
                  HasSubstr(absl::StrCat("missing ranks (never entered the call): ", missing)));
      EXPECT_EQ(c.stats()[Collective::kAllGather].errors, 1);
      EXPECT_EQ(c.stats()[Collective::kAllGather].bytes_sent, 0);
    });
    // The group is broken: the late rank and every later call fail fast.
    absl::Status late = comms[missing]->Barrier();
    EXPECT_EQ(late.code(), absl::StatusCode::kFailedPrecondition) << late;
    EXPECT_THAT(std::string(late.message()), HasSubstr("broken"));
    EXPECT_EQ(comms[0]->Barrier().code(), absl::StatusCode::kFailedPrecondition);
  }
}

TEST(InProcessFailureTest, MissingRanksListsEveryAbsentRank) {
  auto comms = Group(4, absl::Milliseconds(100));
  RunRanks(comms, [&](Communicator& c) {
    if (c.rank() != 1) return;
    float x = 1.0f;
    absl::Status s = c.AllReduceSum(&x, &x, 1);
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
    EXPECT_THAT(std::string(s.message()), HasSubstr("missing ranks (never entered the call): 0, 2, 3"));
  });
}

// Rank 2 aborts once its peers are about to wait in a barrier. A peer already waiting wakes with Aborted; one
// that a loaded machine delayed past the abort finds the communicator broken (FailedPrecondition) — both
// name rank 2, long before the deadline, and at least one peer must have been woken.
TEST(InProcessFailureTest, AbortWakesThePeersWithAbortedNamingTheRank) {
  const absl::Duration timeout = absl::Seconds(30);
  auto comms = Group(4, timeout);
  std::atomic<int> arriving{0}, woken{0};
  RunRanks(comms, [&](Communicator& c) {
    if (c.rank() == 2) {
      while (arriving.load() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      c.Abort();
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    ++arriving;
    absl::Status s = c.Barrier();
    EXPECT_LT(Seconds(start), absl::ToDoubleSeconds(timeout));  // long before the deadline
    EXPECT_THAT(s.code(), ::testing::AnyOf(absl::StatusCode::kAborted, absl::StatusCode::kFailedPrecondition)) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("rank 2 aborted"));
    if (s.code() == absl::StatusCode::kAborted) {
      ++woken;
      EXPECT_THAT(std::string(s.message()), HasSubstr("Barrier"));
    }
  });
  EXPECT_GE(woken.load(), 1);
}

TEST(InProcessFailureTest, DestroyedRankMidCollectiveFailsThePeers) {
  const absl::Duration timeout = absl::Seconds(30);
  auto comms = Group(2, timeout);
  std::atomic<bool> entered{false};
  testing::RunThreads(2, [&](int r) {
    if (r == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      comms[1].reset();  // rank 1 goes away while rank 0 waits
      return;
    }
    entered = true;
    std::vector<float> x(10, 1.0f);
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = comms[0]->AllReduceSum(x.data(), x.data(), x.size());
    EXPECT_LT(Seconds(start), absl::ToDoubleSeconds(timeout));
    EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("rank 1 left the group"));
    EXPECT_EQ(x[0], 1.0f);  // output untouched on error
  });
  EXPECT_TRUE(entered);
}

TEST(InProcessFailureTest, MismatchedCollectivesAreInvalidArgumentOnEveryRank) {
  auto comms = Group(2, absl::Seconds(30));
  RunRanks(comms, [&](Communicator& c) {
    std::vector<char> a(16), b(32);
    absl::Status s = c.AllGather(a.data(), b.data(), c.rank() == 0 ? 4 : 8);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("mismatched"));
  });
  auto comms2 = Group(2, absl::Seconds(30));
  RunRanks(comms2, [&](Communicator& c) {
    float x = 0;
    absl::Status s = c.rank() == 0 ? c.Barrier() : c.AllReduceSum(&x, &x, 1);
    EXPECT_FALSE(s.ok());
    EXPECT_THAT(std::string(s.message()), HasSubstr("called"));
  });
}

TEST(InProcessFailureTest, AllToAllVCountMismatchIsInvalidArgument) {
  auto comms = Group(2, absl::Seconds(30));
  RunRanks(comms, [&](Communicator& c) {
    std::vector<char> send(8), recv(8);
    std::vector<size_t> sc{2, 2}, so{0, 2}, rc{2, c.rank() == 0 ? size_t{3} : size_t{2}}, ro{0, 4};
    absl::Status s = c.AllToAllV(send.data(), sc, so, recv.data(), rc, ro);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  });
}

TEST(InProcessArgumentTest, BadArgumentsAreRejectedBeforeAnyCommunication) {
  auto comms = Group(1);
  Communicator& c = *comms[0];
  EXPECT_EQ(InProcessGroup::Create(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.set_timeout(absl::ZeroDuration()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(c.set_timeout(absl::Seconds(5)).ok());
  EXPECT_EQ(c.timeout(), absl::Seconds(5));
  char buf[8];
  EXPECT_EQ(c.Broadcast(buf, buf, 8, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.AllGather(nullptr, buf, 8).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.AllReduceSum(nullptr, nullptr, 3).code(), absl::StatusCode::kInvalidArgument);
  std::vector<size_t> one{1}, two{1, 1}, zero{0};
  absl::Status s = c.AllToAllV(buf, two, two, buf + 4, one, zero);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("size() = 1"));
  EXPECT_EQ(c.AllToAllV(buf, one, zero, buf, one, zero).code(), absl::StatusCode::kInvalidArgument);  // overlap
  EXPECT_TRUE(c.Barrier().ok());  // argument errors do not break the communicator
  EXPECT_STREQ(c.backend_name(), "inprocess");
}

}  // namespace
TEST(FormatRankListTest, RunsAndLongListsStayShort) {
  EXPECT_EQ(FormatRankList({}), "none");
  EXPECT_EQ(FormatRankList({0, 2, 3}), "0, 2, 3");
  EXPECT_EQ(FormatRankList({1, 2, 3, 4, 9}), "1-4, 9");
  std::vector<int> many;
  for (int r = 1; r < 65536; ++r) many.push_back(r);
  EXPECT_EQ(FormatRankList(many), "1-65535");
  std::vector<int> odd;
  for (int r = 1; r < 100; r += 2) odd.push_back(r);
  EXPECT_EQ(FormatRankList(odd), "1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, … (50 ranks in all)");
}

}  // namespace ic::parallel
