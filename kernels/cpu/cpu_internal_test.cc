// Tests of the CPU backend's internal helpers: ParallelFor coverage (every index exactly once, nested
// calls inline), the vectorised exp against std::exp, and the top-k sort key's total order.
#include "kernels/cpu/cpu_internal.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace ic::kernels::cpu::internal {
namespace {

TEST(CpuInternal, ParallelForCoversEveryIndexOnce) {
  for (int64_t n : {0, 1, 7, 1000, 100003}) {
    std::vector<std::atomic<int>> hits(n);
    ParallelFor(n, 3, [&](int64_t b, int64_t e) {
      ASSERT_LE(0, b);
      ASSERT_LE(e, n);
      for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
      ParallelFor(5, 1, [&](int64_t, int64_t) {});  // nested: runs inline, must not deadlock
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n " << n << " i " << i;
  }
  EXPECT_GE(NumThreads(), 1);
}

// Several caller threads (e.g. ranks of the in-process communicator) share the pool: a caller that finds
// it busy runs its loop inline; every loop still covers its range exactly once.
TEST(CpuInternal, ParallelForFromConcurrentCallers) {
  std::vector<std::thread> callers;
  std::atomic<int> failures{0};
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&failures] {
      for (int rep = 0; rep < 200; ++rep) {
        std::vector<std::atomic<int>> hits(997);
        ParallelFor(997, 10, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
        for (auto& h : hits) {
          if (h.load() != 1) failures.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(CpuInternal, VectorExpMatchesStdExp) {
  double worst = 0.0;
  for (float x = -87.0f; x <= 0.0f; x += 0.0137f) {
    const double want = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(ExpScalar(x) - want) / want);
  }
  EXPECT_LE(worst, 3e-7);
  std::vector<float> v = {0.0f, -1.0f, -2.0f, -3.0f, -100.0f, -std::numeric_limits<float>::infinity(), 1.0f};
  const double sum = ExpShiftSum(v.data(), static_cast<int>(v.size()), 1.0f);
  EXPECT_NEAR(v[0], std::exp(-1.0), 1e-7);
  EXPECT_NEAR(v[3], std::exp(-4.0), 1e-8);
  EXPECT_LE(v[4], 1e-37f);
  EXPECT_LE(v[5], 1e-37f);
  EXPECT_NEAR(v[6], 1.0, 1e-7);
  EXPECT_NEAR(sum, std::exp(-1.0) + std::exp(-2.0) + std::exp(-3.0) + std::exp(-4.0) + 1.0, 1e-6);
  EXPECT_TRUE(std::isnan(ExpScalar(std::numeric_limits<float>::quiet_NaN())));
}

TEST(CpuInternal, TopkSortKeyTotalOrder) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> ascending = {std::numeric_limits<float>::quiet_NaN(), -inf, -1e30f, -1.0f, -1e-40f,
                                        0.0f, 1e-40f, 1.0f, 1e30f, inf};
  for (size_t i = 1; i < ascending.size(); ++i) {
    EXPECT_LT(TopkSortKey(ascending[i - 1]), TopkSortKey(ascending[i])) << i;
  }
  EXPECT_EQ(TopkSortKey(-0.0f), TopkSortKey(0.0f));
  EXPECT_EQ(TopkSortKey(-std::numeric_limits<float>::quiet_NaN()), TopkSortKey(std::numeric_limits<float>::quiet_NaN()));
  EXPECT_GT(TopkPackedKey(1.0f, 3), TopkPackedKey(1.0f, 4));  // tie → smaller position is better
  EXPECT_GT(TopkPackedKey(1.5f, 9), TopkPackedKey(1.0f, 0));
}

}  // namespace
}  // namespace ic::kernels::cpu::internal
