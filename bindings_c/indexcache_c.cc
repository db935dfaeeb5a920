// The C ABI's common entry points (indexcache.h): version, status names, the per-thread last error,
// the live-handle registry, and the device count. Models, contexts and metrics live in c_model.cc,
// c_context.cc and c_metrics.cc.
#include <mutex>
#include <string>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "bindings_c/c_api_internal.h"
#include "indexcache/indexcache.h"
#include "kernels/backend.h"

namespace ic::capi {
namespace {

// The last error of this thread. A fixed fallback covers the case where the message cannot even be
// allocated, so ic_last_error_message never returns NULL.
thread_local std::string t_last_error;
thread_local const char* t_last_error_override = nullptr;

std::mutex& RegistryMutex() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::unordered_set<const void*>& Registry() {
  static auto* live = new std::unordered_set<const void*>;
  return *live;
}

}  // namespace

ic_status_t ToCStatus(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return IC_OK;
    case absl::StatusCode::kInvalidArgument: return IC_ERR_INVALID_ARGUMENT;
    case absl::StatusCode::kNotFound: return IC_ERR_NOT_FOUND;
    case absl::StatusCode::kResourceExhausted: return IC_ERR_OUT_OF_MEMORY;
    case absl::StatusCode::kUnavailable: return IC_ERR_UNAVAILABLE;
    case absl::StatusCode::kFailedPrecondition: return IC_ERR_FAILED_PRECONDITION;
    case absl::StatusCode::kAlreadyExists: return IC_ERR_ALREADY_EXISTS;
    case absl::StatusCode::kOutOfRange: return IC_ERR_OUT_OF_RANGE;
    case absl::StatusCode::kUnimplemented: return IC_ERR_UNIMPLEMENTED;
    case absl::StatusCode::kPermissionDenied: return IC_ERR_FAILED_PRECONDITION;
    case absl::StatusCode::kAborted: return IC_ERR_ABORTED;
    case absl::StatusCode::kDeadlineExceeded: return IC_ERR_ABORTED;
    case absl::StatusCode::kCancelled: return IC_ERR_ABORTED;
    default: return IC_ERR_INTERNAL;  // kInternal, kUnknown, kDataLoss, kAborted, kCancelled, ...
  }
}

ic_status_t SetError(const char* function, ic_status_t code, const char* message) {
  try {
    t_last_error = absl::StrCat(function, ": ", message);
    t_last_error_override = nullptr;
  } catch (...) {
    t_last_error_override = "out of host memory while recording an error message";
  }
  return code;
}

ic_status_t SetResult(const char* function, const absl::Status& status) {
  if (status.ok()) {
    t_last_error.clear();
    t_last_error_override = nullptr;
    return IC_OK;
  }
  ic_status_t code = ToCStatus(status.code());
  try {
    std::string msg(status.message());
    if (code == IC_ERR_INTERNAL && status.code() != absl::StatusCode::kInternal) {
      msg = absl::StrCat(absl::StatusCodeToString(status.code()), ": ", msg);
    }
    return SetError(function, code, msg.c_str());
  } catch (...) {
    return SetError(function, code, "(message unavailable: out of host memory)");
  }
}

void RegisterHandle(const void* handle) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  Registry().insert(handle);
}

bool UnregisterHandle(const void* handle) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  return Registry().erase(handle) > 0;
}

bool IsLiveHandle(const void* handle) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  return Registry().count(handle) > 0;
}

absl::StatusOr<ic_model_t*> GetModel(const ic_model_t* handle, const char* arg) {
  if (handle == nullptr) return absl::InvalidArgumentError(absl::StrCat(arg, " is NULL"));
  if (!IsLiveHandle(handle) || handle->magic != ic_model_t::kMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat(arg, " is not a live ic_model_t (already freed, or not a model handle)"));
  }
  return const_cast<ic_model_t*>(handle);
}

absl::StatusOr<ic_context_t*> GetContext(const ic_context_t* handle, const char* arg) {
  if (handle == nullptr) return absl::InvalidArgumentError(absl::StrCat(arg, " is NULL"));
  if (!IsLiveHandle(handle) || handle->magic != ic_context_t::kMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat(arg, " is not a live ic_context_t (already freed, or not a context handle)"));
  }
  return const_cast<ic_context_t*>(handle);
}

absl::Status WriteString(const std::string& text, char* buf, size_t buf_size, const char* what) {
  IC_RETURN_IF_ERROR(CheckNotNull(buf, "buf"));
  if (buf_size < text.size() + 1) {
    return absl::InvalidArgumentError(absl::StrCat("buf_size ", buf_size, " is too small: the ", what,
                                                   " needs ", text.size() + 1, " bytes (",
                                                   text.size(), " characters + NUL)"));
  }
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  return absl::OkStatus();
}

}  // namespace ic::capi

extern "C" {

int ic_version(void) { return IC_VERSION; }

const char* ic_version_string(void) { return IC_VERSION_STRING; }

const char* ic_status_string(ic_status_t status) {
  switch (status) {
    case IC_OK: return "IC_OK";
    case IC_ERR_INVALID_ARGUMENT: return "IC_ERR_INVALID_ARGUMENT";
    case IC_ERR_NOT_FOUND: return "IC_ERR_NOT_FOUND";
    case IC_ERR_OUT_OF_MEMORY: return "IC_ERR_OUT_OF_MEMORY";
    case IC_ERR_UNAVAILABLE: return "IC_ERR_UNAVAILABLE";
    case IC_ERR_FAILED_PRECONDITION: return "IC_ERR_FAILED_PRECONDITION";
    case IC_ERR_INTERNAL: return "IC_ERR_INTERNAL";
    case IC_ERR_ALREADY_EXISTS: return "IC_ERR_ALREADY_EXISTS";
    case IC_ERR_OUT_OF_RANGE: return "IC_ERR_OUT_OF_RANGE";
    case IC_ERR_UNIMPLEMENTED: return "IC_ERR_UNIMPLEMENTED";
    case IC_ERR_ABORTED: return "IC_ERR_ABORTED";
  }
  return "IC_ERR_UNKNOWN";
}

const char* ic_last_error_message(void) {
  if (ic::capi::t_last_error_override != nullptr) return ic::capi::t_last_error_override;
  return ic::capi::t_last_error.c_str();
}

int ic_cuda_device_count(void) {
  try {
    ic::capi::SetResult("ic_cuda_device_count", absl::OkStatus());
    return ic::kernels::CudaDeviceCount();
  } catch (...) {
    return 0;
  }
}

}  // extern "C"
