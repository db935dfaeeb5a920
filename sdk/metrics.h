// Prometheus metrics (prometheus-cpp), DESIGN.md §6.
//
// One registry per process (Metrics::Global()); every context records into it. An HTTP exposer is
// started on request (StartExposer), at most one per process; TextDump() gives the text format.
//
// What IndexCache adds: at Full layers the indexer + top-k time is measured; at Shared layers it is
// skipped, and the time saved is estimated as (mean measured Full-layer indexer time in the same forward
// pass) × (number of Shared layers) — RecordForwardPass() does that arithmetic.
//
//   auto& m = Metrics::Global();
//   m.RecordForwardPass({.phase = Phase::kPrefill, .full_indexer_seconds = {0.01, 0.012},
//                        .shared_layers = 6, .seconds = 0.2, .tokens = 512});
//   std::string text = m.TextDump();
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace ic {

enum class Phase { kPrefill, kDecode };

struct ForwardPassStats {
  Phase phase = Phase::kPrefill;
  std::vector<double> full_indexer_seconds;  // one entry per Full layer run in this pass
  int shared_layers = 0;                     // indexer calls skipped in this pass
  double seconds = 0;                        // wall time of the whole pass
  int64_t tokens = 0;                        // prompt tokens (prefill) or generated tokens (decode)
  int64_t topk_bytes = 0;                    // top-k bytes moved inside shard groups
};

class Metrics {
 public:
  static Metrics& Global();

  void RecordForwardPass(const ForwardPassStats& stats);
  // One top-k overlap observation (audit mode): |A ∩ B| / |A|.
  void ObserveTopkOverlap(double ratio);

  // Starts the HTTP exposer on `address` ("127.0.0.1:9464"); AlreadyExists if one is running on another
  // address; InvalidArgument / Unavailable when the address cannot be bound.
  absl::Status StartExposer(const std::string& address);

  // Prometheus text exposition format of every metric.
  std::string TextDump() const;

  // Totals, for tests, the demo and the CLI.
  struct Totals {
    double indexer_seconds = 0, saved_seconds = 0, baseline_seconds = 0;
    double layers_run = 0, layers_skipped = 0;
    double prompt_tokens = 0, generated_tokens = 0, topk_bytes = 0;
  };
  Totals GetTotals() const;

  ~Metrics();

 private:
  Metrics();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ic
