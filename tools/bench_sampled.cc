// `indexcache bench --preset NAME` / `--sample-layers`: layer-sampled benchmark (sdk/layer_sampling.h).
//
// One slice run per context (plan "FFS" for GLM-4.7-Flash: dense Full, MoE Full, MoE Shared) with
// per-layer timing; every plan's full-depth prefill seconds, decode tokens/s and indexer share are
// composed from it (T = T_other + Σ_class n_class · T_class). The full 47-layer model in F32 (120 GB) does
// not fit one H200, and all layers of one class run the same kernels on the same shapes, so this is
// exact up to timing noise. Decode "with the KV cache full": the batch B of sequences of the context's
// length that the device holds next to the full model (sdk/sizing.h, F32 as the engine stores weights and
// caches today; BF16 as a what-if), decoded on the slice with B − 1 forks of one prefilled sequence.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "sdk/layer_sampling.h"
#include "sdk/model_presets.h"
#include "sdk/sizing.h"
#include "sdk/status.h"
#include "tools/cli.h"

namespace ic::cli {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
double Gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

constexpr const char* kHelp = R"(usage: indexcache bench --preset NAME [options]
       indexcache bench --sample-layers [--layers N] [options]     (the embedded synthetic model)

Layer-sampled benchmark: composed from a 3-layer slice, per-layer timed. The slice holds one layer of each
class a plan can contain (dense Full, [dense Shared,] MoE Full, MoE Shared: "FFS" for glm-4.7-flash-dsa),
with the real per-layer shapes and synthetic weights; every layer's wall time is measured (the device is
synchronised after each layer) and the full depth of each plan is composed as
  T(plan) = T_other + n_dense_full·T_dense_full + n_moe_full·T_moe_full + n_moe_shared·T_moe_shared (+ …)
with T_other = embedding + final norm + LM head, and the counts from the plan over the full depth. All
layers of a class run the same kernels on the same shapes, so this is exact up to timing noise.
Presets always run layer-sampled (the 47-layer model is 112 GiB in F32, 56.7 GiB with BF16 weights, and its
synthetic weights are generated on the host).

Per context: one prefill of random tokens, --decode-steps decode steps at batch 1, then decode with the
KV cache full: B = the sequences of that length the device holds next to the FULL model's weights (the
weights as --weight-precision, the KV cache as --attention-precision and the index-K cache as
--indexer-precision store them; all-BF16 as a labelled what-if), from sdk/sizing.h, decoded as
B − 1 forks of the prefilled sequence (capped by --max-batch and by the slice's memory: said when capped).
Reported: prefill s, decode tokens/s per request, ratios vs DSA, the indexer + top-k share, the measured
saving against the mechanism estimate (share of Shared layers × DSA indexer + top-k time; target: within
10%), tokens/s with the cache full, peak device memory; for glm-4.7-flash-dsa also the paper's Table 1
(8×H100, SGLang: another system — compare ratios, with care).

presets: )";

constexpr const char* kOptions = R"(
options:
  --preset NAME          model shapes (above); synthetic weights
  --sample-layers        without --preset: slice the embedded synthetic model (--layers, --seed)
  --plans LIST           comma-separated plans over the full depth                       [dsa,1/2,1/4]
  --contexts LIST        context lengths in tokens     [presets: 10000,60000,120000,200000; else 1024,4096]
  --decode-steps N       decode steps timed per batch size                               [8]
  --max-batch N          cap on the full-cache batch (0: skip the full-cache decode)     [256]
  --prefill-chunk N      tokens per prefill forward pass (chunked prefill; SGLang's usual size)  [8192]
  --warmup N             untimed prefill (≤ 2 chunks) + decode passes before timing      [1]
  --threads N            threads building the synthetic weights (0 = all cores)          [0]
  --seed N               weight seed                                                      [20260312]
  --device D             auto | cpu | cuda                                               [auto]
  --indexer-precision P  f32 | bf16 | fp8 (tensor cores with a BF16 / FP8 index-K cache)   [f32]
  --attention-precision P f32 | bf16 (sparse MLA attention on BF16 tensor cores on CUDA)   [f32]
  --weight-precision P   f32 | bf16 | fp8: Linear weights in BF16 or block-scaled FP8      [f32]
                         (cuBLASLt GEMMs on CUDA; see `indexcache run --help`)
  --cuda-graphs on|off   accepted for symmetry; no effect here (each layer is timed by synchronising,
                         which decode from CUDA graphs cannot do)
)";

