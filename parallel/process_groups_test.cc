// Process groups: layout arithmetic, validation messages, and the split communicators over 1, 2 and 4
// in-process ranks (TP, EP, DP × TP): each group's members found by an all-gather of world ranks.
#include "parallel/process_groups.h"

#include <tuple>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/inprocess_communicator.h"
#include "parallel/multirank_test_util.h"

namespace ic::parallel {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(RankLayoutTest, World8Tp2Ep8) {
  ParallelSizes sizes{.world_size = 8, .tp_size = 2, .ep_size = 8};
  auto l = MakeRankLayout(sizes, 3);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->tp_rank, 1);
  EXPECT_EQ(l->dp_rank, 1);
  EXPECT_EQ(l->dp_size, 4);
  EXPECT_EQ(l->ep_rank, 3);
  EXPECT_THAT(l->shard_group_ranks, ElementsAre(2, 3));
  EXPECT_THAT(l->dp_group_ranks, ElementsAre(1, 3, 5, 7));
  EXPECT_THAT(l->expert_group_ranks, ElementsAre(0, 1, 2, 3, 4, 5, 6, 7));
  EXPECT_EQ(DescribeLayout(*l),
            "world 8 = dp 4 × tp 2, ep 8; rank 3: shard group 1 {2, 3}, dp group {1, 3, 5, 7}, expert group 0 "
            "{0, 1, 2, 3, 4, 5, 6, 7}");
}

TEST(RankLayoutTest, ExpertGroupsSmallerThanWorld) {
  auto l = MakeRankLayout({.world_size = 8, .tp_size = 4, .ep_size = 2}, 5);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->expert_group, 2);
  EXPECT_EQ(l->ep_rank, 1);
  EXPECT_THAT(l->expert_group_ranks, ElementsAre(4, 5));
  EXPECT_THAT(l->shard_group_ranks, ElementsAre(4, 5, 6, 7));
}

TEST(RankLayoutTest, ValidationNamesTheSizes) {
  auto msg = [](ParallelSizes s) { return std::string(ValidateParallelSizes(s).message()); };
  EXPECT_EQ(msg({.world_size = 8, .tp_size = 3}), "tp_size 3 does not divide world_size 8");
  EXPECT_EQ(msg({.world_size = 8, .tp_size = 2, .ep_size = 3}), "ep_size 3 does not divide world_size 8");
  EXPECT_EQ(msg({.world_size = 8, .tp_size = 2, .ep_size = 8, .dp_size = 2}), "dp_size 2 × tp_size 2 != world_size 8");
  EXPECT_THAT(msg({.world_size = 0}), HasSubstr("world_size 0"));
  EXPECT_TRUE(ValidateParallelSizes({.world_size = 8, .tp_size = 2, .ep_size = 8, .dp_size = 4}).ok());
  EXPECT_THAT(std::string(MakeRankLayout({.world_size = 4}, 4).status().message()), HasSubstr("rank 4"));
}

// All-gathers world ranks over `c`: the group's members in group-rank order.
std::vector<int> Members(Communicator& c, int world_rank) {
  std::vector<int> all(c.size(), -1);
  EXPECT_TRUE(c.AllGather(&world_rank, all.data(), sizeof(int)).ok());
  return all;
}

class ProcessGroupsTest : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(ProcessGroupsTest, SplitCommunicatorsMatchTheLayout) {
  const auto [world, tp, ep] = GetParam();
  auto comms = *InProcessGroup::Create(world);
  testing::RunRanks(comms, [&, world = world, tp = tp, ep = ep](Communicator& c) {
    auto groups = ProcessGroups::Create(c, {.world_size = world, .tp_size = tp, .ep_size = ep});
    ASSERT_TRUE(groups.ok()) << groups.status();
    const RankLayout& l = groups->layout();
    EXPECT_EQ(&groups->world(), &c);
    EXPECT_EQ(groups->shard().rank(), l.tp_rank);
    EXPECT_EQ(Members(groups->shard(), c.rank()), l.shard_group_ranks);
    EXPECT_EQ(Members(groups->dp(), c.rank()), l.dp_group_ranks);
    EXPECT_EQ(Members(groups->expert(), c.rank()), l.expert_group_ranks);
    // Top-k bytes stay inside the shard group: the world communicator moved none for it.
    const int64_t world_bytes = c.stats()[Collective::kAllGather].bytes_sent;
    int32_t idx[4] = {c.rank(), 1, 2, 3};
    std::vector<int32_t> gathered(4 * tp);
    ASSERT_TRUE(groups->shard().AllGather(idx, gathered.data(), sizeof(idx)).ok());
    EXPECT_EQ(c.stats()[Collective::kAllGather].bytes_sent, world_bytes);
    for (int t = 0; t < tp; ++t) EXPECT_EQ(gathered[4 * t], l.shard_group_ranks[t]);
  });
}

INSTANTIATE_TEST_SUITE_P(Layouts, ProcessGroupsTest,
                         ::testing::Values(std::make_tuple(1, 1, 1), std::make_tuple(2, 2, 2),
                                           std::make_tuple(2, 1, 2), std::make_tuple(4, 2, 4),
                                           std::make_tuple(4, 4, 4), std::make_tuple(4, 1, 4),
                                           std::make_tuple(4, 2, 2)),
                         [](const auto& info) {
                           return absl::StrCat("world", std::get<0>(info.param), "_tp", std::get<1>(info.param), "_ep",
                                               std::get<2>(info.param));
                         });

TEST(ProcessGroupsFailureTest, RejectsMismatchedWorldSize) {
  auto comms = *InProcessGroup::Create(1);
  auto groups = ProcessGroups::Create(*comms[0], {.world_size = 2});
  EXPECT_EQ(groups.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(groups.status().message()), HasSubstr("world communicator has 1 ranks"));
}

TEST(ProcessGroupsFailureTest, AbortAllBreaksTheShardGroupForItsPeers) {
  auto comms = *InProcessGroup::Create(2, {.timeout = absl::Seconds(30)});
  testing::RunRanks(comms, [&](Communicator& c) {
    auto groups = ProcessGroups::Create(c, {.world_size = 2, .tp_size = 2, .ep_size = 2});
    ASSERT_TRUE(groups.ok()) << groups.status();
    if (c.rank() == 1) {
      groups->AbortAll();
      return;
    }
    absl::Status s = groups->shard().Barrier();
    EXPECT_FALSE(s.ok());
    EXPECT_THAT(std::string(s.message()), HasSubstr("rank 1"));
  });
}

}  // namespace
}  // namespace ic::parallel
