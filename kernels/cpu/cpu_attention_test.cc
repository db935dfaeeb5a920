// Tests of the CPU Attention op: dense causal and sparse (top-k) against a double-precision loop over
// paged caches with shuffled block tables, several sequences, chunked positions and strides; lse and
// probs outputs; C11 (k ≥ context ⇒ sparse == dense); MLA naive vs absorbed equivalence; validation.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_test_util.h"

namespace ic::kernels::cpu {
namespace {

using testutil::MakeCache;
using testutil::MakeLayout;
using testutil::MakePaged;
using testutil::MakeTokens;
using testutil::NormalisedError;
using testutil::Paged;
using testutil::Tokens;

struct Shape {
  int q_heads, kv_heads, qk_dim, v_dim, q_stride, k_stride, v_stride;
  float scale;
};

struct Reference {
  std::vector<double> out, lse, probs;
};

// keys(t) lists the positions token t attends to (duplicates not expected); topk_k > 0 fills probs
// against topk rows.
Reference NaiveAttention(const Shape& sh, const std::vector<float>& q, const std::vector<float>& kc,
                         const std::vector<float>& vc, const Paged& p, const Tokens& tk,
                         const std::vector<int32_t>* topk, int topk_k) {
  const int T = static_cast<int>(tk.seq.size());
  const int G = sh.q_heads / sh.kv_heads;
  Reference r;
  r.out.assign(static_cast<size_t>(T) * sh.q_heads * sh.v_dim, 0.0);
  r.lse.assign(static_cast<size_t>(T) * sh.q_heads, -std::numeric_limits<double>::infinity());
  if (topk != nullptr) r.probs.assign(static_cast<size_t>(T) * topk_k, 0.0);
  for (int t = 0; t < T; ++t) {
    std::vector<int> slot_of_key;  // index into topk row, or −1 for dense
    std::vector<int> keys;
    if (topk == nullptr) {
      for (int s = 0; s <= tk.pos[t]; ++s) {
        keys.push_back(s);
        slot_of_key.push_back(-1);
      }
    } else {
      for (int i = 0; i < topk_k; ++i) {
        const int s = (*topk)[t * topk_k + i];
        if (s >= 0 && s <= tk.pos[t]) {
          keys.push_back(s);
          slot_of_key.push_back(i);
        }
      }
    }
    for (int h = 0; h < sh.q_heads; ++h) {
      const int g = h / G;
      std::vector<double> logit(keys.size());
      double m = -std::numeric_limits<double>::infinity();
      for (size_t i = 0; i < keys.size(); ++i) {
        const float* krow = kc.data() + p.Slot(tk.seq[t], keys[i]) * sh.k_stride + g * sh.qk_dim;
        double dot = 0.0;
        for (int d = 0; d < sh.qk_dim; ++d) dot += static_cast<double>(q[t * sh.q_stride + h * sh.qk_dim + d]) * krow[d];
        logit[i] = sh.scale * dot;
        m = std::max(m, logit[i]);
      }
      double sum = 0.0;
      for (double& x : logit) sum += (x = std::exp(x - m));
      if (keys.empty()) continue;
      r.lse[t * sh.q_heads + h] = m + std::log(sum);
      for (size_t i = 0; i < keys.size(); ++i) {
        const double pr = logit[i] / sum;
        const float* vrow = vc.data() + p.Slot(tk.seq[t], keys[i]) * sh.v_stride + g * sh.v_dim;
        for (int d = 0; d < sh.v_dim; ++d) r.out[(t * sh.q_heads + h) * sh.v_dim + d] += pr * vrow[d];
        if (topk != nullptr) r.probs[t * topk_k + slot_of_key[i]] += pr / sh.q_heads;
      }
    }
  }
  return r;
}

struct Problem {
  Shape sh;
  Paged p;
  Tokens tk;
  std::vector<float> q, kc, vc;
};

Problem MakeProblem(const Shape& sh, const std::vector<int>& first, const std::vector<int>& lens, int block_size,
                    uint32_t seed) {
  std::mt19937 rng(seed);
  Problem pr{sh, MakePaged(lens, block_size, rng), {}, {}, {}, {}};
  pr.tk = MakeTokens(first, lens, rng);
  pr.q = testutil::RandomVector(pr.tk.seq.size() * sh.q_stride, rng, -2.0f, 2.0f);
  pr.kc = MakeCache(pr.p, sh.k_stride, rng);
  pr.vc = MakeCache(pr.p, sh.v_stride, rng);
  return pr;
}

AttentionArgs ArgsFor(const Problem& pr, std::vector<float>& out, std::vector<float>& lse) {
  const int T = static_cast<int>(pr.tk.seq.size());
  out.assign(static_cast<size_t>(T) * pr.sh.q_heads * pr.sh.v_dim, 123.0f);
  lse.assign(static_cast<size_t>(T) * pr.sh.q_heads, 123.0f);
  return AttentionArgs{.out = out.data(), .lse = lse.data(), .q = pr.q.data(), .k_cache = pr.kc.data(),
                       .v_cache = pr.vc.data(), .q_stride = pr.sh.q_stride, .k_stride = pr.sh.k_stride,
                       .v_stride = pr.sh.v_stride, .q_heads = pr.sh.q_heads, .kv_heads = pr.sh.kv_heads,
                       .qk_dim = pr.sh.qk_dim, .v_dim = pr.sh.v_dim, .num_slots = pr.p.num_slots,
                       .scale = pr.sh.scale, .layout = MakeLayout(pr.p, pr.tk)};
}

TEST(CpuAttention, DenseMatchesNaiveGqaPagedStrided) {
  const Shape sh{6, 2, 40, 24, 6 * 40 + 5, 2 * 40 + 3, 2 * 24 + 1, 0.3f};
  // Three sequences: a chunk at 200..299 of a 300-token prompt, a whole 333-token prompt, a decode row.
  Problem pr = MakeProblem(sh, {200, 0, 40}, {300, 333, 41}, 16, 31);
  std::vector<float> out, lse;
  AttentionArgs a = ArgsFor(pr, out, lse);
  CpuBackend cpu;
  ASSERT_TRUE(cpu.Attention(a).ok());
  const Reference ref = NaiveAttention(sh, pr.q, pr.kc, pr.vc, pr.p, pr.tk, nullptr, 0);
  EXPECT_LE(NormalisedError(out, ref.out), 1e-5);
  EXPECT_LE(NormalisedError(lse, ref.lse), 1e-5);
}

TEST(CpuAttention, DenseLongSequenceManyTilesMha) {
  const Shape sh{4, 4, 16, 16, 64, 64, 64, 0.25f};
  Problem pr = MakeProblem(sh, {0}, {1100}, 64, 32);
  std::vector<float> out, lse;
  AttentionArgs a = ArgsFor(pr, out, lse);
  a.lse = nullptr;
  CpuBackend cpu;
  ASSERT_TRUE(cpu.Attention(a).ok());
  const Reference ref = NaiveAttention(sh, pr.q, pr.kc, pr.vc, pr.p, pr.tk, nullptr, 0);
  EXPECT_LE(NormalisedError(out, ref.out), 1e-5);
}

// Random top-k rows: valid entries (shuffled), some −1 tails, some out-of-causal entries (ignored).
std::vector<int32_t> RandomTopk(const Tokens& tk, int k, std::mt19937& rng, bool add_junk) {
  const int T = static_cast<int>(tk.seq.size());
  std::vector<int32_t> topk(static_cast<size_t>(T) * k, -1);
  for (int t = 0; t < T; ++t) {
    std::vector<int32_t> all(tk.pos[t] + 1);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    const int n = std::min<int>(k, all.size());
    std::copy(all.begin(), all.begin() + n, topk.begin() + t * k);
    if (add_junk && n < k) topk[t * k + n] = tk.pos[t] + 1 + t % 5;  // beyond the causal limit
  }
  return topk;
}

TEST(CpuAttention, SparseMatchesNaiveWithProbsAndLse) {
  const Shape sh{6, 3, 20, 12, 6 * 20, 3 * 20 + 4, 3 * 12, 0.4f};
  Problem pr = MakeProblem(sh, {0, 50, 10}, {90, 120, 11}, 8, 33);
  std::mt19937 rng(34);
  const int k = 37;
  std::vector<int32_t> topk = RandomTopk(pr.tk, k, rng, /*add_junk=*/true);
  std::vector<float> out, lse;
  AttentionArgs a = ArgsFor(pr, out, lse);
  std::vector<float> probs(pr.tk.seq.size() * k, 77.0f);
  a.topk = topk.data();
  a.topk_k = k;
  a.probs = probs.data();
  CpuBackend cpu;
  ASSERT_TRUE(cpu.Attention(a).ok());
  const Reference ref = NaiveAttention(sh, pr.q, pr.kc, pr.vc, pr.p, pr.tk, &topk, k);
  EXPECT_LE(NormalisedError(out, ref.out), 1e-5);
  EXPECT_LE(NormalisedError(lse, ref.lse), 1e-5);
  EXPECT_LE(NormalisedError(probs, ref.probs), 1e-5);
  for (size_t t = 0; t < pr.tk.seq.size(); ++t) {  // head-averaged weights sum to 1 per row
    double s = 0.0;
    for (int i = 0; i < k; ++i) s += probs[t * k + i];
    EXPECT_NEAR(s, 1.0, 1e-5);
  }
}

TEST(CpuAttention, SparseRowWithNoValidEntryGivesZeros) {
  const Shape sh{2, 1, 8, 8, 16, 8, 8, 1.0f};
  Problem pr = MakeProblem(sh, {3}, {4}, 4, 35);
  std::vector<int32_t> topk = {-1, 9, -1};  // nothing valid for pos 3
  std::vector<float> out, lse;
  AttentionArgs a = ArgsFor(pr, out, lse);
  a.topk = topk.data();
  a.topk_k = 3;
  CpuBackend cpu;
  ASSERT_TRUE(cpu.Attention(a).ok());
  for (float v : out) EXPECT_EQ(v, 0.0f);
  for (float v : lse) EXPECT_EQ(v, -std::numeric_limits<float>::infinity());
}

// C11: with k ≥ context length, sparse attention over the (complete) top-k equals dense attention.
TEST(CpuAttention, CaseC11TopkCoveringContextEqualsDense) {
  const Shape sh{9, 3, 64, 64, 9 * 64, 3 * 64, 3 * 64, 0.125f};
  Problem pr = MakeProblem(sh, {0, 100}, {150, 260}, 64, 36);
  std::mt19937 rng(37);
  const int k = 300;  // ≥ every context length
  std::vector<int32_t> topk = RandomTopk(pr.tk, k, rng, /*add_junk=*/false);
  std::vector<float> dense, dense_lse, sparse, sparse_lse;
  AttentionArgs a = ArgsFor(pr, dense, dense_lse);
  CpuBackend cpu;
  ASSERT_TRUE(cpu.Attention(a).ok());
  AttentionArgs b = ArgsFor(pr, sparse, sparse_lse);
  b.topk = topk.data();
  b.topk_k = k;
  ASSERT_TRUE(cpu.Attention(b).ok());
  std::vector<double> dense_d(dense.begin(), dense.end()), lse_d(dense_lse.begin(), dense_lse.end());
  EXPECT_LE(NormalisedError(sparse, dense_d), 1e-5);
  EXPECT_LE(NormalisedError(sparse_lse, lse_d), 1e-5);
}

// MLA: naive (K/V expanded from the latent by kv_b, GQA layout) vs absorbed (W_UK folded into q,
// attention over the latent with v_cache aliasing k_cache, then W_UV), dense and sparse.
TEST(CpuAttention, MlaNaiveEqualsAbsorbed) {
  std::mt19937 rng(38);
  const int H = 4, r = 32, dr = 8, dn = 16, dv = 12;
  const std::vector<int> lens = {70, 45};
  Paged p = MakePaged(lens, 16, rng);
  Tokens tk = MakeTokens({0, 30}, lens, rng);
  const int T = static_cast<int>(tk.seq.size());
  // Latent cache: [num_slots, r + dr] = (c, k_rope).
  std::vector<float> latent = MakeCache(p, r + dr, rng);
  std::vector<float> w_uk = testutil::RandomVector(static_cast<size_t>(H) * dn * r, rng, -0.3f, 0.3f);  // [H, dn, r]
  std::vector<float> w_uv = testutil::RandomVector(static_cast<size_t>(H) * dv * r, rng, -0.3f, 0.3f);  // [H, dv, r]
  std::vector<float> q = testutil::RandomVector(static_cast<size_t>(T) * H * (dn + dr), rng);           // (q_nope, q_rope)
  const float scale = 1.0f / std::sqrt(static_cast<float>(dn + dr));

  // Naive caches: K [slots, H, dn + dr] = (W_UK[h]·c, k_rope); V [slots, H, dv] = W_UV[h]·c.
  std::vector<float> kn(p.num_slots * H * (dn + dr), 0.0f), vn(p.num_slots * H * dv, 0.0f);
  for (int64_t s = 0; s < p.num_slots; ++s) {
    if (!p.used_slot[s]) continue;
    const float* c = latent.data() + s * (r + dr);
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < dn; ++i) {
        double acc = 0.0;
        for (int j = 0; j < r; ++j) acc += static_cast<double>(w_uk[(h * dn + i) * r + j]) * c[j];
        kn[(s * H + h) * (dn + dr) + i] = static_cast<float>(acc);
      }
      for (int i = 0; i < dr; ++i) kn[(s * H + h) * (dn + dr) + dn + i] = c[r + i];
      for (int i = 0; i < dv; ++i) {
        double acc = 0.0;
        for (int j = 0; j < r; ++j) acc += static_cast<double>(w_uv[(h * dv + i) * r + j]) * c[j];
        vn[(s * H + h) * dv + i] = static_cast<float>(acc);
      }
    }
  }
  // Absorbed q: (W_UK[h]ᵀ·q_nope, q_rope), [T, H, r + dr].
  std::vector<float> qa(static_cast<size_t>(T) * H * (r + dr));
  for (int t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      const float* qh = q.data() + (t * H + h) * (dn + dr);
      float* out = qa.data() + (t * H + h) * (r + dr);
      for (int j = 0; j < r; ++j) {
        double acc = 0.0;
        for (int i = 0; i < dn; ++i) acc += static_cast<double>(w_uk[(h * dn + i) * r + j]) * qh[i];
        out[j] = static_cast<float>(acc);
      }
      for (int i = 0; i < dr; ++i) out[r + i] = qh[dn + i];
    }
  }
  const int k = 24;
  std::vector<int32_t> topk = RandomTopk(tk, k, rng, /*add_junk=*/true);
  CpuBackend cpu;
  for (bool sparse : {false, true}) {
    std::vector<float> o_naive(static_cast<size_t>(T) * H * dv), o_lat(static_cast<size_t>(T) * H * r);
    AttentionArgs n{.out = o_naive.data(), .q = q.data(), .k_cache = kn.data(), .v_cache = vn.data(), .q_heads = H,
                    .kv_heads = H, .qk_dim = dn + dr, .v_dim = dv, .num_slots = p.num_slots, .scale = scale,
                    .layout = MakeLayout(p, tk)};
    AttentionArgs ab{.out = o_lat.data(), .q = qa.data(), .k_cache = latent.data(), .v_cache = latent.data(),
                     .k_stride = r + dr, .v_stride = r + dr, .q_heads = H, .kv_heads = 1, .qk_dim = r + dr,
                     .v_dim = r, .num_slots = p.num_slots, .scale = scale, .layout = MakeLayout(p, tk)};
    if (sparse) {
      n.topk = ab.topk = topk.data();
      n.topk_k = ab.topk_k = k;
    }
    ASSERT_TRUE(cpu.Attention(n).ok());
    ASSERT_TRUE(cpu.Attention(ab).ok());
    std::vector<double> o_abs(static_cast<size_t>(T) * H * dv);
    for (int t = 0; t < T; ++t) {
      for (int h = 0; h < H; ++h) {
        for (int i = 0; i < dv; ++i) {
          double acc = 0.0;
          for (int j = 0; j < r; ++j) acc += static_cast<double>(w_uv[(h * dv + i) * r + j]) * o_lat[(t * H + h) * r + j];
          o_abs[(t * H + h) * dv + i] = acc;
        }
      }
    }
    EXPECT_LE(NormalisedError(o_naive, o_abs), 1e-5) << (sparse ? "sparse" : "dense");
  }
}

