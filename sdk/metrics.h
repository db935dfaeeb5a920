// Prometheus metrics (prometheus-cpp), DESIGN.md §6.
//
// One registry per process (Metrics::Global()); every context records into it. An HTTP exposer is
// started on request (StartExposer), at most one per process; TextDump() gives the text format.
//
// What IndexCache adds: at Full layers the indexer + top-k time is measured; at Shared layers it is
// skipped, and the time saved is estimated as (mean measured Full-layer indexer time in the same forward
// pass) × (number of Shared layers) — RecordForwardPass() does that arithmetic. CUDA-graph decode:
// indexcache_decode_graph_steps_total{mode="replay"|"eager"} (graph-eligible decode steps by how they ran)
// and indexcache_decode_graph_captures_total{result="ok"|"failed"}.
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

// How a decode step ran with CUDA-graph decode on (ContextOptions::cuda_graphs).
enum class GraphStep {
  kNone,    // not a graph-eligible step (prefill, the CPU, graphs off, a step that needs the host)
  kEager,   // eligible, run eagerly (the first steps of a shape, or after its buffers moved)
  kReplay,  // launched from a captured graph
};

struct ForwardPassStats {
  Phase phase = Phase::kPrefill;
  std::vector<double> full_indexer_seconds;  // one entry per Full layer run in this pass
  int shared_layers = 0;                     // indexer calls skipped in this pass
  double seconds = 0;                        // wall time of the whole pass
  int64_t tokens = 0;                        // prompt tokens (prefill) or generated tokens (decode)
  int64_t topk_bytes = 0;                    // top-k bytes moved inside shard groups
  GraphStep graph_step = GraphStep::kNone;
  int graph_captures = 0, graph_capture_failures = 0;  // CUDA graphs captured after this step
};

class Metrics {
 public:
  static Metrics& Global();

  // Records one forward pass. Seconds, tokens and bytes that are negative or not finite are not
  // recorded (counters only go up); a pass with no Full layer saves nothing (no measured time to scale).
  void RecordForwardPass(const ForwardPassStats& stats);
  // Collective traffic of one rank (multi-GPU contexts): `group` is "shard" (attention tensor parallel)
  // or "expert" (expert parallel), `collective` a parallel::CollectiveName ("AllGather", "AllToAllV", …);
  // adds to indexcache_communication_{bytes,seconds,calls}_total{group, collective}. Negative values
  // are ignored.
  void RecordCommunication(const std::string& group, const std::string& collective, int64_t calls, int64_t bytes,
                           double seconds);
  // One top-k overlap observation (audit mode): |A ∩ B| / |A|. Values outside [0, 1] are not recorded.
  void ObserveTopkOverlap(double ratio);

  // Starts the HTTP exposer (GET /metrics; sdk/metrics_http.h) on `address`: "127.0.0.1:9464"; ":9464"
  // or "9464" for every interface; "[::1]:9464" for IPv6.
  // Port 0 picks a free port, see ExposerPort(). Calling it again with the same address is OK;
  // AlreadyExists if one is running on another address; InvalidArgument when the address is malformed
  // (hostnames are not resolved); Unavailable when it cannot be bound (in use, not a local address).
  absl::Status StartExposer(const std::string& address);

  // The TCP port the exposer listens on (useful after port 0), or 0 when no exposer is running.
  int ExposerPort() const;

  // Prometheus text exposition format of every metric.
  std::string TextDump() const;

  // Totals, for tests, the demo and the CLI.
  struct Totals {
    double indexer_seconds = 0, saved_seconds = 0, baseline_seconds = 0;
    double layers_run = 0, layers_skipped = 0;
    double prompt_tokens = 0, generated_tokens = 0, topk_bytes = 0;
    double prefill_passes = 0, decode_passes = 0, topk_overlap_observations = 0;
    double graph_replays = 0, graph_eager_steps = 0, graph_captures = 0, graph_capture_failures = 0;
    // What happened between two snapshots: `after - before`, field by field.
    Totals operator-(const Totals& before) const;
  };
  Totals GetTotals() const;

  ~Metrics();

 private:
  Metrics();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ic
