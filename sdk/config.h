// Model configuration: an HF `config.json` parsed into a typed, validated struct.
//
// Supported architectures (`architectures[0]`):
//   DeepseekV32ForCausalLM   MLA + lightning indexer (NeoX indexer RoPE) + MoE
//   GlmMoeDsaForCausalLM     same layout, interleaved indexer RoPE (`indexer_rope_interleave`, default true)
//   LlamaDsaForCausalLM      Llama (GQA) + lightning indexer, our format (DESIGN.md §3)
//   LlamaForCausalLM         dense Llama: no indexer, dense causal attention
//
// RoPE settings come from `rope_parameters` (transformers 5) or top-level `rope_theta` + `rope_scaling`.
//
//   IC_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig("/models/glm5"));
//   if (config.has_indexer) { ... }
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace ic {

enum class Architecture { kDeepseekV32, kGlmMoeDsa, kLlamaDsa, kLlama };

std::string_view ArchitectureName(Architecture arch);

struct RopeConfig {
  std::string type = "default";  // "default", "yarn", "linear", "llama3"
  double theta = 10000.0;
  double factor = 1.0;
  double original_max_position_embeddings = 0;  // yarn / llama3
  double beta_fast = 32.0, beta_slow = 1.0;     // yarn
  double mscale = 0.0, mscale_all_dim = 0.0;    // yarn (0 = absent)
  std::optional<double> attention_factor;       // yarn, explicit
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  bool truncate = true;                          // yarn

  bool operator==(const RopeConfig&) const = default;
};

struct ModelConfig {
  Architecture arch = Architecture::kLlama;
  std::string model_type;
  int vocab_size = 0;
  int hidden_size = 0;
  int num_hidden_layers = 0;
  int intermediate_size = 0;  // dense MLP
  double rms_norm_eps = 1e-6;
  int max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  int bos_token_id = -1, eos_token_id = -1;
  std::string hidden_act = "silu";

  // Attention. `mla` for DeepSeek-V3.2 / GLM-5; GQA otherwise.
  bool mla = false;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int head_dim = 0;            // GQA head dim
  int q_lora_rank = 0;         // MLA (0 = no q compression; unsupported for DSA: the indexer reads q_lora)
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;
  RopeConfig rope;

  // Lightning indexer (DSA). has_indexer == false: dense mode.
  bool has_indexer = false;
  int index_n_heads = 0;
  int index_head_dim = 0;
  int index_topk = 0;
  int index_rope_head_dim = 0;          // MLA models: qk_rope_head_dim; Llama-DSA: index_head_dim / 2
  bool indexer_rope_interleave = false; // GLM-5: true

  // MoE. moe_layer[i] says whether layer i has a MoE FFN (else the dense MLP).
  int n_routed_experts = 0;
  int num_experts_per_tok = 0;
  int n_shared_experts = 0;
  int moe_intermediate_size = 0;
  int n_group = 1;
  int topk_group = 1;
  int first_k_dense_replace = 0;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = true;
  std::vector<bool> moe_layer;

  // IndexCache keys, as found in the file (resolved by plan.h).
  std::optional<std::vector<std::string>> indexer_types;
  std::optional<std::string> index_topk_pattern;
  std::optional<int> index_topk_freq;
  std::optional<int> index_skip_topk_offset;

  int num_nextn_predict_layers = 0;  // MTP layers (tensors at index >= num_hidden_layers; skipped)

  // Derived.
  int qk_head_dim() const { return mla ? qk_nope_head_dim + qk_rope_head_dim : head_dim; }
  int attn_v_dim() const { return mla ? v_head_dim : head_dim; }

  bool operator==(const ModelConfig&) const = default;
};

// Parses config.json text. Errors are InvalidArgument naming the key and value
// (e.g. "config.json: hidden_size must be positive, got -4").
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);

// Reads `<dir>/config.json` and parses it. NotFound when the file is missing.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

// Serialises the config to HF config.json text (the keys our loader reads; used by the synthetic model
// and by distillation when it writes a Llama-DSA checkpoint).
std::string ModelConfigToJson(const ModelConfig& config);

// Inverse RoPE frequencies for `dim` rotary dimensions (dim / 2 values) and the cos/sin scaling factor,
// as HF computes them (modeling_rope_utils: default, linear, llama3, yarn).
struct RopeTables {
  std::vector<float> inv_freq;
  float attention_scaling = 1.0f;
};
RopeTables ComputeRope(const RopeConfig& rope, int dim, int max_position_embeddings);

// MLA softmax scale: qk_head_dim^-½ · mscale², mscale = 0.1 · mscale_all_dim · ln(factor) + 1 for YaRN
// with mscale_all_dim set (DESIGN.md §3); qk_head_dim^-½ otherwise. GQA: head_dim^-½.
float AttentionSoftmaxScale(const ModelConfig& config);

}  // namespace ic
