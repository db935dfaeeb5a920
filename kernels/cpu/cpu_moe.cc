// CPU backend: DeepSeek-V3 / V3.2 grouped sigmoid router (HF DeepseekV3TopkRouter semantics).
//   s = sigmoid(logits); choice = s + bias; group score = sum of the top-2 choice values of the group;
//   the topk_group best groups stay (ties → lower group index); top_k experts by choice among the kept
//   groups (ties → lower expert id), written best first; weight = s of the chosen, divided by
//   (sum + 1e-20) when norm_topk_prob, times routed_scaling_factor.
// Comparisons use the DESIGN.md §3 total order (NaN lowest), so NaN logits cannot break the sort.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "sdk/status.h"

namespace ic::kernels::cpu {

absl::Status CpuBackend::MoeRoute(const MoeRouteArgs& a) {
  if (a.tokens < 0) return InvalidArgument("MoeRoute: tokens = ", a.tokens, " is negative");
  if (a.experts <= 0) return InvalidArgument("MoeRoute: experts = ", a.experts, " must be positive");
  if (a.n_group <= 0 || a.experts % a.n_group != 0) {
    return InvalidArgument("MoeRoute: n_group = ", a.n_group, " must be positive and divide experts = ", a.experts);
  }
  if (a.topk_group <= 0 || a.topk_group > a.n_group) {
    return InvalidArgument("MoeRoute: topk_group = ", a.topk_group, " out of range [1, n_group = ", a.n_group, "]");
  }
  const int per_group = a.experts / a.n_group;
  if (a.top_k <= 0 || a.top_k > a.topk_group * per_group) {
    return InvalidArgument("MoeRoute: top_k = ", a.top_k, " out of range [1, topk_group·experts/n_group = ",
                           a.topk_group * per_group, "]");
  }
  if (!std::isfinite(a.routed_scaling_factor)) {
    return InvalidArgument("MoeRoute: routed_scaling_factor = ", a.routed_scaling_factor, " is not finite");
  }
  if (a.tokens == 0) return absl::OkStatus();
  if (a.expert_ids == nullptr) return InvalidArgument("MoeRoute: expert_ids is null");
  if (a.expert_weights == nullptr) return InvalidArgument("MoeRoute: expert_weights is null");
  if (a.logits == nullptr) return InvalidArgument("MoeRoute: logits is null");

  using internal::TopkSortKey;
  std::vector<float> s(a.experts), choice(a.experts);
  std::vector<float> group_score(a.n_group);
  std::vector<int> groups(a.n_group), cand;
  for (int t = 0; t < a.tokens; ++t) {
    const float* logit = a.logits + static_cast<int64_t>(t) * a.experts;
    for (int e = 0; e < a.experts; ++e) {
      s[e] = 1.0f / (1.0f + std::exp(-logit[e]));
      choice[e] = s[e] + (a.bias != nullptr ? a.bias[e] : 0.0f);
    }
    for (int gi = 0; gi < a.n_group; ++gi) {
      const float* c = choice.data() + static_cast<int64_t>(gi) * per_group;
      int best = 0;
      for (int e = 1; e < per_group; ++e) {
        if (TopkSortKey(c[e]) > TopkSortKey(c[best])) best = e;
      }
      int second = -1;
      for (int e = 0; e < per_group; ++e) {
        if (e == best) continue;
        if (second < 0 || TopkSortKey(c[e]) > TopkSortKey(c[second])) second = e;
      }
      group_score[gi] = second < 0 ? c[best] : c[best] + c[second];
    }
    std::iota(groups.begin(), groups.end(), 0);
    std::stable_sort(groups.begin(), groups.end(), [&](int x, int y) {
      return TopkSortKey(group_score[x]) > TopkSortKey(group_score[y]);
    });
    cand.clear();
    for (int i = 0; i < a.topk_group; ++i) {
      for (int e = 0; e < per_group; ++e) cand.push_back(groups[i] * per_group + e);
    }
    std::sort(cand.begin(), cand.end());
    std::stable_sort(cand.begin(), cand.end(),
                     [&](int x, int y) { return TopkSortKey(choice[x]) > TopkSortKey(choice[y]); });
    int32_t* ids = a.expert_ids + static_cast<int64_t>(t) * a.top_k;
    float* wts = a.expert_weights + static_cast<int64_t>(t) * a.top_k;
    float sum = 0.0f;
    for (int i = 0; i < a.top_k; ++i) {
      ids[i] = cand[i];
      wts[i] = s[cand[i]];
      sum += wts[i];
    }
    const float denom = a.norm_topk_prob ? sum + 1e-20f : 1.0f;
    for (int i = 0; i < a.top_k; ++i) wts[i] = wts[i] / denom * a.routed_scaling_factor;
  }
  return absl::OkStatus();
}

namespace {

// Σ_k x[k] · w[k] in F32, w F32 or BF16 bit patterns (widened exactly).
float Dot(const float* x, const float* w, int n) {
  float s = 0.0f;
  for (int k = 0; k < n; ++k) s += x[k] * w[k];
  return s;
}
float Dot(const float* x, const uint16_t* w, int n) {
  float s = 0.0f;
  for (int k = 0; k < n; ++k) s += x[k] * internal::Bf16ToFloat(w[k]);
  return s;
}

// An FP8 weight (MoeExpertsArgs::fp8): E4M3 bytes and 128 × 128 block scales with `cols` in-features.
struct Fp8Rows {
  const uint8_t* bytes;
  const float* scale;
  int cols;
};
float Dot(const float* x, const Fp8Rows& w, int64_t r, std::vector<float>& row) {
  row.resize(w.cols);
  internal::WidenFp8Row(w.bytes, w.cols, w.scale, Fp8ScaleLd(w.cols), r, w.cols, row.data());
  return Dot(x, row.data(), w.cols);
}

// One token's routed experts (MoeExpertsArgs), weights of type W (float, BF16 bits, or Fp8Rows).
template <typename W>
absl::Status TokenExperts(const MoeExpertsArgs& a, int t, std::vector<float>& xin, std::vector<float>& act,
                          std::vector<float>& acc) {
  const int H = a.hidden, I = a.inter, E = a.experts;
  constexpr bool kFp8 = std::is_same_v<W, Fp8Rows>;
  using Ptr = std::conditional_t<kFp8, const uint8_t*, const W*>;
  const auto* w = reinterpret_cast<const Ptr*>(a.weights);
  xin.assign(a.x + static_cast<int64_t>(t) * H, a.x + static_cast<int64_t>(t + 1) * H);
  if (a.bf16) internal::RoundAllToBf16(xin.data(), xin.size());
  if (a.fp8) internal::QuantizeFp8Blocks(xin.data(), H);
  std::vector<float> row;
  // Σ_k in[k] · matrix[r, k] for the three kinds of weight.
  auto dot = [&](const float* in, Ptr m, const float* scale, int64_t r, int n) -> float {
    if constexpr (kFp8) {
      return Dot(in, Fp8Rows{m, scale, n}, r, row);
    } else {
      (void)scale;
      return Dot(in, m + r * n, n);
    }
  };
  acc.assign(H, 0.0f);
  const bool shared = a.shared_gate != nullptr;
  for (int j = 0; j < a.top_k + (shared ? 1 : 0); ++j) {  // routed experts in j order, then the shared one
    Ptr gate, up, down;
    const float *gate_s = nullptr, *up_s = nullptr, *down_s = nullptr;
    float wt = 1.0f;
    if (j < a.top_k) {
      const int e = a.expert_ids[static_cast<int64_t>(t) * a.top_k + j];
      if (e < 0 || e >= E) {
        return InvalidArgument("MoeExperts: expert_ids[", t, ", ", j, "] = ", e, " is outside [0, experts = ", E, ")");
      }
      gate = w[e], up = w[E + e], down = w[2 * E + e];
      if (kFp8) {
        const auto* s = reinterpret_cast<const float* const*>(a.weights) + 3 * E;
        gate_s = s[e], up_s = s[E + e], down_s = s[2 * E + e];
      }
      if (gate == nullptr || up == nullptr || down == nullptr ||
          (kFp8 && (gate_s == nullptr || up_s == nullptr || down_s == nullptr))) {
        return InvalidArgument("MoeExperts: expert ", e, " (expert_ids[", t, ", ", j, "]) has a null weight pointer");
      }
      wt = a.expert_weights[static_cast<int64_t>(t) * a.top_k + j];
    } else {
      gate = static_cast<Ptr>(a.shared_gate), up = static_cast<Ptr>(a.shared_up);
      down = static_cast<Ptr>(a.shared_down);
      gate_s = a.shared_gate_scale, up_s = a.shared_up_scale, down_s = a.shared_down_scale;
    }
    act.resize(I);
    for (int i = 0; i < I; ++i) {
      const float g = dot(xin.data(), gate, gate_s, i, H);
      const float u = dot(xin.data(), up, up_s, i, H);
      act[i] = g / (1.0f + std::exp(-g)) * u;
    }
    if (a.bf16) internal::RoundAllToBf16(act.data(), act.size());
    if (a.fp8) internal::QuantizeFp8Blocks(act.data(), I);
    for (int c = 0; c < H; ++c) acc[c] += wt * dot(act.data(), down, down_s, c, I);
  }
  float* out = a.out + static_cast<int64_t>(t) * H;
  for (int c = 0; c < H; ++c) out[c] += acc[c];
  return absl::OkStatus();
}

}  // namespace

// Token by token: the chosen experts' gate / up rows against x, SiLU product, down rows, weighted sum in
// j order, then one add into out (a bad id leaves that token's output unchanged).
absl::Status CpuBackend::MoeExperts(const MoeExpertsArgs& a) {
  IC_RETURN_IF_ERROR(ValidateMoeExperts(a));
  if (a.tokens == 0 || a.hidden == 0 || a.top_k == 0) return absl::OkStatus();
  std::vector<float> xin, act, acc;
  for (int t = 0; t < a.tokens; ++t) {
    IC_RETURN_IF_ERROR(a.fp8    ? TokenExperts<Fp8Rows>(a, t, xin, act, acc)
                       : a.bf16 ? TokenExperts<uint16_t>(a, t, xin, act, acc)
                                : TokenExperts<float>(a, t, xin, act, acc));
  }
  return absl::OkStatus();
}

}  // namespace ic::kernels::cpu
