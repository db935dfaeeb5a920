// Maps checkpoint tensors (HF names) onto ModelWeights; see weights.h.
#include "sdk/weights.h"

#include <charconv>
#include <cmath>
#include <map>
#include <string_view>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "sdk/safetensors.h"
#include "sdk/status.h"

namespace ic {
namespace {

enum class Need { kRequired, kOptional, kIndexer };

struct Slot {
  HostTensor* dst;
  std::vector<int64_t> shape;
  Need need;
  IndexerWeights* indexer = nullptr;  // for kIndexer
  bool found = false;
};

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

class SlotTable {
 public:
  void Add(std::string name, HostTensor* dst, std::vector<int64_t> shape, Need need = Need::kRequired,
           IndexerWeights* indexer = nullptr) {
    slots_.emplace(std::move(name), Slot{dst, std::move(shape), need, indexer});
  }
  void AddMlp(const std::string& prefix, MlpWeights* mlp, int64_t hidden, int64_t inter) {
    Add(prefix + "gate_proj.weight", &mlp->gate, {inter, hidden});
    Add(prefix + "up_proj.weight", &mlp->up, {inter, hidden});
    Add(prefix + "down_proj.weight", &mlp->down, {hidden, inter});
  }
  std::map<std::string, Slot, std::less<>>& slots() { return slots_; }

 private:
  std::map<std::string, Slot, std::less<>> slots_;
};

// Layer index of "model.layers.<i>.…", or -1.
int LayerIndexOf(std::string_view name) {
  constexpr std::string_view kPrefix = "model.layers.";
  if (!name.starts_with(kPrefix)) return -1;
  name.remove_prefix(kPrefix.size());
  const size_t dot = name.find('.');
  int index = -1;
  if (dot == std::string_view::npos) return -1;
  auto [end, ec] = std::from_chars(name.data(), name.data() + dot, index);
  if (ec != std::errc() || end != name.data() + dot) return -1;
  return index;
}

// Tensors that carry no weights we use but are legitimately present.
bool IsIgnorable(std::string_view name) {
  return name.ends_with("rotary_emb.inv_freq") || name.ends_with("_scale_inv");
}

// The names MapWeights requires (Need::kRequired), in checkpoint order, until `visit` returns false.
// Returns false when stopped early.
template <typename Visit>
bool ForEachRequiredName(const ModelConfig& c, Visit&& visit) {
  if (!visit(std::string("model.embed_tokens.weight")) || !visit(std::string("model.norm.weight"))) return false;
  if (!c.tie_word_embeddings && !visit(std::string("lm_head.weight"))) return false;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = LayerPrefix(i), a = p + "self_attn.";
    std::vector<std::string> names = {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"};
    if (c.mla) {
      for (const char* n : {"q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight",
                            "kv_a_layernorm.weight", "kv_b_proj.weight", "o_proj.weight"}) {
        names.push_back(a + n);
      }
    } else {
      for (const char* n : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}) names.push_back(a + n);
    }
    const bool moe = i < static_cast<int>(c.moe_layer.size()) && c.moe_layer[i];
    const std::string m = p + "mlp.";
    auto mlp = [&](const std::string& prefix) {
      for (const char* n : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) names.push_back(prefix + n);
    };
    if (moe) {
      names.push_back(m + "gate.weight");
      if (c.n_shared_experts > 0) mlp(m + "shared_experts.");
    } else {
      mlp(m);
    }
    for (const std::string& n : names) {
      if (!visit(n)) return false;
    }
    for (int e = 0; moe && e < c.n_routed_experts; ++e) {
      const std::string x = absl::StrCat(m, "experts.", e, ".");
      for (const char* n : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) {
        if (!visit(x + n)) return false;
      }
    }
  }
  return true;
}

// The config sizes the slot table (layers × experts) before any tensor is looked at: a config.json that
// claims 2^31 layers or experts would exhaust memory (or run for hours) building it. When the config
// requires more tensors than the checkpoint holds, one of the first (held + 1) required names is missing;
// name it in O(held) time and memory instead.
absl::Status CheckRequiredTensorCount(const ModelConfig& c, const TensorStore& store) {
  int64_t required = c.tie_word_embeddings ? 2 : 3;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const bool moe = i < static_cast<int>(c.moe_layer.size()) && c.moe_layer[i];
    required += 2 + (c.mla ? 7 : 4) + (moe ? 1 + 3 * int64_t{c.n_routed_experts} + (c.n_shared_experts > 0 ? 3 : 0) : 3);
  }
  const int64_t held = static_cast<int64_t>(store.tensors().size());
  if (required <= held) return absl::OkStatus();
  std::string missing;
  ForEachRequiredName(c, [&](const std::string& name) {
    if (store.Find(name) != nullptr) return true;
    missing = name;
    return false;
  });
  return InvalidArgument("checkpoint lacks tensor \"", missing, "\" (the config requires ", required,
                         " tensors; the checkpoint holds ", held, ")");
}

}  // namespace

