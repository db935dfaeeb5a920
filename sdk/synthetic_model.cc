// The embedded default model (synthetic_model.h).
#include "sdk/synthetic_model.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "sdk/safetensors.h"
#include "sdk/status.h"

namespace ic {
namespace {

class Init {
 public:
  explicit Init(uint64_t seed) : rng_(seed) {}
  // N(0, std²) values, shape [rows, cols] (cols == 0: a vector).
  HostTensor Normal(int64_t rows, int64_t cols, double std) {
    HostTensor t;
    t.shape = cols ? std::vector<int64_t>{rows, cols} : std::vector<int64_t>{rows};
    t.data.resize(static_cast<size_t>(rows * (cols ? cols : 1)));
    std::normal_distribution<float> d(0.0f, static_cast<float>(std));
    for (float& v : t.data) v = d(rng_);
    return t;
  }
  // y = x·Wᵀ keeps unit variance with std = in^-½.
  HostTensor Linear(int64_t out, int64_t in, double gain = 1.0) { return Normal(out, in, gain / std::sqrt(in)); }
  HostTensor Constant(int64_t n, float value) {
    HostTensor t;
    t.shape = {n};
    t.data.assign(static_cast<size_t>(n), value);
    return t;
  }
  // Norm weights near 1, so that a wrong norm shows in the tests.
  HostTensor NormWeight(int64_t n) {
    HostTensor t = Normal(n, 0, 0.1);
    for (float& v : t.data) v += 1.0f;
    return t;
  }

