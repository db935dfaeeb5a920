// Indexer distillation loss, analytic gradients, Adam (see distill.h).
#include "sdk/distill.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <numbers>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "sdk/device_buffer.h"
#include "sdk/status.h"

namespace ic {
namespace {

constexpr double kLayerNormEps = 1e-6;

struct Dims {
  int T = 0, H = 0, d = 0, R = 0, in_q = 0, hidden = 0;
};

absl::Status CheckTensor(const HostTensor& t, const std::vector<int64_t>& shape, const char* name) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  if (t.shape != shape || static_cast<int64_t>(t.data.size()) != n) {
    return InvalidArgument("IndexerDistillLoss: weights.", name, " has shape [", absl::StrJoin(t.shape, ", "),
                           "] and ", t.data.size(), " values; expected [", absl::StrJoin(shape, ", "), "]");
  }
  for (size_t i = 0; i < t.data.size(); ++i) {
    if (!std::isfinite(t.data[i])) return InvalidArgument("IndexerDistillLoss: weights.", name, "[", i, "] is not finite");
  }
  return absl::OkStatus();
}

absl::Status CheckFinite(const std::vector<float>& v, const char* name) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) return InvalidArgument("IndexerDistillLoss: batch.", name, "[", i, "] is not finite");
  }
  return absl::OkStatus();
}

