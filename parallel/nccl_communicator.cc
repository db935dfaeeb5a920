// NCCL Communicator: non-blocking NCCL with host-side polling, so no collective can hang.
//
// Tested here: compiles and links (no GPU on the build machine). The single-rank GPU check is
// nccl_communicator_gputest.cc (label gpu).
#include "parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"

namespace ic::parallel {

static_assert(NcclCommunicator::kUniqueIdBytes == NCCL_UNIQUE_ID_BYTES, "NCCL unique id size changed");

bool NcclAvailable() { return true; }

namespace {

using Clock = std::chrono::steady_clock;

absl::Status CudaError(cudaError_t e, const char* what, const char* file, int line) {
  return absl::InternalError(absl::StrCat(what, ": CUDA error ", cudaGetErrorName(e), " (", cudaGetErrorString(e),
                                          ") at ", file, ":", line));
}

absl::Status NcclError(ncclResult_t r, ncclComm_t comm, const char* what, const char* file, int line) {
  const char* last = ncclGetLastError(comm);
  return absl::InternalError(absl::StrCat(what, ": NCCL error ", static_cast<int>(r), " (", ncclGetErrorString(r),
                                          ")", last && *last ? absl::StrCat(": ", last) : "", " at ", file, ":",
                                          line));
}

#define IC_CUDA_RETURN(what, expr)                                               \
  do {                                                                           \
    cudaError_t ic_cuda_e_ = (expr);                                             \
    if (ic_cuda_e_ != cudaSuccess) return CudaError(ic_cuda_e_, what, __FILE__, __LINE__); \
  } while (0)

// Restores the caller's current device on scope exit.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    ok_ = cudaGetDevice(&previous_) == cudaSuccess;
    if (ok_ && device >= 0 && device != previous_) ok_ = cudaSetDevice(device) == cudaSuccess;
  }
  ~DeviceGuard() {
    if (ok_) cudaSetDevice(previous_);
  }
  bool ok() const { return ok_; }

 private:
  int previous_ = 0;
  bool ok_ = false;
};

