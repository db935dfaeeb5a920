#include "sdk/sizing.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "sdk/plan.h"

namespace ic {
namespace {

using ::testing::HasSubstr;

std::string DataDir() {
  const char* env = std::getenv("IC_TEST_DATA");  // binaries run away from their source tree
  return env != nullptr ? env : IC_SOURCE_DIR "/tests/data";
}

ModelConfig LoadReference(const std::string& name) {
  std::ifstream in(DataDir() + "/reference/" + name);
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<ModelConfig> c = ParseModelConfig(text.str());
  EXPECT_TRUE(c.ok()) << name << ": " << c.status();
  return c.ok() ? *c : ModelConfig{};
}

// A tiny DeepSeek-V3.2 layout whose shapes cut the 128×128 FP8 grid unevenly under tp = 2.
constexpr char kTiny[] = R"({
  "architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32",
  "vocab_size": 301, "hidden_size": 256, "intermediate_size": 384, "moe_intermediate_size": 192,
  "num_hidden_layers": 4, "first_k_dense_replace": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
  "q_lora_rank": 160, "kv_lora_rank": 96, "qk_rope_head_dim": 32, "qk_nope_head_dim": 64, "v_head_dim": 48,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
  "index_n_heads": 2, "index_head_dim": 64, "index_topk": 16, "max_position_embeddings": 512,
  "rms_norm_eps": 1e-6, "rope_theta": 10000, "tie_word_embeddings": false, "num_nextn_predict_layers": 1
})";

ModelConfig Tiny() {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(kTiny);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig{};
}

