// `indexcache info | run | eval | bench`.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "parallel/inprocess_communicator.h"
#include "parallel/nccl_communicator.h"
#include "parallel/process_groups.h"
#include "sdk/metrics.h"
#include "sdk/sizing.h"
#include "sdk/selection_report.h"
#include "sdk/status.h"
#include "tools/cli.h"
#include "tools/heatmap_png.h"

namespace ic::cli {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool WantsHelp(int argc, char** argv, const char* help) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::fputs(help, stdout);
      return true;
    }
  }
  return false;
}

constexpr const char* kModelOptions = R"(  --model DIR            HF checkpoint directory (config.json + *.safetensors); default: the embedded
                         synthetic model (--seed, --layers)
  --plan-file PATH       plan file overriding the checkpoint's plan keys
  --device D             auto | cpu | cuda                                                 [auto]
)";

const std::vector<std::string> kModelKeys = {"model", "plan-file", "device", "seed", "layers"};

constexpr const char* kContextOptionHelp =
    "  --indexer-precision P  f32 | bf16 | fp8: the indexer's arithmetic (tensor cores on CUDA; fp8: E4M3\n"
    "                         with per-token scales, DeepSeek-V3.2's)                                [f32]\n"
    "  --attention-precision P f32 | bf16: attention's arithmetic (bf16: sparse MLA on tensor cores)  [f32]\n"
    "  --weight-precision P   f32 | bf16 | fp8: every Linear weight in BF16 (BF16 tensor-core GEMMs),  [f32]\n"
    "                         or attention and MLP / expert weights in DeepSeek's block-scaled FP8\n"
    "                         (128 x 128 scales; FP8 GEMMs on CUDA, emulated on the CPU; the LM head,\n"
    "                         indexer, MLA kv_b and weights whose in-features are not a multiple of 16\n"
    "                         stay BF16)\n"
    "  --cuda-graphs on|off   replay decode steps from CUDA graphs, one per batch shape (CUDA only)  [on]\n";

// Token counts: at most 2^30, so that sums such as prompt + max-new + 64 (cache slots, int32 positions)
// cannot overflow; the context then fails with a clear out-of-memory error when they do not fit.
constexpr int64_t kMaxTokens = int64_t{1} << 30;

// --key as an integer in [lo, hi], naming the option and the value otherwise.
absl::StatusOr<int64_t> GetIntIn(const Args& args, const std::string& key, int64_t fallback, int64_t lo, int64_t hi) {
  IC_ASSIGN_OR_RETURN(int64_t v, args.GetInt(key, fallback));
  if (v < lo || v > hi) return InvalidArgument("--", key, " must be in [", lo, ", ", hi, "], got ", v);
  return v;
}

