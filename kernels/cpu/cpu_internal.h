// Helpers shared by the CPU backend's op files (not part of the public interface).
//
//   ParallelFor      splits [0, n) over a small persistent thread pool (for non-BLAS loops only:
//                    OpenBLAS threads its own sgemm calls, so we never call BLAS from pool workers).
//   TopkSortKey      the DESIGN.md §3 total order as an unsigned key: +inf > finite > −inf > NaN, −0 == +0.
//   SelectTopkRow    exact top-k of one row (ties → smaller position), output in ascending position order.
//   Exp4 / ExpShiftSum / MaxOf / Axpy / ReluAxpy   4-wide loops for softmax and the indexer.
//   ValidateLayout / SlotOf / GroupBySequence   paged-cache bookkeeping shared by attention and indexer.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace ic::kernels::cpu::internal {

// Runs fn(begin, end) over disjoint chunks covering [0, n); chunks hold at least min_chunk items.
// Blocks until every chunk is done. Nested calls run inline.
void ParallelFor(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& fn);

// Number of threads ParallelFor uses (including the caller).
int NumThreads();

inline uint32_t TopkSortKey(float v) {
  if (v != v) return 0u;        // NaN: below everything
  if (v == 0.0f) v = 0.0f;      // −0 ties with +0
  uint32_t u;
  __builtin_memcpy(&u, &v, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// (score key, position) packed so that a larger value is a better candidate: ties → smaller position.
inline uint64_t TopkPackedKey(float v, int32_t pos) {
  return (static_cast<uint64_t>(TopkSortKey(v)) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(pos));
}

// Writes the top-k positions of scores[0, len) into out[0, k): min(k, len) positions in ascending order,
// then −1. scratch is reused across calls.
void SelectTopkRow(const float* scores, int len, int k, int32_t* out, std::vector<uint64_t>& scratch);

// ---- 4-wide loops (GCC/Clang vector extensions, SSE2 baseline: vectorised at -O2 without -ffast-math
// or -march) ----

typedef float V4f __attribute__((vector_size(16)));
typedef int32_t V4i __attribute__((vector_size(16)));

inline V4f Load4(const float* p) {
  V4f v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store4(float* p, V4f v) { __builtin_memcpy(p, &v, sizeof(v)); }

// exp(x) per lane (Cephes-style range reduction + degree-6 polynomial; ≤ 2 ulp on [−87.3, 88]).
// Inputs below −87.3 give ~1e-38 instead of 0 (harmless next to a softmax maximum of 1); NaN stays NaN.
inline V4f Exp4(V4f x) {
  const V4f hi = V4f{} + 88.0f, lo = V4f{} - 87.3365447504f;
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const V4f fx = x * 1.44269504088896341f + 0.5f;
  V4f tf = __builtin_convertvector(__builtin_convertvector(fx, V4i), V4f);
  tf = tf > fx ? tf - 1.0f : tf;  // floor
  x = x - tf * 0.693359375f + tf * 2.12194440e-4f;
  const V4f z = x * x;
  V4f y = V4f{} + 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  const V4i e = (__builtin_convertvector(tf, V4i) + 127) << 23;
  V4f scale;
  __builtin_memcpy(&scale, &e, sizeof(scale));
  return y * scale;
}

inline float ExpScalar(float x) {
  const V4f v = Exp4(V4f{} + x);
  return v[0];
}

// x[i] = exp(x[i] − m) for i < n; returns Σ x[i] (4-lane partial sums, accumulated in double).
inline double ExpShiftSum(float* x, int n, float m) {
  double sum = 0.0;
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    const V4f e = Exp4(Load4(x + i) - m);
    Store4(x + i, e);
    sum += static_cast<double>((e[0] + e[1]) + (e[2] + e[3]));
  }
  for (; i < n; ++i) {
    x[i] = ExpScalar(x[i] - m);
    sum += x[i];
  }
  return sum;
}

// max of x[0, n) (n ≥ 1); NaN inputs are skipped unless x[0] is NaN.
inline float MaxOf(const float* x, int n) {
  float m = x[0];
  int i = 0;
  if (n >= 4) {
    V4f v = Load4(x);
    for (i = 4; i + 4 <= n; i += 4) {
      const V4f w = Load4(x + i);
      v = w > v ? w : v;
    }
    for (int j = 0; j < 4; ++j) m = v[j] > m ? v[j] : m;
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// y[0, n) *= alpha
inline void Scale(float* y, float alpha, int n) {
  int i = 0;
  for (; i + 4 <= n; i += 4) Store4(y + i, Load4(y + i) * alpha);
  for (; i < n; ++i) y[i] *= alpha;
}

// y[0, n) += alpha · x[0, n)
inline void Axpy(float* y, const float* x, float alpha, int n) {
  int i = 0;
  for (; i + 4 <= n; i += 4) Store4(y + i, Load4(y + i) + Load4(x + i) * alpha);
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// y[0, n) += alpha · max(x[0, n), 0)
inline void ReluAxpy(float* y, const float* x, float alpha, int n) {
  int i = 0;
  const V4f zero = V4f{};
  for (; i + 4 <= n; i += 4) {
    const V4f v = Load4(x + i);
    Store4(y + i, Load4(y + i) + (v < zero ? zero : v) * alpha);
  }
  for (; i < n; ++i) y[i] += alpha * (x[i] < 0.0f ? 0.0f : x[i]);
}

// Checks token_seq, token_pos and the block-table entries every token needs against num_slots.
// `what` names the op in messages ("Attention", "IndexerTopk").
absl::Status ValidateLayout(const TokenLayout& layout, int64_t num_slots, const char* what);

// BF16 as uint16 bit patterns: round to nearest even (±inf kept, NaN stays a quiet NaN), and back.
// The same values as CUDA's __float2bfloat16_rn / __bfloat162float.
inline uint16_t FloatToBf16(float x) {
  uint32_t u;
  __builtin_memcpy(&u, &x, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u) return static_cast<uint16_t>((u >> 16) | ((u & 0xffffu) ? 0x40u : 0u));
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float Bf16ToFloat(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float x;
  __builtin_memcpy(&x, &u, sizeof x);
  return x;
}

// FP8 E4M3 (bias 7, 3 mantissa bits, subnormals down to 2^-9, no infinities, max ±448) as bytes: round to
// nearest even, saturating to ±448 (CUDA's __NV_SATFINITE); NaN → 0x7f. The same bytes as
// __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3).
uint8_t FloatToE4m3(float x);
float E4m3ToFloat(uint8_t b);

// The FP8 scale of a row whose largest magnitude is amax: amax / 448 rounded up to a power of two
// (DeepSeek-V3.2's "ue8m0" scales; dividing by it is exact), 1 when amax is 0 (or NaN: the NaN stays NaN),
// inf when amax is inf (the block then dequantises to NaN instead of saturating to ±448·s).
inline float Fp8Scale(float amax) {
  if (!(amax > 0.0f)) return 1.0f;
  if (std::isinf(amax)) return amax;
  int e = 0;
  const float m = std::frexp(amax / 448.0f, &e);  // amax / 448 = m · 2^e, m in [0.5, 1)
  return std::ldexp(1.0f, m == 0.5f ? e - 1 : e);
}

// x ← its FP8 round trip per 128-value block (GemmArgs::b_fp8's activations): s = Fp8Scale(block amax),
// x = e4m3(x / s) · s.
void QuantizeFp8Blocks(float* x, int n);

// The value of every E4M3 byte (a 256-entry table built once).
const float* E4m3Table();

// Row r of a block-scaled FP8 weight (kernels/fp8_blocks.h): dst[c] = e4m3(bytes[r·ld + c]) ·
// scale[(r/128)·scale_ld + c/128] for c < cols.
void WidenFp8Row(const uint8_t* bytes, int64_t ld, const float* scale, int scale_ld, int64_t r, int cols, float* dst);

// x[i] = the nearest BF16 value (ties to even), kept in F32.
inline void RoundAllToBf16(float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = Bf16ToFloat(FloatToBf16(x[i]));
}

inline int64_t SlotOf(const TokenLayout& layout, int seq, int pos) {
  const int32_t block = layout.block_tables[static_cast<int64_t>(seq) * layout.max_blocks_per_seq +
                                            pos / layout.block_size];
  return static_cast<int64_t>(block) * layout.block_size + pos % layout.block_size;
}

// Tokens of one sequence, sorted by position.
struct SequenceTokens {
  int seq = 0;
  int max_pos = 0;
  std::vector<int32_t> tokens;
};
std::vector<SequenceTokens> GroupBySequence(const TokenLayout& layout);

// Copies rows 0..count−1 of a sequence's paged cache (cols [col_offset, col_offset + cols)) into a
// dense [count, cols] buffer.
void GatherSequenceRows(const TokenLayout& layout, int seq, int count, const float* cache, int64_t stride,
                        int col_offset, int cols, float* dst);
// The same from a BF16 cache (uint16 bit patterns), widened to F32.
void GatherSequenceRows(const TokenLayout& layout, int seq, int count, const uint16_t* cache, int64_t stride,
                        int col_offset, int cols, float* dst);

}  // namespace ic::kernels::cpu::internal
