// Prometheus metrics (prometheus-cpp), DESIGN.md §6. See metrics.h.
#include "sdk/metrics.h"
#include "sdk/metrics_http.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <map>
#include <mutex>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "prometheus/counter.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace ic {
namespace {

// Wall times of one pass: 1 ms .. 100 s, 1-2.5-5 steps.
const prometheus::Histogram::BucketBoundaries& SecondsBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100};
  return *b;
}

// Overlap ratios live in [0, 1]; audits care most about the top end.
const prometheus::Histogram::BucketBoundaries& RatioBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0};
  return *b;
}

bool Countable(double v) { return std::isfinite(v) && v >= 0; }

// Checks "host:port", "[v6]:port", ":port" or "port", so that a typo is InvalidArgument rather than a
// bind failure.
absl::Status ValidateAddress(const std::string& address) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics exposer address \"", address, "\" is invalid: ", why,
                     " (expected IP:port or :port, e.g. 127.0.0.1:9464 or :9464)"));
  };
  if (address.empty()) return bad("empty");
  absl::string_view host, port = address;
  const size_t colon = address.rfind(':');
  if (colon != std::string::npos) {
    host = absl::string_view(address).substr(0, colon);
    port = absl::string_view(address).substr(colon + 1);
  }
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return absl::ascii_isdigit(c); })) {
    return bad(absl::StrCat("port \"", port, "\" is not a number"));
  }
  int port_number = 0;
  if (!absl::SimpleAtoi(port, &port_number) || port_number > 65535) {
    return bad(absl::StrCat("port ", port, " is out of range 0..65535"));
  }
  if (host.empty()) return absl::OkStatus();
  unsigned char buf[16];
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return bad("unbalanced brackets around the IPv6 host");
    const std::string v6(host.substr(1, host.size() - 2));
    if (inet_pton(AF_INET6, v6.c_str(), buf) != 1) return bad(absl::StrCat("\"", v6, "\" is not IPv6"));
    return absl::OkStatus();
  }
  const std::string v4(host);
  if (inet_pton(AF_INET, v4.c_str(), buf) != 1) {
    return bad(absl::StrCat("host \"", v4, "\" is not an IPv4 address (IPv6 goes in brackets)"));
  }
  return absl::OkStatus();
}

}  // namespace

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();

  prometheus::Counter* indexer_seconds;
  prometheus::Counter* saved_seconds;
  prometheus::Counter* baseline_seconds;
  prometheus::Counter* layers_run;
  prometheus::Counter* layers_skipped;
  prometheus::Counter* topk_bytes;
  prometheus::Counter* prompt_tokens;
  prometheus::Counter* generated_tokens;
  prometheus::Counter* prefill_passes;
  prometheus::Counter* decode_passes;
  prometheus::Counter* graph_replays;
  prometheus::Counter* graph_eager_steps;
  prometheus::Counter* graph_captures;
  prometheus::Counter* graph_capture_failures;
  prometheus::Histogram* prefill_seconds;
  prometheus::Histogram* decode_step_seconds;
  prometheus::Histogram* topk_overlap;
  prometheus::Family<prometheus::Counter>* comm_bytes;
  prometheus::Family<prometheus::Counter>* comm_seconds;
  prometheus::Family<prometheus::Counter>* comm_calls;

  // Serialises recording against GetTotals/TextDump so that a snapshot never shows half a pass.
  mutable std::mutex record_mu;

  mutable std::mutex exposer_mu;
  std::unique_ptr<MetricsHttpServer> exposer;    // guarded by exposer_mu
  std::string exposer_address;                   // guarded by exposer_mu
  int exposer_port = 0;                          // guarded by exposer_mu

  Impl() {
    auto& r = *registry;
    auto family = [&](const char* name, const char* help) -> prometheus::Family<prometheus::Counter>& {
      return prometheus::BuildCounter().Name(name).Help(help).Register(r);
    };
    auto counter = [&](const char* name, const char* help) { return &family(name, help).Add({}); };
    indexer_seconds = counter("indexcache_indexer_seconds_total",
                              "Indexer + top-k time measured at Full layers, in seconds.");
    saved_seconds = counter("indexcache_indexer_saved_seconds_total",
                            "Estimated indexer time saved at Shared layers: per forward pass, the mean "
                            "measured Full-layer indexer time times the number of Shared layers.");
    baseline_seconds = counter("indexcache_indexer_baseline_seconds_total",
                               "Indexer time baseline DSA would have spent (run + saved), in seconds.");
    auto& layers = family("indexcache_indexer_layers_total",
                          "Indexer executions: kind=run at Full layers, kind=skipped at Shared.");
    layers_run = &layers.Add({{"kind", "run"}});
    layers_skipped = &layers.Add({{"kind", "skipped"}});
    topk_bytes = counter("indexcache_topk_bytes_total", "Top-k index bytes moved inside shard groups.");
    comm_bytes = &family("indexcache_communication_bytes_total",
                         "Bytes this rank sent in collectives, by group (shard, expert) and collective.");
    comm_seconds = &family("indexcache_communication_seconds_total",
                           "Wall time this rank spent inside collectives, by group and collective, in seconds.");
    comm_calls = &family("indexcache_communication_calls_total",
                         "Collective calls of this rank, by group and collective.");
    prompt_tokens = counter("indexcache_prompt_tokens_total", "Prompt tokens prefilled.");
    generated_tokens = counter("indexcache_generated_tokens_total", "Tokens generated by decode steps.");
    auto& passes = family("indexcache_forward_passes_total", "Forward passes by phase (prefill or decode).");
    prefill_passes = &passes.Add({{"phase", "prefill"}});
    decode_passes = &passes.Add({{"phase", "decode"}});
    auto& graph_steps = family("indexcache_decode_graph_steps_total",
                               "Decode steps eligible for CUDA graphs, by mode: replay (launched from a "
                               "captured graph) or eager (a shape's first steps, or after its buffers moved).");
    graph_replays = &graph_steps.Add({{"mode", "replay"}});
    graph_eager_steps = &graph_steps.Add({{"mode", "eager"}});
    auto& captures = family("indexcache_decode_graph_captures_total",
                            "CUDA graphs captured for decode shapes, by result (ok or failed: that shape "
                            "stays eager until its buffers move).");
    graph_captures = &captures.Add({{"result", "ok"}});
    graph_capture_failures = &captures.Add({{"result", "failed"}});
    prefill_seconds = &prometheus::BuildHistogram()
                           .Name("indexcache_prefill_seconds")
                           .Help("Wall time of one prefill forward pass, in seconds.")
                           .Register(r)
                           .Add({}, SecondsBuckets());
    decode_step_seconds = &prometheus::BuildHistogram()
                               .Name("indexcache_decode_step_seconds")
                               .Help("Wall time of one decode step (one forward pass), in seconds.")
                               .Register(r)
                               .Add({}, SecondsBuckets());
    topk_overlap = &prometheus::BuildHistogram()
                        .Name("indexcache_topk_overlap_ratio")
                        .Help("Audit: |A and B| / |A| between a Shared layer's reused top-k and the "
                              "top-k its own indexer would select.")
                        .Register(r)
                        .Add({}, RatioBuckets());
  }
};

