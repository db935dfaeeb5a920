// Tests for sdk/metrics.h. Metrics::Global() is a process-wide singleton, so every test compares the
// change of GetTotals() (or of a TextDump() sample) across its own calls, never absolute values. All
// timings are dyadic fractions, so the expected sums are exact in double precision.
#include "sdk/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ic {
namespace {

using ::testing::HasSubstr;

// The value of the sample line `series value` in Prometheus text format; NaN when absent.
double Sample(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.size() > series.size() && line.substr(0, series.size()) == series &&
        line[series.size()] == ' ') {
      double v = 0;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
    }
  }
  return std::nan("");
}

TEST(MetricsTest, TwoPassesSaveMeanTimesShared) {
  Metrics& m = Metrics::Global();
  const Metrics::Totals before = m.GetTotals();
  // Pass 1: two Full layers (0.25 s, 0.5 s; mean 0.375 s) and 6 Shared → saved 2.25 s.
  m.RecordForwardPass({.phase = Phase::kPrefill,
                       .full_indexer_seconds = {0.25, 0.5},
                       .shared_layers = 6,
                       .seconds = 2.0,
                       .tokens = 512,
                       .topk_bytes = 4096});
  // Pass 2: one Full layer (0.125 s) and 3 Shared → saved 0.375 s.
  m.RecordForwardPass({.phase = Phase::kDecode,
                       .full_indexer_seconds = {0.125},
                       .shared_layers = 3,
                       .seconds = 0.0625,
                       .tokens = 4,
                       .topk_bytes = 1024});
  const Metrics::Totals d = m.GetTotals() - before;
  const double run = 0.25 + 0.5 + 0.125;
  const double saved = (0.25 + 0.5) / 2 * 6 + 0.125 / 1 * 3;
  EXPECT_DOUBLE_EQ(d.indexer_seconds, run);
  EXPECT_DOUBLE_EQ(d.saved_seconds, saved);
  EXPECT_DOUBLE_EQ(d.saved_seconds, 2.625);
  EXPECT_DOUBLE_EQ(d.baseline_seconds, run + saved);
  EXPECT_DOUBLE_EQ(d.layers_run, 3);
  EXPECT_DOUBLE_EQ(d.layers_skipped, 9);
  EXPECT_DOUBLE_EQ(d.prompt_tokens, 512);
  EXPECT_DOUBLE_EQ(d.generated_tokens, 4);
  EXPECT_DOUBLE_EQ(d.topk_bytes, 5120);
  EXPECT_DOUBLE_EQ(d.prefill_passes, 1);
  EXPECT_DOUBLE_EQ(d.decode_passes, 1);
}

TEST(MetricsTest, AllFullPassSavesNothingAndDensePassRunsNothing) {
  Metrics& m = Metrics::Global();
  const Metrics::Totals before = m.GetTotals();
  m.RecordForwardPass({.phase = Phase::kDecode, .full_indexer_seconds = {0.5, 0.25, 0.25},
                       .shared_layers = 0, .seconds = 1, .tokens = 2});
  // No Full layer (dense mode): no measured time to scale, so nothing is saved.
  m.RecordForwardPass({.phase = Phase::kDecode, .full_indexer_seconds = {}, .shared_layers = 5,
                       .seconds = 1, .tokens = 2});
  const Metrics::Totals d = m.GetTotals() - before;
  EXPECT_DOUBLE_EQ(d.indexer_seconds, 1.0);
  EXPECT_DOUBLE_EQ(d.saved_seconds, 0.0);
  EXPECT_DOUBLE_EQ(d.baseline_seconds, 1.0);
  EXPECT_DOUBLE_EQ(d.layers_run, 3);
  EXPECT_DOUBLE_EQ(d.layers_skipped, 5);
  EXPECT_DOUBLE_EQ(d.generated_tokens, 4);
  EXPECT_DOUBLE_EQ(d.prompt_tokens, 0);
  EXPECT_DOUBLE_EQ(d.decode_passes, 2);
}

