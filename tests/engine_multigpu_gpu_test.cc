// The engine's multi-GPU path: tensor parallel (a shard group) and expert parallel (an expert group) over
// NCCL, one GPU per rank, ranks as threads of one process. Skipped unless two GPUs and NCCL are there.
//   * TP = 2: logits bitwise identical on both ranks and within 1e-4 relative of one GPU, for a chunked
//     prefill and batched decode steps; the shard group's collectives (calls and bytes per kind, the
//     sharded top-k's included) equal those of the same job on the CPU with an in-process group — the
//     byte accounting of DESIGN.md §5 is a property of the calls, and Shared layers issue none.
//   * EP = 2 with data-parallel attention: each rank serves its own sequence; its logits are within 1e-4 of
//     one GPU serving that sequence alone.
//   * Bad groups: a CUDA context refuses an in-process (host-buffer) group, naming it.
#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "parallel/inprocess_communicator.h"
#include "parallel/multirank_test_util.h"
#include "parallel/nccl_communicator.h"
#include "sdk/engine.h"
#include "tests/engine_test_util.h"

namespace ic {
namespace {

using kernels::DeviceKind;
using parallel::Collective;
using parallel::Communicator;

class EngineMultiGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::CudaDeviceCount() < 2 || !parallel::NcclAvailable()) {
      GTEST_SKIP() << "needs 2 CUDA devices and NCCL (" << kernels::CudaDeviceCount() << " visible)";
    }
  }
};

// `world` NCCL communicators, rank r on GPU r (empty, with a test failure, when they cannot be made).
std::vector<std::unique_ptr<Communicator>> NcclGroup(int world) {
  auto comms = parallel::NcclLocalGroup(world);
  EXPECT_TRUE(comms.ok()) << comms.status();
  return comms.ok() ? *std::move(comms) : std::vector<std::unique_ptr<Communicator>>{};
}

// What one rank saw: every pass's logits, and its shard group's collective counters.
struct RankRun {
  std::vector<std::vector<float>> logits;
  parallel::CommunicatorStats stats;
};

// The script of the tensor-parallel test: sequence A prefilled in chunks of 128 (300 tokens), a short
// sequence B (20 tokens, below the top-k: no collective for its rows), then 4 batched decode steps.
RankRun TensorParallelScript(std::shared_ptr<const Model> model, DeviceKind device, int ordinal, Communicator* comm) {
  RankRun run;
  const int V = model->config.vocab_size;
  auto ctx = Context::Create(model, {.device = device, .device_ordinal = ordinal, .max_tokens = 2048,
                                     .prefill_chunk = 128, .shard_group = comm});
  EXPECT_TRUE(ctx.ok()) << ctx.status();
  if (!ctx.ok()) return run;
  if (comm != nullptr) comm->ResetStats();
  const int a = *(*ctx)->AddSequence(), b = *(*ctx)->AddSequence();
  std::vector<float> logits(V);
  EXPECT_TRUE((*ctx)->Prefill(a, test::RandomTokens(300, V, 11), logits.data()).ok());
  run.logits.push_back(logits);
  EXPECT_TRUE((*ctx)->Prefill(b, test::RandomTokens(20, V, 12), logits.data()).ok());
  run.logits.push_back(logits);
  const std::vector<int> seqs = {a, b};
  std::vector<float> two(2 * static_cast<size_t>(V));
  for (int step = 0; step < 4; ++step) {
    const std::vector<int32_t> next = {(3 * step + 1) % V, (5 * step + 2) % V};
    const absl::Status s = (*ctx)->Decode(seqs, next, two.data());
    EXPECT_TRUE(s.ok()) << s;
    run.logits.push_back(two);
  }
  if (comm != nullptr) run.stats = comm->stats();
  return run;
}

void ExpectSameCalls(const parallel::CommunicatorStats& got, const parallel::CommunicatorStats& want) {
  for (Collective kind : {Collective::kAllGather, Collective::kAllReduce, Collective::kAllToAllV}) {
    SCOPED_TRACE(parallel::CollectiveName(kind));
    EXPECT_EQ(got[kind].calls, want[kind].calls);
    EXPECT_EQ(got[kind].bytes_sent, want[kind].bytes_sent);
    EXPECT_EQ(got[kind].errors, 0);
  }
}

