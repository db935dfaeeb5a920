// Communicator base: argument checks, byte counting and timing shared by every backend.
#include "parallel/communicator.h"

#include <string>
#include <vector>

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ic::parallel {
namespace {

bool Overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  if (a_bytes == 0 || b_bytes == 0) return false;
  const auto* pa = static_cast<const char*>(a);
  const auto* pb = static_cast<const char*>(b);
  return pa < pb + b_bytes && pb < pa + a_bytes;
}

}  // namespace

const char* CollectiveName(Collective kind) {
  switch (kind) {
    case Collective::kAllGather: return "AllGather";
    case Collective::kAllReduce: return "AllReduce";
    case Collective::kReduceScatter: return "ReduceScatter";
    case Collective::kBroadcast: return "Broadcast";
    case Collective::kAllToAllV: return "AllToAllV";
    case Collective::kBarrier: return "Barrier";
    case Collective::kSplit: return "Split";
  }
  return "Unknown";
}

int64_t CommunicatorStats::total_bytes_sent() const {
  int64_t total = 0;
  for (const CollectiveStats& s : per_kind) total += s.bytes_sent;
  return total;
}

std::string FormatRankList(absl::Span<const int> ranks) {
  if (ranks.empty()) return "none";
  // Runs of consecutive ranks as "a-b", and at most 16 items, so that 65,535 missing ranks stay one line.
  std::vector<std::string> items;
  size_t i = 0;
  while (i < ranks.size() && items.size() < 16) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    items.push_back(j >= i + 2 ? absl::StrCat(ranks[i], "-", ranks[j])
                               : (j == i + 1 ? absl::StrCat(ranks[i], ", ", ranks[j]) : absl::StrCat(ranks[i])));
    i = j + 1;
  }
  std::string out = absl::StrJoin(items, ", ");
  if (i < ranks.size()) absl::StrAppend(&out, ", … (", ranks.size(), " ranks in all)");
  return out;
}

Communicator::Communicator(int rank, int size, const CommunicatorOptions& options, const char* backend_name)
    : rank_(rank), size_(size), backend_name_(backend_name), timeout_(options.timeout) {}

absl::Status Communicator::set_timeout(absl::Duration timeout) {
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Communicator: timeout = ", absl::FormatDuration(timeout), " must be positive"));
  }
  timeout_ = timeout;
  return absl::OkStatus();
}

template <typename Fn>
absl::Status Communicator::Run(Collective kind, int64_t bytes_sent, Fn&& fn) {
  CollectiveStats& s = stats_[kind];
  const auto start = std::chrono::steady_clock::now();
  absl::Status status = fn();
  s.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++s.calls;
  if (status.ok()) {
    s.bytes_sent += bytes_sent;
  } else {
    ++s.errors;
  }
  return status;
}

