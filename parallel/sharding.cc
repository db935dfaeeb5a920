// Sharding plans: row, key, head and expert splits, and the decode top-k merge.
#include "parallel/sharding.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "absl/strings/str_cat.h"

namespace ic::parallel {
namespace {

absl::Status CheckGroup(const char* what, int size, int rank, const char* size_name) {
  if (size < 1) return absl::InvalidArgumentError(absl::StrCat(what, ": ", size_name, " = ", size, " must be >= 1"));
  if (rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": rank = ", rank, " out of range [0, ", size_name, " = ", size, ")"));
  }
  return absl::OkStatus();
}

int64_t ChunkBegin(int64_t num_rows, int64_t chunks, int64_t c) { return c * num_rows / chunks; }

// Larger key = better candidate (the same total order as the CPU top-k kernel, written independently):
// high 32 bits order the scores with NaN lowest and −0 == +0, low 32 bits prefer smaller positions.
uint32_t ScoreKey(float v) {
  if (v != v) return 0u;
  if (v == 0.0f) v = 0.0f;
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

uint64_t CandidateKey(TopkCandidate c) {
  return (static_cast<uint64_t>(ScoreKey(c.score)) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(c.position));
}

}  // namespace

absl::StatusOr<ZigZagSplit> ZigZagRows(int64_t num_rows, int tp_size, int tp_rank) {
  if (num_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("ZigZagRows: num_rows = ", num_rows, " is negative"));
  }
  if (absl::Status s = CheckGroup("ZigZagRows", tp_size, tp_rank, "tp_size"); !s.ok()) return s;
  const int64_t m = 2 * static_cast<int64_t>(tp_size);
  ZigZagSplit split;
  const int64_t first = tp_rank, second = m - 1 - tp_rank;
  split.ranges[0] = {ChunkBegin(num_rows, m, first), ChunkBegin(num_rows, m, first + 1)};
  split.ranges[1] = {ChunkBegin(num_rows, m, second), ChunkBegin(num_rows, m, second + 1)};
  for (int r = 0; r < tp_size; ++r) {
    const int64_t rows = ChunkBegin(num_rows, m, r + 1) - ChunkBegin(num_rows, m, r) +
                         ChunkBegin(num_rows, m, m - r) - ChunkBegin(num_rows, m, m - 1 - r);
    split.max_rows = std::max(split.max_rows, rows);
  }
  return split;
}

absl::StatusOr<std::vector<int64_t>> ZigZagGatheredRows(int64_t num_rows, int tp_size) {
  absl::StatusOr<ZigZagSplit> first = ZigZagRows(num_rows, tp_size, 0);
  if (!first.ok()) return first.status();
  const int64_t max_rows = first->max_rows;
  std::vector<int64_t> rows(static_cast<size_t>(tp_size * max_rows), -1);
  for (int r = 0; r < tp_size; ++r) {
    absl::StatusOr<ZigZagSplit> split = ZigZagRows(num_rows, tp_size, r);
    if (!split.ok()) return split.status();
    int64_t j = 0;
    for (const RowRange& range : split->ranges) {
      for (int64_t t = range.begin; t < range.end; ++t) rows[r * max_rows + j++] = t;
    }
  }
  return rows;
}

int64_t CausalWork(const ZigZagSplit& split) {
  int64_t work = 0;
  for (const RowRange& r : split.ranges) {
    // Σ_{t=begin}^{end−1} (t + 1) = S(end) − S(begin), S(b) = b(b+1)/2.
    work += r.end * (r.end + 1) / 2 - r.begin * (r.begin + 1) / 2;
  }
  return work;
}

absl::StatusOr<RowRange> DecodeKeyRange(int64_t num_keys, int tp_size, int tp_rank) {
  if (num_keys < 0) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeKeyRange: num_keys = ", num_keys, " is negative"));
  }
  if (absl::Status s = CheckGroup("DecodeKeyRange", tp_size, tp_rank, "tp_size"); !s.ok()) return s;
  return RowRange{ChunkBegin(num_keys, tp_size, tp_rank), ChunkBegin(num_keys, tp_size, tp_rank + 1)};
}

absl::StatusOr<HeadShard> QueryHeadShard(int num_heads, int tp_size, int tp_rank) {
  if (absl::Status s = CheckGroup("QueryHeadShard", tp_size, tp_rank, "tp_size"); !s.ok()) return s;
  if (num_heads < 1 || num_heads % tp_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("QueryHeadShard: tp_size ", tp_size, " does not divide num_heads ", num_heads));
  }
  const int per = num_heads / tp_size;
  return HeadShard{tp_rank * per, per, false};
}

