// NCCL backend, one rank on one GPU (label gpu; skips when no GPU is visible). Every collective against
// host-computed values, byte counting, and that a broken communicator fails fast.
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstring>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/nccl_communicator.h"

namespace ic::parallel {
namespace {

bool HaveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

template <typename T>
T* ToDevice(const std::vector<T>& v) {
  T* d = nullptr;
  EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&d), std::max<size_t>(v.size(), 1) * sizeof(T)), cudaSuccess);
  if (!v.empty()) EXPECT_EQ(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return d;
}

template <typename T>
std::vector<T> ToHost(const T* d, size_t n) {
  std::vector<T> v(n);
  if (n > 0) EXPECT_EQ(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

TEST(NcclCommunicatorGpuTest, OneRankCollectives) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  absl::StatusOr<std::string> id = NcclCommunicator::UniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_EQ(id->size(), NcclCommunicator::kUniqueIdBytes);
  NcclOptions opt;
  opt.device = 0;
  opt.common.timeout = absl::Seconds(60);
  auto comm = NcclCommunicator::Create(*id, 0, 1, opt);
  ASSERT_TRUE(comm.ok()) << comm.status();
  Communicator& c = **comm;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);

  std::vector<float> x(1000);
  std::iota(x.begin(), x.end(), 0.5f);
  float* dx = ToDevice(x);
  float* dy = ToDevice(std::vector<float>(x.size(), 0.0f));
  ASSERT_TRUE(c.AllReduceSum(dx, dy, x.size()).ok());
  EXPECT_EQ(ToHost(dy, x.size()), x);
  ASSERT_TRUE(c.AllGather(dx, dy, x.size() * sizeof(float)).ok());
  EXPECT_EQ(ToHost(dy, x.size()), x);
  ASSERT_TRUE(c.ReduceScatterSum(dx, dy, x.size()).ok());
  EXPECT_EQ(ToHost(dy, x.size()), x);
  ASSERT_TRUE(c.Broadcast(dx, dy, x.size() * sizeof(float), 0).ok());
  EXPECT_EQ(ToHost(dy, x.size()), x);
  std::vector<size_t> counts{x.size() * sizeof(float)}, offsets{0};
  ASSERT_TRUE(c.AllToAllV(dx, counts, offsets, dy, counts, offsets).ok());
  EXPECT_EQ(ToHost(dy, x.size()), x);
  ASSERT_TRUE(c.Barrier().ok());
  EXPECT_EQ(c.stats()[Collective::kAllReduce].calls, 1);
  EXPECT_EQ(c.stats().total_bytes_sent(), 0);  // one rank sends nothing

  auto child = c.Split(0, 0);
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_NE(*child, nullptr);
  EXPECT_EQ((*child)->size(), 1);
  ASSERT_TRUE((*child)->AllReduceSum(dx, dy, x.size()).ok());
  EXPECT_EQ(ToHost(dy, x.size()), x);

  c.Abort();
  absl::Status after = c.Barrier();
  EXPECT_EQ(after.code(), absl::StatusCode::kFailedPrecondition) << after;
  cudaFree(dx);
  cudaFree(dy);
}

// Rank 1 of 2 never joins: non-blocking init must give DeadlineExceeded (and abort), not hang.
TEST(NcclCommunicatorGpuTest, InitTimesOutWhenAPeerNeverJoins) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  absl::StatusOr<std::string> id = NcclCommunicator::UniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  NcclOptions opt;
  opt.device = 0;
  opt.common.timeout = absl::Seconds(3);
  const auto start = std::chrono::steady_clock::now();
  auto comm = NcclCommunicator::Create(*id, 0, 2, opt);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
  EXPECT_LT(seconds, 3.0 + 30.0);  // hang bound only
}

TEST(NcclCommunicatorGpuTest, BadUniqueIdIsInvalidArgument) {
  auto comm = NcclCommunicator::Create("short", 0, 1);
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ic::parallel
