// Indexer distillation loop: the engine's attention / indexer-input captures against an independent
// computation from the weights, the multi-layer target, training, exact resume, the DSA model writer,
// and bad input.
#include "sdk/distill_loop.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sdk/engine.h"
#include "sdk/selection_report.h"
#include "sdk/synthetic_model.h"

namespace ic {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<const Model> Synthetic(Architecture arch, int layers = 3, int hidden = 64) {
  SyntheticModelOptions o;
  o.arch = arch;
  o.num_layers = layers;
  o.hidden_size = hidden;
  o.vocab_size = 128;
  o.index_topk = 8;
  o.index_n_heads = 2;
  o.index_head_dim = 32;
  auto m = BuildSyntheticModel(o);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

std::vector<std::vector<int32_t>> Windows(int count, int len, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, 127);
  std::vector<std::vector<int32_t>> w(count, std::vector<int32_t>(len));
  for (auto& v : w) {
    for (auto& t : v) t = d(rng);
  }
  return w;
}

// Head-averaged causal attention of a Llama layer from its weights, in double: RMSNorm, q/k
// projections, NeoX RoPE, softmax over keys 0..t (over `allowed[t]` when given).
std::vector<double> ReferenceAttention(const Model& m, int layer, const std::vector<float>& hidden, int T,
                                       const std::vector<std::vector<int>>* allowed = nullptr) {
  const ModelConfig& c = m.config;
  const LayerWeights& L = m.weights.layers[layer];
  const int H = c.hidden_size, NH = c.num_attention_heads, NKV = c.num_key_value_heads, D = c.head_dim;
  std::vector<double> x(static_cast<size_t>(T) * H);
  for (int t = 0; t < T; ++t) {
    double ss = 0;
    for (int i = 0; i < H; ++i) ss += double(hidden[t * H + i]) * hidden[t * H + i];
    const double r = 1.0 / std::sqrt(ss / H + c.rms_norm_eps);
    for (int i = 0; i < H; ++i) x[t * H + i] = hidden[t * H + i] * r * L.input_norm.data[i];
  }
  auto project = [&](const HostTensor& w, int rows) {
    std::vector<double> y(static_cast<size_t>(T) * rows, 0.0);
    for (int t = 0; t < T; ++t) {
      for (int o = 0; o < rows; ++o) {
        double s = 0;
        for (int i = 0; i < H; ++i) s += x[t * H + i] * w.data[static_cast<size_t>(o) * H + i];
        y[static_cast<size_t>(t) * rows + o] = s;
      }
    }
    return y;
  };
  std::vector<double> q = project(L.q_proj, NH * D), k = project(L.k_proj, NKV * D);
  const RopeTables rope = ComputeRope(c.rope, D, c.max_position_embeddings);
  auto rotate = [&](std::vector<double>& v, int heads) {
    for (int t = 0; t < T; ++t) {
      for (int h = 0; h < heads; ++h) {
        double* p = &v[(static_cast<size_t>(t) * heads + h) * D];
        for (int i = 0; i < D / 2; ++i) {
          const double a = static_cast<float>(t) * rope.inv_freq[i];
          const double cs = std::cos(a) * rope.attention_scaling, sn = std::sin(a) * rope.attention_scaling;
          const double x0 = p[i], x1 = p[i + D / 2];
          p[i] = x0 * cs - x1 * sn;
          p[i + D / 2] = x1 * cs + x0 * sn;
        }
      }
    }
  };
  rotate(q, NH);
  rotate(k, NKV);
  std::vector<double> out(static_cast<size_t>(T) * T, 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int t = 0; t < T; ++t) {
    std::vector<int> keys;
    if (allowed != nullptr) {
      keys = (*allowed)[t];
    } else {
      for (int s = 0; s <= t; ++s) keys.push_back(s);
    }
    for (int h = 0; h < NH; ++h) {
      const int g = h / (NH / NKV);
      std::vector<double> logit(keys.size());
      double mx = -1e300;
      for (size_t i = 0; i < keys.size(); ++i) {
        double s = 0;
        for (int d = 0; d < D; ++d) s += q[(static_cast<size_t>(t) * NH + h) * D + d] * k[(static_cast<size_t>(keys[i]) * NKV + g) * D + d];
        logit[i] = s * scale;
        mx = std::max(mx, logit[i]);
      }
      double z = 0;
      for (double& l : logit) z += (l = std::exp(l - mx));
      for (size_t i = 0; i < keys.size(); ++i) out[static_cast<size_t>(t) * T + keys[i]] += logit[i] / z / NH;
    }
  }
  return out;
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

TEST(DistillLoopTest, DenseAttentionCaptureMatchesReference) {
  auto model = Synthetic(Architecture::kLlama);
  auto ctx = Context::Create(model, {.max_tokens = 128});
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  auto seq = (*ctx)->AddSequence();
  ASSERT_TRUE(seq.ok());
  const auto w = Windows(1, 37, 5)[0];
  Segment seg{.seq_id = *seq, .tokens = w};
  std::map<int, std::vector<float>> attention, hidden;
  std::map<int, IndexerInputs> inputs;
  ForwardOutputs out;
  out.attention_by_layer = &attention;
  out.indexer_inputs_by_layer = &inputs;
  out.hidden_by_layer = &hidden;
  ASSERT_TRUE((*ctx)->Forward(std::span<const Segment>(&seg, 1), out).ok());
  const int T = 37;
  ASSERT_EQ(attention.size(), 3u);
  for (int l = 0; l < 3; ++l) {
    ASSERT_EQ(attention[l].size(), static_cast<size_t>(T * T));
    const std::vector<double> ref = ReferenceAttention(*model, l, hidden[l], T);
    EXPECT_LT(MaxAbsDiff(attention[l], ref), 2e-5) << "layer " << l;
    EXPECT_TRUE(inputs[l].x_q.empty());
    ASSERT_EQ(inputs[l].x.size(), static_cast<size_t>(T * model->config.hidden_size));
  }
  // Row 0 attends only to itself; the upper triangle is exactly zero.
  EXPECT_FLOAT_EQ(attention[1][0], 1.0f);
  for (int t = 0; t < T; ++t) {
    for (int s = t + 1; s < T; ++s) ASSERT_EQ(attention[2][t * T + s], 0.0f);
  }
}

TEST(DistillLoopTest, SparseAttentionCaptureIsOverTheSelectedKeys) {
  auto model = Synthetic(Architecture::kLlamaDsa);
  auto ctx = Context::Create(model, {.max_tokens = 128});
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  auto seq = (*ctx)->AddSequence();
  const auto w = Windows(1, 30, 9)[0];
  Segment seg{.seq_id = *seq, .tokens = w};
  std::map<int, std::vector<float>> attention, hidden;
  std::map<int, std::vector<int32_t>> topk;
  ForwardOutputs out;
  out.attention_by_layer = &attention;
  out.hidden_by_layer = &hidden;
  out.topk_by_layer = &topk;
  ASSERT_TRUE((*ctx)->Forward(std::span<const Segment>(&seg, 1), out).ok());
  const int T = 30, K = model->config.index_topk;
  for (int l = 0; l < 3; ++l) {
    std::vector<std::vector<int>> allowed(T);
    for (int t = 0; t < T; ++t) {
      for (int i = 0; i < K; ++i) {
        if (topk[l][t * K + i] >= 0) allowed[t].push_back(topk[l][t * K + i]);
      }
    }
    EXPECT_LT(MaxAbsDiff(attention[l], ReferenceAttention(*model, l, hidden[l], T, &allowed)), 2e-5) << "layer " << l;
  }
}

// MeasureSelection against recall and overlap computed from the weights (ReferenceAttention) and the pass's
// top-k sets; a Shared layer's set is its source's (overlap exactly 1).
TEST(DistillLoopTest, SelectionReportRecallAndOverlap) {
  auto model = Synthetic(Architecture::kLlamaDsa);
  const auto windows = Windows(1, 30, 13);
  auto report = MeasureSelection(model, windows, "FSF", kernels::DeviceKind::kCpu);
  ASSERT_TRUE(report.ok()) << report.status();
  const int T = 30, K = model->config.index_topk, L = 3;
  EXPECT_EQ(report->rows, T - K);

  auto ctx = Context::Create(model, {.max_tokens = 64, .plan = "FSF"});
  auto seq = (*ctx)->AddSequence();
  Segment seg{.seq_id = *seq, .tokens = windows[0]};
  std::map<int, std::vector<float>> hidden;
  std::map<int, std::vector<int32_t>> topk;
  ForwardOutputs out;
  out.hidden_by_layer = &hidden;
  out.topk_by_layer = &topk;
  ASSERT_TRUE((*ctx)->Forward(std::span<const Segment>(&seg, 1), out).ok());
  for (int i = 0; i < L; ++i) {
    const std::vector<double> ref = ReferenceAttention(*model, i, hidden[i], T);
    double recall = 0;
    for (int t = K; t < T; ++t) {
      for (int e = 0; e < K; ++e) recall += ref[t * T + topk[i][t * K + e]];
    }
    EXPECT_NEAR(report->recall[i], recall / (T - K), 1e-5) << "layer " << i;
    EXPECT_GT(report->recall[i], 0.0);
    EXPECT_LE(report->recall[i], 1.0 + 1e-6);
    for (int j = 0; j < L; ++j) {
      double overlap = 0;
      for (int t = K; t < T; ++t) {
        std::set<int> a(topk[i].begin() + t * K, topk[i].begin() + (t + 1) * K);
        int both = 0;
        for (int e = 0; e < K; ++e) both += a.count(topk[j][t * K + e]) > 0;
        overlap += static_cast<double>(both) / K;
      }
      EXPECT_NEAR(report->overlap[i * L + j], overlap / (T - K), 1e-12) << i << "," << j;
    }
  }
  EXPECT_EQ(report->overlap[1 * L + 0], 1.0);
  EXPECT_EQ(report->overlap[2 * L + 2], 1.0);
  EXPECT_LT(report->overlap[2 * L + 0], 1.0);  // layer 2 runs its own indexer

  EXPECT_THAT(std::string(MeasureSelection(Synthetic(Architecture::kLlama), windows, "", kernels::DeviceKind::kCpu)
                              .status()
                              .message()),
              HasSubstr("no indexer"));
  EXPECT_THAT(std::string(MeasureSelection(model, Windows(1, 8, 1), "", kernels::DeviceKind::kCpu).status().message()),
              HasSubstr("longer windows"));
}

TEST(DistillLoopTest, MultiLayerTargetIsTheAverageOfServedLayers) {
  auto model = Synthetic(Architecture::kLlama);
  auto plan = ParsePlan("FSS", 3);
  ASSERT_TRUE(plan.ok());
  auto st = InitIndexerTraining(model->config, {.n_heads = 2, .head_dim = 16, .topk = 8}, *plan, 3);
  ASSERT_TRUE(st.ok()) << st.status();
  const auto windows = Windows(1, 24, 11);
  auto losses = EvaluateIndexers(model, windows, *st);
  ASSERT_TRUE(losses.ok()) << losses.status();

  // Independent: capture, average the three layers' attention by hand, one IndexerDistillLoss call.
  auto ctx = Context::Create(model, {.max_tokens = 64});
  auto seq = (*ctx)->AddSequence();
  Segment seg{.seq_id = *seq, .tokens = windows[0]};
  std::map<int, std::vector<float>> attention;
  std::map<int, IndexerInputs> inputs;
  ForwardOutputs out;
  out.attention_by_layer = &attention;
  out.indexer_inputs_by_layer = &inputs;
  ASSERT_TRUE((*ctx)->Forward(std::span<const Segment>(&seg, 1), out).ok());
  IndexerBatch b;
  b.tokens = 24;
  b.x = inputs[0].x;
  b.x_q = inputs[0].x;
  for (int t = 0; t < 24; ++t) b.positions.push_back(t);
  b.p_dense.resize(24 * 24);
  for (size_t i = 0; i < b.p_dense.size(); ++i) b.p_dense[i] = (attention[0][i] + attention[1][i] + attention[2][i]) / 3;
  auto expected = IndexerDistillLoss(st->config, st->indexers[0], b, nullptr);
  ASSERT_TRUE(expected.ok()) << expected.status();
  EXPECT_NEAR((*losses)[0], *expected, 1e-6 * std::max(1.0, *expected));
  EXPECT_EQ((*losses)[1], 0.0);
  EXPECT_GT(*expected, 0.0);
}

// The synthetic model's attention over random tokens is mostly token-specific, so the assertion is on
// what must hold for any teacher: the optimiser fits the calibration windows (every layer's loss falls by
// at least 15%), and the mean held-out loss over layers falls too.
TEST(DistillLoopTest, TrainingLowersTheLoss) {
  auto model = Synthetic(Architecture::kLlama);
  auto plan = ParsePlan("FFF", 3);
  auto st = InitIndexerTraining(model->config, {.n_heads = 2, .head_dim = 16, .topk = 8}, *plan, 1);
  ASSERT_TRUE(st.ok());
  const auto train = Windows(40, 32, 21), held_out = Windows(4, 32, 99);
  auto train_before = EvaluateIndexers(model, train, *st);
  auto before = EvaluateIndexers(model, held_out, *st);
  ASSERT_TRUE(before.ok() && train_before.ok());
  DistillOptions o;
  o.steps = 120;
  o.learning_rate = 1e-2;
  o.warmup_steps = 5;
  int calls = 0;
  o.on_step = [&](const DistillProgress& p) {
    ++calls;
    EXPECT_EQ(p.step, calls);
    EXPECT_EQ(p.steps, 120);
    EXPECT_GT(p.loss, 0);
  };
  ASSERT_TRUE(TrainIndexers(model, train, o, &*st).ok());
  EXPECT_EQ(calls, 120);
  EXPECT_EQ(st->step, 120);
  auto after = EvaluateIndexers(model, held_out, *st);
  auto train_after = EvaluateIndexers(model, train, *st);
  ASSERT_TRUE(after.ok() && train_after.ok());
  double mean_before = 0, mean_after = 0;
  for (int l = 0; l < 3; ++l) {
    EXPECT_LT((*train_after)[l], 0.85 * (*train_before)[l]) << "layer " << l;
    mean_before += (*before)[l] / 3;
    mean_after += (*after)[l] / 3;
  }
  EXPECT_LT(mean_after, mean_before);
}

TEST(DistillLoopTest, ResumeFromCheckpointIsBitwiseIdentical) {
  auto model = Synthetic(Architecture::kLlama);
  auto plan = ParsePlan("FSF", 3);
  const IndexerShape shape{.n_heads = 2, .head_dim = 16, .topk = 8};
  const auto windows = Windows(3, 20, 7);
  const std::string dir = ::testing::TempDir() + "/distill_resume";
  std::filesystem::create_directories(dir);
  DistillOptions o;
  o.steps = 5;
  o.windows_per_step = 2;
  o.checkpoint_path = dir + "/ckpt.safetensors";
  o.checkpoint_every = 2;
  o.on_step = [&](const DistillProgress& p) {
    if (p.step == 2) std::filesystem::copy_file(o.checkpoint_path, dir + "/step2.safetensors",
                                                std::filesystem::copy_options::overwrite_existing);
  };
  auto a = InitIndexerTraining(model->config, shape, *plan, 4);
  ASSERT_TRUE(TrainIndexers(model, windows, o, &*a).ok());

  auto b = LoadIndexerCheckpoint(dir + "/step2.safetensors", model->config);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->step, 2);
  EXPECT_EQ(b->plan.ToString(), "FSF");
  DistillOptions o2 = o;
  o2.on_step = nullptr;
  o2.checkpoint_path.clear();
  ASSERT_TRUE(TrainIndexers(model, windows, o2, &*b).ok());
  for (int l : {0, 2}) {
    EXPECT_EQ(a->indexers[l].wq.data, b->indexers[l].wq.data);
    EXPECT_EQ(a->indexers[l].weights_proj.data, b->indexers[l].weights_proj.data);
    EXPECT_EQ(a->indexers[l].k_norm_bias.data, b->indexers[l].k_norm_bias.data);
    EXPECT_EQ(a->adam[l].v.wk, b->adam[l].v.wk);
  }
  // The final checkpoint equals the in-memory state.
  auto c = LoadIndexerCheckpoint(o.checkpoint_path, model->config);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->step, 5);
  EXPECT_EQ(c->indexers[2].wk.data, a->indexers[2].wk.data);
  EXPECT_EQ(c->adam[2].m.wq, a->adam[2].m.wq);
}

