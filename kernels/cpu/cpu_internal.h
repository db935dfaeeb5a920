// Helpers shared by the CPU backend's op files (not part of the public interface).
//
//   ParallelFor      splits [0, n) over a small persistent thread pool (for non-BLAS loops only:
//                    OpenBLAS threads its own sgemm calls, so we never call BLAS from pool workers).
//   TopkSortKey      the DESIGN.md §3 total order as an unsigned key: +inf > finite > −inf > NaN, −0 == +0.
//   SelectTopkRow    exact top-k of one row (ties → smaller position), output in ascending position order.
//   Dot / Axpy       small vectorisable loops for gathered rows.
//   ValidateLayout / SlotOf / GroupBySequence   paged-cache bookkeeping shared by attention and indexer.
#pragma once

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

inline float Dot(const float* __restrict a, const float* __restrict b, int n) {
  float acc[16] = {};
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float s = 0.0f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

// y[0, n) += alpha · x[0, n)
inline void Axpy(float* __restrict y, const float* __restrict x, float alpha, int n) {
  for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// Checks token_seq, token_pos and the block-table entries every token needs against num_slots.
// `what` names the op in messages ("Attention", "IndexerTopk").
absl::Status ValidateLayout(const TokenLayout& layout, int64_t num_slots, const char* what);

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

}  // namespace ic::kernels::cpu::internal
