// Greedy IndexCache plan search (search.h; DESIGN.md §3).
#include "sdk/search.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "absl/strings/str_cat.h"
#include "sdk/engine.h"
#include "sdk/status.h"

namespace ic {
namespace {

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Next-token targets of tokens[off, off + n) within the window (−1 past its end).
std::vector<int32_t> Targets(std::span<const int32_t> tokens, size_t off, size_t n) {
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = off + i + 1 < tokens.size() ? tokens[off + i + 1] : -1;
  return t;
}

// Runs `tokens` as a fresh sequence in chunks; returns the summed next-token loss. With captures, keeps
// the hidden state entering each layer in `keep_hidden` and the top-k each layer in `keep_topk` used.
absl::StatusOr<double> Pass(Context& ctx, std::span<const int32_t> tokens, int chunk, const ForwardOptions& base,
                            const std::vector<int>* keep_hidden, const std::vector<int>* keep_topk,
                            std::map<int, std::vector<float>>* hidden, std::map<int, std::vector<int32_t>>* topk) {
  const int H = ctx.model().config.hidden_size;
  const int K = ctx.model().config.index_topk;
  IC_ASSIGN_OR_RETURN(int seq, ctx.AddSequence());
  double total = 0;
  absl::Status status;
  std::vector<float> losses;
  for (size_t off = 0; off < tokens.size() && status.ok(); off += chunk) {
    const size_t n = std::min<size_t>(chunk, tokens.size() - off);
    Segment seg{seq, tokens.subspan(off, n)};
    std::vector<int32_t> targets = Targets(tokens, off, n);
    losses.assign(n, 0.0f);
    ForwardOutputs out;
    out.targets = targets;
    out.token_loss = losses.data();
    std::map<int, std::vector<float>> h_chunk;
    std::map<int, std::vector<int32_t>> k_chunk;
    if (hidden != nullptr) out.hidden_by_layer = &h_chunk;
    if (topk != nullptr) out.topk_by_layer = &k_chunk;
    ForwardOptions fo = base;
    if (fo.start_layer > 0) {
      fo.initial_hidden += off * H;
      fo.initial_topk += off * K;
    }
    status = ctx.Forward({&seg, 1}, out, fo);
    if (!status.ok()) break;
    for (float l : losses) total += l;
    if (hidden != nullptr) {
      for (int l : *keep_hidden) {
        auto& dst = (*hidden)[l];
        dst.insert(dst.end(), h_chunk[l].begin(), h_chunk[l].end());
      }
    }
    if (topk != nullptr) {
      for (int l : *keep_topk) {
        auto& dst = (*topk)[l];
        dst.insert(dst.end(), k_chunk[l].begin(), k_chunk[l].end());
      }
    }
  }
  IC_RETURN_IF_ERROR(ctx.RemoveSequence(seq));
  IC_RETURN_IF_ERROR(status);
  return total;
}

}  // namespace

int64_t SearchCaptureBytes(const ModelConfig& c, int64_t window_tokens) {
  return window_tokens * c.num_hidden_layers * (static_cast<int64_t>(c.hidden_size) + c.index_topk) * 4;
}

absl::StatusOr<Plan> SearchPlan(std::shared_ptr<const Model> model,
                                std::span<const std::vector<int32_t>> windows, int target_full_layers,
                                const SearchOptions& options) {
  if (model == nullptr) return InvalidArgument("search: no model");
  const ModelConfig& c = model->config;
  const int N = c.num_hidden_layers;
  if (!c.has_indexer) {
    return absl::FailedPreconditionError(
        "search: the model has no lightning indexer (dense attention): nothing to search");
  }
  if (windows.empty()) return InvalidArgument("search: the calibration set is empty");
  if (target_full_layers < 1 || target_full_layers > N) {
    return InvalidArgument("search: target of ", target_full_layers, " Full layers is outside [1, ", N, "]");
  }
  if (options.prefill_chunk < 1) return InvalidArgument("search: prefill_chunk must be ≥ 1");
  int64_t predicted = 0, max_len = 0, all_tokens = 0;
  for (size_t w = 0; w < windows.size(); ++w) {
    const auto& win = windows[w];
    if (win.size() < 2) {
      return InvalidArgument("search: calibration window ", w, " has ", win.size(),
                             " token(s); the loss needs at least 2");
    }
    for (size_t i = 0; i < win.size(); ++i) {
      if (win[i] < 0 || win[i] >= c.vocab_size) {
        return InvalidArgument("search: token id ", win[i], " (window ", w, ", index ", i,
                               ") is outside the vocabulary [0, ", c.vocab_size, ")");
      }
    }
    const int64_t bytes = SearchCaptureBytes(c, static_cast<int64_t>(win.size()));
    if (bytes > options.max_capture_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "search: calibration window ", w, " (", win.size(), " tokens) needs ", bytes,
          " bytes of captures (tokens × layers × (hidden + index_topk) × 4 B); the bound is ",
          options.max_capture_bytes, " bytes: use shorter windows"));
    }
    predicted += static_cast<int64_t>(win.size()) - 1;
    all_tokens += static_cast<int64_t>(win.size());
    max_len = std::max<int64_t>(max_len, static_cast<int64_t>(win.size()));
  }

  // One context of the all-Full plan: every candidate plan's Full layers are a subset of it.
  Plan plan;
  plan.layers.assign(N, LayerKind::kFull);
  ContextOptions co;
  co.device = options.device;
  co.device_ordinal = options.device_ordinal;
  co.max_tokens = max_len + 64;
  co.prefill_chunk = options.prefill_chunk;
  co.plan = plan.ToString();
  co.record_metrics = false;
  IC_ASSIGN_OR_RETURN(std::unique_ptr<Context> ctx, Context::Create(model, co));

  const int steps = N - target_full_layers;
  const double t0 = NowSeconds();
  // Work in layer-tokens, for the time estimate.
  double work_done = 0;
  auto step_work = [&](const std::vector<int>& cands) {
    double w = N;
    for (int l : cands) w += N - l;
    return w * static_cast<double>(all_tokens);
  };

  for (int step = 0; step <= steps; ++step) {
    std::vector<int> cands;  // Full layers other than 0, ascending
    for (int l = 1; l < N; ++l) {
      if (plan.IsFull(l)) cands.push_back(l);
    }
    const bool last = step == steps;  // only the final plan's loss is needed for step 0 when steps == 0
    std::vector<int> keep_hidden = cands, keep_topk;
    for (int l : cands) keep_topk.push_back(l - 1);
    // Estimated work left after this step (later steps have one candidate fewer each).
    double future = 0;
    if (!last && !cands.empty()) {
      double avg = 0;
      for (int l : cands) avg += N - l;
      avg /= static_cast<double>(cands.size());
      for (int s = step + 1; s < steps; ++s) {
        const double nc = static_cast<double>(cands.size()) - (s - step);
        future += (N + nc * avg) * static_cast<double>(all_tokens);
      }
    }
    const double this_step = last ? N * static_cast<double>(all_tokens) : step_work(cands);
    double step_done = 0;
    auto report = [&](int w, int cand) {
      if (!options.progress) return;
      SearchProgress p;
      p.step = std::min(step + 1, steps);
      p.steps = steps;
      p.window = w;
      p.windows = static_cast<int>(windows.size());
      p.candidate = cand;
      p.candidates = static_cast<int>(cands.size());
      p.elapsed_seconds = NowSeconds() - t0;
      const double left = (this_step - step_done) + future;
      p.remaining_seconds = work_done > 0 ? p.elapsed_seconds / work_done * left : 0;
      options.progress(p);
    };

    double current_sum = 0;
    std::vector<double> cand_sum(cands.size(), 0.0);
    for (size_t w = 0; w < windows.size(); ++w) {
      std::span<const int32_t> tokens(windows[w]);
      std::map<int, std::vector<float>> hidden;
      std::map<int, std::vector<int32_t>> topk;
      const bool capture = !last;
      IC_ASSIGN_OR_RETURN(double s, Pass(*ctx, tokens, options.prefill_chunk, ForwardOptions{.plan = &plan},
                                         &keep_hidden, &keep_topk, capture ? &hidden : nullptr,
                                         capture ? &topk : nullptr));
      current_sum += s;
      const double full_work = N * static_cast<double>(tokens.size());
      work_done += full_work;
      step_done += full_work;
      report(static_cast<int>(w), 0);
      if (last) continue;
      for (size_t i = 0; i < cands.size(); ++i) {
        const int l = cands[i];
        Plan cand = plan;
        cand.layers[l] = LayerKind::kShared;
        ForwardOptions fo;
        fo.start_layer = l;
        fo.initial_hidden = hidden.at(l).data();
        fo.initial_topk = topk.at(l - 1).data();
        fo.plan = &cand;
        IC_ASSIGN_OR_RETURN(double cs, Pass(*ctx, tokens, options.prefill_chunk, fo, nullptr, nullptr, nullptr,
                                            nullptr));
        cand_sum[i] += cs;
        const double part = (N - l) * static_cast<double>(tokens.size());
        work_done += part;
        step_done += part;
        report(static_cast<int>(w), static_cast<int>(i + 1));
      }
    }
    const double current_loss = current_sum / static_cast<double>(predicted);
    if (step == 0) {
      plan.search_losses.push_back(current_loss);
      if (options.on_start) options.on_start(current_loss);
    }
    if (last) break;
    // Commit the best flip (ties → the smaller layer: strict < in ascending order).
    size_t best = 0;
    for (size_t i = 1; i < cands.size(); ++i) {
      if (cand_sum[i] < cand_sum[best]) best = i;
    }
    plan.layers[cands[best]] = LayerKind::kShared;
    const double loss = cand_sum[best] / static_cast<double>(predicted);
    plan.search_losses.push_back(loss);
    if (options.on_step) {
      options.on_step(SearchStep{.step = step + 1, .layer = cands[best], .loss = loss, .plan = plan.ToString(),
                                 .elapsed_seconds = NowSeconds() - t0});
    }
    if (step + 1 == steps) break;  // the final plan's loss is the committed candidate's
  }
  plan.source = absl::StrCat("search", options.keep_label.empty() ? "" : " keep=", options.keep_label, " full=",
                             target_full_layers, "/", N, " windows=", windows.size(), " tokens=", all_tokens);
  return plan;
}

}  // namespace ic
