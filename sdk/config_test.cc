#include "sdk/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace ic {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

// Copies of shared/golden and shared/reference live in tests/data (see tests/data/golden/SOURCE.md).
std::string SharedDir() {
  const char* env = std::getenv("IC_TEST_DATA");  // binaries run away from their source tree
  return env != nullptr ? env : IC_SOURCE_DIR "/tests/data";
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

ModelConfig MustParse(const std::string& text) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(text);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig{};
}

void ExpectRoundTrip(const ModelConfig& c) {
  const std::string text = ModelConfigToJson(c);
  absl::StatusOr<ModelConfig> back = ParseModelConfig(text);
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << text;
  EXPECT_TRUE(*back == c) << text;
  EXPECT_EQ(ModelConfigToJson(*back), text);
}

TEST(ConfigTest, GoldenDsv32Tiny) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig(SharedDir() + "/golden/dsv32-tiny");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Architecture::kDeepseekV32);
  EXPECT_EQ(c->model_type, "deepseek_v32");
  EXPECT_EQ(c->vocab_size, 320);
  EXPECT_EQ(c->hidden_size, 128);
  EXPECT_EQ(c->num_hidden_layers, 4);
  EXPECT_EQ(c->intermediate_size, 256);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->max_position_embeddings, 512);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 0);
  EXPECT_EQ(c->eos_token_id, 1);
  EXPECT_TRUE(c->mla);
  EXPECT_EQ(c->num_attention_heads, 4);
  EXPECT_EQ(c->head_dim, 0);  // HF's head_dim (= qk_rope_head_dim) is ignored for MLA
  EXPECT_EQ(c->q_lora_rank, 48);
  EXPECT_EQ(c->kv_lora_rank, 32);
  EXPECT_EQ(c->qk_nope_head_dim, 16);
  EXPECT_EQ(c->qk_rope_head_dim, 8);
  EXPECT_EQ(c->v_head_dim, 16);
  EXPECT_EQ(c->qk_head_dim(), 24);
  EXPECT_EQ(c->attn_v_dim(), 16);
  EXPECT_EQ(c->rope.type, "yarn");
  EXPECT_DOUBLE_EQ(c->rope.theta, 10000.0);
  EXPECT_DOUBLE_EQ(c->rope.factor, 4.0);
  EXPECT_DOUBLE_EQ(c->rope.original_max_position_embeddings, 128);
  EXPECT_DOUBLE_EQ(c->rope.beta_fast, 32);
  EXPECT_DOUBLE_EQ(c->rope.beta_slow, 1);
  EXPECT_DOUBLE_EQ(c->rope.mscale, 1.0);
  EXPECT_DOUBLE_EQ(c->rope.mscale_all_dim, 1.0);
  EXPECT_FALSE(c->rope.attention_factor.has_value());
  EXPECT_TRUE(c->has_indexer);
  EXPECT_EQ(c->index_n_heads, 16);
  EXPECT_EQ(c->index_head_dim, 16);
  EXPECT_EQ(c->index_topk, 16);
  EXPECT_EQ(c->index_rope_head_dim, 8);
  EXPECT_FALSE(c->indexer_rope_interleave);  // DeepSeek-V3.2: NeoX
  EXPECT_EQ(c->n_routed_experts, 8);
  EXPECT_EQ(c->num_experts_per_tok, 2);
  EXPECT_EQ(c->n_shared_experts, 1);
  EXPECT_EQ(c->moe_intermediate_size, 32);
  EXPECT_EQ(c->n_group, 2);
  EXPECT_EQ(c->topk_group, 1);
  EXPECT_EQ(c->first_k_dense_replace, 1);
  EXPECT_DOUBLE_EQ(c->routed_scaling_factor, 2.5);
  EXPECT_TRUE(c->norm_topk_prob);
  EXPECT_EQ(c->moe_layer, (std::vector<bool>{false, true, true, true}));
  EXPECT_FALSE(c->indexer_types.has_value());
  EXPECT_EQ(c->num_nextn_predict_layers, 0);
  // YaRN MLA scale: 24^-½ · (0.1 · 1 · ln 4 + 1)².
  EXPECT_FLOAT_EQ(AttentionSoftmaxScale(*c), 0.26464225796422675f);
  ExpectRoundTrip(*c);
}

