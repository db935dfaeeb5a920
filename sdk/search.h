// Training-free greedy IndexCache plan search (arXiv 2603.12201 §3.1; DESIGN.md §3 "Greedy search").
//
// Start all-Full. Each step tries flipping every remaining Full layer except layer 0 to Shared, scores
// each candidate plan by the mean next-token LM loss over all predicted tokens of the same calibration
// windows, and commits the best flip (ties → the smaller layer index). Stop when `target_full_layers`
// remain (keep = 1/r: ceil(N / r)). The loss is recorded after every step: plan.search_losses[0] is the
// all-Full loss, then one entry per step (N − target steps).
//
// Reuse: flipping layer ℓ changes nothing before ℓ, and the Shared ℓ uses the top-k of the nearest Full
// layer before ℓ, which the current plan already computed. So per step and window, one full pass of the
// current plan captures the hidden state entering every layer and the top-k of every Full layer; each
// candidate ℓ then runs only layers ℓ..N−1 (Context::Forward with ForwardOptions::start_layer = ℓ,
// initial_hidden = x_ℓ, initial_topk = the top-k layer ℓ−1 used). Each pass is a fresh sequence, in
// chunks of SearchOptions::prefill_chunk tokens, as Context::EvalLoss runs it.
//
// Memory: windows are processed one at a time (every candidate of the step is scored on a window before
// the next window is captured), so the captures hold ONE window:
//     tokens × layers × (hidden + index_topk) × 4 B
// (hidden states entering every layer, float32; top-k indices per layer, int32), e.g. 4096 tokens × 30
// layers × (576 + 256) × 4 B ≈ 390 MiB. It does not grow with the number of windows (time does: each
// step costs, per window, one full pass plus one partial pass per remaining Full layer). A window whose
// captures exceed SearchOptions::max_capture_bytes (default 4 GiB) is rejected (ResourceExhausted naming
// the bytes needed); split the calibration text into shorter windows. One Context of the all-Full plan
// holds the KV cache of one window (every candidate plan runs on it via ForwardOptions::plan).
//
//   IC_ASSIGN_OR_RETURN(Plan plan, SearchPlan(model, windows, /*target_full_layers=*/(N + 3) / 4, {}));
//   IC_RETURN_IF_ERROR(SavePlanFile("plan.txt", plan));  // pattern, source, step_losses
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "sdk/plan.h"
#include "sdk/weights.h"

namespace ic {

// Reported after each scored candidate (per window) and after each full capture pass.
struct SearchProgress {
  int step = 0;                // 1-based step being searched
  int steps = 0;               // N − target
  int window = 0;              // 0-based window being scored
  int windows = 0;
  int candidate = 0;           // candidates of this step scored so far on this window (0: capture pass)
  int candidates = 0;          // candidates of this step (Full layers other than 0)
  double elapsed_seconds = 0;
  double remaining_seconds = 0;  // estimate from the layer-token work done so far
};

// Reported when a step commits its flip.
struct SearchStep {
  int step = 0;       // 1-based
  int layer = 0;      // the layer flipped to Shared
  double loss = 0;    // mean calibration loss of the new plan
  std::string plan;   // the new plan, F/S
  double elapsed_seconds = 0;
};

struct SearchOptions {
  kernels::DeviceKind device = kernels::DeviceKind::kCpu;
  int device_ordinal = 0;
  int prefill_chunk = 512;                        // tokens per forward pass (as ContextOptions)
  int64_t max_capture_bytes = int64_t{4} << 30;   // bound on one window's captures (see above)
  std::string keep_label;                          // e.g. "1/4": written into plan.source
  std::function<void(const SearchProgress&)> progress;
  std::function<void(const SearchStep&)> on_step;
  // Called with the all-Full loss before the first step (optional).
  std::function<void(double)> on_start;
};

// Bytes of one window's captures (formula above).
int64_t SearchCaptureBytes(const ModelConfig& config, int64_t window_tokens);

// Greedy search. Errors: InvalidArgument for an empty calibration set, a window shorter than 2 tokens,
// a token id outside the vocabulary (naming window and index), target outside [1, N];
// FailedPrecondition for a model without an indexer (nothing to search); ResourceExhausted for a window
// whose captures exceed max_capture_bytes; a model whose layers cannot all be Full (missing indexer
// weights) fails as Context::Create does.
absl::StatusOr<Plan> SearchPlan(std::shared_ptr<const Model> model,
                                std::span<const std::vector<int32_t>> calibration_windows, int target_full_layers,
                                const SearchOptions& options = {});

}  // namespace ic
