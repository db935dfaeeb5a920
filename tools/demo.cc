// `indexcache demo`: baseline DSA and an IndexCache plan side by side on one model.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "sdk/metrics.h"
#include "sdk/status.h"
#include "tools/cli.h"

namespace ic::cli {
namespace {

constexpr const char* kHelp = R"(usage: indexcache demo [options]

Runs one model with baseline DSA (every layer runs its indexer) and with an IndexCache plan (Shared layers
reuse the nearest Full layer's top-k), and prints side by side: LM loss, logit agreement, top-k overlap,
indexer time run / skipped / saved, tokens/s; then the Prometheus metrics text.
With no options it builds the embedded synthetic model (seeded weights, DeepSeek-V3.2 layout) in memory.

options:
  --model DIR            an HF checkpoint directory instead of the synthetic model
  --plan P               IndexCache plan: 1/2, 1/4, 1/8 (uniform), an F/S string, file:PATH  [1/4]
  --prompt-tokens N      prompt length (seeded random tokens, or the first N of --token-file)   [2048]
  --token-file PATH      prompt from a token file (little-endian uint32 ids, e.g. data/tokens/eval.tokens)
  --decode-tokens N      greedy decode steps                                                     [32]
  --device D             auto | cpu | cuda                                                       [auto]
  --seed S, --layers L   synthetic model seed and depth                                          [20260312, 8]
  --metrics-address A    start the Prometheus HTTP exposer on A (e.g. 127.0.0.1:9464)
  --serve-seconds N      keep serving /metrics for N seconds after the demo                      [0]
  --plan-file PATH       with --model: a plan file replacing the checkpoint's plan keys
  --no-metrics-text      do not print the Prometheus text at the end
)";

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct PlanRun {
  std::string name, pattern;
  double loss = 0;
  double prefill_s = 0, decode_s = 0;
  std::map<int, std::vector<int32_t>> topk;  // prompt top-k per layer
  std::vector<std::vector<float>> decode_logits;
  Metrics::Totals metrics;  // deltas over this plan's run
};

absl::Status RunPlan(std::shared_ptr<const Model> model, kernels::DeviceKind device,
                     const std::vector<int32_t>& prompt, const std::vector<int32_t>& forced, PlanRun& run,
                     std::vector<int32_t>* greedy_out) {
  const ModelConfig& c = model->config;
  ContextOptions co;
  co.device = device;
  co.plan = run.pattern;
  co.max_tokens = 2 * static_cast<int64_t>(prompt.size()) + forced.size() + 128;  // + a warm-up sequence
  IC_ASSIGN_OR_RETURN(std::unique_ptr<Context> ctx, Context::Create(model, co));
  if (device == kernels::DeviceKind::kCuda) {  // untimed warm-up: GEMM heuristics, workspace growth
    IC_ASSIGN_OR_RETURN(int scratch, ctx->AddSequence());
    IC_RETURN_IF_ERROR(ctx->Prefill(scratch, prompt));
    IC_RETURN_IF_ERROR(ctx->RemoveSequence(scratch));
  }
  IC_ASSIGN_OR_RETURN(int seq, ctx->AddSequence());
  const Metrics::Totals before = Metrics::Global().GetTotals();

  // Prefill in chunks, capturing the top-k of every layer and the next-token loss on the prompt.
  std::vector<float> last(c.vocab_size);
  std::vector<int32_t> targets(prompt.size());
  for (size_t i = 0; i < prompt.size(); ++i) targets[i] = i + 1 < prompt.size() ? prompt[i + 1] : -1;
  std::vector<float> losses(prompt.size());
  Progress progress("  prefill " + run.name, static_cast<int64_t>(prompt.size()));
  const double t0 = Now();
  for (size_t off = 0; off < prompt.size(); off += co.prefill_chunk) {
    const size_t n = std::min<size_t>(co.prefill_chunk, prompt.size() - off);
    std::map<int, std::vector<int32_t>> topk;
    Segment seg{seq, std::span(prompt).subspan(off, n)};
    ForwardOutputs out;
    out.topk_by_layer = c.has_indexer ? &topk : nullptr;
    out.targets = std::span(targets).subspan(off, n);
    out.token_loss = losses.data() + off;
    if (off + n == prompt.size()) out.last_logits = last.data();
    IC_RETURN_IF_ERROR(ctx->Forward({&seg, 1}, out));
    for (auto& [l, v] : topk) run.topk[l].insert(run.topk[l].end(), v.begin(), v.end());
    progress.Update(static_cast<int64_t>(off + n));
  }
  progress.Finish();
  run.prefill_s = Now() - t0;
  double sum = 0;
  for (float l : losses) sum += l;
  run.loss = sum / static_cast<double>(prompt.size() - 1);

  // Greedy decode; the IndexCache run is fed the DSA run's tokens so logits compare position by position.
  const int steps = static_cast<int>(forced.empty() ? greedy_out->size() : forced.size());
  const double t1 = Now();
  for (int i = 0; i < steps; ++i) {
    const int32_t next =
        forced.empty() ? static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin()) : forced[i];
    if (forced.empty()) (*greedy_out)[i] = next;
    IC_RETURN_IF_ERROR(ctx->Decode({&seq, 1}, {&next, 1}, last.data()));
    run.decode_logits.push_back(last);
  }
  run.decode_s = Now() - t1;
  run.metrics = Metrics::Global().GetTotals() - before;
  return absl::OkStatus();
}

double Overlap(const std::vector<int32_t>& a, const std::vector<int32_t>& b, int k) {
  double total = 0;
  int rows = 0;
  for (size_t r = 0; r * k < a.size(); ++r) {
    std::vector<int32_t> x, y;
    for (int j = 0; j < k; ++j) {
      if (a[r * k + j] >= 0) x.push_back(a[r * k + j]);
      if (b[r * k + j] >= 0) y.push_back(b[r * k + j]);
    }
    if (x.empty()) continue;
    std::sort(x.begin(), x.end());
    std::sort(y.begin(), y.end());
    std::vector<int32_t> both;
    std::set_intersection(x.begin(), x.end(), y.begin(), y.end(), std::back_inserter(both));
    total += static_cast<double>(both.size()) / x.size();
    ++rows;
  }
  return rows ? total / rows : 1.0;
}

}  // namespace