TEST(ConfigTest, GoldenGlm5TinyIndexCache) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig(SharedDir() + "/golden/glm5-tiny-indexcache");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Architecture::kGlmMoeDsa);
  EXPECT_EQ(c->num_hidden_layers, 6);
  EXPECT_TRUE(c->mla);
  EXPECT_TRUE(c->indexer_rope_interleave);  // GLM default
  EXPECT_EQ(c->index_rope_head_dim, 8);
  EXPECT_EQ(c->rope.type, "default");
  EXPECT_DOUBLE_EQ(c->rope.theta, 10000.0);
  ASSERT_TRUE(c->indexer_types.has_value());
  EXPECT_EQ(*c->indexer_types, (std::vector<std::string>{"full", "full", "shared", "shared", "full", "shared"}));
  EXPECT_EQ(c->moe_layer, (std::vector<bool>{false, true, true, true, true, true}));
  EXPECT_FLOAT_EQ(AttentionSoftmaxScale(*c), static_cast<float>(1.0 / std::sqrt(24.0)));
  ExpectRoundTrip(*c);
}

TEST(ConfigTest, GoldenLlamaTinyDense) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig(SharedDir() + "/golden/llama-tiny-dense");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Architecture::kLlama);
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_FALSE(c->mla);
  EXPECT_FALSE(c->has_indexer);
  EXPECT_EQ(c->hidden_size, 96);
  EXPECT_EQ(c->num_attention_heads, 6);
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->qk_head_dim(), 16);
  EXPECT_EQ(c->intermediate_size, 192);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope.theta, 100000.0);
  EXPECT_EQ(c->rope.type, "default");
  EXPECT_EQ(c->moe_layer, std::vector<bool>(3, false));
  EXPECT_FLOAT_EQ(AttentionSoftmaxScale(*c), 0.25f);
  ExpectRoundTrip(*c);
}

TEST(ConfigTest, ReferenceDeepseekV32) {
  ModelConfig c = MustParse(ReadText(SharedDir() + "/reference/deepseek-v3.2.json"));
  EXPECT_EQ(c.arch, Architecture::kDeepseekV32);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_EQ(c.index_n_heads, 64);
  EXPECT_EQ(c.index_head_dim, 128);
  EXPECT_EQ(c.index_topk, 2048);
  EXPECT_EQ(c.index_rope_head_dim, 64);
  EXPECT_FALSE(c.indexer_rope_interleave);
  // Legacy `rope_scaling` with "type" and top-level rope_theta.
  EXPECT_EQ(c.rope.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000);
  EXPECT_DOUBLE_EQ(c.rope.factor, 40);
  EXPECT_DOUBLE_EQ(c.rope.original_max_position_embeddings, 4096);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.first_k_dense_replace, 3);
  EXPECT_EQ(std::count(c.moe_layer.begin(), c.moe_layer.end(), true), 58);
  EXPECT_FALSE(c.moe_layer[2]);
  EXPECT_TRUE(c.moe_layer[3]);
  EXPECT_FLOAT_EQ(AttentionSoftmaxScale(c), 0.1352337788608801f);
  ExpectRoundTrip(c);
}

TEST(ConfigTest, ReferenceGlm5) {
  ModelConfig c = MustParse(ReadText(SharedDir() + "/reference/glm-5.json"));
  EXPECT_EQ(c.arch, Architecture::kGlmMoeDsa);
  EXPECT_EQ(c.num_hidden_layers, 78);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.qk_head_dim(), 256);
  EXPECT_EQ(c.v_head_dim, 256);
  EXPECT_TRUE(c.indexer_rope_interleave);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);  // absent: HF default_theta
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.n_group, 1);
  EXPECT_EQ(c.moe_layer.size(), 78u);
  ExpectRoundTrip(c);
}

TEST(ConfigTest, ReferenceGlm47FlashDsa) {
  ModelConfig c = MustParse(ReadText(SharedDir() + "/reference/glm-4.7-flash-dsa.json"));
  EXPECT_EQ(c.arch, Architecture::kGlmMoeDsa);
  EXPECT_EQ(c.num_hidden_layers, 47);
  EXPECT_EQ(c.num_nextn_predict_layers, 0);
  EXPECT_EQ(c.n_routed_experts, 64);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 1.8);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1000000);
  EXPECT_EQ(c.index_n_heads, 32);
  EXPECT_FALSE(c.moe_layer[0]);
  EXPECT_TRUE(c.moe_layer[1]);
  ExpectRoundTrip(c);
}

