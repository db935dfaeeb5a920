// Recall of the dense attention mass inside the selected sets, and the layers' top-k overlap (see the header).
#include "sdk/selection_report.h"

#include <algorithm>
#include <map>

#include "sdk/engine.h"
#include "sdk/status.h"

namespace ic {

absl::StatusOr<SelectionReport> MeasureSelection(std::shared_ptr<const Model> model,
                                                 std::span<const std::vector<int32_t>> windows,
                                                 const std::string& plan, kernels::DeviceKind device,
                                                 const ContextOptions& precisions) {
  if (model == nullptr) return InvalidArgument("MeasureSelection: null model");
  const ModelConfig& c = model->config;
  if (!c.has_indexer) return InvalidArgument("the model has no indexer (dense mode): there is no selection to measure");
  if (windows.empty()) return InvalidArgument("MeasureSelection: no windows");
  size_t longest = 0;
  for (size_t w = 0; w < windows.size(); ++w) {
    if (windows[w].size() < 2) {
      return InvalidArgument("window ", w, " has ", windows[w].size(), " token(s); at least 2 are needed");
    }
    longest = std::max(longest, windows[w].size());
  }
  ContextOptions o;
  o.device = device;
  o.max_tokens = static_cast<int64_t>(longest);
  o.prefill_chunk = static_cast<int>(longest);
  o.record_metrics = false;
  o.plan = plan;
  o.indexer_precision = precisions.indexer_precision;
  o.attention_precision = precisions.attention_precision;
  o.weight_precision = precisions.weight_precision;
  IC_ASSIGN_OR_RETURN(std::unique_ptr<Context> ctx, Context::Create(model, o));
  const int L = c.num_hidden_layers, K = c.index_topk;
  SelectionReport r;
  r.layers = L;
  r.recall.assign(L, 0.0);
  r.overlap.assign(static_cast<size_t>(L) * L, 0.0);
  std::vector<char> mark;
  for (const std::vector<int32_t>& w : windows) {
    const int T = static_cast<int>(w.size());
    if (T <= K) continue;  // no counted row
    IC_ASSIGN_OR_RETURN(int seq, ctx->AddSequence());
    std::map<int, std::vector<float>> dense;
    std::map<int, std::vector<int32_t>> topk;
    ForwardOutputs out;
    out.dense_attention_by_layer = &dense;
    out.topk_by_layer = &topk;
    Segment seg{.seq_id = seq, .tokens = w};
    absl::Status s = ctx->Forward(std::span<const Segment>(&seg, 1), out);
    IC_RETURN_IF_ERROR(ctx->RemoveSequence(seq));
    IC_RETURN_IF_ERROR(s);
    mark.assign(static_cast<size_t>(L) * T, 0);
    for (int t = K; t < T; ++t) {  // position t, t + 1 > K keys
      ++r.rows;
      for (int i = 0; i < L; ++i) {
        const int32_t* sel = &topk.at(i)[static_cast<size_t>(t) * K];
        const float* a = &dense.at(i)[static_cast<size_t>(t) * T];
        double mass = 0;
        for (int e = 0; e < K; ++e) {
          if (sel[e] >= 0 && sel[e] <= t) mass += a[sel[e]];
        }
        r.recall[i] += mass;
        char* m = &mark[static_cast<size_t>(i) * T];
        std::fill(m, m + T, 0);
        for (int e = 0; e < K; ++e) {
          if (sel[e] >= 0 && sel[e] <= t) m[sel[e]] = 1;
        }
      }
      for (int i = 0; i < L; ++i) {
        const int32_t* sel = &topk.at(i)[static_cast<size_t>(t) * K];
        int n = 0;
        for (int e = 0; e < K; ++e) n += sel[e] >= 0 && sel[e] <= t;
        for (int j = 0; j < L; ++j) {
          const char* m = &mark[static_cast<size_t>(j) * T];
          int both = 0;
          for (int e = 0; e < K; ++e) both += sel[e] >= 0 && sel[e] <= t && m[sel[e]];
          r.overlap[static_cast<size_t>(i) * L + j] += n > 0 ? static_cast<double>(both) / n : 0.0;
        }
      }
    }
  }
  if (r.rows == 0) {
    return InvalidArgument("no window is longer than index_topk = ", K, " tokens: every key is selected, there is "
                           "nothing to measure (use longer windows)");
  }
  for (double& v : r.recall) v /= static_cast<double>(r.rows);
  for (double& v : r.overlap) v /= static_cast<double>(r.rows);
  return r;
}

}  // namespace ic
