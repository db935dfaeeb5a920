// Margin-aware index-set comparison (DESIGN.md §3); see index_sets.h.
#include "tests/index_sets.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <string>
#include <utility>

namespace ic::test {
namespace {

// DESIGN.md §3 total order as an unsigned key: NaN lowest, −0 == +0.
uint32_t OrderKey(float v) {
  if (std::isnan(v)) return 0u;
  if (v == 0.0f) v = 0.0f;
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Returns "" when row is well formed, else the reason.
std::string CheckRow(const int32_t* row, int k, int valid_len) {
  const int want = std::min(k, std::max(valid_len, 0));
  int n = 0;
  while (n < k && row[n] != -1) ++n;
  for (int i = n; i < k; ++i) {
    if (row[i] != -1) {
      return "entry " + std::to_string(row[i]) + " at slot " + std::to_string(i) + " follows a -1 at slot " +
             std::to_string(n);
    }
  }
  if (n != want) {
    return std::to_string(n) + " valid entries, expected min(k, valid_len) = " + std::to_string(want);
  }
  std::vector<int32_t> v = SortedValid(row, k);
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] < 0 || v[i] >= valid_len) {
      return "position " + std::to_string(v[i]) + " outside [0, " + std::to_string(valid_len) + ")";
    }
    if (i > 0 && v[i] == v[i - 1]) return "duplicate position " + std::to_string(v[i]);
  }
  return "";
}

}  // namespace

std::vector<int32_t> SortedValid(const int32_t* row, int k) {
  std::vector<int32_t> v;
  for (int i = 0; i < k && row[i] != -1; ++i) v.push_back(row[i]);
  std::sort(v.begin(), v.end());
  return v;
}

::testing::AssertionResult IndexSetsWellFormed(const int32_t* idx, int rows, int k, const int32_t* valid_len) {
  for (int r = 0; r < rows; ++r) {
    const std::string why = CheckRow(idx + static_cast<int64_t>(r) * k, k, valid_len[r]);
    if (!why.empty()) return ::testing::AssertionFailure() << "row " << r << ": " << why;
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult IndexSetsMarginEqual(const int32_t* a, const int32_t* b, int rows, int k,
                                                const float* scores, int scores_stride, const int32_t* valid_len,
                                                float rel_eps) {
  int differing_rows = 0;
  for (int r = 0; r < rows; ++r) {
    const int32_t* ra = a + static_cast<int64_t>(r) * k;
    const int32_t* rb = b + static_cast<int64_t>(r) * k;
    const int len = valid_len[r];
    for (const auto& [name, row] : {std::pair<const char*, const int32_t*>{"a", ra}, {"b", rb}}) {
      const std::string why = CheckRow(row, k, len);
      if (!why.empty()) return ::testing::AssertionFailure() << "row " << r << " of " << name << ": " << why;
    }
    const std::vector<int32_t> va = SortedValid(ra, k), vb = SortedValid(rb, k);
    if (va == vb) continue;
    ++differing_rows;
    // k-th largest score of the row in the §3 order.
    const float* s = scores + static_cast<int64_t>(r) * scores_stride;
    std::vector<float> sorted(s, s + len);
    const int kk = std::min(k, len);
    std::nth_element(sorted.begin(), sorted.begin() + (kk - 1), sorted.end(),
                     [](float x, float y) { return OrderKey(x) > OrderKey(y); });
    const float kth = sorted[kk - 1];
    const double tol = static_cast<double>(rel_eps) * std::max(std::fabs(static_cast<double>(kth)), 1e-30);
    std::vector<int32_t> diff;
    std::set_symmetric_difference(va.begin(), va.end(), vb.begin(), vb.end(), std::back_inserter(diff));
    for (int32_t p : diff) {
      const float v = s[p];
      const bool same = OrderKey(v) == OrderKey(kth);  // covers ±inf and NaN at the boundary
      const bool near = std::isfinite(kth) && std::fabs(static_cast<double>(v) - kth) <= tol;
      if (!same && !near) {
        const bool in_a = std::binary_search(va.begin(), va.end(), p);
        return ::testing::AssertionFailure()
               << "row " << r << ": position " << p << " (only in " << (in_a ? "a" : "b") << ") has score " << v
               << ", not within " << tol << " of the k-th score " << kth << " (rel_eps " << rel_eps << "; "
               << diff.size() << " positions differ)";
      }
    }
  }
  return ::testing::AssertionSuccess() << differing_rows << " rows differ within the margin";
}

double MeanRecall(const int32_t* got, const int32_t* ref, int rows, int k) {
  if (rows <= 0) return 1.0;
  double total = 0.0;
  for (int r = 0; r < rows; ++r) {
    const std::vector<int32_t> g = SortedValid(got + static_cast<int64_t>(r) * k, k);
    const std::vector<int32_t> e = SortedValid(ref + static_cast<int64_t>(r) * k, k);
    if (e.empty()) {
      total += 1.0;
      continue;
    }
    std::vector<int32_t> both;
    std::set_intersection(g.begin(), g.end(), e.begin(), e.end(), std::back_inserter(both));
    total += static_cast<double>(both.size()) / static_cast<double>(e.size());
  }
  return total / rows;
}

}  // namespace ic::test