// A small Llama-DSA config (our format, DESIGN.md §3).
json LlamaDsaJson() {
  return json::parse(R"({
    "architectures": ["LlamaDsaForCausalLM"], "model_type": "llama_dsa",
    "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
    "rope_theta": 10000.0, "tie_word_embeddings": true,
    "index_n_heads": 4, "index_head_dim": 32, "index_topk": 8, "index_topk_pattern": "FSFS"
  })");
}

TEST(ConfigTest, LlamaDsaDefaultsAndRoundTrip) {
  ModelConfig c = MustParse(LlamaDsaJson().dump());
  EXPECT_EQ(c.arch, Architecture::kLlamaDsa);
  EXPECT_EQ(c.model_type, "llama_dsa");
  EXPECT_FALSE(c.mla);
  EXPECT_TRUE(c.has_indexer);
  EXPECT_EQ(c.head_dim, 16);             // hidden / heads
  EXPECT_EQ(c.index_rope_head_dim, 16);  // index_head_dim / 2
  EXPECT_FALSE(c.indexer_rope_interleave);
  EXPECT_EQ(c.index_topk_pattern, "FSFS");
  EXPECT_TRUE(c.tie_word_embeddings);
  ExpectRoundTrip(c);

  json j = json::parse(ModelConfigToJson(c));
  EXPECT_EQ(j["model_type"], "llama_dsa");
  EXPECT_EQ(j["architectures"][0], "LlamaDsaForCausalLM");
  EXPECT_EQ(j["index_rope_head_dim"], 16);

  // Explicit values and an absent num_key_value_heads.
  j = LlamaDsaJson();
  j["index_rope_head_dim"] = 8;
  j.erase("num_key_value_heads");
  j.erase("tie_word_embeddings");
  j["index_topk_freq"] = 2;
  j["index_skip_topk_offset"] = 1;
  c = MustParse(j.dump());
  EXPECT_EQ(c.index_rope_head_dim, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_FALSE(c.tie_word_embeddings);  // HF LlamaConfig default
  EXPECT_EQ(c.index_topk_freq, 2);
  EXPECT_EQ(c.index_skip_topk_offset, 1);
  ExpectRoundTrip(c);
}

TEST(ConfigTest, RopeVariantsRoundTrip) {
  json j = LlamaDsaJson();
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 64}};
  ModelConfig c = MustParse(j.dump());
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope.original_max_position_embeddings, 64);
  ExpectRoundTrip(c);

  j = LlamaDsaJson();
  j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 500.0}};
  c = MustParse(j.dump());
  EXPECT_EQ(c.rope.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope.theta, 500.0);  // the dict's theta wins over the top-level key
  ExpectRoundTrip(c);

  j = LlamaDsaJson();
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"attention_factor", 1.25}, {"truncate", false}};
  c = MustParse(j.dump());
  EXPECT_DOUBLE_EQ(c.rope.original_max_position_embeddings, 256);  // defaults to max_position_embeddings
  EXPECT_EQ(c.rope.attention_factor, 1.25);
  EXPECT_FALSE(c.rope.truncate);
  ExpectRoundTrip(c);

  // YaRN without a factor: max_position_embeddings / original_max_position_embeddings.
  j = LlamaDsaJson();
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"original_max_position_embeddings", 64}};
  c = MustParse(j.dump());
  EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);
}

TEST(ConfigTest, IndexerRopeInterleaveOverride) {
  json j = json::parse(ReadText(SharedDir() + "/golden/glm5-tiny-indexcache/config.json"));
  j["indexer_rope_interleave"] = false;
  EXPECT_FALSE(MustParse(j.dump()).indexer_rope_interleave);
  j = json::parse(ReadText(SharedDir() + "/golden/dsv32-tiny/config.json"));
  j["indexer_rope_interleave"] = true;
  EXPECT_TRUE(MustParse(j.dump()).indexer_rope_interleave);
}

TEST(ConfigTest, ExpertCountAliases) {
  for (const char* key : {"num_local_experts", "num_experts"}) {
    json j = json::parse(ReadText(SharedDir() + "/golden/dsv32-tiny/config.json"));
    j.erase("n_routed_experts");
    j[key] = 8;
    EXPECT_EQ(MustParse(j.dump()).n_routed_experts, 8) << key;
  }
  json j = json::parse(ReadText(SharedDir() + "/golden/dsv32-tiny/config.json"));
  j.erase("mlp_layer_types");  // first_k_dense_replace = 1
  EXPECT_EQ(MustParse(j.dump()).moe_layer, (std::vector<bool>{false, true, true, true}));
}

