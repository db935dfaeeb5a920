// Shared machinery of the extern "C" shims: handle structs, the live-handle registry, absl::Status →
// ic_status_t with a per-thread message, the exception firewall, and struct_size checks.
//
// Every entry point has the same shape:
//
//   ic_status_t ic_sequence_add(ic_context_t* ctx, int32_t* out) {
//     return ic::capi::Guard("ic_sequence_add", [&]() -> absl::Status {
//       IC_ASSIGN_OR_RETURN(ic::Context* c, ic::capi::GetContext(ctx, "ctx"));
//       IC_RETURN_IF_ERROR(ic::capi::CheckNotNull(out, "seq_id_out"));
//       ...
//     });
//   }
//
// Guard catches every exception (std::bad_alloc → IC_ERR_OUT_OF_MEMORY, anything else →
// IC_ERR_INTERNAL), records the message prefixed with the function name, and returns the code.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "indexcache/indexcache.h"
#include "parallel/process_groups.h"
#include "sdk/engine.h"
#include "sdk/status.h"
#include "sdk/weights.h"

// Handles. The magic number comes first so that a stale or foreign pointer is told apart (best effort).
struct ic_model_t {
  static constexpr uint32_t kMagic = 0x49434d44;  // "ICMD"
  uint32_t magic = kMagic;
  std::shared_ptr<const ic::Model> model;
  std::string architecture;  // NUL-terminated copy handed out by ic_model_info
};

struct ic_context_t {
  static constexpr uint32_t kMagic = 0x49434358;  // "ICCX"
  uint32_t magic = kMagic;
  std::shared_ptr<const ic::Model> model;  // shared ownership: ic_model_free may come first
  // Several ranks: this rank's world communicator and its process groups (declared before `context`,
  // so destroyed after it: the context uses them to the end).
  std::unique_ptr<ic::parallel::Communicator> world;
  std::unique_ptr<ic::parallel::ProcessGroups> groups;
  std::unique_ptr<ic::Context> context;
};

namespace ic::capi {

// absl code → ic_status_t.
ic_status_t ToCStatus(absl::StatusCode code);

// Sets the calling thread's last-error text ("" on success) and returns the code. Never throws.
ic_status_t SetResult(const char* function, const absl::Status& status);
ic_status_t SetError(const char* function, ic_status_t code, const char* message);

// Live-handle registry: registered on creation, unregistered (and magic cleared) by ic_*_free, so that
// a freed handle is detected without reading freed memory (unless its address was reused).
void RegisterHandle(const void* handle);
bool UnregisterHandle(const void* handle);  // false when it was not live
bool IsLiveHandle(const void* handle);

absl::StatusOr<ic_model_t*> GetModel(const ic_model_t* handle, const char* arg);
absl::StatusOr<ic_context_t*> GetContext(const ic_context_t* handle, const char* arg);

template <typename T>
absl::Status CheckNotNull(const T* p, const char* arg) {
  if (p == nullptr) return absl::InvalidArgumentError(absl::StrCat(arg, " is NULL"));
  return absl::OkStatus();
}

// Reads a caller's params struct of `user_size` bytes (its first member) into `*out`, which holds the
// defaults. Accepts sizes from `min_size` (the first published version) up to sizeof(T), keeping the
// defaults of the fields an older caller does not have; a larger size (a newer caller) is accepted only
// when the bytes this library does not know are all zero.
// A newer header may append fields, but not kilobytes of them; a larger struct_size is garbage.
inline constexpr size_t kMaxUnknownTail = 4096;

template <typename T>
absl::Status ReadParams(const T* user, size_t min_size, const char* type_name, T* out) {
  static_assert(std::is_trivially_copyable_v<T>);
  const size_t user_size = user->struct_size;
  if (user_size < min_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        type_name, ".struct_size is ", user_size, "; expected at least ", min_size,
        " (fill the struct with its ic_*_default_params function)"));
  }
  if (user_size > sizeof(T) + kMaxUnknownTail) {
    return absl::InvalidArgumentError(absl::StrCat(
        type_name, ".struct_size is ", user_size, ", far larger than the ", sizeof(T),
        " bytes this library knows: uninitialised? (fill the struct with its ic_*_default_params function)"));
  }
  if (user_size > sizeof(T)) {
    const auto* tail = reinterpret_cast<const unsigned char*>(user) + sizeof(T);
    for (size_t i = 0; i < user_size - sizeof(T); ++i) {
      if (tail[i] != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            type_name, ".struct_size is ", user_size, " but this library (", IC_VERSION_STRING,
            ") knows ", sizeof(T), " bytes and byte ", sizeof(T) + i,
            " is set: the caller uses a field this library does not have"));
      }
    }
  }
  std::memcpy(static_cast<void*>(out), user, std::min(user_size, sizeof(T)));
  out->struct_size = sizeof(T);
  return absl::OkStatus();
}