TEST(MetricsTest, NegativeAndNonFiniteValuesAreNotCounted) {
  Metrics& m = Metrics::Global();
  const Metrics::Totals before = m.GetTotals();
  m.RecordForwardPass({.phase = Phase::kPrefill, .full_indexer_seconds = {-1.0, std::nan("")},
                       .shared_layers = -3, .seconds = -2, .tokens = -7, .topk_bytes = -8});
  m.ObserveTopkOverlap(-0.5);
  m.ObserveTopkOverlap(1.5);
  m.ObserveTopkOverlap(std::nan(""));
  const Metrics::Totals d = m.GetTotals() - before;
  EXPECT_DOUBLE_EQ(d.indexer_seconds, 0);
  EXPECT_DOUBLE_EQ(d.saved_seconds, 0);
  EXPECT_DOUBLE_EQ(d.layers_run, 2);  // the layers ran; only their timings were unusable
  EXPECT_DOUBLE_EQ(d.layers_skipped, 0);
  EXPECT_DOUBLE_EQ(d.prompt_tokens, 0);
  EXPECT_DOUBLE_EQ(d.topk_bytes, 0);
  EXPECT_DOUBLE_EQ(d.prefill_passes, 1);
  EXPECT_DOUBLE_EQ(d.topk_overlap_observations, 0);
}