std::vector<std::string> With(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

int64_t ParamCount(const Model& m) {
  int64_t n = static_cast<int64_t>(m.weights.embed_tokens.data.size() + m.weights.lm_head.data.size() +
                                   m.weights.final_norm.data.size());
  auto add = [&](const HostTensor& t) { n += static_cast<int64_t>(t.data.size()); };
  for (const LayerWeights& L : m.weights.layers) {
    for (const HostTensor* t : {&L.input_norm, &L.post_attention_norm, &L.q_proj, &L.k_proj, &L.v_proj,
                                &L.q_a_proj, &L.q_a_norm, &L.q_b_proj, &L.kv_a_proj, &L.kv_a_norm, &L.kv_b_proj,
                                &L.o_proj, &L.indexer.wq, &L.indexer.wk, &L.indexer.k_norm_weight,
                                &L.indexer.k_norm_bias, &L.indexer.weights_proj, &L.mlp.gate, &L.mlp.up,
                                &L.mlp.down, &L.moe.router, &L.moe.correction_bias}) {
      add(*t);
    }
    for (const MlpWeights& e : L.moe.experts) {
      add(e.gate);
      add(e.up);
      add(e.down);
    }
    if (L.moe.shared) {
      add(L.moe.shared->gate);
      add(L.moe.shared->up);
      add(L.moe.shared->down);
    }
  }
  return n;
}


absl::StatusOr<std::vector<int>> ParseIntList(const std::string& key, const std::string& list) {
  std::vector<int> out;
  for (absl::string_view piece : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    int v = 0;
    if (!absl::SimpleAtoi(piece, &v) || v < 1 || v > 65536) {
      return InvalidArgument("--", key, ": '", piece, "' is not a size in [1, 65536]");
    }
    out.push_back(v);
  }
  if (out.empty()) return InvalidArgument("--", key, " is empty");
  return out;
}

// `info --tp … --ep …`: the sizing table of sdk/sizing.h for every TP × EP layout.
int PrintSizing(const Args& args, const ModelConfig& c, const Plan& plan) {
  CLI_ASSIGN_OR_FAIL(tps, ParseIntList("tp", args.Get("tp", "1")), "info");
  CLI_ASSIGN_OR_FAIL(eps, ParseIntList("ep", args.Get("ep", "1")), "info");
  CLI_ASSIGN_OR_FAIL(tokens, args.GetInt("context-tokens", 200000), "info");
  if (tokens < 0) return Fail("info", InvalidArgument("--context-tokens must be ≥ 0"));
  SizingOptions o;
  o.context_tokens = tokens;
  const std::string w = args.Get("weights", "fp8"), ik = args.Get("index-k", "fp8");
  if (w != "bf16" && w != "fp8") return Fail("info", InvalidArgument("--weights must be bf16 or fp8, got '", w, "'"));
  if (ik != "bf16" && ik != "fp8") return Fail("info", InvalidArgument("--index-k must be bf16 or fp8, got '", ik, "'"));
  o.weights = w == "fp8" ? WeightDType::kFP8 : WeightDType::kBF16;
  o.index_k = ik == "fp8" ? IndexKDType::kFP8 : IndexKDType::kBF16;
  o.plan = &plan;
  std::vector<std::pair<int, int>> layouts;
  for (int ep : eps) {
    for (int tp : tps) layouts.emplace_back(tp, ep);
  }
  std::printf("\nper-rank memory, plan %s (%d Full layers), %s weights, %s index-K, %lld KV tokens per rank\n",
              plan.ToString().c_str(), plan.NumFull(), w.c_str(), ik.c_str(), static_cast<long long>(tokens));
  std::printf("%s", FormatSizingTable(c, layouts, o).c_str());
  return 0;
}

// `info --config FILE`: sizing from config.json alone (a 671B checkpoint need not be on disk).
int InfoSizing(const Args& args) {
  std::ifstream f(args.Get("config"));
  if (!f) return Fail("info", absl::NotFoundError(absl::StrCat("cannot open ", args.Get("config"))));
  std::stringstream text;
  text << f.rdbuf();
  CLI_ASSIGN_OR_FAIL(c, ParseModelConfig(text.str()), "info");
  CLI_ASSIGN_OR_FAIL(plan, PlanFromConfig(c), "info");
  if (args.Has("plan")) {
    Model m;
    m.config = c;
    m.plan = plan;
    CLI_ASSIGN_OR_FAIL(plans, ParsePlans(args.Get("plan"), m), "info");
    CLI_ASSIGN_OR_FAIL(p, ParsePlan(plans[0].pattern, c.num_hidden_layers), "info");
    plan = p;
  }
  std::printf("config         %s: %s, %d layers, hidden %d, %d heads, %d routed experts\n", args.Get("config").c_str(),
              std::string(ArchitectureName(c.arch)).c_str(), c.num_hidden_layers, c.hidden_size,
              c.num_attention_heads, c.n_routed_experts);
  return PrintSizing(args, c, plan);
}

}  // namespace

