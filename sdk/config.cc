// HF config.json -> ModelConfig (validated), ModelConfig -> config.json, and the RoPE tables.
//
// Defaults: keys that size the model (vocab, hidden, layers, heads, MLA and indexer dims, expert counts)
// are required; behavioural keys that HF's config classes default (rms_norm_eps, n_group, rope_theta,
// first_k_dense_replace, tie_word_embeddings, …) take that class's default when absent.
#include "sdk/config.h"

#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_join.h"
#include "sdk/json_text.h"
#include "sdk/status.h"

namespace ic {
namespace {

using json = nlohmann::json;

constexpr char kFile[] = "config.json: ";

struct ArchInfo {
  Architecture arch;
  const char* name;
  const char* model_type;
};
constexpr ArchInfo kArchs[] = {
    {Architecture::kDeepseekV32, "DeepseekV32ForCausalLM", "deepseek_v32"},
    {Architecture::kGlmMoeDsa, "GlmMoeDsaForCausalLM", "glm_moe_dsa"},
    {Architecture::kLlamaDsa, "LlamaDsaForCausalLM", "llama_dsa"},
    {Architecture::kLlama, "LlamaForCausalLM", "llama"},
};

const ArchInfo& Info(Architecture arch) {
  for (const ArchInfo& a : kArchs) {
    if (a.arch == arch) return a;
  }
  return kArchs[3];
}

// "absent" covers both a missing key and an explicit null (HF writes `"pad_token_id": null`).
const json* Find(const json& obj, absl::string_view key) {
  auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status Missing(absl::string_view key) { return InvalidArgument(kFile, "missing required key \"", key, "\""); }

absl::Status BadType(absl::string_view key, const json& v, absl::string_view expected) {
  return InvalidArgument(kFile, key, " is ", JsonForMessage(v), "; expected ", expected);
}

// Reads an integer (an integral float such as 4096.0 is accepted). `*out` keeps its value when the key
// is absent and not required.
absl::Status ReadInt(const json& obj, absl::string_view key, bool required, int* out, absl::string_view prefix = "") {
  const std::string name = absl::StrCat(prefix, key);
  const json* v = Find(obj, key);
  if (v == nullptr) return required ? Missing(name) : absl::OkStatus();
  double d;
  if (v->is_number_integer()) {
    if (v->is_number_unsigned()) {
      d = static_cast<double>(v->get<uint64_t>());
    } else {
      d = static_cast<double>(v->get<int64_t>());
    }
  } else if (v->is_number_float()) {
    d = v->get<double>();
    if (d != std::floor(d)) return BadType(name, *v, "an integer");
  } else {
    return BadType(name, *v, "an integer");
  }
  if (d < std::numeric_limits<int>::min() || d > std::numeric_limits<int>::max()) {
    return BadType(name, *v, "an integer in the int32 range");
  }
  *out = static_cast<int>(d);
  return absl::OkStatus();
}

absl::Status ReadDouble(const json& obj, absl::string_view key, bool required, double* out,
                        absl::string_view prefix = "") {
  const std::string name = absl::StrCat(prefix, key);
  const json* v = Find(obj, key);
  if (v == nullptr) return required ? Missing(name) : absl::OkStatus();
  if (!v->is_number()) return BadType(name, *v, "a number");
  *out = v->get<double>();
  if (!std::isfinite(*out)) return BadType(name, *v, "a finite number");
  return absl::OkStatus();
}

absl::Status ReadBool(const json& obj, absl::string_view key, bool* out) {
  const json* v = Find(obj, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_boolean()) return BadType(key, *v, "true or false");
  *out = v->get<bool>();
  return absl::OkStatus();
}

absl::Status ReadString(const json& obj, absl::string_view key, std::string* out) {
  const json* v = Find(obj, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_string()) return BadType(key, *v, "a string");
  *out = v->get<std::string>();
  return absl::OkStatus();
}

// bos/eos may be an int or a list of ints (GLM lists several eos ids); we keep the first.
absl::Status ReadTokenId(const json& obj, absl::string_view key, int* out) {
  const json* v = Find(obj, key);
  if (v == nullptr) return absl::OkStatus();
  if (v->is_array()) {
    if (v->empty()) return absl::OkStatus();
    json wrapped = {{std::string(key), (*v)[0]}};
    return ReadInt(wrapped, key, true, out);
  }
  return ReadInt(obj, key, true, out);
}

absl::Status Positive(absl::string_view key, double value) {
  if (value > 0) return absl::OkStatus();
  return InvalidArgument(kFile, key, " must be positive, got ", value);
}

absl::Status NonNegative(absl::string_view key, int value) {
  if (value >= 0) return absl::OkStatus();
  return InvalidArgument(kFile, key, " must be non-negative, got ", value);
}

absl::StatusOr<Architecture> ReadArchitecture(const json& root) {
  const json* v = Find(root, "architectures");
  if (v == nullptr) return Missing("architectures");
  if (!v->is_array() || v->empty() || !(*v)[0].is_string()) {
    return BadType("architectures", *v, "a non-empty list of strings");
  }
  const std::string name = (*v)[0].get<std::string>();
  std::vector<absl::string_view> supported;
  for (const ArchInfo& a : kArchs) {
    if (name == a.name) return a.arch;
    supported.push_back(a.name);
  }
  return InvalidArgument(kFile, "architecture \"", name,
                         "\" is not supported; supported: ", absl::StrJoin(supported, ", "));
}

// RoPE: `rope_parameters` (transformers 5) or `rope_scaling` + top-level `rope_theta` (older files).
absl::Status ReadRope(const json& root, int max_position_embeddings, RopeConfig* rope) {
  std::string prefix = "rope_parameters.";
  const json* params = Find(root, "rope_parameters");
  if (params == nullptr) {
    params = Find(root, "rope_scaling");
    prefix = "rope_scaling.";
  }
  static const json kEmpty = json::object();
  if (params == nullptr) {
    params = &kEmpty;
  } else if (!params->is_object()) {
    return BadType(prefix.substr(0, prefix.size() - 1), *params, "an object");
  }
  const json& p = *params;

  IC_RETURN_IF_ERROR(ReadDouble(root, "rope_theta", false, &rope->theta));
  IC_RETURN_IF_ERROR(ReadDouble(p, "rope_theta", false, &rope->theta, prefix));
  IC_RETURN_IF_ERROR(Positive("rope_theta", rope->theta));
  // The RoPE tables are float32 (as in torch): a theta that rounds to 0 or inf gives inf/NaN frequencies.
  if (!std::isnormal(static_cast<float>(rope->theta))) {
    return InvalidArgument(kFile, "rope_theta ", rope->theta, " is outside the float32 range");
  }

  std::string type = "default";
  const json* t = Find(p, "rope_type");
  if (t == nullptr) t = Find(p, "type");
  if (t != nullptr) {
    if (!t->is_string()) return BadType(prefix + "rope_type", *t, "a string");
    type = t->get<std::string>();
  }
  if (type != "default" && type != "linear" && type != "llama3" && type != "yarn") {
    return InvalidArgument(kFile, prefix, "rope_type \"", type,
                           "\" is not supported; supported: default, linear, llama3, yarn");
  }
  rope->type = type;

  double partial = 1.0;
  IC_RETURN_IF_ERROR(ReadDouble(p, "partial_rotary_factor", false, &partial, prefix));
  IC_RETURN_IF_ERROR(ReadDouble(root, "partial_rotary_factor", false, &partial));
  if (partial != 1.0) {
    return InvalidArgument(kFile, "partial_rotary_factor ", partial, " is not supported; expected 1");
  }
  if (type == "default") return absl::OkStatus();

  // original_max_position_embeddings: a top-level key wins (as in HF), else the dict's, else the
  // model's max_position_embeddings.
  if (type == "yarn" || type == "llama3") {
    rope->original_max_position_embeddings = max_position_embeddings;
    IC_RETURN_IF_ERROR(
        ReadDouble(p, "original_max_position_embeddings", false, &rope->original_max_position_embeddings, prefix));
    IC_RETURN_IF_ERROR(
        ReadDouble(root, "original_max_position_embeddings", false, &rope->original_max_position_embeddings));
    IC_RETURN_IF_ERROR(Positive(prefix + "original_max_position_embeddings", rope->original_max_position_embeddings));
  }
  if (type == "yarn") {
    // HF: a missing factor is max_position_embeddings / original_max_position_embeddings.
    rope->factor = max_position_embeddings / rope->original_max_position_embeddings;
    IC_RETURN_IF_ERROR(ReadDouble(p, "factor", false, &rope->factor, prefix));
    IC_RETURN_IF_ERROR(ReadDouble(p, "beta_fast", false, &rope->beta_fast, prefix));
    IC_RETURN_IF_ERROR(ReadDouble(p, "beta_slow", false, &rope->beta_slow, prefix));
    // HF reads them with `or`: 0 means the default.
    if (rope->beta_fast == 0) rope->beta_fast = 32.0;
    if (rope->beta_slow == 0) rope->beta_slow = 1.0;
    // YaRN's correction range takes log(original / (beta · 2π)) / log(theta): a non-positive beta or
    // theta <= 1 makes every frequency NaN (all logits NaN), so reject them here.
    IC_RETURN_IF_ERROR(Positive(prefix + "beta_fast", rope->beta_fast));
    IC_RETURN_IF_ERROR(Positive(prefix + "beta_slow", rope->beta_slow));
    if (!(rope->theta > 1.0)) {
      return InvalidArgument(kFile, "rope_theta must be greater than 1 for rope_type \"yarn\", got ", rope->theta);
    }
    IC_RETURN_IF_ERROR(ReadDouble(p, "mscale", false, &rope->mscale, prefix));
    IC_RETURN_IF_ERROR(ReadDouble(p, "mscale_all_dim", false, &rope->mscale_all_dim, prefix));
    double attention_factor = 0;
    if (Find(p, "attention_factor") != nullptr) {
      IC_RETURN_IF_ERROR(ReadDouble(p, "attention_factor", true, &attention_factor, prefix));
      IC_RETURN_IF_ERROR(Positive(prefix + "attention_factor", attention_factor));
      rope->attention_factor = attention_factor;
    }
    const json* tr = Find(p, "truncate");
    if (tr != nullptr) {
      if (!tr->is_boolean()) return BadType(prefix + "truncate", *tr, "true or false");
      rope->truncate = tr->get<bool>();
    }
  } else {
    IC_RETURN_IF_ERROR(ReadDouble(p, "factor", true, &rope->factor, prefix));
  }
  IC_RETURN_IF_ERROR(Positive(prefix + "factor", rope->factor));
  if (type == "llama3") {
    IC_RETURN_IF_ERROR(ReadDouble(p, "low_freq_factor", true, &rope->low_freq_factor, prefix));
    IC_RETURN_IF_ERROR(ReadDouble(p, "high_freq_factor", true, &rope->high_freq_factor, prefix));
    IC_RETURN_IF_ERROR(Positive(prefix + "low_freq_factor", rope->low_freq_factor));
    if (rope->high_freq_factor <= rope->low_freq_factor) {
      return InvalidArgument(kFile, prefix, "high_freq_factor ", rope->high_freq_factor,
                             " must be greater than low_freq_factor ", rope->low_freq_factor);
    }
  }
  return absl::OkStatus();
}

// MoE keys of the MLA architectures and the per-layer MoE/dense choice.
absl::Status ReadMoe(const json& root, ModelConfig* c) {
  const json* experts_key = nullptr;
  absl::string_view experts_name;
  for (absl::string_view name : {"n_routed_experts", "num_local_experts", "num_experts"}) {
    if (Find(root, name) != nullptr) {
      experts_key = Find(root, name);
      experts_name = name;
      break;
    }
  }
  if (experts_key == nullptr) return Missing("n_routed_experts");
  IC_RETURN_IF_ERROR(ReadInt(root, experts_name, true, &c->n_routed_experts));
  IC_RETURN_IF_ERROR(NonNegative(experts_name, c->n_routed_experts));
  IC_RETURN_IF_ERROR(ReadInt(root, "first_k_dense_replace", false, &c->first_k_dense_replace));
  IC_RETURN_IF_ERROR(NonNegative("first_k_dense_replace", c->first_k_dense_replace));
  IC_RETURN_IF_ERROR(ReadDouble(root, "routed_scaling_factor", false, &c->routed_scaling_factor));
  IC_RETURN_IF_ERROR(ReadBool(root, "norm_topk_prob", &c->norm_topk_prob));

  c->moe_layer.assign(c->num_hidden_layers, false);
  if (const json* types = Find(root, "mlp_layer_types")) {
    if (!types->is_array()) return BadType("mlp_layer_types", *types, "a list of \"dense\"/\"sparse\"");
    if (static_cast<int>(types->size()) != c->num_hidden_layers) {
      return InvalidArgument(kFile, "mlp_layer_types has ", types->size(), " entries; num_hidden_layers is ",
                             c->num_hidden_layers);
    }
    for (int i = 0; i < c->num_hidden_layers; ++i) {
      const json& t = (*types)[i];
      if (t == "sparse") {
        c->moe_layer[i] = true;
      } else if (t != "dense") {
        return InvalidArgument(kFile, "mlp_layer_types[", i, "] is ", JsonForMessage(t), "; expected \"dense\" or \"sparse\"");
      }
    }
  } else {
    for (int i = 0; i < c->num_hidden_layers; ++i) {
      c->moe_layer[i] = c->n_routed_experts > 0 && i >= c->first_k_dense_replace;
    }
  }
  bool any_moe = false, any_dense = false;
  for (bool m : c->moe_layer) (m ? any_moe : any_dense) = true;
  if (any_moe && c->n_routed_experts == 0) {
    return InvalidArgument(kFile, "mlp_layer_types has \"sparse\" layers but ", experts_name, " is 0");
  }
  if (any_dense) {
    IC_RETURN_IF_ERROR(ReadInt(root, "intermediate_size", true, &c->intermediate_size));
    IC_RETURN_IF_ERROR(Positive("intermediate_size", c->intermediate_size));
  } else {
    IC_RETURN_IF_ERROR(ReadInt(root, "intermediate_size", false, &c->intermediate_size));
  }
  if (c->n_routed_experts == 0) return absl::OkStatus();

  IC_RETURN_IF_ERROR(ReadInt(root, "num_experts_per_tok", true, &c->num_experts_per_tok));
  IC_RETURN_IF_ERROR(ReadInt(root, "moe_intermediate_size", true, &c->moe_intermediate_size));
  IC_RETURN_IF_ERROR(ReadInt(root, "n_shared_experts", true, &c->n_shared_experts));
  IC_RETURN_IF_ERROR(ReadInt(root, "n_group", false, &c->n_group));
  IC_RETURN_IF_ERROR(ReadInt(root, "topk_group", false, &c->topk_group));
  IC_RETURN_IF_ERROR(Positive("num_experts_per_tok", c->num_experts_per_tok));
  IC_RETURN_IF_ERROR(Positive("moe_intermediate_size", c->moe_intermediate_size));
  IC_RETURN_IF_ERROR(NonNegative("n_shared_experts", c->n_shared_experts));
  IC_RETURN_IF_ERROR(Positive("n_group", c->n_group));
  IC_RETURN_IF_ERROR(Positive("topk_group", c->topk_group));
  IC_RETURN_IF_ERROR(Positive("routed_scaling_factor", c->routed_scaling_factor));
  if (c->num_experts_per_tok > c->n_routed_experts) {
    return InvalidArgument(kFile, "num_experts_per_tok ", c->num_experts_per_tok, " exceeds ", experts_name, " ",
                           c->n_routed_experts);
  }
  if (c->n_routed_experts % c->n_group != 0) {
    return InvalidArgument(kFile, experts_name, " ", c->n_routed_experts, " is not divisible by n_group ", c->n_group);
  }
  if (c->topk_group > c->n_group) {
    return InvalidArgument(kFile, "topk_group ", c->topk_group, " exceeds n_group ", c->n_group);
  }
  const int reachable = c->topk_group * (c->n_routed_experts / c->n_group);
  if (c->num_experts_per_tok > reachable) {
    return InvalidArgument(kFile, "num_experts_per_tok ", c->num_experts_per_tok, " exceeds the ", reachable,
                           " experts in topk_group ", c->topk_group, " groups");
  }
  return absl::OkStatus();
}

absl::Status ReadIndexCacheKeys(const json& root, ModelConfig* c) {
  if (const json* v = Find(root, "indexer_types")) {
    if (!v->is_array()) return BadType("indexer_types", *v, "a list of \"full\"/\"shared\"");
    std::vector<std::string> types;
    for (size_t i = 0; i < v->size(); ++i) {
      if (!(*v)[i].is_string()) {
        return InvalidArgument(kFile, "indexer_types[", i, "] is ", JsonForMessage((*v)[i]),
                               "; expected \"full\" or \"shared\"");
      }
      types.push_back((*v)[i].get<std::string>());
    }
    c->indexer_types = std::move(types);
  }
  if (const json* v = Find(root, "index_topk_pattern")) {
    // HF also accepts a list of single characters.
    std::string pattern;
    if (v->is_string()) {
      pattern = v->get<std::string>();
    } else if (v->is_array()) {
      for (const json& ch : *v) {
        if (!ch.is_string()) return BadType("index_topk_pattern", *v, "a string of F/S");
        pattern += ch.get<std::string>();
      }
    } else {
      return BadType("index_topk_pattern", *v, "a string of F/S");
    }
    c->index_topk_pattern = std::move(pattern);
  }
  if (Find(root, "index_topk_freq") != nullptr) {
    int freq = 0;
    IC_RETURN_IF_ERROR(ReadInt(root, "index_topk_freq", true, &freq));
    c->index_topk_freq = freq;
  }
  if (Find(root, "index_skip_topk_offset") != nullptr) {
    int offset = 0;
    IC_RETURN_IF_ERROR(ReadInt(root, "index_skip_topk_offset", true, &offset));
    c->index_skip_topk_offset = offset;
  }
  return absl::OkStatus();
}

absl::Status ReadIndexer(const json& root, ModelConfig* c) {
  c->has_indexer = true;
  IC_RETURN_IF_ERROR(ReadInt(root, "index_n_heads", true, &c->index_n_heads));
  IC_RETURN_IF_ERROR(ReadInt(root, "index_head_dim", true, &c->index_head_dim));
  IC_RETURN_IF_ERROR(ReadInt(root, "index_topk", true, &c->index_topk));
  IC_RETURN_IF_ERROR(Positive("index_n_heads", c->index_n_heads));
  IC_RETURN_IF_ERROR(Positive("index_head_dim", c->index_head_dim));
  IC_RETURN_IF_ERROR(Positive("index_topk", c->index_topk));
  if (c->mla) {
    c->index_rope_head_dim = c->qk_rope_head_dim;
  } else {
    c->index_rope_head_dim = c->index_head_dim / 2;
    IC_RETURN_IF_ERROR(ReadInt(root, "index_rope_head_dim", false, &c->index_rope_head_dim));
    IC_RETURN_IF_ERROR(Positive("index_rope_head_dim", c->index_rope_head_dim));
  }
  if (c->index_rope_head_dim > c->index_head_dim || c->index_rope_head_dim % 2 != 0) {
    return InvalidArgument(kFile, "index_rope_head_dim ", c->index_rope_head_dim,
                           " must be even and at most index_head_dim ", c->index_head_dim);
  }
  c->indexer_rope_interleave = c->arch == Architecture::kGlmMoeDsa;
  IC_RETURN_IF_ERROR(ReadBool(root, "indexer_rope_interleave", &c->indexer_rope_interleave));
  return ReadIndexCacheKeys(root, c);
}

absl::Status ReadMla(const json& root, ModelConfig* c) {
  c->mla = true;
  if (const json* q = root.contains("q_lora_rank") ? &root["q_lora_rank"] : nullptr; q && q->is_null()) {
    return InvalidArgument(kFile, "q_lora_rank is null; DSA needs q compression (the indexer reads q_lora)");
  }
  IC_RETURN_IF_ERROR(ReadInt(root, "q_lora_rank", true, &c->q_lora_rank));
  IC_RETURN_IF_ERROR(ReadInt(root, "kv_lora_rank", true, &c->kv_lora_rank));
  IC_RETURN_IF_ERROR(ReadInt(root, "qk_nope_head_dim", true, &c->qk_nope_head_dim));
  IC_RETURN_IF_ERROR(ReadInt(root, "qk_rope_head_dim", true, &c->qk_rope_head_dim));
  IC_RETURN_IF_ERROR(ReadInt(root, "v_head_dim", true, &c->v_head_dim));
  IC_RETURN_IF_ERROR(Positive("q_lora_rank", c->q_lora_rank));
  IC_RETURN_IF_ERROR(Positive("kv_lora_rank", c->kv_lora_rank));
  IC_RETURN_IF_ERROR(Positive("qk_nope_head_dim", c->qk_nope_head_dim));
  IC_RETURN_IF_ERROR(Positive("qk_rope_head_dim", c->qk_rope_head_dim));
  IC_RETURN_IF_ERROR(Positive("v_head_dim", c->v_head_dim));
  if (c->qk_rope_head_dim % 2 != 0) {
    return InvalidArgument(kFile, "qk_rope_head_dim must be even, got ", c->qk_rope_head_dim);
  }
  // HF's `head_dim` for these models is qk_rope_head_dim (a RoPE alias), not an attention size.
  c->head_dim = 0;
  IC_RETURN_IF_ERROR(ReadInt(root, "num_nextn_predict_layers", false, &c->num_nextn_predict_layers));
  IC_RETURN_IF_ERROR(NonNegative("num_nextn_predict_layers", c->num_nextn_predict_layers));
  IC_RETURN_IF_ERROR(ReadMoe(root, c));
  return ReadIndexer(root, c);
}

absl::Status ReadLlama(const json& root, ModelConfig* c) {
  c->mla = false;
  if (Find(root, "head_dim") != nullptr) {
    IC_RETURN_IF_ERROR(ReadInt(root, "head_dim", true, &c->head_dim));
    IC_RETURN_IF_ERROR(Positive("head_dim", c->head_dim));
  } else {
    if (c->hidden_size % c->num_attention_heads != 0) {
      return InvalidArgument(kFile, "hidden_size ", c->hidden_size, " is not divisible by num_attention_heads ",
                             c->num_attention_heads, " (and head_dim is absent)");
    }
    c->head_dim = c->hidden_size / c->num_attention_heads;
  }
  if (c->head_dim % 2 != 0) return InvalidArgument(kFile, "head_dim must be even, got ", c->head_dim);
  IC_RETURN_IF_ERROR(ReadInt(root, "intermediate_size", true, &c->intermediate_size));
  IC_RETURN_IF_ERROR(Positive("intermediate_size", c->intermediate_size));
  c->moe_layer.assign(c->num_hidden_layers, false);
  if (c->arch == Architecture::kLlamaDsa) return ReadIndexer(root, c);
  c->has_indexer = false;
  return absl::OkStatus();
}

// Tensor rows and cache entries are sums and products of config sizes, held in int (config.h, the engine
// and the kernels): each must fit in int32, else a 1 KB config.json overflows them (undefined behaviour).
absl::Status CheckDerivedSizes(const ModelConfig& c) {
  auto fits = [](absl::string_view what, int64_t value) -> absl::Status {
    if (value <= std::numeric_limits<int>::max()) return absl::OkStatus();
    return InvalidArgument(kFile, what, " = ", value, " exceeds the int32 range");
  };
  const int64_t heads = c.num_attention_heads;
  if (c.mla) {
    const int64_t qk = int64_t{c.qk_nope_head_dim} + c.qk_rope_head_dim;
    IC_RETURN_IF_ERROR(fits("qk_nope_head_dim + qk_rope_head_dim", qk));
    IC_RETURN_IF_ERROR(fits("kv_lora_rank + qk_rope_head_dim", int64_t{c.kv_lora_rank} + c.qk_rope_head_dim));
    IC_RETURN_IF_ERROR(fits("num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim)", heads * qk));
    IC_RETURN_IF_ERROR(
        fits("num_attention_heads * (qk_nope_head_dim + v_head_dim)", heads * (int64_t{c.qk_nope_head_dim} + c.v_head_dim)));
    IC_RETURN_IF_ERROR(fits("num_attention_heads * v_head_dim", heads * c.v_head_dim));
  } else {
    IC_RETURN_IF_ERROR(fits("num_attention_heads * head_dim", heads * c.head_dim));
  }
  if (c.has_indexer) {
    IC_RETURN_IF_ERROR(fits("index_n_heads * index_head_dim", int64_t{c.index_n_heads} * c.index_head_dim));
  }
  IC_RETURN_IF_ERROR(fits("n_shared_experts * moe_intermediate_size",
                          int64_t{c.n_shared_experts} * c.moe_intermediate_size));
  return absl::OkStatus();
}

}  // namespace

std::string_view ArchitectureName(Architecture arch) { return Info(arch).name; }

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    // Parse again with exceptions for the parser's message (position and token).
    try {
      json ignored = json::parse(json_text);
      (void)ignored;
    } catch (const json::parse_error& e) {
      return InvalidArgument(kFile, "malformed JSON: ", e.what());
    }
    return InvalidArgument(kFile, "malformed JSON");
  }
  if (!root.is_object()) return InvalidArgument(kFile, "top level is ", root.type_name(), "; expected an object");