absl::StatusOr<Dims> Validate(const ModelConfig& c, const IndexerWeights& w, const IndexerBatch& b, bool need_target) {
  Dims dm;
  dm.H = c.index_n_heads;
  dm.d = c.index_head_dim;
  dm.R = c.index_rope_head_dim;
  dm.hidden = c.hidden_size;
  dm.in_q = c.mla ? c.q_lora_rank : c.hidden_size;
  dm.T = b.tokens;
  if (dm.H <= 0) return InvalidArgument("IndexerDistillLoss: config.index_n_heads = ", dm.H, " must be positive");
  if (dm.d <= 0) return InvalidArgument("IndexerDistillLoss: config.index_head_dim = ", dm.d, " must be positive");
  if (dm.R < 0 || dm.R > dm.d || dm.R % 2 != 0) {
    return InvalidArgument("IndexerDistillLoss: config.index_rope_head_dim = ", dm.R,
                           " must be even and in [0, index_head_dim = ", dm.d, "]");
  }
  if (dm.hidden <= 0) return InvalidArgument("IndexerDistillLoss: config.hidden_size = ", dm.hidden, " must be positive");
  if (dm.in_q <= 0) {
    return InvalidArgument("IndexerDistillLoss: config.", c.mla ? "q_lora_rank" : "hidden_size", " = ", dm.in_q,
                           " must be positive (the indexer query input width)");
  }
  IC_RETURN_IF_ERROR(CheckTensor(w.wq, {int64_t{dm.H} * dm.d, dm.in_q}, "wq"));
  IC_RETURN_IF_ERROR(CheckTensor(w.wk, {dm.d, dm.hidden}, "wk"));
  IC_RETURN_IF_ERROR(CheckTensor(w.k_norm_weight, {dm.d}, "k_norm_weight"));
  IC_RETURN_IF_ERROR(CheckTensor(w.k_norm_bias, {dm.d}, "k_norm_bias"));
  IC_RETURN_IF_ERROR(CheckTensor(w.weights_proj, {dm.H, dm.hidden}, "weights_proj"));

  const int64_t T = dm.T;
  if (T <= 0) return InvalidArgument("IndexerDistillLoss: batch.tokens = ", T, " must be positive");
  if (static_cast<int64_t>(b.x_q.size()) != T * dm.in_q) {
    return InvalidArgument("IndexerDistillLoss: batch.x_q has ", b.x_q.size(), " values; expected tokens · in_q = ", T,
                           " · ", dm.in_q);
  }
  if (static_cast<int64_t>(b.x.size()) != T * dm.hidden) {
    return InvalidArgument("IndexerDistillLoss: batch.x has ", b.x.size(), " values; expected tokens · hidden = ", T,
                           " · ", dm.hidden);
  }
  if (static_cast<int64_t>(b.positions.size()) != T) {
    return InvalidArgument("IndexerDistillLoss: batch.positions has ", b.positions.size(), " values; expected tokens = ", T);
  }
  for (int64_t t = 0; t < T; ++t) {
    if (b.positions[t] < 0) return InvalidArgument("IndexerDistillLoss: batch.positions[", t, "] = ", b.positions[t], " is negative");
  }
  IC_RETURN_IF_ERROR(CheckFinite(b.x_q, "x_q"));
  IC_RETURN_IF_ERROR(CheckFinite(b.x, "x"));
  if (!need_target) return dm;

  const bool dense = !b.p_dense.empty();
  const bool sparse = !b.p_offsets.empty() || !b.p_index.empty() || !b.p_prob.empty();
  if (dense == sparse) {
    return InvalidArgument("IndexerDistillLoss: batch needs exactly one target: p_dense (", b.p_dense.size(),
                           " values) or p_offsets/p_index/p_prob (", b.p_offsets.size(), "/", b.p_index.size(), "/",
                           b.p_prob.size(), " values)");
  }
  if (dense) {
    if (static_cast<int64_t>(b.p_dense.size()) != T * T) {
      return InvalidArgument("IndexerDistillLoss: batch.p_dense has ", b.p_dense.size(), " values; expected tokens² = ", T * T);
    }
    for (int64_t t = 0; t < T; ++t) {
      double sum = 0;
      for (int64_t s = 0; s < T; ++s) {
        const float p = b.p_dense[t * T + s];
        if (!std::isfinite(p) || p < 0) return InvalidArgument("IndexerDistillLoss: batch.p_dense[", t, ", ", s, "] = ", p, " is not a probability");
        if (s > t && p != 0) return InvalidArgument("IndexerDistillLoss: batch.p_dense[", t, ", ", s, "] = ", p, " is nonzero above the diagonal (s > t)");
        sum += p;
      }
      if (sum != 0 && std::abs(sum - 1) > kDistillRowSumTolerance) {
        return InvalidArgument("IndexerDistillLoss: batch.p_dense row ", t, " sums to ", sum, ", not 1 (or 0 to skip it)");
      }
    }
  } else {
    if (static_cast<int64_t>(b.p_offsets.size()) != T + 1) {
      return InvalidArgument("IndexerDistillLoss: batch.p_offsets has ", b.p_offsets.size(), " values; expected tokens + 1 = ", T + 1);
    }
    if (b.p_prob.size() != b.p_index.size()) {
      return InvalidArgument("IndexerDistillLoss: batch.p_prob has ", b.p_prob.size(), " values but batch.p_index has ", b.p_index.size());
    }
    if (b.p_offsets[0] != 0 || b.p_offsets[T] != static_cast<int64_t>(b.p_index.size())) {
      return InvalidArgument("IndexerDistillLoss: batch.p_offsets must start at 0 and end at p_index.size() = ", b.p_index.size(),
                             "; got ", b.p_offsets[0], " .. ", b.p_offsets[T]);
    }
    std::vector<int64_t> seen(T, -1);
    for (int64_t t = 0; t < T; ++t) {
      if (b.p_offsets[t + 1] < b.p_offsets[t]) return InvalidArgument("IndexerDistillLoss: batch.p_offsets decreases at row ", t);
      double sum = 0;
      for (int64_t e = b.p_offsets[t]; e < b.p_offsets[t + 1]; ++e) {
        const int32_t s = b.p_index[e];
        const float p = b.p_prob[e];
        if (s < 0 || s > t) return InvalidArgument("IndexerDistillLoss: batch.p_index[", e, "] = ", s, " is outside [0, ", t, "] (row ", t, ")");
        if (seen[s] == t) return InvalidArgument("IndexerDistillLoss: batch.p_index repeats position ", s, " in row ", t);
        seen[s] = t;
        if (!std::isfinite(p) || p < 0) return InvalidArgument("IndexerDistillLoss: batch.p_prob[", e, "] = ", p, " is not a probability");
        sum += p;
      }
      if (b.p_offsets[t + 1] > b.p_offsets[t] && std::abs(sum - 1) > kDistillRowSumTolerance) {
        return InvalidArgument("IndexerDistillLoss: batch.p_prob of row ", t, " sums to ", sum, ", not 1");
      }
    }
  }
  return dm;
}

std::vector<double> ToDouble(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// C[M, N] (+)= alpha · op(A) · op(B), row-major.
void Gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda, const double* B, int ldb,
          double beta, double* C, int ldc) {
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B,
              ldb, beta, C, ldc);
}

// Rotates x[0..R) in place: forward y = Rot·x, or the transpose (the gradient map).
void RopeApply(double* x, const double* cs, int R, bool interleaved, bool transpose) {
  const int half = R / 2;
  for (int i = 0; i < half; ++i) {
    const double c = cs[2 * i], s = transpose ? -cs[2 * i + 1] : cs[2 * i + 1];
    double* p0 = interleaved ? x + 2 * i : x + i;
    double* p1 = interleaved ? x + 2 * i + 1 : x + i + half;
    const double x0 = *p0, x1 = *p1;
    *p0 = x0 * c - x1 * s;
    *p1 = x1 * c + x0 * s;
  }
}