int CmdInfo(int argc, char** argv) {
  const std::string help = absl::StrCat(
      "usage: indexcache info [options]\n\nModel and plan summary.\n\noptions:\n", kModelOptions,
      "  --plan P               show this plan instead of the checkpoint's (1/4, FSSS…, file:PATH)\n"
      "  --config FILE          size a deployment from a config.json alone (no weights needed)\n"
      "  --tp LIST, --ep LIST   per-rank weight and cache bytes for each TP × EP layout, e.g. --tp 1,2,4,8\n"
      "                         --ep 8,16,32 (sdk/sizing.h states the sharding rules)\n"
      "  --context-tokens N     KV cache tokens per rank for the sizing table                [200000]\n"
      "  --weights bf16|fp8     weight dtype for sizing (fp8: 128×128 block scales)          [fp8]\n"
      "  --index-k bf16|fp8     index-K cache dtype for sizing (fp8: d_I + 4 B per token)    [fp8]\n");
  if (WantsHelp(argc, argv, help.c_str())) return 0;
  CLI_ASSIGN_OR_FAIL(args, Args::Parse(argc, argv, With(kModelKeys, {"plan", "config", "tp", "ep", "context-tokens",
                                                                     "weights", "index-k"}), {}),
                     "info");
  if (args.Has("config")) return InfoSizing(args);
  CLI_ASSIGN_OR_FAIL(model, SelectModel(args), "info");
  CLI_ASSIGN_OR_FAIL(device, SelectDevice(args), "info");  // accepted by every command: reject a bad value
  (void)device;
  const ModelConfig& c = model->config;
  Plan plan = model->plan;
  if (args.Has("plan")) {
    CLI_ASSIGN_OR_FAIL(plans, ParsePlans(args.Get("plan"), *model), "info");
    CLI_ASSIGN_OR_FAIL(p, ParsePlan(plans[0].pattern, c.num_hidden_layers), "info");
    plan = p;
    plan.source = plans[0].name;
  }
  std::printf("model          %s\n", model->path.empty() ? "(embedded synthetic)" : model->path.c_str());
  std::printf("architecture   %s (model_type %s)\n", std::string(ArchitectureName(c.arch)).c_str(), c.model_type.c_str());
  std::printf("parameters     %.2f M (F32 on the host)\n", ParamCount(*model) / 1e6);
  std::printf("layers         %d, hidden %d, vocab %d, max positions %d\n", c.num_hidden_layers, c.hidden_size,
              c.vocab_size, c.max_position_embeddings);
  if (c.mla) {
    std::printf("attention      MLA: %d heads, q_lora %d, kv_lora %d, qk_nope %d, qk_rope %d, v %d\n",
                c.num_attention_heads, c.q_lora_rank, c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim,
                c.v_head_dim);
  } else {
    std::printf("attention      GQA: %d heads, %d KV heads, head dim %d\n", c.num_attention_heads,
                c.num_key_value_heads, c.head_dim);
  }
  std::printf("rope           %s, theta %g, factor %g\n", c.rope.type.c_str(), c.rope.theta, c.rope.factor);
  int moe_layers = static_cast<int>(std::count(c.moe_layer.begin(), c.moe_layer.end(), true));
  if (moe_layers > 0) {
    std::printf("MoE            %d layers: %d routed experts (top %d, %d groups, top %d groups), %d shared, "
                "intermediate %d\n",
                moe_layers, c.n_routed_experts, c.num_experts_per_tok, c.n_group, c.topk_group, c.n_shared_experts,
                c.moe_intermediate_size);
  }
  if (!c.has_indexer) {
    std::printf("indexer        none (dense causal attention)\n");
    return 0;
  }
  std::printf("indexer        %d heads × %d, top-k %d, rope dims %d (%s)\n", c.index_n_heads, c.index_head_dim,
              c.index_topk, c.index_rope_head_dim, c.indexer_rope_interleave ? "interleaved" : "NeoX");
  std::printf("plan           %s  (%d Full / %d layers; source: %s)\n", plan.ToString().c_str(), plan.NumFull(),
              plan.num_layers(), plan.source.c_str());
  int missing = 0;
  for (int i = 0; i < c.num_hidden_layers; ++i) missing += !model->weights.layers[i].indexer.missing.empty();
  std::printf("indexer weights present in %d of %d layers\n", c.num_hidden_layers - missing, c.num_hidden_layers);
  const int kv = c.mla ? c.kv_lora_rank + c.qk_rope_head_dim : 2 * c.num_key_value_heads * c.head_dim;
  std::printf("cache / token  KV %d values × %d layers; index-K %d values × %d Full layers "
              "(bf16: %d B, fp8+scale: %d B per Full layer)\n",
              kv, c.num_hidden_layers, c.index_head_dim, plan.NumFull(), 2 * c.index_head_dim, c.index_head_dim + 4);
  absl::Status ok = CheckIndexersForPlan(*model, plan);
  if (!ok.ok()) std::printf("WARNING        %s\n", std::string(ok.message()).c_str());
  if (args.Has("tp") || args.Has("ep")) return PrintSizing(args, c, plan);
  return 0;
}

