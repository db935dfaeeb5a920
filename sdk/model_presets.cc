// Benchmark presets and the fast synthetic initialisation (model_presets.h).
#include "sdk/model_presets.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kernels/backend.h"
#include "sdk/plan.h"
#include "sdk/synthetic_model.h"
#include "sdk/status.h"

namespace ic {
namespace {

// The HF config.json values of tests/data/reference/ (the reference files keep their provenance).
constexpr const char* kGlm47FlashDsa = R"({
  "architectures": ["GlmMoeDsaForCausalLM"], "model_type": "glm_moe_dsa",
  "vocab_size": 154880, "hidden_size": 2048, "intermediate_size": 10240, "moe_intermediate_size": 1536,
  "num_hidden_layers": 47, "num_attention_heads": 20, "num_key_value_heads": 20,
  "n_shared_experts": 1, "n_routed_experts": 64, "routed_scaling_factor": 1.8,
  "kv_lora_rank": 512, "q_lora_rank": 768, "qk_rope_head_dim": 64, "qk_nope_head_dim": 192, "v_head_dim": 256,
  "n_group": 1, "topk_group": 1, "num_experts_per_tok": 4, "norm_topk_prob": true, "first_k_dense_replace": 1,
  "hidden_act": "silu", "max_position_embeddings": 202752, "rms_norm_eps": 1e-05, "tie_word_embeddings": false,
  "index_n_heads": 32, "index_head_dim": 128, "index_topk": 2048, "indexer_rope_interleave": true,
  "rope_theta": 1000000
})";

constexpr const char* kDeepseekV32 = R"({
  "architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32",
  "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
  "num_hidden_layers": 61, "num_nextn_predict_layers": 1, "num_attention_heads": 128, "num_key_value_heads": 128,
  "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5,
  "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
  "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8, "norm_topk_prob": true, "scoring_func": "sigmoid",
  "topk_method": "noaux_tc", "first_k_dense_replace": 3, "hidden_act": "silu", "max_position_embeddings": 163840,
  "rms_norm_eps": 1e-06, "rope_theta": 10000,
  "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                   "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
  "tie_word_embeddings": false, "index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048
})";

constexpr const char* kGlm5 = R"({
  "architectures": ["GlmMoeDsaForCausalLM"], "model_type": "glm_moe_dsa",
  "vocab_size": 154880, "hidden_size": 6144, "intermediate_size": 12288, "moe_intermediate_size": 2048,
  "num_hidden_layers": 78, "num_nextn_predict_layers": 1, "num_attention_heads": 64, "num_key_value_heads": 64,
  "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5,
  "kv_lora_rank": 512, "q_lora_rank": 2048, "qk_rope_head_dim": 64, "qk_nope_head_dim": 192, "v_head_dim": 256,
  "n_group": 1, "topk_group": 1, "num_experts_per_tok": 8, "norm_topk_prob": true, "first_k_dense_replace": 3,
  "hidden_act": "silu", "max_position_embeddings": 202752, "rms_norm_eps": 1e-05, "tie_word_embeddings": false,
  "index_n_heads": 32, "index_head_dim": 128, "index_topk": 2048, "indexer_rope_interleave": true
})";

// Small enough for CPU tests (a few MB), with the GLM layout of the 30B preset.
constexpr const char* kTinyDsa = R"({
  "architectures": ["GlmMoeDsaForCausalLM"], "model_type": "glm_moe_dsa",
  "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
  "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 4,
  "n_shared_experts": 1, "n_routed_experts": 8, "routed_scaling_factor": 1.8,
  "kv_lora_rank": 64, "q_lora_rank": 128, "qk_rope_head_dim": 16, "qk_nope_head_dim": 32, "v_head_dim": 32,
  "n_group": 1, "topk_group": 1, "num_experts_per_tok": 2, "norm_topk_prob": true, "first_k_dense_replace": 1,
  "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "tie_word_embeddings": false,
  "index_n_heads": 4, "index_head_dim": 32, "index_topk": 64, "indexer_rope_interleave": true,
  "rope_theta": 1000000
})";

struct Preset {
  const char* name;
  const char* description;
  const char* json;
};