// The paper's Table 1 (IndexCache, arXiv 2603.12201; 30B DSA model, SGLang dp 8 on 8×H100), from
// docs/shared reference: contexts 10K, 60K, 120K, 200K.
constexpr int64_t kPaperContexts[4] = {10000, 60000, 120000, 200000};
struct PaperRow {
  const char* plan;
  double prefill[4], decode[4], full_cache[4];
};
constexpr PaperRow kPaper[] = {
    {"DSA", {0.57, 3.38, 8.57, 19.5}, {73.5, 67.0, 63.0, 58.0}, {2700, 613, 341, 197}},
    {"1/2 uniform", {0.47, 2.86, 6.57, 13.7}, {84.5, 80.0, 77.0, 73.0}, {3070, 750, 431, 253}},
    {"1/4 uniform", {0.45, 2.59, 5.66, 10.7}, {91.0, 89.5, 88.0, 86.0}, {3310, 840, 498, 297}},
};
constexpr double kPaperShare[2][4] = {{0.27, 0.50, 0.68, 0.81}, {0.27, 0.31, 0.38, 0.41}};  // prefill, decode

struct PlanRun {
  NamedPlan plan;
  LayerCounts counts;
  double weights_stored = 0, per_token_stored = 0;    // full model, the engine's storage
  double weights_bf16 = 0, per_token_bf16 = 0;  // what-if
};

// One context's measured results, per plan (same order as the plans).
struct ContextResult {
  int64_t context = 0;
  std::vector<ComposedTime> prefill, decode;
  std::vector<int64_t> batch_stored, batch_bf16;      // full-cache B (after caps)
  std::vector<double> full_stored, full_bf16;         // full-cache tokens/s (0 = not run)
};

std::string ContextName(int64_t n) {
  return n % 1000 == 0 ? absl::StrCat(n / 1000, "K") : absl::StrCat(n);
}

}  // namespace