struct Forward {
  Dims dm;
  bool interleaved = false;
  double w_scale = 1;
  std::vector<double> xq, x;      // inputs
  std::vector<double> q;          // [T, H, d] after RoPE
  std::vector<double> k;          // [T, d] after LayerNorm and RoPE
  std::vector<double> khat, rstd; // LayerNorm normalised input [T, d], 1/sqrt(var + eps) [T]
  std::vector<double> wv;         // [T, H], scaled
  std::vector<double> cs;         // [T, R] (cos, sin) pairs × attention_scaling
  std::vector<double> gamma;      // k_norm weight
};

Forward RunForward(const ModelConfig& c, const IndexerWeights& W, const IndexerBatch& b, const Dims& dm) {
  Forward f;
  f.dm = dm;
  const int T = dm.T, H = dm.H, d = dm.d, R = dm.R;
  f.interleaved = c.indexer_rope_interleave;
  f.w_scale = 1.0 / std::sqrt(static_cast<double>(H)) / std::sqrt(static_cast<double>(d));
  f.xq = ToDouble(b.x_q);
  f.x = ToDouble(b.x);
  f.gamma = ToDouble(W.k_norm_weight.data);
  const std::vector<double> wq = ToDouble(W.wq.data), wk = ToDouble(W.wk.data), ww = ToDouble(W.weights_proj.data);
  const std::vector<double> beta = ToDouble(W.k_norm_bias.data);

  f.q.assign(static_cast<size_t>(T) * H * d, 0);
  Gemm(false, true, T, H * d, dm.in_q, 1.0, f.xq.data(), dm.in_q, wq.data(), dm.in_q, 0.0, f.q.data(), H * d);
  f.k.assign(static_cast<size_t>(T) * d, 0);
  Gemm(false, true, T, d, dm.hidden, 1.0, f.x.data(), dm.hidden, wk.data(), dm.hidden, 0.0, f.k.data(), d);
  f.wv.assign(static_cast<size_t>(T) * H, 0);
  Gemm(false, true, T, H, dm.hidden, f.w_scale, f.x.data(), dm.hidden, ww.data(), dm.hidden, 0.0, f.wv.data(), H);

  // LayerNorm (biased variance, eps 1e-6).
  f.khat.assign(static_cast<size_t>(T) * d, 0);
  f.rstd.assign(T, 0);
  for (int t = 0; t < T; ++t) {
    double* kt = &f.k[static_cast<size_t>(t) * d];
    double mean = 0;
    for (int i = 0; i < d; ++i) mean += kt[i];
    mean /= d;
    double var = 0;
    for (int i = 0; i < d; ++i) var += (kt[i] - mean) * (kt[i] - mean);
    var /= d;
    const double r = 1.0 / std::sqrt(var + kLayerNormEps);
    f.rstd[t] = r;
    for (int i = 0; i < d; ++i) {
      const double h = (kt[i] - mean) * r;
      f.khat[static_cast<size_t>(t) * d + i] = h;
      kt[i] = h * f.gamma[i] + beta[i];
    }
  }

  // RoPE.
  if (R > 0) {
    const RopeTables tables = ComputeRope(c.rope, R, c.max_position_embeddings);
    f.cs.assign(static_cast<size_t>(T) * R, 0);
    for (int t = 0; t < T; ++t) {
      const float pos = static_cast<float>(b.positions[t]);
      for (int i = 0; i < R / 2; ++i) {
        const float angle = pos * tables.inv_freq[i];  // fp32 product, as HF and the CPU kernel
        f.cs[static_cast<size_t>(t) * R + 2 * i] = std::cos(static_cast<double>(angle)) * tables.attention_scaling;
        f.cs[static_cast<size_t>(t) * R + 2 * i + 1] = std::sin(static_cast<double>(angle)) * tables.attention_scaling;
      }
      const double* cst = &f.cs[static_cast<size_t>(t) * R];
      for (int j = 0; j < H; ++j) RopeApply(&f.q[(static_cast<size_t>(t) * H + j) * d], cst, R, f.interleaved, false);
      RopeApply(&f.k[static_cast<size_t>(t) * d], cst, R, f.interleaved, false);
    }
  }
  return f;
}