int CmdRun(int argc, char** argv) {
  const std::string help = absl::StrCat(
      "usage: indexcache run --tokens 1,2,3 [options]\n\nGreedy generation from token ids; prints the new ids.\n\n"
      "options:\n", kModelOptions, kContextOptionHelp,
      "  --tokens LIST          prompt token ids, comma-separated\n"
      "  --token-file PATH      prompt from a token file (little-endian uint32)\n"
      "  --max-new N            tokens to generate                                         [16]\n"
      "  --plan P               IndexCache plan (dsa, 1/2, 1/4, 1/8, FSSS…, file:PATH)     [checkpoint]\n"
      "  --stop-at-eos          stop at the model's eos_token_id\n");
  if (WantsHelp(argc, argv, help.c_str())) return 0;
  CLI_ASSIGN_OR_FAIL(args, Args::Parse(argc, argv, With(With(kModelKeys, kContextOptionKeys), {"tokens", "token-file", "max-new", "plan"}),
                                       {"stop-at-eos"}), "run");
  CLI_ASSIGN_OR_FAIL(model, SelectModel(args), "run");
  CLI_ASSIGN_OR_FAIL(device, SelectDevice(args), "run");
  const ModelConfig& c = model->config;
  std::vector<int32_t> prompt;
  if (args.Has("token-file")) {
    CLI_ASSIGN_OR_FAIL(t, ReadTokenFile(args.Get("token-file"), c.vocab_size), "run");
    prompt = t;
  } else if (args.Has("tokens")) {
    CLI_ASSIGN_OR_FAIL(t, ParseTokenList(args.Get("tokens"), c.vocab_size), "run");
    prompt = t;
  } else {
    return Fail("run", InvalidArgument("give the prompt with --tokens or --token-file"));
  }
  CLI_ASSIGN_OR_FAIL(max_new, GetIntIn(args, "max-new", 16, 1, kMaxTokens), "run");
  std::string pattern;
  if (args.Has("plan")) {
    CLI_ASSIGN_OR_FAIL(plans, ParsePlans(args.Get("plan"), *model), "run");
    pattern = plans[0].pattern;
  }
  ContextOptions co{.device = device, .max_tokens = static_cast<int64_t>(prompt.size()) + max_new + 64, .plan = pattern};
  if (absl::Status s = SelectContextOptions(args, &co); !s.ok()) return Fail("run", s);
  CLI_ASSIGN_OR_FAIL(ctx, Context::Create(model, co), "run");
  CLI_ASSIGN_OR_FAIL(seq, ctx->AddSequence(), "run");
  std::vector<float> logits(c.vocab_size);
  const double t0 = Now();
  absl::Status s = ctx->Prefill(seq, prompt, logits.data());
  if (!s.ok()) return Fail("run", s);
  const double t1 = Now();
  std::vector<int32_t> out;
  for (int64_t i = 0; i < max_new; ++i) {
    const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(next);
    if (args.Has("stop-at-eos") && next == c.eos_token_id) break;
    if (i + 1 < max_new) {
      s = ctx->Decode({&seq, 1}, {&next, 1}, logits.data());
      if (!s.ok()) return Fail("run", s);
    }
  }
  const double t2 = Now();
  for (size_t i = 0; i < out.size(); ++i) std::printf("%s%d", i ? "," : "", out[i]);
  std::printf("\n");
  std::fflush(stdout);
  std::fprintf(stderr,
               "plan %s; %s; prefill %zu tokens in %s; %zu tokens generated at %.1f tokens/s\n",
               ctx->plan().ToString().c_str(), DescribePrecisions(co, c.has_indexer).c_str(), prompt.size(),
               FormatSeconds(t1 - t0).c_str(), out.size(), out.size() > 1 ? (out.size() - 1) / (t2 - t1) : 0.0);
  return 0;
}

// eval --report: recall per layer and plan, overlap of the first plan; tables to stdout and DIR.
absl::Status WriteSelectionReport(std::shared_ptr<const Model> model, const std::vector<std::vector<int32_t>>& windows,
                                  const std::vector<NamedPlan>& plans, kernels::DeviceKind device,
                                  const ContextOptions& precisions, const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  const int L = model->config.num_hidden_layers;
  std::vector<SelectionReport> reports;
  for (const NamedPlan& p : plans) {
    IC_ASSIGN_OR_RETURN(SelectionReport r, MeasureSelection(model, windows, p.pattern, device, precisions));
    reports.push_back(std::move(r));
  }
  std::string recall = "layer";
  for (const NamedPlan& p : plans) absl::StrAppend(&recall, "\t", p.name);
  recall += "\n";
  for (int l = 0; l < L; ++l) {
    absl::StrAppend(&recall, l);
    for (const SelectionReport& r : reports) absl::StrAppend(&recall, "\t", absl::StrFormat("%.4f", r.recall[l]));
    recall += "\n";
  }
  std::string overlap = "layer";
  for (int j = 0; j < L; ++j) absl::StrAppend(&overlap, "\t", j);
  overlap += "\n";
  for (int i = 0; i < L; ++i) {
    absl::StrAppend(&overlap, i);
    for (int j = 0; j < L; ++j) {
      absl::StrAppend(&overlap, "\t", absl::StrFormat("%.3f", reports[0].overlap[static_cast<size_t>(i) * L + j]));
    }
    overlap += "\n";
  }
  for (const auto& [name, text] : {std::pair{std::string("recall.tsv"), recall}, std::pair{std::string("overlap.tsv"), overlap}}) {
    if (std::filesystem::exists(dir + "/" + name, ec) && !std::filesystem::is_regular_file(dir + "/" + name, ec)) {
      return InvalidArgument(dir, "/", name, " exists and is not a regular file");
    }
    std::ofstream f(dir + "/" + name, std::ios::trunc);
    f << text;
    f.close();
    if (!f) return absl::DataLossError(absl::StrCat(dir, "/", name, ": write failed"));
  }
  IC_RETURN_IF_ERROR(WriteHeatmapPng(dir + "/overlap.png", reports[0].overlap, L));
  std::printf("\nrecall of each layer's dense attention mass inside the keys it attends to (%lld rows with more "
              "than index_topk keys, %zu window(s)):\n%s",
              static_cast<long long>(reports[0].rows), windows.size(), recall.c_str());
  double adjacent = 0;
  for (int i = 0; i + 1 < L; ++i) adjacent += reports[0].overlap[static_cast<size_t>(i) * L + i + 1] / (L - 1);
  std::printf("top-k overlap between layers, plan %s: adjacent layers %.3f (mean), layer 0 vs last %.3f; matrix in "
              "%s/overlap.tsv, heatmap %s/overlap.png\n",
              plans[0].name.c_str(), adjacent, reports[0].overlap[L - 1], dir.c_str(), dir.c_str());
  return absl::OkStatus();
}