constexpr Preset kPresets[] = {
    {"glm-4.7-flash-dsa", "the paper's 30B DSA model (GLM-4.7-Flash + indexer 32x128, top-k 2048), 47 layers",
     kGlm47FlashDsa},
    {"deepseek-v3.2", "DeepSeek-V3.2 (671B), 61 layers", kDeepseekV32},
    {"glm-5", "GLM-5 (744B), 78 layers", kGlm5},
    {"tiny-dsa", "a small GLM-layout DSA model for tests (8 layers, hidden 256)", kTinyDsa},
};

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The tensors of a model in creation order; each gets its own generator stream.
class FastInit {
 public:
  FastInit(uint64_t seed, int threads) : seed_(seed), threads_(threads) {}
  HostTensor Normal(int64_t rows, int64_t cols, double std) {
    HostTensor t;
    t.shape = cols ? std::vector<int64_t>{rows, cols} : std::vector<int64_t>{rows};
    t.data.resize(static_cast<size_t>(rows * (cols ? cols : 1)));
    FillNormal(t.data, seed_, stream_++, static_cast<float>(std), threads_);
    return t;
  }
  HostTensor Linear(int64_t out, int64_t in, double gain = 1.0) { return Normal(out, in, gain / std::sqrt(in)); }
  HostTensor NormWeight(int64_t n) {
    HostTensor t = Normal(n, 0, 0.1);
    for (float& v : t.data) v += 1.0f;
    return t;
  }
  MlpWeights Mlp(int hidden, int inter) {
    return {Linear(inter, hidden), Linear(inter, hidden), Linear(hidden, inter, 0.3)};
  }

 private:
  uint64_t seed_;
  uint64_t stream_ = 0;
  int threads_;
};

int ResolveThreads(int threads) {
  if (threads > 0) return threads;
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

std::vector<PresetInfo> ListPresets() {
  std::vector<PresetInfo> out;
  for (const Preset& p : kPresets) out.push_back({p.name, p.description});
  return out;
}

absl::StatusOr<ModelConfig> PresetConfig(const std::string& name) {
  for (const Preset& p : kPresets) {
    if (name == p.name) return ParseModelConfig(p.json);
  }
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.push_back(p.name);
  return InvalidArgument("unknown preset '", name, "'; valid presets: ", absl::StrJoin(names, ", "));
}

void FillNormal(std::span<float> out, uint64_t seed, uint64_t stream, float std, int threads, uint64_t offset) {
  const uint64_t key = SplitMix64(seed ^ SplitMix64(stream + 0x632BE59BD9B4E019ull));
  auto fill = [&](size_t begin, size_t end) {
    constexpr double kTwoPi = 6.283185307179586;
    for (size_t i = begin; i < end; ++i) {
      const uint64_t r = SplitMix64(key + offset + i);
      // Two 32-bit uniforms; u1 in (0, 1] so that log(u1) is finite.
      const double u1 = (static_cast<double>(r >> 32) + 1.0) * (1.0 / 4294967296.0);
      const double u2 = static_cast<double>(r & 0xFFFFFFFFull) * (1.0 / 4294967296.0);
      out[i] = static_cast<float>(std * std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2));
    }
  };
  const size_t n = out.size();
  const int t = static_cast<int>(std::min<size_t>(ResolveThreads(threads), std::max<size_t>(n / 65536, 1)));
  if (t <= 1) {
    fill(0, n);
    return;
  }
  std::vector<std::thread> pool;
  for (int k = 0; k < t; ++k) pool.emplace_back(fill, n * k / t, n * (k + 1) / t);
  for (std::thread& th : pool) th.join();
}

int64_t SyntheticParamCount(const ModelConfig& c) {
  const int64_t H = c.hidden_size, NH = c.num_attention_heads;
  int64_t n = c.vocab_size * H * (c.tie_word_embeddings ? 1 : 2) + H;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    n += 2 * H;
    if (c.mla) {
      n += c.q_lora_rank * H + c.q_lora_rank + NH * c.qk_head_dim() * c.q_lora_rank;
      n += (c.kv_lora_rank + c.qk_rope_head_dim) * H + c.kv_lora_rank;
      n += NH * (c.qk_nope_head_dim + c.v_head_dim) * c.kv_lora_rank + H * NH * c.v_head_dim;
    } else {
      n += NH * c.head_dim * H + 2 * c.num_key_value_heads * c.head_dim * H + H * NH * c.head_dim;
    }
    if (c.has_indexer) {
      const int64_t q_in = c.mla ? c.q_lora_rank : H;
      n += int64_t{c.index_n_heads} * c.index_head_dim * q_in + c.index_head_dim * H + 2 * c.index_head_dim +
           c.index_n_heads * H;
    }
    if (c.moe_layer[i]) {
      n += c.n_routed_experts * H + c.n_routed_experts;
      n += int64_t{c.n_routed_experts} * 3 * H * c.moe_intermediate_size;
      if (c.n_shared_experts > 0) n += 3 * H * int64_t{c.n_shared_experts} * c.moe_intermediate_size;
    } else {
      n += 3 * H * int64_t{c.intermediate_size};
    }
  }
  return n;
}