 private:
  std::mt19937_64 rng_;
};

MlpWeights MakeMlp(Init& init, int hidden, int inter) {
  // A small down projection keeps the residual stream (and so each layer's top-k) stable across layers.
  return {init.Linear(inter, hidden), init.Linear(inter, hidden), init.Linear(hidden, inter, 0.3)};
}

ModelConfig MakeConfig(const SyntheticModelOptions& o) {
  ModelConfig c;
  c.arch = o.arch;
  c.vocab_size = o.vocab_size;
  c.hidden_size = o.hidden_size;
  c.num_hidden_layers = o.num_layers;
  c.intermediate_size = 2 * o.hidden_size;
  c.rms_norm_eps = 1e-6;
  c.max_position_embeddings = o.max_position_embeddings;
  c.bos_token_id = 0;
  c.eos_token_id = 1;
  c.rope.theta = 10000.0;
  const bool mla = o.arch == Architecture::kDeepseekV32 || o.arch == Architecture::kGlmMoeDsa;
  c.mla = mla;
  c.num_attention_heads = 8;
  if (mla) {
    c.model_type = o.arch == Architecture::kDeepseekV32 ? "deepseek_v32" : "glm_moe_dsa";
    c.num_key_value_heads = 8;
    c.q_lora_rank = o.hidden_size / 2;
    c.kv_lora_rank = o.hidden_size / 4;
    c.qk_nope_head_dim = 32;
    c.qk_rope_head_dim = 16;
    c.v_head_dim = 32;
    c.head_dim = c.qk_rope_head_dim;
    c.n_routed_experts = 8;
    c.num_experts_per_tok = 2;
    c.n_shared_experts = 1;
    c.moe_intermediate_size = o.hidden_size / 2;
    c.n_group = 2;
    c.topk_group = 1;
    c.first_k_dense_replace = 1;
    c.routed_scaling_factor = 2.5;
    c.norm_topk_prob = true;
    c.moe_layer.resize(o.num_layers);
    for (int i = 0; i < o.num_layers; ++i) c.moe_layer[i] = i >= c.first_k_dense_replace;
    c.has_indexer = true;
    c.index_rope_head_dim = c.qk_rope_head_dim;
    c.indexer_rope_interleave = o.arch == Architecture::kGlmMoeDsa;
  } else {
    c.model_type = o.arch == Architecture::kLlamaDsa ? "llama_dsa" : "llama";
    c.num_key_value_heads = 2;
    c.head_dim = o.hidden_size / c.num_attention_heads;
    c.tie_word_embeddings = true;
    c.has_indexer = o.arch == Architecture::kLlamaDsa;
    c.index_rope_head_dim = o.index_head_dim / 2;
    c.moe_layer.assign(o.num_layers, false);
  }
  if (c.has_indexer) {
    c.index_n_heads = o.index_n_heads;
    c.index_head_dim = o.index_head_dim;
    c.index_topk = o.index_topk;
  }
  return c;
}

}  // namespace

absl::StatusOr<Plan> SyntheticPlan(const std::string& pattern, int num_layers) {
  Plan plan;
  if (pattern.empty()) {
    plan.layers.assign(num_layers, LayerKind::kFull);
    plan.source = "synthetic (all Full)";
    return plan;
  }
  IC_ASSIGN_OR_RETURN(plan, ParsePlan(pattern, num_layers));
  plan.source = "synthetic";
  return plan;
}

absl::StatusOr<std::shared_ptr<const Model>> BuildSyntheticModel(const SyntheticModelOptions& o) {
  if (o.num_layers < 1 || o.hidden_size < 64 || o.hidden_size % 64 != 0 || o.vocab_size < 2 ||
      o.index_topk < 1 || o.index_n_heads < 1 || o.index_head_dim < 2 || o.index_head_dim % 2 != 0) {
    return InvalidArgument("synthetic model: layers ≥ 1, hidden a positive multiple of 64, vocab ≥ 2, ",
                           "index_topk ≥ 1, index heads ≥ 1, even index_head_dim required; got layers=",
                           o.num_layers, " hidden=", o.hidden_size, " vocab=", o.vocab_size, " index_topk=",
                           o.index_topk, " index_n_heads=", o.index_n_heads, " index_head_dim=", o.index_head_dim);
  }
  // Every tensor is sized from these in int arithmetic and built in host memory: the largest products must
  // fit in int32, and the whole model in host memory, else huge values overflow or abort on allocation.
  const double kMaxElements = std::numeric_limits<int32_t>::max();
  const double hidden = o.hidden_size, ix = static_cast<double>(o.index_n_heads) * o.index_head_dim;
  const struct {
    const char* what;
    double value;
  } products[] = {
      {"vocab_size * hidden_size", static_cast<double>(o.vocab_size) * hidden},
      {"2 * hidden_size * hidden_size (MLP)", 2 * hidden * hidden},
      {"index_n_heads * index_head_dim * hidden_size (indexer wq)", ix * hidden},
  };
  for (const auto& p : products) {
    if (p.value > kMaxElements) {
      return InvalidArgument("synthetic model: ", p.what, " = ", p.value, " values is too large (at most ",
                             kMaxElements, " per tensor)");
    }
  }
  // About 16·H² + 3·index_n_heads·index_head_dim·H values per layer (MoE layers dominate), F32.
  const double bytes =
      4.0 * (o.num_layers * (16 * hidden * hidden + 3 * ix * hidden + 1024 * hidden) + 2.0 * o.vocab_size * hidden);
  const double physical = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
  if (physical > 0 && bytes > physical) {
    return absl::ResourceExhaustedError(absl::StrCat("synthetic model: about ", bytes, " bytes of weights for ",
                                                     o.num_layers, " layers of hidden ", o.hidden_size,
                                                     " exceed the host's memory (", physical, " bytes)"));
  }
  const bool mla = o.arch == Architecture::kDeepseekV32 || o.arch == Architecture::kGlmMoeDsa;
  if (mla && o.index_head_dim < 16) {
    return InvalidArgument("synthetic model: index_head_dim must be ≥ qk_rope_head_dim (16) for MLA models, got ",
                           o.index_head_dim);
  }
  auto model = std::make_shared<Model>();
  ModelConfig& c = model->config;
  c = MakeConfig(o);
  Init init(o.seed);
  ModelWeights& w = model->weights;
  const int H = c.hidden_size;
  w.embed_tokens = init.Normal(c.vocab_size, H, 1.0);
  w.final_norm = init.NormWeight(H);
  if (!c.tie_word_embeddings) w.lm_head = init.Linear(c.vocab_size, H, 1.0);
  // Real DSA models select similar tokens in adjacent layers (IndexCache, Appendix A: overlap 0.7–1.0).
  // The synthetic indexers share a base projection plus per-layer noise to mimic that.
  struct { HostTensor wq, wk, weights_proj, wq_a; } base;
  if (c.has_indexer) {
    base.wq = init.Linear(c.index_n_heads * c.index_head_dim, c.mla ? c.q_lora_rank : H, 2.0);
    base.wk = init.Linear(c.index_head_dim, H, 2.0);
    base.weights_proj = init.Linear(c.index_n_heads, H, 4.0);
    if (c.mla) base.wq_a = init.Linear(c.q_lora_rank, H);  // the indexer's query input is q_latent
  }
  auto near_base = [&](const HostTensor& b, double rel_noise) {
    HostTensor t = init.Normal(b.shape[0], b.shape.size() > 1 ? b.shape[1] : 0, 1.0);
    const double in = b.shape.size() > 1 ? static_cast<double>(b.shape[1]) : 1.0;
    for (size_t i = 0; i < t.data.size(); ++i) {
      t.data[i] = b.data[i] + static_cast<float>(rel_noise * 2.0 / std::sqrt(in)) * t.data[i];
    }
    return t;
  };
  w.layers.resize(c.num_hidden_layers);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights& L = w.layers[i];
    L.input_norm = init.NormWeight(H);
    L.post_attention_norm = init.NormWeight(H);
    const int NH = c.num_attention_heads;
    if (c.mla) {
      L.q_a_proj = c.has_indexer ? near_base(base.wq_a, 0.1) : init.Linear(c.q_lora_rank, H);
      L.q_a_norm = init.NormWeight(c.q_lora_rank);
      L.q_b_proj = init.Linear(NH * c.qk_head_dim(), c.q_lora_rank, 2.0);
      L.kv_a_proj = init.Linear(c.kv_lora_rank + c.qk_rope_head_dim, H, 2.0);
      L.kv_a_norm = init.NormWeight(c.kv_lora_rank);
      L.kv_b_proj = init.Linear(NH * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
      L.o_proj = init.Linear(H, NH * c.v_head_dim, 0.3);
    } else {
      L.q_proj = init.Linear(NH * c.head_dim, H, 2.0);
      L.k_proj = init.Linear(c.num_key_value_heads * c.head_dim, H, 2.0);
      L.v_proj = init.Linear(c.num_key_value_heads * c.head_dim, H);
      L.o_proj = init.Linear(H, NH * c.head_dim, 0.3);
    }
    if (c.has_indexer) {
      IndexerWeights& ix = L.indexer;
      ix.wq = near_base(base.wq, 0.1);
      ix.wk = near_base(base.wk, 0.1);
      ix.k_norm_weight = init.NormWeight(c.index_head_dim);
      ix.k_norm_bias = init.Normal(c.index_head_dim, 0, 0.1);
      ix.weights_proj = near_base(base.weights_proj, 0.1);
      ix.any_present = true;
    }
    L.is_moe = c.moe_layer[i];
    if (L.is_moe) {
      L.moe.router = init.Linear(c.n_routed_experts, H, 4.0);
      L.moe.correction_bias = init.Normal(c.n_routed_experts, 0, 0.05);
      for (int e = 0; e < c.n_routed_experts; ++e) L.moe.experts.push_back(MakeMlp(init, H, c.moe_intermediate_size));
      L.moe.shared = MakeMlp(init, H, c.n_shared_experts * c.moe_intermediate_size);
    } else {
      L.mlp = MakeMlp(init, H, c.intermediate_size);
    }
  }
  IC_ASSIGN_OR_RETURN(model->plan, SyntheticPlan(o.plan, c.num_hidden_layers));
  if (c.has_indexer) {
    c.indexer_types.emplace();
    for (LayerKind k : model->plan.layers) c.indexer_types->push_back(k == LayerKind::kFull ? "full" : "shared");
  }
  model->path = "";
  return std::shared_ptr<const Model>(std::move(model));
}

absl::Status SaveModel(const Model& model, const std::string& dir, bool drop_shared_indexers) {
  const ModelConfig& c = model.config;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  std::vector<TensorToWrite> out;
  auto add = [&](const std::string& name, const HostTensor& t) {
    if (t.empty()) return;
    TensorToWrite w;
    w.name = name;
    w.shape = t.shape;
    w.data = t.data;
    out.push_back(std::move(w));
  };
  auto add_mlp = [&](const std::string& p, const MlpWeights& m) {
    add(p + "gate_proj.weight", m.gate);
    add(p + "up_proj.weight", m.up);
    add(p + "down_proj.weight", m.down);
  };
  const ModelWeights& w = model.weights;
  add("model.embed_tokens.weight", w.embed_tokens);
  add("model.norm.weight", w.final_norm);
  add("lm_head.weight", w.lm_head);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const LayerWeights& L = w.layers[i];
    const std::string p = LayerPrefix(i), a = p + "self_attn.";
    add(p + "input_layernorm.weight", L.input_norm);
    add(p + "post_attention_layernorm.weight", L.post_attention_norm);
    add(a + "q_proj.weight", L.q_proj);
    add(a + "k_proj.weight", L.k_proj);
    add(a + "v_proj.weight", L.v_proj);
    add(a + "q_a_proj.weight", L.q_a_proj);
    add(a + "q_a_layernorm.weight", L.q_a_norm);
    add(a + "q_b_proj.weight", L.q_b_proj);
    add(a + "kv_a_proj_with_mqa.weight", L.kv_a_proj);
    add(a + "kv_a_layernorm.weight", L.kv_a_norm);
    add(a + "kv_b_proj.weight", L.kv_b_proj);
    add(a + "o_proj.weight", L.o_proj);
    const bool keep_indexer = !(drop_shared_indexers && !model.plan.IsFull(i));
    if (c.has_indexer && keep_indexer) {
      const std::string x = a + "indexer.";
      add(x + (c.mla ? "wq_b.weight" : "wq.weight"), L.indexer.wq);
      add(x + "wk.weight", L.indexer.wk);
      add(x + "k_norm.weight", L.indexer.k_norm_weight);
      add(x + "k_norm.bias", L.indexer.k_norm_bias);
      add(x + "weights_proj.weight", L.indexer.weights_proj);
    }
    if (L.is_moe) {
      add(p + "mlp.gate.weight", L.moe.router);
      add(p + "mlp.gate.e_score_correction_bias", L.moe.correction_bias);
      for (size_t e = 0; e < L.moe.experts.size(); ++e) {
        add_mlp(absl::StrCat(p, "mlp.experts.", e, "."), L.moe.experts[e]);
      }
      if (L.moe.shared) add_mlp(p + "mlp.shared_experts.", *L.moe.shared);
    } else {
      add_mlp(p + "mlp.", L.mlp);
    }
  }
  IC_RETURN_IF_ERROR(WriteSafetensors(dir + "/model.safetensors", out, {{"format", "pt"}}));
  ModelConfig saved = c;
  if (c.has_indexer) {
    saved.indexer_types.emplace();
    for (LayerKind k : model.plan.layers) saved.indexer_types->push_back(k == LayerKind::kFull ? "full" : "shared");
  }
  std::ofstream f(dir + "/config.json");
  f << ModelConfigToJson(saved);
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", dir, "/config.json"));
  return absl::OkStatus();
}

}  // namespace ic
