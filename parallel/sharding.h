// Sharding plans for tensor and expert parallelism (DESIGN.md §5): pure functions, no communication.
//
//   Prefill, Full layer: query rows split zig-zag across the shard group (causal work balanced), each
//     rank scores and selects its rows, then an all-gather of int32 indices [max_rows, k] per rank;
//     ZigZagGatheredRows maps the gathered slots back to global rows.
//   Decode, Full layer: keys split contiguously (DecodeKeyRange); each rank selects its local top-k as
//     (score, position) candidates; after an all-gather every rank runs MergeTopkCandidates, which gives
//     the exact global top-k with DESIGN.md §3's tie rule, bitwise-identical on every rank.
//   Heads: QueryHeadShard / KvHeadShard (GQA: split where they divide, else the KV heads a rank's query
//     heads use, replicated). Experts: ExpertShard (contiguous blocks across the expert group).
//
//   ZigZagSplit split = ZigZagRows(num_rows, tp_size, tp_rank);
//   for (const RowRange& r : split.ranges) ScoreAndSelect(r.begin, r.end);       // ≤ split.max_rows rows
//   comm.AllGather(local_indices, gathered, split.max_rows * k * sizeof(int32_t));
//   std::vector<int64_t> row_of = ZigZagGatheredRows(num_rows, tp_size);         // slot → row or −1
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace ic::parallel {

// ---- Prefill: query rows, zig-zag ----

// Half-open range of rows [begin, end).
struct RowRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};

struct ZigZagSplit {
  // This rank's rows: chunk tp_rank, then chunk 2·tp_size − 1 − tp_rank, of 2·tp_size chunks
  // (chunk c = [⌊c·N/(2·tp)⌋, ⌊(c+1)·N/(2·tp)⌋)). Either range may be empty when N < 2·tp.
  RowRange ranges[2];
  int64_t num_rows() const { return ranges[0].size() + ranges[1].size(); }
  // The most rows any rank of the group gets: the per-rank slot count of the gathered buffer.
  int64_t max_rows = 0;
};

// Rows of tp_rank. Errors name the bad value (num_rows < 0, tp_size < 1, tp_rank out of range).
//
// Balance (row t costs t + 1 keys, causal): with N divisible by 2·tp every rank gets exactly the same
// work; otherwise the heaviest and lightest rank differ by at most N keys — less than one row — against
// ≈ N²/(2·tp) per rank (sharding_test.cc checks it for N ≤ 600, tp ≤ 8; contiguous blocks differ by
// ≈ N²/tp²·(tp − 1)).
absl::StatusOr<ZigZagSplit> ZigZagRows(int64_t num_rows, int tp_size, int tp_rank);

// The global row held in each slot of the gathered buffer [tp_size, max_rows]: slot r·max_rows + j is
// row j of rank r's rows (in its ranges' order), or −1 for padding. Every row appears exactly once.
absl::StatusOr<std::vector<int64_t>> ZigZagGatheredRows(int64_t num_rows, int tp_size);

// Causal work of a row set: Σ (t + 1) over its rows.
int64_t CausalWork(const ZigZagSplit& split);

// ---- Decode: keys, contiguous ----

// Keys [0, num_keys) split into tp_size contiguous ranges, sizes differing by at most one.
absl::StatusOr<RowRange> DecodeKeyRange(int64_t num_keys, int tp_size, int tp_rank);

// ---- Heads ----

struct HeadShard {
  int begin = 0;            // first head of this rank
  int count = 0;            // heads of this rank
  bool replicated = false;  // the same heads are also held by other ranks of the group
};

// Query heads: num_heads / tp_size each; tp_size must divide num_heads.
absl::StatusOr<HeadShard> QueryHeadShard(int num_heads, int tp_size, int tp_rank);

// KV heads of GQA (num_heads query heads share num_kv_heads; num_kv_heads divides num_heads). Split
// when tp_size divides num_kv_heads; else the rank holds exactly the KV heads its query heads use
// (replicated = true; e.g. 8 query, 2 KV heads, tp 4: ranks 0,1 hold KV head 0, ranks 2,3 KV head 1).
absl::StatusOr<HeadShard> KvHeadShard(int num_heads, int num_kv_heads, int tp_size, int tp_rank);

// ---- Experts ----

// Routed experts [begin, begin + count) of ep_rank: contiguous blocks; ep_size must divide num_experts.
absl::StatusOr<HeadShard> ExpertShard(int num_experts, int ep_size, int ep_rank);

// The expert-group rank that owns `expert` under ExpertShard; −1 for arguments ExpertShard rejects or an
// expert out of range.
int ExpertOwner(int expert, int num_experts, int ep_size);

// ---- Decode top-k merge ----

// One candidate of a rank's local top-k: position −1 marks an empty slot (fewer valid keys than k).
// 8 bytes, trivially copyable: the all-gather payload.
struct TopkCandidate {
  float score;
  int32_t position;
};
static_assert(sizeof(TopkCandidate) == 8);

// True if a ranks before b in DESIGN.md §3's order: larger score first; +inf > finite > −inf > NaN;
// −0 == +0; equal scores (and two NaNs) → smaller position first. A strict total order on distinct
// positions.
bool TopkBefore(TopkCandidate a, TopkCandidate b);

// Exact global top-k per row from the gathered candidates of every rank.
//   candidates  [num_ranks, rows, per_rank]  (the all-gather output: rank-major)
//   out         [rows, k]                    the first min(k, #valid) entries are positions, ascending;
//                                            then −1 (the CPU top-k kernel's layout)
// Exact provided each rank's candidates are its local top-min(k, per_rank) under TopkBefore over
// disjoint key sets, and per_rank ≥ min(k, local valid keys). Positions must be distinct within a row
// (duplicates are InvalidArgument). Deterministic: every rank given the same bytes returns the same
// bytes.
absl::Status MergeTopkCandidates(absl::Span<const TopkCandidate> candidates, int num_ranks, int rows,
                                 int per_rank, int k, absl::Span<int32_t> out);

}  // namespace ic::parallel