int CmdEval(int argc, char** argv) {
  const std::string help = absl::StrCat(
      "usage: indexcache eval --token-file PATH [options]\n\n"
      "Next-token LM loss and perplexity of one or several plans on a token file, in windows of --context\n"
      "tokens (each window a fresh sequence).\n\noptions:\n", kModelOptions, kContextOptionHelp,
      "  --token-file PATH      little-endian uint32 token ids\n"
      "  --plans LIST           comma-separated: dsa, checkpoint, 1/2, 1/4, 1/8, FSSS…, file:PATH  [dsa,1/2,1/4]\n"
      "  --context N            tokens per window                                          [1024]\n"
      "  --max-tokens N         evaluate at most N tokens of the file (0 = all)            [0]\n"
      "  --report DIR           also measure, on the first --report-windows windows, each layer's recall of\n"
      "                         its dense attention mass inside the keys it attends to (per plan), and the\n"
      "                         pairwise top-k overlap between layers for the first plan (put dsa first for\n"
      "                         the paper's Appendix A study); writes DIR/recall.tsv, DIR/overlap.tsv and\n"
      "                         DIR/overlap.png (sdk/selection_report.h)\n"
      "  --report-windows N     windows used by --report                                   [2]\n");
  if (WantsHelp(argc, argv, help.c_str())) return 0;
  CLI_ASSIGN_OR_FAIL(args, Args::Parse(argc, argv, With(With(kModelKeys, kContextOptionKeys), {"token-file", "plans", "context", "max-tokens",
                                                                                          "report", "report-windows"}), {}),
                     "eval");
  CLI_ASSIGN_OR_FAIL(model, SelectModel(args), "eval");
  CLI_ASSIGN_OR_FAIL(device, SelectDevice(args), "eval");
  if (!args.Has("token-file")) return Fail("eval", InvalidArgument("--token-file is required"));
  CLI_ASSIGN_OR_FAIL(tokens, ReadTokenFile(args.Get("token-file"), model->config.vocab_size), "eval");
  ContextOptions precisions;
  if (absl::Status s = SelectContextOptions(args, &precisions); !s.ok()) return Fail("eval", s);
  CLI_ASSIGN_OR_FAIL(plans, ParsePlans(args.Get("plans", "dsa,1/2,1/4"), *model), "eval");
  CLI_ASSIGN_OR_FAIL(context, GetIntIn(args, "context", 1024, 2, kMaxTokens), "eval");
  CLI_ASSIGN_OR_FAIL(max_tokens, GetIntIn(args, "max-tokens", 0, 0, std::numeric_limits<int64_t>::max()), "eval");
  if (max_tokens > 0 && static_cast<int64_t>(tokens.size()) > max_tokens) tokens.resize(max_tokens);
  std::vector<std::span<const int32_t>> windows;
  for (size_t off = 0; off + 1 < tokens.size(); off += context) {
    windows.push_back(std::span(tokens).subspan(off, std::min<size_t>(context, tokens.size() - off)));
  }
  if (windows.empty()) {  // else a table of loss 0, perplexity 1 over 0 tokens
    return Fail("eval", InvalidArgument("nothing to evaluate: ", tokens.size(), " token(s); the loss needs at least 2"));
  }
  // --report: every check before the evaluation, so a bad option does not cost the whole run.
  int64_t report_windows = 0;
  if (args.Has("report") || args.Has("report-windows")) {
    if (!args.Has("report")) return Fail("eval", InvalidArgument("--report-windows needs --report DIR"));
    CLI_ASSIGN_OR_FAIL(rw, GetIntIn(args, "report-windows", 2, 1, 1 << 20), "eval");
    report_windows = rw;
    if (!model->config.has_indexer) {
      return Fail("eval", InvalidArgument("--report: the model has no indexer (dense mode): no selection to measure"));
    }
    if (context <= model->config.index_topk) {
      return Fail("eval", InvalidArgument("--report: --context ", context, " is not longer than index_topk = ",
                                          model->config.index_topk, ": every key is selected, nothing to measure"));
    }
    const std::string dir = args.Get("report");
    std::error_code ec;
    if (dir.empty()) return Fail("eval", InvalidArgument("--report: empty directory name"));
    if (std::filesystem::exists(dir, ec) && !std::filesystem::is_directory(dir, ec)) {
      return Fail("eval", InvalidArgument("--report ", dir, ": exists and is not a directory"));
    }
    std::filesystem::create_directories(dir, ec);
    if (ec || access(dir.c_str(), W_OK) != 0) {
      return Fail("eval", absl::PermissionDeniedError(absl::StrCat("--report ", dir, ": cannot create or write")));
    }
  }
  std::fprintf(stderr, "eval: %s\n", DescribePrecisions(precisions, model->config.has_indexer).c_str());
  std::printf("%-22s %-*s %10s %12s %10s\n", "plan", model->config.num_hidden_layers, "pattern", "loss", "perplexity",
              "tokens");
  for (const NamedPlan& p : plans) {
    ContextOptions co = precisions;
    co.device = device;
    co.max_tokens = context + 64;
    co.plan = p.pattern;
    CLI_ASSIGN_OR_FAIL(ctx, Context::Create(model, co), "eval");
    double sum = 0;
    int64_t n = 0;
    Progress progress("eval " + p.name, static_cast<int64_t>(windows.size()));
    for (size_t w = 0; w < windows.size(); ++w) {
      if (windows[w].size() < 2) continue;
      CLI_ASSIGN_OR_FAIL(r, ctx->EvalLoss(windows[w]), "eval");
      sum += r.mean_loss * r.tokens;
      n += r.tokens;
      progress.Update(static_cast<int64_t>(w + 1));
    }
    progress.Finish();
    const double loss = n ? sum / n : 0;
    std::printf("%-22s %s %10.5f %12.6g %10lld\n", p.name.c_str(), p.pattern.c_str(), loss, std::exp(loss),
                static_cast<long long>(n));
    std::fflush(stdout);
  }
  if (args.Has("report")) {
    std::vector<std::vector<int32_t>> sample;
    for (size_t w = 0; w < windows.size() && static_cast<int64_t>(sample.size()) < report_windows; ++w) {
      sample.emplace_back(windows[w].begin(), windows[w].end());
    }
    if (absl::Status s = WriteSelectionReport(model, sample, plans, device, precisions,
                                                  args.Get("report")); !s.ok()) {
      return Fail("eval", s);
    }
  }
  return 0;
}