std::chrono::nanoseconds ToChrono(absl::Duration d) { return absl::ToChronoNanoseconds(d); }

}  // namespace

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
  int device = 0;
  cudaStream_t own_stream = nullptr;
  cudaStream_t stream = nullptr;
  int* scratch = nullptr;  // one device int for Barrier
  // Device copies of host buffers (NCCL reads and writes device memory only): [0] send, [1] receive;
  // grown on demand, freed with the communicator.
  void* stage[2] = {nullptr, nullptr};
  size_t stage_bytes[2] = {0, 0};

  // A staging buffer of at least `bytes` on this communicator's device (the current one).
  absl::StatusOr<void*> Stage(int i, size_t bytes) {
    if (bytes <= stage_bytes[i]) return stage[i];
    if (stage[i] != nullptr) {
      cudaStreamSynchronize(stream);  // an earlier call may still read it (synchronous = false)
      cudaFree(stage[i]);
    }
    stage[i] = nullptr;
    stage_bytes[i] = 0;
    const cudaError_t e = cudaMalloc(&stage[i], bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat("NcclCommunicator: staging ", bytes,
                                                       " bytes of a host buffer on device ", device, ": ",
                                                       cudaGetErrorString(e)));
    }
    stage_bytes[i] = bytes;
    return stage[i];
  }
  bool broken = false;
  bool aborted = false;  // ncclCommAbort done
  std::string broken_reason;
  std::atomic<bool> abort_requested{false};
  std::mutex call_mu;  // held by the thread inside a call; Abort() aborts directly only when it is free

  void AbortNow(std::string reason) {
    if (!aborted && comm != nullptr) ncclCommAbort(comm);
    aborted = true;
    if (!broken) {
      broken = true;
      broken_reason = std::move(reason);
    }
  }

  // Polls until the communicator's last operation left ncclInProgress.
  absl::Status WaitComm(ncclComm_t c, const std::string& what, Clock::time_point deadline, absl::Duration timeout) {
    const Clock::time_point spin_until = Clock::now() + std::chrono::milliseconds(2);  // as WaitStream
    while (true) {
      ncclResult_t state = ncclSuccess;
      ncclResult_t r = ncclCommGetAsyncError(c, &state);
      if (r != ncclSuccess) {
        absl::Status s = NcclError(r, c, what.c_str(), __FILE__, __LINE__);
        AbortNow(std::string(s.message()));
        return s;
      }
      if (state == ncclSuccess) return absl::OkStatus();
      if (state != ncclInProgress) {
        absl::Status s = NcclError(state, c, what.c_str(), __FILE__, __LINE__);
        AbortNow(std::string(s.message()));
        return s;
      }
      if (abort_requested.load()) {
        AbortNow("Abort() was called");
        return absl::AbortedError(absl::StrCat(what, ": aborted by Abort()"));
      }
      if (Clock::now() >= deadline) {
        std::string m = absl::StrCat(what, " timed out after ", absl::FormatDuration(timeout),
                                     " (NCCL cannot name the missing ranks); the communicator was aborted");
        AbortNow(m);
        return absl::DeadlineExceededError(m);
      }
      if (Clock::now() < spin_until) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
  }

  // Polls the stream until the enqueued work is done, watching NCCL's async error and the deadline. The
  // first kSpin of a wait only yields (a decode step's all-reduce takes tens of µs; a sleep would add
  // ~60 µs of timer slack to each), then it sleeps between polls.
  absl::Status WaitStream(const std::string& what, Clock::time_point deadline, absl::Duration timeout) {
    constexpr auto kSpin = std::chrono::milliseconds(2);
    const Clock::time_point spin_until = Clock::now() + kSpin;
    while (true) {
      cudaError_t e = cudaStreamQuery(stream);
      if (e == cudaSuccess) return absl::OkStatus();
      if (e != cudaErrorNotReady) {
        absl::Status s = CudaError(e, what.c_str(), __FILE__, __LINE__);
        AbortNow(std::string(s.message()));
        return s;
      }
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm, &state);
      if (state != ncclSuccess && state != ncclInProgress) {
        absl::Status s = NcclError(state, comm, what.c_str(), __FILE__, __LINE__);
        AbortNow(std::string(s.message()));
        return s;
      }
      if (abort_requested.load()) {
        AbortNow("Abort() was called");
        return absl::AbortedError(absl::StrCat(what, ": aborted by Abort()"));
      }
      if (Clock::now() >= deadline) {
        std::string m = absl::StrCat(what, " timed out after ", absl::FormatDuration(timeout),
                                     " (NCCL cannot name the missing ranks); the communicator was aborted");
        AbortNow(m);
        return absl::DeadlineExceededError(m);
      }
      if (Clock::now() < spin_until) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    }
  }
};

absl::StatusOr<std::string> NcclCommunicator::UniqueId() {
  ncclUniqueId id;
  ncclResult_t r = ncclGetUniqueId(&id);
  if (r != ncclSuccess) return NcclError(r, nullptr, "ncclGetUniqueId", __FILE__, __LINE__);
  return std::string(id.internal, NCCL_UNIQUE_ID_BYTES);
}

NcclCommunicator::NcclCommunicator(std::unique_ptr<Impl> impl, int rank, int size, const NcclOptions& options)
    : Communicator(rank, size, options.common, "nccl"), impl_(std::move(impl)), options_(options) {}