TEST(ConfigTest, ToJsonOfACodeBuiltConfig) {
  // A config filled in code (synthetic model, distillation) may leave derived fields empty.
  ModelConfig c = MustParse(ReadText(SharedDir() + "/golden/dsv32-tiny/config.json"));
  c.moe_layer.clear();
  c.rope.original_max_position_embeddings = 0;
  ModelConfig back = MustParse(ModelConfigToJson(c));
  EXPECT_EQ(back.moe_layer, (std::vector<bool>{false, true, true, true}));  // from first_k_dense_replace = 1
  EXPECT_DOUBLE_EQ(back.rope.original_max_position_embeddings, 512);        // max_position_embeddings
}

TEST(ConfigTest, MalformedJson) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig("{\"architectures\": [\"LlamaForCausalLM\"],");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("malformed JSON"));
  EXPECT_THAT(c.status().message(), HasSubstr("parse error"));  // the parser's own message
  EXPECT_FALSE(ParseModelConfig("[1, 2]").ok());
  EXPECT_FALSE(ParseModelConfig("").ok());
}

TEST(ConfigTest, LoadMissingIsNotFound) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig("/nonexistent/dir");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

struct BadCase {
  std::string base;  // "dsv32" or "llama_dsa"
  std::string key;   // a JSON pointer into the config
  json value;        // null with erase = true: remove the key
  bool erase;
  std::string expect;  // substring of the error
};

