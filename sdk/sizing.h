// Deployment sizing: the bytes one rank holds for a model under attention tensor parallel (TP, the shard
// group) and expert parallel (EP, the expert group), as DESIGN.md §5 shards it, so a user can pick a
// layout before loading anything. Pure arithmetic on a ModelConfig (and optionally a Plan); no weights read.
//
//   IC_ASSIGN_OR_RETURN(ModelConfig c, LoadModelConfig("/models/dsv32"));
//   IC_ASSIGN_OR_RETURN(RankSizing s, ComputeRankSizing(c, {.tp = 8, .ep = 32, .context_tokens = 200000,
//                                                           .weights = WeightDType::kFP8}));
//   s.weight_bytes();      // what one rank holds of the weights
//   s.cache_bytes;         // KV + index-K cache at context_tokens
//
// Rules (what a rank holds; a "layer" is one of the num_hidden_layers main layers — MTP layers
// (num_nextn_predict_layers, tensors at index >= num_hidden_layers) are excluded: the engine skips them):
//   * embedding + LM head: vocab-parallel, rows split evenly across the TP group (sizes differing by at
//     most one); the LM head is absent when tie_word_embeddings. The final norm is replicated.
//     `embedding_split_by_tp = false` replicates them (what the engine does today, tensor_parallel.h).
//   * attention (MLA): q_b_proj and kv_b_proj rows and o_proj columns split by query heads across TP
//     (heads / tp per rank); q_a_proj, q_a_layernorm, kv_a_proj_with_mqa and kv_a_layernorm replicated
//     (they are not per head). q_lora_rank == 0: q_proj [heads·qk_head_dim, hidden] split by heads.
//     GQA: q_proj rows / o_proj columns split by heads; k_proj / v_proj split where tp divides the KV
//     heads, else one KV head per rank (tp a multiple of the KV heads), as tensor_parallel.h does.
//   * layer norms (input_layernorm, post_attention_layernorm) and the final norm: replicated ("norms").
//   * indexer: Full layers only (plan; nullptr = all Full), replicated inside the shard group: wq_b
//     (wq for Llama-DSA), wk, k_norm weight + bias, weights_proj.
//   * dense MLP (layers with moe_layer[i] false): intermediate dimension split evenly across TP.
//   * routed experts: n_routed_experts / ep whole experts per rank (the expert group = ep ranks; experts
//     are not TP-split inside). Independent of tp (ranks of one expert group may belong to different
//     data-parallel attention groups).
//   * shared experts: by default split by TP like the dense MLP (an always-active MLP of width
//     n_shared_experts·moe_intermediate_size); `shared_experts_split_by_tp = false` replicates them (what
//     the engine does today: tensor_parallel.h replicates every expert).
//   * router: gate.weight [n_routed_experts, hidden] and, for DeepseekV32 / GlmMoeDsa (noaux_tc routing),
//     gate.e_score_correction_bias [n_routed_experts]: replicated.
//
// Weight dtypes (bytes per tensor; `params` never counts scales):
//   * kBF16: 2 B/param for everything, except e_score_correction_bias: fp32 (4 B), as shipped.
//   * kFP8 (as DeepSeek ships, quantization_config weight_block_size [128, 128]): the linear weights of
//     attention (q_a, q_b, kv_a, kv_b, o / q, k, v, o), of the indexer (wq_b / wq, wk), of the dense MLP
//     and of the shared and routed experts (gate, up, down) are e4m3, 1 B/param, plus one fp32 scale
//     (4 B) per 128×128 block of the rank's shard: 4·(blocks its rows touch)·(blocks its columns touch),
//     blocks counted on the full tensor's grid (a block cut by a shard boundary is held by both ranks).
//     bf16 (2 B): embed_tokens, lm_head, every norm weight (and the indexer's k_norm bias), the router's
//     gate.weight, the indexer's weights_proj (stored bf16 in the checkpoint). fp32: e_score_correction_bias.
//
// Cache per token (per rank; all layers):
//   * KV (MLA latent, replicated inside the shard group): (kv_lora_rank + qk_rope_head_dim) values per
//     token per layer; kBF16: 2 B each; kFP8 (FlashMLA's DeepSeek-V3.2 layout): kv_lora_rank e4m3 bytes +
//     one fp32 scale per 128 latent values + the RoPE part in bf16 (656 B at 512 + 64).
//     GQA: K and V of the rank's KV heads, head_dim values each; kBF16 2 B, kFP8 1 B (no scales).
//   * index-K (Full layers only, replicated): kBF16 2·d_I; kFP8 d_I + 4 (e4m3 + fp32 scale: 132 B at 128).
//
// RankSizing reports each component as its maximum over the ranks of the group (ranks can differ by one
// row when a split is uneven); their sum is then an upper bound, exact whenever the splits are even (true
// for DeepSeek-V3.2 and GLM-5 at every layout where the heads divide).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "sdk/config.h"
#include "sdk/plan.h"

