// Tests of the indexer distillation loss, its gradients, Adam and the schedule.
#include "sdk/distill.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace ic {
namespace {

using ::testing::HasSubstr;
using kernels::Backend;
using kernels::CreateBackend;
using kernels::DeviceKind;
using kernels::RopeArgs;
using kernels::RopeStyle;

ModelConfig MakeConfig(int H, int d, int R, bool interleave, int hidden, int q_lora) {
  ModelConfig c;
  c.arch = q_lora > 0 ? Architecture::kDeepseekV32 : Architecture::kLlamaDsa;
  c.mla = q_lora > 0;
  c.q_lora_rank = q_lora;
  c.hidden_size = hidden;
  c.has_indexer = true;
  c.index_n_heads = H;
  c.index_head_dim = d;
  c.index_rope_head_dim = R;
  c.indexer_rope_interleave = interleave;
  c.index_topk = 4;
  c.max_position_embeddings = 4096;
  c.rope.theta = 10000.0;
  return c;
}

HostTensor RandomTensor(std::vector<int64_t> shape, std::mt19937& rng, float mean, float stddev) {
  HostTensor t;
  t.shape = shape;
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  std::normal_distribution<float> dist(mean, stddev);
  t.data.resize(n);
  for (float& v : t.data) v = dist(rng);
  return t;
}

IndexerWeights RandomWeights(const ModelConfig& c, std::mt19937& rng) {
  const int in_q = c.mla ? c.q_lora_rank : c.hidden_size;
  IndexerWeights w;
  w.wq = RandomTensor({int64_t{c.index_n_heads} * c.index_head_dim, in_q}, rng, 0, 0.5f);
  w.wk = RandomTensor({c.index_head_dim, c.hidden_size}, rng, 0, 0.5f);
  w.k_norm_weight = RandomTensor({c.index_head_dim}, rng, 1, 0.2f);
  w.k_norm_bias = RandomTensor({c.index_head_dim}, rng, 0, 0.2f);
  w.weights_proj = RandomTensor({c.index_n_heads, c.hidden_size}, rng, 0, 2.0f);
  w.any_present = true;
  return w;
}

std::vector<float> RandomVec(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0, 1);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Inputs plus a dense target: row t = softmax of random logits over s ≤ t.
// ‖x − y‖ / ‖y‖ (y the reference).
double RelErr(const std::vector<double>& x, const std::vector<double>& y) {
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (x[i] - y[i]) * (x[i] - y[i]);
    den += y[i] * y[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

IndexerBatch RandomBatch(const ModelConfig& c, int T, std::mt19937& rng, int pos_offset = 3) {
  const int in_q = c.mla ? c.q_lora_rank : c.hidden_size;
  IndexerBatch b;
  b.tokens = T;
  b.x_q = RandomVec(static_cast<size_t>(T) * in_q, rng);
  b.x = RandomVec(static_cast<size_t>(T) * c.hidden_size, rng);
  for (int t = 0; t < T; ++t) b.positions.push_back(t + pos_offset);
  b.p_dense.assign(static_cast<size_t>(T) * T, 0);
  std::normal_distribution<double> dist(0, 1.5);
  for (int t = 0; t < T; ++t) {
    std::vector<double> e(t + 1);
    double z = 0;
    for (int s = 0; s <= t; ++s) z += e[s] = std::exp(dist(rng));
    for (int s = 0; s <= t; ++s) b.p_dense[static_cast<size_t>(t) * T + s] = static_cast<float>(e[s] / z);
  }
  return b;
}

// Sparse target: row t keeps a random subset (at most `keep` positions, always t) with renormalised mass.
void MakeSparse(IndexerBatch& b, int keep, std::mt19937& rng) {
  const int T = b.tokens;
  b.p_offsets = {0};
  for (int t = 0; t < T; ++t) {
    std::vector<int32_t> cand;
    for (int s = 0; s < t; ++s) cand.push_back(s);
    std::shuffle(cand.begin(), cand.end(), rng);
    cand.resize(std::min<size_t>(cand.size(), keep - 1));
    cand.push_back(t);
    double z = 0;
    for (int32_t s : cand) z += b.p_dense[static_cast<size_t>(t) * T + s];
    for (int32_t s : cand) {
      b.p_index.push_back(s);
      b.p_prob.push_back(static_cast<float>(b.p_dense[static_cast<size_t>(t) * T + s] / z));
    }
    b.p_offsets.push_back(static_cast<int32_t>(b.p_index.size()));
  }
  b.p_dense.clear();
}

// ---- Independent naive forward (written from DESIGN.md §2, not from distill.cc). ----------------------------

std::vector<double> NaiveScores(const ModelConfig& c, const IndexerWeights& W, const IndexerBatch& b) {
  const int T = b.tokens, H = c.index_n_heads, d = c.index_head_dim, R = c.index_rope_head_dim;
  const int in_q = c.mla ? c.q_lora_rank : c.hidden_size, hid = c.hidden_size;
  const RopeTables rope = ComputeRope(c.rope, std::max(R, 2), c.max_position_embeddings);
  auto rotate = [&](std::vector<double>& v, int pos) {  // v has d entries; rotate the first R
    const int half = R / 2;
    std::vector<double> out = v;
    for (int i = 0; i < half; ++i) {
      const float ang = static_cast<float>(pos) * rope.inv_freq[i];
      const double cs = std::cos(static_cast<double>(ang)) * rope.attention_scaling;
      const double sn = std::sin(static_cast<double>(ang)) * rope.attention_scaling;
      const int a = c.indexer_rope_interleave ? 2 * i : i;
      const int bb = c.indexer_rope_interleave ? 2 * i + 1 : i + half;
      out[a] = v[a] * cs - v[bb] * sn;
      out[bb] = v[bb] * cs + v[a] * sn;
    }
    v = out;
  };
  std::vector<std::vector<std::vector<double>>> q(T, std::vector<std::vector<double>>(H, std::vector<double>(d)));
  std::vector<std::vector<double>> k(T, std::vector<double>(d));
  std::vector<std::vector<double>> w(T, std::vector<double>(H));
  for (int t = 0; t < T; ++t) {
    for (int j = 0; j < H; ++j) {
      for (int i = 0; i < d; ++i) {
        double acc = 0;
        for (int a = 0; a < in_q; ++a) acc += double(W.wq.data[(j * d + i) * in_q + a]) * b.x_q[t * in_q + a];
        q[t][j][i] = acc;
      }
      rotate(q[t][j], b.positions[t]);
      double acc = 0;
      for (int a = 0; a < hid; ++a) acc += double(W.weights_proj.data[j * hid + a]) * b.x[t * hid + a];
      w[t][j] = acc / std::sqrt(double(H)) / std::sqrt(double(d));
    }
    std::vector<double> kp(d);
    for (int i = 0; i < d; ++i) {
      double acc = 0;
      for (int a = 0; a < hid; ++a) acc += double(W.wk.data[i * hid + a]) * b.x[t * hid + a];
      kp[i] = acc;
    }
    double mu = 0, var = 0;
    for (double v : kp) mu += v;
    mu /= d;
    for (double v : kp) var += (v - mu) * (v - mu);
    var /= d;
    for (int i = 0; i < d; ++i) {
      k[t][i] = (kp[i] - mu) / std::sqrt(var + 1e-6) * W.k_norm_weight.data[i] + W.k_norm_bias.data[i];
    }
    rotate(k[t], b.positions[t]);
  }
  std::vector<double> I(static_cast<size_t>(T) * T, -std::numeric_limits<double>::infinity());
  for (int t = 0; t < T; ++t) {
    for (int s = 0; s <= t; ++s) {
      double acc = 0;
      for (int j = 0; j < H; ++j) {
        double dot = 0;
        for (int i = 0; i < d; ++i) dot += q[t][j][i] * k[s][i];
        acc += w[t][j] * std::max(0.0, dot);
      }
      I[t * T + s] = acc;
    }
  }
  return I;
}

// mean over nonzero dense rows of KL(p_t ‖ softmax_{s≤t} I_t).
double NaiveDenseLoss(const ModelConfig& c, const IndexerWeights& W, const IndexerBatch& b) {
  const std::vector<double> I = NaiveScores(c, W, b);
  const int T = b.tokens;
  double total = 0;
  int rows = 0;
  for (int t = 0; t < T; ++t) {
    double psum = 0;
    for (int s = 0; s <= t; ++s) psum += b.p_dense[t * T + s];
    if (psum == 0) continue;
    ++rows;
    double z = 0;
    for (int s = 0; s <= t; ++s) z += std::exp(I[t * T + s]);
    for (int s = 0; s <= t; ++s) {
      const double p = b.p_dense[t * T + s] / psum;  // rows are renormalised (distill.h)
      if (p > 0) total += p * std::log(p / (std::exp(I[t * T + s]) / z));
    }
  }
  return rows ? total / rows : 0.0;
}

// ---- (b) loss equals the naive computation -------------------------------------------------------------------

TEST(IndexerDistill, LossMatchesNaiveHandSized) {
  for (bool interleave : {false, true}) {
    for (int q_lora : {0, 5}) {
      std::mt19937 rng(7 + interleave + q_lora);
      const ModelConfig c = MakeConfig(/*H=*/2, /*d=*/4, /*R=*/2, interleave, /*hidden=*/3, q_lora);
      const IndexerWeights W = RandomWeights(c, rng);
      IndexerBatch b = RandomBatch(c, /*T=*/5, rng);
      // Row 2 empty: skipped and not counted.
      for (int s = 0; s < 5; ++s) b.p_dense[2 * 5 + s] = 0;
      auto loss = IndexerDistillLoss(c, W, b, nullptr);
      ASSERT_TRUE(loss.ok()) << loss.status();
      const double naive = NaiveDenseLoss(c, W, b);
      EXPECT_GT(naive, 0);
      EXPECT_NEAR(*loss, naive, 1e-12 * std::max(1.0, naive)) << "interleave=" << interleave << " q_lora=" << q_lora;

      auto scores = IndexerScores(c, W, b);
      ASSERT_TRUE(scores.ok()) << scores.status();
      const std::vector<double> ref = NaiveScores(c, W, b);
      for (size_t i = 0; i < ref.size(); ++i) {
        if (std::isinf(ref[i])) {
          EXPECT_TRUE(std::isinf((*scores)[i]));
        } else {
          EXPECT_NEAR((*scores)[i], ref[i], 1e-12 * std::max(1.0, std::abs(ref[i]))) << i;
        }
      }
      // Gradients with the loss: same value.
      IndexerGrads g;
      auto loss2 = IndexerDistillLoss(c, W, b, &g);
      ASSERT_TRUE(loss2.ok());
      EXPECT_EQ(*loss, *loss2);
    }
  }
}

// The scores the loss trains are the scores the engine serves: the CPU backend's kernels, called in the
// order of sdk/forward.cc (Gemm, LayerNorm, scaled Gemm, RoPE on q and k, IndexerTopk with scores).
TEST(IndexerDistill, ScoresMatchEngineKernels) {
  for (bool interleave : {false, true}) {
    SCOPED_TRACE(interleave);
    std::mt19937 rng(31 + interleave);
    const ModelConfig c = MakeConfig(/*H=*/4, /*d=*/16, /*R=*/8, interleave, /*hidden=*/24, /*q_lora=*/12);
    const IndexerWeights W = RandomWeights(c, rng);
    const int T = 20, H = 4, d = 16, R = 8, in_q = 12, hid = 24;
    IndexerBatch b = RandomBatch(c, T, rng, /*pos_offset=*/0);  // causality by row = by position here
    auto be_or = CreateBackend(DeviceKind::kCpu);
    ASSERT_TRUE(be_or.ok()) << be_or.status();
    Backend& be = **be_or;
    std::vector<float> q(T * H * d), k(T * d), w(T * H), scores(T * T, 0.0f);
    const float w_scale = 1.0f / std::sqrt(float(H)) / std::sqrt(float(d));
    ASSERT_TRUE(be.Gemm({.c = q.data(), .a = b.x_q.data(), .b = W.wq.data.data(), .m = T, .n = H * d, .k = in_q,
                         .lda = in_q, .ldb = in_q, .ldc = H * d}).ok());
    ASSERT_TRUE(be.Gemm({.c = k.data(), .a = b.x.data(), .b = W.wk.data.data(), .m = T, .n = d, .k = hid,
                         .lda = hid, .ldb = hid, .ldc = d}).ok());
    ASSERT_TRUE(be.LayerNorm({.out = k.data(), .in = k.data(), .weight = W.k_norm_weight.data.data(),
                              .bias = W.k_norm_bias.data.data(), .rows = T, .dim = d, .eps = 1e-6f}).ok());
    ASSERT_TRUE(be.Gemm({.c = w.data(), .a = b.x.data(), .b = W.weights_proj.data.data(), .m = T, .n = H, .k = hid,
                         .lda = hid, .ldb = hid, .ldc = H, .alpha = w_scale}).ok());
    const RopeTables rope = ComputeRope(c.rope, R, c.max_position_embeddings);
    const RopeStyle style = interleave ? RopeStyle::kInterleaved : RopeStyle::kNeox;
    RopeArgs rq{.x = q.data(), .positions = b.positions.data(), .inv_freq = rope.inv_freq.data(), .tokens = T,
                .heads = H, .token_stride = H * d, .head_stride = d, .rot_offset = 0, .rot_dim = R,
                .attention_scaling = rope.attention_scaling, .style = style};
    ASSERT_TRUE(be.Rope(rq).ok());
    RopeArgs rk = rq;
    rk.x = k.data();
    rk.heads = 1;
    rk.token_stride = d;
    ASSERT_TRUE(be.Rope(rk).ok());
    std::vector<int32_t> seq(T, 0), block_table = {0}, idx(T * 4);
    kernels::IndexerArgs ia;
    ia.indices = idx.data();
    ia.scores = scores.data();
    ia.scores_stride = T;
    ia.q = q.data();
    ia.w = w.data();
    ia.k_cache = k.data();  // slot s = position s (one block of 64)
    ia.k_stride = d;
    ia.num_slots = 64;
    ia.heads = H;
    ia.head_dim = d;
    ia.k = 4;
    ia.layout = {.token_seq = seq.data(), .token_pos = b.positions.data(), .block_tables = block_table.data(),
                 .tokens = T, .num_seqs = 1, .max_blocks_per_seq = 1, .block_size = 64};
    std::vector<float> kpad(64 * d, 0.0f);
    std::copy(k.begin(), k.end(), kpad.begin());
    ia.k_cache = kpad.data();
    ASSERT_TRUE(be.IndexerTopk(ia).ok());
    auto ours = IndexerScores(c, W, b);
    ASSERT_TRUE(ours.ok()) << ours.status();
    double max_abs = 0;
    for (double v : *ours) if (std::isfinite(v)) max_abs = std::max(max_abs, std::abs(v));
    ASSERT_GT(max_abs, 0.1);
    for (int t = 0; t < T; ++t) {
      for (int s = 0; s <= t; ++s) {
        EXPECT_NEAR(scores[t * T + s], (*ours)[t * T + s], 1e-4 * max_abs) << t << "," << s;
      }
    }
  }
}

TEST(IndexerDistill, SparseWithEverySelectedEqualsDense) {
  std::mt19937 rng(11);
  const ModelConfig c = MakeConfig(2, 8, 4, false, 16, 0);
  const IndexerWeights W = RandomWeights(c, rng);
  IndexerBatch dense = RandomBatch(c, 9, rng);
  IndexerBatch sparse = dense;
  MakeSparse(sparse, /*keep=*/100, rng);  // every s ≤ t selected
  auto a = IndexerDistillLoss(c, W, dense, nullptr);
  auto b = IndexerDistillLoss(c, W, sparse, nullptr);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NEAR(*a, *b, 1e-6);  // the sparse probabilities were renormalised in F32
  sparse.sparse_softmax_over_all_keys = true;
  auto b2 = IndexerDistillLoss(c, W, sparse, nullptr);
  ASSERT_TRUE(b2.ok());
  EXPECT_NEAR(*b, *b2, 1e-12);
}

// The dense target runs through BLAS in query tiles of 256 rows; T = 300 spans two tiles. The sparse path
// (every key selected) is the per-row loop: both must agree on the loss and every gradient.
TEST(IndexerDistill, DenseTilesMatchTheRowPath) {
  std::mt19937 rng(17);
  const ModelConfig c = MakeConfig(2, 8, 4, false, 16, 0);
  const IndexerWeights W = RandomWeights(c, rng);
  IndexerBatch dense = RandomBatch(c, 300, rng);
  IndexerBatch sparse = dense;
  MakeSparse(sparse, /*keep=*/1000, rng);  // every s ≤ t selected
  IndexerGrads ga, gb;
  auto a = IndexerDistillLoss(c, W, dense, &ga);
  auto b = IndexerDistillLoss(c, W, sparse, &gb);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  EXPECT_NEAR(*a, *b, 1e-6 * std::max(1.0, *a));
  EXPECT_LT(RelErr(ga.wq, gb.wq), 1e-5);
  EXPECT_LT(RelErr(ga.wk, gb.wk), 1e-5);
  EXPECT_LT(RelErr(ga.k_norm_weight, gb.k_norm_weight), 1e-5);
  EXPECT_LT(RelErr(ga.k_norm_bias, gb.k_norm_bias), 1e-5);
  EXPECT_LT(RelErr(ga.weights_proj, gb.weights_proj), 1e-5);
}

// The dense target's score part through Backend::IndexerDistill (F32 products) against the all-double path,
// with a row skipped and a row that sums to a little less than 1. The CUDA backend, when a GPU is visible.
TEST(IndexerDistill, BackendPathMatchesDoublePath) {
  std::mt19937 rng(29);
  for (bool interleave : {false, true}) {
    const ModelConfig c = MakeConfig(3, 16, 8, interleave, 24, 12);
    const IndexerWeights W = RandomWeights(c, rng);
    IndexerBatch b = RandomBatch(c, 150, rng);
    const int T = b.tokens;
    std::fill_n(&b.p_dense[7 * static_cast<size_t>(T)], T, 0.0f);
    for (int s = 0; s <= 20; ++s) b.p_dense[20 * static_cast<size_t>(T) + s] *= 0.9995f;
    IndexerGrads want;
    auto want_loss = IndexerDistillLoss(c, W, b, &want);
    ASSERT_TRUE(want_loss.ok()) << want_loss.status();
    std::vector<DeviceKind> kinds = {DeviceKind::kCpu};
    if (kernels::CudaDeviceCount() > 0) kinds.push_back(DeviceKind::kCuda);
    for (DeviceKind kind : kinds) {
      auto backend = CreateBackend(kind);
      ASSERT_TRUE(backend.ok()) << backend.status();
      IndexerGrads got;
      auto loss = IndexerDistillLoss(c, W, b, &got, backend->get());
      ASSERT_TRUE(loss.ok()) << loss.status();
      const std::string what = (*backend)->name() + (interleave ? " interleaved" : " neox");
      // CPU: the same double arithmetic but for the F32 rounding of q, k and w; CUDA: F32 products as well.
      EXPECT_NEAR(*loss, *want_loss, 1e-5 * std::max(1.0, *want_loss)) << what;
      EXPECT_LT(RelErr(got.wq, want.wq), 1e-4) << what;
      EXPECT_LT(RelErr(got.wk, want.wk), 1e-4) << what;
      EXPECT_LT(RelErr(got.k_norm_weight, want.k_norm_weight), 1e-4) << what;
      EXPECT_LT(RelErr(got.k_norm_bias, want.k_norm_bias), 1e-4) << what;
      EXPECT_LT(RelErr(got.weights_proj, want.weights_proj), 1e-4) << what;
      auto no_grad = IndexerDistillLoss(c, W, b, nullptr, backend->get());
      ASSERT_TRUE(no_grad.ok()) << no_grad.status();
      EXPECT_EQ(*no_grad, *loss) << what;
    }
  }
}

// The backend path computes in F32: weights whose scores overflow its range are refused, not returned as an
// inf loss (the host path, in double, still computes it).
TEST(IndexerDistill, BackendPathRefusesValuesBeyondF32) {
  std::mt19937 rng(31);
  const ModelConfig c = MakeConfig(2, 16, 8, false, 24, 12);
  IndexerWeights W = RandomWeights(c, rng);
  for (float& v : W.weights_proj.data) v = 3e38f;  // finite F32 weights; w = x·Wᵀ·scale is not
  IndexerBatch b = RandomBatch(c, 20, rng);
  for (float& v : b.x) v = 10.0f + std::fabs(v);
  auto backend = CreateBackend(DeviceKind::kCpu);
  ASSERT_TRUE(backend.ok());
  auto loss = IndexerDistillLoss(c, W, b, nullptr, backend->get());
  ASSERT_FALSE(loss.ok());
  EXPECT_EQ(loss.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loss.status().message()), HasSubstr("F32"));
  EXPECT_TRUE(IndexerDistillLoss(c, W, b, nullptr).ok());
}

// ---- (c) KL is 0 exactly when p = softmax(I) -----------------------------------------------------------------

TEST(IndexerDistill, KlZeroWhenTargetIsIndexerSoftmax) {
  for (bool interleave : {false, true}) {
    std::mt19937 rng(3 + interleave);
    const ModelConfig c = MakeConfig(2, 8, 4, interleave, 16, 6);
    const IndexerWeights W = RandomWeights(c, rng);
    IndexerBatch b = RandomBatch(c, 10, rng);
    const std::vector<double> I = NaiveScores(c, W, b);
    const int T = b.tokens;
    for (int t = 0; t < T; ++t) {
      double mx = -1e300, z = 0;
      for (int s = 0; s <= t; ++s) mx = std::max(mx, I[t * T + s]);
      for (int s = 0; s <= t; ++s) z += std::exp(I[t * T + s] - mx);
      for (int s = 0; s <= t; ++s) b.p_dense[t * T + s] = static_cast<float>(std::exp(I[t * T + s] - mx) / z);
    }
    IndexerGrads g;
    auto loss = IndexerDistillLoss(c, W, b, &g);
    ASSERT_TRUE(loss.ok()) << loss.status();
    EXPECT_NEAR(*loss, 0.0, 1e-9);
    EXPECT_GE(*loss, -1e-12);
    double gmax = 0;
    for (double v : g.wq) gmax = std::max(gmax, std::abs(v));
    EXPECT_LT(gmax, 1e-5);  // only the F32 rounding of p remains

    // Move mass in row T-1 from its largest to its smallest entry: KL > 0.
    float* row = &b.p_dense[(T - 1) * T];
    int hi = 0, lo = 0;
    for (int s = 0; s < T; ++s) {
      if (row[s] > row[hi]) hi = s;
      if (row[s] < row[lo]) lo = s;
    }
    const float moved = row[hi] / 2;
    row[hi] -= moved;
    row[lo] += moved;
    auto loss2 = IndexerDistillLoss(c, W, b, nullptr);
    ASSERT_TRUE(loss2.ok());
    EXPECT_GT(*loss2, 1e-4);
  }
}

// ---- (a) gradient check -----------------------------------------------------------------------------------------

void GradCheck(const ModelConfig& c, const IndexerBatch& batch, uint32_t seed) {
  std::mt19937 rng(seed);
  IndexerWeights W = RandomWeights(c, rng);
  IndexerGrads g;
  auto loss = IndexerDistillLoss(c, W, batch, &g);
  ASSERT_TRUE(loss.ok()) << loss.status();
  ASSERT_GT(*loss, 0);
  struct Item {
    const char* name;
    HostTensor* w;
    const std::vector<double>* g;
  };
  const Item items[] = {{"wq", &W.wq, &g.wq},
                        {"wk", &W.wk, &g.wk},
                        {"k_norm_weight", &W.k_norm_weight, &g.k_norm_weight},
                        {"k_norm_bias", &W.k_norm_bias, &g.k_norm_bias},
                        {"weights_proj", &W.weights_proj, &g.weights_proj}};
  const double h = 1e-4;
  int checked_nonzero = 0;
  for (const Item& it : items) {
    ASSERT_EQ(it.g->size(), it.w->data.size()) << it.name;
    const size_t n = it.w->data.size();
    std::vector<size_t> idx(n);
    for (size_t i = 0; i < n; ++i) idx[i] = i;
    std::shuffle(idx.begin(), idx.end(), rng);
    idx.resize(std::min<size_t>(n, 16));
    for (size_t i : idx) {
      const float orig = it.w->data[i];
      const float plus = static_cast<float>(orig + h), minus = static_cast<float>(orig - h);
      it.w->data[i] = plus;
      auto lp = IndexerDistillLoss(c, W, batch, nullptr);
      it.w->data[i] = minus;
      auto lm = IndexerDistillLoss(c, W, batch, nullptr);
      it.w->data[i] = orig;
      ASSERT_TRUE(lp.ok() && lm.ok());
      // Divide by the perturbation the F32 weight actually received.
      const double fd = (*lp - *lm) / (static_cast<double>(plus) - static_cast<double>(minus));
      const double an = (*it.g)[i];
      const double scale = std::max(std::abs(fd), std::abs(an));
      if (scale > 1e-6) {
        ++checked_nonzero;
        EXPECT_LT(std::abs(fd - an) / scale, 1e-3) << it.name << "[" << i << "] fd=" << fd << " analytic=" << an;
      } else {
        EXPECT_LT(std::abs(fd - an), 1e-9) << it.name << "[" << i << "]";
      }
    }
  }
  EXPECT_GT(checked_nonzero, 40);
}

TEST(IndexerDistill, GradientCheckDenseBothRopeStyles) {
  for (bool interleave : {false, true}) {
    for (int q_lora : {0, 10}) {
      SCOPED_TRACE(testing::Message() << "interleave=" << interleave << " q_lora=" << q_lora);
      const ModelConfig c = MakeConfig(/*H=*/2, /*d=*/8, /*R=*/4, interleave, /*hidden=*/16, q_lora);
      std::mt19937 rng(100 + interleave * 2 + (q_lora > 0));
      IndexerBatch b = RandomBatch(c, /*T=*/12, rng);
      for (int s = 0; s < 12; ++s) b.p_dense[4 * 12 + s] = 0;  // a skipped row
      GradCheck(c, b, 1000 + interleave);
    }
  }
}

TEST(IndexerDistill, GradientCheckSparseBothRopeStyles) {
  for (bool interleave : {false, true}) {
    for (bool over_all : {false, true}) {
      SCOPED_TRACE(testing::Message() << "interleave=" << interleave << " over_all=" << over_all);
      const ModelConfig c = MakeConfig(2, 8, 4, interleave, 16, 0);
      std::mt19937 rng(200 + interleave * 2 + over_all);
      IndexerBatch b = RandomBatch(c, 12, rng);
      MakeSparse(b, /*keep=*/4, rng);
      b.sparse_softmax_over_all_keys = over_all;
      GradCheck(c, b, 2000 + interleave);
    }
  }
}

TEST(IndexerDistill, GradientsAreZeroWithNoCountedRow) {
  std::mt19937 rng(5);
  const ModelConfig c = MakeConfig(2, 8, 4, false, 16, 0);
  const IndexerWeights W = RandomWeights(c, rng);
  IndexerBatch b = RandomBatch(c, 6, rng);
  std::fill(b.p_dense.begin(), b.p_dense.end(), 0.0f);
  IndexerGrads g;
  auto loss = IndexerDistillLoss(c, W, b, &g);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_EQ(*loss, 0.0);
  ASSERT_EQ(g.wq.size(), W.wq.data.size());
  for (double v : g.wq) EXPECT_EQ(v, 0.0);
}

// ---- (d) Adam on a fixed batch reduces the loss --------------------------------------------------------------

TEST(IndexerDistill, AdamReducesLossMonotonically) {
  for (bool sparse : {false, true}) {
    std::mt19937 rng(42 + sparse);
    const ModelConfig c = MakeConfig(2, 8, 4, true, 16, 10);
    IndexerWeights W = RandomWeights(c, rng);
    IndexerBatch b = RandomBatch(c, 16, rng);
    if (sparse) MakeSparse(b, 5, rng);
    AdamState state;
    const int steps = 25;
    double prev = std::numeric_limits<double>::infinity();
    double first = 0;
    for (int step = 0; step < steps; ++step) {
      IndexerGrads g;
      auto loss = IndexerDistillLoss(c, W, b, &g);
      ASSERT_TRUE(loss.ok()) << loss.status();
      if (step == 0) first = *loss;
      EXPECT_LT(*loss, prev) << "step " << step << " sparse=" << sparse;
      prev = *loss;
      ASSERT_TRUE(AdamStep(g, LearningRate(step, steps, 2e-3, 3), &state, &W).ok());
    }
    EXPECT_EQ(state.step, steps);
    EXPECT_LT(prev, first * 0.99) << "sparse=" << sparse;
  }
}

TEST(IndexerDistill, AdamStepMatchesFormula) {
  IndexerWeights W;
  W.wq = {{1, 2}, {1.0f, -2.0f}};
  W.wk = {{1, 1}, {0.5f}};
  W.k_norm_weight = {{1}, {1.0f}};
  W.k_norm_bias = {{1}, {0.0f}};
  W.weights_proj = {{1, 1}, {0.25f}};
  IndexerGrads g;
  g.wq = {0.5, -0.1};
  g.wk = {0.0};
  g.k_norm_weight = {2.0};
  g.k_norm_bias = {-1.0};
  g.weights_proj = {1e-3};
  AdamState st;
  ASSERT_TRUE(AdamStep(g, 0.01, &st, &W).ok());
  // First step: m̂ = g, v̂ = g², update = lr · g / (|g| + ε) ≈ lr · sign(g).
  EXPECT_NEAR(W.wq.data[0], 1.0 - 0.01, 1e-6);
  EXPECT_NEAR(W.wq.data[1], -2.0 + 0.01, 1e-6);
  EXPECT_FLOAT_EQ(W.wk.data[0], 0.5f);
  EXPECT_NEAR(W.k_norm_bias.data[0], 0.01, 1e-6);
  // Second step with the same gradient: m̂ = g, v̂ = g² again.
  ASSERT_TRUE(AdamStep(g, 0.01, &st, &W).ok());
  EXPECT_NEAR(W.wq.data[0], 1.0 - 0.02, 1e-6);
  EXPECT_EQ(st.step, 2);
  // Second moment by hand: v = (1−β2)·g²·(β2 + 1).
  EXPECT_NEAR(st.v.wq[0], 0.001 * 0.25 * (0.999 + 1), 1e-12);
  EXPECT_NEAR(st.m.wq[0], 0.1 * 0.5 * (0.9 + 1), 1e-12);
}

TEST(IndexerDistill, LearningRateSchedule) {
  EXPECT_DOUBLE_EQ(LearningRate(0, 100, 1.0, 10), 0.1);
  EXPECT_DOUBLE_EQ(LearningRate(9, 100, 1.0, 10), 1.0);
  EXPECT_DOUBLE_EQ(LearningRate(10, 100, 1.0, 10), 1.0);
  EXPECT_NEAR(LearningRate(55, 100, 1.0, 10), 0.5, 1e-12);
  double prev = 2;
  for (int s = 10; s < 100; ++s) {
    const double lr = LearningRate(s, 100, 1.0, 10);
    EXPECT_LT(lr, prev + 1e-15);
    EXPECT_GT(lr, 0);
    prev = lr;
  }
  EXPECT_EQ(LearningRate(100, 100, 1.0, 10), 0.0);
  EXPECT_DOUBLE_EQ(LearningRate(0, 10, 3e-4, 0), 3e-4);
}

// ---- (e) shape and value errors name the field ---------------------------------------------------------------

TEST(IndexerDistill, ErrorsNameTheField) {
  std::mt19937 rng(9);
  const ModelConfig c = MakeConfig(2, 8, 4, false, 16, 10);
  const IndexerWeights W = RandomWeights(c, rng);
  const IndexerBatch good = RandomBatch(c, 6, rng);
  ASSERT_TRUE(IndexerDistillLoss(c, W, good, nullptr).ok());

  auto expect_error = [&](const ModelConfig& cc, const IndexerWeights& ww, const IndexerBatch& bb, const std::string& what) {
    auto r = IndexerDistillLoss(cc, ww, bb, nullptr);
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(what));
  };
  {
    IndexerWeights w = W;
    w.wq.shape = {16, 16};  // Llama-DSA width, but the config is MLA with q_lora 10
    w.wq.data.resize(256);
    expect_error(c, w, good, "weights.wq");
  }
  {
    IndexerWeights w = W;
    w.wk.data.pop_back();
    expect_error(c, w, good, "weights.wk");
  }
  {
    IndexerWeights w = W;
    w.k_norm_bias = {};
    expect_error(c, w, good, "weights.k_norm_bias");
  }
  {
    IndexerWeights w = W;
    w.weights_proj.shape = {3, 16};
    expect_error(c, w, good, "weights.weights_proj");
  }
  {
    ModelConfig cc = c;
    cc.index_rope_head_dim = 3;
    expect_error(cc, W, good, "index_rope_head_dim");
  }
  {
    IndexerBatch b = good;
    b.x_q.pop_back();
    expect_error(c, W, b, "batch.x_q");
  }
  {
    IndexerBatch b = good;
    b.x.push_back(0);
    expect_error(c, W, b, "batch.x ");
  }
  {
    IndexerBatch b = good;
    b.x[3] = std::numeric_limits<float>::quiet_NaN();
    expect_error(c, W, b, "batch.x[3]");
  }
  {
    IndexerBatch b = good;
    b.positions.pop_back();
    expect_error(c, W, b, "batch.positions");
  }
  {
    IndexerBatch b = good;
    b.positions[2] = -1;
    expect_error(c, W, b, "batch.positions[2]");
  }
  {
    IndexerBatch b = good;
    b.tokens = 0;
    expect_error(c, W, b, "batch.tokens");
  }
  {
    IndexerBatch b = good;
    b.p_dense.resize(30);
    expect_error(c, W, b, "batch.p_dense has 30");
  }
  {
    IndexerBatch b = good;
    b.p_dense[1 * 6 + 3] = 0.1f;  // above the diagonal
    expect_error(c, W, b, "batch.p_dense[1, 3]");
  }
  {
    IndexerBatch b = good;
    b.p_dense[2 * 6 + 0] += 0.5f;
    expect_error(c, W, b, "batch.p_dense row 2");
  }
  {
    IndexerBatch b = good;
    b.p_dense.clear();
    expect_error(c, W, b, "exactly one target");
  }
  {
    IndexerBatch b = good;
    b.p_offsets = {0};
    expect_error(c, W, b, "exactly one target");
  }
  std::mt19937 rng2(1);
  IndexerBatch sparse = good;
  MakeSparse(sparse, 3, rng2);
  ASSERT_TRUE(IndexerDistillLoss(c, W, sparse, nullptr).ok());
  {
    IndexerBatch b = sparse;
    b.p_offsets.pop_back();
    expect_error(c, W, b, "batch.p_offsets");
  }
  {
    IndexerBatch b = sparse;
    b.p_index[b.p_offsets[2]] = 4;  // row 2 may not select position 4
    expect_error(c, W, b, "batch.p_index");
  }
  {
    IndexerBatch b = sparse;
    b.p_index[b.p_offsets[3]] = b.p_index[b.p_offsets[3] + 1];
    expect_error(c, W, b, "repeats position");
  }
  {
    IndexerBatch b = sparse;
    b.p_prob.pop_back();
    expect_error(c, W, b, "batch.p_prob");
  }
  {
    IndexerBatch b = sparse;
    b.p_prob[0] = -0.5f;
    expect_error(c, W, b, "batch.p_prob[0]");
  }

  // Adam: gradient sizes must match the weights.
  IndexerGrads g;
  ASSERT_TRUE(IndexerDistillLoss(c, W, good, &g).ok());
  g.wq.pop_back();
  IndexerWeights w = W;
  AdamState st;
  auto s = AdamStep(g, 1e-3, &st, &w);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("grads.wq"));
  EXPECT_EQ(st.step, 0);
}

}  // namespace
}  // namespace ic
