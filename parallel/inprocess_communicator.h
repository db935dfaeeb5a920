// In-process Communicator: N ranks as N threads of one process, on host buffers (the CPU multirank
// tests, and a 1-rank default for the engine).
//
// The ranks of a group share one rendezvous (a mutex, a condition variable, a slot per rank). A
// collective is two barriers: every rank posts its buffers and waits for all to arrive (deadline =
// entry + timeout()); each rank then reads the peers' inputs into a private buffer; a second barrier
// makes sure nobody still reads before anyone writes its output and returns. So in-place calls are safe
// and every rank computes the same sums in rank order (bitwise-identical results).
//
// Failure: a rank that never arrives → the waiting ranks return DeadlineExceeded naming the collective
// and the missing ranks; a rank that calls Abort() or whose communicator is destroyed → the others
// return Aborted naming it, at once. Either breaks the group for good (later calls: FailedPrecondition).
//
//   IC_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<Communicator>> comms, InProcessGroup::Create(4));
//   std::vector<std::thread> threads;
//   for (int r = 0; r < 4; ++r) threads.emplace_back([&, r] { RunRank(*comms[r]); });
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace ic::parallel {

namespace internal {
struct InProcessState;
}  // namespace internal

class InProcessGroup {
 public:
  // world_size communicators (rank r at index r) sharing one rendezvous. Each is used by one thread.
  static absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> Create(
      int world_size, const CommunicatorOptions& options = {});
};

class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<internal::InProcessState> state, int rank, int size,
                        const CommunicatorOptions& options);
  // Leaving the group counts as an abort for the peers (they return Aborted instead of waiting).
  ~InProcessCommunicator() override;

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
  std::shared_ptr<internal::InProcessState> state_;
  uint64_t seq_ = 0;  // collectives this rank has entered (all ranks enter them in the same order)
};

}  // namespace ic::parallel
