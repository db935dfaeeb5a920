// In-process Communicator: threads of one process rendezvous through a shared state.
#include "parallel/inprocess_communicator.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"

namespace ic::parallel {
namespace internal {

// What one rank posts for one collective. Pointers stay valid while that rank is inside the call.
struct Slot {
  Collective kind = Collective::kBarrier;
  const void* send = nullptr;
  size_t bytes = 0;  // AllGather/Broadcast: bytes; AllReduce: count; ReduceScatter: recv_count
  int root = 0;
  const size_t* send_counts = nullptr;
  const size_t* send_offsets = nullptr;
  const size_t* recv_counts = nullptr;
  int color = 0;
  int key = 0;
};

struct InProcessState {
  explicit InProcessState(int n) : size(n), slots(n), posted(n, 0), done(n, 0) {}

  const int size;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Slot> slots;
  std::vector<uint64_t> posted;  // per rank: sequence number of the last collective it entered
  std::vector<uint64_t> done;    // per rank: sequence number of the last collective it finished reading
  int readers = 0;               // ranks currently reading peers' buffers
  bool broken = false;
  absl::StatusCode broken_code = absl::StatusCode::kOk;
  std::string broken_reason;

  // Split children, by (sequence number, color); erased once every member took its handle.
  struct Child {
    std::shared_ptr<InProcessState> state;
    int taken = 0;
  };
  std::map<std::pair<uint64_t, int>, Child> children;

  // Requires mu held.
  void Break(absl::StatusCode code, std::string reason) {
    if (broken) return;
    broken = true;
    broken_code = code;
    broken_reason = std::move(reason);
    cv.notify_all();
  }
};

}  // namespace internal

namespace {

using internal::InProcessState;
using internal::Slot;

std::string CallName(Collective kind, uint64_t seq, int rank, int size) {
  return absl::StrCat(CollectiveName(kind), " (call ", seq, ") on rank ", rank, " of ", size);
}

// Checks that every rank posted a matching call; "" when they agree. The verdict depends only on the
// slots, never on the caller, so every rank reaches the same one (a rank that saw no mismatch would
// otherwise read the buffers of a rank that already returned).
std::string Mismatch(const std::vector<Slot>& slots) {
  const int n = static_cast<int>(slots.size());
  const Slot& first = slots[0];
  for (int q = 1; q < n; ++q) {
    if (slots[q].kind != first.kind) {
      return absl::StrCat("rank ", q, " called ", CollectiveName(slots[q].kind), " while rank 0 called ",
                          CollectiveName(first.kind));
    }
  }
  for (int q = 1; q < n; ++q) {
    const Slot& s = slots[q];
    switch (first.kind) {
      case Collective::kAllGather:
      case Collective::kAllReduce:
      case Collective::kReduceScatter:
        if (s.bytes != first.bytes) {
          return absl::StrCat("rank ", q, " passed size ", s.bytes, ", rank 0 passed ", first.bytes);
        }
        break;
      case Collective::kBroadcast:
        if (s.bytes != first.bytes || s.root != first.root) {
          return absl::StrCat("rank ", q, " passed (bytes ", s.bytes, ", root ", s.root, "), rank 0 passed (bytes ",
                              first.bytes, ", root ", first.root, ")");
        }
        break;
      default:
        break;
    }
  }
  if (first.kind == Collective::kAllToAllV) {
    for (int from = 0; from < n; ++from) {
      for (int to = 0; to < n; ++to) {
        if (slots[from].send_counts[to] != slots[to].recv_counts[from]) {
          return absl::StrCat("rank ", from, " sends ", slots[from].send_counts[to], " bytes to rank ", to,
                              ", which expects recv_counts[", from, "] = ", slots[to].recv_counts[from]);
        }
      }
    }
  }
  return "";
}

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> InProcessGroup::Create(
    int world_size, const CommunicatorOptions& options) {
  if (world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("InProcessGroup: world_size = ", world_size, " must be >= 1"));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("InProcessGroup: timeout = ",
                                                   absl::FormatDuration(options.timeout), " must be positive"));
  }
  auto state = std::make_shared<InProcessState>(world_size);
  std::vector<std::unique_ptr<Communicator>> comms;
  comms.reserve(world_size);
  for (int r = 0; r < world_size; ++r) {
    comms.push_back(std::make_unique<InProcessCommunicator>(state, r, world_size, options));
  }
  return comms;
}

InProcessCommunicator::InProcessCommunicator(std::shared_ptr<InProcessState> state, int rank, int size,
                                             const CommunicatorOptions& options)
    : Communicator(rank, size, options, "inprocess"), state_(std::move(state)) {}

InProcessCommunicator::~InProcessCommunicator() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->Break(absl::StatusCode::kAborted,
                absl::StrCat("rank ", rank(), " left the group (its communicator was destroyed)"));
}

void InProcessCommunicator::Abort() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->Break(absl::StatusCode::kAborted, absl::StrCat("rank ", rank(), " aborted the communicator"));
}