namespace ic {

enum class WeightDType { kBF16, kFP8 };
enum class IndexKDType { kBF16, kFP8 };
enum class KvDType { kBF16, kFP8 };

struct SizingOptions {
  int tp = 1;                  // attention tensor-parallel size (shard group)
  int ep = 1;                  // expert-parallel size (expert group)
  int64_t context_tokens = 0;  // KV-cache tokens per rank; 0 = report per-token bytes only
  WeightDType weights = WeightDType::kBF16;
  IndexKDType index_k = IndexKDType::kBF16;
  KvDType kv = KvDType::kBF16;
  const Plan* plan = nullptr;  // nullptr = all Full
  bool shared_experts_split_by_tp = true;  // false: replicated (the engine today)
  bool embedding_split_by_tp = true;       // false: replicated (the engine today)
};

// Parameters (elements, no scales) and bytes (incl. FP8 block scales) one rank holds of a component.
struct WeightPart {
  int64_t params = 0;
  int64_t bytes = 0;
  WeightPart& operator+=(const WeightPart& o) {
    params += o.params;
    bytes += o.bytes;
    return *this;
  }
};

struct RankSizing {
  int tp = 1, ep = 1;
  int num_layers = 0;        // main layers (MTP excluded)
  int num_full_layers = 0;   // layers whose indexer runs (0 without an indexer)
  int num_moe_layers = 0;
  int experts_per_rank = 0;  // routed experts per rank

  // Weights held by one rank, summed over all main layers.
  WeightPart embedding;          // embed_tokens + lm_head (vocab-parallel)
  WeightPart attention;          // MLA / GQA projections and their internal norms
  WeightPart attention_per_layer;
  WeightPart norms;              // input / post-attention layer norms + final norm
  WeightPart indexer;            // Full layers only
  WeightPart dense_mlp;
  WeightPart routed_experts;
  WeightPart shared_experts;
  WeightPart router;
  WeightPart weights() const;
  int64_t weight_bytes() const { return weights().bytes; }

  // Cache, per token and per rank, all layers.
  int64_t kv_bytes_per_token = 0;
  int64_t index_k_bytes_per_token = 0;  // Full layers only
  int64_t context_tokens = 0;
  int64_t kv_cache_bytes = 0;       // kv_bytes_per_token · context_tokens
  int64_t index_k_cache_bytes = 0;  // index_k_bytes_per_token · context_tokens
  int64_t cache_bytes = 0;          // the two above
  int64_t total_bytes() const { return weight_bytes() + cache_bytes; }
};

// InvalidArgument naming the values when tp < 1, ep < 1, context_tokens < 0, num_attention_heads % tp != 0
// (GQA: also KV heads neither divisible by tp nor dividing it), n_routed_experts % ep != 0, or a plan whose
// length is not num_hidden_layers.
absl::StatusOr<RankSizing> ComputeRankSizing(const ModelConfig& config, const SizingOptions& options);

// A plain-text table for the CLI (`indexcache info --tp N --ep M`): one row per (tp, ep) layout, with
// columns TP, EP, experts/rank, weights GiB/rank, KV B/token, index-K B/token (under base.plan), cache GiB
// at base.context_tokens and total GiB/rank. A layout ComputeRankSizing rejects gets a row with its error.
std::string FormatSizingTable(const ModelConfig& config, const std::vector<std::pair<int, int>>& tp_ep,
                              const SizingOptions& base);

}  // namespace ic
