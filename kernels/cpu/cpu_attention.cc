// CPU backend: paged attention, dense causal and sparse over top-k indices.
//
// Dense: query tokens are grouped by sequence and sorted by position; per KV head the sequence's K/V
// rows are gathered once into dense scratch, then tiles of query tokens (all G = q_heads / kv_heads
// heads of the KV head together, so a tile is [T·G, qk_dim]) go through
//   S = scale · Q·Kᵀ (sgemm, only keys 0..last position of the tile) → causal softmax per row (thread
//   pool) → O = P·V (sgemm).
// Memory is O(T·G·L), never O(L²).
// Sparse: the same tiles, over the union U of the tile's selected keys (valid entries 0 ≤ s ≤ pos; −1
// and anything else ignored); each row's softmax covers only its own entries. U ⊆ 0..last position of
// the tile, so sparse never costs more than dense, and far less when the selections overlap.
// Precision::kBF16 rounds the gathered K, V rows and the query tile to BF16 before the sgemms.
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
  if (a.precision != Precision::kF32 && a.precision != Precision::kBF16) {
    return InvalidArgument("Attention: precision = ", static_cast<int>(a.precision),
                           " is not one of kF32 (0), kBF16 (1) (kFP8 is the indexer's only)");
  }
  if (a.topk == nullptr && a.probs != nullptr) {
    return InvalidArgument("Attention: probs is only produced by sparse attention (topk is null)");
  }
  const bool cache16 = a.k_cache_bf16 != nullptr || a.v_cache_bf16 != nullptr;
  if (cache16 && (a.k_cache_bf16 == nullptr || a.v_cache_bf16 == nullptr || a.k_cache != nullptr ||
                  a.v_cache != nullptr)) {
    return InvalidArgument("Attention: give k_cache and v_cache, or k_cache_bf16 and v_cache_bf16");
  }
  if (cache16 && a.precision != Precision::kBF16) {
    return InvalidArgument("Attention: a BF16 KV cache needs precision kBF16");
  }
  if (l.tokens == 0) return absl::OkStatus();
  if (a.out == nullptr) return InvalidArgument("Attention: out is null");
  if (a.q == nullptr) return InvalidArgument("Attention: q is null");
  if (!cache16 && a.k_cache == nullptr) return InvalidArgument("Attention: k_cache is null");
  if (!cache16 && a.v_cache == nullptr) return InvalidArgument("Attention: v_cache is null");
  return internal::ValidateLayout(l, a.num_slots, "Attention");
}

// In-place causal softmax of row[0, valid) (zeros written to row[valid, width)); returns the log-sum-exp.
float SoftmaxRow(float* row, int valid, int width) {
  const float m = valid > 0 ? internal::MaxOf(row, valid) : -std::numeric_limits<float>::infinity();
  if (m == -std::numeric_limits<float>::infinity()) {  // no key (or every logit −inf): no weight at all
    std::fill(row, row + width, 0.0f);
    return m;
  }
  const double sum = internal::ExpShiftSum(row, valid, m);
  internal::Scale(row, static_cast<float>(1.0 / sum), valid);
  std::fill(row + valid, row + width, 0.0f);
  return m + static_cast<float>(std::log(sum));
}

// Tokens per tile: up to ~256 score rows (T·G), and at most kScoreBudget floats of scores.
int TileTokens(int group, int lk, int ntok) {
  constexpr int64_t kScoreBudget = int64_t{1} << 22;  // floats of S per tile (16 MiB)
  int tile = std::max(1, 256 / group);
  tile = static_cast<int>(std::min<int64_t>(tile, std::max<int64_t>(1, kScoreBudget / (static_cast<int64_t>(group) * lk))));
  return std::max(1, std::min(tile, ntok));
}

