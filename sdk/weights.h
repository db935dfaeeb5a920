// Model weights: every tensor of a checkpoint mapped to the layer structure the engine runs.
//
// The loader maps every tensor it knows (HF names), converts it to F32 on the host, and checks its
// shape against the config. Indexer tensors are optional per layer: a checkpoint whose Shared layers
// carry none (GLM-5.2 style) loads, and context creation (engine.h) requires them for Full layers only.
// Tensors of MTP layers (index >= num_hidden_layers) are recognised and skipped; any other unknown
// tensor is an error naming it.
//
//   IC_ASSIGN_OR_RETURN(std::shared_ptr<const Model> model, LoadModel("/models/glm5-tiny"));
//   model->config.num_hidden_layers; model->plan.ToString();
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sdk/config.h"
#include "sdk/plan.h"

namespace ic {

class TensorStore;

// A host F32 tensor, row-major.
struct HostTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
  bool empty() const { return data.empty(); }
  int64_t rows() const { return shape.empty() ? 0 : shape[0]; }
};

// Lightning indexer of one layer. `wq` is `wq_b` (MLA models, input q_lora) or `wq` (Llama-DSA, input
// hidden): [index_n_heads · index_head_dim, in]. wk [index_head_dim, hidden]; k_norm weight/bias
// [index_head_dim]; weights_proj [index_n_heads, hidden].
struct IndexerWeights {
  HostTensor wq, wk, k_norm_weight, k_norm_bias, weights_proj;
  // Names of the tensors of this indexer that the checkpoint lacks (empty when complete).
  std::vector<std::string> missing;
  bool any_present = false;
};

struct MlpWeights {
  HostTensor gate, up, down;  // gate/up [inter, hidden], down [hidden, inter]
};

struct MoeWeights {
  HostTensor router;          // [experts, hidden]
  HostTensor correction_bias; // [experts] (may be empty)
  std::vector<MlpWeights> experts;
  std::optional<MlpWeights> shared;  // n_shared_experts · moe_intermediate_size
};

struct LayerWeights {
  HostTensor input_norm, post_attention_norm;
  // GQA
  HostTensor q_proj, k_proj, v_proj;
  // MLA
  HostTensor q_a_proj, q_a_norm, q_b_proj, kv_a_proj, kv_a_norm, kv_b_proj;
  HostTensor o_proj;
  IndexerWeights indexer;
  bool is_moe = false;
  MlpWeights mlp;
  MoeWeights moe;
};

struct ModelWeights {
  HostTensor embed_tokens;  // [vocab, hidden]
  HostTensor final_norm;    // [hidden]
  HostTensor lm_head;       // [vocab, hidden]; empty when tied to embed_tokens
  std::vector<LayerWeights> layers;
  const HostTensor& output_embedding() const { return lm_head.empty() ? embed_tokens : lm_head; }
};

struct Model {
  std::string path;  // "" for in-memory models
  ModelConfig config;
  ModelWeights weights;
  Plan plan;  // from the checkpoint's keys (or a plan file given at load)
};

struct LoadOptions {
  std::string plan_file;  // overrides the checkpoint's plan keys when set
};

// Loads config.json + safetensors from `model_dir`. Errors name the file, tensor and expected shape.
absl::StatusOr<std::shared_ptr<const Model>> LoadModel(const std::string& model_dir,
                                                       const LoadOptions& options = {});

// Maps the tensors of `store` onto `config` (used by LoadModel and tests).
absl::StatusOr<ModelWeights> MapWeights(const ModelConfig& config, const TensorStore& store);

// OK when every Full layer of `plan` has a complete indexer; else InvalidArgument naming the first
// missing tensor (e.g. "layer 3 is Full but the checkpoint lacks model.layers.3.self_attn.indexer.wk.weight").
absl::Status CheckIndexersForPlan(const Model& model, const Plan& plan);

// Expected HF tensor name prefix of layer i: "model.layers.<i>.".
std::string LayerPrefix(int layer);

}  // namespace ic