Metrics& Metrics::Global() {
  // Never destroyed: an exposer thread may still be serving a scrape while the process exits.
  static Metrics* const metrics = new Metrics();
  return *metrics;
}

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}
Metrics::~Metrics() = default;

void Metrics::RecordCommunication(const std::string& group, const std::string& collective, int64_t calls,
                                  int64_t bytes, double seconds) {
  std::lock_guard<std::mutex> lock(impl_->record_mu);
  const std::map<std::string, std::string> labels = {{"group", group}, {"collective", collective}};
  if (calls > 0) impl_->comm_calls->Add(labels).Increment(static_cast<double>(calls));
  if (bytes > 0) impl_->comm_bytes->Add(labels).Increment(static_cast<double>(bytes));
  if (seconds > 0 && std::isfinite(seconds)) impl_->comm_seconds->Add(labels).Increment(seconds);
}

void Metrics::RecordForwardPass(const ForwardPassStats& stats) {
  double run_seconds = 0;
  int run_layers = 0;
  for (double s : stats.full_indexer_seconds) {
    ++run_layers;  // a layer with a bad timing still ran
    if (Countable(s)) run_seconds += s;
  }
  const int skipped = stats.shared_layers > 0 ? stats.shared_layers : 0;
  const double saved = run_layers > 0 ? run_seconds / run_layers * skipped : 0.0;

  std::lock_guard<std::mutex> lock(impl_->record_mu);
  impl_->indexer_seconds->Increment(run_seconds);
  impl_->saved_seconds->Increment(saved);
  impl_->baseline_seconds->Increment(run_seconds + saved);
  impl_->layers_run->Increment(run_layers);
  impl_->layers_skipped->Increment(skipped);
  if (stats.topk_bytes > 0) impl_->topk_bytes->Increment(static_cast<double>(stats.topk_bytes));
  const bool prefill = stats.phase == Phase::kPrefill;
  (prefill ? impl_->prefill_passes : impl_->decode_passes)->Increment();
  if (stats.graph_step == GraphStep::kReplay) impl_->graph_replays->Increment();
  if (stats.graph_step == GraphStep::kEager) impl_->graph_eager_steps->Increment();
  if (stats.graph_captures > 0) impl_->graph_captures->Increment(stats.graph_captures);
  if (stats.graph_capture_failures > 0) impl_->graph_capture_failures->Increment(stats.graph_capture_failures);
  if (stats.tokens > 0) {
    (prefill ? impl_->prompt_tokens : impl_->generated_tokens)
        ->Increment(static_cast<double>(stats.tokens));
  }
  if (Countable(stats.seconds)) {
    (prefill ? impl_->prefill_seconds : impl_->decode_step_seconds)->Observe(stats.seconds);
  }
}

