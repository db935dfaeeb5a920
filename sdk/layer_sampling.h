// Layer-sampled benchmarking: time a few layers with the real per-layer shapes and compose the time of
// the full depth under any plan.
//
// Every layer of a DSA model is one of four classes: dense FFN or MoE, Full (runs its indexer) or Shared
// (reuses the top-k). All layers of one class run the same kernels on the same shapes, so a forward pass
// over the full depth costs
//
//   T(plan) = T_other + Σ_class n_class(plan) · T_class
//
// with T_other the embedding, final norm and LM head (a pass's total minus its layers). The slice holds
// one layer of every class a plan can need (MakeLayerSlice: dense Full, dense Shared when the model has
// two or more dense layers, MoE Full, MoE Shared — "FFS" for GLM-4.7-Flash, "FSFS" for DeepSeek-V3.2 and
// GLM-5), each Shared slice layer right after the Full one it reuses, exactly as in a real plan. The
// composition is exact up to timing noise and to what depends on the values rather than the shapes (the
// MoE routing of random weights spreads tokens over the experts differently from a trained router).
//
//   LayerSlice slice = MakeLayerSlice(full_config);
//   ... run a context of SliceConfig(full_config, slice) with plan slice.plan and profile_layers ...
//   IC_ASSIGN_OR_RETURN(SliceTimes t, SliceTimesFromProfile(slice, ctx->layer_profile(), passes));
//   IC_ASSIGN_OR_RETURN(LayerCounts n, CountLayers(full_config, plan));
//   IC_ASSIGN_OR_RETURN(ComposedTime T, Compose(t, n));
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sdk/config.h"
#include "sdk/engine.h"
#include "sdk/plan.h"

namespace ic {

enum class LayerClass { kDenseFull = 0, kDenseShared = 1, kMoeFull = 2, kMoeShared = 3 };
inline constexpr int kNumLayerClasses = 4;
const char* LayerClassName(LayerClass c);

// How many layers of each class a plan has over the full depth.
struct LayerCounts {
  std::array<int64_t, kNumLayerClasses> n{};
  int64_t operator[](LayerClass c) const { return n[static_cast<int>(c)]; }
  int64_t shared() const { return n[1] + n[3]; }
  int64_t total() const { return n[0] + n[1] + n[2] + n[3]; }
};
// InvalidArgument when the plan's length is not num_hidden_layers. A model without an indexer counts
// every layer as Full.
absl::StatusOr<LayerCounts> CountLayers(const ModelConfig& full, const Plan& plan);

struct LayerSlice {
  std::vector<LayerClass> classes;  // one per slice layer
  std::vector<int> source_layers;   // the full model's layer each slice layer is a copy of (its shapes)
  std::string plan;                 // the slice's F/S plan, e.g. "FFS"
  int full_layers = 0;              // num_hidden_layers of the full model
};
LayerSlice MakeLayerSlice(const ModelConfig& full);

// The config of the slice: the full config with num_hidden_layers, moe_layer and first_k_dense_replace
// of the slice; everything else (shapes, max positions, RoPE) unchanged.
ModelConfig SliceConfig(const ModelConfig& full, const LayerSlice& slice);

// Seconds of one forward pass of the slice, per class (mean over `passes` passes of the profile).
struct SliceTimes {
  double other = 0;                                  // embedding + final norm + LM head + host work
  std::array<double, kNumLayerClasses> layer{};      // whole layer
  std::array<double, kNumLayerClasses> indexer{};    // its indexer + top-k (0 for Shared classes)
  std::array<bool, kNumLayerClasses> present{};
};
// InvalidArgument when the profile does not have one entry per slice layer or passes < 1.
absl::StatusOr<SliceTimes> SliceTimesFromProfile(const LayerSlice& slice, const LayerProfile& profile,
                                                 int64_t passes);

struct ComposedTime {
  double seconds = 0;          // T(plan)
  double indexer_seconds = 0;  // Σ over Full layers of their indexer + top-k time
};
// FailedPrecondition when the counts need a class the slice did not time.
absl::StatusOr<ComposedTime> Compose(const SliceTimes& times, const LayerCounts& counts);

// The mechanism check of IndexCache: the time a plan saves against DSA (measured: T(DSA) − T(plan)) is
// expected to be (Shared layers / all layers) × (DSA's indexer + top-k time).
struct MechanismCheck {
  double saved = 0;     // T(DSA) − T(plan)
  double estimate = 0;  // share of Shared layers × DSA indexer time
  double relative_error() const;  // |saved − estimate| / estimate (0 when both are 0)
  bool within(double tolerance) const { return relative_error() <= tolerance; }
};
MechanismCheck CheckMechanism(const ComposedTime& dsa, const ComposedTime& plan, const LayerCounts& plan_counts);

}  // namespace ic