namespace {

// Posts `mine`, waits for every rank, calls read(slots) with the lock released, then waits until no rank
// still reads. On success every rank has read; the caller may then write its output.
absl::Status Exchange(InProcessState& st, int rank, uint64_t seq, absl::Duration timeout, const Slot& mine,
                      const std::function<void(const std::vector<Slot>&)>& read) {
  const int n = st.size;
  const std::string call = CallName(mine.kind, seq, rank, n);
  const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
  std::unique_lock<std::mutex> lock(st.mu);
  if (st.broken) {
    return absl::FailedPreconditionError(absl::StrCat(call, ": the communicator is broken: ", st.broken_reason));
  }
  st.slots[rank] = mine;
  st.posted[rank] = seq;
  st.cv.notify_all();

  // Barrier 1: everybody posted.
  auto all_posted = [&] {
    for (int q = 0; q < n; ++q) {
      if (st.posted[q] < seq) return false;
    }
    return true;
  };
  if (!st.cv.wait_until(lock, deadline, [&] { return st.broken || all_posted(); })) {
    std::vector<int> missing;
    for (int q = 0; q < n; ++q) {
      if (st.posted[q] < seq) missing.push_back(q);
    }
    const std::string reason =
        absl::StrCat(call, " timed out after ", absl::FormatDuration(timeout),
                     "; missing ranks (never entered the call): ", FormatRankList(missing));
    st.Break(absl::StatusCode::kDeadlineExceeded, reason);
    return absl::DeadlineExceededError(reason);
  }
  // Error paths from here on: a peer may have started reading my buffers before the group broke; wait
  // until nobody reads (readers only copy memory, so this is bounded) before my caller may free them.
  auto fail = [&](absl::Status status) {
    st.cv.wait(lock, [&] { return st.readers == 0; });
    return status;
  };
  if (st.broken) return fail(absl::Status(st.broken_code, absl::StrCat(call, ": ", st.broken_reason)));
  if (std::string m = Mismatch(st.slots); !m.empty()) {
    const std::string reason = absl::StrCat(call, ": mismatched collective: ", m);
    st.Break(absl::StatusCode::kInvalidArgument, reason);
    return fail(absl::InvalidArgumentError(reason));
  }
  std::vector<Slot> slots = st.slots;  // stable until every rank marks done (nobody posts seq + 1 before)
  ++st.readers;
  lock.unlock();
  read(slots);
  lock.lock();
  --st.readers;
  st.done[rank] = seq;
  st.cv.notify_all();

  // Barrier 2: nobody still reads my buffers. Readers only copy memory, so waiting for them after a
  // break is bounded.
  auto all_done = [&] {
    for (int q = 0; q < n; ++q) {
      if (st.done[q] < seq) return false;
    }
    return true;
  };
  st.cv.wait_until(lock, deadline, [&] { return all_done() || st.broken; });
  if (all_done()) return absl::OkStatus();
  if (!st.broken) {
    std::vector<int> missing;
    for (int q = 0; q < n; ++q) {
      if (st.done[q] < seq) missing.push_back(q);
    }
    st.Break(absl::StatusCode::kDeadlineExceeded,
             absl::StrCat(call, " timed out after ", absl::FormatDuration(timeout),
                          " in its second phase; ranks not done: ", FormatRankList(missing)));
  }
  st.cv.wait(lock, [&] { return st.readers == 0 || all_done(); });
  if (all_done()) return absl::OkStatus();
  return absl::Status(st.broken_code, absl::StrCat(call, ": ", st.broken_reason));
}

}  // namespace

absl::Status InProcessCommunicator::DoAllGather(const void* send, void* recv, size_t send_bytes) {
  Slot mine{.kind = Collective::kAllGather, .send = send, .bytes = send_bytes};
  std::vector<char> tmp(send_bytes * size());
  absl::Status s = Exchange(*state_, rank(), ++seq_, timeout(), mine, [&](const std::vector<Slot>& slots) {
    for (int q = 0; q < size(); ++q) {
      if (send_bytes > 0) std::memcpy(tmp.data() + q * send_bytes, slots[q].send, send_bytes);
    }
  });
  if (s.ok() && !tmp.empty()) std::memcpy(recv, tmp.data(), tmp.size());
  return s;
}

absl::Status InProcessCommunicator::DoAllReduceSum(const float* send, float* recv, size_t count) {
  Slot mine{.kind = Collective::kAllReduce, .send = send, .bytes = count};
  std::vector<float> tmp(count, 0.0f);
  absl::Status s = Exchange(*state_, rank(), ++seq_, timeout(), mine, [&](const std::vector<Slot>& slots) {
    // Rank order 0..n−1 on every rank: bitwise-identical sums.
    for (int q = 0; q < size(); ++q) {
      const float* in = static_cast<const float*>(slots[q].send);
      if (q == 0) {
        for (size_t i = 0; i < count; ++i) tmp[i] = in[i];
      } else {
        for (size_t i = 0; i < count; ++i) tmp[i] += in[i];
      }
    }
  });
  if (s.ok() && count > 0) std::memcpy(recv, tmp.data(), count * sizeof(float));
  return s;
}

