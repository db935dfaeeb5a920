#include "sdk/layer_sampling.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sdk/model_presets.h"
#include "sdk/plan.h"

namespace ic {
namespace {

using ::testing::HasSubstr;

ModelConfig Glm30B() {
  auto c = PresetConfig("glm-4.7-flash-dsa");
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

LayerCounts Count(const ModelConfig& c, int keep_r) {
  auto plan = UniformPlan(c.num_hidden_layers, keep_r);
  EXPECT_TRUE(plan.ok());
  auto n = CountLayers(c, *plan);
  EXPECT_TRUE(n.ok()) << n.status();
  return *n;
}

TEST(LayerSamplingTest, PlanCountsOn47Layers) {
  const ModelConfig c = Glm30B();
  ASSERT_EQ(c.num_hidden_layers, 47);
  // DSA: layer 0 dense Full, 46 MoE Full.
  LayerCounts dsa = Count(c, 1);
  EXPECT_EQ(dsa[LayerClass::kDenseFull], 1);
  EXPECT_EQ(dsa[LayerClass::kDenseShared], 0);
  EXPECT_EQ(dsa[LayerClass::kMoeFull], 46);
  EXPECT_EQ(dsa[LayerClass::kMoeShared], 0);
  // 1/2 uniform: Full at 0, 2, …, 46 (24 layers, ceil(47/2)); 23 MoE Full, 23 MoE Shared.
  LayerCounts half = Count(c, 2);
  EXPECT_EQ(half[LayerClass::kDenseFull], 1);
  EXPECT_EQ(half[LayerClass::kMoeFull], 23);
  EXPECT_EQ(half[LayerClass::kMoeShared], 23);
  EXPECT_EQ(half.shared(), 23);
  // 1/4 uniform: Full at 0, 4, …, 44 (12 layers, ceil(47/4)); 11 MoE Full, 35 MoE Shared.
  LayerCounts quarter = Count(c, 4);
  EXPECT_EQ(quarter[LayerClass::kDenseFull], 1);
  EXPECT_EQ(quarter[LayerClass::kMoeFull], 11);
  EXPECT_EQ(quarter[LayerClass::kMoeShared], 35);
  EXPECT_EQ(quarter.total(), 47);

  auto wrong = ParsePlan("FS", 2);
  ASSERT_TRUE(wrong.ok());
  EXPECT_FALSE(CountLayers(c, *wrong).ok());
}

TEST(LayerSamplingTest, SliceOfEachPreset) {
  const ModelConfig c = Glm30B();
  LayerSlice s = MakeLayerSlice(c);
  EXPECT_EQ(s.plan, "FFS");
  EXPECT_EQ(s.source_layers, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(s.full_layers, 47);
  ModelConfig sc = SliceConfig(c, s);
  EXPECT_EQ(sc.num_hidden_layers, 3);
  EXPECT_EQ(sc.moe_layer, (std::vector<bool>{false, true, true}));
  EXPECT_EQ(sc.first_k_dense_replace, 1);
  EXPECT_EQ(sc.hidden_size, c.hidden_size);
  EXPECT_EQ(sc.max_position_embeddings, c.max_position_embeddings);
  EXPECT_EQ(sc.index_topk, 2048);

  // Three dense layers (DeepSeek-V3.2, GLM-5): a dense Shared layer is possible, so the slice times one.
  for (const char* name : {"deepseek-v3.2", "glm-5"}) {
    auto d = PresetConfig(name);
    ASSERT_TRUE(d.ok());
    LayerSlice ds = MakeLayerSlice(*d);
    EXPECT_EQ(ds.plan, "FSFS") << name;
    EXPECT_EQ(ds.source_layers, (std::vector<int>{0, 1, 3, 4})) << name;
    EXPECT_EQ(SliceConfig(*d, ds).first_k_dense_replace, 2) << name;
  }
}

// Hand-computed composition on the 30B counts.
TEST(LayerSamplingTest, ComposeExactValues) {
  const ModelConfig c = Glm30B();
  const LayerSlice s = MakeLayerSlice(c);
  LayerProfile p;
  // Two passes' sums: per pass other 0.5, dense Full 2 (indexer 0.75), MoE Full 3 (indexer 1), MoE Shared 2.
  p.layer_seconds = {4.0, 6.0, 4.0};
  p.indexer_seconds = {1.5, 2.0, 0.0};
  p.other_seconds = 1.0;
  auto t = SliceTimesFromProfile(s, p, 2);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_DOUBLE_EQ(t->other, 0.5);
  EXPECT_DOUBLE_EQ(t->layer[static_cast<int>(LayerClass::kMoeShared)], 2.0);
  EXPECT_FALSE(t->present[static_cast<int>(LayerClass::kDenseShared)]);

  auto dsa = Compose(*t, Count(c, 1));
  auto quarter = Compose(*t, Count(c, 4));
  auto half = Compose(*t, Count(c, 2));
  ASSERT_TRUE(dsa.ok() && quarter.ok() && half.ok());
  EXPECT_DOUBLE_EQ(dsa->seconds, 0.5 + 2 + 46 * 3);            // 140.5
  EXPECT_DOUBLE_EQ(dsa->indexer_seconds, 0.75 + 46 * 1);       // 46.75
  EXPECT_DOUBLE_EQ(quarter->seconds, 0.5 + 2 + 11 * 3 + 35 * 2);  // 105.5
  EXPECT_DOUBLE_EQ(quarter->indexer_seconds, 0.75 + 11);
  EXPECT_DOUBLE_EQ(half->seconds, 0.5 + 2 + 23 * 3 + 23 * 2);     // 117.5

  const MechanismCheck m = CheckMechanism(*dsa, *quarter, Count(c, 4));
  EXPECT_DOUBLE_EQ(m.saved, 35.0);
  EXPECT_DOUBLE_EQ(m.estimate, 35.0 / 47.0 * 46.75);
  EXPECT_NEAR(m.relative_error(), std::abs(35.0 - 35.0 / 47.0 * 46.75) / (35.0 / 47.0 * 46.75), 1e-12);
  EXPECT_TRUE(m.within(0.10));
  const MechanismCheck none = CheckMechanism(*dsa, *dsa, Count(c, 1));
  EXPECT_EQ(none.saved, 0);
  EXPECT_EQ(none.estimate, 0);
  EXPECT_TRUE(none.within(0.10));
}

TEST(LayerSamplingTest, Errors) {
  const ModelConfig c = Glm30B();
  const LayerSlice s = MakeLayerSlice(c);
  LayerProfile empty;
  auto t = SliceTimesFromProfile(s, empty, 1);
  EXPECT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("profile_layers"));
  LayerProfile p;
  p.layer_seconds = p.indexer_seconds = {1, 1, 1};
  EXPECT_FALSE(SliceTimesFromProfile(s, p, 0).ok());
  // A slice without a MoE Shared layer cannot compose a plan that has one.
  SliceTimes only_full = *SliceTimesFromProfile(s, p, 1);
  only_full.present[static_cast<int>(LayerClass::kMoeShared)] = false;
  auto r = Compose(only_full, Count(c, 2));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("MoE Shared"));
}

}  // namespace
}  // namespace ic