absl::StatusOr<HeadShard> KvHeadShard(int num_heads, int num_kv_heads, int tp_size, int tp_rank) {
  absl::StatusOr<HeadShard> q = QueryHeadShard(num_heads, tp_size, tp_rank);
  if (!q.ok()) return q.status();
  if (num_kv_heads < 1 || num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KvHeadShard: num_kv_heads ", num_kv_heads, " does not divide num_heads ", num_heads));
  }
  if (num_kv_heads % tp_size == 0) {
    const int per = num_kv_heads / tp_size;
    return HeadShard{tp_rank * per, per, false};
  }
  const int group = num_heads / num_kv_heads;  // query heads per KV head
  const int first = q->begin / group;
  const int last = (q->begin + q->count - 1) / group;
  return HeadShard{first, last - first + 1, true};
}

absl::StatusOr<HeadShard> ExpertShard(int num_experts, int ep_size, int ep_rank) {
  if (absl::Status s = CheckGroup("ExpertShard", ep_size, ep_rank, "ep_size"); !s.ok()) return s;
  if (num_experts < 1 || num_experts % ep_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ExpertShard: ep_size ", ep_size, " does not divide num_experts ", num_experts));
  }
  const int per = num_experts / ep_size;
  return HeadShard{ep_rank * per, per, false};
}

int ExpertOwner(int expert, int num_experts, int ep_size) {
  if (ep_size < 1 || num_experts < 1 || num_experts % ep_size != 0 || expert < 0 || expert >= num_experts) return -1;
  return expert / (num_experts / ep_size);
}

bool TopkBefore(TopkCandidate a, TopkCandidate b) { return CandidateKey(a) > CandidateKey(b); }

absl::Status MergeTopkCandidates(absl::Span<const TopkCandidate> candidates, int num_ranks, int rows, int per_rank,
                                 int k, absl::Span<int32_t> out) {
  if (num_ranks < 1 || rows < 0 || per_rank < 0 || k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("MergeTopkCandidates: num_ranks = ", num_ranks, ", rows = ", rows,
                                                   ", per_rank = ", per_rank, ", k = ", k,
                                                   " (need num_ranks >= 1, the rest >= 0)"));
  }
  const size_t expect = static_cast<size_t>(num_ranks) * rows * per_rank;
  if (candidates.size() != expect) {
    return absl::InvalidArgumentError(absl::StrCat("MergeTopkCandidates: candidates has ", candidates.size(),
                                                   " entries; expected num_ranks × rows × per_rank = ", expect));
  }
  if (out.size() != static_cast<size_t>(rows) * k) {
    return absl::InvalidArgumentError(absl::StrCat("MergeTopkCandidates: out has ", out.size(),
                                                   " entries; expected rows × k = ", static_cast<size_t>(rows) * k));
  }
  std::vector<uint64_t> keys;
  std::vector<int32_t> positions;
  for (int row = 0; row < rows; ++row) {
    keys.clear();
    positions.clear();
    for (int r = 0; r < num_ranks; ++r) {
      const TopkCandidate* c = candidates.data() + (static_cast<size_t>(r) * rows + row) * per_rank;
      for (int j = 0; j < per_rank; ++j) {
        if (c[j].position == -1) continue;
        if (c[j].position < 0) {
          return absl::InvalidArgumentError(absl::StrCat("MergeTopkCandidates: rank ", r, " row ", row, " slot ", j,
                                                         " has position ", c[j].position));
        }
        keys.push_back(CandidateKey(c[j]));
        positions.push_back(c[j].position);
      }
    }
    std::sort(positions.begin(), positions.end());
    if (auto dup = std::adjacent_find(positions.begin(), positions.end()); dup != positions.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("MergeTopkCandidates: row ", row, " has position ", *dup, " from more than one slot"));
    }
    const size_t take = std::min(keys.size(), static_cast<size_t>(k));
    if (take < keys.size()) {
      std::nth_element(keys.begin(), keys.begin() + take, keys.end(), std::greater<uint64_t>());
    }
    int32_t* o = out.data() + static_cast<size_t>(row) * k;
    for (size_t i = 0; i < take; ++i) o[i] = static_cast<int32_t>(~static_cast<uint32_t>(keys[i] & 0xffffffffu));
    std::sort(o, o + take);
    std::fill(o + take, o + k, -1);
  }
  return absl::OkStatus();
}

}  // namespace ic::parallel