inline double Dot(const double* a, const double* b, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// The dense-target rows through BLAS: query tiles of kTile rows against keys 0..(tile end − 1), per head
// S_j = Q_j·Kᵀ (dgemm), I = Σ_j w_j·ReLU(S_j), softmax over s ≤ t, G = softmax − p, and the backward
// gq_j += (G·w_j·[S_j > 0])·K, gk += (…)ᵀ·Q_j (dgemm), gw_j = Σ_s G·ReLU(S_j). Same arithmetic as the
// per-row loop of the sparse path (up to summation order), O(T²·H·d) in GEMMs; memory H·kTile·T doubles.
void DenseRows(const Forward& f, const IndexerBatch& batch, bool want_grad, std::vector<double>* gq,
               std::vector<double>* gk, std::vector<double>* gw, double* total, int64_t* rows) {
  constexpr int kTile = 256;
  const int T = f.dm.T, H = f.dm.H, d = f.dm.d;
  std::vector<double> S, I, G, D;
  std::vector<char> counted;
  for (int t0 = 0; t0 < T; t0 += kTile) {
    const int t1 = std::min(T, t0 + kTile), m = t1 - t0, n = t1;  // rows t0..t1−1, keys 0..t1−1
    S.assign(static_cast<size_t>(H) * m * n, 0.0);
    for (int j = 0; j < H; ++j) {
      Gemm(false, true, m, n, d, 1.0, &f.q[(static_cast<size_t>(t0) * H + j) * d], H * d, f.k.data(), d, 0.0,
           &S[static_cast<size_t>(j) * m * n], n);
    }
    I.assign(static_cast<size_t>(m) * n, 0.0);
    for (int j = 0; j < H; ++j) {
      const double* Sj = &S[static_cast<size_t>(j) * m * n];
      for (int r = 0; r < m; ++r) {
        const double w = f.wv[static_cast<size_t>(t0 + r) * H + j];
        double* Ir = &I[static_cast<size_t>(r) * n];
        const double* Sr = Sj + static_cast<size_t>(r) * n;
        for (int s = 0; s <= t0 + r; ++s) Ir[s] += w * std::max(0.0, Sr[s]);
      }
    }
    G.assign(static_cast<size_t>(m) * n, 0.0);
    counted.assign(m, 0);
    for (int r = 0; r < m; ++r) {
      const int t = t0 + r;
      const float* prow = &batch.p_dense[static_cast<size_t>(t) * T];
      double psum = 0;
      for (int s = 0; s <= t; ++s) psum += prow[s];
      bool any = false;
      for (int s = 0; s <= t && !any; ++s) any = prow[s] != 0;
      if (!any) continue;
      counted[r] = 1;
      ++*rows;
      const double* Ir = &I[static_cast<size_t>(r) * n];
      const double mx = *std::max_element(Ir, Ir + t + 1);
      double z = 0;
      for (int s = 0; s <= t; ++s) z += std::exp(Ir[s] - mx);
      const double log_z = mx + std::log(z);
      double kl = 0;
      double* Gr = &G[static_cast<size_t>(r) * n];
      for (int s = 0; s <= t; ++s) {
        const double p = prow[s] / psum;
        if (p > 0) kl += p * (std::log(p) - (Ir[s] - log_z));
        Gr[s] = std::exp(Ir[s] - log_z) - p;
      }
      *total += kl;
    }
    if (!want_grad) continue;
    D.assign(static_cast<size_t>(m) * n, 0.0);
    for (int j = 0; j < H; ++j) {
      const double* Sj = &S[static_cast<size_t>(j) * m * n];
      for (int r = 0; r < m; ++r) {
        if (!counted[r]) {
          std::fill_n(&D[static_cast<size_t>(r) * n], n, 0.0);
          continue;
        }
        const int t = t0 + r;
        const double w = f.wv[static_cast<size_t>(t) * H + j];
        const double* Sr = Sj + static_cast<size_t>(r) * n;
        const double* Gr = &G[static_cast<size_t>(r) * n];
        double* Dr = &D[static_cast<size_t>(r) * n];
        double gwj = 0;
        for (int s = 0; s < n; ++s) {
          const bool on = s <= t && Sr[s] > 0;  // ReLU: zero gradient at and below 0
          gwj += on ? Gr[s] * Sr[s] : 0.0;
          Dr[s] = on ? Gr[s] * w : 0.0;
        }
        (*gw)[static_cast<size_t>(t) * H + j] += gwj;
      }
      // gq_j[t0..t1) += D · K[0..n);   gk[0..n) += Dᵀ · Q_j[t0..t1).
      Gemm(false, false, m, d, n, 1.0, D.data(), n, f.k.data(), d, 1.0, &(*gq)[(static_cast<size_t>(t0) * H + j) * d],
           H * d);
      Gemm(true, false, n, d, m, 1.0, D.data(), n, &f.q[(static_cast<size_t>(t0) * H + j) * d], H * d, 1.0,
           gk->data(), d);
    }
  }
}

// DenseRows through Backend::IndexerDistill: q, k, w and p go to the backend as F32; kl and the gradients
// w.r.t. q, k and w come back and are widened to double.
// Calls are serialised by one process-wide lock (a backend is not thread-safe), so that Full layers can
// share the backend from several threads while the host parts of their losses run in parallel.
absl::Status BackendDenseRows(const Forward& f, const IndexerBatch& batch, bool want_grad, kernels::Backend* backend,
                              std::vector<double>* gq, std::vector<double>* gk, std::vector<double>* gw, double* total,
                              int64_t* rows) {
  static std::mutex backend_lock;
  std::lock_guard<std::mutex> lock(backend_lock);  // taken before the buffers, released after they are freed
  const int T = f.dm.T, H = f.dm.H, d = f.dm.d;
  const size_t nq = static_cast<size_t>(T) * H * d, nk = static_cast<size_t>(T) * d, nw = static_cast<size_t>(T) * H;
  const size_t np = static_cast<size_t>(T) * T;
  DeviceBuffer q, k, w, p, kl, grad_q, grad_k, grad_w;
  auto upload = [&](DeviceBuffer& buf, const float* host, size_t n) -> absl::Status {
    IC_RETURN_IF_ERROR(buf.Reserve(backend, n * sizeof(float)));
    return backend->CopyToDevice(buf.as<float>(), host, n * sizeof(float));
  };
  // The backend's F32: a q, k or w beyond its range would come back as an inf loss with an OK status.
  auto to_float = [](const std::vector<double>& v, const char* what) -> absl::StatusOr<std::vector<float>> {
    std::vector<float> out(v.begin(), v.end());
    for (size_t i = 0; i < out.size(); ++i) {
      if (!std::isfinite(out[i])) {
        return InvalidArgument("IndexerDistillLoss: the indexer's ", what, "[", i, "] = ", v[i],
                               " does not fit the backend's F32; use the host path (no backend)");
      }
    }
    return out;
  };
  IC_ASSIGN_OR_RETURN(const std::vector<float> q32, to_float(f.q, "q"));
  IC_ASSIGN_OR_RETURN(const std::vector<float> k32, to_float(f.k, "k"));
  IC_ASSIGN_OR_RETURN(const std::vector<float> w32, to_float(f.wv, "w"));
  IC_RETURN_IF_ERROR(upload(q, q32.data(), nq));
  IC_RETURN_IF_ERROR(upload(k, k32.data(), nk));
  IC_RETURN_IF_ERROR(upload(w, w32.data(), nw));
  IC_RETURN_IF_ERROR(upload(p, batch.p_dense.data(), np));
  IC_RETURN_IF_ERROR(kl.Reserve(backend, T * sizeof(float)));
  kernels::IndexerDistillArgs a{.kl = kl.as<float>(), .q = q.as<float>(), .k = k.as<float>(), .w = w.as<float>(),
                                .p = p.as<float>(), .tokens = T, .heads = H, .head_dim = d};
  if (want_grad) {
    IC_RETURN_IF_ERROR(grad_q.Reserve(backend, nq * sizeof(float)));
    IC_RETURN_IF_ERROR(grad_k.Reserve(backend, nk * sizeof(float)));
    IC_RETURN_IF_ERROR(grad_w.Reserve(backend, nw * sizeof(float)));
    a.grad_q = grad_q.as<float>();
    a.grad_k = grad_k.as<float>();
    a.grad_w = grad_w.as<float>();
  }
  IC_RETURN_IF_ERROR(backend->IndexerDistill(a));
  IC_RETURN_IF_ERROR(backend->Synchronize());
  std::vector<float> host(std::max({static_cast<size_t>(T), nq, nk, nw}));
  auto download = [&](const DeviceBuffer& buf, size_t n, std::vector<double>* out) -> absl::Status {
    IC_RETURN_IF_ERROR(backend->CopyToHost(host.data(), buf.as<float>(), n * sizeof(float)));
    out->assign(host.begin(), host.begin() + static_cast<std::ptrdiff_t>(n));
    return absl::OkStatus();
  };
  // Finite inputs whose scores or products overflow F32 inside the backend come back as inf / NaN.
  auto overflowed = [](const std::vector<double>& v, const char* what) -> absl::Status {
    for (size_t i = 0; i < v.size(); ++i) {
      if (!std::isfinite(v[i])) {
        return InvalidArgument("IndexerDistillLoss: the backend's F32 ", what, "[", i, "] = ", v[i],
                               " overflowed (the indexer's scores exceed F32's range); use the host path (no backend)");
      }
    }
    return absl::OkStatus();
  };
  std::vector<double> row_kl;
  IC_RETURN_IF_ERROR(download(kl, T, &row_kl));
  IC_RETURN_IF_ERROR(overflowed(row_kl, "kl"));
  for (int t = 0; t < T; ++t) {
    const float* prow = &batch.p_dense[static_cast<size_t>(t) * T];
    if (std::none_of(prow, prow + t + 1, [](float x) { return x != 0; })) continue;  // skipped, as DenseRows
    ++*rows;
    *total += row_kl[t];
  }
  if (!want_grad) return absl::OkStatus();
  IC_RETURN_IF_ERROR(download(grad_q, nq, gq));
  IC_RETURN_IF_ERROR(download(grad_k, nk, gk));
  IC_RETURN_IF_ERROR(download(grad_w, nw, gw));
  IC_RETURN_IF_ERROR(overflowed(*gq, "grad_q"));
  IC_RETURN_IF_ERROR(overflowed(*gk, "grad_k"));
  return overflowed(*gw, "grad_w");
}

}  // namespace

