// CPU backend: paged attention, dense causal and sparse over top-k indices.
//
// Dense: query tokens are grouped by sequence and sorted by position; per KV head the sequence's K/V
// rows are gathered once into dense scratch, then tiles of query tokens (all G = q_heads / kv_heads
// heads of the KV head together, so a tile is [T·G, qk_dim]) go through
//   S = scale · Q·Kᵀ (sgemm, only keys 0..last position of the tile) → causal softmax per row (thread
//   pool) → O = P·V (sgemm).
// Memory is O(T·G·L), never O(L²).
// Sparse: per query token (thread pool), the valid selected keys (0 ≤ s ≤ pos; −1 and anything else
// ignored) are visited key-outer / head-inner, so each cached row is read once per token and KV head.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "sdk/status.h"

namespace ic::kernels::cpu {
namespace {

using internal::SlotOf;

struct Dims {
  int q_stride, k_stride, v_stride, group;
};

absl::Status ValidateAttention(const AttentionArgs& a, Dims* d) {
  const TokenLayout& l = a.layout;
  if (l.tokens < 0) return InvalidArgument("Attention: layout.tokens = ", l.tokens, " is negative");
  if (a.q_heads <= 0) return InvalidArgument("Attention: q_heads = ", a.q_heads, " must be positive");
  if (a.kv_heads <= 0) return InvalidArgument("Attention: kv_heads = ", a.kv_heads, " must be positive");
  if (a.q_heads % a.kv_heads != 0) {
    return InvalidArgument("Attention: q_heads = ", a.q_heads, " is not a multiple of kv_heads = ", a.kv_heads);
  }
  if (a.qk_dim <= 0) return InvalidArgument("Attention: qk_dim = ", a.qk_dim, " must be positive");
  if (a.v_dim <= 0) return InvalidArgument("Attention: v_dim = ", a.v_dim, " must be positive");
  if (!std::isfinite(a.scale)) return InvalidArgument("Attention: scale = ", a.scale, " is not finite");
  if (a.num_slots < 0) return InvalidArgument("Attention: num_slots = ", a.num_slots, " is negative");
  d->group = a.q_heads / a.kv_heads;
  const int64_t q_min = static_cast<int64_t>(a.q_heads) * a.qk_dim;
  const int64_t k_min = static_cast<int64_t>(a.kv_heads) * a.qk_dim;
  const int64_t v_min = static_cast<int64_t>(a.kv_heads) * a.v_dim;
  if (a.q_stride < 0 || (a.q_stride > 0 && a.q_stride < q_min)) {
    return InvalidArgument("Attention: q_stride = ", a.q_stride, " is smaller than q_heads·qk_dim = ", q_min);
  }
  if (a.k_stride < 0 || (a.k_stride > 0 && a.k_stride < k_min)) {
    return InvalidArgument("Attention: k_stride = ", a.k_stride, " is smaller than kv_heads·qk_dim = ", k_min);
  }
  if (a.v_stride < 0 || (a.v_stride > 0 && a.v_stride < v_min)) {
    return InvalidArgument("Attention: v_stride = ", a.v_stride, " is smaller than kv_heads·v_dim = ", v_min);
  }
  d->q_stride = a.q_stride > 0 ? a.q_stride : static_cast<int>(q_min);
  d->k_stride = a.k_stride > 0 ? a.k_stride : static_cast<int>(k_min);
  d->v_stride = a.v_stride > 0 ? a.v_stride : static_cast<int>(v_min);
  if (a.topk != nullptr && a.topk_k <= 0) {
    return InvalidArgument("Attention: topk_k = ", a.topk_k, " must be positive when topk is given");
  }
  if (a.topk == nullptr && a.probs != nullptr) {
    return InvalidArgument("Attention: probs is only produced by sparse attention (topk is null)");
  }
  if (l.tokens == 0) return absl::OkStatus();
  if (a.out == nullptr) return InvalidArgument("Attention: out is null");
  if (a.q == nullptr) return InvalidArgument("Attention: q is null");
  if (a.k_cache == nullptr) return InvalidArgument("Attention: k_cache is null");
  if (a.v_cache == nullptr) return InvalidArgument("Attention: v_cache is null");
  return internal::ValidateLayout(l, a.num_slots, "Attention");
}

// In-place causal softmax of row[0, valid) (zeros written to row[valid, width)); returns the log-sum-exp.
float SoftmaxRow(float* row, int valid, int width) {
  float m = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < valid; ++i) m = std::max(m, row[i]);
  double sum = 0.0;
  if (m == -std::numeric_limits<float>::infinity()) {  // every logit −inf: uniform is meaningless, emit 0
    std::fill(row, row + width, 0.0f);
    return m;
  }
  for (int i = 0; i < valid; ++i) {
    const float e = std::exp(row[i] - m);
    row[i] = e;
    sum += e;
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int i = 0; i < valid; ++i) row[i] *= inv;
  std::fill(row + valid, row + width, 0.0f);
  return m + static_cast<float>(std::log(sum));
}

void DenseAttention(const AttentionArgs& a, const Dims& d) {
  const TokenLayout& l = a.layout;
  const int G = d.group;
  constexpr int64_t kScoreBudget = int64_t{1} << 22;  // floats of S per tile (16 MiB)
  std::vector<float> kg, vg, qs, s, o;
  for (const internal::SequenceTokens& seq : internal::GroupBySequence(l)) {
    const int lk = seq.max_pos + 1;
    const int ntok = static_cast<int>(seq.tokens.size());
    int tile = std::max(1, 256 / G);
    tile = static_cast<int>(std::min<int64_t>(tile, std::max<int64_t>(1, kScoreBudget / (static_cast<int64_t>(G) * lk))));
    tile = std::min(tile, ntok);
    kg.resize(static_cast<size_t>(lk) * a.qk_dim);
    vg.resize(static_cast<size_t>(lk) * a.v_dim);
    for (int g = 0; g < a.kv_heads; ++g) {
      internal::GatherSequenceRows(l, seq.seq, lk, a.k_cache, d.k_stride, g * a.qk_dim, a.qk_dim, kg.data());
      internal::GatherSequenceRows(l, seq.seq, lk, a.v_cache, d.v_stride, g * a.v_dim, a.v_dim, vg.data());
      for (int t0 = 0; t0 < ntok; t0 += tile) {
        const int nt = std::min(tile, ntok - t0);
        const int rows = nt * G;
        const int lt = l.token_pos[seq.tokens[t0 + nt - 1]] + 1;  // tokens sorted by position
        qs.resize(static_cast<size_t>(rows) * a.qk_dim);
        s.resize(static_cast<size_t>(rows) * lt);
        o.resize(static_cast<size_t>(rows) * a.v_dim);
        for (int i = 0; i < nt; ++i) {
          const float* src = a.q + static_cast<int64_t>(seq.tokens[t0 + i]) * d.q_stride + static_cast<int64_t>(g) * G * a.qk_dim;
          std::memcpy(qs.data() + static_cast<size_t>(i) * G * a.qk_dim, src, sizeof(float) * G * a.qk_dim);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, lt, a.qk_dim, a.scale, qs.data(), a.qk_dim,
                    kg.data(), a.qk_dim, 0.0f, s.data(), lt);
        internal::ParallelFor(rows, 8, [&](int64_t b, int64_t e) {
          for (int64_t r = b; r < e; ++r) {
            const int tok = seq.tokens[t0 + r / G];
            const float lse = SoftmaxRow(s.data() + r * lt, l.token_pos[tok] + 1, lt);
            if (a.lse != nullptr) a.lse[static_cast<int64_t>(tok) * a.q_heads + g * G + r % G] = lse;
          }
        });
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, a.v_dim, lt, 1.0f, s.data(), lt, vg.data(),
                    a.v_dim, 0.0f, o.data(), a.v_dim);
        for (int i = 0; i < nt; ++i) {
          float* dst = a.out + (static_cast<int64_t>(seq.tokens[t0 + i]) * a.q_heads + static_cast<int64_t>(g) * G) * a.v_dim;
          std::memcpy(dst, o.data() + static_cast<size_t>(i) * G * a.v_dim, sizeof(float) * G * a.v_dim);
        }
      }
    }
  }
}