absl::StatusOr<std::shared_ptr<const Model>> BuildFastSyntheticModel(const ModelConfig& config,
                                                                     const FastInitOptions& o) {
  const ModelConfig& c = config;
  if (c.num_hidden_layers < 1 || static_cast<int>(c.moe_layer.size()) != c.num_hidden_layers) {
    return InvalidArgument("synthetic model: num_hidden_layers ", c.num_hidden_layers, " and moe_layer (",
                           c.moe_layer.size(), " entries) must agree and be ≥ 1");
  }
  const int64_t H = c.hidden_size;
  const int64_t largest = std::max({int64_t{c.vocab_size} * H, int64_t{c.intermediate_size} * H,
                                    int64_t{c.index_n_heads} * c.index_head_dim * std::max<int64_t>(c.q_lora_rank, H),
                                    int64_t{c.num_attention_heads} * c.qk_head_dim() * std::max<int64_t>(c.q_lora_rank, H)});
  if (largest > std::numeric_limits<int32_t>::max()) {
    return InvalidArgument("synthetic model: a tensor of ", largest, " values is too large (at most 2^31 - 1)");
  }
  const double bytes = 4.0 * static_cast<double>(SyntheticParamCount(c));
  // The host's available memory (what the CPU backend reports), with 5% left for everything else.
  auto host = kernels::CreateBackend(kernels::DeviceKind::kCpu);
  if (host.ok()) {
    auto mem = (*host)->GetMemoryInfo();
    if (mem.ok() && bytes > 0.95 * static_cast<double>(mem->free_bytes)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "synthetic model: ", absl::StrFormat("%.2f", bytes / (1 << 30)), " GiB of F32 weights (", c.num_hidden_layers,
          " layers of hidden ", c.hidden_size, ") do not fit the host's available memory (",
          absl::StrFormat("%.2f", mem->free_bytes / double(1 << 30)), " GiB of ",
          absl::StrFormat("%.2f", mem->total_bytes / double(1 << 30)), " GiB)"));
    }
  }
  auto model = std::make_shared<Model>();
  model->config = c;
  FastInit init(o.seed, o.threads);
  ModelWeights& w = model->weights;
  w.embed_tokens = init.Normal(c.vocab_size, H, 1.0);
  w.final_norm = init.NormWeight(H);
  if (!c.tie_word_embeddings) w.lm_head = init.Linear(c.vocab_size, H, 1.0);
  w.layers.resize(c.num_hidden_layers);
  const int NH = c.num_attention_heads;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights& L = w.layers[i];
    L.input_norm = init.NormWeight(H);
    L.post_attention_norm = init.NormWeight(H);
    if (c.mla) {
      L.q_a_proj = init.Linear(c.q_lora_rank, H);
      L.q_a_norm = init.NormWeight(c.q_lora_rank);
      L.q_b_proj = init.Linear(int64_t{NH} * c.qk_head_dim(), c.q_lora_rank, 2.0);
      L.kv_a_proj = init.Linear(c.kv_lora_rank + c.qk_rope_head_dim, H, 2.0);
      L.kv_a_norm = init.NormWeight(c.kv_lora_rank);
      L.kv_b_proj = init.Linear(int64_t{NH} * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
      L.o_proj = init.Linear(H, int64_t{NH} * c.v_head_dim, 0.3);
    } else {
      L.q_proj = init.Linear(int64_t{NH} * c.head_dim, H, 2.0);
      L.k_proj = init.Linear(int64_t{c.num_key_value_heads} * c.head_dim, H, 2.0);
      L.v_proj = init.Linear(int64_t{c.num_key_value_heads} * c.head_dim, H);
      L.o_proj = init.Linear(H, int64_t{NH} * c.head_dim, 0.3);
    }
    if (c.has_indexer) {
      IndexerWeights& ix = L.indexer;
      ix.wq = init.Linear(int64_t{c.index_n_heads} * c.index_head_dim, c.mla ? c.q_lora_rank : H, 2.0);
      ix.wk = init.Linear(c.index_head_dim, H, 2.0);
      ix.k_norm_weight = init.NormWeight(c.index_head_dim);
      ix.k_norm_bias = init.Normal(c.index_head_dim, 0, 0.1);
      ix.weights_proj = init.Linear(c.index_n_heads, H, 4.0);
      ix.any_present = true;
    }
    L.is_moe = c.moe_layer[i];
    if (L.is_moe) {
      L.moe.router = init.Linear(c.n_routed_experts, H, 4.0);
      L.moe.correction_bias = init.Normal(c.n_routed_experts, 0, 0.05);
      L.moe.experts.reserve(c.n_routed_experts);
      for (int e = 0; e < c.n_routed_experts; ++e) L.moe.experts.push_back(init.Mlp(H, c.moe_intermediate_size));
      if (c.n_shared_experts > 0) L.moe.shared = init.Mlp(H, c.n_shared_experts * c.moe_intermediate_size);
    } else {
      L.mlp = init.Mlp(H, c.intermediate_size);
    }
  }
  IC_ASSIGN_OR_RETURN(model->plan, SyntheticPlan(o.plan, c.num_hidden_layers));
  model->path = "";
  return std::shared_ptr<const Model>(std::move(model));
}

}  // namespace ic
