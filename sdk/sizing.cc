#include "sdk/sizing.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ic {
namespace {

constexpr int64_t kBlock = 128;  // FP8 block-scale tile (weight_block_size [128, 128])

struct Range {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// Rank r's part of `total` split into `parts` contiguous ranges whose sizes differ by at most one.
Range EvenSplit(int64_t total, int parts, int r) {
  const int64_t base = total / parts, rem = total % parts;
  const int64_t begin = r * base + std::min<int64_t>(r, rem);
  return {begin, begin + base + (r < rem ? 1 : 0)};
}

// 128-blocks of the full tensor's grid that a range touches.
int64_t BlocksTouched(Range r) {
  if (r.size() <= 0) return 0;
  return (r.end - 1) / kBlock - r.begin / kBlock + 1;
}

enum class Split { kNone, kRows, kCols };

// A linear weight [rows, cols] (out, in) of which a rank holds one of `parts` pieces along `split`: the
// largest piece's params and bytes. FP8: 1 B/param + a fp32 scale per 128×128 block touched.
WeightPart Linear(int64_t rows, int64_t cols, Split split, int parts, WeightDType dt) {
  WeightPart best;
  const int n = split == Split::kNone ? 1 : parts;
  for (int r = 0; r < n; ++r) {
    const Range rr = split == Split::kRows ? EvenSplit(rows, n, r) : Range{0, rows};
    const Range cr = split == Split::kCols ? EvenSplit(cols, n, r) : Range{0, cols};
    WeightPart p;
    p.params = rr.size() * cr.size();
    p.bytes = dt == WeightDType::kFP8 ? p.params + 4 * BlocksTouched(rr) * BlocksTouched(cr) : 2 * p.params;
    if (p.bytes > best.bytes) best = p;
  }
  return best;
}

// A tensor stored in a fixed dtype whatever the weight dtype (norms, router, embeddings).
WeightPart Fixed(int64_t params, int64_t bytes_per_param) { return {params, params * bytes_per_param}; }

// gate_proj, up_proj [inter, hidden] and down_proj [hidden, inter], the intermediate dim split in `parts`.
WeightPart Mlp(int64_t hidden, int64_t inter, int parts, WeightDType dt) {
  WeightPart w;
  w += Linear(inter, hidden, Split::kRows, parts, dt);
  w += Linear(inter, hidden, Split::kRows, parts, dt);
  w += Linear(hidden, inter, Split::kCols, parts, dt);
  return w;
}

WeightPart Times(WeightPart p, int64_t n) { return {p.params * n, p.bytes * n}; }

bool HasCorrectionBias(const ModelConfig& c) {
  return c.arch == Architecture::kDeepseekV32 || c.arch == Architecture::kGlmMoeDsa;
}

bool IsMoeLayer(const ModelConfig& c, int i) {
  if (static_cast<int>(c.moe_layer.size()) == c.num_hidden_layers) return c.moe_layer[i];
  return c.n_routed_experts > 0 && i >= c.first_k_dense_replace;  // a config built in code
}

std::string GiB(int64_t bytes) { return absl::StrFormat("%.2f", static_cast<double>(bytes) / (1 << 30)); }

}  // namespace

WeightPart RankSizing::weights() const {
  WeightPart w;
  for (const WeightPart* p : {&embedding, &attention, &norms, &indexer, &dense_mlp, &routed_experts,
                              &shared_experts, &router}) {
    w += *p;
  }
  return w;
}

absl::StatusOr<RankSizing> ComputeRankSizing(const ModelConfig& c, const SizingOptions& o) {
  if (o.tp < 1 || o.ep < 1) {
    return absl::InvalidArgumentError(absl::StrCat("sizing: tp and ep must be >= 1, got tp ", o.tp, ", ep ", o.ep));
  }
  if (o.context_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("sizing: context_tokens must be >= 0, got ", o.context_tokens));
  }
  if (c.num_attention_heads <= 0 || c.num_attention_heads % o.tp != 0) {
    return absl::InvalidArgumentError(absl::StrCat("sizing: num_attention_heads ", c.num_attention_heads,
                                                   " is not divisible by tp ", o.tp));
  }
  const int64_t hidden = c.hidden_size;
  const int tp = o.tp;
  // GQA KV heads: split where tp divides them, else one per rank when they divide tp.
  int kv_parts = 1;
  int64_t kv_heads_per_rank = 0;
  if (!c.mla) {
    const int kv = c.num_key_value_heads;
    if (kv > 0 && kv % tp == 0) {
      kv_parts = tp;
      kv_heads_per_rank = kv / tp;
    } else if (kv > 0 && tp % kv == 0) {
      kv_parts = kv;
      kv_heads_per_rank = 1;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("sizing: num_key_value_heads ", kv,
                                                     " neither divisible by nor dividing tp ", tp));
    }
  }
  if (c.n_routed_experts > 0 && c.n_routed_experts % o.ep != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sizing: n_routed_experts ", c.n_routed_experts, " is not divisible by ep ", o.ep));
  }
  if (o.plan != nullptr && o.plan->num_layers() != c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("sizing: plan has ", o.plan->num_layers(),
                                                   " layers, config num_hidden_layers is ", c.num_hidden_layers));
  }

  const WeightDType dt = o.weights;
  RankSizing s;
  s.tp = o.tp;
  s.ep = o.ep;
  s.num_layers = c.num_hidden_layers;
  s.experts_per_rank = c.n_routed_experts / o.ep;
  s.context_tokens = o.context_tokens;

  // Embedding + LM head: vocab-parallel, bf16.
  const WeightPart vocab_rows =
      Linear(c.vocab_size, hidden, Split::kRows, o.embedding_split_by_tp ? tp : 1, WeightDType::kBF16);
  s.embedding = c.tie_word_embeddings ? vocab_rows : Times(vocab_rows, 2);

  // One attention layer.
  WeightPart attn;
  const int64_t h = c.num_attention_heads;
  if (c.mla) {
    if (c.q_lora_rank > 0) {
      attn += Linear(c.q_lora_rank, hidden, Split::kNone, tp, dt);                  // q_a_proj, replicated
      attn += Fixed(c.q_lora_rank, 2);                                              // q_a_layernorm
      attn += Linear(h * c.qk_head_dim(), c.q_lora_rank, Split::kRows, tp, dt);     // q_b_proj, by heads
    } else {
      attn += Linear(h * c.qk_head_dim(), hidden, Split::kRows, tp, dt);            // q_proj, by heads
    }
    attn += Linear(c.kv_lora_rank + c.qk_rope_head_dim, hidden, Split::kNone, tp, dt);  // kv_a, replicated
    attn += Fixed(c.kv_lora_rank, 2);                                                   // kv_a_layernorm
    attn += Linear(h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, Split::kRows, tp, dt);  // kv_b
    attn += Linear(hidden, h * c.v_head_dim, Split::kCols, tp, dt);                                 // o_proj
  } else {
    const int64_t kvd = int64_t{c.num_key_value_heads} * c.head_dim;
    attn += Linear(h * c.head_dim, hidden, Split::kRows, tp, dt);  // q_proj
    attn += Linear(kvd, hidden, Split::kRows, kv_parts, dt);       // k_proj
    attn += Linear(kvd, hidden, Split::kRows, kv_parts, dt);       // v_proj
    attn += Linear(hidden, h * c.head_dim, Split::kCols, tp, dt);  // o_proj
  }
  s.attention_per_layer = attn;

  // One indexer (replicated).
  WeightPart ix;
  if (c.has_indexer) {
    const int64_t q_in = c.mla ? c.q_lora_rank : hidden;
    ix += Linear(int64_t{c.index_n_heads} * c.index_head_dim, q_in, Split::kNone, tp, dt);  // wq_b / wq
    ix += Linear(c.index_head_dim, hidden, Split::kNone, tp, dt);                           // wk
    ix += Fixed(2 * int64_t{c.index_head_dim}, 2);                                          // k_norm w + b
    ix += Fixed(int64_t{c.index_n_heads} * hidden, 2);                                      // weights_proj
  }

  const WeightPart dense = Mlp(hidden, c.intermediate_size, tp, dt);
  const WeightPart expert = Mlp(hidden, c.moe_intermediate_size, 1, dt);
  const int64_t shared_inter = int64_t{c.n_shared_experts} * c.moe_intermediate_size;
  const WeightPart shared =
      shared_inter > 0 ? Mlp(hidden, shared_inter, o.shared_experts_split_by_tp ? tp : 1, dt) : WeightPart{};
  WeightPart router = Fixed(int64_t{c.n_routed_experts} * hidden, 2);
  if (HasCorrectionBias(c)) router += Fixed(c.n_routed_experts, 4);

  for (int i = 0; i < c.num_hidden_layers; ++i) {
    s.attention += attn;
    s.norms += Fixed(2 * hidden, 2);  // input_layernorm, post_attention_layernorm
    const bool full = c.has_indexer && (o.plan == nullptr || o.plan->IsFull(i));
    if (full) {
      ++s.num_full_layers;
      s.indexer += ix;
    }
    if (IsMoeLayer(c, i)) {
      ++s.num_moe_layers;
      s.routed_experts += Times(expert, s.experts_per_rank);
      s.shared_experts += shared;
      s.router += router;
    } else {
      s.dense_mlp += dense;
    }
  }
  s.norms += Fixed(hidden, 2);  // model.norm

  // Cache per token.
  int64_t kv_per_layer = 0;
  if (c.mla) {
    kv_per_layer = o.kv == KvDType::kFP8
                       ? c.kv_lora_rank + 4 * ((c.kv_lora_rank + kBlock - 1) / kBlock) + 2 * c.qk_rope_head_dim
                       : 2 * int64_t{c.kv_lora_rank + c.qk_rope_head_dim};
  } else {
    kv_per_layer = 2 * kv_heads_per_rank * c.head_dim * (o.kv == KvDType::kFP8 ? 1 : 2);
  }
  const int64_t ik_per_layer =
      o.index_k == IndexKDType::kFP8 ? int64_t{c.index_head_dim} + 4 : 2 * int64_t{c.index_head_dim};
  s.kv_bytes_per_token = kv_per_layer * c.num_hidden_layers;
  s.index_k_bytes_per_token = ik_per_layer * s.num_full_layers;
  s.kv_cache_bytes = s.kv_bytes_per_token * o.context_tokens;
  s.index_k_cache_bytes = s.index_k_bytes_per_token * o.context_tokens;
  s.cache_bytes = s.kv_cache_bytes + s.index_k_cache_bytes;
  return s;
}

