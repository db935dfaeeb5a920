// Expert parallel (DESIGN.md §5) on the CPU, ranks as threads (parallel::InProcessGroup): routed experts
// split across the expert group, tokens dispatched and combined with all-to-all-v, data-parallel attention
// (each shard group serves its own sequences), idle ranks joining through Context::IdleStep().
//   * EP 2 (dp 2 × tp 1) and EP 4 (dp 2 × tp 2, process groups from one world): every rank's logits within
//     1e-4 relative of the single-rank engine for its own sequence, in prefill and in decode steps where
//     the other shard group is idle; the ranks of a shard group bitwise identical;
//   * the all-to-all-v moves bytes (and only the MoE layers issue it), an idle rank sends nothing;
//   * a rank that aborts makes the others fail within the timeout, not hang;
//   * bad configurations: experts not divisible by the group, a dense model, the CUDA backend.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/inprocess_communicator.h"
#include "parallel/multirank_test_util.h"
#include "parallel/process_groups.h"
#include "sdk/engine.h"
#include "sdk/metrics.h"
#include "sdk/synthetic_model.h"
#include "tests/engine_test_util.h"

namespace ic {
namespace {

using ::testing::HasSubstr;
using parallel::Collective;
using parallel::Communicator;
using parallel::InProcessGroup;
using test::RandomTokens;

constexpr int kDecodeSteps = 3;

// What one sequence goes through: prefill (two passes of equal size on every shard group), decode steps.
struct SeqRun {
  std::vector<float> prefill_logits;
  std::vector<std::vector<float>> decode_logits;
};

std::shared_ptr<const Model> MoeModel(const std::string& plan = "") {
  return test::SmallSynthetic(Architecture::kDeepseekV32, 4, 16, plan);  // 8 routed experts, top-2, 1 shared
}

// Single-rank reference for one sequence.
SeqRun Reference(std::shared_ptr<const Model> model, const std::vector<int32_t>& prompt,
                 const std::vector<int32_t>& next) {
  SeqRun r;
  auto ctx = Context::Create(model, {.max_tokens = 512, .block_size = 16, .prefill_chunk = 48});
  EXPECT_TRUE(ctx.ok()) << ctx.status();
  int seq = *(*ctx)->AddSequence();
  r.prefill_logits.resize(model->config.vocab_size);
  EXPECT_TRUE((*ctx)->Prefill(seq, prompt, r.prefill_logits.data()).ok());
  for (int32_t t : next) {
    std::vector<float> l(model->config.vocab_size);
    EXPECT_TRUE((*ctx)->Decode({&seq, 1}, {&t, 1}, l.data()).ok());
    r.decode_logits.push_back(l);
  }
  return r;
}

// One rank: prefill its shard group's prompt (two passes), then the decode steps; shard group g decodes
// only at steps where step % dp == g and is idle otherwise.
SeqRun RunRank(std::shared_ptr<const Model> model, Communicator* shard, Communicator* expert, int dp_rank, int dp,
               const std::vector<int32_t>& prompt, const std::vector<int32_t>& next, absl::Status* status) {
  SeqRun r;
  auto ctx_or = Context::Create(model, {.max_tokens = 512, .block_size = 16, .prefill_chunk = 48,
                                        .shard_group = shard, .expert_group = expert});
  if (!ctx_or.ok()) {
    *status = ctx_or.status();
    return r;
  }
  Context& ctx = **ctx_or;
  int seq = *ctx.AddSequence();
  r.prefill_logits.resize(model->config.vocab_size);
  if (absl::Status s = ctx.Prefill(seq, prompt, r.prefill_logits.data()); !s.ok()) {
    *status = s;
    return r;
  }
  for (int step = 0, used = 0; step < kDecodeSteps * dp; ++step) {
    if (step % dp == dp_rank) {
      std::vector<float> l(model->config.vocab_size);
      const int32_t t = next[used++];
      if (absl::Status s = ctx.Decode({&seq, 1}, {&t, 1}, l.data()); !s.ok()) {
        *status = s;
        return r;
      }
      r.decode_logits.push_back(l);
    } else if (absl::Status s = ctx.IdleStep(); !s.ok()) {
      *status = s;
      return r;
    }
  }
  return r;
}

void ExpectClose(const SeqRun& got, const SeqRun& want, const std::string& what) {
  EXPECT_LT(test::RelError(got.prefill_logits, want.prefill_logits), 1e-4) << what << " prefill";
  ASSERT_EQ(got.decode_logits.size(), want.decode_logits.size()) << what;
  for (size_t i = 0; i < want.decode_logits.size(); ++i) {
    EXPECT_LT(test::RelError(got.decode_logits[i], want.decode_logits[i]), 1e-4) << what << " decode " << i;
  }
}

TEST(EngineExpertParallelTest, Ep2DataParallelAttentionMatchesOneRank) {
  auto model = MoeModel("FSFS");
  const int vocab = model->config.vocab_size;
  // Equal prompt lengths: both ranks run the same number of prefill passes (2 chunks of 48).
  const std::vector<std::vector<int32_t>> prompts = {RandomTokens(90, vocab, 1), RandomTokens(90, vocab, 2)};
  const std::vector<std::vector<int32_t>> nexts = {RandomTokens(kDecodeSteps, vocab, 3),
                                                   RandomTokens(kDecodeSteps, vocab, 4)};
  auto comms = InProcessGroup::Create(2);
  ASSERT_TRUE(comms.ok());
  std::vector<SeqRun> runs(2);
  std::vector<absl::Status> status(2);
  parallel::testing::RunThreads(2, [&](int r) {
    runs[r] = RunRank(model, nullptr, (*comms)[r].get(), r, 2, prompts[r], nexts[r], &status[r]);
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
    ExpectClose(runs[r], Reference(model, prompts[r], nexts[r]), "rank " + std::to_string(r));
    const auto& a2a = (*comms)[r]->stats()[Collective::kAllToAllV];
    // 3 exchanges (rows, expert ids, results) per MoE layer (3 of 4 layers) per pass: 2 prefill passes +
    // kDecodeSteps × 2 decode-or-idle passes.
    EXPECT_EQ(a2a.calls, 3 * 3 * (2 + 2 * kDecodeSteps)) << "rank " << r;
    EXPECT_GT(a2a.bytes_sent, 0) << "rank " << r;
  }
  // Both ranks' traffic reaches the process-wide Prometheus registry, by group and collective.
  const std::string text = Metrics::Global().TextDump();
  EXPECT_THAT(text, HasSubstr("indexcache_communication_bytes_total{collective=\"AllToAllV\",group=\"expert\"}"));
  EXPECT_THAT(text, HasSubstr("indexcache_communication_seconds_total{collective=\"AllGather\",group=\"expert\"}"));
  EXPECT_THAT(text, HasSubstr("indexcache_communication_calls_total{collective=\"AllToAllV\",group=\"expert\"}"));
}

TEST(EngineExpertParallelTest, Ep4WithTensorParallelShardGroups) {
  auto model = MoeModel();
  const int vocab = model->config.vocab_size;
  const std::vector<std::vector<int32_t>> prompts = {RandomTokens(70, vocab, 5), RandomTokens(80, vocab, 6)};
  const std::vector<std::vector<int32_t>> nexts = {RandomTokens(kDecodeSteps, vocab, 7),
                                                   RandomTokens(kDecodeSteps, vocab, 8)};
  auto world = InProcessGroup::Create(4);
  ASSERT_TRUE(world.ok());
  std::vector<SeqRun> runs(4);
  std::vector<absl::Status> status(4);
  parallel::testing::RunThreads(4, [&](int r) {
    auto groups = parallel::ProcessGroups::Create(*(*world)[r], {.world_size = 4, .tp_size = 2, .ep_size = 4});
    if (!groups.ok()) {
      status[r] = groups.status();
      return;
    }
    const int g = groups->layout().dp_rank;
    runs[r] = RunRank(model, &groups->shard(), &groups->expert(), g, 2, prompts[g], nexts[g], &status[r]);
  });
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
  for (int g = 0; g < 2; ++g) {
    ExpectClose(runs[2 * g], Reference(model, prompts[g], nexts[g]), "shard group " + std::to_string(g));
    EXPECT_EQ(runs[2 * g].prefill_logits, runs[2 * g + 1].prefill_logits) << "shard group " << g;
    EXPECT_EQ(runs[2 * g].decode_logits, runs[2 * g + 1].decode_logits) << "shard group " << g;
  }
}

// Rank 1 has no sequence at all: it only serves its experts for rank 0 through IdleStep().
TEST(EngineExpertParallelTest, OneRankRunsWhileTheOtherIsIdle) {
  auto model = MoeModel();
  const std::vector<int32_t> prompt = RandomTokens(20, model->config.vocab_size, 9);
  auto comms = InProcessGroup::Create(2);
  ASSERT_TRUE(comms.ok());
  std::vector<absl::Status> status(2);
  std::vector<float> logits(model->config.vocab_size);
  parallel::testing::RunThreads(2, [&](int r) {
    auto ctx = Context::Create(model, {.max_tokens = 256, .block_size = 16, .prefill_chunk = 48,
                                       .expert_group = (*comms)[r].get()});
    if (!ctx.ok()) {
      status[r] = ctx.status();
      return;
    }
    if (r == 0) {
      int seq = *(*ctx)->AddSequence();
      status[r] = (*ctx)->Prefill(seq, prompt, logits.data());
    } else {
      status[r] = (*ctx)->IdleStep();
    }
  });
  ASSERT_TRUE(status[0].ok()) << status[0];
  ASSERT_TRUE(status[1].ok()) << status[1];
  EXPECT_LT(test::RelError(logits, Reference(model, prompt, {}).prefill_logits), 1e-4);
  // The idle rank dispatched no rows of its own: its only all-to-all bytes are rank 0's results.
  const auto& a2a0 = (*comms)[0]->stats()[Collective::kAllToAllV];
  const auto& a2a1 = (*comms)[1]->stats()[Collective::kAllToAllV];
  EXPECT_GT(a2a0.bytes_sent, 0);
  EXPECT_EQ(a2a1.calls, a2a0.calls);
}

TEST(EngineExpertParallelTest, AbortedPeerIsAnErrorNotAHang) {
  auto model = MoeModel();
  auto comms = InProcessGroup::Create(2, {.timeout = absl::Seconds(5)});
  ASSERT_TRUE(comms.ok());
  std::vector<absl::Status> status(2);
  parallel::testing::RunThreads(2, [&](int r) {
    auto ctx = Context::Create(model, {.max_tokens = 256, .block_size = 16, .expert_group = (*comms)[r].get()});
    if (!ctx.ok()) {
      status[r] = ctx.status();
      return;
    }
    if (r == 1) {
      (*comms)[r]->Abort();  // dies before the step
      return;
    }
    int seq = *(*ctx)->AddSequence();
    status[r] = (*ctx)->Prefill(seq, RandomTokens(20, model->config.vocab_size, 10));
  }, std::chrono::seconds(60));
  EXPECT_FALSE(status[0].ok());
  // Aborted while waiting, FailedPrecondition when the abort came first, DeadlineExceeded at worst.
  EXPECT_TRUE(absl::IsAborted(status[0]) || absl::IsFailedPrecondition(status[0]) ||
              absl::IsDeadlineExceeded(status[0]))
      << status[0];
}

TEST(EngineExpertParallelTest, BadConfigurations) {
  auto model = MoeModel();
  auto three = InProcessGroup::Create(3);
  ASSERT_TRUE(three.ok());
  auto ctx = Context::Create(model, {.expert_group = (*three)[0].get()});
  EXPECT_THAT(std::string(ctx.status().message()), HasSubstr("n_routed_experts 8 is not divisible by the expert group size 3"));
  auto dense = test::SmallSynthetic(Architecture::kLlamaDsa, 2, 8);
  auto two = InProcessGroup::Create(2);
  ctx = Context::Create(dense, {.expert_group = (*two)[0].get()});
  EXPECT_THAT(std::string(ctx.status().message()), HasSubstr("needs a MoE model"));
  ctx = Context::Create(model, {.device = kernels::DeviceKind::kCuda, .expert_group = (*two)[0].get()});
  EXPECT_FALSE(ctx.ok());
  // Without an expert group IdleStep does nothing.
  auto single = Context::Create(model, {.max_tokens = 64});
  ASSERT_TRUE(single.ok());
  EXPECT_TRUE((*single)->IdleStep().ok());
}

}  // namespace
}  // namespace ic