TEST(MetricsTest, TextDumpHasEveryMetricAndMatchesTotals) {
  Metrics& m = Metrics::Global();
  const std::string text_before = m.TextDump();
  m.RecordForwardPass({.phase = Phase::kPrefill, .full_indexer_seconds = {0.5},
                       .shared_layers = 2, .seconds = 0.75, .tokens = 100});
  m.RecordForwardPass({.phase = Phase::kDecode, .full_indexer_seconds = {0.25},
                       .shared_layers = 2, .seconds = 0.003, .tokens = 1});
  m.RecordForwardPass({.phase = Phase::kDecode, .full_indexer_seconds = {0.25}, .shared_layers = 2,
                       .seconds = 0.002, .tokens = 1, .graph_step = GraphStep::kEager, .graph_captures = 1});
  m.RecordForwardPass({.phase = Phase::kDecode, .full_indexer_seconds = {0.25}, .shared_layers = 2,
                       .seconds = 0.001, .tokens = 1, .graph_step = GraphStep::kReplay});
  m.ObserveTopkOverlap(0.97);
  m.ObserveTopkOverlap(0.5);
  const std::string text = m.TextDump();
  const Metrics::Totals t = m.GetTotals();

  for (const char* name :
       {"indexcache_indexer_seconds_total", "indexcache_indexer_saved_seconds_total",
        "indexcache_indexer_baseline_seconds_total", "indexcache_indexer_layers_total",
        "indexcache_topk_bytes_total", "indexcache_prefill_seconds", "indexcache_decode_step_seconds",
        "indexcache_prompt_tokens_total", "indexcache_generated_tokens_total",
        "indexcache_topk_overlap_ratio", "indexcache_forward_passes_total", "indexcache_decode_graph_steps_total",
        "indexcache_decode_graph_captures_total"}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat("# TYPE ", name, " "))) << name;
  }
  EXPECT_THAT(text, HasSubstr("# TYPE indexcache_prefill_seconds histogram"));
  EXPECT_THAT(text, HasSubstr("# TYPE indexcache_indexer_seconds_total counter"));

  EXPECT_DOUBLE_EQ(Sample(text, "indexcache_indexer_seconds_total"), t.indexer_seconds);
  EXPECT_DOUBLE_EQ(Sample(text, "indexcache_indexer_saved_seconds_total"), t.saved_seconds);
  EXPECT_DOUBLE_EQ(Sample(text, "indexcache_indexer_baseline_seconds_total"), t.baseline_seconds);
  EXPECT_DOUBLE_EQ(Sample(text, "indexcache_indexer_layers_total{kind=\"run\"}"), t.layers_run);
  EXPECT_DOUBLE_EQ(Sample(text, "indexcache_indexer_layers_total{kind=\"skipped\"}"), t.layers_skipped);
  EXPECT_DOUBLE_EQ(Sample(text, "indexcache_prompt_tokens_total"), t.prompt_tokens);
  EXPECT_DOUBLE_EQ(Sample(text, "indexcache_generated_tokens_total"), t.generated_tokens);
  EXPECT_DOUBLE_EQ(Sample(text, "indexcache_forward_passes_total{phase=\"prefill\"}"), t.prefill_passes);
  EXPECT_DOUBLE_EQ(Sample(text, "indexcache_forward_passes_total{phase=\"decode\"}"), t.decode_passes);
  EXPECT_DOUBLE_EQ(Sample(text, "indexcache_decode_graph_steps_total{mode=\"replay\"}"), t.graph_replays);
  EXPECT_DOUBLE_EQ(Sample(text, "indexcache_decode_graph_steps_total{mode=\"eager\"}"), t.graph_eager_steps);
  EXPECT_DOUBLE_EQ(Sample(text, "indexcache_decode_graph_captures_total{result=\"ok\"}"), t.graph_captures);
  EXPECT_DOUBLE_EQ(Sample(text, "indexcache_decode_graph_captures_total{result=\"failed\"}"),
                   t.graph_capture_failures);

  // Changes this test made, read from the text alone.
  auto delta = [&](const std::string& series) {
    return Sample(text, series) - Sample(text_before, series);
  };
  EXPECT_DOUBLE_EQ(delta("indexcache_indexer_saved_seconds_total"), 0.5 * 2 + 0.25 * 2 * 3);
  EXPECT_DOUBLE_EQ(delta("indexcache_decode_graph_steps_total{mode=\"replay\"}"), 1);
  EXPECT_DOUBLE_EQ(delta("indexcache_decode_graph_steps_total{mode=\"eager\"}"), 1);
  EXPECT_DOUBLE_EQ(delta("indexcache_decode_graph_captures_total{result=\"ok\"}"), 1);
  EXPECT_DOUBLE_EQ(delta("indexcache_decode_graph_captures_total{result=\"failed\"}"), 0);
  EXPECT_DOUBLE_EQ(delta("indexcache_prefill_seconds_count"), 1);
  EXPECT_DOUBLE_EQ(delta("indexcache_prefill_seconds_sum"), 0.75);
  EXPECT_DOUBLE_EQ(delta("indexcache_prefill_seconds_bucket{le=\"0.5\"}"), 0);
  EXPECT_DOUBLE_EQ(delta("indexcache_prefill_seconds_bucket{le=\"1\"}"), 1);
  EXPECT_DOUBLE_EQ(delta("indexcache_decode_step_seconds_bucket{le=\"0.001\"}"), 1);
  EXPECT_DOUBLE_EQ(delta("indexcache_decode_step_seconds_bucket{le=\"0.005\"}"), 3);
  EXPECT_DOUBLE_EQ(delta("indexcache_decode_step_seconds_bucket{le=\"100\"}"), 3);
  EXPECT_DOUBLE_EQ(delta("indexcache_topk_overlap_ratio_count"), 2);
  EXPECT_DOUBLE_EQ(delta("indexcache_topk_overlap_ratio_bucket{le=\"0.5\"}"), 1);
  EXPECT_DOUBLE_EQ(delta("indexcache_topk_overlap_ratio_bucket{le=\"0.98\"}"), 2);
}

TEST(MetricsTest, ConcurrentRecordingLosesNothing) {
  Metrics& m = Metrics::Global();
  const Metrics::Totals before = m.GetTotals();
  constexpr int kThreads = 8, kPasses = 500;
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&m] {
      for (int j = 0; j < kPasses; ++j) {
        m.RecordForwardPass({.phase = Phase::kDecode, .full_indexer_seconds = {0.125, 0.125},
                             .shared_layers = 4, .seconds = 0.01, .tokens = 1, .topk_bytes = 8});
        m.ObserveTopkOverlap(0.9);
        (void)m.TextDump().size();
      }
    });
  }
  for (auto& t : threads) t.join();
  const Metrics::Totals d = m.GetTotals() - before;
  const double n = kThreads * kPasses;
  EXPECT_DOUBLE_EQ(d.indexer_seconds, n * 0.25);
  EXPECT_DOUBLE_EQ(d.saved_seconds, n * 0.5);
  EXPECT_DOUBLE_EQ(d.baseline_seconds, n * 0.75);
  EXPECT_DOUBLE_EQ(d.layers_run, n * 2);
  EXPECT_DOUBLE_EQ(d.layers_skipped, n * 4);
  EXPECT_DOUBLE_EQ(d.generated_tokens, n);
  EXPECT_DOUBLE_EQ(d.topk_bytes, n * 8);
  EXPECT_DOUBLE_EQ(d.decode_passes, n);
  EXPECT_DOUBLE_EQ(d.topk_overlap_observations, n);
}