TEST(ConfigTest, BadValuesAreRejectedWithTheirName) {
  const json dsv32 = json::parse(ReadText(SharedDir() + "/golden/dsv32-tiny/config.json"));
  const std::vector<BadCase> cases = {
      {"dsv32", "/architectures", json::array({"MistralForCausalLM"}), false,
       "\"MistralForCausalLM\" is not supported"},
      {"dsv32", "/architectures", json::array(), false, "architectures"},
      {"dsv32", "/architectures", nullptr, true, "missing required key \"architectures\""},
      {"dsv32", "/hidden_size", -4, false, "hidden_size must be positive, got -4"},
      {"dsv32", "/hidden_size", "128", false, "hidden_size is \"128\"; expected an integer"},
      {"dsv32", "/hidden_size", 12.5, false, "hidden_size is 12.5"},
      {"dsv32", "/vocab_size", nullptr, true, "missing required key \"vocab_size\""},
      {"dsv32", "/vocab_size", 0, false, "vocab_size must be positive, got 0"},
      {"dsv32", "/num_hidden_layers", 0, false, "num_hidden_layers must be positive"},
      {"dsv32", "/num_attention_heads", 0, false, "num_attention_heads must be positive"},
      {"dsv32", "/num_key_value_heads", 3, false, "num_attention_heads 4 is not divisible by num_key_value_heads 3"},
      {"dsv32", "/rms_norm_eps", 0, false, "rms_norm_eps must be positive"},
      {"dsv32", "/tie_word_embeddings", "no", false, "tie_word_embeddings is \"no\"; expected true or false"},
      {"dsv32", "/hidden_act", "gelu", false, "hidden_act \"gelu\" is not supported"},
      {"dsv32", "/q_lora_rank", nullptr, false, "q_lora_rank is null"},
      {"dsv32", "/kv_lora_rank", 0, false, "kv_lora_rank must be positive"},
      {"dsv32", "/qk_rope_head_dim", 7, false, "qk_rope_head_dim must be even"},
      {"dsv32", "/qk_rope_head_dim", 32, false, "index_rope_head_dim 32 must be even and at most index_head_dim 16"},
      {"dsv32", "/v_head_dim", nullptr, true, "missing required key \"v_head_dim\""},
      {"dsv32", "/index_topk", 0, false, "index_topk must be positive, got 0"},
      {"dsv32", "/index_n_heads", -1, false, "index_n_heads must be positive"},
      {"dsv32", "/index_head_dim", nullptr, true, "missing required key \"index_head_dim\""},
      {"dsv32", "/n_routed_experts", nullptr, true, "missing required key \"n_routed_experts\""},
      {"dsv32", "/n_routed_experts", 7, false, "n_routed_experts 7 is not divisible by n_group 2"},
      {"dsv32", "/n_group", 0, false, "n_group must be positive"},
      {"dsv32", "/topk_group", 3, false, "topk_group 3 exceeds n_group 2"},
      {"dsv32", "/num_experts_per_tok", 9, false, "num_experts_per_tok 9 exceeds n_routed_experts 8"},
      {"dsv32", "/num_experts_per_tok", 5, false, "num_experts_per_tok 5 exceeds the 4 experts in topk_group 1"},
      {"dsv32", "/moe_intermediate_size", 0, false, "moe_intermediate_size must be positive"},
      {"dsv32", "/mlp_layer_types", json::array({"dense", "sparse"}), false, "mlp_layer_types has 2 entries"},
      {"dsv32", "/mlp_layer_types/2", "moe", false, "mlp_layer_types[2] is \"moe\""},
      {"dsv32", "/first_k_dense_replace", -1, false, "first_k_dense_replace must be non-negative"},
      {"dsv32", "/indexer_rope_interleave", 1, false, "indexer_rope_interleave is 1; expected true or false"},
      {"dsv32", "/indexer_types", json::array({"full", 3}), false, "indexer_types[1] is 3"},
      {"dsv32", "/index_topk_freq", "4", false, "index_topk_freq is \"4\""},
      {"dsv32", "/rope_parameters/rope_type", "dynamic", false, "rope_type \"dynamic\" is not supported"},
      {"dsv32", "/rope_parameters/factor", 0, false, "rope_parameters.factor must be positive"},
      {"dsv32", "/rope_parameters/rope_theta", -1, false, "rope_theta must be positive"},
      {"dsv32", "/rope_parameters/original_max_position_embeddings", 0, false,
       "original_max_position_embeddings must be positive"},
      {"dsv32", "/rope_parameters", "yarn", false, "rope_parameters is \"yarn\"; expected an object"},
      {"dsv32", "/max_position_embeddings", 0, false, "max_position_embeddings must be positive"},
      {"llama_dsa", "/head_dim", 0, false, "head_dim must be positive"},
      {"llama_dsa", "/hidden_size", 66, false, "hidden_size 66 is not divisible by num_attention_heads 4"},
      {"llama_dsa", "/intermediate_size", nullptr, true, "missing required key \"intermediate_size\""},
      {"llama_dsa", "/index_rope_head_dim", 48, false, "index_rope_head_dim 48 must be even and at most"},
      {"llama_dsa", "/index_rope_head_dim", 5, false, "index_rope_head_dim 5 must be even"},
      {"llama_dsa", "/index_topk", -2, false, "index_topk must be positive, got -2"},
      {"llama_dsa", "/rope_scaling", json{{"type", "llama3"}, {"factor", 8}}, false, "low_freq_factor"},
      {"llama_dsa", "/rope_scaling", json{{"type", "linear"}}, false, "missing required key \"rope_scaling.factor\""},
      {"llama_dsa", "/partial_rotary_factor", 0.5, false, "partial_rotary_factor 0.5 is not supported"},
  };
  for (const BadCase& bc : cases) {
    json j = bc.base == "dsv32" ? dsv32 : LlamaDsaJson();
    const json::json_pointer ptr(bc.key);
    if (bc.erase) {
      j.at(ptr.parent_pointer()).erase(ptr.back());
    } else {
      j[ptr] = bc.value;
    }
    absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
    ASSERT_FALSE(c.ok()) << bc.base << " " << bc.key << " = " << bc.value.dump();
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << bc.key;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(bc.expect)) << bc.key << " = " << bc.value.dump();
  }
}

TEST(ConfigTest, UnknownArchitectureListsTheSupportedOnes) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(R"({"architectures": ["Qwen2ForCausalLM"]})");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("supported: DeepseekV32ForCausalLM, GlmMoeDsaForCausalLM, LlamaDsaForCausalLM, "
                        "LlamaForCausalLM"));
}

// Independent double-precision re-derivation of HF's formulas (the float32 code under test must agree
// to float rounding).
std::vector<double> YarnReference(const RopeConfig& r, int dim) {
  auto correction_dim = [&](double rot) {
    return dim * std::log(r.original_max_position_embeddings / (rot * 2 * M_PI)) / (2 * std::log(r.theta));
  };
  double low = std::max(std::floor(correction_dim(r.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(r.beta_slow)), dim - 1.0);
  if (low == high) high += 0.001;
  std::vector<double> out;
  for (int i = 0; i < dim / 2; ++i) {
    const double p = std::pow(r.theta, 2.0 * i / dim);
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    out.push_back(1 / (r.factor * p) * ramp + 1 / p * (1 - ramp));
  }
  return out;
}

void ExpectNear(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 4e-7 * want[i]) << "inv_freq[" << i << "]";
  }
}

