// Indexer distillation loop (see distill_loop.h).
#include "sdk/distill_loop.h"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <new>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "sdk/config.h"
#include "sdk/engine.h"
#include "sdk/status.h"

namespace ic {
namespace {

constexpr const char* kCheckpointFormat = "indexcache-distill-checkpoint/1";

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

TensorToWrite Tensor(std::string name, DType dtype, std::vector<int64_t> shape, std::vector<float> data) {
  TensorToWrite t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = std::move(data);
  return t;
}
TensorToWrite TensorF64(std::string name, std::vector<double> data) {
  TensorToWrite t;
  t.name = std::move(name);
  t.dtype = DType::kF64;
  t.shape = {static_cast<int64_t>(data.size())};
  t.data_f64 = std::move(data);
  return t;
}

std::string IndexerPrefix(int layer) { return LayerPrefix(layer) + "self_attn.indexer."; }

// (name suffix, tensor) of one indexer, in IndexerGrads order.
std::vector<std::pair<std::string, HostTensor*>> IndexerTensors(IndexerWeights& w) {
  return {{"wq.weight", &w.wq},
          {"wk.weight", &w.wk},
          {"k_norm.weight", &w.k_norm_weight},
          {"k_norm.bias", &w.k_norm_bias},
          {"weights_proj.weight", &w.weights_proj}};
}
std::vector<std::vector<double>*> GradVectors(IndexerGrads& g) {
  return {&g.wq, &g.wk, &g.k_norm_weight, &g.k_norm_bias, &g.weights_proj};
}

std::vector<int64_t> ExpectedShape(const ModelConfig& c, const std::string& suffix) {
  const int64_t hidden = c.hidden_size, H = c.index_n_heads, d = c.index_head_dim;
  if (suffix == "wq.weight") return {H * d, hidden};
  if (suffix == "wk.weight") return {d, hidden};
  if (suffix == "weights_proj.weight") return {H, hidden};
  return {d};
}

// Window of the i-th slot of `step`: a seeded Fisher–Yates shuffle per epoch (explicit, so the order is
// the same on every platform and standard library).
size_t WindowFor(int64_t step, int slot, int per_step, size_t windows, uint64_t seed) {
  const uint64_t flat = static_cast<uint64_t>(step) * per_step + slot;
  const uint64_t epoch = flat / windows;
  std::vector<size_t> order(windows);
  std::iota(order.begin(), order.end(), size_t{0});
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + epoch + 1);
  for (size_t i = windows - 1; i > 0; --i) std::swap(order[i], order[rng() % (i + 1)]);
  return order[flat % windows];
}

// Layers served by Full layer l: l .. (next Full layer − 1).
int ServedUntil(const Plan& plan, int l) {
  int end = l + 1;
  while (end < plan.num_layers() && !plan.IsFull(end)) ++end;
  return end;
}

// Every value finite (and, for Adam's second moments, >= 0): corrupt or diverged state is an error, not
// weights that silently turn the model's output into NaN.
template <typename T>
absl::Status CheckFiniteValues(const std::vector<T>& v, const std::string& what, bool non_negative = false) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(static_cast<double>(v[i])) || (non_negative && v[i] < 0)) {
      return InvalidArgument(what, "[", i, "] is ", static_cast<double>(v[i]),
                             non_negative ? "; expected a finite value >= 0" : "; expected a finite value");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckWindows(const ModelConfig& c, std::span<const std::vector<int32_t>> windows) {
  if (windows.empty()) return InvalidArgument("distillation: the calibration set is empty (no windows)");
  for (size_t w = 0; w < windows.size(); ++w) {
    if (windows[w].size() < 2) {
      return InvalidArgument("distillation: calibration window ", w, " has ", windows[w].size(),
                             " token(s); at least 2 are needed");
    }
    if (windows[w].size() > static_cast<size_t>(c.max_position_embeddings)) {
      return InvalidArgument("distillation: calibration window ", w, " has ", windows[w].size(),
                             " tokens, more than max_position_embeddings = ", c.max_position_embeddings);
    }
    for (size_t i = 0; i < windows[w].size(); ++i) {
      if (windows[w][i] < 0 || windows[w][i] >= c.vocab_size) {
        return InvalidArgument("distillation: token id ", windows[w][i], " (window ", w, ", index ", i,
                               ") is outside the vocabulary [0, ", c.vocab_size, ")");
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckCompatible(const ModelConfig& dense, const IndexerTrainingState& s) {
  if (dense.has_indexer) {
    return InvalidArgument("distillation needs the dense checkpoint (no indexers) as its teacher; this model has "
                           "indexers — pass its dense base model");
  }
  const ModelConfig& c = s.config;
  if (c.hidden_size != dense.hidden_size || c.num_hidden_layers != dense.num_hidden_layers ||
      c.vocab_size != dense.vocab_size || c.num_attention_heads != dense.num_attention_heads) {
    return InvalidArgument("distillation state is for another model (hidden ", c.hidden_size, ", ",
                           c.num_hidden_layers, " layers, vocab ", c.vocab_size, "); the dense model has hidden ",
                           dense.hidden_size, ", ", dense.num_hidden_layers, " layers, vocab ", dense.vocab_size);
  }
  if (s.plan.num_layers() != c.num_hidden_layers || static_cast<int>(s.indexers.size()) != c.num_hidden_layers ||
      static_cast<int>(s.adam.size()) != c.num_hidden_layers) {
    return InvalidArgument("distillation state: plan / indexers / optimizer cover ", s.plan.num_layers(), " / ",
                           s.indexers.size(), " / ", s.adam.size(), " layers; the model has ", c.num_hidden_layers);
  }
  return absl::OkStatus();
}

// One window through the frozen dense model: per layer, the indexer input and the dense attention.
struct Capture {
  std::map<int, IndexerInputs> inputs;
  std::map<int, std::vector<float>> attention;
};

absl::Status CaptureWindow(Context& ctx, std::span<const int32_t> tokens, Capture* cap) {
  IC_ASSIGN_OR_RETURN(int seq, ctx.AddSequence());
  Segment seg{.seq_id = seq, .tokens = tokens};
  ForwardOutputs out;
  out.attention_by_layer = &cap->attention;
  out.indexer_inputs_by_layer = &cap->inputs;
  absl::Status s = ctx.Forward(std::span<const Segment>(&seg, 1), out);
  IC_RETURN_IF_ERROR(ctx.RemoveSequence(seq));
  return s;
}

// OpenBLAS's own threads would oversubscribe the cores while Full layers already run in parallel.
class SingleThreadedBlas {
 public:
  explicit SingleThreadedBlas(bool active) : saved_(active ? openblas_get_num_threads() : 0) {
    if (saved_ > 0) openblas_set_num_threads(1);
  }
  ~SingleThreadedBlas() {
    if (saved_ > 0) openblas_set_num_threads(saved_);
  }

 private:
  int saved_;
};

// Loss (and gradients when `grads`) of every Full layer on one captured window, layers spread over threads;
// with a `backend` (the CUDA teacher's, idle meanwhile), each layer's score part through
// Backend::IndexerDistill, one layer at a time on the GPU.
absl::Status WindowLosses(const IndexerTrainingState& st, const Capture& cap, int T, int threads,
                          kernels::Backend* backend, std::vector<double>* loss, std::vector<IndexerGrads>* grads) {
  const ModelConfig& c = st.config;
  std::vector<int> full;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    if (st.plan.IsFull(l)) full.push_back(l);
  }
  std::vector<int32_t> positions(T);
  std::iota(positions.begin(), positions.end(), 0);
  std::vector<absl::Status> status(c.num_hidden_layers);
  std::atomic<size_t> next{0};
  auto work = [&]() {
    for (size_t i = next++; i < full.size(); i = next++) {
      const int l = full[i];
      // No exception may leave a thread (std::terminate): bad_alloc becomes this layer's error.
      try {
        const int end = ServedUntil(st.plan, l);
        IndexerBatch b;
        b.tokens = T;
        const IndexerInputs& in = cap.inputs.at(l);
        b.x = in.x;
        b.x_q = in.x_q.empty() ? in.x : in.x_q;
        b.positions = positions;
        b.p_dense.assign(static_cast<size_t>(T) * T, 0.0f);
        const float inv = 1.0f / static_cast<float>(end - l);
        for (int j = l; j < end; ++j) {
          const std::vector<float>& a = cap.attention.at(j);
          for (size_t k = 0; k < b.p_dense.size(); ++k) b.p_dense[k] += inv * a[k];
        }
        absl::StatusOr<double> v =
            IndexerDistillLoss(c, st.indexers[l], b, grads != nullptr ? &(*grads)[l] : nullptr, backend);
        if (!v.ok()) {
          status[l] = absl::Status(v.status().code(), absl::StrCat("layer ", l, ": ", v.status().message()));
        } else {
          (*loss)[l] = *v;
        }
      } catch (const std::bad_alloc&) {
        status[l] = absl::ResourceExhaustedError(absl::StrCat(
            "layer ", l, ": out of host memory for the indexer's loss and gradients (", T, " tokens, ",
            c.index_n_heads, " heads x ", c.index_head_dim, ")"));
      } catch (const std::exception& e) {
        status[l] = absl::InternalError(absl::StrCat("layer ", l, ": ", e.what()));
      }
    }
  };
  const int n = std::max(1, std::min<int>(threads, static_cast<int>(full.size())));
  SingleThreadedBlas blas(n > 1);
  std::vector<std::thread> pool;
  for (int i = 1; i < n; ++i) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  for (const absl::Status& s : status) IC_RETURN_IF_ERROR(s);
  return absl::OkStatus();
}

// Where the loss's score part runs: the teacher's GPU, or nullptr for the host's double path (sdk/distill.h).
kernels::Backend* GradientBackend(Context& teacher) {
  return teacher.backend().kind() == kernels::DeviceKind::kCuda ? &teacher.backend() : nullptr;
}

int ResolveThreads(int threads) {
  if (threads > 0) return threads;
  return std::max(1u, std::thread::hardware_concurrency());
}

absl::StatusOr<std::unique_ptr<Context>> TeacherContext(std::shared_ptr<const Model> dense,
                                                        std::span<const std::vector<int32_t>> windows,
                                                        kernels::DeviceKind device) {
  size_t longest = 0;
  for (const auto& w : windows) longest = std::max(longest, w.size());
  ContextOptions o;
  o.device = device;
  o.max_tokens = static_cast<int64_t>(longest);
  o.prefill_chunk = static_cast<int>(longest);
  o.record_metrics = false;
  return Context::Create(std::move(dense), o);
}

}  // namespace

absl::StatusOr<ModelConfig> DsaConfigFor(const ModelConfig& dense, const IndexerShape& shape) {
  if (dense.has_indexer || dense.mla || (dense.arch != Architecture::kLlama && dense.arch != Architecture::kLlamaDsa)) {
    return InvalidArgument("indexers can be added to a dense Llama model (LlamaForCausalLM) only; this is ",
                           std::string(ArchitectureName(dense.arch)), dense.has_indexer ? " with indexers" : "");
  }
  const int rope = shape.rope_head_dim == 0 ? shape.head_dim / 2 : shape.rope_head_dim;
  if (shape.n_heads < 1 || shape.n_heads > 1024) {
    return InvalidArgument("index_n_heads must be in [1, 1024], got ", shape.n_heads);
  }
  if (shape.head_dim < 2 || shape.head_dim > 4096 || shape.head_dim % 2 != 0) {
    return InvalidArgument("index_head_dim must be even and in [2, 4096], got ", shape.head_dim);
  }
  if (rope < 0 || rope > shape.head_dim || rope % 2 != 0) {
    return InvalidArgument("index_rope_head_dim must be even and in [0, index_head_dim = ", shape.head_dim, "], got ",
                           rope);
  }
  if (shape.topk < 1 || shape.topk > 65536) return InvalidArgument("index_topk must be in [1, 65536], got ", shape.topk);
  ModelConfig c = dense;
  c.arch = Architecture::kLlamaDsa;
  c.model_type = "llama_dsa";
  c.has_indexer = true;
  c.index_n_heads = shape.n_heads;
  c.index_head_dim = shape.head_dim;
  c.index_topk = shape.topk;
  c.index_rope_head_dim = rope;
  c.indexer_rope_interleave = false;
  c.indexer_types.reset();
  c.index_topk_pattern.reset();
  c.index_topk_freq.reset();
  c.index_skip_topk_offset.reset();
  return c;
}

absl::StatusOr<IndexerTrainingState> InitIndexerTraining(const ModelConfig& dense, const IndexerShape& shape,
                                                         const Plan& plan, uint64_t seed) {
  IndexerTrainingState st;
  IC_ASSIGN_OR_RETURN(st.config, DsaConfigFor(dense, shape));
  if (plan.num_layers() != dense.num_hidden_layers) {
    return InvalidArgument("plan ", plan.ToString(), " has ", plan.num_layers(), " layers; the model has ",
                           dense.num_hidden_layers);
  }
  st.plan = plan;
  st.seed = seed;
  st.indexers.resize(dense.num_hidden_layers);
  st.adam.resize(dense.num_hidden_layers);
  const float sd = 1.0f / std::sqrt(static_cast<float>(dense.hidden_size));
  for (int l = 0; l < dense.num_hidden_layers; ++l) {
    if (!plan.IsFull(l)) continue;
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + 0x5151 + static_cast<uint64_t>(l));
    std::normal_distribution<float> normal(0.0f, sd);
    IndexerWeights& w = st.indexers[l];
    for (auto& [suffix, t] : IndexerTensors(w)) {
      t->shape = ExpectedShape(st.config, suffix);
      int64_t n = 1;
      for (int64_t d : t->shape) n *= d;
      if (suffix == "k_norm.weight") {
        t->data.assign(n, 1.0f);
      } else if (suffix == "k_norm.bias") {
        t->data.assign(n, 0.0f);
      } else {
        t->data.resize(n);
        for (float& v : t->data) v = normal(rng);
      }
    }
    w.any_present = true;
  }
  return st;
}

absl::Status LoadInitialIndexers(const std::string& path, IndexerTrainingState* state) {
  IC_ASSIGN_OR_RETURN(std::unique_ptr<TensorStore> store, TensorStore::Open(path));
  for (int l = 0; l < state->config.num_hidden_layers; ++l) {
    if (!state->plan.IsFull(l)) continue;
    for (auto& [suffix, t] : IndexerTensors(state->indexers[l])) {
      const std::string name = IndexerPrefix(l) + suffix;
      const TensorInfo* info = store->Find(name);
      if (info == nullptr) {
        return InvalidArgument(path, ": layer ", l, " is Full but the file lacks ", name);
      }
      const std::vector<int64_t> want = ExpectedShape(state->config, suffix);
      if (info->shape != want) {
        return InvalidArgument(path, ": ", name, " has shape [", absl::StrJoin(info->shape, ", "), "]; expected [",
                               absl::StrJoin(want, ", "), "] (index_n_heads ", state->config.index_n_heads,
                               ", index_head_dim ", state->config.index_head_dim, ")");
      }
      IC_ASSIGN_OR_RETURN(t->data, store->ReadF32(*info));
      IC_RETURN_IF_ERROR(CheckFiniteValues(t->data, absl::StrCat(path, ": ", name)));
      t->shape = want;
    }
    state->adam[l] = AdamState{};
  }
  state->step = 0;
  return absl::OkStatus();
}

absl::Status TrainIndexers(std::shared_ptr<const Model> dense, std::span<const std::vector<int32_t>> windows,
                           const DistillOptions& o, IndexerTrainingState* st) {
  if (dense == nullptr || st == nullptr) return InvalidArgument("TrainIndexers: null model or state");
  IC_RETURN_IF_ERROR(CheckCompatible(dense->config, *st));
  IC_RETURN_IF_ERROR(CheckWindows(dense->config, windows));
  if (o.steps < 0) return InvalidArgument("distillation steps must be >= 0, got ", o.steps);
  if (o.windows_per_step < 1) return InvalidArgument("windows per step must be >= 1, got ", o.windows_per_step);
  if (!(o.learning_rate > 0) || !std::isfinite(o.learning_rate)) {
    return InvalidArgument("learning rate must be positive and finite, got ", o.learning_rate);
  }
  if (o.checkpoint_every < 0) return InvalidArgument("checkpoint_every must be >= 0, got ", o.checkpoint_every);
  if (o.warmup_steps < 0) return InvalidArgument("warm-up steps must be >= 0, got ", o.warmup_steps);
  if (o.windows_per_step > 4096) return InvalidArgument("windows per step must be <= 4096, got ", o.windows_per_step);
  if (o.threads < 0 || o.threads > 1024) return InvalidArgument("threads must be in [0, 1024], got ", o.threads);
  if (st->step > o.steps) {
    return InvalidArgument("the state has taken ", st->step, " steps, more than the run's total ", o.steps);
  }
  IC_ASSIGN_OR_RETURN(std::unique_ptr<Context> ctx, TeacherContext(dense, windows, o.device));
  const int N = st->config.num_hidden_layers;
  const int threads = ResolveThreads(o.threads);
  const double t0 = Now();
  const int64_t first = st->step;
  double teacher_seconds = 0, gradient_seconds = 0;
  double first_loss = -1;  // this run's first step: the yardstick for divergence
  while (st->step < o.steps) {
    std::vector<IndexerGrads> total(N);
    std::vector<double> step_loss(N, 0.0);
    for (int i = 0; i < o.windows_per_step; ++i) {
      const std::vector<int32_t>& w = windows[WindowFor(st->step, i, o.windows_per_step, windows.size(), st->seed)];
      Capture cap;
      const double c0 = Now();
      IC_RETURN_IF_ERROR(CaptureWindow(*ctx, w, &cap));
      const double c1 = Now();
      std::vector<double> loss(N, 0.0);
      std::vector<IndexerGrads> grads(N);
      IC_RETURN_IF_ERROR(WindowLosses(*st, cap, static_cast<int>(w.size()), threads, GradientBackend(*ctx), &loss, &grads));
      teacher_seconds += c1 - c0;
      gradient_seconds += Now() - c1;
      for (int l = 0; l < N; ++l) {
        if (!st->plan.IsFull(l)) continue;
        total[l].Add(grads[l], 1.0 / o.windows_per_step);
        step_loss[l] += loss[l] / o.windows_per_step;
      }
    }
    const double lr = LearningRate(st->step, o.steps, o.learning_rate, o.warmup_steps);
    double mean_loss = 0;
    for (int l = 0; l < N; ++l) mean_loss += step_loss[l];
    mean_loss /= std::max(1, st->plan.NumFull());
    if (first_loss < 0) first_loss = mean_loss;
    // A KL that is not finite, or that grew a thousandfold over the run's first step (which is at most a
    // few nats for a fresh or warmed-up indexer), is a run blowing up, not training.
    if (!std::isfinite(mean_loss) || mean_loss > 1e3 * std::max(1.0, first_loss)) {
      return InvalidArgument("distillation diverged at step ", st->step + 1, ": the loss is ", mean_loss,
                             " (first step ", first_loss, ", learning rate ", lr,
                             "); lower the learning rate or resume an earlier checkpoint");
    }
    for (int l = 0; l < N; ++l) {
      if (!st->plan.IsFull(l)) continue;
      IC_RETURN_IF_ERROR(AdamStep(total[l], lr, &st->adam[l], &st->indexers[l]));
      for (auto& [suffix, t] : IndexerTensors(st->indexers[l])) {
        if (absl::Status f = CheckFiniteValues(t->data, absl::StrCat("layer ", l, " indexer ", suffix)); !f.ok()) {
          return InvalidArgument("distillation diverged at step ", st->step + 1, " (learning rate ", lr, "): ",
                                 f.message(), "; lower the learning rate");
        }
      }
    }
    ++st->step;
    if (!o.checkpoint_path.empty() &&
        (st->step == o.steps || (o.checkpoint_every > 0 && st->step % o.checkpoint_every == 0))) {
      IC_RETURN_IF_ERROR(SaveIndexerCheckpoint(o.checkpoint_path, *st));
    }
    if (o.on_step) {
      DistillProgress p;
      p.step = st->step;
      p.steps = o.steps;
      p.layer_loss = step_loss;
      p.learning_rate = lr;
      const int full = st->plan.NumFull();
      for (double v : step_loss) p.loss += v / full;
      p.elapsed_seconds = Now() - t0;
      p.teacher_seconds = teacher_seconds;
      p.gradient_seconds = gradient_seconds;
      p.remaining_seconds = p.elapsed_seconds / static_cast<double>(st->step - first) * (o.steps - st->step);
      o.on_step(p);
    }
    if (o.should_stop && st->step < o.steps && o.should_stop()) {
      if (!o.checkpoint_path.empty()) IC_RETURN_IF_ERROR(SaveIndexerCheckpoint(o.checkpoint_path, *st));
      return absl::CancelledError(absl::StrCat("distillation stopped by the caller after step ", st->step, " of ",
                                               o.steps, o.checkpoint_path.empty() ? "" : "; checkpoint written to ",
                                               o.checkpoint_path));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> EvaluateIndexers(std::shared_ptr<const Model> dense,
                                                     std::span<const std::vector<int32_t>> windows,
                                                     const IndexerTrainingState& st, kernels::DeviceKind device,
                                                     int threads) {
  if (dense == nullptr) return InvalidArgument("EvaluateIndexers: null model");
  IC_RETURN_IF_ERROR(CheckCompatible(dense->config, st));
  IC_RETURN_IF_ERROR(CheckWindows(dense->config, windows));
  IC_ASSIGN_OR_RETURN(std::unique_ptr<Context> ctx, TeacherContext(dense, windows, device));
  const int N = st.config.num_hidden_layers;
  std::vector<double> mean(N, 0.0);
  for (const std::vector<int32_t>& w : windows) {
    Capture cap;
    IC_RETURN_IF_ERROR(CaptureWindow(*ctx, w, &cap));
    std::vector<double> loss(N, 0.0);
    IC_RETURN_IF_ERROR(
        WindowLosses(st, cap, static_cast<int>(w.size()), ResolveThreads(threads), GradientBackend(*ctx), &loss, nullptr));
    for (int l = 0; l < N; ++l) mean[l] += loss[l] / static_cast<double>(windows.size());
  }
  return mean;
}

absl::Status SaveIndexerCheckpoint(const std::string& path, const IndexerTrainingState& st) {
  std::vector<TensorToWrite> out;
  for (int l = 0; l < st.config.num_hidden_layers; ++l) {
    if (!st.plan.IsFull(l)) continue;
    IndexerWeights w = st.indexers[l];
    AdamState adam = st.adam[l];
    auto tensors = IndexerTensors(w);
    auto m = GradVectors(adam.m);
    auto v = GradVectors(adam.v);
    for (size_t i = 0; i < tensors.size(); ++i) {
      const std::string name = IndexerPrefix(l) + tensors[i].first;
      out.push_back(Tensor(name, DType::kF32, tensors[i].second->shape, tensors[i].second->data));
      if (adam.step > 0) {
        out.push_back(TensorF64("optimizer.m." + name, *m[i]));
        out.push_back(TensorF64("optimizer.v." + name, *v[i]));
      }
    }
    out.push_back(TensorF64("optimizer.step." + IndexerPrefix(l), {static_cast<double>(adam.step)}));
  }
  ModelConfig c = st.config;
  const std::map<std::string, std::string> meta = {{"format", kCheckpointFormat},
                                                   {"step", absl::StrCat(st.step)},
                                                   {"seed", absl::StrCat(st.seed)},
                                                   {"plan", st.plan.ToString()},
                                                   {"config", ModelConfigToJson(c)}};
  const std::string tmp = path + ".tmp";
  std::error_code dir_ec;
  const std::filesystem::path parent = std::filesystem::absolute(path, dir_ec).parent_path();
  std::filesystem::create_directories(parent, dir_ec);
  if (std::filesystem::exists(path, dir_ec) && !std::filesystem::is_regular_file(path, dir_ec)) {
    return InvalidArgument("the checkpoint ", path, " exists and is not a regular file");
  }
  IC_RETURN_IF_ERROR(WriteSafetensors(tmp, out, meta));
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::DataLossError(absl::StrCat(path, ": cannot replace the checkpoint: ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<IndexerTrainingState> LoadIndexerCheckpoint(const std::string& path, const ModelConfig& dense) {
  IC_ASSIGN_OR_RETURN(std::unique_ptr<TensorStore> store, TensorStore::Open(path));
  const auto& meta = store->metadata();
  auto get = [&](const std::string& key) -> absl::StatusOr<std::string> {
    auto it = meta.find(key);
    if (it == meta.end()) return InvalidArgument(path, ": not a distillation checkpoint (metadata lacks \"", key, "\")");
    return it->second;
  };
  IC_ASSIGN_OR_RETURN(std::string format, get("format"));
  if (format != kCheckpointFormat) {
    return InvalidArgument(path, ": checkpoint format \"", format, "\"; expected \"", kCheckpointFormat, "\"");
  }
  IndexerTrainingState st;
  IC_ASSIGN_OR_RETURN(std::string config_text, get("config"));
  absl::StatusOr<ModelConfig> config = ParseModelConfig(config_text);
  if (!config.ok()) return InvalidArgument(path, ": checkpoint config: ", config.status().message());
  st.config = *config;
  IC_ASSIGN_OR_RETURN(std::string step, get("step"));
  IC_ASSIGN_OR_RETURN(std::string seed, get("seed"));
  if (!absl::SimpleAtoi(step, &st.step) || st.step < 0 || !absl::SimpleAtoi(seed, &st.seed)) {
    return InvalidArgument(path, ": checkpoint step \"", step, "\" or seed \"", seed, "\" is not a number");
  }
  IC_ASSIGN_OR_RETURN(std::string plan, get("plan"));
  if (st.config.num_hidden_layers != dense.num_hidden_layers) {
    return InvalidArgument(path, ": the checkpoint's config has ", st.config.num_hidden_layers,
                           " layers; the dense model has ", dense.num_hidden_layers);
  }
  absl::StatusOr<Plan> parsed = ParsePlan(plan, st.config.num_hidden_layers);
  if (!parsed.ok()) return InvalidArgument(path, ": checkpoint plan: ", parsed.status().message());
  st.plan = *parsed;
  st.indexers.resize(st.config.num_hidden_layers);
  st.adam.resize(st.config.num_hidden_layers);
  IC_RETURN_IF_ERROR(CheckCompatible(dense, st));
  IC_ASSIGN_OR_RETURN(ModelConfig expected, DsaConfigFor(dense, {.n_heads = st.config.index_n_heads,
                                                                 .head_dim = st.config.index_head_dim,
                                                                 .topk = st.config.index_topk,
                                                                 .rope_head_dim = st.config.index_rope_head_dim}));
  if (!(expected == st.config)) {
    return InvalidArgument(path, ": the checkpoint's config differs from the dense model's with these indexers");
  }
  for (int l = 0; l < st.config.num_hidden_layers; ++l) {
    if (!st.plan.IsFull(l)) continue;
    IndexerWeights& w = st.indexers[l];
    AdamState& adam = st.adam[l];
    const TensorInfo* step_info = store->Find("optimizer.step." + IndexerPrefix(l));
    if (step_info == nullptr) return InvalidArgument(path, ": lacks optimizer.step.", IndexerPrefix(l));
    IC_ASSIGN_OR_RETURN(std::vector<double> adam_step, store->ReadF64(*step_info));
    if (adam_step.size() != 1 || !(adam_step[0] >= 0) || adam_step[0] > 9007199254740992.0 ||
        adam_step[0] != std::floor(adam_step[0])) {
      return InvalidArgument(path, ": optimizer step of layer ", l, " is ",
                             adam_step.empty() ? std::string("missing") : absl::StrCat(adam_step[0]),
                             "; expected an integer in [0, 2^53]");
    }
    adam.step = static_cast<int64_t>(adam_step[0]);
    if (adam.step != st.step) {
      return InvalidArgument(path, ": the optimizer of layer ", l, " has taken ", adam.step,
                             " steps but the checkpoint is at step ", st.step);
    }
    auto tensors = IndexerTensors(w);
    auto m = GradVectors(adam.m);
    auto v = GradVectors(adam.v);
    for (size_t i = 0; i < tensors.size(); ++i) {
      const std::string name = IndexerPrefix(l) + tensors[i].first;
      const TensorInfo* info = store->Find(name);
      const std::vector<int64_t> want = ExpectedShape(st.config, tensors[i].first);
      if (info == nullptr || info->shape != want) {
        return InvalidArgument(path, ": ", name, info == nullptr ? " is missing" : " has the wrong shape");
      }
      IC_ASSIGN_OR_RETURN(tensors[i].second->data, store->ReadF32(*info));
      IC_RETURN_IF_ERROR(CheckFiniteValues(tensors[i].second->data, absl::StrCat(path, ": ", name)));
      tensors[i].second->shape = want;
      if (adam.step == 0) continue;
      for (auto [prefix, dst] : {std::pair{"optimizer.m.", m[i]}, std::pair{"optimizer.v.", v[i]}}) {
        const TensorInfo* mi = store->Find(prefix + name);
        if (mi == nullptr || mi->numel() != static_cast<int64_t>(tensors[i].second->data.size())) {
          return InvalidArgument(path, ": ", prefix, name, mi == nullptr ? " is missing" : " has the wrong size");
        }
        if (mi->dtype != DType::kF64) {
          return InvalidArgument(path, ": ", prefix, name, " is ", std::string(DTypeName(mi->dtype)),
                                 "; optimizer moments are F64");
        }
        IC_ASSIGN_OR_RETURN(*dst, store->ReadF64(*mi));
        IC_RETURN_IF_ERROR(CheckFiniteValues(*dst, absl::StrCat(path, ": ", prefix, name),
                                             /*non_negative=*/std::string(prefix) == "optimizer.v."));
      }
    }
    w.any_present = true;
  }
  return st;
}

absl::Status WriteIndexerWeights(const std::string& path, const IndexerTrainingState& st, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return InvalidArgument("indexer weights are written as F32 or BF16, not ", std::string(DTypeName(dtype)));
  }
  std::vector<TensorToWrite> out;
  for (int l = 0; l < st.config.num_hidden_layers; ++l) {
    if (!st.plan.IsFull(l)) continue;
    IndexerWeights w = st.indexers[l];
    for (auto& [suffix, t] : IndexerTensors(w)) {
      IC_RETURN_IF_ERROR(CheckFiniteValues(t->data, IndexerPrefix(l) + suffix));
      out.push_back(Tensor(IndexerPrefix(l) + suffix, dtype, t->shape, t->data));
    }
  }
  return WriteSafetensors(path, out, {{"plan", st.plan.ToString()}, {"step", absl::StrCat(st.step)},
                                      {"producer", "indexcache distill"}});
}

absl::Status CheckDistillOutputs(const std::string& dense_dir, const std::string& out_dir,
                                 const std::string& checkpoint) {
  namespace fs = std::filesystem;
  // The directory that will hold `path` (a directory itself, or a file's parent) is, or can be created
  // under, a writable directory.
  auto writable_place = [](const std::string& path, const char* what, bool is_file) -> absl::Status {
    std::error_code ec;
    fs::path p = fs::absolute(path, ec);
    if (is_file) p = p.parent_path();
    while (!p.empty() && !fs::exists(p, ec)) p = p.parent_path();
    if (p.empty() || !fs::is_directory(p, ec) || access(p.c_str(), W_OK) != 0) {
      return InvalidArgument(what, " ", path, ": ", p.empty() ? std::string("no existing ancestor")
                                                               : p.string() + " is not a writable directory");
    }
    return absl::OkStatus();
  };
  std::error_code ec;
  if (out_dir.empty()) return InvalidArgument("the DSA model directory is empty");
  if (fs::exists(out_dir, ec)) {
    if (!fs::is_directory(out_dir, ec)) return InvalidArgument("the DSA model directory ", out_dir, " is not a directory");
    if (fs::equivalent(dense_dir, out_dir, ec)) {
      return InvalidArgument("the DSA model directory must differ from the dense model's (", dense_dir, ")");
    }
  }
  IC_RETURN_IF_ERROR(writable_place(out_dir, "the DSA model directory", /*is_file=*/false));
  if (!checkpoint.empty()) {
    if (fs::exists(checkpoint, ec) && !fs::is_regular_file(checkpoint, ec)) {
      return InvalidArgument("the checkpoint ", checkpoint, " exists and is not a regular file");
    }
    const fs::path abs_ckpt = fs::absolute(checkpoint, ec).lexically_normal();
    const fs::path parent = abs_ckpt.parent_path();
    if (fs::exists(parent, ec) && fs::equivalent(parent, dense_dir, ec)) {
      return InvalidArgument("the checkpoint ", checkpoint, " would be written into the dense model's directory");
    }
    const fs::path abs_out = fs::absolute(out_dir, ec).lexically_normal();
    if (abs_ckpt == abs_out || (fs::exists(checkpoint, ec) && fs::exists(out_dir, ec) &&
                                fs::equivalent(checkpoint, out_dir, ec))) {
      return InvalidArgument("the checkpoint path ", checkpoint, " is the DSA model directory");
    }
    const std::string name = abs_ckpt.filename().string();
    const bool output_name = name == "config.json" || name == "indexer.safetensors" ||
                             name == "model.safetensors.index.json" || name == "dense.safetensors" ||
                             name.rfind("dense-", 0) == 0 || name == "tokenizer.json" ||
                             name == "tokenizer_config.json" || name == "generation_config.json" ||
                             name == "special_tokens_map.json";
    if (output_name && (parent == abs_out || (fs::exists(parent, ec) && fs::exists(out_dir, ec) &&
                                              fs::equivalent(parent, out_dir, ec)))) {
      return InvalidArgument("the checkpoint ", checkpoint, " has the name of a file the DSA model directory ",
                             "receives; name it e.g. distill-checkpoint.safetensors");
    }
    IC_RETURN_IF_ERROR(writable_place(checkpoint, "the checkpoint", /*is_file=*/true));
  }
  return absl::OkStatus();
}

absl::Status WriteDsaModel(const std::string& dense_dir, const IndexerTrainingState& st, const std::string& out_dir,
                           DType dtype) {
  IC_RETURN_IF_ERROR(CheckDistillOutputs(dense_dir, out_dir));
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(out_dir, ec) && fs::equivalent(dense_dir, out_dir, ec)) {
    return InvalidArgument("the DSA model directory must differ from the dense model's (", dense_dir, ")");
  }
  fs::create_directories(out_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(out_dir, ": cannot create: ", ec.message()));
  IC_ASSIGN_OR_RETURN(std::unique_ptr<TensorStore> store, TensorStore::Open(dense_dir));

  // The dense files, linked under names that never collide with model.safetensors (which loaders would
  // prefer to the index).
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  std::map<std::string, std::string> linked;  // source file -> name in out_dir
  for (const auto& [name, info] : store->tensors()) {
    if (name.find(".indexer.") != std::string::npos) continue;
    auto [it, inserted] = linked.emplace(info.file, "");
    if (inserted) {
      const std::string base = fs::path(info.file).filename().string();
      it->second = base == "model.safetensors" ? "dense.safetensors" : "dense-" + base;
      const fs::path dst = fs::path(out_dir) / it->second;
      fs::remove(dst, ec);
      fs::create_hard_link(fs::canonical(info.file), dst, ec);
      if (ec) {
        ec.clear();
        fs::copy_file(info.file, dst, fs::copy_options::overwrite_existing, ec);
        if (ec) return absl::DataLossError(absl::StrCat(dst.string(), ": cannot link or copy: ", ec.message()));
      }
    }
    weight_map[name] = it->second;
  }
  const std::string indexer_file = "indexer.safetensors";
  IC_RETURN_IF_ERROR(WriteIndexerWeights((fs::path(out_dir) / indexer_file).string(), st, dtype));
  for (int l = 0; l < st.config.num_hidden_layers; ++l) {
    if (!st.plan.IsFull(l)) continue;
    IndexerWeights w;
    for (auto& [suffix, t] : IndexerTensors(w)) weight_map[IndexerPrefix(l) + suffix] = indexer_file;
  }
  nlohmann::ordered_json index;
  index["metadata"] = nlohmann::ordered_json::object();
  index["weight_map"] = weight_map;
  ModelConfig c = st.config;
  std::vector<std::string> types;
  for (int l = 0; l < c.num_hidden_layers; ++l) types.push_back(st.plan.IsFull(l) ? "full" : "shared");
  c.indexer_types = types;
  for (const auto& [file, text] : {std::pair{std::string("model.safetensors.index.json"), index.dump(2) + "\n"},
                                   std::pair{std::string("config.json"), ModelConfigToJson(c)}}) {
    const fs::path p = fs::path(out_dir) / file;
    if (fs::exists(p, ec) && !fs::is_regular_file(p, ec)) {
      return InvalidArgument(p.string(), " exists and is not a regular file");
    }
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f << text;
    f.close();
    if (!f) return absl::DataLossError(absl::StrCat(p.string(), ": write failed"));
  }
  for (const char* extra : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                            "special_tokens_map.json"}) {
    const fs::path src = fs::path(dense_dir) / extra;
    if (!fs::is_regular_file(src, ec)) continue;
    fs::copy_file(src, fs::path(out_dir) / extra, fs::copy_options::overwrite_existing, ec);
    if (ec) return absl::DataLossError(absl::StrCat(src.string(), ": cannot copy: ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace ic