absl::Status Communicator::AllGather(const void* send, void* recv, size_t send_bytes) {
  if (send_bytes > 0 && (send == nullptr || recv == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllGather: send or recv is null with send_bytes = ", send_bytes));
  }
  // In place is allowed only at this rank's slot.
  const void* own_slot = static_cast<const char*>(recv) + static_cast<size_t>(rank_) * send_bytes;
  if (send != own_slot && Overlap(send, send_bytes, recv, send_bytes * size_)) {
    return absl::InvalidArgumentError("AllGather: send overlaps recv other than at recv + rank × send_bytes");
  }
  const int64_t bytes = static_cast<int64_t>(send_bytes) * (size_ - 1);
  return Run(Collective::kAllGather, bytes, [&] { return DoAllGather(send, recv, send_bytes); });
}

absl::Status Communicator::AllReduceSum(const float* send, float* recv, size_t count) {
  if (count > 0 && (send == nullptr || recv == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat("AllReduce: send or recv is null with count = ", count));
  }
  if (send != recv && Overlap(send, count * 4, recv, count * 4)) {
    return absl::InvalidArgumentError("AllReduce: send and recv partially overlap");
  }
  const int64_t bytes = 2 * static_cast<int64_t>(count) * 4 * (size_ - 1) / size_;
  return Run(Collective::kAllReduce, bytes, [&] { return DoAllReduceSum(send, recv, count); });
}

absl::Status Communicator::ReduceScatterSum(const float* send, float* recv, size_t recv_count) {
  if (recv_count > 0 && (send == nullptr || recv == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReduceScatter: send or recv is null with recv_count = ", recv_count));
  }
  const int64_t bytes = static_cast<int64_t>(recv_count) * 4 * (size_ - 1);
  return Run(Collective::kReduceScatter, bytes, [&] { return DoReduceScatterSum(send, recv, recv_count); });
}

absl::Status Communicator::Broadcast(const void* send, void* recv, size_t bytes, int root) {
  if (root < 0 || root >= size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("Broadcast: root = ", root, " out of range [0, ", size_, ")"));
  }
  if (bytes > 0 && (recv == nullptr || (rank_ == root && send == nullptr))) {
    return absl::InvalidArgumentError(absl::StrCat("Broadcast: send (on root) or recv is null with bytes = ", bytes));
  }
  const int64_t sent = rank_ == root ? static_cast<int64_t>(bytes) * (size_ - 1) : 0;
  return Run(Collective::kBroadcast, sent, [&] { return DoBroadcast(send, recv, bytes, root); });
}

absl::Status Communicator::AllToAllV(const void* send, absl::Span<const size_t> send_counts,
                                     absl::Span<const size_t> send_offsets, void* recv,
                                     absl::Span<const size_t> recv_counts,
                                     absl::Span<const size_t> recv_offsets) {
  const size_t n = static_cast<size_t>(size_);
  if (send_counts.size() != n || send_offsets.size() != n || recv_counts.size() != n ||
      recv_offsets.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AllToAllV: send_counts/send_offsets/recv_counts/recv_offsets have ", send_counts.size(), "/",
        send_offsets.size(), "/", recv_counts.size(), "/", recv_offsets.size(), " entries; size() = ", n));
  }
  int64_t sent = 0;
  for (size_t p = 0; p < n; ++p) {
    if (p != static_cast<size_t>(rank_)) sent += static_cast<int64_t>(send_counts[p]);
  }
  const size_t send_extent = AllToAllVExtent(send_counts, send_offsets);
  const size_t recv_extent = AllToAllVExtent(recv_counts, recv_offsets);
  if ((send_extent > 0 && send == nullptr) || (recv_extent > 0 && recv == nullptr)) {
    return absl::InvalidArgumentError("AllToAllV: send or recv is null with non-zero counts");
  }
  if (Overlap(send, send_extent, recv, recv_extent)) {
    return absl::InvalidArgumentError("AllToAllV: send and recv overlap");
  }
  return Run(Collective::kAllToAllV, sent, [&] {
    return DoAllToAllV(send, send_counts, send_offsets, recv, recv_counts, recv_offsets);
  });
}

size_t AllToAllVExtent(absl::Span<const size_t> counts, absl::Span<const size_t> offsets) {
  size_t end = 0;
  for (size_t p = 0; p < counts.size() && p < offsets.size(); ++p) {
    if (counts[p] > 0) end = std::max(end, offsets[p] + counts[p]);
  }
  return end;
}

absl::Status Communicator::Barrier() {
  return Run(Collective::kBarrier, 0, [&] { return DoBarrier(); });
}

absl::StatusOr<std::unique_ptr<Communicator>> Communicator::Split(int color, int key) {
  std::unique_ptr<Communicator> child;
  absl::Status status = Run(Collective::kSplit, 0, [&]() -> absl::Status {
    absl::StatusOr<std::unique_ptr<Communicator>> r = DoSplit(color, key);
    if (!r.ok()) return r.status();
    child = *std::move(r);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return child;
}

}  // namespace ic::parallel