int CmdDemo(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
  }
  auto args = Args::Parse(argc, argv,
                          {"model", "plan", "prompt-tokens", "decode-tokens", "device", "seed", "layers",
                           "metrics-address", "serve-seconds", "plan-file", "token-file"},
                          {"no-metrics-text"});
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "indexcache demo: %s\n", std::string(s.message()).c_str());
    return 1;
  };
  if (!args.ok()) return fail(args.status());
  auto model = SelectModel(*args);
  if (!model.ok()) return fail(model.status());
  auto device = SelectDevice(*args);
  if (!device.ok()) return fail(device.status());
  const ModelConfig& c = (*model)->config;
  auto plans = ParsePlans(args->Get("plan", "1/4"), **model);
  if (!plans.ok()) return fail(plans.status());
  auto prompt_len = args->GetInt("prompt-tokens", 2048);
  auto decode_len = args->GetInt("decode-tokens", 32);
  auto serve = args->GetInt("serve-seconds", 0);
  if (!prompt_len.ok()) return fail(prompt_len.status());
  if (!decode_len.ok()) return fail(decode_len.status());
  if (!serve.ok()) return fail(serve.status());
  // At most 2^30 each, so that the cache size (prompt + decode + 64) cannot overflow; a length that does not
  // fit in memory then fails with a clear error (the allocations below, or the context's cache).
  constexpr int64_t kMaxTokens = int64_t{1} << 30;
  if (*prompt_len < 2 || *prompt_len > kMaxTokens || *decode_len < 0 || *decode_len > kMaxTokens) {
    return fail(InvalidArgument("--prompt-tokens must be in [2, ", kMaxTokens, "] and --decode-tokens in [0, ",
                                kMaxTokens, "]; got ", *prompt_len, " and ", *decode_len));
  }
  if (*serve < 0) return fail(InvalidArgument("--serve-seconds must be ≥ 0, got ", *serve));
  if (*serve > 0 && !args->Has("metrics-address")) {
    return fail(InvalidArgument("--serve-seconds needs --metrics-address (there is nothing to serve)"));
  }

  if (args->Has("metrics-address")) {
    absl::Status s = Metrics::Global().StartExposer(args->Get("metrics-address"));
    if (!s.ok()) return fail(s);
    std::printf("Prometheus metrics at http://%s/metrics\n", args->Get("metrics-address").c_str());
  }

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> dist(std::min(2, c.vocab_size - 1), c.vocab_size - 1);  // vocab may be < 3
  std::vector<int32_t> prompt, greedy;
  try {
    prompt.resize(*prompt_len);
    greedy.resize(*decode_len);
  } catch (const std::bad_alloc&) {
    return fail(absl::ResourceExhaustedError(absl::StrCat("out of host memory for --prompt-tokens ", *prompt_len,
                                                          " and --decode-tokens ", *decode_len)));
  }
  std::string prompt_source = "seeded random";
  if (args->Has("token-file")) {
    auto file = ReadTokenFile(args->Get("token-file"), c.vocab_size);
    if (!file.ok()) return fail(file.status());
    if (static_cast<int64_t>(file->size()) < *prompt_len) {
      return fail(InvalidArgument(args->Get("token-file"), " holds ", file->size(), " tokens; --prompt-tokens is ",
                                  *prompt_len));
    }
    std::copy(file->begin(), file->begin() + *prompt_len, prompt.begin());
    prompt_source = "from " + args->Get("token-file");
  } else {
    for (auto& t : prompt) t = dist(rng);
  }

  std::printf("IndexCache demo — %s model (%s), %d layers, hidden %d, vocab %d\n",
              (*model)->path.empty() ? "embedded synthetic" : (*model)->path.c_str(),
              std::string(ArchitectureName(c.arch)).c_str(), c.num_hidden_layers, c.hidden_size, c.vocab_size);
  if (c.has_indexer) {
    std::printf("  lightning indexer %d heads × %d, top-k %d; device %s\n", c.index_n_heads, c.index_head_dim,
                c.index_topk, *device == kernels::DeviceKind::kCuda ? "cuda" : "cpu");
  } else {
    std::printf("  no indexer (dense attention): IndexCache plans change nothing\n");
  }
  std::printf("  prompt %lld tokens (%s), then %lld greedy decode steps\n\n", static_cast<long long>(*prompt_len),
              prompt_source.c_str(), static_cast<long long>(*decode_len));

  PlanRun dsa, ic;
  dsa.name = "DSA";
  dsa.pattern = std::string(c.num_hidden_layers, 'F');
  ic.name = "IndexCache " + (*plans)[0].name;
  ic.pattern = (*plans)[0].pattern;
  absl::Status s = RunPlan(*model, *device, prompt, {}, dsa, &greedy);
  if (!s.ok()) return fail(s);
  s = RunPlan(*model, *device, prompt, greedy, ic, nullptr);
  if (!s.ok()) return fail(s);

  // Logit agreement over the decode steps.
  int top1_same = 0;
  double err_num = 0, err_den = 0;
  for (size_t i = 0; i < dsa.decode_logits.size(); ++i) {
    const auto& a = dsa.decode_logits[i];
    const auto& b = ic.decode_logits[i];
    top1_same += (std::max_element(a.begin(), a.end()) - a.begin()) == (std::max_element(b.begin(), b.end()) - b.begin());
    for (size_t v = 0; v < a.size(); ++v) {
      err_num += (a[v] - b[v]) * (a[v] - b[v]);
      err_den += a[v] * a[v];
    }
  }
  const int steps = static_cast<int>(dsa.decode_logits.size());
  double overlap = 0;
  int layers = 0;
  for (int l = 0; l < c.num_hidden_layers && c.has_indexer; ++l, ++layers) {
    overlap += Overlap(dsa.topk[l], ic.topk[l], c.index_topk);
  }
  overlap = layers ? overlap / layers : 1.0;
  // The audit: each layer's overlap with baseline DSA goes into indexcache_topk_overlap_ratio.
  for (int l = 0; l < c.num_hidden_layers && c.has_indexer; ++l) {
    Metrics::Global().ObserveTopkOverlap(Overlap(dsa.topk[l], ic.topk[l], c.index_topk));
  }

  auto row = [](const char* label, const std::string& a, const std::string& b) {
    std::printf("  %-38s %20s %26s\n", label, a.c_str(), b.c_str());
  };
  auto f = [](const char* fmt, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, fmt, v);
    return std::string(buf);
  };
  const double tokens = static_cast<double>(prompt.size());
  row("", dsa.name + " " + dsa.pattern, ic.name + " " + ic.pattern);
  row("LM loss on the prompt (nats)", f("%.5f", dsa.loss), f("%.5f", ic.loss));
  row("prefill", FormatSeconds(dsa.prefill_s), FormatSeconds(ic.prefill_s));
  row("prefill tokens/s", f("%.0f", tokens / dsa.prefill_s), f("%.0f", tokens / ic.prefill_s));
  row("decode tokens/s", steps ? f("%.1f", steps / dsa.decode_s) : "-", steps ? f("%.1f", steps / ic.decode_s) : "-");
  row("indexer calls run", f("%.0f", dsa.metrics.layers_run), f("%.0f", ic.metrics.layers_run));
  row("indexer calls skipped (Shared layers)", f("%.0f", dsa.metrics.layers_skipped), f("%.0f", ic.metrics.layers_skipped));
  row("indexer time run (measured)", FormatSeconds(dsa.metrics.indexer_seconds), FormatSeconds(ic.metrics.indexer_seconds));
  row("indexer time saved (estimated)", FormatSeconds(dsa.metrics.saved_seconds), FormatSeconds(ic.metrics.saved_seconds));
  row("baseline-DSA indexer time (run + saved)", FormatSeconds(dsa.metrics.baseline_seconds),
      FormatSeconds(ic.metrics.baseline_seconds));
  row("top-k overlap with DSA (prompt, mean)", "1.000", f("%.3f", overlap));
  row("decode top-1 agreement with DSA", "-", steps ? f("%.3f", double(top1_same) / steps) : "-");
  row("decode logits, relative error vs DSA", "-", steps ? f("%.2e", std::sqrt(err_num / std::max(err_den, 1e-30))) : "-");
  std::printf("\n  IndexCache skipped %.0f of %.0f indexer calls and saved an estimated %s of %s indexer time.\n",
              ic.metrics.layers_skipped, ic.metrics.layers_run + ic.metrics.layers_skipped,
              FormatSeconds(ic.metrics.saved_seconds).c_str(), FormatSeconds(ic.metrics.baseline_seconds).c_str());
  if (!args->Has("no-metrics-text")) {
    std::printf("\n# Prometheus metrics (also: ic_metrics_text, --metrics-address)\n%s",
                Metrics::Global().TextDump().c_str());
  }
  if (*serve > 0 && args->Has("metrics-address")) {
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::seconds(*serve));
  }
  return 0;
}

}  // namespace ic::cli