TEST(DistillLoopTest, WrittenDsaModelLoadsAndRuns) {
  auto model = Synthetic(Architecture::kLlama);
  const std::string dense_dir = ::testing::TempDir() + "/distill_dense";
  const std::string out_dir = ::testing::TempDir() + "/distill_dsa";
  ASSERT_TRUE(SaveModel(*model, dense_dir).ok());
  auto dense = LoadModel(dense_dir);
  ASSERT_TRUE(dense.ok());
  auto plan = ParsePlan("FSF", 3);
  auto st = InitIndexerTraining((*dense)->config, {.n_heads = 2, .head_dim = 16, .topk = 8}, *plan, 2);
  ASSERT_TRUE(st.ok());
  ASSERT_TRUE(WriteDsaModel(dense_dir, *st, out_dir, DType::kBF16).ok());
  auto dsa = LoadModel(out_dir);
  ASSERT_TRUE(dsa.ok()) << dsa.status();
  EXPECT_EQ((*dsa)->config.arch, Architecture::kLlamaDsa);
  EXPECT_EQ((*dsa)->plan.ToString(), "FSF");
  EXPECT_EQ((*dsa)->config.index_topk, 8);
  EXPECT_FALSE((*dsa)->weights.layers[1].indexer.any_present);
  const auto& loaded = (*dsa)->weights.layers[2].indexer.wq.data;
  const auto& trained = st->indexers[2].wq.data;
  ASSERT_EQ(loaded.size(), trained.size());
  for (size_t i = 0; i < loaded.size(); ++i) ASSERT_NEAR(loaded[i], trained[i], std::abs(trained[i]) / 128 + 1e-30);
  EXPECT_EQ((*dsa)->weights.layers[0].q_proj.data, (*dense)->weights.layers[0].q_proj.data);
  auto ctx = Context::Create(*dsa, {.max_tokens = 64});
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  auto loss = (*ctx)->EvalLoss(Windows(1, 40, 3)[0]);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_TRUE(std::isfinite(loss->mean_loss));
  // Writing into the dense model's own directory is refused.
  EXPECT_THAT(std::string(WriteDsaModel(dense_dir, *st, dense_dir, DType::kBF16).message()), HasSubstr("must differ"));
}

