// How well a plan's top-k sets cover each layer's attention, and how much the layers' own top-k sets
// overlap (the paper's Appendix A study; arXiv 2603.12201).
//
// For a plan, every window runs as one forward pass (a fresh sequence); at each layer ℓ, with S_t the keys
// ℓ attends to for query t (its own top-k when Full, the nearest preceding Full layer's when Shared) and
// A_ℓ[t, :] the head-averaged dense causal attention computed from the same pass's queries and keys:
//   recall_ℓ  = mean over counted rows t of Σ_{s ∈ S_t} A_ℓ[t, s]          (1 = the top-k loses nothing)
//   overlap_ij = mean over counted rows t of |S_t^(i) ∩ S_t^(j)| / |S_t^(i)|
// Counted rows are those with position + 1 > index_topk (shorter rows select every key: recall 1,
// overlap 1, and would only dilute the means).
//
//   IC_ASSIGN_OR_RETURN(SelectionReport r, MeasureSelection(model, windows, "FFFF…", DeviceKind::kCuda));
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "sdk/engine.h"
#include "sdk/weights.h"

namespace ic {

struct SelectionReport {
  int layers = 0;
  int64_t rows = 0;             // counted query rows (summed over windows)
  std::vector<double> recall;   // [layers]
  std::vector<double> overlap;  // [layers × layers], row-major; the diagonal is 1
};

// InvalidArgument: a model without an indexer, no windows, a window shorter than 2 tokens, a token outside
// the vocabulary, a plan the model cannot run. `precisions`: the indexer / attention / weight precision of the
// context that runs the windows (its other fields are ignored), so that the report measures the selection the
// evaluated configuration makes. Memory: layers × T² × 4 bytes for a window of T tokens.
absl::StatusOr<SelectionReport> MeasureSelection(std::shared_ptr<const Model> model,
                                                 std::span<const std::vector<int32_t>> windows,
                                                 const std::string& plan, kernels::DeviceKind device,
                                                 const ContextOptions& precisions = {});

}  // namespace ic