void Metrics::ObserveTopkOverlap(double ratio) {
  if (!(ratio >= 0 && ratio <= 1)) return;  // also rejects NaN
  std::lock_guard<std::mutex> lock(impl_->record_mu);
  impl_->topk_overlap->Observe(ratio);
}

absl::Status Metrics::StartExposer(const std::string& address) {
  std::lock_guard<std::mutex> lock(impl_->exposer_mu);
  if (impl_->exposer != nullptr) {
    if (address == impl_->exposer_address) return absl::OkStatus();
    return absl::AlreadyExistsError(
        absl::StrCat("metrics exposer already running on ", impl_->exposer_address,
                     " (one per process); cannot also start it on ", address));
  }
  if (absl::Status s = ValidateAddress(address); !s.ok()) return s;
  // "host:port", "[v6]:port", ":port" or "port" (validated above).
  const size_t colon = address.rfind(':');
  std::string host = colon == std::string::npos ? "" : address.substr(0, colon);
  const int port = std::stoi(colon == std::string::npos ? address : address.substr(colon + 1));
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start(host, port, [this] { return TextDump(); });
  if (!server.ok()) {
    return absl::Status(server.status().code(), absl::StrCat("cannot start the metrics exposer on ", address,
                                                             ": ", server.status().message()));
  }
  impl_->exposer_port = (*server)->port();
  impl_->exposer_address = address;
  impl_->exposer = std::move(*server);
  return absl::OkStatus();
}
int Metrics::ExposerPort() const {
  std::lock_guard<std::mutex> lock(impl_->exposer_mu);
  return impl_->exposer_port;
}

std::string Metrics::TextDump() const {
  std::vector<prometheus::MetricFamily> families;
  {
    std::lock_guard<std::mutex> lock(impl_->record_mu);
    families = impl_->registry->Collect();
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

Metrics::Totals Metrics::Totals::operator-(const Totals& b) const {
  Totals d;
  d.indexer_seconds = indexer_seconds - b.indexer_seconds;
  d.saved_seconds = saved_seconds - b.saved_seconds;
  d.baseline_seconds = baseline_seconds - b.baseline_seconds;
  d.layers_run = layers_run - b.layers_run;
  d.layers_skipped = layers_skipped - b.layers_skipped;
  d.prompt_tokens = prompt_tokens - b.prompt_tokens;
  d.generated_tokens = generated_tokens - b.generated_tokens;
  d.topk_bytes = topk_bytes - b.topk_bytes;
  d.prefill_passes = prefill_passes - b.prefill_passes;
  d.decode_passes = decode_passes - b.decode_passes;
  d.topk_overlap_observations = topk_overlap_observations - b.topk_overlap_observations;
  d.graph_replays = graph_replays - b.graph_replays;
  d.graph_eager_steps = graph_eager_steps - b.graph_eager_steps;
  d.graph_captures = graph_captures - b.graph_captures;
  d.graph_capture_failures = graph_capture_failures - b.graph_capture_failures;
  return d;
}

Metrics::Totals Metrics::GetTotals() const {
  std::lock_guard<std::mutex> lock(impl_->record_mu);
  const Impl& m = *impl_;
  Totals t;
  t.indexer_seconds = m.indexer_seconds->Value();
  t.saved_seconds = m.saved_seconds->Value();
  t.baseline_seconds = m.baseline_seconds->Value();
  t.layers_run = m.layers_run->Value();
  t.layers_skipped = m.layers_skipped->Value();
  t.prompt_tokens = m.prompt_tokens->Value();
  t.generated_tokens = m.generated_tokens->Value();
  t.topk_bytes = m.topk_bytes->Value();
  t.prefill_passes = m.prefill_passes->Value();
  t.decode_passes = m.decode_passes->Value();
  t.topk_overlap_observations =
      static_cast<double>(m.topk_overlap->Collect().histogram.sample_count);
  t.graph_replays = m.graph_replays->Value();
  t.graph_eager_steps = m.graph_eager_steps->Value();
  t.graph_captures = m.graph_captures->Value();
  t.graph_capture_failures = m.graph_capture_failures->Value();
  return t;
}

}  // namespace ic