namespace {

// Creates the stream and the barrier scratch of a freshly initialised comm (current device).
absl::Status CreateStreamAndScratch(cudaStream_t* own, int** scratch) {
  IC_CUDA_RETURN("NcclCommunicator: cudaStreamCreateWithFlags",
                 cudaStreamCreateWithFlags(own, cudaStreamNonBlocking));
  IC_CUDA_RETURN("NcclCommunicator: cudaMalloc(scratch)", cudaMalloc(reinterpret_cast<void**>(scratch), sizeof(int)));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(std::string_view unique_id, int rank,
                                                                           int world_size,
                                                                           const NcclOptions& options) {
  if (unique_id.size() != NCCL_UNIQUE_ID_BYTES) {
    return absl::InvalidArgumentError(absl::StrCat("NcclCommunicator: unique_id has ", unique_id.size(),
                                                   " bytes; expected ", NCCL_UNIQUE_ID_BYTES));
  }
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("NcclCommunicator: rank = ", rank, " out of range [0, world_size = ", world_size, ")"));
  }
  if (options.common.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("NcclCommunicator: timeout = ",
                                                   absl::FormatDuration(options.common.timeout), " must be positive"));
  }
  int device = options.device;
  if (device < 0) IC_CUDA_RETURN("NcclCommunicator: cudaGetDevice", cudaGetDevice(&device));
  DeviceGuard guard(device);
  if (!guard.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("NcclCommunicator: cannot select CUDA device ", device));
  }
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  ncclUniqueId id;
  std::memcpy(id.internal, unique_id.data(), NCCL_UNIQUE_ID_BYTES);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const auto deadline = Clock::now() + ToChrono(options.common.timeout);
  ncclResult_t r = ncclCommInitRankConfig(&impl->comm, world_size, id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    absl::Status s = NcclError(r, impl->comm, "ncclCommInitRankConfig", __FILE__, __LINE__);
    impl->AbortNow(std::string(s.message()));
    return s;
  }
  const std::string what = absl::StrCat("ncclCommInitRankConfig (rank ", rank, " of ", world_size, ")");
  absl::Status s = impl->WaitComm(impl->comm, what, deadline, options.common.timeout);
  if (!s.ok()) return s;
  s = CreateStreamAndScratch(&impl->own_stream, &impl->scratch);
  if (!s.ok()) {
    impl->AbortNow(std::string(s.message()));
    return s;
  }
  impl->stream = impl->own_stream;
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(impl), rank, world_size, options));
}

NcclCommunicator::~NcclCommunicator() {
  if (!impl_) return;
  DeviceGuard guard(impl_->device);
  if (impl_->comm != nullptr && !impl_->aborted) {
    // Finalize flushes outstanding work; bounded by the timeout like everything else.
    const auto deadline = Clock::now() + ToChrono(timeout());
    const ncclResult_t r = ncclCommFinalize(impl_->comm);
    const bool ok = (r == ncclSuccess || r == ncclInProgress) &&
                    impl_->WaitComm(impl_->comm, "ncclCommFinalize", deadline, timeout()).ok();
    if (ok) {
      if (ncclCommDestroy(impl_->comm) != ncclSuccess) ncclCommAbort(impl_->comm);
    } else if (!impl_->aborted) {
      ncclCommAbort(impl_->comm);
    }
  }
  if (impl_->scratch != nullptr) cudaFree(impl_->scratch);
  for (void* p : impl_->stage) {
    if (p != nullptr) cudaFree(p);
  }
  if (impl_->own_stream != nullptr) cudaStreamDestroy(impl_->own_stream);
}

void* NcclCommunicator::stream() const { return impl_->stream; }

void NcclCommunicator::set_stream(void* cuda_stream) {
  impl_->stream = cuda_stream != nullptr ? static_cast<cudaStream_t>(cuda_stream) : impl_->own_stream;
}

int NcclCommunicator::device() const { return impl_->device; }

void NcclCommunicator::Abort() {
  impl_->abort_requested.store(true);
  std::unique_lock<std::mutex> lock(impl_->call_mu, std::try_to_lock);
  if (lock.owns_lock()) {
    DeviceGuard guard(impl_->device);
    impl_->AbortNow("Abort() was called");
  }
  // Otherwise the thread inside a call sees abort_requested in its polling loop and aborts.
}

namespace {

// Runs enqueue() under the call lock: checks broken, selects the device, waits for the (non-blocking)
// enqueue to be accepted, then, if wait_done, for completion.
template <typename Impl, typename Fn>
absl::Status Collect(Impl& impl, const char* name, int rank, int size, absl::Duration timeout, bool wait_done,
                     Fn&& enqueue) {
  std::lock_guard<std::mutex> lock(impl.call_mu);
  const std::string what = absl::StrCat(name, " on rank ", rank, " of ", size);
  if (impl.abort_requested.load() && !impl.broken) impl.AbortNow("Abort() was called");
  if (impl.broken) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": the communicator is broken: ", impl.broken_reason));
  }
  DeviceGuard guard(impl.device);
  if (!guard.ok()) return absl::InternalError(absl::StrCat(what, ": cannot select CUDA device ", impl.device));
  const auto deadline = Clock::now() + ToChrono(timeout);
  ncclResult_t r = enqueue();
  if (r != ncclSuccess && r != ncclInProgress) {
    absl::Status s = NcclError(r, impl.comm, what.c_str(), __FILE__, __LINE__);
    impl.AbortNow(std::string(s.message()));
    return s;
  }
  if (r == ncclInProgress) {
    absl::Status s = impl.WaitComm(impl.comm, what, deadline, timeout);
    if (!s.ok()) return s;
  }
  if (!wait_done) return absl::OkStatus();
  return impl.WaitStream(what, deadline, timeout);
}

