// C ABI: the process-wide Prometheus metrics (indexcache.h "Metrics").
#include <string>

#include "absl/strings/str_cat.h"
#include "bindings_c/c_api_internal.h"
#include "indexcache/indexcache.h"
#include "sdk/metrics.h"

using namespace ic::capi;  // NOLINT: the shims below are thin.

extern "C" {

ic_status_t ic_metrics_text(char* buf, size_t buf_size, size_t* needed) {
  return Guard("ic_metrics_text", [&]() -> absl::Status {
    if (buf == nullptr && buf_size > 0) {
      return absl::InvalidArgumentError(absl::StrCat("buf is NULL but buf_size is ", buf_size));
    }
    const std::string text = ic::Metrics::Global().TextDump();
    if (needed != nullptr) *needed = text.size() + 1;
    if (buf == nullptr) return absl::OkStatus();  // size query
    return WriteString(text, buf, buf_size, "metrics text");
  });
}

ic_status_t ic_metrics_start_exposer(const char* address) {
  return Guard("ic_metrics_start_exposer", [&]() -> absl::Status {
    IC_RETURN_IF_ERROR(CheckNotNull(address, "address"));
    return ic::Metrics::Global().StartExposer(address);
  });
}

ic_status_t ic_metrics_exposer_port(int32_t* port) {
  return Guard("ic_metrics_exposer_port", [&]() -> absl::Status {
    IC_RETURN_IF_ERROR(CheckNotNull(port, "port"));
    *port = ic::Metrics::Global().ExposerPort();
    return absl::OkStatus();
  });
}

}  // extern "C"