TEST(RopeTest, DefaultMatchesHand) {
  RopeConfig r;
  r.theta = 10000;
  RopeTables t = ComputeRope(r, 8, 512);
  ExpectNear(t.inv_freq, {1.0, 0.1, 0.01, 0.001});
  EXPECT_EQ(t.attention_scaling, 1.0f);
  // Exactly what torch computes in float32: 1 / powf(10000, 2i/8).
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(t.inv_freq[i], 1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / 8.0f));
  }
}

TEST(RopeTest, YarnGoldenDsv32Tiny) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig(SharedDir() + "/golden/dsv32-tiny");
  ASSERT_TRUE(c.ok()) << c.status();
  RopeTables t = ComputeRope(c->rope, c->qk_rope_head_dim, c->max_position_embeddings);
  // Hand values: low = 0, high = 2; ramp 0, 0.5, 1, 1 over the 4 frequencies.
  ExpectNear(t.inv_freq, {1.0, 0.0625, 0.0025, 0.00025});
  ExpectNear(t.inv_freq, YarnReference(c->rope, 8));
  EXPECT_FLOAT_EQ(t.attention_scaling, 1.0f);  // mscale == mscale_all_dim
}

TEST(RopeTest, YarnDeepseekV32Reference) {
  ModelConfig c = MustParse(ReadText(SharedDir() + "/reference/deepseek-v3.2.json"));
  RopeTables t = ComputeRope(c.rope, c.qk_rope_head_dim, c.max_position_embeddings);
  ASSERT_EQ(t.inv_freq.size(), 32u);
  ExpectNear(t.inv_freq, YarnReference(c.rope, 64));
  // python3: low, high = 10, 23 (truncated correction range).
  EXPECT_NEAR(t.inv_freq[10], 0.056234132519034905, 1e-7 * 0.0562);
  EXPECT_NEAR(t.inv_freq[15], 0.008334508951020777, 1e-6 * 0.00833);
  EXPECT_NEAR(t.inv_freq[20], 0.0007905694150420945, 1e-6 * 0.00079);
  EXPECT_NEAR(t.inv_freq[31], 3.33380358040831e-06, 1e-6 * 3.33e-6);
  EXPECT_FLOAT_EQ(t.attention_scaling, 1.0f);
}

TEST(RopeTest, YarnAttentionFactor) {
  RopeConfig r;
  r.type = "yarn";
  r.factor = 4;
  r.original_max_position_embeddings = 128;
  // Only factor: get_mscale(4) = 0.1 ln 4 + 1.
  EXPECT_FLOAT_EQ(ComputeRope(r, 8, 512).attention_scaling, static_cast<float>(0.1 * std::log(4.0) + 1));
  // mscale and mscale_all_dim both set: their ratio.
  r.mscale = 0.707;
  r.mscale_all_dim = 1.0;
  EXPECT_FLOAT_EQ(ComputeRope(r, 8, 512).attention_scaling,
                  static_cast<float>((0.0707 * std::log(4.0) + 1) / (0.1 * std::log(4.0) + 1)));
  // Only one of them set: factor alone.
  r.mscale_all_dim = 0;
  EXPECT_FLOAT_EQ(ComputeRope(r, 8, 512).attention_scaling, static_cast<float>(0.1 * std::log(4.0) + 1));
  r.attention_factor = 0.5;
  EXPECT_FLOAT_EQ(ComputeRope(r, 8, 512).attention_scaling, 0.5f);
  // No truncation: the fractional correction range (low 0.74…, high 2.62… for dim 8).
  RopeConfig nt = r;
  nt.truncate = false;
  RopeTables t = ComputeRope(nt, 8, 512);
  const double low = 8 * std::log(128 / (32 * 2 * M_PI)) / (2 * std::log(10000.0));
  const double high = 8 * std::log(128 / (1 * 2 * M_PI)) / (2 * std::log(10000.0));
  for (int i = 0; i < 4; ++i) {
    const double p = std::pow(10000.0, 2.0 * i / 8);
    const double ramp = std::clamp((i - std::max(low, 0.0)) / (high - std::max(low, 0.0)), 0.0, 1.0);
    EXPECT_NEAR(t.inv_freq[i], 1 / (4 * p) * ramp + 1 / p * (1 - ramp), 4e-7 / p) << i;
  }
}