TEST_F(EngineMultiGpuTest, TensorParallelOnTwoGpusMatchesOneGpu) {
  for (Architecture arch : {Architecture::kDeepseekV32, Architecture::kLlamaDsa}) {
    SCOPED_TRACE(std::string(ArchitectureName(arch)));
    auto model = test::SmallSynthetic(arch, 4, 48, "FSFS");
    ASSERT_NE(model, nullptr);
    const RankRun single = TensorParallelScript(model, DeviceKind::kCuda, 0, nullptr);
    auto comms = NcclGroup(2);
    ASSERT_EQ(comms.size(), 2u);
    std::vector<RankRun> ranks(2);
    parallel::testing::RunThreads(2, [&](int r) {
      ranks[r] = TensorParallelScript(model, DeviceKind::kCuda, r, comms[r].get());
    });
    // The same job on the CPU, ranks in-process: the reference for the collectives.
    auto host = parallel::InProcessGroup::Create(2);
    ASSERT_TRUE(host.ok());
    std::vector<RankRun> cpu(2);
    parallel::testing::RunThreads(2, [&](int r) {
      cpu[r] = TensorParallelScript(model, DeviceKind::kCpu, 0, (*host)[r].get());
    });
    ASSERT_EQ(single.logits.size(), 6u);
    for (int r = 0; r < 2; ++r) {
      SCOPED_TRACE(r);
      ASSERT_EQ(ranks[r].logits.size(), single.logits.size());
      for (size_t p = 0; p < single.logits.size(); ++p) {
        EXPECT_EQ(ranks[r].logits[p], ranks[0].logits[p]) << "pass " << p;
        EXPECT_LT(test::RelError(ranks[r].logits[p], single.logits[p]), 1e-4) << "pass " << p;
      }
      ExpectSameCalls(ranks[r].stats, cpu[r].stats);
      EXPECT_GT(ranks[r].stats[Collective::kAllGather].bytes_sent, 0);  // the Full layers' sharded top-k
    }
  }
}

TEST_F(EngineMultiGpuTest, ExpertParallelOnTwoGpusServesEachRanksOwnSequence) {
  auto model = test::SmallSynthetic(Architecture::kDeepseekV32, 4, 48, "FSFS");  // 8 routed experts: 4 a rank
  ASSERT_NE(model, nullptr);
  const int V = model->config.vocab_size;
  auto script = [&](int ordinal, Communicator* experts, int which) {
    std::vector<std::vector<float>> out;
    auto ctx = Context::Create(model, {.device = DeviceKind::kCuda, .device_ordinal = ordinal, .max_tokens = 1024,
                                       .expert_group = experts});
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    if (!ctx.ok()) return out;
    const int seq = *(*ctx)->AddSequence();
    std::vector<float> logits(V);
    EXPECT_TRUE((*ctx)->Prefill(seq, test::RandomTokens(150, V, 40 + which), logits.data()).ok());
    out.push_back(logits);
    for (int step = 0; step < 3; ++step) {
      const int32_t next = (7 * step + which) % V;
      EXPECT_TRUE((*ctx)->Decode({&seq, 1}, {&next, 1}, logits.data()).ok());
      out.push_back(logits);
    }
    return out;
  };
  std::vector<std::vector<std::vector<float>>> single(2);
  for (int which = 0; which < 2; ++which) single[which] = script(0, nullptr, which);
  auto comms = NcclGroup(2);
  ASSERT_EQ(comms.size(), 2u);
  std::vector<std::vector<std::vector<float>>> ranks(2);
  parallel::testing::RunThreads(2, [&](int r) { ranks[r] = script(r, comms[r].get(), r); });
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE(r);
    ASSERT_EQ(ranks[r].size(), single[r].size());
    for (size_t p = 0; p < single[r].size(); ++p) {
      EXPECT_LT(test::RelError(ranks[r][p], single[r][p]), 1e-4) << "pass " << p;
    }
    EXPECT_GT(comms[r]->stats()[Collective::kAllToAllV].calls, 0);
  }
}

TEST_F(EngineMultiGpuTest, CudaContextsRefuseHostBufferGroups) {
  auto model = test::SmallSynthetic(Architecture::kDeepseekV32, 2, 16);
  auto host = parallel::InProcessGroup::Create(1);
  ASSERT_TRUE(host.ok());
  auto ctx = Context::Create(model, {.device = DeviceKind::kCuda, .shard_group = (*host)[0].get()});
  ASSERT_FALSE(ctx.ok());
  EXPECT_EQ(ctx.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ctx.status().message().find("needs NCCL"), std::string::npos) << ctx.status();
}

}  // namespace
}  // namespace ic
