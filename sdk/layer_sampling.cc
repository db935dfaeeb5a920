// Layer-sampled benchmarking (layer_sampling.h).
#include "sdk/layer_sampling.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "sdk/status.h"

namespace ic {

const char* LayerClassName(LayerClass c) {
  switch (c) {
    case LayerClass::kDenseFull: return "dense Full";
    case LayerClass::kDenseShared: return "dense Shared";
    case LayerClass::kMoeFull: return "MoE Full";
    case LayerClass::kMoeShared: return "MoE Shared";
  }
  return "?";
}

absl::StatusOr<LayerCounts> CountLayers(const ModelConfig& full, const Plan& plan) {
  if (plan.num_layers() != full.num_hidden_layers) {
    return InvalidArgument("plan has ", plan.num_layers(), " layers; the model has ", full.num_hidden_layers);
  }
  LayerCounts counts;
  for (int i = 0; i < full.num_hidden_layers; ++i) {
    const bool moe = i < static_cast<int>(full.moe_layer.size()) && full.moe_layer[i];
    const bool shared = full.has_indexer && !plan.IsFull(i);
    ++counts.n[(moe ? 2 : 0) + (shared ? 1 : 0)];
  }
  return counts;
}

LayerSlice MakeLayerSlice(const ModelConfig& full) {
  LayerSlice s;
  s.full_layers = full.num_hidden_layers;
  std::vector<int> dense, moe;
  for (int i = 0; i < full.num_hidden_layers; ++i) {
    (i < static_cast<int>(full.moe_layer.size()) && full.moe_layer[i] ? moe : dense).push_back(i);
  }
  // Layer 0 is always Full; a class is timed only when some plan can contain it. A model without an
  // indexer has no Shared layers.
  auto add = [&](LayerClass c, int source) {
    s.classes.push_back(c);
    s.source_layers.push_back(source);
    s.plan.push_back(c == LayerClass::kDenseShared || c == LayerClass::kMoeShared ? 'S' : 'F');
  };
  const bool indexer = full.has_indexer;
  if (!dense.empty()) {
    add(LayerClass::kDenseFull, dense[0]);
    if (indexer && dense.size() >= 2) add(LayerClass::kDenseShared, dense[1]);
  }
  if (!moe.empty()) {
    add(LayerClass::kMoeFull, moe[0]);
    if (indexer && moe.back() > 0) add(LayerClass::kMoeShared, moe.size() >= 2 ? moe[1] : moe[0]);
  }
  return s;
}

ModelConfig SliceConfig(const ModelConfig& full, const LayerSlice& slice) {
  ModelConfig c = full;
  c.num_hidden_layers = static_cast<int>(slice.classes.size());
  c.moe_layer.clear();
  c.first_k_dense_replace = 0;
  for (LayerClass k : slice.classes) {
    const bool moe = k == LayerClass::kMoeFull || k == LayerClass::kMoeShared;
    c.moe_layer.push_back(moe);
    if (!moe) ++c.first_k_dense_replace;
  }
  // Plan keys of the full model do not apply to the slice (the slice's plan is slice.plan).
  c.indexer_types.reset();
  c.index_topk_pattern.reset();
  c.index_topk_freq.reset();
  c.index_skip_topk_offset.reset();
  c.num_nextn_predict_layers = 0;
  return c;
}

absl::StatusOr<SliceTimes> SliceTimesFromProfile(const LayerSlice& slice, const LayerProfile& profile,
                                                 int64_t passes) {
  if (passes < 1) return InvalidArgument("slice times: passes must be ≥ 1, got ", passes);
  if (profile.layer_seconds.size() != slice.classes.size() || profile.indexer_seconds.size() != slice.classes.size()) {
    return InvalidArgument("slice times: the profile has ", profile.layer_seconds.size(), " layers; the slice has ",
                           slice.classes.size(), " (was the context created with profile_layers?)");
  }
  SliceTimes t;
  const double inv = 1.0 / static_cast<double>(passes);
  t.other = profile.other_seconds * inv;
  for (size_t i = 0; i < slice.classes.size(); ++i) {
    const int k = static_cast<int>(slice.classes[i]);
    t.layer[k] = profile.layer_seconds[i] * inv;
    t.indexer[k] = profile.indexer_seconds[i] * inv;
    t.present[k] = true;
  }
  return t;
}

absl::StatusOr<ComposedTime> Compose(const SliceTimes& times, const LayerCounts& counts) {
  ComposedTime r;
  r.seconds = times.other;
  for (int k = 0; k < kNumLayerClasses; ++k) {
    if (counts.n[k] == 0) continue;
    if (!times.present[k]) {
      return absl::FailedPreconditionError(absl::StrCat("compose: the plan has ", counts.n[k], " ",
                                                        LayerClassName(static_cast<LayerClass>(k)),
                                                        " layers but the slice timed none"));
    }
    r.seconds += static_cast<double>(counts.n[k]) * times.layer[k];
    r.indexer_seconds += static_cast<double>(counts.n[k]) * times.indexer[k];
  }
  return r;
}

double MechanismCheck::relative_error() const {
  if (estimate == 0) return saved == 0 ? 0.0 : INFINITY;
  return std::abs(saved - estimate) / std::abs(estimate);
}

MechanismCheck CheckMechanism(const ComposedTime& dsa, const ComposedTime& plan, const LayerCounts& plan_counts) {
  MechanismCheck m;
  m.saved = dsa.seconds - plan.seconds;
  const double total = static_cast<double>(plan_counts.total());
  m.estimate = total > 0 ? static_cast<double>(plan_counts.shared()) / total * dsa.indexer_seconds : 0.0;
  return m;
}

}  // namespace ic