// Runs fn(rank, shard group, expert group) on `world` threads, rank r on GPU r (NCCL) or on the CPU
// (in-process group); the groups follow the C ABI's layout (parallel/process_groups.h). A rank that fails
// aborts its groups, so the others return instead of waiting out the timeout; the first error is returned.
absl::Status RunRanks(int world, int64_t tp, int64_t ep, kernels::DeviceKind device,
                      const std::function<absl::Status(int, parallel::Communicator*, parallel::Communicator*)>& fn) {
  parallel::NcclOptions options;
  options.common.timeout = absl::Seconds(600);
  std::vector<std::unique_ptr<parallel::Communicator>> comms;
  if (device == kernels::DeviceKind::kCuda) {
    IC_ASSIGN_OR_RETURN(comms, parallel::NcclLocalGroup(world, options));
  } else {
    IC_ASSIGN_OR_RETURN(comms, parallel::InProcessGroup::Create(world, options.common));
  }
  std::vector<absl::Status> status(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      const parallel::ParallelSizes sizes{.world_size = world, .tp_size = static_cast<int>(tp),
                                          .ep_size = static_cast<int>(ep)};
      absl::StatusOr<parallel::ProcessGroups> groups = parallel::ProcessGroups::Create(*comms[r], sizes);
      if (!groups.ok()) {
        status[r] = groups.status();
        comms[r]->Abort();
        return;
      }
      status[r] = fn(r, tp > 1 ? &groups->shard() : nullptr, ep > 1 ? &groups->expert() : nullptr);
      if (!status[r].ok()) groups->AbortAll();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < world; ++r) {
    if (!status[r].ok()) return absl::Status(status[r].code(), absl::StrCat("rank ", r, ": ", status[r].message()));
  }
  return absl::OkStatus();
}

