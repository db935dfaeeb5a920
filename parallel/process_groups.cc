// Process groups: rank layout and the communicator splits.
#include "parallel/process_groups.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ic::parallel {

absl::Status ValidateParallelSizes(const ParallelSizes& s) {
  if (s.world_size < 1) return absl::InvalidArgumentError(absl::StrCat("world_size ", s.world_size, " must be >= 1"));
  if (s.tp_size < 1) return absl::InvalidArgumentError(absl::StrCat("tp_size ", s.tp_size, " must be >= 1"));
  if (s.ep_size < 1) return absl::InvalidArgumentError(absl::StrCat("ep_size ", s.ep_size, " must be >= 1"));
  if (s.dp_size < 0) return absl::InvalidArgumentError(absl::StrCat("dp_size ", s.dp_size, " must be >= 0"));
  if (s.world_size % s.tp_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tp_size ", s.tp_size, " does not divide world_size ", s.world_size));
  }
  if (s.world_size % s.ep_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ep_size ", s.ep_size, " does not divide world_size ", s.world_size));
  }
  if (s.dp_size != 0 && s.dp_size * s.tp_size != s.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("dp_size ", s.dp_size, " × tp_size ", s.tp_size,
                                                   " != world_size ", s.world_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<RankLayout> MakeRankLayout(const ParallelSizes& sizes, int rank) {
  if (absl::Status s = ValidateParallelSizes(sizes); !s.ok()) return s;
  if (rank < 0 || rank >= sizes.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " out of range [0, world_size ", sizes.world_size, ")"));
  }
  RankLayout l;
  l.rank = rank;
  l.world_size = sizes.world_size;
  l.tp_size = sizes.tp_size;
  l.dp_size = sizes.world_size / sizes.tp_size;
  l.tp_rank = rank % l.tp_size;
  l.dp_rank = rank / l.tp_size;
  l.ep_size = sizes.ep_size;
  l.ep_rank = rank % l.ep_size;
  l.expert_group = rank / l.ep_size;
  for (int t = 0; t < l.tp_size; ++t) l.shard_group_ranks.push_back(l.dp_rank * l.tp_size + t);
  for (int d = 0; d < l.dp_size; ++d) l.dp_group_ranks.push_back(d * l.tp_size + l.tp_rank);
  for (int e = 0; e < l.ep_size; ++e) l.expert_group_ranks.push_back(l.expert_group * l.ep_size + e);
  return l;
}

std::string DescribeLayout(const RankLayout& l) {
  return absl::StrCat("world ", l.world_size, " = dp ", l.dp_size, " × tp ", l.tp_size, ", ep ", l.ep_size,
                      "; rank ", l.rank, ": shard group ", l.dp_rank, " {", absl::StrJoin(l.shard_group_ranks, ", "),
                      "}, dp group {", absl::StrJoin(l.dp_group_ranks, ", "), "}, expert group ", l.expert_group,
                      " {", absl::StrJoin(l.expert_group_ranks, ", "), "}");
}

namespace {

absl::StatusOr<std::unique_ptr<Communicator>> SplitChecked(Communicator& world, const char* name, int color, int key,
                                                           int expect_rank, int expect_size) {
  absl::StatusOr<std::unique_ptr<Communicator>> c = world.Split(color, key);
  if (!c.ok()) {
    return absl::Status(c.status().code(), absl::StrCat("ProcessGroups: splitting the ", name, " group: ",
                                                        c.status().message()));
  }
  if (*c == nullptr || (*c)->rank() != expect_rank || (*c)->size() != expect_size) {
    // Every rank computes the same layout from its own sizes: a mismatch means the ranks disagree.
    return absl::FailedPreconditionError(absl::StrCat("ProcessGroups: the ranks disagree on the sizes (world, tp, ep)? the ", name, " group came out as rank ",
                                            *c ? (*c)->rank() : -1, " of ", *c ? (*c)->size() : 0,
                                            "; the layout says rank ", expect_rank, " of ", expect_size));
  }
  return c;
}

}  // namespace

absl::StatusOr<ProcessGroups> ProcessGroups::Create(Communicator& world, const ParallelSizes& sizes) {
  if (world.size() != sizes.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("ProcessGroups: world_size ", sizes.world_size,
                                                   " but the world communicator has ", world.size(), " ranks"));
  }
  absl::StatusOr<RankLayout> layout = MakeRankLayout(sizes, world.rank());
  if (!layout.ok()) return layout.status();
  ProcessGroups g;
  g.world_ = &world;
  g.layout_ = *std::move(layout);
  const RankLayout& l = g.layout_;
  absl::StatusOr<std::unique_ptr<Communicator>> c =
      SplitChecked(world, "shard", l.dp_rank, l.tp_rank, l.tp_rank, l.tp_size);
  if (!c.ok()) return c.status();
  g.shard_ = *std::move(c);
  c = SplitChecked(world, "dp", l.tp_rank, l.dp_rank, l.dp_rank, l.dp_size);
  if (!c.ok()) return c.status();
  g.dp_ = *std::move(c);
  c = SplitChecked(world, "expert", l.expert_group, l.ep_rank, l.ep_rank, l.ep_size);
  if (!c.ok()) return c.status();
  g.expert_ = *std::move(c);
  return g;
}

void ProcessGroups::AbortAll() {
  for (Communicator* c : {shard_.get(), dp_.get(), expert_.get(), world_}) {
    if (c != nullptr) c->Abort();
  }
}

}  // namespace ic::parallel