void IndexerGrads::Add(const IndexerGrads& o, double scale) {
  auto add = [scale](std::vector<double>& a, const std::vector<double>& b) {
    if (a.empty()) a.assign(b.size(), 0);
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) a[i] += scale * b[i];
  };
  add(wq, o.wq);
  add(wk, o.wk);
  add(k_norm_weight, o.k_norm_weight);
  add(k_norm_bias, o.k_norm_bias);
  add(weights_proj, o.weights_proj);
}

void IndexerGrads::Scale(double factor) {
  for (auto* v : {&wq, &wk, &k_norm_weight, &k_norm_bias, &weights_proj}) {
    for (double& x : *v) x *= factor;
  }
}

absl::StatusOr<std::vector<double>> IndexerScores(const ModelConfig& config, const IndexerWeights& weights,
                                                  const IndexerBatch& batch) {
  IC_ASSIGN_OR_RETURN(Dims dm, Validate(config, weights, batch, /*need_target=*/false));
  const Forward f = RunForward(config, weights, batch, dm);
  const int T = dm.T, H = dm.H, d = dm.d;
  std::vector<double> I(static_cast<size_t>(T) * T, -std::numeric_limits<double>::infinity());
  for (int t = 0; t < T; ++t) {
    for (int s = 0; s <= t; ++s) {
      double acc = 0;
      for (int j = 0; j < H; ++j) {
        acc += f.wv[static_cast<size_t>(t) * H + j] *
               std::max(0.0, Dot(&f.q[(static_cast<size_t>(t) * H + j) * d], &f.k[static_cast<size_t>(s) * d], d));
      }
      I[static_cast<size_t>(t) * T + s] = acc;
    }
  }
  return I;
}