std::string FormatSizingTable(const ModelConfig& c, const std::vector<std::pair<int, int>>& tp_ep,
                              const SizingOptions& base) {
  const bool fp8w = base.weights == WeightDType::kFP8;
  std::string out = absl::StrFormat(
      "%s: %d layers (MTP excluded), %d heads, %d routed experts; weights %s, KV %s, index-K %s; plan %s; "
      "context %d tokens/rank\n",
      ArchitectureName(c.arch), c.num_hidden_layers, c.num_attention_heads, c.n_routed_experts,
      fp8w ? "fp8 (128x128 block scales)" : "bf16", base.kv == KvDType::kFP8 ? "fp8" : "bf16",
      base.index_k == IndexKDType::kFP8 ? "fp8+scale" : "bf16",
      base.plan == nullptr ? std::string("all Full")
                           : absl::StrCat(base.plan->NumFull(), "/", base.plan->num_layers(), " Full ",
                                          base.plan->ToString().substr(0, 8), "..."),
      base.context_tokens);
  absl::StrAppendFormat(&out, "%4s %4s %12s %18s %12s %16s %12s %12s\n", "TP", "EP", "experts/rank",
                        "weights GiB/rank", "KV B/token", "index-K B/token", "cache GiB", "total GiB");
  for (const auto& [tp, ep] : tp_ep) {
    SizingOptions o = base;
    o.tp = tp;
    o.ep = ep;
    absl::StatusOr<RankSizing> s = ComputeRankSizing(c, o);
    if (!s.ok()) {
      absl::StrAppendFormat(&out, "%4d %4d  skipped: %s\n", tp, ep, s.status().message());
      continue;
    }
    const bool ctx = base.context_tokens > 0;
    absl::StrAppendFormat(&out, "%4d %4d %12d %18s %12d %16d %12s %12s\n", tp, ep, s->experts_per_rank,
                          GiB(s->weight_bytes()), s->kv_bytes_per_token, s->index_k_bytes_per_token,
                          ctx ? GiB(s->cache_bytes) : std::string("-"),
                          ctx ? GiB(s->total_bytes()) : GiB(s->weight_bytes()));
  }
  return out;
}

}  // namespace ic