  ModelConfig c;
  IC_ASSIGN_OR_RETURN(c.arch, ReadArchitecture(root));
  const bool mla = c.arch == Architecture::kDeepseekV32 || c.arch == Architecture::kGlmMoeDsa;
  c.model_type = std::string(Info(c.arch).model_type);
  IC_RETURN_IF_ERROR(ReadString(root, "model_type", &c.model_type));

  // HF class defaults for the behavioural keys.
  switch (c.arch) {
    case Architecture::kDeepseekV32:
      c.rms_norm_eps = 1e-6, c.max_position_embeddings = 163840, c.n_group = 8, c.topk_group = 4;
      c.first_k_dense_replace = 3, c.routed_scaling_factor = 2.5, c.bos_token_id = 0, c.eos_token_id = 1;
      break;
    case Architecture::kGlmMoeDsa:
      c.rms_norm_eps = 1e-5, c.max_position_embeddings = 202752, c.n_group = 1, c.topk_group = 1;
      c.first_k_dense_replace = 3, c.routed_scaling_factor = 2.5, c.bos_token_id = 0, c.eos_token_id = 1;
      break;
    case Architecture::kLlamaDsa:
    case Architecture::kLlama:
      c.rms_norm_eps = 1e-6, c.max_position_embeddings = 2048, c.bos_token_id = 1, c.eos_token_id = 2;
      break;
  }
  c.tie_word_embeddings = false;