TEST(DistillLoopTest, BadInputGetsClearErrors) {
  auto llama = Synthetic(Architecture::kLlama);
  auto dsa = Synthetic(Architecture::kLlamaDsa);
  auto plan = ParsePlan("FFF", 3);
  EXPECT_THAT(std::string(InitIndexerTraining(dsa->config, {}, *plan, 0).status().message()), HasSubstr("dense Llama"));
  EXPECT_THAT(std::string(InitIndexerTraining(llama->config, {.head_dim = 15}, *plan, 0).status().message()),
              HasSubstr("index_head_dim"));
  auto st = InitIndexerTraining(llama->config, {.n_heads = 2, .head_dim = 16, .topk = 8}, *plan, 0);
  ASSERT_TRUE(st.ok());
  DistillOptions o;
  o.steps = 1;
  EXPECT_THAT(std::string(TrainIndexers(llama, {}, o, &*st).message()), HasSubstr("calibration set is empty"));
  std::vector<std::vector<int32_t>> bad = {{1, 2, 500}};
  EXPECT_THAT(std::string(TrainIndexers(llama, bad, o, &*st).message()), HasSubstr("outside the vocabulary"));
  bad = {{1}};
  EXPECT_THAT(std::string(TrainIndexers(llama, bad, o, &*st).message()), HasSubstr("at least 2"));
  EXPECT_THAT(std::string(TrainIndexers(dsa, Windows(1, 8, 1), o, &*st).message()), HasSubstr("dense checkpoint"));
  auto other = Synthetic(Architecture::kLlama, 3, 128);
  EXPECT_THAT(std::string(TrainIndexers(other, Windows(1, 8, 1), o, &*st).message()), HasSubstr("another model"));
  o.learning_rate = -1;
  EXPECT_THAT(std::string(TrainIndexers(llama, Windows(1, 8, 1), o, &*st).message()), HasSubstr("learning rate"));

  const std::string dir = ::testing::TempDir();
  ASSERT_TRUE(WriteIndexerWeights(dir + "/ix.safetensors", *st, DType::kF32).ok());
  EXPECT_THAT(std::string(LoadIndexerCheckpoint(dir + "/ix.safetensors", llama->config).status().message()),
              HasSubstr("not a distillation checkpoint"));
  auto fsf = ParsePlan("FSF", 3);
  auto partial = InitIndexerTraining(llama->config, {.n_heads = 2, .head_dim = 16, .topk = 8}, *fsf, 0);
  ASSERT_TRUE(WriteIndexerWeights(dir + "/fsf.safetensors", *partial, DType::kF32).ok());
  EXPECT_THAT(std::string(LoadInitialIndexers(dir + "/fsf.safetensors", &*st).message()),
              HasSubstr("layer 1 is Full but the file lacks model.layers.1.self_attn.indexer.wq.weight"));
  auto wide = InitIndexerTraining(llama->config, {.n_heads = 4, .head_dim = 16, .topk = 8}, *plan, 0);
  ASSERT_TRUE(WriteIndexerWeights(dir + "/wide.safetensors", *wide, DType::kF32).ok());
  EXPECT_THAT(std::string(LoadInitialIndexers(dir + "/wide.safetensors", &*st).message()), HasSubstr("expected [32, 64]"));
  // Outputs that would collide are refused before any training.
  EXPECT_THAT(std::string(CheckDistillOutputs(dir + "/no_model", dir + "/out", dir + "/out/indexer.safetensors").message()),
              HasSubstr("has the name of a file the DSA model directory receives"));
  EXPECT_THAT(std::string(CheckDistillOutputs(dir + "/no_model", dir + "/out", dir + "/out").message()),
              HasSubstr("is the DSA model directory"));
  EXPECT_TRUE(CheckDistillOutputs(dir + "/no_model", dir + "/out", dir + "/out/distill-checkpoint.safetensors").ok());
  // A learning rate that blows the run up is an error, not a model of huge weights.
  DistillOptions wild;
  wild.steps = 20;
  wild.learning_rate = 1e30;
  wild.warmup_steps = 0;
  auto fresh = InitIndexerTraining(llama->config, {.n_heads = 2, .head_dim = 16, .topk = 8}, *plan, 0);
  EXPECT_THAT(std::string(TrainIndexers(llama, Windows(2, 16, 3), wild, &*fresh).message()), HasSubstr("diverged"));
  ASSERT_TRUE(SaveIndexerCheckpoint(dir + "/ck.safetensors", *st).ok());
  EXPECT_THAT(std::string(LoadIndexerCheckpoint(dir + "/ck.safetensors", other->config).status().message()),
              HasSubstr("another model"));
}

}  // namespace
}  // namespace ic