absl::Status InProcessCommunicator::DoReduceScatterSum(const float* send, float* recv, size_t recv_count) {
  Slot mine{.kind = Collective::kReduceScatter, .send = send, .bytes = recv_count};
  std::vector<float> tmp(recv_count, 0.0f);
  const size_t offset = static_cast<size_t>(rank()) * recv_count;
  absl::Status s = Exchange(*state_, rank(), ++seq_, timeout(), mine, [&](const std::vector<Slot>& slots) {
    for (int q = 0; q < size(); ++q) {
      const float* in = static_cast<const float*>(slots[q].send) + offset;
      if (q == 0) {
        for (size_t i = 0; i < recv_count; ++i) tmp[i] = in[i];
      } else {
        for (size_t i = 0; i < recv_count; ++i) tmp[i] += in[i];
      }
    }
  });
  if (s.ok() && recv_count > 0) std::memcpy(recv, tmp.data(), recv_count * sizeof(float));
  return s;
}

absl::Status InProcessCommunicator::DoBroadcast(const void* send, void* recv, size_t bytes, int root) {
  Slot mine{.kind = Collective::kBroadcast, .send = send, .bytes = bytes, .root = root};
  std::vector<char> tmp(bytes);
  absl::Status s = Exchange(*state_, rank(), ++seq_, timeout(), mine, [&](const std::vector<Slot>& slots) {
    if (bytes > 0) std::memcpy(tmp.data(), slots[root].send, bytes);
  });
  if (s.ok() && bytes > 0) std::memcpy(recv, tmp.data(), bytes);
  return s;
}

absl::Status InProcessCommunicator::DoAllToAllV(const void* send, absl::Span<const size_t> send_counts,
                                                absl::Span<const size_t> send_offsets, void* recv,
                                                absl::Span<const size_t> recv_counts,
                                                absl::Span<const size_t> recv_offsets) {
  Slot mine{.kind = Collective::kAllToAllV,
            .send = send,
            .send_counts = send_counts.data(),
            .send_offsets = send_offsets.data(),
            .recv_counts = recv_counts.data()};
  // send and recv do not overlap (checked by the base class), but a peer reads my send while I would
  // write recv: stage the received pieces first.
  size_t total = 0;
  for (size_t c : recv_counts) total += c;
  std::vector<char> tmp(total);
  absl::Status s = Exchange(*state_, rank(), ++seq_, timeout(), mine, [&](const std::vector<Slot>& slots) {
    size_t at = 0;
    for (int q = 0; q < size(); ++q) {
      const size_t c = recv_counts[q];
      if (c > 0) {
        std::memcpy(tmp.data() + at, static_cast<const char*>(slots[q].send) + slots[q].send_offsets[rank()], c);
      }
      at += c;
    }
  });
  if (!s.ok()) return s;
  size_t at = 0;
  for (int q = 0; q < size(); ++q) {
    if (recv_counts[q] > 0) std::memcpy(static_cast<char*>(recv) + recv_offsets[q], tmp.data() + at, recv_counts[q]);
    at += recv_counts[q];
  }
  return s;
}

absl::Status InProcessCommunicator::DoBarrier() {
  Slot mine{.kind = Collective::kBarrier};
  return Exchange(*state_, rank(), ++seq_, timeout(), mine, [](const std::vector<Slot>&) {});
}

absl::StatusOr<std::unique_ptr<Communicator>> InProcessCommunicator::DoSplit(int color, int key) {
  Slot mine{.kind = Collective::kSplit, .color = color, .key = key};
  const uint64_t seq = ++seq_;
  std::vector<std::pair<int, int>> members;  // (key, parent rank) of my color
  absl::Status s = Exchange(*state_, rank(), seq, timeout(), mine, [&](const std::vector<Slot>& slots) {
    if (color < 0) return;
    for (int q = 0; q < size(); ++q) {
      if (slots[q].color == color) members.emplace_back(slots[q].key, q);
    }
  });
  if (!s.ok()) return s;
  if (color < 0) return std::unique_ptr<Communicator>();
  std::sort(members.begin(), members.end());
  const int child_size = static_cast<int>(members.size());
  int child_rank = 0;
  while (members[child_rank].second != rank()) ++child_rank;

  std::shared_ptr<InProcessState> child;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto& entry = state_->children[{seq, color}];
    if (!entry.state) entry.state = std::make_shared<InProcessState>(child_size);
    child = entry.state;
    if (++entry.taken == child_size) state_->children.erase({seq, color});
  }
  return std::unique_ptr<Communicator>(
      std::make_unique<InProcessCommunicator>(std::move(child), child_rank, child_size, options_for_children()));
}

}  // namespace ic::parallel