std::string LayerPrefix(int layer) { return absl::StrCat("model.layers.", layer, "."); }

absl::StatusOr<ModelWeights> MapWeights(const ModelConfig& c, const TensorStore& store) {
  IC_RETURN_IF_ERROR(CheckRequiredTensorCount(c, store));
  ModelWeights w;
  const int64_t hidden = c.hidden_size;
  SlotTable table;
  table.Add("model.embed_tokens.weight", &w.embed_tokens, {c.vocab_size, hidden});
  table.Add("model.norm.weight", &w.final_norm, {hidden});
  table.Add("lm_head.weight", &w.lm_head, {c.vocab_size, hidden},
            c.tie_word_embeddings ? Need::kOptional : Need::kRequired);

  w.layers.resize(c.num_hidden_layers);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights& L = w.layers[i];
    const std::string p = LayerPrefix(i);
    table.Add(p + "input_layernorm.weight", &L.input_norm, {hidden});
    table.Add(p + "post_attention_layernorm.weight", &L.post_attention_norm, {hidden});
    const std::string a = p + "self_attn.";
    if (c.mla) {
      const int64_t h = c.num_attention_heads;
      table.Add(a + "q_a_proj.weight", &L.q_a_proj, {c.q_lora_rank, hidden});
      table.Add(a + "q_a_layernorm.weight", &L.q_a_norm, {c.q_lora_rank});
      table.Add(a + "q_b_proj.weight", &L.q_b_proj, {h * c.qk_head_dim(), c.q_lora_rank});
      table.Add(a + "kv_a_proj_with_mqa.weight", &L.kv_a_proj, {c.kv_lora_rank + c.qk_rope_head_dim, hidden});
      table.Add(a + "kv_a_layernorm.weight", &L.kv_a_norm, {c.kv_lora_rank});
      table.Add(a + "kv_b_proj.weight", &L.kv_b_proj, {h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
      table.Add(a + "o_proj.weight", &L.o_proj, {hidden, h * c.v_head_dim});
    } else {
      table.Add(a + "q_proj.weight", &L.q_proj, {int64_t{c.num_attention_heads} * c.head_dim, hidden});
      table.Add(a + "k_proj.weight", &L.k_proj, {int64_t{c.num_key_value_heads} * c.head_dim, hidden});
      table.Add(a + "v_proj.weight", &L.v_proj, {int64_t{c.num_key_value_heads} * c.head_dim, hidden});
      table.Add(a + "o_proj.weight", &L.o_proj, {hidden, int64_t{c.num_attention_heads} * c.head_dim});
    }
    if (c.has_indexer) {
      const std::string x = a + "indexer.";
      const int64_t q_in = c.mla ? c.q_lora_rank : hidden;
      IndexerWeights* ix = &L.indexer;
      table.Add(x + (c.mla ? "wq_b.weight" : "wq.weight"), &ix->wq,
                {int64_t{c.index_n_heads} * c.index_head_dim, q_in}, Need::kIndexer, ix);
      table.Add(x + "wk.weight", &ix->wk, {c.index_head_dim, hidden}, Need::kIndexer, ix);
      table.Add(x + "k_norm.weight", &ix->k_norm_weight, {c.index_head_dim}, Need::kIndexer, ix);
      table.Add(x + "k_norm.bias", &ix->k_norm_bias, {c.index_head_dim}, Need::kIndexer, ix);
      table.Add(x + "weights_proj.weight", &ix->weights_proj, {c.index_n_heads, hidden}, Need::kIndexer, ix);
    }
    L.is_moe = i < static_cast<int>(c.moe_layer.size()) && c.moe_layer[i];
    if (L.is_moe) {
      const std::string m = p + "mlp.";
      table.Add(m + "gate.weight", &L.moe.router, {c.n_routed_experts, hidden});
      table.Add(m + "gate.e_score_correction_bias", &L.moe.correction_bias, {c.n_routed_experts},
                Need::kOptional);
      L.moe.experts.resize(c.n_routed_experts);
      for (int e = 0; e < c.n_routed_experts; ++e) {
        table.AddMlp(absl::StrCat(m, "experts.", e, "."), &L.moe.experts[e], hidden, c.moe_intermediate_size);
      }
      if (c.n_shared_experts > 0) {
        L.moe.shared.emplace();
        table.AddMlp(m + "shared_experts.", &*L.moe.shared, hidden,
                     int64_t{c.n_shared_experts} * c.moe_intermediate_size);
      }
    } else {
      table.AddMlp(p + "mlp.", &L.mlp, hidden, c.intermediate_size);
    }
  }

  for (const auto& [name, info] : store.tensors()) {
    auto it = table.slots().find(name);
    if (it == table.slots().end()) {
      const int layer = LayerIndexOf(name);
      if (layer >= c.num_hidden_layers || IsIgnorable(name)) continue;  // MTP layers, scales
      if (!c.has_indexer && name.find(".indexer.") != std::string::npos) {
        return InvalidArgument("tensor \"", name, "\" in ", info.file, ": the config (",
                               std::string(ArchitectureName(c.arch)), ") has no indexer");
      }
      return InvalidArgument("unknown tensor \"", name, "\" in ", info.file, " for ",
                             std::string(ArchitectureName(c.arch)));
    }
    Slot& slot = it->second;
    if (info.shape != slot.shape) {
      return InvalidArgument("tensor \"", name, "\" in ", info.file, " has shape ", ShapeString(info.shape),
                             "; the config implies ", ShapeString(slot.shape));
    }
    IC_ASSIGN_OR_RETURN(slot.dst->data, store.ReadF32(info));
    // A weight that is inf or NaN poisons every logit downstream (silently, at every precision): refuse it.
    const std::vector<float>& v = slot.dst->data;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!std::isfinite(v[i])) {
        return InvalidArgument("tensor \"", name, "\" in ", info.file, " has a non-finite value (", v[i],
                               ") at flat index ", i);
      }
    }
    slot.dst->shape = slot.shape;
    slot.found = true;
    if (slot.indexer != nullptr) slot.indexer->any_present = true;
  }

  for (auto& [name, slot] : table.slots()) {
    if (slot.found) continue;
    if (slot.need == Need::kRequired) return InvalidArgument("checkpoint lacks tensor \"", name, "\"");
    if (slot.need == Need::kIndexer) slot.indexer->missing.push_back(name);
  }
  return w;
}

