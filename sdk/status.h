// Status helpers used across the SDK.
//
// Our Abseil (Debian, 20220623) lacks ABSL_RETURN_IF_ERROR / ABSL_ASSIGN_OR_RETURN, so we define the
// two macros we need. Everything inside the SDK returns absl::Status or absl::StatusOr<T>; the C ABI
// turns them into ic_status_t (bindings_c/).
//
//   IC_RETURN_IF_ERROR(LoadConfig(dir));
//   IC_ASSIGN_OR_RETURN(ModelConfig config, ParseConfig(json_text));
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define IC_STATUS_CONCAT_INNER_(a, b) a##b
#define IC_STATUS_CONCAT_(a, b) IC_STATUS_CONCAT_INNER_(a, b)

#define IC_RETURN_IF_ERROR(expr)                      \
  do {                                                \
    ::absl::Status ic_status_ = (expr);               \
    if (!ic_status_.ok()) return ic_status_;          \
  } while (0)

#define IC_ASSIGN_OR_RETURN(lhs, rexpr) \
  IC_ASSIGN_OR_RETURN_IMPL_(IC_STATUS_CONCAT_(ic_statusor_, __LINE__), lhs, rexpr)

#define IC_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                              \
  if (!statusor.ok()) return statusor.status();         \
  lhs = std::move(statusor).value()

namespace ic {

// InvalidArgument with the pieces concatenated (absl::StrCat semantics).
template <typename... Args>
absl::Status InvalidArgument(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

}  // namespace ic