// True for memory NCCL cannot read or write directly: pageable or registered host memory.
bool IsHostPointer(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return true;
  }
  return a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged;
}

// Collect() for a collective that reads send[send_bytes] and writes recv[recv_bytes]: a host buffer among
// them goes through the communicator's device staging buffers (copied in before, out after; the call then
// waits for completion whatever options.synchronous says). enqueue(send, recv) gets the device pointers.
template <typename Impl, typename Fn>
absl::Status CollectStaged(Impl& impl, const char* name, int rank, int size, absl::Duration timeout, bool wait_done,
                           const void* send, size_t send_bytes, void* recv, size_t recv_bytes, Fn&& enqueue) {
  const bool host_send = send != nullptr && send_bytes > 0 && IsHostPointer(send);
  const bool host_recv = recv != nullptr && recv_bytes > 0 && IsHostPointer(recv);
  if (!host_send && !host_recv) {
    return Collect(impl, name, rank, size, timeout, wait_done, [&] { return enqueue(send, recv); });
  }
  const std::string what = absl::StrCat(name, " on rank ", rank, " of ", size, " (host buffers staged)");
  DeviceGuard guard(impl.device);
  if (!guard.ok()) return absl::InternalError(absl::StrCat(what, ": cannot select CUDA device ", impl.device));
  const void* dsend = send;
  void* drecv = recv;
  if (host_send) {
    absl::StatusOr<void*> d = impl.Stage(0, send_bytes);
    if (!d.ok()) return d.status();
    IC_CUDA_RETURN(what.c_str(), cudaMemcpyAsync(*d, send, send_bytes, cudaMemcpyHostToDevice, impl.stream));
    dsend = *d;
  }
  if (host_recv) {
    absl::StatusOr<void*> d = impl.Stage(1, recv_bytes);
    if (!d.ok()) return d.status();
    drecv = *d;
  }
  absl::Status s = Collect(impl, name, rank, size, timeout, /*wait_done=*/true, [&] { return enqueue(dsend, drecv); });
  if (!s.ok() || !host_recv) return s;
  IC_CUDA_RETURN(what.c_str(), cudaMemcpyAsync(recv, drecv, recv_bytes, cudaMemcpyDeviceToHost, impl.stream));
  IC_CUDA_RETURN(what.c_str(), cudaStreamSynchronize(impl.stream));
  return absl::OkStatus();
}

}  // namespace

absl::Status NcclCommunicator::Wait() {
  std::lock_guard<std::mutex> lock(impl_->call_mu);
  if (impl_->broken) {
    return absl::FailedPreconditionError(absl::StrCat("Wait: the communicator is broken: ", impl_->broken_reason));
  }
  DeviceGuard guard(impl_->device);
  return impl_->WaitStream(absl::StrCat("Wait on rank ", rank(), " of ", size()), Clock::now() + ToChrono(timeout()),
                           timeout());
}

absl::Status NcclCommunicator::DoAllGather(const void* send, void* recv, size_t send_bytes) {
  return CollectStaged(*impl_, "AllGather", rank(), size(), timeout(), options_.synchronous, send, send_bytes, recv,
                       send_bytes * size(), [&](const void* s, void* r) {
                         return ncclAllGather(s, r, send_bytes, ncclUint8, impl_->comm, impl_->stream);
                       });
}

absl::Status NcclCommunicator::DoAllReduceSum(const float* send, float* recv, size_t count) {
  return CollectStaged(*impl_, "AllReduce", rank(), size(), timeout(), options_.synchronous, send,
                       count * sizeof(float), recv, count * sizeof(float), [&](const void* s, void* r) {
                         return ncclAllReduce(s, r, count, ncclFloat32, ncclSum, impl_->comm, impl_->stream);
                       });
}

absl::Status NcclCommunicator::DoReduceScatterSum(const float* send, float* recv, size_t recv_count) {
  return CollectStaged(*impl_, "ReduceScatter", rank(), size(), timeout(), options_.synchronous, send,
                       recv_count * size() * sizeof(float), recv, recv_count * sizeof(float),
                       [&](const void* s, void* r) {
                         return ncclReduceScatter(s, r, recv_count, ncclFloat32, ncclSum, impl_->comm,
                                                  impl_->stream);
                       });
}

