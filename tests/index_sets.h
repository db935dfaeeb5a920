// The one margin-aware index-set comparison of DESIGN.md §3, for every test that compares top-k indices
// produced by different code (CPU vs GPU, BF16 vs FP8, TP = 2 vs TP = 1, chunked vs one-shot, …).
//
// Two rows of top-k indices are margin-equal when both are well formed (exactly min(k, valid_len)
// valid entries first, then only −1; no duplicates; every entry in [0, valid_len)) and every position in
// their symmetric difference has a score within rel_eps · max(|kth|, 1e-30) of the row's k-th largest
// score (kth taken over scores[0, valid_len) in the DESIGN.md §3 order: +inf > finite > −inf > NaN).
// ε is 1e-5 in F32 and 1e-2 in BF16 (DESIGN.md §3).
//
// Example:
//   EXPECT_TRUE(ic::test::IndexSetsMarginEqual(cpu_idx.data(), gpu_idx.data(), tokens, k,
//                                              ref_scores.data(), L, valid_len.data(), 1e-5f));
#pragma once

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace ic::test {

// Per row r: a[r·k, (r+1)·k) and b[…] are margin-equal under scores[r·scores_stride, … + valid_len[r]).
::testing::AssertionResult IndexSetsMarginEqual(const int32_t* a, const int32_t* b, int rows, int k,
                                                const float* scores, int scores_stride, const int32_t* valid_len,
                                                float rel_eps);

// Checks one set only: exactly min(k, valid_len[r]) valid entries first then −1, no duplicates, all in
// [0, valid_len[r]).
::testing::AssertionResult IndexSetsWellFormed(const int32_t* idx, int rows, int k, const int32_t* valid_len);

// The entries of row[0, k) before the first −1, sorted ascending.
std::vector<int32_t> SortedValid(const int32_t* row, int k);

// Mean over rows of |got ∩ ref| / |ref| (valid entries only; a row with an empty ref counts as 1).
double MeanRecall(const int32_t* got, const int32_t* ref, int rows, int k);

}  // namespace ic::test