TEST(RopeTest, LinearAndLlama3) {
  RopeConfig r;
  r.type = "linear";
  r.factor = 2;
  ExpectNear(ComputeRope(r, 8, 512).inv_freq, {0.5, 0.05, 0.005, 0.0005});

  RopeConfig l3;
  l3.type = "llama3";
  l3.theta = 500000;
  l3.factor = 8;
  l3.low_freq_factor = 1;
  l3.high_freq_factor = 4;
  l3.original_max_position_embeddings = 8192;
  RopeTables t = ComputeRope(l3, 64, 131072);
  std::vector<double> want;
  for (int i = 0; i < 32; ++i) {
    const double f = 1 / std::pow(500000.0, 2.0 * i / 64);
    const double w = 2 * M_PI / f;
    if (w < 8192 / 4.0) {
      want.push_back(f);
    } else if (w > 8192 / 1.0) {
      want.push_back(f / 8);
    } else {
      const double s = (8192 / w - 1) / 3;
      want.push_back((1 - s) * f / 8 + s * f);
    }
  }
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(t.inv_freq[i], want[i], 2e-6 * want[i]) << i;
  // python3 values at i = 0, 8, 16, 24.
  EXPECT_NEAR(t.inv_freq[8], 0.03760603093086393, 1e-6 * 0.0376);
  EXPECT_NEAR(t.inv_freq[16], 0.0005248461609929547, 1e-5 * 0.000525);
  EXPECT_NEAR(t.inv_freq[24], 6.647869871181236e-06, 1e-6 * 6.65e-6);
}

