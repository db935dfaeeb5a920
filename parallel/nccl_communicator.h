// NCCL Communicator: one rank per GPU (one process or one thread each), on CUDA device buffers.
//
// Bootstrap (DESIGN.md §5): rank 0 calls NcclCommunicator::UniqueId() (the bytes behind the C ABI's
// ic_dist_unique_id), the caller's launcher distributes them, every rank calls Create with them.
//
// Never a hang: the communicator is created non-blocking (ncclCommInitRankConfig with blocking = 0).
// Init and every collective poll ncclCommGetAsyncError (and, for collectives, cudaStreamQuery) until
// done or timeout(); on expiry the communicator is ncclCommAbort-ed and the call returns
// DeadlineExceeded naming the collective (NCCL cannot say which peers are missing; the message says so).
// After that every call fails fast with FailedPrecondition.
//
// Buffers: device memory of the communicator's GPU, or host memory, which is staged through device buffers
// the communicator keeps (copied in, the collective, copied out: the call then waits for completion); the
// engine's small host-side exchanges (sharded top-k candidates, expert dispatch lists) use that.
//
// Streams: collectives are enqueued on stream() (one the communicator creates on its device, or the
// caller's, set_stream()). With options.synchronous (the default) each call waits for completion on
// the host, polling as above; with synchronous = false it returns once enqueued and the caller calls
// Wait() (or synchronises the stream itself, giving up the timeout).
//
// No CUDA or NCCL header here: cudaStream_t is passed as void*, the NCCL state is behind a pimpl.
// Without NCCL at build time (ic_parallel_nccl built from nccl_communicator_stub.cc), UniqueId and
// Create return Unimplemented.
//
//   // rank 0:
//   IC_ASSIGN_OR_RETURN(std::string id, NcclCommunicator::UniqueId());   // kUniqueIdBytes bytes
//   // every rank, after receiving id:
//   NcclOptions opt;  opt.device = local_rank;
//   IC_ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> comm,
//                       NcclCommunicator::Create(id, rank, world_size, opt));
//   IC_RETURN_IF_ERROR(comm->AllReduceSum(d_partial, d_partial, count));   // device pointers
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace ic::parallel {

struct NcclOptions {
  CommunicatorOptions common;
  int device = -1;           // CUDA device of this rank; −1: the calling thread's current device
  bool synchronous = true;   // each collective waits (with the timeout) for completion
};

// True when ic_parallel_nccl was built with NCCL.
bool NcclAvailable();

// Every rank of a group whose ranks are threads of this process, rank r on CUDA device r (options.device is
// set per rank): one unique id, every rank joined concurrently. The first rank's error, naming it, if one
// cannot join (the others then time out after options.common.timeout). For tests and single-node tools;
// processes use UniqueId + Create.
absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> NcclLocalGroup(int world, const NcclOptions& options = {});

class NcclCommunicator final : public Communicator {
 public:
  static constexpr size_t kUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES

  // ncclGetUniqueId, as kUniqueIdBytes opaque bytes. Called on one rank (rank 0).
  static absl::StatusOr<std::string> UniqueId();

  // Joins the group identified by unique_id (exactly kUniqueIdBytes bytes). Blocks until every rank has
  // joined, or returns DeadlineExceeded after options.common.timeout (and aborts the half-made comm).
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(std::string_view unique_id, int rank,
                                                                  int world_size, const NcclOptions& options = {});

  ~NcclCommunicator() override;  // ncclCommDestroy (ncclCommAbort if broken); destroys an owned stream

  // The stream collectives are enqueued on (a cudaStream_t).
  void* stream() const;
  // Uses the caller's cudaStream_t from now on (nullptr: back to the communicator's own stream).
  void set_stream(void* cuda_stream);
  int device() const;

  // With synchronous = false: waits for everything enqueued so far, with the timeout.
  absl::Status Wait();

  void Abort() override;

 protected:
  absl::Status DoAllGather(const void* send, void* recv, size_t send_bytes) override;
  absl::Status DoAllReduceSum(const float* send, float* recv, size_t count) override;
  absl::Status DoReduceScatterSum(const float* send, float* recv, size_t recv_count) override;
  absl::Status DoBroadcast(const void* send, void* recv, size_t bytes, int root) override;
  absl::Status DoAllToAllV(const void* send, absl::Span<const size_t> send_counts,
                           absl::Span<const size_t> send_offsets, void* recv,
                           absl::Span<const size_t> recv_counts,
                           absl::Span<const size_t> recv_offsets) override;
  absl::Status DoBarrier() override;
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int color, int key) override;

 private:
  struct Impl;
  NcclCommunicator(std::unique_ptr<Impl> impl, int rank, int size, const NcclOptions& options);

  std::unique_ptr<Impl> impl_;
  NcclOptions options_;
};

}  // namespace ic::parallel
