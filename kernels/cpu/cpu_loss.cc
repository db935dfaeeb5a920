// CPU backend: token-level cross-entropy, loss[t] = logsumexp(logits[t]) − logits[t, target]
// (max-subtracted; float exponentials summed in double); targets < 0 are ignored (loss 0).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "sdk/status.h"

namespace ic::kernels::cpu {

absl::Status CpuBackend::CrossEntropy(const CrossEntropyArgs& a) {
  if (a.tokens < 0) return InvalidArgument("CrossEntropy: tokens = ", a.tokens, " is negative");
  if (a.vocab <= 0) return InvalidArgument("CrossEntropy: vocab = ", a.vocab, " must be positive");
  if (a.stride < 0 || (a.stride > 0 && a.stride < a.vocab)) {
    return InvalidArgument("CrossEntropy: stride = ", a.stride, " is smaller than vocab = ", a.vocab);
  }
  if (a.tokens == 0) return absl::OkStatus();
  if (a.loss == nullptr) return InvalidArgument("CrossEntropy: loss is null");
  if (a.logits == nullptr) return InvalidArgument("CrossEntropy: logits is null");
  if (a.targets == nullptr) return InvalidArgument("CrossEntropy: targets is null");
  for (int t = 0; t < a.tokens; ++t) {
    if (a.targets[t] >= a.vocab) {
      return InvalidArgument("CrossEntropy: target id ", a.targets[t], " (targets[", t, "]) out of range for vocab_size ",
                             a.vocab);
    }
  }
  const int64_t stride = a.stride > 0 ? a.stride : a.vocab;
  internal::ParallelFor(a.tokens, 4, [&](int64_t b, int64_t e) {
    std::vector<float> row(a.vocab);
    for (int64_t t = b; t < e; ++t) {
      if (a.targets[t] < 0) {
        a.loss[t] = 0.0f;
        continue;
      }
      const float* x = a.logits + t * stride;
      const float m = internal::MaxOf(x, a.vocab);
      std::copy(x, x + a.vocab, row.begin());
      const double sum = internal::ExpShiftSum(row.data(), a.vocab, m);
      a.loss[t] = static_cast<float>(std::log(sum) + m - static_cast<double>(x[a.targets[t]]));
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::Hadamard(const HadamardArgs& a) {
  if (a.rows < 0) return InvalidArgument("Hadamard: rows = ", a.rows, " is negative");
  if (a.dim < 1 || a.dim > 1024 || (a.dim & (a.dim - 1)) != 0) {
    return InvalidArgument("Hadamard: dim = ", a.dim, " must be a power of two in [1, 1024]");
  }
  const int stride = a.stride != 0 ? a.stride : a.dim;
  if (stride < a.dim) return InvalidArgument("Hadamard: stride = ", stride, " < dim = ", a.dim);
  if (a.rows == 0) return absl::OkStatus();
  if (a.x == nullptr) return InvalidArgument("Hadamard: x is null");
  const float norm = 1.0f / std::sqrt(static_cast<float>(a.dim));
  internal::ParallelFor(a.rows, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float* x = a.x + r * stride;
      for (int h = 1; h < a.dim; h *= 2) {  // butterflies: (x_i, x_{i+h}) → (x_i + x_{i+h}, x_i − x_{i+h})
        for (int i = 0; i < a.dim; i += 2 * h) {
          for (int j = i; j < i + h; ++j) {
            const float u = x[j], v = x[j + h];
            x[j] = u + v;
            x[j + h] = u - v;
          }
        }
      }
      for (int i = 0; i < a.dim; ++i) x[i] *= norm;
    }
  });
  return absl::OkStatus();
}

}  // namespace ic::kernels::cpu
