// A buffer in backend memory that grows on demand (the engine's activations, distillation's inputs).
//
//   DeviceBuffer q;
//   IC_RETURN_IF_ERROR(q.Reserve(backend, bytes));   // ResourceExhausted from Backend::Allocate
//   IC_RETURN_IF_ERROR(backend->CopyToDevice(q.as<float>(), host.data(), bytes));
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "kernels/backend.h"
#include "sdk/status.h"

namespace ic {

// A buffer in backend memory that grows on demand (contents are not preserved on growth).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { Release(); }

  absl::Status Reserve(kernels::Backend* backend, size_t bytes) {
    if (bytes <= capacity_) return absl::OkStatus();
    Release();
    backend_ = backend;
    IC_ASSIGN_OR_RETURN(ptr_, backend->Allocate(bytes));
    capacity_ = bytes;
    return absl::OkStatus();
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t capacity() const { return capacity_; }

 private:
  void Release() {
    if (ptr_ != nullptr) backend_->Free(ptr_);
    ptr_ = nullptr;
    capacity_ = 0;
  }
  kernels::Backend* backend_ = nullptr;
  void* ptr_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace ic
