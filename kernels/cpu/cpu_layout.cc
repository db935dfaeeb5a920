// CPU backend: paged-cache bookkeeping shared by Attention and IndexerTopk (validation, grouping of
// query tokens by sequence, gathering a sequence's cache rows into dense scratch).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/cpu_internal.h"
#include "sdk/status.h"

namespace ic::kernels::cpu::internal {

absl::Status ValidateLayout(const TokenLayout& l, int64_t num_slots, const char* what) {
  if (l.tokens < 0) return InvalidArgument(what, ": layout.tokens = ", l.tokens, " is negative");
  if (l.tokens == 0) return absl::OkStatus();
  if (l.token_seq == nullptr) return InvalidArgument(what, ": layout.token_seq is null");
  if (l.token_pos == nullptr) return InvalidArgument(what, ": layout.token_pos is null");
  if (l.block_tables == nullptr) return InvalidArgument(what, ": layout.block_tables is null");
  if (l.num_seqs <= 0) return InvalidArgument(what, ": layout.num_seqs = ", l.num_seqs, " must be positive");
  if (l.max_blocks_per_seq <= 0) {
    return InvalidArgument(what, ": layout.max_blocks_per_seq = ", l.max_blocks_per_seq, " must be positive");
  }
  if (l.block_size <= 0) return InvalidArgument(what, ": layout.block_size = ", l.block_size, " must be positive");
  if (num_slots < 0) return InvalidArgument(what, ": num_slots = ", num_slots, " is negative");
  std::vector<int> max_pos(l.num_seqs, -1);
  for (int t = 0; t < l.tokens; ++t) {
    const int seq = l.token_seq[t], pos = l.token_pos[t];
    if (seq < 0 || seq >= l.num_seqs) {
      return InvalidArgument(what, ": token_seq[", t, "] = ", seq, " out of range for num_seqs ", l.num_seqs);
    }
    if (pos < 0) return InvalidArgument(what, ": token_pos[", t, "] = ", pos, " is negative");
    if (pos / l.block_size >= l.max_blocks_per_seq) {
      return InvalidArgument(what, ": token_pos[", t, "] = ", pos, " needs block ", pos / l.block_size,
                             " but max_blocks_per_seq = ", l.max_blocks_per_seq, " (block_size ", l.block_size, ")");
    }
    max_pos[seq] = std::max(max_pos[seq], pos);
  }
  for (int s = 0; s < l.num_seqs; ++s) {
    if (max_pos[s] < 0) continue;
    const int last_block = max_pos[s] / l.block_size;
    for (int b = 0; b <= last_block; ++b) {
      const int32_t id = l.block_tables[static_cast<int64_t>(s) * l.max_blocks_per_seq + b];
      const int used = b < last_block ? l.block_size : max_pos[s] % l.block_size + 1;
      if (id < 0 || static_cast<int64_t>(id) * l.block_size + used > num_slots) {
        return InvalidArgument(what, ": block_tables[", s, ", ", b, "] = ", id, " out of range for num_slots ",
                               num_slots, " (block_size ", l.block_size, ")");
      }
    }
  }
  return absl::OkStatus();
}

std::vector<SequenceTokens> GroupBySequence(const TokenLayout& l) {
  std::vector<int> index(l.num_seqs, -1);
  std::vector<SequenceTokens> groups;
  for (int t = 0; t < l.tokens; ++t) {
    const int seq = l.token_seq[t];
    if (index[seq] < 0) {
      index[seq] = static_cast<int>(groups.size());
      groups.push_back({seq, 0, {}});
    }
    SequenceTokens& g = groups[index[seq]];
    g.tokens.push_back(t);
    g.max_pos = std::max(g.max_pos, l.token_pos[t]);
  }
  for (SequenceTokens& g : groups) {
    std::stable_sort(g.tokens.begin(), g.tokens.end(),
                     [&](int32_t a, int32_t b) { return l.token_pos[a] < l.token_pos[b]; });
  }
  return groups;
}

void GatherSequenceRows(const TokenLayout& l, int seq, int count, const float* cache, int64_t stride,
                        int col_offset, int cols, float* dst) {
  for (int p = 0; p < count; ++p) {
    std::memcpy(dst + static_cast<int64_t>(p) * cols, cache + SlotOf(l, seq, p) * stride + col_offset,
                sizeof(float) * cols);
  }
}

uint8_t FloatToE4m3(float x) {
  if (std::isnan(x)) return 0x7f;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float a = std::fabs(x);
  if (a >= 448.0f) return sign | 0x7e;  // saturate: 1.75 · 2^8
  if (a == 0.0f) return sign;
  int e = 0;
  std::frexp(a, &e);                    // a = m · 2^e, m in [0.5, 1): the leading bit is 2^(e−1)
  const int exp = std::max(e - 1, -6);  // normal exponents −6..8; below, the subnormal spacing 2^-9
  const double quantum = std::ldexp(1.0, exp - 3);
  const double q = std::nearbyint(a / quantum) * quantum;  // ties to even (default rounding mode)
  if (q >= 448.0) return sign | 0x7e;
  int qe = 0;
  std::frexp(q, &qe);
  if (q < std::ldexp(1.0, -6)) {  // subnormal: mantissa = q / 2^-9
    return sign | static_cast<uint8_t>(std::lround(q / std::ldexp(1.0, -9)));
  }
  const int biased = (qe - 1) + 7;
  const int mant = static_cast<int>(std::lround((q / std::ldexp(1.0, qe - 1) - 1.0) * 8.0));
  return sign | static_cast<uint8_t>((biased << 3) | mant);
}

float E4m3ToFloat(uint8_t b) {
  const float sign = (b & 0x80) ? -1.0f : 1.0f;
  const int e = (b >> 3) & 0xf, m = b & 0x7;
  if (e == 0xf && m == 0x7) return std::numeric_limits<float>::quiet_NaN();
  if (e == 0) return sign * std::ldexp(static_cast<float>(m), -9);
  return sign * std::ldexp(1.0f + m / 8.0f, e - 7);
}

const float* E4m3Table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = E4m3ToFloat(static_cast<uint8_t>(i));
    return t;
  }();
  return table.data();
}

void WidenFp8Row(const uint8_t* bytes, int64_t ld, const float* scale, int scale_ld, int64_t r, int cols,
                 float* dst) {
  const float* value = E4m3Table();
  const uint8_t* src = bytes + r * ld;
  const float* s = scale + (r / kFp8Block) * scale_ld;
  for (int c = 0; c < cols; ++c) dst[c] = value[src[c]] * s[c / kFp8Block];
}

void QuantizeFp8Blocks(float* x, int n) {
  const float* value = E4m3Table();
  for (int c0 = 0; c0 < n; c0 += 128) {
    const int c1 = std::min(n, c0 + 128);
    float amax = 0.0f;
    for (int c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x[c]));
    const float s = Fp8Scale(amax), inv = 1.0f / s;  // a power of two: x · (1/s) is x / s exactly
    for (int c = c0; c < c1; ++c) x[c] = value[FloatToE4m3(x[c] * inv)] * s;
  }
}

void GatherSequenceRows(const TokenLayout& l, int seq, int count, const uint16_t* cache, int64_t stride,
                        int col_offset, int cols, float* dst) {
  for (int p = 0; p < count; ++p) {
    const uint16_t* src = cache + SlotOf(l, seq, p) * stride + col_offset;
    float* out = dst + static_cast<int64_t>(p) * cols;
    for (int c = 0; c < cols; ++c) out[c] = Bf16ToFloat(src[c]);
  }
}

}  // namespace ic::kernels::cpu::internal