// The raw int of a C enum field: a C caller may store any int there, and loading an out-of-range value
// through the C++ enum type is undefined behaviour (UBSan: "load of value 7, which is not a valid value").
template <typename E>
int EnumFieldValue(const E& field) {
  static_assert(std::is_enum_v<E> && sizeof(E) == sizeof(int));
  int value;
  std::memcpy(&value, &field, sizeof value);
  return value;
}

// IC_DEVICE_AUTO (CUDA when a device is visible, else the CPU), IC_DEVICE_CPU or IC_DEVICE_CUDA; anything
// else is InvalidArgument naming `field`.
inline absl::StatusOr<kernels::DeviceKind> ResolveDevice(int device, const char* field) {
  switch (device) {
    case IC_DEVICE_AUTO:
      return kernels::CudaDeviceCount() > 0 ? kernels::DeviceKind::kCuda : kernels::DeviceKind::kCpu;
    case IC_DEVICE_CPU: return kernels::DeviceKind::kCpu;
    case IC_DEVICE_CUDA: return kernels::DeviceKind::kCuda;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, " is ", device, "; expected IC_DEVICE_AUTO, IC_DEVICE_CPU or IC_DEVICE_CUDA"));
}

// Copies the caller's token windows (windows[i] points to lengths[i] ids). Every length is checked
// (≤ max_len; a NULL window only with length 0) before anything is read, so a negative length cast to
// size_t fails cleanly instead of reading past the caller's arrays.
inline absl::StatusOr<std::vector<std::vector<int32_t>>> CopyWindows(const int32_t* const* windows,
                                                                     const size_t* lengths, size_t n,
                                                                     size_t max_len, const char* max_name) {
  for (size_t i = 0; i < n; ++i) {
    if (lengths[i] > max_len) {
      return absl::InvalidArgumentError(
          absl::StrCat("window_lengths[", i, "] is ", lengths[i], "; at most ", max_name, " = ", max_len));
    }
    if (windows[i] == nullptr && lengths[i] > 0) {
      return absl::InvalidArgumentError(absl::StrCat("windows[", i, "] is NULL"));
    }
  }
  std::vector<std::vector<int32_t>> copies(n);
  for (size_t i = 0; i < n; ++i) {
    if (lengths[i] > 0) copies[i].assign(windows[i], windows[i] + lengths[i]);
  }
  return copies;
}

// Copies `text` and a NUL into buf, or fails naming the needed size.
absl::Status WriteString(const std::string& text, char* buf, size_t buf_size, const char* what);

// Runs `body` (returning absl::Status) behind the exception firewall.
template <typename F>
ic_status_t Guard(const char* function, F&& body) noexcept {
  try {
    return SetResult(function, body());
  } catch (const std::bad_alloc&) {
    return SetError(function, IC_ERR_OUT_OF_MEMORY, "out of host memory (std::bad_alloc)");
  } catch (const std::exception& e) {
    return SetError(function, IC_ERR_INTERNAL, e.what());
  } catch (...) {
    return SetError(function, IC_ERR_INTERNAL, "unknown C++ exception");
  }
}

}  // namespace ic::capi