absl::StatusOr<double> IndexerDistillLoss(const ModelConfig& config, const IndexerWeights& weights,
                                          const IndexerBatch& batch, IndexerGrads* grads, kernels::Backend* backend) {
  IC_ASSIGN_OR_RETURN(Dims dm, Validate(config, weights, batch, /*need_target=*/true));
  Forward f = RunForward(config, weights, batch, dm);
  const int T = dm.T, H = dm.H, d = dm.d, R = dm.R;
  const bool want_grad = grads != nullptr;

  // Gradients w.r.t. q (rotated), k (rotated) and wv (scaled), unnormalised by the row count.
  std::vector<double> gq, gk, gw;
  if (want_grad) {
    gq.assign(f.q.size(), 0);
    gk.assign(f.k.size(), 0);
    gw.assign(f.wv.size(), 0);
  }

  double total = 0;
  int64_t rows = 0;
  if (!batch.sparse() && backend != nullptr) {
    IC_RETURN_IF_ERROR(BackendDenseRows(f, batch, want_grad, backend, &gq, &gk, &gw, &total, &rows));
  } else if (!batch.sparse()) {
    DenseRows(f, batch, want_grad, &gq, &gk, &gw, &total, &rows);
  } else {
    std::vector<int32_t> dom;     // D_t
    std::vector<double> pt, It, dots;
    for (int t = 0; t < T; ++t) {
      dom.clear();
      pt.clear();
      if (!batch.sparse()) {
        const float* prow = &batch.p_dense[static_cast<size_t>(t) * T];
        bool any = false;
        for (int s = 0; s <= t; ++s) any = any || prow[s] != 0;
        if (!any) continue;
        for (int s = 0; s <= t; ++s) {
          dom.push_back(s);
          pt.push_back(prow[s]);
        }
      } else {
        const int32_t b0 = batch.p_offsets[t], b1 = batch.p_offsets[t + 1];
        if (b1 == b0) continue;
        if (batch.sparse_softmax_over_all_keys) {
          for (int s = 0; s <= t; ++s) dom.push_back(s);
          pt.assign(t + 1, 0.0);
          for (int32_t e = b0; e < b1; ++e) pt[batch.p_index[e]] = batch.p_prob[e];
        } else {
          for (int32_t e = b0; e < b1; ++e) {
            dom.push_back(batch.p_index[e]);
            pt.push_back(batch.p_prob[e]);
          }
        }
      }
      ++rows;
      const int n = static_cast<int>(dom.size());
      // Renormalise in double: an F32 row sums to 1 only within rounding, and KL of an unnormalised p is off by
      // about the excess mass (first order) and can be negative.
      double psum = 0;
      for (int e = 0; e < n; ++e) psum += pt[e];
      for (int e = 0; e < n; ++e) pt[e] /= psum;
      It.assign(n, 0);
      dots.assign(static_cast<size_t>(n) * H, 0);
      const double* wt = &f.wv[static_cast<size_t>(t) * H];
      for (int e = 0; e < n; ++e) {
        const double* ks = &f.k[static_cast<size_t>(dom[e]) * d];
        double acc = 0;
        for (int j = 0; j < H; ++j) {
          const double dt = Dot(&f.q[(static_cast<size_t>(t) * H + j) * d], ks, d);
          dots[static_cast<size_t>(e) * H + j] = dt;
          acc += wt[j] * std::max(0.0, dt);
        }
        It[e] = acc;
      }
      const double mx = *std::max_element(It.begin(), It.end());
      double z = 0;
      for (int e = 0; e < n; ++e) z += std::exp(It[e] - mx);
      const double log_z = mx + std::log(z);
      double kl = 0;
      for (int e = 0; e < n; ++e) {
        if (pt[e] > 0) kl += pt[e] * (std::log(pt[e]) - (It[e] - log_z));
      }
      total += kl;
      if (!want_grad) continue;
      // dKL/dI[t, s] = softmax_s − p_s.
      for (int e = 0; e < n; ++e) {
        const double g = std::exp(It[e] - log_z) - pt[e];
        if (g == 0) continue;
        const int s = dom[e];
        double* gks = &gk[static_cast<size_t>(s) * d];
        const double* ks = &f.k[static_cast<size_t>(s) * d];
        for (int j = 0; j < H; ++j) {
          const double dt = dots[static_cast<size_t>(e) * H + j];
          if (dt <= 0) continue;  // ReLU: zero gradient at and below 0
          gw[static_cast<size_t>(t) * H + j] += g * dt;
          const double gd = g * wt[j];
          double* gqj = &gq[(static_cast<size_t>(t) * H + j) * d];
          const double* qj = &f.q[(static_cast<size_t>(t) * H + j) * d];
          for (int i = 0; i < d; ++i) {
            gqj[i] += gd * ks[i];
            gks[i] += gd * qj[i];
          }
        }
      }
    }
  }
  const double loss = rows > 0 ? total / static_cast<double>(rows) : 0.0;
  if (!want_grad) return loss;

  IndexerGrads& G = *grads;
  G.wq.assign(weights.wq.data.size(), 0);
  G.wk.assign(weights.wk.data.size(), 0);
  G.k_norm_weight.assign(d, 0);
  G.k_norm_bias.assign(d, 0);
  G.weights_proj.assign(weights.weights_proj.data.size(), 0);
  if (rows == 0) return loss;
  const double inv_rows = 1.0 / static_cast<double>(rows);

  // RoPE transpose: gradients w.r.t. the pre-rotation q and k.
  if (R > 0) {
    for (int t = 0; t < T; ++t) {
      const double* cst = &f.cs[static_cast<size_t>(t) * R];
      for (int j = 0; j < H; ++j) RopeApply(&gq[(static_cast<size_t>(t) * H + j) * d], cst, R, f.interleaved, true);
      RopeApply(&gk[static_cast<size_t>(t) * d], cst, R, f.interleaved, true);
    }
  }
  // wq: gWq[H·d, in_q] = gqᵀ · x_q / rows.
  Gemm(true, false, H * d, dm.in_q, T, inv_rows, gq.data(), H * d, f.xq.data(), dm.in_q, 0.0, G.wq.data(), dm.in_q);
  // weights_proj: gWw[H, hidden] = scale · gwᵀ · x / rows.
  Gemm(true, false, H, dm.hidden, T, f.w_scale * inv_rows, gw.data(), H, f.x.data(), dm.hidden, 0.0,
       G.weights_proj.data(), dm.hidden);
  // LayerNorm backward: k = khat·γ + β, khat = (k_pre − μ)·r.
  std::vector<double> gpre(static_cast<size_t>(T) * d, 0);
  for (int t = 0; t < T; ++t) {
    const double* g = &gk[static_cast<size_t>(t) * d];
    const double* kh = &f.khat[static_cast<size_t>(t) * d];
    double mean_gh = 0, mean_ghk = 0;
    for (int i = 0; i < d; ++i) {
      G.k_norm_bias[i] += g[i] * inv_rows;
      G.k_norm_weight[i] += g[i] * kh[i] * inv_rows;
      const double gh = g[i] * f.gamma[i];
      mean_gh += gh;
      mean_ghk += gh * kh[i];
    }
    mean_gh /= d;
    mean_ghk /= d;
    for (int i = 0; i < d; ++i) {
      gpre[static_cast<size_t>(t) * d + i] = f.rstd[t] * (g[i] * f.gamma[i] - mean_gh - kh[i] * mean_ghk);
    }
  }
  // wk: gWk[d, hidden] = gpreᵀ · x / rows.
  Gemm(true, false, d, dm.hidden, T, inv_rows, gpre.data(), d, f.x.data(), dm.hidden, 0.0, G.wk.data(), dm.hidden);
  return loss;
}

