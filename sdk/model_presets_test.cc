#include "sdk/model_presets.h"

#include <cmath>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sdk/layer_sampling.h"
#include "sdk/sizing.h"

namespace ic {
namespace {

using ::testing::HasSubstr;

TEST(ModelPresetsTest, Glm47FlashDsaHasTheIssueShapes) {
  auto c = PresetConfig("glm-4.7-flash-dsa");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Architecture::kGlmMoeDsa);
  EXPECT_EQ(c->num_hidden_layers, 47);
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->num_attention_heads, 20);
  EXPECT_TRUE(c->mla);
  EXPECT_EQ(c->q_lora_rank, 768);
  EXPECT_EQ(c->kv_lora_rank, 512);
  EXPECT_EQ(c->qk_nope_head_dim, 192);
  EXPECT_EQ(c->qk_rope_head_dim, 64);
  EXPECT_EQ(c->v_head_dim, 256);
  EXPECT_EQ(c->n_routed_experts, 64);
  EXPECT_EQ(c->num_experts_per_tok, 4);
  EXPECT_EQ(c->n_shared_experts, 1);
  EXPECT_EQ(c->moe_intermediate_size, 1536);
  EXPECT_EQ(c->first_k_dense_replace, 1);
  EXPECT_EQ(c->intermediate_size, 10240);
  EXPECT_EQ(c->vocab_size, 154880);
  EXPECT_TRUE(c->has_indexer);
  EXPECT_EQ(c->index_n_heads, 32);
  EXPECT_EQ(c->index_head_dim, 128);
  EXPECT_EQ(c->index_topk, 2048);
  EXPECT_TRUE(c->indexer_rope_interleave);
  EXPECT_EQ(c->n_group, 1);
  EXPECT_EQ(c->topk_group, 1);
  EXPECT_GE(c->max_position_embeddings, 202752);
  ASSERT_EQ(c->moe_layer.size(), 47u);
  EXPECT_FALSE(c->moe_layer[0]);
  EXPECT_TRUE(c->moe_layer[1]);
  EXPECT_TRUE(c->moe_layer[46]);
}

// Parameters from the shape formula, written out independently of SyntheticParamCount and sizing.
TEST(ModelPresetsTest, Glm47FlashDsaIsAbout30BParameters) {
  const double H = 2048, V = 154880, NH = 20, QL = 768, KL = 512, dn = 192, dr = 64, dv = 256;
  const double attention = H * QL + QL + NH * (dn + dr) * QL + H * (KL + dr) + KL + NH * (dn + dv) * KL + NH * dv * H;
  const double indexer = 32 * 128 * QL + 128 * H + 2 * 128 + 32 * H;
  const double norms = 2 * H;
  const double expert = 3 * H * 1536;
  const double moe = 64 * expert + expert + 64 * H + 64;  // routed + shared + router + correction bias
  const double dense = 3 * H * 10240;
  const double total = 2 * V * H + H + 47 * (attention + indexer + norms) + 46 * moe + dense;
  EXPECT_GT(total, 29.5e9);
  EXPECT_LT(total, 31.0e9);
  auto c = PresetConfig("glm-4.7-flash-dsa");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(static_cast<double>(SyntheticParamCount(*c)), total);
  auto s = ComputeRankSizing(*c, {.shared_experts_split_by_tp = false, .embedding_split_by_tp = false});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(static_cast<double>(s->weights().params), total);
  // The layer slice (dense + 2 MoE layers + embedding + LM head) is ~7.6 GiB of F32.
  const double slice_bytes = 4.0 * SyntheticParamCount(SliceConfig(*c, MakeLayerSlice(*c)));
  EXPECT_GT(slice_bytes / (1 << 30), 7.0);
  EXPECT_LT(slice_bytes / (1 << 30), 8.0);
}

TEST(ModelPresetsTest, ReferenceShapesOfDeepseekAndGlm5) {
  auto d = PresetConfig("deepseek-v3.2");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->arch, Architecture::kDeepseekV32);
  EXPECT_EQ(d->hidden_size, 7168);
  EXPECT_EQ(d->num_hidden_layers, 61);
  EXPECT_EQ(d->num_attention_heads, 128);
  EXPECT_EQ(d->n_routed_experts, 256);
  EXPECT_EQ(d->index_n_heads, 64);
  EXPECT_EQ(d->max_position_embeddings, 163840);
  EXPECT_FALSE(d->indexer_rope_interleave);
  EXPECT_EQ(d->rope.type, "yarn");
  auto g = PresetConfig("glm-5");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->hidden_size, 6144);
  EXPECT_EQ(g->num_hidden_layers, 78);
  EXPECT_EQ(g->num_attention_heads, 64);
  EXPECT_EQ(g->q_lora_rank, 2048);
  EXPECT_EQ(g->index_n_heads, 32);
  EXPECT_TRUE(g->indexer_rope_interleave);
  EXPECT_EQ(ListPresets().size(), 4u);
}

TEST(ModelPresetsTest, UnknownPresetListsTheValidOnes) {
  auto c = PresetConfig("glm-9");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("glm-9"));
  EXPECT_THAT(c.status().message(), HasSubstr("glm-4.7-flash-dsa, deepseek-v3.2, glm-5, tiny-dsa"));
}

TEST(ModelPresetsTest, FillNormalIsDeterministicForAnyThreadCount) {
  std::vector<float> one(1 << 20), four(1 << 20), part(1000);
  FillNormal(one, 7, 3, 0.5f, 1);
  FillNormal(four, 7, 3, 0.5f, 4);
  EXPECT_EQ(one, four);
  FillNormal(part, 7, 3, 0.5f, 2, /*offset=*/5000);
  EXPECT_TRUE(std::equal(part.begin(), part.end(), one.begin() + 5000));
  std::vector<float> other(1 << 20);
  FillNormal(other, 7, 4, 0.5f, 4);  // another stream
  EXPECT_NE(one, other);
  double sum = 0, sq = 0;
  for (float v : one) {
    sum += v;
    sq += double(v) * v;
  }
  const double n = one.size(), mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.005);  // 5 standard errors of the mean (0.5 / 1024)
  EXPECT_NEAR(sd, 0.5, 0.005);
}

TEST(ModelPresetsTest, FastModelIsTheSameWithOneAndFourThreads) {
  auto c = PresetConfig("tiny-dsa");
  ASSERT_TRUE(c.ok()) << c.status();
  auto a = BuildFastSyntheticModel(*c, {.seed = 3, .threads = 1, .plan = "FFSSFSSS"});
  auto b = BuildFastSyntheticModel(*c, {.seed = 3, .threads = 4});
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  EXPECT_EQ((*a)->weights.embed_tokens.data, (*b)->weights.embed_tokens.data);
  EXPECT_EQ((*a)->weights.lm_head.data, (*b)->weights.lm_head.data);
  EXPECT_EQ((*a)->weights.layers[7].moe.experts[5].down.data, (*b)->weights.layers[7].moe.experts[5].down.data);
  EXPECT_EQ((*a)->weights.layers[3].indexer.wq.data, (*b)->weights.layers[3].indexer.wq.data);
  EXPECT_EQ((*a)->plan.ToString(), "FFSSFSSS");
  EXPECT_EQ((*a)->weights.layers[2].q_b_proj.shape, (std::vector<int64_t>{4 * 48, 128}));
  EXPECT_FALSE((*a)->weights.layers[0].is_moe);
  EXPECT_TRUE((*a)->weights.layers[1].moe.shared.has_value());
}

}  // namespace
}  // namespace ic
