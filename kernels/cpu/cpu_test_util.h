// Test-only helpers for the CPU backend's unit tests: random paged caches with shuffled block tables
// and token layouts over several sequences. Header-only; included by kernels/cpu/*_test.cc only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "kernels/backend.h"

namespace ic::kernels::cpu::testutil {

// A paged cache layout: each sequence gets ceil(len / block_size) blocks drawn from a shuffled pool that
// also holds `extra_blocks` never-used blocks (tests fill those with NaN to catch stray reads).
struct Paged {
  int block_size = 0;
  int max_blocks = 0;
  int num_seqs = 0;
  int64_t num_slots = 0;
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks], −1 where unused
  std::vector<bool> used_slot;        // [num_slots]

  int64_t Slot(int seq, int pos) const {
    return static_cast<int64_t>(block_tables[seq * max_blocks + pos / block_size]) * block_size + pos % block_size;
  }
};

inline Paged MakePaged(const std::vector<int>& seq_lens, int block_size, std::mt19937& rng, int extra_blocks = 3) {
  Paged p;
  p.block_size = block_size;
  p.num_seqs = static_cast<int>(seq_lens.size());
  int total = extra_blocks;
  for (int len : seq_lens) {
    p.max_blocks = std::max(p.max_blocks, (len + block_size - 1) / block_size);
    total += (len + block_size - 1) / block_size;
  }
  p.max_blocks = std::max(p.max_blocks, 1) + 1;
  std::vector<int32_t> pool(total);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  p.num_slots = static_cast<int64_t>(total) * block_size;
  p.block_tables.assign(static_cast<size_t>(p.num_seqs) * p.max_blocks, -1);
  p.used_slot.assign(p.num_slots, false);
  int next = 0;
  for (int s = 0; s < p.num_seqs; ++s) {
    for (int b = 0; b * block_size < seq_lens[s]; ++b) p.block_tables[s * p.max_blocks + b] = pool[next++];
    for (int pos = 0; pos < seq_lens[s]; ++pos) p.used_slot[p.Slot(s, pos)] = true;
  }
  return p;
}

// Fills a [num_slots, stride] cache: used slots U(lo, hi), unused slots NaN.
inline std::vector<float> MakeCache(const Paged& p, int stride, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> c(static_cast<size_t>(p.num_slots) * stride, std::numeric_limits<float>::quiet_NaN());
  for (int64_t s = 0; s < p.num_slots; ++s) {
    if (!p.used_slot[s]) continue;
    for (int i = 0; i < stride; ++i) c[s * stride + i] = u(rng);
  }
  return c;
}

// Query tokens: for each sequence, positions [first[s], len[s]) (a prefill chunk), in shuffled order.
struct Tokens {
  std::vector<int32_t> seq, pos;
};
inline Tokens MakeTokens(const std::vector<int>& first, const std::vector<int>& len, std::mt19937& rng) {
  std::vector<std::pair<int, int>> all;
  for (size_t s = 0; s < len.size(); ++s) {
    for (int p = first[s]; p < len[s]; ++p) all.emplace_back(static_cast<int>(s), p);
  }
  std::shuffle(all.begin(), all.end(), rng);
  Tokens t;
  for (auto [s, p] : all) {
    t.seq.push_back(s);
    t.pos.push_back(p);
  }
  return t;
}

inline TokenLayout MakeLayout(const Paged& p, const Tokens& t) {
  TokenLayout l;
  l.token_seq = t.seq.data();
  l.token_pos = t.pos.data();
  l.block_tables = p.block_tables.data();
  l.tokens = static_cast<int>(t.seq.size());
  l.num_seqs = p.num_seqs;
  l.max_blocks_per_seq = p.max_blocks;
  l.block_size = p.block_size;
  return l;
}

inline std::vector<float> RandomVector(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// max |a − b| / max(max |b|, floor): a normalised error for float comparisons against double references.
inline double NormalisedError(const std::vector<float>& a, const std::vector<double>& b, double floor = 1e-6) {
  double err = 0.0, mag = floor;
  for (size_t i = 0; i < b.size(); ++i) {
    err = std::max(err, std::fabs(static_cast<double>(a[i]) - b[i]));
    mag = std::max(mag, std::fabs(b[i]));
  }
  return err / mag;
}

}  // namespace ic::kernels::cpu::testutil
