// CPU backend: exact top-k (DESIGN.md §3).
//
// Every candidate gets a 64-bit key (total-order score key << 32 | ~position), so "larger key" means
// "better": higher score, and on equal scores the smaller position; +inf > finite > −inf > NaN, −0 == +0.
// std::nth_element over all candidates finds the k-th key; one pass in position order then emits the
// k positions whose key is ≥ it (keys are unique, so exactly k). No fixed candidate buffer, so any tie
// bucket size is handled exactly.
#include <algorithm>
#include <functional>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "sdk/status.h"

namespace ic::kernels::cpu {
namespace internal {

void SelectTopkRow(const float* scores, int len, int k, int32_t* out, std::vector<uint64_t>& scratch) {
  if (k <= 0) return;
  if (len <= k) {
    for (int i = 0; i < len; ++i) out[i] = i;
    for (int i = std::max(len, 0); i < k; ++i) out[i] = -1;
    return;
  }
  scratch.resize(len);
  for (int i = 0; i < len; ++i) scratch[i] = TopkPackedKey(scores[i], i);
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(), std::greater<uint64_t>());
  const uint64_t threshold = scratch[k - 1];
  int n = 0;
  for (int i = 0; i < len && n < k; ++i) {
    if (TopkPackedKey(scores[i], i) >= threshold) out[n++] = i;
  }
}

}  // namespace internal

absl::Status CpuBackend::Topk(const TopkArgs& a) {
  if (a.rows < 0) return InvalidArgument("Topk: rows = ", a.rows, " is negative");
  if (a.k < 0) return InvalidArgument("Topk: k = ", a.k, " is negative");
  if (a.stride < 0) return InvalidArgument("Topk: stride = ", a.stride, " is negative");
  if (a.rows == 0 || a.k == 0) return absl::OkStatus();
  if (a.out == nullptr) return InvalidArgument("Topk: out is null");
  if (a.lengths == nullptr) return InvalidArgument("Topk: lengths is null");
  for (int r = 0; r < a.rows; ++r) {
    if (a.lengths[r] < 0 || a.lengths[r] > a.stride) {
      return InvalidArgument("Topk: lengths[", r, "] = ", a.lengths[r], " out of range [0, stride = ", a.stride, "]");
    }
  }
  if (a.scores == nullptr && a.stride > 0) return InvalidArgument("Topk: scores is null");
  internal::ParallelFor(a.rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> scratch;
    for (int64_t r = begin; r < end; ++r) {
      internal::SelectTopkRow(a.scores + r * a.stride, a.lengths[r], a.k, a.out + r * a.k, scratch);
    }
  });
  return absl::OkStatus();
}

}  // namespace ic::kernels::cpu