// A listening TCP socket on 127.0.0.1 with a kernel-chosen port; closed on destruction.
struct LoopbackListener {
  int fd = -1;
  int port = 0;
  LoopbackListener() {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&addr), len) == 0 && listen(fd, 1) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port = ntohs(addr.sin_port);
    }
  }
  ~LoopbackListener() {
    if (fd >= 0) close(fd);
  }
};

// GET `path` from 127.0.0.1:`port` over a plain socket (HTTP/1.0, so the server closes); at most
// 4 MiB, 10 s per read. Returns "" on any failure.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval tv{.tv_sec = 10, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request =
        absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n");
    if (send(fd, request.data(), request.size(), 0) == static_cast<ssize_t>(request.size())) {
      char buf[4096];
      while (response.size() < (4u << 20)) {
        const ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) break;
        response.append(buf, static_cast<size_t>(n));
      }
    }
  }
  close(fd);
  return response;
}

// The exposer is one per process, so its whole life is one test, in order: bad addresses first (they
// must fail without starting anything), then a start, a scrape, and the second-call rules.
TEST(MetricsTest, ExposerLifecycle) {
  Metrics& m = Metrics::Global();
  ASSERT_EQ(m.ExposerPort(), 0);

  for (const char* bad : {"", "localhost:9464", "127.0.0.1:http", "127.0.0.1:70000", "1.2.3:9464",
                          "[::1:9464", "127.0.0.1:-1", "127.0.0.1:9464s"}) {
    const absl::Status s = m.StartExposer(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat("\"", bad, "\""))) << s;
  }
  {
    // A port someone else listens on cannot be bound.
    LoopbackListener taken;
    ASSERT_GT(taken.port, 0);
    const std::string address = absl::StrCat("127.0.0.1:", taken.port);
    const absl::Status s = m.StartExposer(address);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(address));
  }
  {
    // Not a local address (TEST-NET-1, RFC 5737).
    const absl::Status s = m.StartExposer("192.0.2.1:9464");
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("192.0.2.1:9464"));
  }
  ASSERT_EQ(m.ExposerPort(), 0);

  ASSERT_TRUE(m.StartExposer("127.0.0.1:0").ok());
  const int port = m.ExposerPort();
  ASSERT_GT(port, 0);
  EXPECT_TRUE(m.StartExposer("127.0.0.1:0").ok());  // same address: OK, nothing new started
  EXPECT_EQ(m.ExposerPort(), port);
  const absl::Status other = m.StartExposer(absl::StrCat("127.0.0.1:", port == 65535 ? 1 : port + 1));
  EXPECT_EQ(other.code(), absl::StatusCode::kAlreadyExists) << other;
  EXPECT_THAT(std::string(other.message()), HasSubstr("127.0.0.1:0"));

  m.RecordForwardPass({.phase = Phase::kPrefill, .full_indexer_seconds = {0.5}, .shared_layers = 1,
                       .seconds = 1, .tokens = 3});
  const std::string response = HttpGet(port, "/metrics");
  ASSERT_THAT(response, HasSubstr("200 OK"));
  EXPECT_THAT(response, HasSubstr("# TYPE indexcache_indexer_saved_seconds_total counter"));
  const double scraped = Sample(response, "indexcache_indexer_saved_seconds_total");
  EXPECT_GE(scraped, 0.5);
  EXPECT_LE(scraped, m.GetTotals().saved_seconds);
  EXPECT_THAT(response, HasSubstr("indexcache_forward_passes_total{phase=\"prefill\"}"));
}

}  // namespace
}  // namespace ic
