// The two top-k collectives of a Full layer inside a shard group (DESIGN.md §5), on host buffers.
//
//   prefill: each rank selected the top-k of its zig-zag rows (sharding.h: ZigZagRows) into
//            local [max_rows, k]; AllGatherZigZagIndices gives every rank the [num_rows, k] indices.
//   decode:  each rank selected its local top-k over its DecodeKeyRange as candidates [rows, k];
//            AllGatherMergeTopk gives every rank the exact global [rows, k] indices.
// Both leave bitwise-identical indices on every rank and count their bytes in shard.stats()
// (AllGather), which is where `indexcache_topk_bytes_total` comes from.
//
// Host buffers: the in-process backend uses them directly; NcclCommunicator stages them through device
// copies (the engine's CUDA contexts). Merging on the device (a CUDA scatter/merge kernel, no host round
// trip) is not written.
//
//   std::vector<int32_t> local(split.max_rows * k), indices(num_rows * k), scratch;
//   IC_RETURN_IF_ERROR(AllGatherZigZagIndices(groups.shard(), num_rows, k, local, absl::MakeSpan(indices),
//                                             scratch));
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "parallel/communicator.h"
#include "parallel/sharding.h"

namespace ic::parallel {

// local   [max_rows, k]  this rank's rows in ZigZagRows order (rows past num_rows() are ignored)
// out     [num_rows, k]  every row's indices, in row order
// scratch resized to [shard.size() × max_rows × k] (reused across calls)
absl::Status AllGatherZigZagIndices(Communicator& shard, int64_t num_rows, int k, absl::Span<const int32_t> local,
                                    absl::Span<int32_t> out, std::vector<int32_t>& scratch);

// local   [rows, k]  this rank's candidates (position −1 for empty slots)
// out     [rows, k]  MergeTopkCandidates' layout: positions ascending, then −1
// scratch resized to [shard.size() × rows × k]
absl::Status AllGatherMergeTopk(Communicator& shard, int rows, int k, absl::Span<const TopkCandidate> local,
                                absl::Span<int32_t> out, std::vector<TopkCandidate>& scratch);

}  // namespace ic::parallel