// inv_freq from HF transformers 5.17.0 (torch 2.11.0, CPU, AVX512), printed with float.hex() on
// 2026-11-29: ROPE_INIT_FUNCTIONS[type](LlamaConfig(head_dim=dim, rope_parameters=...)). Our float32
// step-by-step evaluation matches bit for bit.
TEST(RopeTest, MatchesHfBitForBit) {
  RopeConfig yarn;
  yarn.type = "yarn";
  yarn.factor = 40;
  yarn.original_max_position_embeddings = 4096;
  yarn.mscale = 1;
  yarn.mscale_all_dim = 1;
  const std::vector<float> yarn_hf = {
      0x1.000000p+0f,  0x1.7ff222p-1f,  0x1.1feb34p-1f,  0x1.afd136p-2f,  0x1.43d136p-2f,  0x1.e5a846p-3f,
      0x1.6c310ep-3f,  0x1.111aeep-3f,  0x1.99999ap-4f,  0x1.33281ap-4f,  0x1.ccab84p-5f,  0x1.3f8b74p-5f,
      0x1.b86436p-6f,  0x1.2d1b86p-6f,  0x1.97e506p-7f,  0x1.111aeep-7f,  0x1.6872b2p-8f,  0x1.d2e0ccp-9f,
      0x1.26d42cp-9f,  0x1.67459ap-10f, 0x1.9e7c6ep-11f, 0x1.b32624p-12f, 0x1.74eea6p-13f, 0x1.17a8e2p-15f,
      0x1.a36e2ep-16f, 0x1.3a8746p-16f, 0x1.d7b9e0p-17f, 0x1.61bea2p-17f, 0x1.094566p-17f, 0x1.8dd9bap-18f,
      0x1.2a5884p-18f, 0x1.bf749ep-19f};
  EXPECT_EQ(ComputeRope(yarn, 64, 163840).inv_freq, yarn_hf);

  RopeConfig notrunc;
  notrunc.type = "yarn";
  notrunc.factor = 4;
  notrunc.original_max_position_embeddings = 2048;
  notrunc.mscale = 0.707;
  notrunc.mscale_all_dim = 1;
  notrunc.truncate = false;
  const std::vector<float> notrunc_hf = {
      0x1.000000p+0f,  0x1.7ff222p-1f,  0x1.1feb34p-1f,  0x1.afd136p-2f,  0x1.43d136p-2f,  0x1.e5a846p-3f,
      0x1.6c310ep-3f,  0x1.111aeep-3f,  0x1.99999ap-4f,  0x1.213fdep-4f,  0x1.951ea2p-5f,  0x1.1a47aap-5f,
      0x1.8716dcp-6f,  0x1.0d1366p-6f,  0x1.6f4320p-7f,  0x1.f061a4p-8f,  0x1.4b69e8p-8f,  0x1.b3d44cp-9f,
      0x1.18ea9cp-9f,  0x1.6075fep-10f, 0x1.a95990p-11f, 0x1.36d21ap-11f, 0x1.d22a50p-12f, 0x1.5d931cp-12f,
      0x1.0624dep-12f, 0x1.892918p-13f, 0x1.26d42cp-13f, 0x1.ba2e4ap-14f, 0x1.4b96c0p-14f, 0x1.f1502ap-15f,
      0x1.74eea6p-15f, 0x1.17a8e4p-15f};
  RopeTables t = ComputeRope(notrunc, 64, 8192);
  EXPECT_EQ(t.inv_freq, notrunc_hf);
  EXPECT_FLOAT_EQ(t.attention_scaling, 0x1.edbc41e43a629p-1f);

  RopeConfig l3;
  l3.type = "llama3";
  l3.theta = 500000;
  l3.factor = 8;
  l3.low_freq_factor = 1;
  l3.high_freq_factor = 4;
  l3.original_max_position_embeddings = 8192;
  const std::vector<float> l3_hf = {
      0x1.000000p+0f,  0x1.a11582p-1f,  0x1.53c38cp-1f,  0x1.14c708p-1f,  0x1.c2ef78p-2f,  0x1.6f56fap-2f,
      0x1.2b3dc6p-2f,  0x1.e788c2p-3f,  0x1.8d2760p-3f,  0x1.438740p-3f,  0x1.078d40p-3f,  0x1.ad6338p-4f,
      0x1.5dc95ap-4f,  0x1.1cf130p-4f,  0x1.d03ccep-5f,  0x1.7a2d08p-5f,  0x1.341190p-5f,  0x1.f5ea7ep-6f,
      0x1.98de92p-6f,  0x1.4d1272p-6f,  0x1.0f5386p-6f,  0x1.ba0dd8p-7f,  0x1.681adap-7f,  0x1.2558fep-7f,
      0x1.ddee9ep-8f,  0x1.8554ecp-8f,  0x1.3d2804p-8f,  0x1.025c6ap-8f,  0x1.a4ee40p-9f,  0x1.1bfa0cp-9f,
      0x1.67a23ap-10f, 0x1.c12f3cp-11f, 0x1.132ba4p-11f, 0x1.47e210p-12f, 0x1.765ba4p-13f, 0x1.90d10cp-14f,
      0x1.46831ap-14f, 0x1.09fb7ep-14f, 0x1.b15902p-15f, 0x1.610332p-15f, 0x1.1f91f0p-15f, 0x1.d484dep-16f,
      0x1.7da9e8p-16f, 0x1.36e8eap-16f, 0x1.fa8b86p-17f, 0x1.9ca3eap-17f, 0x1.5024d6p-17f, 0x1.11d41ep-17f,
      0x1.be2188p-18f, 0x1.6b6d0ep-18f, 0x1.280d96p-18f, 0x1.e25700p-19f, 0x1.88ec20p-19f, 0x1.4014d2p-19f,
      0x1.04be68p-19f, 0x1.a8d010p-20f, 0x1.5a0f4ep-20f, 0x1.19e800p-20f, 0x1.cb4a9ap-21f, 0x1.76258ep-21f,
      0x1.30c94ep-21f, 0x1.f09184p-22f, 0x1.948360p-22f, 0x1.4985fep-22f};  // all 64
  EXPECT_EQ(ComputeRope(l3, 128, 131072).inv_freq, l3_hf);

  RopeConfig d;
  d.theta = 100000;
  const std::vector<float> default_hf = {0x1.000000p+0f, 0x1.e5a846p-3f,  0x1.ccab84p-5f,  0x1.b4f7e4p-7f,
                                         0x1.9e7c70p-9f, 0x1.892918p-11f, 0x1.74eea6p-13f, 0x1.61bea4p-15f};
  EXPECT_EQ(ComputeRope(d, 16, 512).inv_freq, default_hf);
}

TEST(RopeTest, SoftmaxScaleOnlyForMlaWithMscaleAllDim) {
  ModelConfig c = MustParse(ReadText(SharedDir() + "/golden/dsv32-tiny/config.json"));
  c.rope.mscale_all_dim = 0;
  EXPECT_FLOAT_EQ(AttentionSoftmaxScale(c), static_cast<float>(1 / std::sqrt(24.0)));
  c.rope.mscale_all_dim = 0.5;
  const double m = 0.05 * std::log(4.0) + 1;
  EXPECT_FLOAT_EQ(AttentionSoftmaxScale(c), static_cast<float>(m * m / std::sqrt(24.0)));
  c.rope.type = "default";
  EXPECT_FLOAT_EQ(AttentionSoftmaxScale(c), static_cast<float>(1 / std::sqrt(24.0)));
}

}  // namespace
}  // namespace ic