absl::Status AdamStep(const IndexerGrads& grads, double lr, AdamState* state, IndexerWeights* weights,
                      const AdamOptions& o) {
  if (state == nullptr || weights == nullptr) return InvalidArgument("AdamStep: state and weights must be non-null");
  if (!std::isfinite(lr) || lr < 0) return InvalidArgument("AdamStep: lr = ", lr, " must be finite and >= 0");
  struct Slot {
    const char* name;
    const std::vector<double>* g;
    std::vector<double>* m;
    std::vector<double>* v;
    HostTensor* w;
  };
  const Slot slots[] = {
      {"wq", &grads.wq, &state->m.wq, &state->v.wq, &weights->wq},
      {"wk", &grads.wk, &state->m.wk, &state->v.wk, &weights->wk},
      {"k_norm_weight", &grads.k_norm_weight, &state->m.k_norm_weight, &state->v.k_norm_weight, &weights->k_norm_weight},
      {"k_norm_bias", &grads.k_norm_bias, &state->m.k_norm_bias, &state->v.k_norm_bias, &weights->k_norm_bias},
      {"weights_proj", &grads.weights_proj, &state->m.weights_proj, &state->v.weights_proj, &weights->weights_proj},
  };
  for (const Slot& s : slots) {
    if (s.g->size() != s.w->data.size()) {
      return InvalidArgument("AdamStep: grads.", s.name, " has ", s.g->size(), " values; weights.", s.name, " has ",
                             s.w->data.size());
    }
    if (state->step > 0 && (s.m->size() != s.w->data.size() || s.v->size() != s.w->data.size())) {
      return InvalidArgument("AdamStep: state moments of ", s.name, " have ", s.m->size(), "/", s.v->size(),
                             " values; weights have ", s.w->data.size());
    }
  }
  if (state->step == 0) {
    for (const Slot& s : slots) {
      s.m->assign(s.w->data.size(), 0);
      s.v->assign(s.w->data.size(), 0);
    }
  }
  ++state->step;
  const double bc1 = 1 - std::pow(o.beta1, static_cast<double>(state->step));
  const double bc2 = 1 - std::pow(o.beta2, static_cast<double>(state->step));
  for (const Slot& s : slots) {
    std::vector<double>& m = *s.m;
    std::vector<double>& v = *s.v;
    const std::vector<double>& g = *s.g;
    for (size_t i = 0; i < g.size(); ++i) {
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
      const double update = lr * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + o.eps);
      s.w->data[i] = static_cast<float>(static_cast<double>(s.w->data[i]) - update);
    }
  }
  return absl::OkStatus();
}

double LearningRate(int64_t step, int64_t total, double base, int64_t warmup) {
  if (warmup < 0) warmup = 0;
  if (step < warmup) return base * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (step >= total) return 0.0;
  const double span = static_cast<double>(total - warmup);
  const double progress = static_cast<double>(step - warmup) / span;
  return base * 0.5 * (1 + std::cos(std::numbers::pi * progress));
}

}  // namespace ic
