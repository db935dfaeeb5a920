// The prefill and decode top-k collectives of a shard group, on host buffers.
#include "parallel/sharded_topk.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ic::parallel {

absl::Status AllGatherZigZagIndices(Communicator& shard, int64_t num_rows, int k, absl::Span<const int32_t> local,
                                    absl::Span<int32_t> out, std::vector<int32_t>& scratch) {
  if (k < 0) return absl::InvalidArgumentError(absl::StrCat("AllGatherZigZagIndices: k = ", k, " is negative"));
  absl::StatusOr<ZigZagSplit> split = ZigZagRows(num_rows, shard.size(), shard.rank());
  if (!split.ok()) return split.status();
  const size_t slot = static_cast<size_t>(split->max_rows) * k;
  if (local.size() != slot) {
    return absl::InvalidArgumentError(absl::StrCat("AllGatherZigZagIndices: local has ", local.size(),
                                                   " entries; expected max_rows × k = ", slot));
  }
  if (out.size() != static_cast<size_t>(num_rows) * k) {
    return absl::InvalidArgumentError(absl::StrCat("AllGatherZigZagIndices: out has ", out.size(),
                                                   " entries; expected num_rows × k = ", num_rows * k));
  }
  scratch.resize(slot * shard.size());
  absl::Status s = shard.AllGather(local.data(), scratch.data(), slot * sizeof(int32_t));
  if (!s.ok()) return s;
  absl::StatusOr<std::vector<int64_t>> row_of = ZigZagGatheredRows(num_rows, shard.size());
  if (!row_of.ok()) return row_of.status();
  for (size_t i = 0; i < row_of->size(); ++i) {
    const int64_t row = (*row_of)[i];
    if (row < 0) continue;
    std::copy(scratch.begin() + i * k, scratch.begin() + (i + 1) * k, out.begin() + row * k);
  }
  return absl::OkStatus();
}

absl::Status AllGatherMergeTopk(Communicator& shard, int rows, int k, absl::Span<const TopkCandidate> local,
                                absl::Span<int32_t> out, std::vector<TopkCandidate>& scratch) {
  if (rows < 0 || k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("AllGatherMergeTopk: rows = ", rows, ", k = ", k,
                                                   " (both must be >= 0)"));
  }
  const size_t slot = static_cast<size_t>(rows) * k;
  if (local.size() != slot) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllGatherMergeTopk: local has ", local.size(), " entries; expected rows × k = ", slot));
  }
  scratch.resize(slot * shard.size());
  absl::Status s = shard.AllGather(local.data(), scratch.data(), slot * sizeof(TopkCandidate));
  if (!s.ok()) return s;
  return MergeTopkCandidates(scratch, shard.size(), rows, k, k, out);
}

}  // namespace ic::parallel
