// CPU backend: token-level cross-entropy, loss[t] = logsumexp(logits[t]) − logits[t, target]
// (max-subtracted; float exponentials summed in double); targets < 0 are ignored (loss 0). Also the
// Hadamard rotation and the indexer's distillation KL with its gradients (IndexerDistill: every dot product,
// sum and exponential in double; rows parallel for kl, grad_q and grad_w, keys parallel for grad_k, so
// every sum has one fixed order).
#include <algorithm>
#include <cmath>
#include <new>
#include <vector>

#include "absl/strings/str_cat.h"
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

absl::Status CpuBackend::IndexerDistill(const IndexerDistillArgs& a) {
  IC_RETURN_IF_ERROR(ValidateIndexerDistill(a));
  if (a.tokens == 0) return absl::OkStatus();
  const int64_t T = a.tokens, H = a.heads, d = a.head_dim;
  auto dot = [&](int64_t t, int64_t j, int64_t s) {
    const float* q = a.q + (t * H + j) * d;
    const float* k = a.k + s * d;
    double acc = 0;
    for (int64_t i = 0; i < d; ++i) acc += static_cast<double>(q[i]) * k[i];
    return acc;
  };
  // G[t, s] for s ≤ t (row-major [T, T] doubles; 0 in skipped rows).
  std::vector<double> G;
  try {
    G.assign(static_cast<size_t>(T * T), 0.0);
  } catch (const std::exception&) {  // bad_alloc, or length_error beyond the address space
    return absl::ResourceExhaustedError(absl::StrCat("IndexerDistill: out of host memory for the [", T, ", ", T,
                                                     "] double scratch (", T * T * 8, " bytes)"));
  }
  internal::ParallelFor(T, 1, [&](int64_t b, int64_t e) {
    std::vector<double> I;
    for (int64_t t = b; t < e; ++t) {
      const float* p = a.p + t * T;
      double mass = 0;
      for (int64_t s = 0; s <= t; ++s) mass += p[s];
      if (!(mass > 0)) {
        a.kl[t] = 0.0f;
        continue;
      }
      I.assign(t + 1, 0.0);
      for (int64_t s = 0; s <= t; ++s) {
        for (int64_t j = 0; j < H; ++j) I[s] += static_cast<double>(a.w[t * H + j]) * std::max(0.0, dot(t, j, s));
      }
      const double mx = *std::max_element(I.begin(), I.end());
      double z = 0;
      for (int64_t s = 0; s <= t; ++s) z += std::exp(I[s] - mx);
      const double lse = mx + std::log(z);
      double kl = 0;
      for (int64_t s = 0; s <= t; ++s) {
        const double ph = p[s] / mass;
        if (ph > 0) kl += ph * (std::log(ph) - I[s] + lse);
        G[t * T + s] = std::exp(I[s] - lse) - ph;
      }
      a.kl[t] = static_cast<float>(kl);
    }
  });
  if (a.grad_q == nullptr) return absl::OkStatus();
  internal::ParallelFor(T, 1, [&](int64_t b, int64_t e) {
    std::vector<double> gq(d);
    for (int64_t t = b; t < e; ++t) {
      for (int64_t j = 0; j < H; ++j) {
        std::fill(gq.begin(), gq.end(), 0.0);
        double gw = 0;
        const double w = a.w[t * H + j];
        for (int64_t s = 0; s <= t; ++s) {
          const double g = G[t * T + s], x = dot(t, j, s);
          if (g == 0 || x <= 0) continue;
          gw += g * x;
          for (int64_t i = 0; i < d; ++i) gq[i] += g * w * a.k[s * d + i];
        }
        a.grad_w[t * H + j] = static_cast<float>(gw);
        for (int64_t i = 0; i < d; ++i) a.grad_q[(t * H + j) * d + i] = static_cast<float>(gq[i]);
      }
    }
  });
  internal::ParallelFor(T, 1, [&](int64_t b, int64_t e) {
    std::vector<double> gk(d);
    for (int64_t s = b; s < e; ++s) {
      std::fill(gk.begin(), gk.end(), 0.0);
      for (int64_t t = s; t < T; ++t) {
        const double g = G[t * T + s];
        if (g == 0) continue;
        for (int64_t j = 0; j < H; ++j) {
          if (dot(t, j, s) <= 0) continue;
          const double gw = g * a.w[t * H + j];
          const float* q = a.q + (t * H + j) * d;
          for (int64_t i = 0; i < d; ++i) gk[i] += gw * q[i];
        }
      }
      for (int64_t i = 0; i < d; ++i) a.grad_k[s * d + i] = static_cast<float>(gk[i]);
    }
  });
  return absl::OkStatus();
}

}  // namespace ic::kernels::cpu
