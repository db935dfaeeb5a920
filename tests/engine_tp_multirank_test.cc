// Tensor parallel inside a shard group (DESIGN.md §5, case C12) on the CPU: TP = 1, 2, 4 ranks as threads
// of one process (parallel::InProcessGroup), each rank its own Context over the same Model.
//   * logits within 1e-4 relative of the single-rank engine, bitwise identical on every rank;
//   * at every layer, indices bitwise identical on every rank of the group and margin-equal (DESIGN.md §3,
//     rel_eps 1e-5) to the single-rank engine — for a chunked prefill and for several decode steps
//     (batched, with a long and a short sequence);
//   * Shared layers issue no top-k collective: top-k bytes proportional to the Full layers;
//   * the sharding plan: GQA KV cache split or replicated, heads not divisible by tp rejected.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/inprocess_communicator.h"
#include "parallel/multirank_test_util.h"
#include "sdk/engine.h"
#include "sdk/synthetic_model.h"
#include "tests/engine_test_util.h"
#include "tests/index_sets.h"

namespace ic {
namespace {

using ::testing::HasSubstr;
using parallel::Collective;
using parallel::Communicator;
using parallel::InProcessGroup;

std::shared_ptr<const Model> Synthetic(Architecture arch, int layers, int topk, const std::string& plan = "") {
  return test::SmallSynthetic(arch, layers, topk, plan);
}
using test::RandomTokens;
double MaxRelError(const std::vector<float>& a, const std::vector<float>& b) { return test::RelError(a, b); }

// One forward pass as seen by one rank.
struct PassRecord {
  std::vector<int32_t> pos;                   // position of each row
  std::vector<float> logits;                  // [rows, vocab]
  std::map<int, std::vector<int32_t>> topk;   // layer → [rows, k]
  std::map<int, std::vector<float>> scores;   // Full layer → [rows, cols] (reference run only)
  int cols = 0;
};

struct RankRun {
  std::vector<PassRecord> passes;
  parallel::CommunicatorStats comm;
  bool ok = true;
};

// The script every rank runs: sequence A prefilled in chunks (a 1-token first chunk included), a short
// sequence B in one pass, then decode steps of {A, B} together and of A alone.
struct Script {
  std::vector<int32_t> a_prompt, b_prompt, a_next, b_next;
  std::vector<int> a_chunks;
  int batched_steps = 3;
};

Script MakeScript(int vocab) {
  Script s;
  s.a_prompt = RandomTokens(230, vocab, 31);
  s.b_prompt = RandomTokens(6, vocab, 32);
  s.a_next = RandomTokens(6, vocab, 33);
  s.b_next = RandomTokens(6, vocab, 34);
  s.a_chunks = {1, 37, 128, 64};
  return s;
}

RankRun RunScript(std::shared_ptr<const Model> model, Communicator* comm, const Script& script, bool want_scores,
                  const std::string& plan = "", kernels::Precision weights = kernels::Precision::kF32) {
  RankRun run;
  const int vocab = model->config.vocab_size;
  auto ctx_or = Context::Create(model, {.max_tokens = 1024, .block_size = 16, .plan = plan, .shard_group = comm,
                                        .weight_precision = weights});
  if (!ctx_or.ok()) {
    ADD_FAILURE() << ctx_or.status();
    run.ok = false;
    return run;
  }
  Context& ctx = **ctx_or;
  if (comm != nullptr) comm->ResetStats();
  const int a = *ctx.AddSequence();
  const int b = *ctx.AddSequence();
  auto pass = [&](std::vector<Segment> segs) {
    PassRecord rec;
    int rows = 0;
    for (const Segment& s : segs) {
      const int64_t start = *ctx.SequenceLength(s.seq_id);
      for (size_t i = 0; i < s.tokens.size(); ++i) rec.pos.push_back(static_cast<int32_t>(start + i));
      rows += static_cast<int>(s.tokens.size());
    }
    rec.logits.resize(static_cast<size_t>(rows) * vocab);
    ForwardOutputs out{.all_logits = rec.logits.data(), .topk_by_layer = &rec.topk,
                       .scores_by_layer = want_scores ? &rec.scores : nullptr};
    absl::Status st = ctx.Forward(segs, out);
    if (!st.ok()) {
      ADD_FAILURE() << st;
      run.ok = false;
    }
    rec.cols = *std::max_element(rec.pos.begin(), rec.pos.end()) + 1;
    run.passes.push_back(std::move(rec));
  };
  int off = 0;
  for (int chunk : script.a_chunks) {
    pass({Segment{a, std::span(script.a_prompt).subspan(off, chunk)}});
    off += chunk;
  }
  pass({Segment{b, std::span(script.b_prompt)}});
  for (int i = 0; i < static_cast<int>(script.a_next.size()); ++i) {
    if (i < script.batched_steps) {
      pass({Segment{a, std::span(script.a_next).subspan(i, 1)}, Segment{b, std::span(script.b_next).subspan(i, 1)}});
    } else {
      pass({Segment{a, std::span(script.a_next).subspan(i, 1)}});
    }
  }
  if (comm != nullptr) run.comm = comm->stats();
  return run;
}

// Runs the script on tp ranks (one thread each) of an in-process group.
std::vector<RankRun> RunGroup(std::shared_ptr<const Model> model, int tp, const Script& script,
                              const std::string& plan = "", kernels::Precision weights = kernels::Precision::kF32) {
  auto comms = InProcessGroup::Create(tp);
  EXPECT_TRUE(comms.ok()) << comms.status();
  std::vector<RankRun> runs(tp);
  parallel::testing::RunThreads(
      tp, [&](int r) { runs[r] = RunScript(model, (*comms)[r].get(), script, false, plan, weights); });
  return runs;
}

// Every rank: bitwise the same logits and indices as rank 0.
void ExpectRanksIdentical(const std::vector<RankRun>& runs) {
  for (size_t r = 1; r < runs.size(); ++r) {
    ASSERT_EQ(runs[r].passes.size(), runs[0].passes.size());
    for (size_t p = 0; p < runs[0].passes.size(); ++p) {
      EXPECT_EQ(runs[r].passes[p].topk, runs[0].passes[p].topk) << "rank " << r << " pass " << p;
      EXPECT_EQ(runs[r].passes[p].logits, runs[0].passes[p].logits) << "rank " << r << " pass " << p;
    }
  }
}

// Logits within `logit_tol` relative (1e-4) and indices margin-equal (`margin`, 1e-5) to the single-rank
// reference, at every layer.
void ExpectMatchesReference(const RankRun& got, const RankRun& ref, const Model& model, const std::string& what,
                            double logit_tol = 1e-4, float margin = 1e-5f) {
  const int k = model.config.index_topk;
  ASSERT_EQ(got.passes.size(), ref.passes.size()) << what;
  for (size_t p = 0; p < ref.passes.size(); ++p) {
    const PassRecord& g = got.passes[p];
    const PassRecord& f = ref.passes[p];
    EXPECT_LT(MaxRelError(g.logits, f.logits), logit_tol) << what << " pass " << p;
    ASSERT_EQ(g.topk.size(), static_cast<size_t>(model.config.num_hidden_layers)) << what;
    const int rows = static_cast<int>(f.pos.size());
    std::vector<int32_t> valid(rows);
    for (int i = 0; i < rows; ++i) valid[i] = f.pos[i] + 1;
    for (const auto& [l, idx] : g.topk) {
      const int src = model.plan.SourceLayer(l);
      EXPECT_TRUE(test::IndexSetsMarginEqual(idx.data(), f.topk.at(l).data(), rows, k, f.scores.at(src).data(),
                                             f.cols, valid.data(), margin))
          << what << " pass " << p << " layer " << l;
    }
  }
}

struct ModelCase {
  Architecture arch;
  int topk;
  std::string plan;
};

TEST(EngineTpMultirankTest, ShardGroupMatchesSingleRank_C12) {
  for (const ModelCase& mc : {ModelCase{Architecture::kDeepseekV32, 16, "FSFS"},
                              ModelCase{Architecture::kGlmMoeDsa, 16, "FFFF"},
                              ModelCase{Architecture::kLlamaDsa, 64, "FFSF"}}) {
    auto model = Synthetic(mc.arch, 4, mc.topk, mc.plan);
    const Script script = MakeScript(model->config.vocab_size);
    const RankRun ref = RunScript(model, nullptr, script, /*want_scores=*/true);
    ASSERT_TRUE(ref.ok);
    for (int tp : {1, 2, 4}) {
      const std::string what = model->config.model_type + " tp " + std::to_string(tp);
      std::vector<RankRun> runs = RunGroup(model, tp, script);
      for (const RankRun& r : runs) ASSERT_TRUE(r.ok) << what;
      ExpectRanksIdentical(runs);
      for (int r = 0; r < tp; ++r) ExpectMatchesReference(runs[r], ref, *model, what + " rank " + std::to_string(r));
      // Shared layers reuse their Full layer's indices on every rank.
      for (const PassRecord& p : runs[0].passes) {
        for (int l = 0; l < model->config.num_hidden_layers; ++l) {
          EXPECT_EQ(p.topk.at(l), p.topk.at(model->plan.SourceLayer(l))) << what << " layer " << l;
        }
      }
      // The o_proj (and dense MLP) all-reduce runs at every layer of every pass.
      EXPECT_GE(runs[0].comm[Collective::kAllReduce].calls,
                static_cast<int64_t>(runs[0].passes.size()) * model->config.num_hidden_layers)
          << what;
    }
  }
}

TEST(EngineTpMultirankTest, SharedLayersIssueNoTopkCollective_C12) {
  const int tp = 2, k = 16, T = 100;
  const std::vector<int32_t> prompt = RandomTokens(T, 256, 41);
  const std::vector<int32_t> next = RandomTokens(3, 256, 42);
  auto run = [&](const std::string& plan, int64_t* comm_bytes, double* metric_bytes, int64_t* all_reduce_calls) {
    auto model = Synthetic(Architecture::kDeepseekV32, 4, k, plan);
    auto comms = *InProcessGroup::Create(tp);
    std::vector<int64_t> bytes(tp), reduces(tp);
    const Metrics::Totals before = Metrics::Global().GetTotals();
    parallel::testing::RunThreads(tp, [&](int r) {
      auto ctx = *Context::Create(model, {.max_tokens = 512, .shard_group = comms[r].get()});
      const int s = *ctx->AddSequence();
      ASSERT_TRUE(ctx->Prefill(s, prompt).ok());
      for (int32_t t : next) ASSERT_TRUE(ctx->Decode({&s, 1}, {&t, 1}, nullptr).ok());
      bytes[r] = comms[r]->stats()[Collective::kAllGather].bytes_sent;
      reduces[r] = comms[r]->stats()[Collective::kAllReduce].calls;
    });
    *metric_bytes = Metrics::Global().GetTotals().topk_bytes - before.topk_bytes;
    for (int r = 1; r < tp; ++r) EXPECT_EQ(bytes[r], bytes[0]) << plan;
    *comm_bytes = bytes[0];
    *all_reduce_calls = reduces[0];
  };
  int64_t full4 = 0, full2 = 0, full1 = 0, ar4 = 0, ar2 = 0, ar1 = 0;
  double m4 = 0, m2 = 0, m1 = 0;
  run("FFFF", &full4, &m4, &ar4);
  run("FSFS", &full2, &m2, &ar2);
  run("FSSS", &full1, &m1, &ar1);
  // Per Full layer: prefill = zig-zag slot of max_rows = 50 rows × k int32 to the one peer; each decode
  // step (one row, pos + 1 > k) = k (score, position) candidates of 8 bytes.
  const int64_t per_full = int64_t{T / tp} * k * 4 + int64_t{3} * k * 8;
  EXPECT_EQ(full1, per_full);
  EXPECT_EQ(full2, 2 * per_full);
  EXPECT_EQ(full4, 4 * per_full);
  // The metric counts every rank's top-k bytes.
  EXPECT_EQ(m1, static_cast<double>(tp * full1));
  EXPECT_EQ(m4, static_cast<double>(tp * full4));
  // Shared layers skip only the top-k: the all-reduces run at every layer whatever the plan.
  EXPECT_EQ(ar1, ar4);
  EXPECT_EQ(ar2, ar4);
  // 4 passes (prefill + 3 decode steps) × (4 o_proj + the dense MLP of layer 0; MoE layers: experts
  // replicated, no collective).
  EXPECT_EQ(ar4, int64_t{4} * 5);
}

TEST(EngineTpMultirankTest, DenseModelsShardTheirAttentionAndMlp) {
  for (Architecture arch : {Architecture::kLlama, Architecture::kDeepseekV32}) {
    auto sparse = Synthetic(arch, 3, 16, "");
    auto dense = std::make_shared<Model>(*sparse);
    dense->config.has_indexer = false;  // dense causal attention: no top-k, no top-k collective
    const Script script = MakeScript(dense->config.vocab_size);
    const RankRun ref = RunScript(dense, nullptr, script, false);
    for (int tp : {2, 4}) {
      std::vector<RankRun> runs = RunGroup(dense, tp, script);
      ExpectRanksIdentical(runs);
      for (size_t p = 0; p < ref.passes.size(); ++p) {
        EXPECT_LT(MaxRelError(runs[0].passes[p].logits, ref.passes[p].logits), 1e-4) << "tp " << tp << " pass " << p;
      }
      EXPECT_EQ(runs[0].comm[Collective::kAllGather].bytes_sent, 0);
    }
  }
}

// BF16 weights: each rank converts its own row / column slices (q_b, kv_b, o_proj, q/k/v, the dense MLP);
// the group computes what one rank with BF16 weights computes, up to summation order — which, through the
// BF16 rounding of the next GEMM's inputs, grows to BF16-level differences: logits within DESIGN.md §3's
// 1e-2, index scores at deeper layers within ~3% (their inputs moved by the same roundings).
TEST(EngineTpMultirankTest, Bf16WeightSlicesMatchTheSingleRank) {
  const auto bf16 = kernels::Precision::kBF16;
  for (const ModelCase& mc : {ModelCase{Architecture::kDeepseekV32, 16, "FSFS"},
                              ModelCase{Architecture::kLlamaDsa, 64, "FFSF"}}) {
    auto model = Synthetic(mc.arch, 4, mc.topk, mc.plan);
    const Script script = MakeScript(model->config.vocab_size);
    const RankRun ref = RunScript(model, nullptr, script, /*want_scores=*/true, "", bf16);
    const RankRun ref_f32 = RunScript(model, nullptr, script, /*want_scores=*/false);
    ASSERT_TRUE(ref.ok && ref_f32.ok);
    EXPECT_GT(MaxRelError(ref.passes[0].logits, ref_f32.passes[0].logits), 1e-3);  // BF16 did take effect
    std::vector<RankRun> runs = RunGroup(model, 2, script, "", bf16);
    for (const RankRun& r : runs) ASSERT_TRUE(r.ok);
    ExpectRanksIdentical(runs);
    ExpectMatchesReference(runs[1], ref, *model, model->config.model_type + " bf16 tp 2", 1e-2, 3e-2f);
  }
}

TEST(EngineTpMultirankTest, GqaKvHeadsSplitWhereTheyDivideElseReplicated) {
  auto model = Synthetic(Architecture::kLlamaDsa, 2, 16, "");
  auto single = *Context::Create(model, {.max_tokens = 256});
  for (int tp : {2, 4, 8}) {
    auto comms = *InProcessGroup::Create(tp);
    auto ctx = Context::Create(model, {.max_tokens = 256, .shard_group = comms[0].get()});
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    // 2 KV heads: tp 2 splits them (1 each); tp 4 and 8 replicate the one KV head a rank's queries use.
    EXPECT_EQ((*ctx)->cache_bytes().kv * 2, single->cache_bytes().kv) << tp;
    EXPECT_EQ((*ctx)->cache_bytes().index_k, single->cache_bytes().index_k) << tp;  // replicated
  }
  // MLA: the latent cache is replicated.
  auto mla = Synthetic(Architecture::kDeepseekV32, 2, 16, "");
  auto comms = *InProcessGroup::Create(2);
  auto a = *Context::Create(mla, {.max_tokens = 256});
  auto b = *Context::Create(mla, {.max_tokens = 256, .shard_group = comms[1].get()});
  EXPECT_EQ(a->cache_bytes().kv, b->cache_bytes().kv);
  EXPECT_EQ(a->cache_bytes().index_k, b->cache_bytes().index_k);
}

TEST(EngineTpMultirankTest, HeadsNotDivisibleByTheGroupAreRejected) {
  auto model = Synthetic(Architecture::kDeepseekV32, 2, 16, "");
  auto comms = *InProcessGroup::Create(3);
  auto ctx = Context::Create(model, {.shard_group = comms[0].get()});
  EXPECT_EQ(ctx.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ctx.status().message()), HasSubstr("num_attention_heads = 8"));
  EXPECT_THAT(std::string(ctx.status().message()), HasSubstr("shard group size 3"));
  // GQA: KV heads that neither divide nor are divided by tp cannot be split or replicated uniformly.
  auto gqa = std::make_shared<Model>(*Synthetic(Architecture::kLlamaDsa, 2, 16, ""));
  gqa->config.num_attention_heads = 12;
  gqa->config.num_key_value_heads = 3;
  auto pair = *InProcessGroup::Create(2);
  auto bad_kv = Context::Create(gqa, {.shard_group = pair[0].get()});
  EXPECT_EQ(bad_kv.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_kv.status().message()), HasSubstr("num_key_value_heads = 3"));
  // A CUDA context all-reduces device buffers: an in-process (host-buffer) group is refused by name, GPU or
  // not (engine_multigpu_gpu_test runs the NCCL path).
  auto two = *InProcessGroup::Create(2);
  auto gpu = Context::Create(model, {.device = kernels::DeviceKind::kCuda, .shard_group = two[0].get()});
  EXPECT_EQ(gpu.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(gpu.status().message()), HasSubstr("a CUDA context needs NCCL"));
}

TEST(EngineTpMultirankTest, AFailedPeerMakesTheOthersReturnAnErrorAndRollBack) {
  auto model = Synthetic(Architecture::kDeepseekV32, 2, 16, "");
  parallel::CommunicatorOptions opts;
  opts.timeout = absl::Seconds(5);
  auto comms = *InProcessGroup::Create(2, opts);
  const std::vector<int32_t> prompt = RandomTokens(40, 256, 51);
  std::vector<absl::Status> status(2);
  std::vector<int64_t> len(2);
  parallel::testing::RunThreads(2, [&](int r) {
    auto ctx = *Context::Create(model, {.max_tokens = 256, .shard_group = comms[r].get()});
    const int s = *ctx->AddSequence();
    if (r == 1) comms[r]->Abort();  // rank 1 dies before the pass
    status[r] = ctx->Prefill(s, prompt);
    len[r] = *ctx->SequenceLength(s);
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_FALSE(status[r].ok()) << r;
    EXPECT_EQ(len[r], 0) << r;
  }
}

}  // namespace
}  // namespace ic