void DenseAttention(const AttentionArgs& a, const Dims& d) {
  const TokenLayout& l = a.layout;
  const bool bf16 = a.precision == Precision::kBF16;
  const int G = d.group;
  std::vector<float> kg, vg, qs, s, o;
  for (const internal::SequenceTokens& seq : internal::GroupBySequence(l)) {
    const int lk = seq.max_pos + 1;
    const int ntok = static_cast<int>(seq.tokens.size());
    const int tile = TileTokens(G, lk, ntok);
    kg.resize(static_cast<size_t>(lk) * a.qk_dim);
    vg.resize(static_cast<size_t>(lk) * a.v_dim);
    for (int g = 0; g < a.kv_heads; ++g) {
      if (a.k_cache_bf16 != nullptr) {
        internal::GatherSequenceRows(l, seq.seq, lk, a.k_cache_bf16, d.k_stride, g * a.qk_dim, a.qk_dim, kg.data());
        internal::GatherSequenceRows(l, seq.seq, lk, a.v_cache_bf16, d.v_stride, g * a.v_dim, a.v_dim, vg.data());
      } else {
        internal::GatherSequenceRows(l, seq.seq, lk, a.k_cache, d.k_stride, g * a.qk_dim, a.qk_dim, kg.data());
        internal::GatherSequenceRows(l, seq.seq, lk, a.v_cache, d.v_stride, g * a.v_dim, a.v_dim, vg.data());
      }
      if (bf16) {
        internal::RoundAllToBf16(kg.data(), kg.size());
        internal::RoundAllToBf16(vg.data(), vg.size());
      }
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
        if (bf16) internal::RoundAllToBf16(qs.data(), static_cast<size_t>(rows) * a.qk_dim);
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

// Sparse attention, tiled like the dense path: a tile of query tokens of one sequence attends to the
// union U of their selected keys (adjacent queries share most of them), S = scale·Q·K_Uᵀ by sgemm, then
// each row keeps only its own selected entries (softmax over those, written back as probabilities),
// and O = P·V_U by sgemm. U ⊆ 0..last position of the tile, so a tile never costs more than dense.
// n values of a cache row from element `at` as F32: from the F32 cache, or widened from the BF16 one.
void ReadCacheRow(const float* f32, const uint16_t* bf16, int64_t at, int n, float* dst) {
  if (bf16 != nullptr) {
    for (int i = 0; i < n; ++i) dst[i] = internal::Bf16ToFloat(bf16[at + i]);
  } else {
    std::memcpy(dst, f32 + at, sizeof(float) * n);
  }
}

void SparseAttention(const AttentionArgs& a, const Dims& d) {
  const bool bf16 = a.precision == Precision::kBF16;
  const TokenLayout& l = a.layout;
  const int G = d.group;
  const int K = a.topk_k;
  std::vector<float> kg, vg, qs, s, o;
  std::vector<int32_t> col_of, upos;
  for (const internal::SequenceTokens& seq : internal::GroupBySequence(l)) {
    const int lk = seq.max_pos + 1;
    const int ntok = static_cast<int>(seq.tokens.size());
    col_of.assign(lk, -1);
    for (int t0 = 0; t0 < ntok;) {
      const int nt = TileTokens(G, lk, ntok - t0);
      upos.clear();
      for (int i = 0; i < nt; ++i) {
        const int tok = seq.tokens[t0 + i], pos = l.token_pos[tok];
        const int32_t* row = a.topk + static_cast<int64_t>(tok) * K;
        for (int e = 0; e < K; ++e) {
          const int32_t p = row[e];
          if (p >= 0 && p <= pos && col_of[p] < 0) {
            col_of[p] = 0;
            upos.push_back(p);
          }
        }
        if (a.probs != nullptr) std::fill(a.probs + static_cast<int64_t>(tok) * K, a.probs + static_cast<int64_t>(tok + 1) * K, 0.0f);
      }
      std::sort(upos.begin(), upos.end());
      const int nu = static_cast<int>(upos.size());
      for (int i = 0; i < nu; ++i) col_of[upos[i]] = i;
      const int rows = nt * G;
      const int ld = std::max(nu, 1);
      kg.resize(static_cast<size_t>(ld) * a.qk_dim);
      vg.resize(static_cast<size_t>(ld) * a.v_dim);
      qs.resize(static_cast<size_t>(rows) * a.qk_dim);
      s.resize(static_cast<size_t>(rows) * ld);
      o.resize(static_cast<size_t>(rows) * a.v_dim);
      for (int g = 0; g < a.kv_heads; ++g) {
        for (int i = 0; i < nu; ++i) {
          const int64_t slot = SlotOf(l, seq.seq, upos[i]);
          ReadCacheRow(a.k_cache, a.k_cache_bf16, slot * d.k_stride + static_cast<int64_t>(g) * a.qk_dim, a.qk_dim,
                       kg.data() + static_cast<size_t>(i) * a.qk_dim);
          ReadCacheRow(a.v_cache, a.v_cache_bf16, slot * d.v_stride + static_cast<int64_t>(g) * a.v_dim, a.v_dim,
                       vg.data() + static_cast<size_t>(i) * a.v_dim);
        }
        for (int i = 0; i < nt; ++i) {
          const float* src = a.q + static_cast<int64_t>(seq.tokens[t0 + i]) * d.q_stride + static_cast<int64_t>(g) * G * a.qk_dim;
          std::memcpy(qs.data() + static_cast<size_t>(i) * G * a.qk_dim, src, sizeof(float) * G * a.qk_dim);
        }
        if (bf16) {
          internal::RoundAllToBf16(kg.data(), static_cast<size_t>(nu) * a.qk_dim);
          internal::RoundAllToBf16(vg.data(), static_cast<size_t>(nu) * a.v_dim);
          internal::RoundAllToBf16(qs.data(), static_cast<size_t>(rows) * a.qk_dim);
        }
        if (nu > 0) {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nu, a.qk_dim, a.scale, qs.data(), a.qk_dim,
                      kg.data(), a.qk_dim, 0.0f, s.data(), ld);
        }
        internal::ParallelFor(nt, 1, [&](int64_t b, int64_t e_end) {
          std::vector<float> vals(K);
          std::vector<int32_t> ents(K), cols(K);
          for (int64_t i = b; i < e_end; ++i) {
            const int tok = seq.tokens[t0 + i], pos = l.token_pos[tok];
            const int32_t* row = a.topk + static_cast<int64_t>(tok) * K;
            int n = 0;  // the row's valid entries, compacted
            for (int e = 0; e < K; ++e) {
              if (row[e] >= 0 && row[e] <= pos) {
                ents[n] = e;
                cols[n++] = col_of[row[e]];
              }
            }
            float* probs = a.probs != nullptr ? a.probs + static_cast<int64_t>(tok) * K : nullptr;
            for (int j = 0; j < G; ++j) {
              float* srow = s.data() + (i * G + j) * ld;
              for (int c = 0; c < n; ++c) vals[c] = srow[cols[c]];
              std::fill(srow, srow + ld, 0.0f);
              const float lse = SoftmaxRow(vals.data(), n, n);
              for (int c = 0; c < n; ++c) {
                srow[cols[c]] += vals[c];  // += : a duplicated entry counts twice, as in the definition
                if (probs != nullptr) probs[ents[c]] += vals[c] / static_cast<float>(a.q_heads);
              }
              if (a.lse != nullptr) a.lse[static_cast<int64_t>(tok) * a.q_heads + g * G + j] = lse;
            }
          }
        });
        if (nu > 0) {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, a.v_dim, nu, 1.0f, s.data(), ld, vg.data(),
                      a.v_dim, 0.0f, o.data(), a.v_dim);
        } else {
          std::fill(o.begin(), o.begin() + static_cast<size_t>(rows) * a.v_dim, 0.0f);
        }
        for (int i = 0; i < nt; ++i) {
          float* dst = a.out + (static_cast<int64_t>(seq.tokens[t0 + i]) * a.q_heads + static_cast<int64_t>(g) * G) * a.v_dim;
          std::memcpy(dst, o.data() + static_cast<size_t>(i) * G * a.v_dim, sizeof(float) * G * a.v_dim);
        }
      }
      for (int p : upos) col_of[p] = -1;
      t0 += nt;
    }
  }
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
