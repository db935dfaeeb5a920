// Process groups: which ranks talk to which (DESIGN.md §5), and their communicators.
//
// world_size = dp_size × tp_size. Ranks are laid out tensor-parallel innermost (the ranks of a shard
// group are adjacent, i.e. on one NVLink island when world ranks follow the GPUs of a node):
//
//   shard group   (attention tensor parallel)  ranks [g·tp, (g+1)·tp), g = rank / tp = the dp rank.
//                  Query heads split, top-k computed once and shared only here.
//   dp group      (data-parallel attention)    the ranks with the same tp_rank across the dp_size shard
//                  groups, which serve different sequences (for cross-replica reductions/broadcasts).
//   expert group  (expert parallel)            ranks [e·ep, (e+1)·ep), e = rank / ep; experts split
//                  across it, tokens travel by all-to-all-v. ep_size = world_size: one group of all
//                  ranks; smaller: world_size / ep_size groups with replicated experts.
//
// Example, world 8, tp 2, ep 8: shard groups {0,1} {2,3} {4,5} {6,7}; dp groups {0,2,4,6} {1,3,5,7};
// expert group {0..7}.
//
//   ParallelSizes sizes{.world_size = 8, .tp_size = 2, .ep_size = 8};
//   IC_ASSIGN_OR_RETURN(ProcessGroups groups, ProcessGroups::Create(world_comm, sizes));   // collective
//   groups.shard().AllGather(...);   // top-k indices inside the shard group only
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace ic::parallel {

struct ParallelSizes {
  int world_size = 1;
  int tp_size = 1;  // attention tensor parallel = shard group size
  int ep_size = 1;  // expert group size
  int dp_size = 0;  // data-parallel attention groups; 0 = world_size / tp_size
};

// Checks the sizes; errors name them ("tp_size 3 does not divide world_size 8").
absl::Status ValidateParallelSizes(const ParallelSizes& sizes);

// One rank's place in the layout above. Rank lists are world ranks in group-rank order.
struct RankLayout {
  int rank = 0;
  int world_size = 1;
  int tp_size = 1, tp_rank = 0;
  int dp_size = 1, dp_rank = 0;  // dp_rank = index of this rank's shard group
  int ep_size = 1, ep_rank = 0;
  int expert_group = 0;          // index of this rank's expert group
  std::vector<int> shard_group_ranks;
  std::vector<int> dp_group_ranks;
  std::vector<int> expert_group_ranks;
};

absl::StatusOr<RankLayout> MakeRankLayout(const ParallelSizes& sizes, int rank);

// "world 8 = dp 4 × tp 2, ep 8; rank 3: shard group 1 {2, 3}, dp group {1, 3, 5, 7}, expert group 0 {0..7}"
std::string DescribeLayout(const RankLayout& layout);

class ProcessGroups {
 public:
  // Collective over `world` (every rank calls it): splits the shard, dp and expert communicators in
  // that order. world.size() must equal sizes.world_size; `world` must outlive the result.
  static absl::StatusOr<ProcessGroups> Create(Communicator& world, const ParallelSizes& sizes);

  Communicator& world() const { return *world_; }
  Communicator& shard() const { return *shard_; }
  Communicator& dp() const { return *dp_; }
  Communicator& expert() const { return *expert_; }
  const RankLayout& layout() const { return layout_; }

  // Aborts every communicator of this rank (world included).
  void AbortAll();

 private:
  Communicator* world_ = nullptr;
  std::unique_ptr<Communicator> shard_, dp_, expert_;
  RankLayout layout_;
};

}  // namespace ic::parallel