  IC_RETURN_IF_ERROR(ReadInt(root, "vocab_size", true, &c.vocab_size));
  IC_RETURN_IF_ERROR(ReadInt(root, "hidden_size", true, &c.hidden_size));
  IC_RETURN_IF_ERROR(ReadInt(root, "num_hidden_layers", true, &c.num_hidden_layers));
  IC_RETURN_IF_ERROR(ReadInt(root, "num_attention_heads", true, &c.num_attention_heads));
  IC_RETURN_IF_ERROR(Positive("vocab_size", c.vocab_size));
  IC_RETURN_IF_ERROR(Positive("hidden_size", c.hidden_size));
  IC_RETURN_IF_ERROR(Positive("num_hidden_layers", c.num_hidden_layers));
  IC_RETURN_IF_ERROR(Positive("num_attention_heads", c.num_attention_heads));
  c.num_key_value_heads = c.num_attention_heads;
  IC_RETURN_IF_ERROR(ReadInt(root, "num_key_value_heads", false, &c.num_key_value_heads));
  IC_RETURN_IF_ERROR(Positive("num_key_value_heads", c.num_key_value_heads));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return InvalidArgument(kFile, "num_attention_heads ", c.num_attention_heads,
                           " is not divisible by num_key_value_heads ", c.num_key_value_heads);
  }
  IC_RETURN_IF_ERROR(ReadDouble(root, "rms_norm_eps", false, &c.rms_norm_eps));
  IC_RETURN_IF_ERROR(Positive("rms_norm_eps", c.rms_norm_eps));
  IC_RETURN_IF_ERROR(ReadInt(root, "max_position_embeddings", false, &c.max_position_embeddings));
  IC_RETURN_IF_ERROR(Positive("max_position_embeddings", c.max_position_embeddings));
  IC_RETURN_IF_ERROR(ReadBool(root, "tie_word_embeddings", &c.tie_word_embeddings));
  IC_RETURN_IF_ERROR(ReadTokenId(root, "bos_token_id", &c.bos_token_id));
  IC_RETURN_IF_ERROR(ReadTokenId(root, "eos_token_id", &c.eos_token_id));
  IC_RETURN_IF_ERROR(ReadString(root, "hidden_act", &c.hidden_act));
  if (c.hidden_act != "silu") {
    return InvalidArgument(kFile, "hidden_act \"", c.hidden_act, "\" is not supported; supported: silu");
  }
  IC_RETURN_IF_ERROR(ReadRope(root, c.max_position_embeddings, &c.rope));

  if (mla) {
    IC_RETURN_IF_ERROR(ReadMla(root, &c));
  } else {
    IC_RETURN_IF_ERROR(ReadLlama(root, &c));
  }
  IC_RETURN_IF_ERROR(CheckDerivedSizes(c));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  // Check the kind before opening: a directory reads as "" (a misleading JSON error) and a FIFO blocks.
  struct stat st;
  if (stat(model_dir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
    return InvalidArgument(model_dir, ": not a directory (expected a checkpoint directory)");
  }
  if (stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    return InvalidArgument(path, ": not a regular file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(model_dir, "/", config.status().message()));
  }
  return config;
}

std::string ModelConfigToJson(const ModelConfig& c) {
  nlohmann::ordered_json j;
  j["architectures"] = {std::string(ArchitectureName(c.arch))};
  j["model_type"] = c.arch == Architecture::kLlamaDsa
                        ? std::string("llama_dsa")
                        : (c.model_type.empty() ? std::string(Info(c.arch).model_type) : c.model_type);
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["bos_token_id"] = c.bos_token_id >= 0 ? nlohmann::ordered_json(c.bos_token_id) : nullptr;
  j["eos_token_id"] = c.eos_token_id >= 0 ? nlohmann::ordered_json(c.eos_token_id) : nullptr;
  j["hidden_act"] = c.hidden_act;

  nlohmann::ordered_json rope;
  rope["rope_type"] = c.rope.type;
  rope["rope_theta"] = c.rope.theta;
  if (c.rope.type != "default") rope["factor"] = c.rope.factor;
  if ((c.rope.type == "yarn" || c.rope.type == "llama3") && c.rope.original_max_position_embeddings > 0) {
    rope["original_max_position_embeddings"] = c.rope.original_max_position_embeddings;  // else: max_position
  }
  if (c.rope.type == "llama3") {
    rope["low_freq_factor"] = c.rope.low_freq_factor;
    rope["high_freq_factor"] = c.rope.high_freq_factor;
  }
  if (c.rope.type == "yarn") {
    rope["beta_fast"] = c.rope.beta_fast;
    rope["beta_slow"] = c.rope.beta_slow;
    if (c.rope.mscale != 0) rope["mscale"] = c.rope.mscale;
    if (c.rope.mscale_all_dim != 0) rope["mscale_all_dim"] = c.rope.mscale_all_dim;
    if (c.rope.attention_factor) rope["attention_factor"] = *c.rope.attention_factor;
    rope["truncate"] = c.rope.truncate;
  }
  j["rope_parameters"] = rope;

  if (c.mla) {
    j["head_dim"] = c.qk_rope_head_dim;  // HF's RoPE alias for MLA models
    j["q_lora_rank"] = c.q_lora_rank;
    j["kv_lora_rank"] = c.kv_lora_rank;
    j["qk_nope_head_dim"] = c.qk_nope_head_dim;
    j["qk_rope_head_dim"] = c.qk_rope_head_dim;
    j["v_head_dim"] = c.v_head_dim;
    j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
    j["n_routed_experts"] = c.n_routed_experts;
    j["first_k_dense_replace"] = c.first_k_dense_replace;
    j["routed_scaling_factor"] = c.routed_scaling_factor;
    j["norm_topk_prob"] = c.norm_topk_prob;
    if (c.n_routed_experts > 0) {
      j["num_experts_per_tok"] = c.num_experts_per_tok;
      j["n_shared_experts"] = c.n_shared_experts;
      j["moe_intermediate_size"] = c.moe_intermediate_size;
      j["n_group"] = c.n_group;
      j["topk_group"] = c.topk_group;
    }
    // A config built in code may leave moe_layer empty: the reader then derives it from first_k_dense_replace.
    if (static_cast<int>(c.moe_layer.size()) == c.num_hidden_layers) {
      std::vector<std::string> types;
      for (bool m : c.moe_layer) types.push_back(m ? "sparse" : "dense");
      j["mlp_layer_types"] = types;
    }
  } else {
    j["head_dim"] = c.head_dim;
  }
  if (c.has_indexer) {
    j["index_n_heads"] = c.index_n_heads;
    j["index_head_dim"] = c.index_head_dim;
    j["index_topk"] = c.index_topk;
    if (!c.mla) j["index_rope_head_dim"] = c.index_rope_head_dim;
    j["indexer_rope_interleave"] = c.indexer_rope_interleave;
    if (c.indexer_types) j["indexer_types"] = *c.indexer_types;
    if (c.index_topk_pattern) j["index_topk_pattern"] = *c.index_topk_pattern;
    if (c.index_topk_freq) j["index_topk_freq"] = *c.index_topk_freq;
    if (c.index_skip_topk_offset) j["index_skip_topk_offset"] = *c.index_skip_topk_offset;
  }
  return j.dump(2) + "\n";
}

// Float32 arithmetic step by step, as torch does on the CPU, so inv_freq matches HF bit for bit where
// powf agrees with torch's pow. No FMA contraction: torch runs each op separately.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
RopeTables
ComputeRope(const RopeConfig& rope, int dim, int max_position_embeddings) {
  RopeTables out;
  const int half = dim / 2;
  const float base = static_cast<float>(rope.theta);
  std::vector<float> pos_freqs(half);
  for (int i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    pos_freqs[i] = std::pow(base, exponent);
  }
  out.inv_freq.resize(half);
  for (int i = 0; i < half; ++i) out.inv_freq[i] = 1.0f / pos_freqs[i];

  if (rope.type == "linear") {
    const float factor = static_cast<float>(rope.factor);
    for (float& f : out.inv_freq) f = f / factor;
  } else if (rope.type == "llama3") {
    const double old_context =
        rope.original_max_position_embeddings > 0 ? rope.original_max_position_embeddings : max_position_embeddings;
    const float factor = static_cast<float>(rope.factor);
    const float low_wavelen = static_cast<float>(old_context / rope.low_freq_factor);
    const float high_wavelen = static_cast<float>(old_context / rope.high_freq_factor);
    const float two_pi = static_cast<float>(2 * M_PI);
    for (float& f : out.inv_freq) {
      // torch evaluates `scalar / tensor` as reciprocal(tensor) * scalar.
      const float wavelen = (1.0f / f) * two_pi;
      const float llama = wavelen > low_wavelen ? f / factor : f;
      if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
        const float ratio = (1.0f / wavelen) * static_cast<float>(old_context);
        const float smooth = (ratio - static_cast<float>(rope.low_freq_factor)) /
                             static_cast<float>(rope.high_freq_factor - rope.low_freq_factor);
        const float a = (1.0f - smooth) * llama;
        const float b = a / factor;
        const float c = smooth * llama;
        f = b + c;
      } else {
        f = llama;
      }
    }
  } else if (rope.type == "yarn") {
    const double original =
        rope.original_max_position_embeddings > 0 ? rope.original_max_position_embeddings : max_position_embeddings;
    const double factor = rope.factor;
    auto get_mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
    if (rope.attention_factor) {
      out.attention_scaling = static_cast<float>(*rope.attention_factor);
    } else if (rope.mscale != 0 && rope.mscale_all_dim != 0) {
      out.attention_scaling =
          static_cast<float>(get_mscale(factor, rope.mscale) / get_mscale(factor, rope.mscale_all_dim));
    } else {
      out.attention_scaling = static_cast<float>(get_mscale(factor, 1.0));
    }
    // Python doubles, as in HF.
    auto correction_dim = [&](double rotations) {
      return (dim * std::log(original / (rotations * 2 * M_PI))) / (2 * std::log(rope.theta));
    };
    double low = correction_dim(rope.beta_fast);
    double high = correction_dim(rope.beta_slow);
    if (rope.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
    const float f_factor = static_cast<float>(factor);
    const float f_low = static_cast<float>(low);
    const float f_range = static_cast<float>(high - low);
    for (int i = 0; i < half; ++i) {
      float ramp = (static_cast<float>(i) - f_low) / f_range;
      ramp = std::min(std::max(ramp, 0.0f), 1.0f);
      const float extrapolation_factor = 1.0f - ramp;
      const float extrapolation = 1.0f / pos_freqs[i];
      const float scaled = f_factor * pos_freqs[i];
      const float interpolation = 1.0f / scaled;
      const float a = interpolation * (1.0f - extrapolation_factor);
      const float b = extrapolation * extrapolation_factor;
      out.inv_freq[i] = a + b;
    }
  }
  return out;
}

float AttentionSoftmaxScale(const ModelConfig& config) {
  double scale = 1.0 / std::sqrt(static_cast<double>(config.qk_head_dim()));
  if (config.mla && config.rope.type != "default" && config.rope.mscale_all_dim != 0 && config.rope.factor > 1) {
    const double mscale = 0.1 * config.rope.mscale_all_dim * std::log(config.rope.factor) + 1.0;
    scale = scale * mscale * mscale;
  }
  return static_cast<float>(scale);
}

}  // namespace ic