TEST(CpuAttention, RejectsBadArguments) {
  const Shape sh{4, 2, 8, 8, 32, 16, 16, 1.0f};
  Problem pr = MakeProblem(sh, {0}, {20}, 8, 39);
  std::vector<float> out, lse;
  AttentionArgs a = ArgsFor(pr, out, lse);
  CpuBackend cpu;
  ASSERT_TRUE(cpu.Attention(a).ok());
  AttentionArgs bad = a;
  bad.kv_heads = 3;
  absl::Status st = cpu.Attention(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("kv_heads = 3"), std::string::npos) << st;
  bad = a;
  bad.k_cache = nullptr;
  EXPECT_EQ(cpu.Attention(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = a;
  bad.k_stride = 10;
  EXPECT_EQ(cpu.Attention(bad).code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> probs(100);
  bad = a;
  bad.probs = probs.data();  // probs without topk
  EXPECT_EQ(cpu.Attention(bad).code(), absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> blocks = pr.p.block_tables;
  blocks[0] = 1000;
  bad = a;
  bad.layout.block_tables = blocks.data();
  st = cpu.Attention(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("block_tables[0, 0] = 1000"), std::string::npos) << st;
  std::vector<int32_t> seqs = pr.tk.seq;
  seqs[0] = -1;
  bad = a;
  bad.layout.token_seq = seqs.data();
  EXPECT_EQ(cpu.Attention(bad).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ic::kernels::cpu