int CmdBench(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {  // layer-sampled presets: tools/bench_sampled.cc
    const std::string a = argv[i];
    if (a == "--preset" || a.rfind("--preset=", 0) == 0 || a == "--sample-layers") return CmdBenchSampled(argc, argv);
  }
  const std::string help = absl::StrCat(
      "usage: indexcache bench [options]\n\n"
      "Prefill seconds and decode tokens/s per plan and context length, with the indexer's share of the\n"
      "time (measured at Full layers) and the time IndexCache saved.\n\noptions:\n", kModelOptions, kContextOptionHelp,
      "  --plans LIST           comma-separated plans                                      [dsa,1/2,1/4]\n"
      "  --contexts LIST        context lengths in tokens                                  [1024,4096]\n"
      "  --decode-steps N       decode steps timed after each prefill                      [16]\n"
      "  --batch N              sequences decoded together                                 [1]\n"
      "  --warmup N             untimed prefill + decode passes per plan before timing     [1]\n"
      "  --tp N, --ep N         several ranks, one GPU each (NCCL; --device cpu: threads in-process): tensor\n"
      "                         parallel over N ranks, routed experts over N ranks; world = the larger,\n"
      "                         which the other divides (the C ABI's layout: world = dp x tp); every rank\n"
      "                         runs the same prompts, rank 0 reports                        [1, 1]\n"
      "  --preset NAME          layer-sampled benchmark of a model shape (glm-4.7-flash-dsa, deepseek-v3.2,\n"
      "                         glm-5, tiny-dsa) with synthetic weights: `indexcache bench --preset X --help`\n"
      "  --sample-layers        the same for the embedded synthetic model\n");
  if (WantsHelp(argc, argv, help.c_str())) return 0;
  CLI_ASSIGN_OR_FAIL(args, Args::Parse(argc, argv, With(With(kModelKeys, kContextOptionKeys),
                                                        {"plans", "contexts", "decode-steps", "batch", "warmup", "tp", "ep"}),
                                       {}),
                     "bench");
  CLI_ASSIGN_OR_FAIL(model, SelectModel(args), "bench");
  CLI_ASSIGN_OR_FAIL(device, SelectDevice(args), "bench");
  CLI_ASSIGN_OR_FAIL(plans, ParsePlans(args.Get("plans", "dsa,1/2,1/4"), *model), "bench");
  CLI_ASSIGN_OR_FAIL(steps, GetIntIn(args, "decode-steps", 16, 0, kMaxTokens), "bench");
  CLI_ASSIGN_OR_FAIL(batch, GetIntIn(args, "batch", 1, 1, 4096), "bench");
  CLI_ASSIGN_OR_FAIL(warmup, GetIntIn(args, "warmup", 1, 0, 10), "bench");
  CLI_ASSIGN_OR_FAIL(tp, GetIntIn(args, "tp", 1, 1, 64), "bench");
  CLI_ASSIGN_OR_FAIL(ep, GetIntIn(args, "ep", 1, 1, 64), "bench");
  const int world = static_cast<int>(std::max(tp, ep));
  if (world % tp != 0 || world % ep != 0) {
    return Fail("bench", InvalidArgument("--tp ", tp, " and --ep ", ep, ": the smaller must divide the larger (the "
                                         "world size)"));
  }
  if (world > 1 && device == kernels::DeviceKind::kCuda) {
    if (kernels::CudaDeviceCount() < world) {
      return Fail("bench", InvalidArgument("--tp ", tp, " --ep ", ep, " needs ", world, " GPUs (one a rank); ",
                                           kernels::CudaDeviceCount(), " visible"));
    }
    if (!parallel::NcclAvailable()) {
      return Fail("bench", absl::UnavailableError("--tp / --ep on CUDA need NCCL; this build has none"));
    }
  }
  ContextOptions precisions;
  if (absl::Status s = SelectContextOptions(args, &precisions); !s.ok()) return Fail("bench", s);
  std::vector<int64_t> contexts;
  for (absl::string_view piece : absl::StrSplit(args.Get("contexts", "1024,4096"), ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(piece, &v) || v < 2 || v > kMaxTokens) {
      return Fail("bench", InvalidArgument("--contexts: '", piece, "' is not a length in [2, ", kMaxTokens, "]"));
    }
    if ((v + steps + 64) * (batch + 1) > kMaxTokens) {
      return Fail("bench", InvalidArgument("--contexts ", v, " with --decode-steps ", steps, " and --batch ", batch,
                                           " needs more than ", kMaxTokens, " tokens of KV cache"));
    }
    contexts.push_back(v);
  }
  if (contexts.empty()) return Fail("bench", InvalidArgument("--contexts: no length given"));
  const ModelConfig& c = model->config;
  std::fprintf(stderr, "bench: %s%s\n", DescribePrecisions(precisions, model->config.has_indexer).c_str(),
               world > 1 ? absl::StrCat("; ", world, " ranks, tp ", tp, ", ep ", ep).c_str() : "");
  std::printf("%-14s %8s %12s %10s %14s %12s %12s\n", "plan", "context", "prefill", "prefill", "decode tok/s",
              "indexer", "saved");
  std::printf("%-14s %8s %12s %10s %14s %12s %12s\n", "", "", "", "tok/s", "per sequence", "share", "(est.)");
  DecodeGraphStats graphs;  // rank 0's, over every context created below
  int64_t decode_steps = 0;
  // One rank's run over every context length and plan (every rank runs the same passes in the same order;
  // rank 0 prints). The process-wide metrics add every rank's: the indexer share is their mean.
  auto run_rank = [&](int rank, parallel::Communicator* shard, parallel::Communicator* experts) -> absl::Status {
    for (int64_t ctx_len : contexts) {
      std::vector<int32_t> prompt;
      std::mt19937 rng(static_cast<uint32_t>(7 + ctx_len));  // the same prompt on every rank
      std::uniform_int_distribution<int32_t> dist(0, c.vocab_size - 1);
      for (const NamedPlan& p : plans) {
        ContextOptions co = precisions;
        co.device = device;
        co.device_ordinal = device == kernels::DeviceKind::kCuda ? rank : 0;
        co.max_tokens = (ctx_len + steps + 64) * batch + (warmup > 0 ? ctx_len + 64 : 0);
        co.plan = p.pattern;
        co.shard_group = shard;
        co.expert_group = experts;
        IC_ASSIGN_OR_RETURN(std::unique_ptr<Context> ctx, Context::Create(model, co));
        if (prompt.empty()) {  // after the context: a length that cannot fit fails above, not in this allocation
          prompt.resize(ctx_len);
          for (auto& t : prompt) t = dist(rng);
        }
        for (int64_t w = 0; w < warmup; ++w) {  // untimed: GEMM heuristics, workspace growth on the GPU
          IC_ASSIGN_OR_RETURN(const int scratch, ctx->AddSequence());
          IC_RETURN_IF_ERROR(ctx->Prefill(scratch, prompt));
          IC_RETURN_IF_ERROR(ctx->Decode({&scratch, 1}, {&prompt[0], 1}, nullptr));
          IC_RETURN_IF_ERROR(ctx->RemoveSequence(scratch));
        }
        std::vector<int> seqs;
        const Metrics::Totals m0 = Metrics::Global().GetTotals();
        double prefill = 0;
        for (int64_t b = 0; b < batch; ++b) {
          IC_ASSIGN_OR_RETURN(const int seq, ctx->AddSequence());
          seqs.push_back(seq);
          const double t0 = Now();
          IC_RETURN_IF_ERROR(ctx->Prefill(seq, prompt));
          prefill += Now() - t0;
        }
        prefill /= batch;
        std::vector<int32_t> next(batch, 1);
        const double t1 = Now();
        for (int64_t i = 0; i < steps; ++i) IC_RETURN_IF_ERROR(ctx->Decode(seqs, next, nullptr));
        const double decode = Now() - t1;
        if (rank != 0) continue;
        decode_steps += steps;
        const DecodeGraphStats& g = ctx->decode_graph_stats();
        graphs.captures += g.captures;
        graphs.replays += g.replays;
        graphs.capture_failures += g.capture_failures;
        if (g.last_graph_nodes > 0) graphs.last_graph_nodes = g.last_graph_nodes;
        if (!g.last_capture_error.empty()) graphs.last_capture_error = g.last_capture_error;
        const Metrics::Totals m2 = Metrics::Global().GetTotals();
        const double indexer = (m2.indexer_seconds - m0.indexer_seconds) / world;
        const double saved = (m2.saved_seconds - m0.saved_seconds) / world;
        const double share = indexer / std::max(prefill * batch + decode, 1e-12);
        std::printf("%-14s %8lld %12s %10.0f %14.1f %11.1f%% %12s\n", p.name.c_str(), static_cast<long long>(ctx_len),
                    FormatSeconds(prefill).c_str(), ctx_len / prefill, steps ? steps / decode : 0.0, 100 * share,
                    FormatSeconds(saved).c_str());
        std::fflush(stdout);
      }
    }
    return absl::OkStatus();
  };
  if (world == 1) {
    if (absl::Status s = run_rank(0, nullptr, nullptr); !s.ok()) return Fail("bench", s);
  } else if (absl::Status s = RunRanks(world, tp, ep, device, run_rank); !s.ok()) {
    return Fail("bench", s);
  }
  if (device == kernels::DeviceKind::kCuda) {
    if (world > 1) {
      std::printf("decode: eager (CUDA-graph decode is single-rank)\n");
    } else if (!precisions.cuda_graphs) {
      std::printf("decode: eager (--cuda-graphs off)\n");
    } else {  // the warm-up's decode steps count too (they capture the batch-1 graph)
      std::printf("decode: %lld steps replayed from CUDA graphs (%lld captured) of %lld timed + warm-up steps; "
                  "the last graph has %zu nodes (%.1f per layer)\n",
                  static_cast<long long>(graphs.replays), static_cast<long long>(graphs.captures),
                  static_cast<long long>(decode_steps + warmup * static_cast<int64_t>(contexts.size() * plans.size())),
                  graphs.last_graph_nodes, static_cast<double>(graphs.last_graph_nodes) / c.num_hidden_layers);
      if (graphs.capture_failures > 0) {
        std::printf("decode: %lld CUDA graph captures failed (those steps ran eagerly): %s\n",
                    static_cast<long long>(graphs.capture_failures), graphs.last_capture_error.c_str());
      }
    }
  }
  return 0;
}

}  // namespace ic::cli
