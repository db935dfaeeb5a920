// Communicator: the collectives a group of ranks runs together (DESIGN.md §5).
//
// One interface, two backends:
//   InProcessCommunicator (inprocess_communicator.h)  one thread per rank in one process, host buffers;
//                                                      the CPU multirank tests.
//   NcclCommunicator      (nccl_communicator.h)        NCCL on device buffers, one process (or thread)
//                                                      per GPU.
// Buffers are the backend's "device" pointers: host memory for the in-process backend; for NCCL, CUDA device
// memory (host memory also works, staged through device copies). Every rank of the group must call the same collectives in the same order with
// matching sizes (as with NCCL/MPI).
//
// Failure model: a collective never hangs. If a peer stalls or dies, the call returns
// DeadlineExceeded naming the collective and (where the backend can know) the missing ranks, within
// timeout(); a peer that calls Abort() makes the others return Aborted. After any error the
// communicator is broken: every later call fails fast (FailedPrecondition), as after ncclCommAbort.
//
// Every call counts its calls, its bytes sent and its seconds per collective kind (stats()), for
// `indexcache_topk_bytes_total` and the communication-seconds metrics.
//
//   // 4 ranks in one process (CPU test):
//   IC_ASSIGN_OR_RETURN(auto comms, InProcessGroup::Create(4));
//   // on thread r:
//   std::vector<int32_t> mine(k), all(4 * k);
//   IC_RETURN_IF_ERROR(comms[r]->AllGather(mine.data(), all.data(), k * sizeof(int32_t)));
//   int64_t sent = comms[r]->stats()[Collective::kAllGather].bytes_sent;   // 3 * k * 4
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace ic::parallel {

// The collective kinds; stats are kept per kind. kSplit counts communicator splits (bytes 0).
enum class Collective : int {
  kAllGather = 0,
  kAllReduce,
  kReduceScatter,
  kBroadcast,
  kAllToAllV,
  kBarrier,
  kSplit,
};
inline constexpr int kNumCollectives = 7;

// "AllGather", "AllReduce", ... (also the metric label values, lower-cased by the caller if wanted).
const char* CollectiveName(Collective kind);

// Counters of one collective kind on one rank.
//
// bytes_sent is the payload that leaves this rank, counted the same way by every backend (it is a
// property of the call, not of NCCL's algorithm):
//   AllGather      send_bytes × (size − 1)                 (my piece goes to every peer)
//   ReduceScatter  recv_count × 4 × (size − 1)             (the peers' shards of my input)
//   AllReduce      2 × count × 4 × (size − 1) / size       (reduce-scatter + all-gather volume)
//   Broadcast      root: bytes × (size − 1); others 0
//   AllToAllV      Σ send_counts[p] over peers p ≠ rank    (self-copies are not sent)
//   Barrier/Split  0
// With size 1 nothing is sent: every count is 0 bytes (the call is still counted).
struct CollectiveStats {
  int64_t calls = 0;
  int64_t bytes_sent = 0;
  double seconds = 0.0;  // wall time inside the call (for NCCL: enqueue + wait when synchronous)
  int64_t errors = 0;
};

struct CommunicatorStats {
  std::array<CollectiveStats, kNumCollectives> per_kind{};
  const CollectiveStats& operator[](Collective kind) const { return per_kind[static_cast<int>(kind)]; }
  CollectiveStats& operator[](Collective kind) { return per_kind[static_cast<int>(kind)]; }
  int64_t total_bytes_sent() const;
};

// Options common to every backend.
struct CommunicatorOptions {
  // A collective (or NCCL init) that has not completed after this long returns DeadlineExceeded.
  absl::Duration timeout = absl::Seconds(300);
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const char* backend_name() const { return backend_name_; }

  absl::Duration timeout() const { return timeout_; }
  // Takes effect for the next call; must be positive.
  absl::Status set_timeout(absl::Duration timeout);

  // Per-rank counters, updated by the thread that calls the collectives; read them from that thread
  // (e.g. copy them into the metrics registry after a forward pass).
  const CommunicatorStats& stats() const { return stats_; }
  void ResetStats() { stats_ = CommunicatorStats{}; }

  // recv[size × send_bytes] = concatenation of every rank's send[send_bytes], in rank order.
  // send may alias recv + rank × send_bytes (in place).
  absl::Status AllGather(const void* send, void* recv, size_t send_bytes);

  // recv[count] = Σ over ranks of send[count] (float32). send may equal recv. Every rank gets the
  // bitwise-identical result.
  absl::Status AllReduceSum(const float* send, float* recv, size_t count);

  // recv[recv_count] = Σ over ranks of send[rank × recv_count, (rank + 1) × recv_count) (float32);
  // send holds size × recv_count floats.
  absl::Status ReduceScatterSum(const float* send, float* recv, size_t recv_count);

  // recv[bytes] = root's send[bytes]. send is read only on root; send may equal recv.
  absl::Status Broadcast(const void* send, void* recv, size_t bytes, int root);

  // Personalised exchange in bytes. Rank r sends send[send_offsets[p], + send_counts[p]) to each peer p
  // and receives recv[recv_offsets[p], + recv_counts[p]) from each p; send_counts[p] on r must equal
  // recv_counts[r] on p. Every span has size() entries. send and recv must not overlap.
  absl::Status AllToAllV(const void* send, absl::Span<const size_t> send_counts,
                         absl::Span<const size_t> send_offsets, void* recv,
                         absl::Span<const size_t> recv_counts, absl::Span<const size_t> recv_offsets);

  // Returns when every rank has entered the barrier (or an error).
  absl::Status Barrier();

  // Collective over this group (MPI_Comm_split / ncclCommSplit): ranks with the same color >= 0 form a
  // new communicator, ordered by (key, rank). A negative color takes part but gets nullptr.
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key);

  // Breaks the communicator: this rank's and the peers' pending and later collectives return an error
  // (the peers: Aborted naming this rank, or DeadlineExceeded where the backend cannot tell them).
  // Safe to call from any thread; idempotent.
  virtual void Abort() = 0;

 protected:
  Communicator(int rank, int size, const CommunicatorOptions& options, const char* backend_name);

  // Backend hooks: arguments are already validated (non-null where needed, counts consistent with
  // size()); the base class does the stats and the timing.
  virtual absl::Status DoAllGather(const void* send, void* recv, size_t send_bytes) = 0;
  virtual absl::Status DoAllReduceSum(const float* send, float* recv, size_t count) = 0;
  virtual absl::Status DoReduceScatterSum(const float* send, float* recv, size_t recv_count) = 0;
  virtual absl::Status DoBroadcast(const void* send, void* recv, size_t bytes, int root) = 0;
  virtual absl::Status DoAllToAllV(const void* send, absl::Span<const size_t> send_counts,
                                   absl::Span<const size_t> send_offsets, void* recv,
                                   absl::Span<const size_t> recv_counts,
                                   absl::Span<const size_t> recv_offsets) = 0;
  virtual absl::Status DoBarrier() = 0;
  virtual absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int color, int key) = 0;

  CommunicatorOptions options_for_children() const {
    CommunicatorOptions o;
    o.timeout = timeout_;
    return o;
  }

 private:
  template <typename Fn>
  absl::Status Run(Collective kind, int64_t bytes_sent, Fn&& fn);

  const int rank_;
  const int size_;
  const char* const backend_name_;
  absl::Duration timeout_;
  CommunicatorStats stats_;
};

// The bytes a personalised exchange (AllToAllV) touches in one buffer: the largest offsets[p] + counts[p]
// over peers with counts[p] > 0 (0 when none sends or receives anything).
size_t AllToAllVExtent(absl::Span<const size_t> counts, absl::Span<const size_t> offsets);

// "0, 2, 3", "1-65535" (runs of three or more), at most 16 items then "… (N ranks in all)", or "none":
// the rank lists in the backends' error messages.
std::string FormatRankList(absl::Span<const int> ranks);

}  // namespace ic::parallel
