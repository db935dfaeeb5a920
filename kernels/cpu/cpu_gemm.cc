// CPU backend: Gemm through OpenBLAS cblas_sgemm (row-major, strides, batches).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "sdk/status.h"

namespace ic::kernels::cpu {

// Batch strides: 0 for A or B means the same matrix for every batch entry (broadcast); C needs a
// non-zero stride when batch > 1 (entries would overwrite each other).
absl::Status CpuBackend::Gemm(const GemmArgs& g) {
  if (g.m < 0 || g.n < 0 || g.k < 0) {
    return InvalidArgument("Gemm: negative size m = ", g.m, ", n = ", g.n, ", k = ", g.k);
  }
  if (g.batch < 0) return InvalidArgument("Gemm: batch = ", g.batch, " is negative");
  if (g.lda < 0 || g.ldb < 0 || g.ldc < 0) {
    return InvalidArgument("Gemm: negative leading dimension lda = ", g.lda, ", ldb = ", g.ldb, ", ldc = ", g.ldc);
  }
  if (g.stride_a < 0 || g.stride_b < 0 || g.stride_c < 0) {
    return InvalidArgument("Gemm: negative batch stride stride_a = ", g.stride_a, ", stride_b = ", g.stride_b,
                           ", stride_c = ", g.stride_c);
  }
  if (g.b != nullptr && g.b_bf16 != nullptr) return InvalidArgument("Gemm: both b and b_bf16 are set");
  IC_RETURN_IF_ERROR(ValidateGemmFp8(g));
  if (g.m == 0 || g.n == 0 || g.batch == 0) return absl::OkStatus();
  const int lda = g.lda == 0 ? g.k : g.lda;
  const int ldb = g.ldb == 0 ? (g.b_transposed ? g.k : g.n) : g.ldb;
  const int ldc = g.ldc == 0 ? g.n : g.ldc;
  if (lda < g.k) return InvalidArgument("Gemm: lda = ", lda, " is smaller than k = ", g.k);
  if (g.b_transposed && ldb < g.k) return InvalidArgument("Gemm: ldb = ", ldb, " is smaller than k = ", g.k, " (b_transposed)");
  if (!g.b_transposed && ldb < g.n) return InvalidArgument("Gemm: ldb = ", ldb, " is smaller than n = ", g.n);
  if (ldc < g.n) return InvalidArgument("Gemm: ldc = ", ldc, " is smaller than n = ", g.n);
  if (g.batch > 1 && g.stride_c == 0) return InvalidArgument("Gemm: stride_c = 0 with batch = ", g.batch);
  if (g.c == nullptr) return InvalidArgument("Gemm: c is null");
  const bool bf16 = g.b_bf16 != nullptr, fp8 = g.b_fp8 != nullptr;
  if (g.k > 0 && (g.a == nullptr || (g.b == nullptr && !bf16 && !fp8))) {
    return InvalidArgument("Gemm: ", g.a == nullptr ? "a is null" : "b is null (set b, b_bf16 or b_fp8)");
  }
  if (fp8 && g.k > 0) return GemmFp8(g, lda, ldb, ldc);
  // BF16 operands: A rounded to BF16 and B widened, per batch entry, then the same F32 sgemm.
  std::vector<float> a_round, b_wide;
  const int b_rows = g.b_transposed ? g.n : g.k, b_cols = g.b_transposed ? g.k : g.n;
  for (int b = 0; b < g.batch; ++b) {
    float* c = g.c + b * g.stride_c;
    if (g.k == 0) {  // C = beta · C (BLAS would read A/B otherwise; beta = 0 clears NaNs as BLAS does)
      for (int i = 0; i < g.m; ++i) {
        float* row = c + static_cast<int64_t>(i) * ldc;
        for (int j = 0; j < g.n; ++j) row[j] = g.beta == 0.0f ? 0.0f : g.beta * row[j];
      }
      continue;
    }
    const float* a = g.a + b * g.stride_a;
    const float* w = bf16 ? nullptr : g.b + b * g.stride_b;
    int lda_used = lda, ldb_used = ldb;
    if (bf16) {
      a_round.resize(static_cast<size_t>(g.m) * g.k);
      for (int i = 0; i < g.m; ++i) {
        for (int j = 0; j < g.k; ++j) {
          a_round[static_cast<size_t>(i) * g.k + j] = internal::Bf16ToFloat(internal::FloatToBf16(a[static_cast<int64_t>(i) * lda + j]));
        }
      }
      if (b == 0 || g.stride_b != 0) {  // a broadcast B (stride 0) is widened once
        const uint16_t* src = g.b_bf16 + b * g.stride_b;
        b_wide.resize(static_cast<size_t>(b_rows) * b_cols);
        for (int i = 0; i < b_rows; ++i) {
          for (int j = 0; j < b_cols; ++j) {
            b_wide[static_cast<size_t>(i) * b_cols + j] = internal::Bf16ToFloat(src[static_cast<int64_t>(i) * ldb + j]);
          }
        }
      }
      a = a_round.data();
      w = b_wide.data();
      lda_used = g.k;
      ldb_used = b_cols;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, g.b_transposed ? CblasTrans : CblasNoTrans, g.m, g.n, g.k, g.alpha,
                a, lda_used, w, ldb_used, g.beta, c, ldc);
  }
  return absl::OkStatus();
}

// GemmArgs::b_fp8: A quantised per row and 128-column block (internal::Fp8Scale, E4M3 round trip), B's E4M3
// bytes times their block scales, both widened to F32, then one sgemm (batch is 1, b_transposed).
absl::Status CpuBackend::GemmFp8(const GemmArgs& g, int lda, int ldb, int ldc) {
  const int scale_ld = g.b_scale_ld != 0 ? g.b_scale_ld : Fp8ScaleLd(g.k);
  std::vector<float> a(static_cast<size_t>(g.m) * g.k), b(static_cast<size_t>(g.n) * g.k);
  for (int i = 0; i < g.m; ++i) {
    float* dst = &a[static_cast<size_t>(i) * g.k];
    std::copy_n(g.a + static_cast<int64_t>(i) * lda, g.k, dst);
    internal::QuantizeFp8Blocks(dst, g.k);
  }
  for (int r = 0; r < g.n; ++r) {
    internal::WidenFp8Row(g.b_fp8, ldb, g.b_scale, scale_ld, r, g.k, &b[static_cast<size_t>(r) * g.k]);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g.m, g.n, g.k, g.alpha, a.data(), g.k, b.data(), g.k, g.beta,
              g.c, ldc);
  return absl::OkStatus();
}

}  // namespace ic::kernels::cpu
