// CPU backend: lightning indexer scores + top-k (DeepSeek-V3.2 report, eq. 1; DESIGN.md §3).
//
// Query tokens are grouped by sequence and sorted by position; the sequence's index-K rows are gathered
// once, then per tile of T tokens
//   S = Q_tile·Kᵀ  ([T·heads, L_tile], sgemm)  →  per token (thread pool):
//   I[s] = Σ_j w[t, j] · ReLU(S[t, j, s]) for s ≤ pos  →  exact top-k (cpu_topk.cc).
// Precision::kBF16 rounds the gathered keys and the query tile to BF16 before the sgemm (the
// products are then exact in F32; only the order of the sums differs from a tensor-core kernel).
// Rows with pos + 1 ≤ k are not scored (unless scores are requested): they select 0..pos then −1.
#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "sdk/status.h"

namespace ic::kernels::cpu {
namespace {

absl::Status ValidateIndexer(const IndexerArgs& a, int* k_stride) {
  if (a.layout.tokens < 0) return InvalidArgument("IndexerTopk: layout.tokens = ", a.layout.tokens, " is negative");
  if (a.heads <= 0) return InvalidArgument("IndexerTopk: heads = ", a.heads, " must be positive");
  if (a.head_dim <= 0) return InvalidArgument("IndexerTopk: head_dim = ", a.head_dim, " must be positive");
  if (a.k <= 0) return InvalidArgument("IndexerTopk: k = ", a.k, " must be positive");
  if (a.k_stride < 0 || (a.k_stride > 0 && a.k_stride < a.head_dim)) {
    return InvalidArgument("IndexerTopk: k_stride = ", a.k_stride, " is smaller than head_dim = ", a.head_dim);
  }
  *k_stride = a.k_stride > 0 ? a.k_stride : a.head_dim;
  if (a.precision != Precision::kF32 && a.precision != Precision::kBF16 && a.precision != Precision::kFP8) {
    return InvalidArgument("IndexerTopk: precision = ", static_cast<int>(a.precision),
                           " is not one of kF32 (0), kBF16 (1), kFP8 (2)");
  }
  if (a.num_slots < 0) return InvalidArgument("IndexerTopk: num_slots = ", a.num_slots, " is negative");
  if (a.scores != nullptr && a.scores_stride <= 0) {
    return InvalidArgument("IndexerTopk: scores_stride = ", a.scores_stride, " must be positive when scores is given");
  }
  if (a.layout.tokens == 0) return absl::OkStatus();
  if (a.indices == nullptr) return InvalidArgument("IndexerTopk: indices is null");
  if (a.q == nullptr) return InvalidArgument("IndexerTopk: q is null");
  if (a.w == nullptr) return InvalidArgument("IndexerTopk: w is null");
  if ((a.k_cache != nullptr) + (a.k_cache_bf16 != nullptr) + (a.k_cache_fp8 != nullptr) != 1) {
    return InvalidArgument("IndexerTopk: exactly one of k_cache, k_cache_bf16 and k_cache_fp8 must be set");
  }
  if (a.k_cache_bf16 != nullptr && a.precision != Precision::kBF16) {
    return InvalidArgument("IndexerTopk: k_cache_bf16 (a BF16 index-K cache) needs precision kBF16");
  }
  if ((a.k_cache_fp8 != nullptr) != (a.precision == Precision::kFP8)) {
    return InvalidArgument("IndexerTopk: precision kFP8 reads an FP8 index-K cache (k_cache_fp8 + k_scale), "
                           "and k_cache_fp8 needs precision kFP8");
  }
  if ((a.k_cache_fp8 != nullptr) != (a.k_scale != nullptr)) {
    return InvalidArgument("IndexerTopk: k_scale goes with k_cache_fp8 (one F32 scale per slot)");
  }
  return internal::ValidateLayout(a.layout, a.num_slots, "IndexerTopk");
}

void WriteShortRow(int pos, int k, int32_t* out) {
  for (int i = 0; i <= pos; ++i) out[i] = i;
  for (int i = pos + 1; i < k; ++i) out[i] = -1;
}

}  // namespace

absl::Status CpuBackend::IndexerTopk(const IndexerArgs& a) {
  int k_stride = 0;
  IC_RETURN_IF_ERROR(ValidateIndexer(a, &k_stride));
  const TokenLayout& l = a.layout;
  if (l.tokens == 0) return absl::OkStatus();
  const int H = a.heads, D = a.head_dim, K = a.k;
  const bool want_scores = a.scores != nullptr;
  const bool bf16 = a.precision == Precision::kBF16;
  const bool fp8 = a.precision == Precision::kFP8;
  constexpr int64_t kScoreBudget = int64_t{1} << 22;  // floats of S per tile (16 MiB)
  std::vector<float> kg, qs, s, isum, ks, qscale;
  std::vector<int32_t> scored;
  for (const internal::SequenceTokens& seq : internal::GroupBySequence(l)) {
    scored.clear();
    for (int32_t t : seq.tokens) {
      const int pos = l.token_pos[t];
      if (pos + 1 > K || want_scores) {
        scored.push_back(t);
      } else {
        WriteShortRow(pos, K, a.indices + static_cast<int64_t>(t) * K);
      }
    }
    if (scored.empty()) continue;
    const int lk = l.token_pos[scored.back()] + 1;
    kg.resize(static_cast<size_t>(lk) * D);
    if (a.k_cache_fp8 != nullptr) {  // E4M3 values (unscaled) and the per-key scales
      ks.resize(lk);
      for (int p = 0; p < lk; ++p) {
        const int64_t slot = internal::SlotOf(l, seq.seq, p);
        const uint8_t* src = a.k_cache_fp8 + slot * k_stride;
        float* dst = kg.data() + static_cast<size_t>(p) * D;
        for (int c = 0; c < D; ++c) dst[c] = internal::E4m3ToFloat(src[c]);
        ks[p] = a.k_scale[slot];
      }
    } else if (a.k_cache_bf16 != nullptr) {  // already BF16
      internal::GatherSequenceRows(l, seq.seq, lk, a.k_cache_bf16, k_stride, 0, D, kg.data());
    } else {
      internal::GatherSequenceRows(l, seq.seq, lk, a.k_cache, k_stride, 0, D, kg.data());
      if (bf16) internal::RoundAllToBf16(kg.data(), kg.size());
    }
    const int n = static_cast<int>(scored.size());
    const int tile = static_cast<int>(std::clamp<int64_t>(kScoreBudget / (static_cast<int64_t>(H) * lk), 1, 64));
    for (int t0 = 0; t0 < n; t0 += tile) {
      const int nt = std::min(tile, n - t0);
      const int lt = l.token_pos[scored[t0 + nt - 1]] + 1;
      qs.resize(static_cast<size_t>(nt) * H * D);
      s.resize(static_cast<size_t>(nt) * H * lt);
      isum.resize(static_cast<size_t>(nt) * lt);
      for (int i = 0; i < nt; ++i) {
        std::memcpy(qs.data() + static_cast<size_t>(i) * H * D, a.q + static_cast<int64_t>(scored[t0 + i]) * H * D,
                    sizeof(float) * H * D);
      }
      if (bf16) internal::RoundAllToBf16(qs.data(), qs.size());
      if (fp8) {  // each (token, head) row of q to E4M3 with its scale amax / 448
        qscale.resize(static_cast<size_t>(nt) * H);
        for (int r = 0; r < nt * H; ++r) {
          float* row = qs.data() + static_cast<size_t>(r) * D;
          float amax = 0.0f;
          for (int c = 0; c < D; ++c) amax = std::max(amax, std::fabs(row[c]));
          const float scale = internal::Fp8Scale(amax);
          const float inv = 1.0f / scale;  // exact: a power of two
          for (int c = 0; c < D; ++c) row[c] = internal::E4m3ToFloat(internal::FloatToE4m3(row[c] * inv));
          qscale[r] = scale;
        }
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nt * H, lt, D, 1.0f, qs.data(), D, kg.data(), D, 0.0f,
                  s.data(), lt);
      internal::ParallelFor(nt, 1, [&](int64_t b, int64_t e) {
        std::vector<uint64_t> scratch;
        for (int64_t i = b; i < e; ++i) {
          const int32_t t = scored[t0 + i];
          const int pos = l.token_pos[t];
          const int valid = pos + 1;
          float* acc = isum.data() + i * lt;
          std::fill(acc, acc + valid, 0.0f);
          for (int j = 0; j < H; ++j) {
            float wj = a.w[static_cast<int64_t>(t) * H + j];
            if (fp8) wj *= qscale[i * H + j];
            const float* srow = s.data() + (i * H + j) * lt;
            internal::ReluAxpy(acc, srow, wj, valid);
          }
          if (fp8) {
            for (int p = 0; p < valid; ++p) acc[p] *= ks[p];
          }
          if (want_scores) {
            float* out = a.scores + static_cast<int64_t>(t) * a.scores_stride;
            const int m = std::min(valid, a.scores_stride);
            std::copy(acc, acc + m, out);
            std::fill(out + m, out + a.scores_stride, -std::numeric_limits<float>::infinity());
          }
          int32_t* idx = a.indices + static_cast<int64_t>(t) * K;
          if (valid <= K) {
            WriteShortRow(pos, K, idx);
          } else {
            internal::SelectTopkRow(acc, valid, K, idx, scratch);
          }
        }
      });
    }
  }
  return absl::OkStatus();
}

}  // namespace ic::kernels::cpu