absl::Status NcclCommunicator::DoBroadcast(const void* send, void* recv, size_t bytes, int root) {
  return CollectStaged(*impl_, "Broadcast", rank(), size(), timeout(), options_.synchronous,
                       rank() == root ? send : nullptr, bytes, recv, bytes, [&](const void* s, void* r) {
                         return ncclBroadcast(s, r, bytes, ncclUint8, root, impl_->comm, impl_->stream);
                       });
}

absl::Status NcclCommunicator::DoAllToAllV(const void* send, absl::Span<const size_t> send_counts,
                                           absl::Span<const size_t> send_offsets, void* recv,
                                           absl::Span<const size_t> recv_counts,
                                           absl::Span<const size_t> recv_offsets) {
  return CollectStaged(*impl_, "AllToAllV", rank(), size(), timeout(), options_.synchronous, send,
                       AllToAllVExtent(send_counts, send_offsets), recv, AllToAllVExtent(recv_counts, recv_offsets),
                       [&](const void* send_d, void* recv_d) -> ncclResult_t {
    ncclResult_t r = ncclGroupStart();
    if (r != ncclSuccess) return r;
    for (int p = 0; p < size(); ++p) {
      if (send_counts[p] > 0) {
        r = ncclSend(static_cast<const char*>(send_d) + send_offsets[p], send_counts[p], ncclUint8, p, impl_->comm,
                     impl_->stream);
        if (r != ncclSuccess && r != ncclInProgress) break;
      }
      if (recv_counts[p] > 0) {
        r = ncclRecv(static_cast<char*>(recv_d) + recv_offsets[p], recv_counts[p], ncclUint8, p, impl_->comm,
                     impl_->stream);
        if (r != ncclSuccess && r != ncclInProgress) break;
      }
    }
    ncclResult_t end = ncclGroupEnd();
    return (r != ncclSuccess && r != ncclInProgress) ? r : end;
  });
}

absl::Status NcclCommunicator::DoBarrier() {
  // A one-int all-reduce, always waited for on the host: that is what a barrier means.
  return Collect(*impl_, "Barrier", rank(), size(), timeout(), /*wait_done=*/true, [&] {
    return ncclAllReduce(impl_->scratch, impl_->scratch, 1, ncclInt32, ncclSum, impl_->comm, impl_->stream);
  });
}

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::DoSplit(int color, int key) {
  auto child = std::make_unique<Impl>();
  child->device = impl_->device;
  absl::Status s = Collect(*impl_, "Split", rank(), size(), timeout(), /*wait_done=*/false, [&] {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    // Non-blocking: NCCL's async job fills in child->comm (seen on 2.28: ncclSuccess returned with the
    // handle still null), so always poll the parent until it leaves ncclInProgress.
    ncclResult_t r = ncclCommSplit(impl_->comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &child->comm, &config);
    return r == ncclSuccess ? ncclInProgress : r;
  });
  if (!s.ok()) return s;
  if (color < 0) return std::unique_ptr<Communicator>();
  if (child->comm == nullptr) return absl::InternalError("Split: ncclCommSplit completed without a communicator");
  DeviceGuard guard(impl_->device);
  const auto deadline = Clock::now() + ToChrono(timeout());
  s = child->WaitComm(child->comm, absl::StrCat("Split (child of rank ", rank(), ")"), deadline, timeout());
  if (!s.ok()) return s;
  int child_rank = 0, child_size = 0;
  if (ncclCommUserRank(child->comm, &child_rank) != ncclSuccess ||
      ncclCommCount(child->comm, &child_size) != ncclSuccess) {
    child->AbortNow("ncclCommUserRank/ncclCommCount failed");
    return absl::InternalError("Split: ncclCommUserRank/ncclCommCount failed");
  }
  s = CreateStreamAndScratch(&child->own_stream, &child->scratch);
  if (!s.ok()) {
    child->AbortNow(std::string(s.message()));
    return s;
  }
  child->stream = child->own_stream;
  NcclOptions opt = options_;
  opt.common = options_for_children();
  return std::unique_ptr<Communicator>(new NcclCommunicator(std::move(child), child_rank, child_size, opt));
}

}  // namespace ic::parallel