int CmdBenchSampled(int argc, char** argv) {
  std::string help = kHelp;
  for (const PresetInfo& p : ListPresets()) absl::StrAppend(&help, "\n  ", p.name, ": ", p.description);
  absl::StrAppend(&help, "\n", kOptions);
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::fputs(help.c_str(), stdout);
      return 0;
    }
  }
  const char* cmd = "bench";
  CLI_ASSIGN_OR_FAIL(args,
                     Args::Parse(argc, argv,
                                 {"preset", "plans", "contexts", "decode-steps", "max-batch", "prefill-chunk", "warmup",
                                  "threads", "seed", "device", "layers", "model", "plan-file", "indexer-precision",
                                  "attention-precision", "weight-precision", "cuda-graphs"},
                                 {"sample-layers"}),
                     cmd);
  if (args.Has("model")) {
    return Fail(cmd, InvalidArgument("--preset / --sample-layers build synthetic weights; --model is not supported "
                                     "with them (run `indexcache bench --model DIR` for a whole checkpoint)"));
  }
  if (args.Has("preset")) {  // these shape the embedded model of --sample-layers; a preset has its own
    for (const char* key : {"layers", "plan-file"}) {
      if (args.Has(key)) {
        return Fail(cmd, InvalidArgument("--", key, " applies to --sample-layers (the embedded model), not to --preset ",
                                         args.Get("preset")));
      }
    }
  }
  auto int_in = [&](const std::string& key, int64_t fallback, int64_t lo, int64_t hi) -> absl::StatusOr<int64_t> {
    IC_ASSIGN_OR_RETURN(int64_t v, args.GetInt(key, fallback));
    if (v < lo || v > hi) return InvalidArgument("--", key, " must be in [", lo, ", ", hi, "], got ", v);
    return v;
  };
  CLI_ASSIGN_OR_FAIL(steps, int_in("decode-steps", 8, 1, 4096), cmd);
  ContextOptions precisions;
  if (absl::Status s = SelectContextOptions(args, &precisions); !s.ok()) return Fail(cmd, s);
  const kernels::Precision precision = precisions.indexer_precision, attn_precision = precisions.attention_precision;
  const bool w_bf16 = precisions.weight_precision == kernels::Precision::kBF16;
  const bool w_fp8 = precisions.weight_precision == kernels::Precision::kFP8;
  const bool kv_bf16 = precisions.attention_precision == kernels::Precision::kBF16;  // the engine's KV cache
  const bool ik_bf16 = precision == kernels::Precision::kBF16, ik_fp8 = precision == kernels::Precision::kFP8;
  // The index-K cache per token relative to sizing.h's BF16 figure (2·d): F32 ×2, BF16 ×1, FP8 (d + 4) / 2d.
  CLI_ASSIGN_OR_FAIL(max_batch, int_in("max-batch", 256, 0, 65536), cmd);
  CLI_ASSIGN_OR_FAIL(chunk, int_in("prefill-chunk", 8192, 1, 1 << 20), cmd);
  CLI_ASSIGN_OR_FAIL(warmup, int_in("warmup", 1, 0, 10), cmd);
  CLI_ASSIGN_OR_FAIL(threads, int_in("threads", 0, 0, 1024), cmd);
  CLI_ASSIGN_OR_FAIL(seed, int_in("seed", 20260312, 0, std::numeric_limits<int64_t>::max()), cmd);
  CLI_ASSIGN_OR_FAIL(device, SelectDevice(args), cmd);
  {  // before minutes of synthetic weights: --device cuda without a GPU fails here
    CLI_ASSIGN_OR_FAIL(probe, kernels::CreateBackend(device), cmd);
    (void)probe;
  }

  // ---- The full model's config (only its shapes: no full-depth weights are built).
  const bool preset = args.Has("preset");
  const std::string name = preset ? args.Get("preset") : "embedded synthetic";
  ModelConfig full;
  Plan checkpoint_plan;
  if (preset) {
    CLI_ASSIGN_OR_FAIL(c, PresetConfig(args.Get("preset")), cmd);
    full = c;
    checkpoint_plan.layers.assign(full.num_hidden_layers, LayerKind::kFull);
  } else {
    CLI_ASSIGN_OR_FAIL(m, SelectModel(args), cmd);  // tiny; its config is the full depth to compose
    full = m->config;
    checkpoint_plan = m->plan;
  }
  const int N = full.num_hidden_layers;
  CLI_ASSIGN_OR_FAIL(plans, ParsePlans(args.Get("plans", "dsa,1/2,1/4"), N, &checkpoint_plan), cmd);
  std::vector<int64_t> contexts;
  const std::string default_contexts = preset ? "10000,60000,120000,200000" : "1024,4096";
  for (absl::string_view piece : absl::StrSplit(args.Get("contexts", default_contexts), ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(piece, &v) || v < 2) {
      return Fail(cmd, InvalidArgument("--contexts: '", piece, "' is not a length ≥ 2"));
    }
    if (v > full.max_position_embeddings - steps - 1) {  // not v + steps + 1: that overflows for v near 2^63
      return Fail(cmd, InvalidArgument("--contexts ", v, " + --decode-steps ", steps, " exceeds ", name,
                                       "'s max_position_embeddings ", full.max_position_embeddings));
    }
    contexts.push_back(v);
  }
  if (contexts.empty()) return Fail(cmd, InvalidArgument("--contexts: no length given"));

  // ---- Plans over the full depth: layer counts per class and full-model sizing.
  std::vector<PlanRun> runs;
  bool has_dsa = false;
  for (const NamedPlan& p : plans) has_dsa |= p.pattern.find('S') == std::string::npos;
  std::vector<NamedPlan> all = plans;
  if (!has_dsa) all.insert(all.begin(), NamedPlan{"DSA", std::string(N, 'F')});  // ratios need DSA
  // Cache bytes per token as the engine stores them: the KV cache in F32 (twice sizing.h's BF16 figure) or, with
  // --attention-precision bf16, in BF16 (sizing.h's figure), and the index-K
  // cache in the indexer's precision (F32: twice the BF16 figure; BF16; FP8: sizing.h's E4M3 + scale).
  auto stored_per_token = [&](const ModelConfig& cfg, const Plan& plan, const RankSizing& bf16) -> absl::StatusOr<double> {
    double index_k = (ik_bf16 ? 1.0 : 2.0) * static_cast<double>(bf16.index_k_bytes_per_token);
    if (ik_fp8) {
      IC_ASSIGN_OR_RETURN(RankSizing fp8, ComputeRankSizing(cfg, {.index_k = IndexKDType::kFP8, .plan = &plan}));
      index_k = static_cast<double>(fp8.index_k_bytes_per_token);
    }
    return (kv_bf16 ? 1.0 : 2.0) * static_cast<double>(bf16.kv_bytes_per_token) + index_k;
  };
  for (const NamedPlan& p : all) {
    PlanRun r;
    r.plan = p;
    CLI_ASSIGN_OR_FAIL(plan, ParsePlan(p.pattern, N), cmd);
    CLI_ASSIGN_OR_FAIL(counts, CountLayers(full, plan), cmd);
    r.counts = counts;
    // The engine today: embedding and experts replicated (one rank); weights F32, or with
    // --weight-precision bf16 the Linear weights BF16 and the embedding table (half of `embedding`) F32;
    // the KV cache as stored_per_token says.
    SizingOptions so{.weights = WeightDType::kBF16, .index_k = IndexKDType::kBF16, .kv = KvDType::kBF16,
                     .plan = &plan, .shared_experts_split_by_tp = false, .embedding_split_by_tp = false};
    CLI_ASSIGN_OR_FAIL(s, ComputeRankSizing(full, so), cmd);
    // (FP8: about one byte per Linear parameter; the LM head, kv_b and the indexer stay BF16, counted here at
    // one byte too, so this is a lower bound; the peak device memory is measured below.)
    r.weights_stored = w_fp8    ? static_cast<double>(s.weights().params) + 3.0 * static_cast<double>(s.embedding.params)
                       : w_bf16 ? 2.0 * static_cast<double>(s.weights().params) + static_cast<double>(s.embedding.params)
                                : 4.0 * static_cast<double>(s.weights().params);
    CLI_ASSIGN_OR_FAIL(stored, stored_per_token(full, plan, s), cmd);
    r.per_token_stored = stored;
    r.weights_bf16 = static_cast<double>(s.weight_bytes());
    r.per_token_bf16 = static_cast<double>(s.kv_bytes_per_token + s.index_k_bytes_per_token);
    runs.push_back(r);
  }
  size_t dsa_index = 0;  // the first all-Full plan
  for (size_t i = 0; i < runs.size(); ++i) {
    if (runs[i].plan.pattern.find('S') == std::string::npos) {
      dsa_index = i;
      break;
    }
  }

  // ---- The slice and its weights.
  const LayerSlice slice = MakeLayerSlice(full);
  const ModelConfig slice_config = SliceConfig(full, slice);
  std::string classes;
  for (size_t i = 0; i < slice.classes.size(); ++i) {
    absl::StrAppend(&classes, i ? ", " : "", "layer ", slice.source_layers[i], " as ", LayerClassName(slice.classes[i]));
  }
  std::printf("indexcache bench (layer-sampled: composed from a %zu-layer slice, per-layer timed)\n",
              slice.classes.size());
  std::printf("model: %s, %d layers (%d dense + %d MoE), hidden %d, vocab %d, indexer %d x %d, top-k %d\n", name.c_str(),
              N, full.first_k_dense_replace, N - full.first_k_dense_replace, full.hidden_size, full.vocab_size,
              full.index_n_heads, full.index_head_dim, full.index_topk);
  std::printf("slice: plan %s = %s\n", slice.plan.c_str(), classes.c_str());
  std::fflush(stdout);
  const double t_build = Now();
  CLI_ASSIGN_OR_FAIL(model, BuildFastSyntheticModel(slice_config, {.seed = static_cast<uint64_t>(seed),
                                                                   .threads = static_cast<int>(threads),
                                                                   .plan = slice.plan}),
                     cmd);
  const double slice_weight_bytes = 4.0 * static_cast<double>(SyntheticParamCount(slice_config));
  std::printf("slice weights: %.2f GiB F32 on the host (synthetic, built in %.1f s; on the device as the "
              "weights line below says)\n", Gib(slice_weight_bytes), Now() - t_build);

  // ---- Device memory before anything of ours is on it.
  kernels::MemoryInfo before;
  {
    CLI_ASSIGN_OR_FAIL(probe, kernels::CreateBackend(device), cmd);
    CLI_ASSIGN_OR_FAIL(mem, probe->GetMemoryInfo(), cmd);
    before = mem;
    std::printf("device: %s, %.2f GiB total, %.2f GiB free\n", probe->name().c_str(), Gib(mem.total_bytes),
                Gib(mem.free_bytes));
  }
  // Full-cache batch: sequences of (context + decode) tokens beside the full model's weights, keeping 5%
  // of the device for activations and workspaces.
  const double usable = 0.95 * static_cast<double>(before.total_bytes);
  auto full_batch = [&](double weights, double per_token, int64_t ctx) -> int64_t {
    const double left = usable - weights;
    return left <= 0 ? 0 : static_cast<int64_t>(left / (per_token * static_cast<double>(ctx + steps)));
  };
  // What the slice context may hold: the free memory (less the slice's weights on a GPU) less 10%.
  double slice_per_token = 0;
  {
    SizingOptions so{.weights = WeightDType::kBF16, .index_k = IndexKDType::kBF16, .kv = KvDType::kBF16};
    CLI_ASSIGN_OR_FAIL(slice_plan, ParsePlan(slice.plan, slice_config.num_hidden_layers), cmd);
    so.plan = &slice_plan;
    CLI_ASSIGN_OR_FAIL(s, ComputeRankSizing(slice_config, so), cmd);
    CLI_ASSIGN_OR_FAIL(stored, stored_per_token(slice_config, slice_plan, s), cmd);
    slice_per_token = stored;
  }
  const double slice_budget = static_cast<double>(before.free_bytes) -
                              (device == kernels::DeviceKind::kCuda ? slice_weight_bytes : 0.0) -
                              0.10 * static_cast<double>(before.total_bytes);

  // Per context: the batches to time (distinct, capped), and the slice capacity they need.
  const int block = 64;
  std::vector<std::vector<int64_t>> batches(contexts.size());
  std::vector<int64_t> slice_cap(contexts.size());
  int64_t max_tokens = 0;
  for (size_t ci = 0; ci < contexts.size(); ++ci) {
    const int64_t ctx = contexts[ci];
    const int64_t margin = steps * 8 + 2 * block;  // decode steps of every batch size, partial blocks
    const double per_seq = slice_per_token * static_cast<double>(ctx + margin);
    slice_cap[ci] = std::min<int64_t>(max_batch, slice_budget > per_seq ? static_cast<int64_t>(slice_budget / per_seq) : 1);
    std::set<int64_t> bs;
    for (const PlanRun& r : runs) {
      for (int64_t b : {full_batch(r.weights_stored, r.per_token_stored, ctx), full_batch(r.weights_bf16, r.per_token_bf16, ctx)}) {
        if (b > 0 && max_batch > 0) bs.insert(std::min(b, slice_cap[ci]));
      }
    }
    batches[ci].assign(bs.begin(), bs.end());
    const int64_t seqs = std::max<int64_t>(1, bs.empty() ? 1 : *bs.rbegin());
    max_tokens = std::max(max_tokens, seqs * ((ctx + margin + block - 1) / block * block));
  }

  ContextOptions co = precisions;
  co.device = device;
  co.max_tokens = max_tokens;
  co.block_size = block;
  co.prefill_chunk = static_cast<int>(chunk);
  co.plan = slice.plan;
  co.record_metrics = false;
  co.profile_layers = true;
  CLI_ASSIGN_OR_FAIL(ctx, Context::Create(model, co), cmd);
  std::printf("weights: %s; indexer: %s (index-K cache %s); sparse attention: %s\n",
              w_fp8 ? (device == kernels::DeviceKind::kCuda
                           ? "FP8 E4M3, 128x128 block scales (cuBLASLt block-scaled FP8 GEMMs; LM head, kv_b, indexer BF16)"
                           : "FP8 E4M3, 128x128 block scales (quantised operands, F32 sgemm on the CPU)")
              : !w_bf16                              ? "F32 (F32 GEMMs)"
              : device == kernels::DeviceKind::kCuda ? "BF16 (cuBLASLt BF16 GEMMs, F32 accumulation)"
                                                     : "BF16 (BF16-rounded operands, F32 sgemm on the CPU)",
              device != kernels::DeviceKind::kCuda ? (ik_fp8 || ik_bf16 ? "quantised q and k, F32 sgemm (CPU)" : "F32")
              : ik_fp8 ? "FP8 E4M3 tensor cores" : ik_bf16 ? "BF16 tensor cores" : "F32",
              ik_fp8 ? "FP8 + F32 scale per token" : ik_bf16 ? "BF16" : "F32",
              attn_precision != kernels::Precision::kBF16 ? "F32 (KV cache F32)"
              : device == kernels::DeviceKind::kCuda      ? "BF16 tensor cores (KV cache BF16)"
                                                           : "BF16-rounded q, k, v (CPU; KV cache BF16)");
  std::printf("slice context: %lld cache tokens (%.2f GiB of KV + index-K cache)\n",
              static_cast<long long>(max_tokens), Gib(slice_per_token * static_cast<double>(max_tokens)));
  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  std::uniform_int_distribution<int32_t> dist(0, full.vocab_size - 1);
  auto random_tokens = [&](int64_t n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& t : v) t = dist(rng);
    return v;
  };
  for (int64_t w = 0; w < warmup; ++w) {  // GEMM heuristics, workspace growth: not timed
    CLI_ASSIGN_OR_FAIL(seq, ctx->AddSequence(), cmd);
    std::vector<int32_t> p = random_tokens(std::min<int64_t>(contexts[0], 2 * chunk));
    absl::Status s = ctx->Prefill(seq, p);
    for (int i = 0; i < 2 && s.ok(); ++i) s = ctx->Decode({&seq, 1}, {&p[0], 1}, nullptr);
    if (!s.ok()) return Fail(cmd, s);
    (void)ctx->RemoveSequence(seq);
  }

  auto slice_times = [&](int64_t passes) { return SliceTimesFromProfile(slice, ctx->layer_profile(), passes); };
  std::vector<ContextResult> results;
  for (size_t ci = 0; ci < contexts.size(); ++ci) {
    const int64_t L = contexts[ci];
    ContextResult res;
    res.context = L;
    const std::vector<int32_t> prompt = random_tokens(L);
    CLI_ASSIGN_OR_FAIL(seq, ctx->AddSequence(), cmd);
    ctx->ResetLayerProfile();
    const double t0 = Now();
    if (absl::Status s = ctx->Prefill(seq, prompt); !s.ok()) {
      return Fail(cmd, absl::Status(s.code(), absl::StrCat("prefill of ", L, " tokens: ", s.message())));
    }
    const double prefill_wall = Now() - t0;
    CLI_ASSIGN_OR_FAIL(prefill_t, slice_times(1), cmd);
    const int64_t prefill_passes = ctx->layer_profile().passes;
    ctx->ResetLayerProfile();
    int32_t next = prompt[0];
    for (int64_t i = 0; i < steps; ++i) {
      if (absl::Status s = ctx->Decode({&seq, 1}, {&next, 1}, nullptr); !s.ok()) {
        return Fail(cmd, absl::Status(s.code(), absl::StrCat("decode at ", L, ": ", s.message())));
      }
    }
    CLI_ASSIGN_OR_FAIL(decode_t, slice_times(steps), cmd);
    // Full cache: forks of the prefilled sequence, then `steps` decode steps at each batch size.
    std::vector<int> seqs = {seq};
    std::map<int64_t, SliceTimes> full_t;
    const int64_t bmax = batches[ci].empty() ? 0 : batches[ci].back();
    const double t_fork = Now();
    while (static_cast<int64_t>(seqs.size()) < bmax) {
      CLI_ASSIGN_OR_FAIL(f, ctx->ForkSequence(seq), cmd);
      seqs.push_back(f);
    }
    const double fork_seconds = Now() - t_fork;
    for (int64_t b : batches[ci]) {
      std::vector<int32_t> toks(static_cast<size_t>(b), next);
      ctx->ResetLayerProfile();
      for (int64_t i = 0; i < steps; ++i) {
        absl::Status s = ctx->Decode(std::span<const int>(seqs.data(), static_cast<size_t>(b)), toks, nullptr);
        if (!s.ok()) {
          return Fail(cmd, absl::Status(s.code(), absl::StrCat("decode of ", b, " sequences at ", L, ": ", s.message())));
        }
      }
      CLI_ASSIGN_OR_FAIL(t, slice_times(steps), cmd);
      full_t[b] = t;
    }
    CLI_ASSIGN_OR_FAIL(mem_after, ctx->backend().GetMemoryInfo(), cmd);
    for (int s : seqs) (void)ctx->RemoveSequence(s);

    // ---- Compose every plan.
    for (const PlanRun& r : runs) {
      CLI_ASSIGN_OR_FAIL(p, Compose(prefill_t, r.counts), cmd);
      CLI_ASSIGN_OR_FAIL(d, Compose(decode_t, r.counts), cmd);
      res.prefill.push_back(p);
      res.decode.push_back(d);
      for (int dtype = 0; dtype < 2; ++dtype) {
        const int64_t want = dtype == 0 ? full_batch(r.weights_stored, r.per_token_stored, L)
                                        : full_batch(r.weights_bf16, r.per_token_bf16, L);
        const int64_t b = want > 0 && max_batch > 0 ? std::min(want, slice_cap[ci]) : 0;
        double tps = 0;
        if (b > 0) {
          CLI_ASSIGN_OR_FAIL(step, Compose(full_t[b], r.counts), cmd);
          tps = static_cast<double>(b) / step.seconds;
        }
        (dtype == 0 ? res.batch_stored : res.batch_bf16).push_back(want);
        (dtype == 0 ? res.full_stored : res.full_bf16).push_back(tps);
        if (b > 0 && b < want) {
          std::printf("  note: %s at %s, %s: full-cache batch %lld capped to %lld (--max-batch %lld / slice memory)\n",
                      r.plan.name.c_str(), ContextName(L).c_str(), dtype == 0 ? "as stored" : "all-BF16",
                      static_cast<long long>(want), static_cast<long long>(b), static_cast<long long>(max_batch));
        }
      }
    }

    // ---- Print this context.
    const double used = static_cast<double>(mem_after.used_bytes()) - static_cast<double>(before.used_bytes());
    struct rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    std::printf("\ncontext %lld (%s): slice prefill %.3f s wall in %lld pass(es) (slice layers %.3f s + other %.3f s); "
                "%lld forks in %.2f s\n",
                static_cast<long long>(L), ContextName(L).c_str(), prefill_wall, static_cast<long long>(prefill_passes),
                prefill_t.layer[0] + prefill_t.layer[1] + prefill_t.layer[2] + prefill_t.layer[3], prefill_t.other,
                static_cast<long long>(seqs.size() - 1), fork_seconds);
    std::printf("  peak memory of the slice run: %.2f GiB %s (in use after the run less before the context; "
                "buffers only grow); process peak RSS %.2f GiB\n",
                Gib(std::max(used, 0.0)), device == kernels::DeviceKind::kCuda ? "device" : "host",
                Gib(static_cast<double>(ru.ru_maxrss) * 1024.0));
    const PlanRun& d0 = runs[dsa_index];
    std::printf("  full model at this context (estimate, sizing.h): as stored %.2f GiB weights + %.2f GiB cache per "
                "sequence; all-BF16 %.2f + %.2f GiB\n",
                Gib(d0.weights_stored), Gib(d0.per_token_stored * L), Gib(d0.weights_bf16), Gib(d0.per_token_bf16 * L));
    std::printf("  %-13s %10s %6s %11s %6s %8s %8s  %-28s %-28s\n", "plan", "prefill s", "xDSA", "decode tok/s",
                "xDSA", "ix share", "ix share", "saved prefill s", "saved decode ms");
    std::printf("  %-13s %10s %6s %11s %6s %8s %8s  %-28s %-28s\n", "", "", "", "per request", "", "prefill",
                "decode", "measured / est. (err)", "measured / est. (err)");
    const ComposedTime& pd = res.prefill[dsa_index];
    const ComposedTime& dd = res.decode[dsa_index];
    for (size_t i = 0; i < runs.size(); ++i) {
      const ComposedTime& p = res.prefill[i];
      const ComposedTime& d = res.decode[i];
      std::string sp = "-", sd = "-";
      if (runs[i].counts.shared() > 0) {
        const MechanismCheck mp = CheckMechanism(pd, p, runs[i].counts);
        const MechanismCheck md = CheckMechanism(dd, d, runs[i].counts);
        sp = absl::StrFormat("%.3f / %.3f (%.0f%% %s)", mp.saved, mp.estimate, 100 * mp.relative_error(),
                             mp.within(0.10) ? "ok" : "MISS");
        sd = absl::StrFormat("%.2f / %.2f (%.0f%% %s)", 1e3 * md.saved, 1e3 * md.estimate, 100 * md.relative_error(),
                             md.within(0.10) ? "ok" : "MISS");
      }
      std::printf("  %-13s %10.3f %5.2fx %11.1f %5.2fx %7.1f%% %7.1f%%  %-28s %-28s\n", runs[i].plan.name.c_str(),
                  p.seconds, pd.seconds / p.seconds, 1.0 / d.seconds, dd.seconds / d.seconds,
                  100 * p.indexer_seconds / p.seconds, 100 * d.indexer_seconds / d.seconds, sp.c_str(), sd.c_str());
    }
    std::printf("  KV cache full (one device of %.1f GiB; B = sequences of %lld + %lld tokens beside the full model):\n",
                Gib(before.total_bytes), static_cast<long long>(L), static_cast<long long>(steps));
    // "as stored": the weights in --weight-precision, the KV cache in --attention-precision, the index-K cache in
    // the indexer's precision.
    std::printf("  %-13s %18s %10s %6s   %-s\n", "plan", "as stored: B (timed)", "tok/s", "xDSA",
                "BF16 what-if: B (timed), tok/s, xDSA");
    for (size_t i = 0; i < runs.size(); ++i) {
      auto ratio = [&](const std::vector<double>& v) {
        return v[dsa_index] > 0 && v[i] > 0 ? absl::StrFormat("%5.2fx", v[i] / v[dsa_index]) : std::string("    -");
      };
      auto batch = [&](int64_t want) {
        const int64_t b = want > 0 && max_batch > 0 ? std::min(want, slice_cap[ci]) : 0;
        return b == want ? absl::StrCat(want) : absl::StrCat(want, " (", b, ")");
      };
      std::printf("  %-13s %18s %10.1f %6s   %s, %.1f, %s\n", runs[i].plan.name.c_str(),
                  batch(res.batch_stored[i]).c_str(), res.full_stored[i], ratio(res.full_stored).c_str(),
                  batch(res.batch_bf16[i]).c_str(), res.full_bf16[i], ratio(res.full_bf16).c_str());
    }
    if (res.batch_stored[dsa_index] == 0) {
      std::printf("  (B = 0: the full model's weights as stored leave no room for one sequence of this length)\n");
    }
    std::fflush(stdout);
    results.push_back(std::move(res));
  }

  // ---- Beside the paper (its model only).
  if (name != "glm-4.7-flash-dsa") {
    std::printf("\n(the paper's Table 1 is for --preset glm-4.7-flash-dsa; not printed for %s)\n", name.c_str());
    return 0;
  }
  bool any_paper_context = false;
  for (const ContextResult& res : results) {
    for (int64_t pc : kPaperContexts) any_paper_context |= pc == res.context;
  }
  if (!any_paper_context) {
    std::printf("\n(the paper's Table 1 has contexts 10000, 60000, 120000 and 200000; none was run)\n");
    return 0;
  }
  std::printf("\nAgainst the paper's Table 1 (30B DSA model; SGLang, dp 8 on 8xH100, BF16/FP8 — another system: "
              "compare ratios, with care;\nours: one device, %s weights and GEMMs, layer-sampled composition). Paper at 200K: prefill "
              "19.5 -> 10.7 s (1.82x), decode 58 -> 86 tok/s (1.48x).\n", w_fp8 ? "FP8" : w_bf16 ? "BF16" : "F32");
  std::printf("%-24s %-12s %8s %12s %7s %12s %7s\n", "metric", "plan", "context", "ours", "xDSA", "paper", "xDSA");
  for (const ContextResult& res : results) {
    int k = -1;
    for (int j = 0; j < 4; ++j) if (kPaperContexts[j] == res.context) k = j;
    if (k < 0) continue;
    for (size_t i = 0; i < runs.size(); ++i) {
      const PaperRow* paper = nullptr;
      for (const PaperRow& r : kPaper) if (runs[i].plan.name == r.plan) paper = &r;
      if (paper == nullptr) continue;
      const double ours[3] = {res.prefill[i].seconds, 1.0 / res.decode[i].seconds, res.full_stored[i]};
      const double ours_dsa[3] = {res.prefill[dsa_index].seconds, 1.0 / res.decode[dsa_index].seconds,
                                  res.full_stored[dsa_index]};
      const double theirs[3] = {paper->prefill[k], paper->decode[k], paper->full_cache[k]};
      const double theirs_dsa[3] = {kPaper[0].prefill[k], kPaper[0].decode[k], kPaper[0].full_cache[k]};
      const char* metric[3] = {"prefill s", "decode tok/s/request", "full-cache tok/s (*)"};
      for (int m = 0; m < 3; ++m) {
        const double r_ours = m == 0 ? ours_dsa[m] / ours[m] : (ours_dsa[m] > 0 ? ours[m] / ours_dsa[m] : 0);
        const double r_paper = m == 0 ? theirs_dsa[m] / theirs[m] : theirs[m] / theirs_dsa[m];
        std::printf("%-24s %-12s %8s %12.3f %6.2fx %12.2f %6.2fx\n", metric[m], runs[i].plan.name.c_str(),
                    ContextName(res.context).c_str(), ours[m], r_ours, theirs[m], r_paper);
      }
    }
    std::printf("%-24s %-12s %8s %11.0f%% %7s %11.0f%%\n", "indexer share prefill", "DSA", ContextName(res.context).c_str(),
                100 * res.prefill[dsa_index].indexer_seconds / res.prefill[dsa_index].seconds, "",
                100 * kPaperShare[0][k]);
    std::printf("%-24s %-12s %8s %11.0f%% %7s %11.0f%%\n", "indexer share decode", "DSA", ContextName(res.context).c_str(),
                100 * res.decode[dsa_index].indexer_seconds / res.decode[dsa_index].seconds, "", 100 * kPaperShare[1][k]);
  }
  std::printf("(*) full-cache tokens/s: ours on one device with %s weights and a %s KV cache; the paper's over 8 "
              "GPUs.\n", w_fp8 ? "FP8" : w_bf16 ? "BF16" : "F32", kv_bf16 ? "BF16" : "F32");
  return 0;
}

}  // namespace ic::cli