RankSizing MustSize(const ModelConfig& c, const SizingOptions& o) {
  absl::StatusOr<RankSizing> s = ComputeRankSizing(c, o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : RankSizing{};
}

TEST(SizingTest, TinyBf16ByHand) {
  const RankSizing s = MustSize(Tiny(), {.context_tokens = 1000});
  // Embedding + LM head: 2 · 301 · 256.
  EXPECT_EQ(s.embedding.params, 2 * 301 * 256);  // 154,112
  // One MLA layer: q_a 160·256 + q_a_norm 160 + q_b 4·(64+32)·160 + kv_a (96+32)·256 + kv_a_norm 96
  //   + kv_b 4·(64+48)·96 + o 256·(4·48) = 40,960 + 160 + 61,440 + 32,768 + 96 + 43,008 + 49,152 = 227,584.
  EXPECT_EQ(s.attention_per_layer.params, 227584);
  EXPECT_EQ(s.attention.params, 4 * 227584);
  // Norms: 4 layers · 2 · 256 + final 256.
  EXPECT_EQ(s.norms.params, 4 * 2 * 256 + 256);
  // Indexer: wq_b (2·64)·160 + wk 64·256 + k_norm 2·64 + weights_proj 2·256 = 20,480 + 16,384 + 128 + 512.
  EXPECT_EQ(s.indexer.params, 4 * (20480 + 16384 + 128 + 512));
  // Dense MLP (layer 0 only): 3 · 256 · 384.
  EXPECT_EQ(s.dense_mlp.params, 3 * 256 * 384);
  // Routed experts: 3 MoE layers · 8 experts · 3 · 256 · 192.
  EXPECT_EQ(s.routed_experts.params, 3 * 8 * 3 * 256 * 192);
  EXPECT_EQ(s.shared_experts.params, 3 * 3 * 256 * 192);
  // Router: 3 layers · (gate 8·256 + e_score_correction_bias 8).
  EXPECT_EQ(s.router.params, 3 * (8 * 256 + 8));
  const int64_t total = 154112 + 4 * 227584 + 2304 + 4 * 37504 + 294912 + 3538944 + 442368 + 6168;
  EXPECT_EQ(total, 5499160);
  EXPECT_EQ(s.weights().params, 5499160);
  // bf16: 2 B/param, except the 24 fp32 bias values (2 B more each).
  EXPECT_EQ(s.weight_bytes(), 2 * 5499160 + 24 * 2);
  EXPECT_EQ(s.router.bytes, 3 * (8 * 256 * 2 + 8 * 4));
  // KV: (96 + 32) · 2 B · 4 layers; index-K: 64 · 2 B · 4 Full layers.
  EXPECT_EQ(s.kv_bytes_per_token, 1024);
  EXPECT_EQ(s.index_k_bytes_per_token, 512);
  EXPECT_EQ(s.kv_cache_bytes, 1024 * 1000);
  EXPECT_EQ(s.index_k_cache_bytes, 512 * 1000);
  EXPECT_EQ(s.cache_bytes, 1536 * 1000);
  EXPECT_EQ(s.total_bytes(), 2 * 5499160 + 48 + 1536000);
  EXPECT_EQ(s.num_layers, 4);  // MTP excluded
  EXPECT_EQ(s.num_full_layers, 4);
  EXPECT_EQ(s.num_moe_layers, 3);
  EXPECT_EQ(s.experts_per_rank, 8);
}

TEST(SizingTest, TinyFp8Tp2Ep2ByHand) {
  const RankSizing s = MustSize(Tiny(), {.tp = 2, .ep = 2, .weights = WeightDType::kFP8,
                                         .index_k = IndexKDType::kFP8, .kv = KvDType::kFP8});
  // Vocab 301 split 151 / 150: the larger rank holds 151 · 256 bf16 values per tensor, two tensors.
  EXPECT_EQ(s.embedding.bytes, 2 * 151 * 256 * 2);  // 154,624
  // Attention, 2 heads per rank; fp8 = 1 B/param + 4 B per 128×128 block the shard touches:
  //   q_a [160, 256] replicated: 40,960 + 4·2·2 = 40,976;     q_a_norm 160·2 = 320
  //   q_b rows [192·r, 192·(r+1)) of 384, 160 cols: 192·160 + 4·2·2 = 30,736
  //   kv_a [128, 256] replicated: 32,768 + 4·1·2 = 32,776;    kv_a_norm 96·2 = 192
  //   kv_b rows [224, 448) on rank 1 touch blocks 1..3 (3), 96 cols (1): 224·96 + 4·3·1 = 21,516
  //   o [256, 192] cols [96, 192) on rank 1 touch 2 blocks, 256 rows 2: 256·96 + 4·2·2 = 24,592
  EXPECT_EQ(s.attention_per_layer.bytes, 40976 + 320 + 30736 + 32776 + 192 + 21516 + 24592);  // 151,108
  EXPECT_EQ(s.attention.bytes, 4 * 151108);
  EXPECT_EQ(s.norms.bytes, (4 * 2 * 256 + 256) * 2);
  // Indexer (replicated): wq_b [128, 160] 20,480 + 4·1·2; wk [64, 256] 16,384 + 4·1·2; k_norm 128·2 bf16;
  // weights_proj 512·2 bf16.
  EXPECT_EQ(s.indexer.bytes, 4 * (20488 + 16392 + 256 + 1024));  // 152,640
  // Dense MLP, inter 384 split 192 / 192; rank 1's rows [192, 384) touch blocks 1..2:
  //   gate/up 192·256 + 4·2·2 = 49,168 each, down 256·192 + 4·2·2 = 49,168.
  EXPECT_EQ(s.dense_mlp.bytes, 3 * 49168);
  // Shared expert, inter 192 split 96 / 96; rank 1's [96, 192) touches blocks 0..1: 96·256 + 4·2·2 = 24,592.
  EXPECT_EQ(s.shared_experts.bytes, 3 * 3 * 24592);
  // Routed: 8 / 2 = 4 experts per rank, each 3 · (192·256 + 4·2·2) = 147,504; 3 MoE layers.
  EXPECT_EQ(s.experts_per_rank, 4);
  EXPECT_EQ(s.routed_experts.bytes, 3 * 4 * 147504);  // 1,770,048
  // Router stays bf16 gate + fp32 bias.
  EXPECT_EQ(s.router.bytes, 3 * (8 * 256 * 2 + 8 * 4));  // 12,384
  EXPECT_EQ(s.weight_bytes(), 154624 + 604432 + 4608 + 152640 + 147504 + 1770048 + 221328 + 12384);
  EXPECT_EQ(s.weight_bytes(), 3067568);
  // KV fp8 (FlashMLA layout): 96 e4m3 + 4 B scale (1 block of 128) + 32 · 2 B RoPE = 164 B per layer.
  EXPECT_EQ(s.kv_bytes_per_token, 4 * 164);
  // index-K fp8: 64 + 4 per Full layer.
  EXPECT_EQ(s.index_k_bytes_per_token, 4 * 68);
  EXPECT_EQ(s.cache_bytes, 0);  // context_tokens = 0: per-token only
}

TEST(SizingTest, DeepseekV32ParameterCount) {
  const ModelConfig c = LoadReference("deepseek-v3.2.json");
  const RankSizing s = MustSize(c, {});
  // Per layer (hidden 7168): MLA 1536·7168 + 1536 + 128·192·1536 + 576·7168 + 512 + 128·256·512 + 7168·128·128
  //   = 187,107,328; indexer 64·128·1536 + 128·7168 + 2·128 + 64·7168 = 13,959,424; norms 2·7168.
  // MoE layer: 256 experts · 3·7168·2048 + shared 3·7168·2048 + router 256·7168 + bias 256 = 11,320,164,608.
  // Dense layer: 3·7168·18432 = 396,361,728. Embedding + head + final norm: 2·129280·7168 + 7168.
  const int64_t attn = 187107328, ix = 13959424, norms = 2 * 7168;
  const int64_t moe = 11320164608, dense = 396361728, emb = int64_t{2} * 129280 * 7168 + 7168;
  const int64_t main = 61 * (attn + ix + norms) + 3 * dense + 58 * moe + emb;
  EXPECT_EQ(main, 671877944064);
  EXPECT_EQ(s.weights().params, 671877944064);
  EXPECT_EQ(s.attention_per_layer.params, attn);
  // The "671B" headline is DeepSeek-V3's main model without the indexer: 671,026,419,200. V3.2 adds
  // 61 indexers (851,524,864 params) = 671.88B. The HF checkpoint's "685B" adds the MTP layer (one MoE
  // layer + indexer + enorm/hnorm/eh_proj/shared_head.norm = 11,624,027,648, plus its stored copies of the
  // embedding and head: 13,477,385,728 in all), which the SDK does not load: excluded here.
  EXPECT_EQ(s.weights().params - 61 * ix, 671026419200);
  EXPECT_EQ(s.indexer.params, 851524864);
  // bf16 bytes: 2 B/param + 2 more per fp32 bias value (58 layers · 256).
  EXPECT_EQ(s.weight_bytes(), 2 * 671877944064 + 2 * 58 * 256);
  // KV 61 · 576 · 2 = 70,272 B/token; index-K (bf16) 61 · 256; fp8 61 · 132.
  EXPECT_EQ(s.kv_bytes_per_token, 70272);
  EXPECT_EQ(s.index_k_bytes_per_token, 61 * 256);
  EXPECT_EQ(MustSize(c, {.index_k = IndexKDType::kFP8}).index_k_bytes_per_token, 61 * 132);
  EXPECT_EQ(MustSize(c, {.kv = KvDType::kFP8}).kv_bytes_per_token, 61 * 656);
}

TEST(SizingTest, Glm5ParameterCount) {
  const ModelConfig c = LoadReference("glm-5.json");
  const RankSizing s = MustSize(c, {});
  // MLA 2048·6144 + 2048 + 64·256·2048 + 576·6144 + 512 + 64·448·512 + 6144·64·256 = 165,022,208;
  // indexer 32·128·2048 + 128·6144 + 256 + 32·6144 = 9,371,904; MoE 257·3·6144·2048 + 256·6144 + 256;
  // dense 3·6144·12288; 78 layers, 3 dense; embedding + head 2·154880·6144 + 6144. MTP excluded: the
  // "744B" headline is this main model.
  const int64_t moe = int64_t{257} * 3 * 6144 * 2048 + 256 * 6144 + 256;
  const int64_t main = 78 * (int64_t{165022208} + 9371904 + 2 * 6144) + 3 * (int64_t{3} * 6144 * 12288) +
                       75 * moe + int64_t{2} * 154880 * 6144 + 6144;
  EXPECT_EQ(main, 743911218432);
  EXPECT_EQ(s.weights().params, 743911218432);
}

TEST(SizingTest, IndexKScalesWithFullLayers) {
  const ModelConfig c = LoadReference("deepseek-v3.2.json");
  absl::StatusOr<Plan> quarter = UniformPlan(c.num_hidden_layers, 4);  // FSSS…: ceil(61/4) = 16 Full
  ASSERT_TRUE(quarter.ok()) << quarter.status();
  const RankSizing all = MustSize(c, {.context_tokens = 200000, .index_k = IndexKDType::kFP8});
  const RankSizing q = MustSize(c, {.context_tokens = 200000, .index_k = IndexKDType::kFP8, .plan = &*quarter});
  EXPECT_EQ(q.num_full_layers, 16);
  EXPECT_EQ(q.index_k_bytes_per_token, 16 * 132);
  EXPECT_EQ(all.index_k_bytes_per_token, 61 * 132);
  EXPECT_EQ(q.index_k_cache_bytes, int64_t{16} * 132 * 200000);
  EXPECT_EQ(q.indexer.params * 61, all.indexer.params * 16);
  EXPECT_EQ(q.kv_bytes_per_token, all.kv_bytes_per_token);  // the MLA cache does not depend on the plan

  // Exactly 1/4 on a layer count divisible by 4.
  const ModelConfig t = Tiny();
  absl::StatusOr<Plan> fsss = ParsePlan("FSSS", 4);
  ASSERT_TRUE(fsss.ok());
  const RankSizing t_all = MustSize(t, {});
  const RankSizing t_q = MustSize(t, {.plan = &*fsss});
  EXPECT_EQ(t_q.index_k_bytes_per_token * 4, t_all.index_k_bytes_per_token);
  EXPECT_EQ(t_q.indexer.bytes * 4, t_all.indexer.bytes);
}

TEST(SizingTest, ExpertBytesHalveWhenEpDoubles) {
  const ModelConfig c = LoadReference("deepseek-v3.2.json");
  for (WeightDType dt : {WeightDType::kBF16, WeightDType::kFP8}) {
    int64_t prev = MustSize(c, {.ep = 1, .weights = dt}).routed_experts.bytes;
    for (int ep : {2, 4, 8, 16, 32, 64, 128, 256}) {
      const RankSizing s = MustSize(c, {.tp = 8, .ep = ep, .weights = dt});
      EXPECT_EQ(s.routed_experts.bytes * 2, prev) << "ep " << ep;
      EXPECT_EQ(s.experts_per_rank, 256 / ep);
      prev = s.routed_experts.bytes;
    }
  }
  // TP does not split routed experts; EP does not touch attention.
  EXPECT_EQ(MustSize(c, {.tp = 1, .ep = 8}).routed_experts.bytes, MustSize(c, {.tp = 8, .ep = 8}).routed_experts.bytes);
  EXPECT_EQ(MustSize(c, {.tp = 8, .ep = 1}).attention.bytes, MustSize(c, {.tp = 8, .ep = 32}).attention.bytes);
}

TEST(SizingTest, TpSplitsHeadsNotLatents) {
  const ModelConfig c = LoadReference("deepseek-v3.2.json");
  const RankSizing t1 = MustSize(c, {.tp = 1});
  const RankSizing t8 = MustSize(c, {.tp = 8});
  // Per layer: q_a (1536·7168), kv_a (576·7168) and their norms (1536 + 512) stay; the head-split part
  // (q_b + kv_b + o = 171,966,464) divides by 8.
  const int64_t replicated = 1536 * 7168 + 576 * 7168 + 1536 + 512;
  EXPECT_EQ(t8.attention_per_layer.params, replicated + (t1.attention_per_layer.params - replicated) / 8);
  EXPECT_EQ(t8.embedding.params * 8, t1.embedding.params);
  EXPECT_EQ(MustSize(c, {.tp = 8, .embedding_split_by_tp = false}).embedding.params, t1.embedding.params);
  EXPECT_EQ(t8.indexer.params, t1.indexer.params);  // replicated
  EXPECT_EQ(t8.kv_bytes_per_token, t1.kv_bytes_per_token);
  EXPECT_EQ(t8.index_k_bytes_per_token, t1.index_k_bytes_per_token);
  EXPECT_EQ(t8.shared_experts.params * 8, t1.shared_experts.params);
  EXPECT_EQ(MustSize(c, {.tp = 8, .shared_experts_split_by_tp = false}).shared_experts.params,
            t1.shared_experts.params);
}

TEST(SizingTest, ValidationErrors) {
  const ModelConfig c = LoadReference("deepseek-v3.2.json");
  auto error = [&](const SizingOptions& o) {
    absl::StatusOr<RankSizing> s = ComputeRankSizing(c, o);
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(s.status().message());
  };
  EXPECT_THAT(error({.tp = 3}), HasSubstr("num_attention_heads 128 is not divisible by tp 3"));
  EXPECT_THAT(error({.ep = 3}), HasSubstr("n_routed_experts 256 is not divisible by ep 3"));
  EXPECT_THAT(error({.tp = 0}), HasSubstr("tp 0"));
  EXPECT_THAT(error({.ep = -2}), HasSubstr("ep -2"));
  EXPECT_THAT(error({.context_tokens = -1}), HasSubstr("context_tokens must be >= 0, got -1"));
  absl::StatusOr<Plan> short_plan = ParsePlan("FSSS", 4);
  ASSERT_TRUE(short_plan.ok());
  EXPECT_THAT(error({.plan = &*short_plan}), HasSubstr("plan has 4 layers, config num_hidden_layers is 61"));
  const ModelConfig glm = LoadReference("glm-5.json");
  absl::StatusOr<RankSizing> g = ComputeRankSizing(glm, {.tp = 128});
  ASSERT_FALSE(g.ok());
  EXPECT_THAT(g.status().message(), HasSubstr("num_attention_heads 64 is not divisible by tp 128"));
  // The paper's 30B model: 20 heads (tp 4 fits, tp 8 does not), 64 experts (ep 32 fits, ep 128 does not).
  const ModelConfig flash = LoadReference("glm-4.7-flash-dsa.json");
  EXPECT_TRUE(ComputeRankSizing(flash, {.tp = 4, .ep = 32}).ok());
  absl::StatusOr<RankSizing> f8 = ComputeRankSizing(flash, {.tp = 8});
  ASSERT_FALSE(f8.ok());
  EXPECT_THAT(f8.status().message(), HasSubstr("num_attention_heads 20 is not divisible by tp 8"));
  absl::StatusOr<RankSizing> f128 = ComputeRankSizing(flash, {.ep = 128});
  ASSERT_FALSE(f128.ok());
  EXPECT_THAT(f128.status().message(), HasSubstr("n_routed_experts 64 is not divisible by ep 128"));
}

// The issue-5 table: EP 8/16/32 × TP 1/2/4/8 (every TP divides 128 and 64 heads), FP8 weights as shipped,
// bf16 MLA cache, fp8 index-K, 200K tokens per rank; all-Full and 1/4 uniform.
TEST(SizingTest, PrintsReferenceTables) {
  std::vector<std::pair<int, int>> layouts;
  for (int ep : {8, 16, 32}) {
    for (int tp : {1, 2, 4, 8}) layouts.push_back({tp, ep});
  }
  layouts.push_back({3, 8});  // a rejected layout gets a row with its error
  for (const char* name : {"deepseek-v3.2.json", "glm-5.json"}) {
    const ModelConfig c = LoadReference(name);
    absl::StatusOr<Plan> quarter = UniformPlan(c.num_hidden_layers, 4);
    ASSERT_TRUE(quarter.ok());
    for (WeightDType dt : {WeightDType::kFP8, WeightDType::kBF16}) {
      const Plan* quarter_plan = &*quarter;
      for (const Plan* plan : {static_cast<const Plan*>(nullptr), quarter_plan}) {
        const std::string table = FormatSizingTable(
            c, layouts, {.context_tokens = 200000, .weights = dt, .index_k = IndexKDType::kFP8, .plan = plan});
        std::cout << name << "\n" << table << "\n";
        EXPECT_THAT(table, HasSubstr("skipped: sizing: num_attention_heads"));
        EXPECT_THAT(table, HasSubstr("weights GiB/rank"));
      }
    }
  }
}

}  // namespace
}  // namespace ic