void SparseAttention(const AttentionArgs& a, const Dims& d) {
  const TokenLayout& l = a.layout;
  const int G = d.group;
  const int K = a.topk_k;
  internal::ParallelFor(l.tokens, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> sel;     // indices into topk[t, :] of the valid entries
    std::vector<int64_t> slots;   // their cache slots
    std::vector<float> logits;    // [G, n]
    for (int64_t t = begin; t < end; ++t) {
      const int seq = l.token_seq[t], pos = l.token_pos[t];
      const int32_t* row = a.topk + t * K;
      sel.clear();
      slots.clear();
      for (int i = 0; i < K; ++i) {
        if (row[i] >= 0 && row[i] <= pos) {
          sel.push_back(i);
          slots.push_back(SlotOf(l, seq, row[i]));
        }
      }
      const int n = static_cast<int>(sel.size());
      float* out_t = a.out + t * a.q_heads * a.v_dim;
      std::fill(out_t, out_t + static_cast<int64_t>(a.q_heads) * a.v_dim, 0.0f);
      float* probs_t = a.probs != nullptr ? a.probs + t * K : nullptr;
      if (probs_t != nullptr) std::fill(probs_t, probs_t + K, 0.0f);
      logits.resize(static_cast<size_t>(G) * std::max(n, 1));
      for (int g = 0; g < a.kv_heads; ++g) {
        const float* q_g = a.q + t * d.q_stride + static_cast<int64_t>(g) * G * a.qk_dim;
        for (int i = 0; i < n; ++i) {  // key-outer: each cached row read once
          const float* krow = a.k_cache + slots[i] * d.k_stride + static_cast<int64_t>(g) * a.qk_dim;
          for (int j = 0; j < G; ++j) {
            logits[static_cast<size_t>(j) * n + i] = a.scale * internal::Dot(q_g + static_cast<int64_t>(j) * a.qk_dim, krow, a.qk_dim);
          }
        }
        for (int j = 0; j < G; ++j) {
          const float lse = n > 0 ? SoftmaxRow(logits.data() + static_cast<size_t>(j) * n, n, n)
                                  : -std::numeric_limits<float>::infinity();
          if (a.lse != nullptr) a.lse[t * a.q_heads + g * G + j] = lse;
        }
        float* out_g = out_t + static_cast<int64_t>(g) * G * a.v_dim;
        for (int i = 0; i < n; ++i) {
          const float* vrow = a.v_cache + slots[i] * d.v_stride + static_cast<int64_t>(g) * a.v_dim;
          float psum = 0.0f;
          for (int j = 0; j < G; ++j) {
            const float p = logits[static_cast<size_t>(j) * n + i];
            psum += p;
            internal::Axpy(out_g + static_cast<int64_t>(j) * a.v_dim, vrow, p, a.v_dim);
          }
          if (probs_t != nullptr) probs_t[sel[i]] += psum / static_cast<float>(a.q_heads);
        }
      }
    }
  });
}

}  // namespace

absl::Status CpuBackend::Attention(const AttentionArgs& a) {
  Dims d{};
  IC_RETURN_IF_ERROR(ValidateAttention(a, &d));
  if (a.layout.tokens == 0) return absl::OkStatus();
  if (a.topk == nullptr) {
    DenseAttention(a, d);
  } else {
    SparseAttention(a, d);
  }
  return absl::OkStatus();
}

}  // namespace ic::kernels::cpu