absl::Status CheckIndexersForPlan(const Model& model, const Plan& plan) {
  const ModelConfig& c = model.config;
  if (plan.num_layers() != c.num_hidden_layers) {
    return InvalidArgument("plan \"", plan.ToString(), "\" has ", plan.num_layers(), " layers; the model has ",
                           c.num_hidden_layers);
  }
  if (!c.has_indexer) return absl::OkStatus();
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    if (!plan.IsFull(i)) continue;
    const IndexerWeights& ix = model.weights.layers[i].indexer;
    if (!ix.missing.empty()) {
      return InvalidArgument("layer ", i, " is Full in plan ", plan.ToString(), " but the checkpoint lacks ",
                             ix.missing.front());
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const Model>> LoadModel(const std::string& model_dir,
                                                       const LoadOptions& options) {
  auto model = std::make_shared<Model>();
  model->path = model_dir;
  IC_ASSIGN_OR_RETURN(model->config, LoadModelConfig(model_dir));
  IC_ASSIGN_OR_RETURN(std::unique_ptr<TensorStore> store, TensorStore::Open(model_dir));
  IC_ASSIGN_OR_RETURN(model->weights, MapWeights(model->config, *store));
  if (!options.plan_file.empty()) {
    IC_ASSIGN_OR_RETURN(model->plan, LoadPlanFile(options.plan_file, model->config.num_hidden_layers));
  } else {
    IC_ASSIGN_OR_RETURN(model->plan, PlanFromConfig(model->config));
  }
  return std::shared_ptr<const Model>(std::move(model));
}

}  // namespace ic
