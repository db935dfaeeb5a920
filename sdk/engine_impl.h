// Private to the engine: the state behind Context (weights in backend memory, caches, sequences).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "kernels/cpu/cpu_internal.h"
#include "sdk/device_buffer.h"
#include "sdk/engine.h"
#include "sdk/safetensors.h"
#include "sdk/status.h"
#include "sdk/tensor_parallel.h"

namespace ic {

using kernels::Backend;
using kernels::DeviceKind;

inline double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A Linear weight [out, in] in backend memory: F32 (`f32`; on the CPU a pointer into the Model's host
// tensor, no copy) or BF16 bit patterns (`bf16`, ContextOptions::weight_precision kBF16; a converted
// copy). ld: row stride in elements (0 = dense; a tensor-parallel column slice keeps the full row stride
// on the CPU, zero-copy).
// With weight_precision kFP8, E4M3 bytes (`fp8`) with one F32 scale per 128 × 128 block (`fp8_scale`,
// GemmArgs::b_scale's default layout), quantised at upload with scale = amax / 448 (DeepSeek's recipe: a
// DeepSeek FP8 checkpoint, dequantised to F32 at load, comes back to its own bytes and scales).
struct LinearWeight {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
  const uint8_t* fp8 = nullptr;
  const float* fp8_scale = nullptr;
  int ld = 0;
  bool empty() const { return f32 == nullptr && bf16 == nullptr && fp8 == nullptr; }
  const void* data() const {
    return fp8 != nullptr ? static_cast<const void*>(fp8) : bf16 != nullptr ? static_cast<const void*>(bf16) : f32;
  }
  // The same weight starting `elements` further (a row block of kv_b, which is never FP8: see UploadWeight).
  LinearWeight Offset(int64_t elements) const {
    return LinearWeight{f32 != nullptr ? f32 + elements : nullptr, bf16 != nullptr ? bf16 + elements : nullptr,
                        nullptr, nullptr, ld};
  }
};

struct Context::Impl {
  using Weight = LinearWeight;
  struct Mlp { Weight gate, up, down; int inter = 0; };
  struct Layer {
    const float *input_norm, *post_norm;
    const float *q_a_norm, *kv_a_norm;
    Weight q_proj, k_proj, v_proj;
    Weight q_a_proj, q_b_proj, kv_a_proj, kv_b_proj, o_proj;
    Weight ix_wq, ix_wk, ix_weights;
    const float *ix_norm_w = nullptr, *ix_norm_b = nullptr;
    bool is_moe = false;
    Mlp mlp;
    // The router stays F32 whatever weight_precision says: expert choice is a discrete decision that
    // rounding its logits would change.
    const float *router = nullptr, *router_bias = nullptr;
    std::vector<Mlp> experts;  // routed experts this rank holds: all, or [expert_begin, + experts.size())
    // Backend-memory array of the 3 · E expert weight pointers (gate, then up, then down) that
    // Backend::MoeExperts reads; set when every routed expert is local (no expert group).
    const void* const* expert_table = nullptr;
    std::optional<Mlp> shared;
  };
  const float* embed = nullptr;
  const float* final_norm = nullptr;
  Weight lm_head;
  std::vector<Layer> layers;
  std::vector<void*> owned;  // device allocations made for weights (CUDA)

  // Tensor parallel (ContextOptions::shard_group, tensor_parallel.h); tp == nullptr: single rank.
  parallel::Communicator* tp = nullptr;
  TensorParallelPlan tp_plan;
  std::unique_ptr<ShardedTopk> sharded_topk;
  // Expert parallel (ContextOptions::expert_group); ep == nullptr: every routed expert is local.
  parallel::Communicator* ep = nullptr;
  int expert_begin = 0;   // first routed expert of this rank
  int local_experts = 0;  // routed experts per rank (n_routed_experts / ep size)
  int q_heads = 0, kv_heads = 0;  // attention heads this rank computes (all of them on a single rank)

  const float* rope_inv_freq = nullptr;     // main attention rope
  float rope_scaling = 1.0f;
  const float* ix_rope_inv_freq = nullptr;  // indexer rope
  float ix_rope_scaling = 1.0f;
  float softmax_scale = 1.0f;

  // Caches: [num_slots, entry] per layer.
  int64_t num_blocks = 0;
  int64_t num_slots = 0;
  int kv_entry = 0, v_entry = 0;             // MLA: kv_entry = kv_lora + rope, v unused; GQA: K / V entries
  // F32, or BF16 bit patterns when kv_bf16 (ContextOptions::attention_precision kBF16: the values BF16
  // attention rounds to anyway, in half the bytes).
  std::vector<void*> k_cache, v_cache;
  bool kv_bf16 = false;
  size_t kv_elem_bytes() const { return kv_bf16 ? 2 : 4; }
  // Per Full layer: F32 (indexer_precision kF32), BF16 bit patterns (kBF16) or E4M3 bytes (kFP8, with one
  // F32 scale per slot in index_k_scale); nullptr for Shared layers.
  std::vector<void*> index_k_cache;
  std::vector<float*> index_k_scale;
  std::vector<int> free_blocks;

  struct Sequence {
    std::vector<int> blocks;
    int64_t length = 0;
  };
  std::unordered_map<int, Sequence> sequences;
  int next_seq_id = 1;

  LayerProfile profile;  // ContextOptions::profile_layers

  std::unordered_map<std::string, DeviceBuffer> scratch;
  Backend* backend = nullptr;

  ~Impl() {
    for (void* p : owned) backend->Free(p);
    for (void* p : k_cache) if (p) backend->Free(p);
    for (void* p : v_cache) if (p) backend->Free(p);
    for (void* p : index_k_cache) if (p) backend->Free(p);
    for (float* p : index_k_scale) if (p) backend->Free(p);
  }

  // A named activation buffer of at least `count` values, reused across passes. Growing one moves it
  // (scratch_generation changes, so captured decode graphs that point at it are retired); while a graph is
  // being captured growing is refused (the capture's eager twin has already sized every buffer).
  static constexpr size_t kScratchDoublingLimit = size_t{16} << 20;
  template <typename T>
  absl::StatusOr<T*> Scratch(const std::string& name, size_t count) {
    DeviceBuffer& buffer = scratch[name];
    size_t bytes = std::max<size_t>(count, 1) * sizeof(T);
    if (bytes > buffer.capacity()) {
      if (capturing) {
        return absl::FailedPreconditionError(
            absl::StrCat("scratch buffer '", name, "' would grow to ", bytes, " bytes during CUDA graph capture"));
      }
      ++scratch_generation;
      // Decode-sized buffers at least double, so a batch growing one sequence at a time moves them (and
      // retires the captured graphs) O(log batch) times; large prefill buffers grow to the size asked.
      if (2 * buffer.capacity() <= kScratchDoublingLimit) bytes = std::max(bytes, 2 * buffer.capacity());
    }
    IC_RETURN_IF_ERROR(buffer.Reserve(backend, bytes));
    return buffer.as<T>();
  }

  // ---- CUDA-graph decode (ContextOptions::cuda_graphs; forward.cc).
  // A graph is made per decode shape: sequences in the step, block-table width (a power of two of
  // blocks) and whether the LM head runs. It reads the pass's scratch buffers where they were at capture,
  // so it is valid while neither the engine's scratch nor the backend's workspaces have moved since.
  using GraphKey = std::tuple<int, int, bool>;
  using PassBody = std::function<absl::Status(ForwardPassStats&, std::vector<std::pair<int, int>>&, bool timed)>;
  // With metrics on, a shape has two graphs: the plain one, and a timed one whose time marks (event nodes,
  // ~2 µs each on the H200: cuda_kernels_bench DecodeChainGraph) bracket each Full layer's indexer. One
  // replay in kGraphTimingInterval runs the timed graph and refreshes the sample of the indexer's time that
  // the plain replays in between report (DESIGN.md §6: inside a graph, time by sampling).
  struct DecodeGraph {
    std::unique_ptr<kernels::CapturedGraph> graph;  // the plain graph (null until captured)
    std::unique_ptr<kernels::CapturedGraph> timed;  // metrics on: the same step with time marks
    uint64_t scratch_generation = 0, workspace_generation = 0;
    std::vector<std::pair<int, int>> indexer_marks;  // the time marks `timed` re-issues
    std::vector<double> sampled_indexer_seconds;     // per Full layer, from the last timed replay
    int shared_layers = 0;
    int eager_steps = 0;      // of this shape at these generations
    bool failed = false;      // the capture failed: eager until the buffers move
    int64_t replays = 0;
    uint64_t last_used = 0;   // for least-recently-used eviction
  };
  static constexpr size_t kMaxDecodeGraphs = 64;
  static constexpr int64_t kGraphTimingInterval = 64;
  static constexpr int kEagerStepsBeforeCapture = 2;  // a one-off shape of a changing batch is never captured
  std::map<GraphKey, DecodeGraph> decode_graphs;
  std::optional<GraphKey> capture_due;
  bool capturing = false;
  uint64_t scratch_generation = 0;
  uint64_t graph_clock = 0;
  DecodeGraphStats graph_stats;

  bool GraphCurrent(const DecodeGraph& g) const {
    return g.scratch_generation == scratch_generation && g.workspace_generation == backend->WorkspaceGeneration();
  }

  // One decode step of shape `key`: launches its graph when a current one exists (the timed one every
  // kGraphTimingInterval-th replay when `timed`, filling `marks`) and returns it; else runs `body` eagerly,
  // marks the shape for capture at its kEagerStepsBeforeCapture-th eager step (CaptureDecodeGraphIfDue,
  // once the step's results are read) and returns null.
  absl::StatusOr<DecodeGraph*> RunDecodeGraph(const GraphKey& key, const PassBody& body, bool timed,
                                              ForwardPassStats& stats, std::vector<std::pair<int, int>>& marks) {
    capture_due.reset();
    auto it = decode_graphs.find(key);
    if (it != decode_graphs.end() && GraphCurrent(it->second) && it->second.graph != nullptr) {
      DecodeGraph& g = it->second;
      const bool sample = timed && g.timed != nullptr && g.replays % kGraphTimingInterval == 0;
      IC_RETURN_IF_ERROR(backend->LaunchGraph(sample ? *g.timed : *g.graph));
      stats.shared_layers += g.shared_layers;
      if (sample) marks = g.indexer_marks;
      ++g.replays;
      g.last_used = ++graph_clock;
      ++graph_stats.replays;
      return &g;
    }
    ++graph_stats.eager_steps;
    IC_RETURN_IF_ERROR(body(stats, marks, timed));
    // The shape's entry at the generations after this step (a step that moved buffers starts it afresh).
    DecodeGraph& g = decode_graphs[key];
    if (!GraphCurrent(g)) {
      g = DecodeGraph{};
      g.scratch_generation = scratch_generation;
      g.workspace_generation = backend->WorkspaceGeneration();
    }
    g.last_used = ++graph_clock;
    if (!g.failed && ++g.eager_steps >= kEagerStepsBeforeCapture) capture_due = key;
    EvictDecodeGraphs();
    return nullptr;
  }

  // Drops graphs of moved buffers (they hold device memory for nothing), then the least recently used
  // beyond kMaxDecodeGraphs.
  void EvictDecodeGraphs() {
    std::erase_if(decode_graphs, [&](const auto& kv) { return !GraphCurrent(kv.second); });
    while (decode_graphs.size() > kMaxDecodeGraphs) {
      auto lru = std::min_element(decode_graphs.begin(), decode_graphs.end(), [](const auto& a, const auto& b) {
        return a.second.last_used < b.second.last_used;
      });
      decode_graphs.erase(lru);
    }
    graph_stats.graphs = static_cast<size_t>(std::count_if(
        decode_graphs.begin(), decode_graphs.end(), [](const auto& kv) { return kv.second.graph != nullptr; }));
  }

  // Records the step just run eagerly as graphs for its shape. A capture that fails (an op the graph
  // cannot hold) leaves the shape eager until the buffers move; the step's results are unaffected either way.
  absl::Status CaptureDecodeGraphIfDue(const GraphKey& key, const PassBody& body, bool timed) {
    if (capture_due != key) return absl::OkStatus();
    capture_due.reset();
    auto it = decode_graphs.find(key);
    if (it == decode_graphs.end() || !GraphCurrent(it->second)) return absl::OkStatus();
    DecodeGraph& entry = it->second;
    auto capture = [&](bool with_marks, std::unique_ptr<kernels::CapturedGraph>* out) -> absl::Status {
      if (with_marks) backend->ResetTimeMarks();
      IC_RETURN_IF_ERROR(backend->BeginCapture());
      capturing = true;
      // However the body ends (an error or an exception), the stream leaves capture mode.
      auto end_capture = absl::MakeCleanup([&] {
        if (capturing) {
          capturing = false;
          (void)backend->EndCapture();
        }
      });
      ForwardPassStats stats;
      std::vector<std::pair<int, int>> marks;
      absl::Status s = body(stats, marks, with_marks);
      capturing = false;
      std::move(end_capture).Cancel();
      absl::StatusOr<std::unique_ptr<kernels::CapturedGraph>> graph = backend->EndCapture();
      IC_RETURN_IF_ERROR(s);
      IC_RETURN_IF_ERROR(graph.status());
      entry.shared_layers = stats.shared_layers;
      if (with_marks) entry.indexer_marks = std::move(marks);
      *out = *std::move(graph);
      return absl::OkStatus();
    };
    absl::Status status = capture(false, &entry.graph);
    if (status.ok() && timed) status = capture(true, &entry.timed);
    if (status.ok()) {
      ++graph_stats.captures;
      graph_stats.last_graph_nodes = entry.graph->num_nodes();
    } else {
      entry.graph.reset();
      entry.timed.reset();
      entry.indexer_marks.clear();
      entry.failed = true;
      ++graph_stats.capture_failures;
      graph_stats.last_capture_error = status.ToString();
    }
    EvictDecodeGraphs();
    return absl::OkStatus();
  }
  // `count` values from the host copied into a new allocation of the backend, freed with the context.
  template <typename T>
  absl::StatusOr<const T*> CopyIn(const T* src, size_t count) {
    const size_t bytes = count * sizeof(T);
    IC_ASSIGN_OR_RETURN(void* p, backend->Allocate(bytes));
    owned.push_back(p);
    IC_RETURN_IF_ERROR(backend->CopyToDevice(p, src, bytes));
    return static_cast<const T*>(p);
  }
  // A converted host copy in backend memory for the context's life: on the CPU backend the vector itself
  // (moved into `keep`), else CopyIn.
  template <typename T>
  absl::StatusOr<const T*> Keep(std::vector<T>&& v, std::vector<std::vector<T>>& keep) {
    if (backend->kind() != DeviceKind::kCpu) return CopyIn(v.data(), v.size());
    keep.push_back(std::move(v));
    return keep.back().data();
  }

  absl::StatusOr<const float*> Upload(const HostTensor& t) {
    if (t.empty()) return nullptr;
    if (backend->kind() == DeviceKind::kCpu) return t.data.data();
    return CopyIn(t.data.data(), t.data.size());
  }
  // Rows [begin, begin + count) of a 2-D tensor (CPU: a pointer into the host tensor, no copy).
  absl::StatusOr<const float*> UploadRows(const HostTensor& t, int64_t begin, int64_t count) {
    if (t.empty()) return nullptr;
    const int64_t cols = static_cast<int64_t>(t.data.size()) / t.rows();
    if (begin < 0 || count < 0 || begin + count > t.rows()) {
      return absl::InternalError(absl::StrCat("row slice [", begin, ", ", begin + count, ") of a tensor with ",
                                              t.rows(), " rows"));
    }
    const float* src = t.data.data() + begin * cols;
    if (backend->kind() == DeviceKind::kCpu) return src;
    return CopyIn(src, static_cast<size_t>(count * cols));
  }
  // Columns [begin, begin + count) of a 2-D tensor; *ld receives the row stride of the result (CPU: the
  // full row length, no copy; device: a compact copy, ld = count).
  absl::StatusOr<const float*> UploadCols(const HostTensor& t, int64_t begin, int64_t count, int* ld) {
    *ld = 0;
    if (t.empty()) return nullptr;
    const int64_t rows = t.rows(), cols = static_cast<int64_t>(t.data.size()) / rows;
    if (begin < 0 || count < 0 || begin + count > cols) {
      return absl::InternalError(absl::StrCat("column slice [", begin, ", ", begin + count, ") of a tensor with ",
                                              cols, " columns"));
    }
    if (backend->kind() == DeviceKind::kCpu) {
      *ld = static_cast<int>(cols);
      return t.data.data() + begin;
    }
    std::vector<float> slice(static_cast<size_t>(rows * count));
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(t.data.begin() + r * cols + begin, t.data.begin() + r * cols + begin + count,
                slice.begin() + r * count);
    }
    *ld = static_cast<int>(count);
    return CopyIn(slice.data(), slice.size());
  }
  absl::StatusOr<const float*> UploadVector(const std::vector<float>& v) {
    if (v.empty()) return nullptr;
    return Keep(std::vector<float>(v), host_keep);
  }
  std::vector<std::vector<float>> host_keep;

  // Linear weights in the context's precision (bf16_weights / fp8_weights): F32 exactly as Upload /
  // UploadRows / UploadCols place them, a BF16 copy (round to nearest even) of the same slice, or FP8 with
  // 128 × 128 block scales (LinearWeight). With fp8_weights, a weight the caller marks `fp8_ok = false` (the
  // LM head, the indexer, MLA's kv_b whose per-head row blocks the absorbed attention slices; the
  // runtimes that serve DeepSeek's FP8 checkpoints keep these in BF16 too) or whose in-features are not a
  // multiple of 16 (cuBLASLt's FP8) is BF16.
  bool bf16_weights = false;
  bool fp8_weights = false;
  std::vector<std::vector<uint16_t>> host_keep_bf16;
  std::vector<std::vector<uint8_t>> host_keep_fp8;
  std::vector<std::vector<const void*>> host_keep_tables;

  // The MoeExperts pointer table of `experts` in backend memory (MoeExpertsArgs::weights; with FP8 weights
  // the 3·E matrices then their 3·E scales). nullptr when FP8 weights are mixed with BF16 ones (an expert
  // with in-features not a multiple of 16): MoeExperts takes one kind, so those run expert by expert.
  absl::StatusOr<const void* const*> UploadExpertTable(const std::vector<Mlp>& experts) {
    const size_t E = experts.size();
    std::vector<const void*> table((fp8_weights ? 6 : 3) * E);
    for (size_t e = 0; e < E; ++e) {
      const Weight* mats[3] = {&experts[e].gate, &experts[e].up, &experts[e].down};
      for (int m = 0; m < 3; ++m) {
        if (fp8_weights && mats[m]->fp8 == nullptr) return nullptr;
        table[m * E + e] = mats[m]->data();
        if (fp8_weights) table[(3 + m) * E + e] = mats[m]->fp8_scale;
      }
    }
    return Keep(std::move(table), host_keep_tables);
  }

  absl::StatusOr<Weight> UploadWeight(const HostTensor& t, bool fp8_ok = true) {
    return UploadWeightSlice(t, 0, t.rows(), 0, t.empty() ? 0 : static_cast<int64_t>(t.data.size()) / t.rows(),
                             fp8_ok);
  }
  absl::StatusOr<Weight> UploadWeightRows(const HostTensor& t, int64_t begin, int64_t count, bool fp8_ok = true) {
    return UploadWeightSlice(t, begin, count, 0, t.empty() ? 0 : static_cast<int64_t>(t.data.size()) / t.rows(),
                             fp8_ok);
  }
  absl::StatusOr<Weight> UploadWeightCols(const HostTensor& t, int64_t begin, int64_t count) {
    return UploadWeightSlice(t, 0, t.rows(), begin, count, true);
  }
  // Rows [r0, r0 + nr) × columns [c0, c0 + nc) of a 2-D tensor.
  absl::StatusOr<Weight> UploadWeightSlice(const HostTensor& t, int64_t r0, int64_t nr, int64_t c0, int64_t nc,
                                           bool fp8_ok) {
    Weight w;
    if (t.empty()) return w;
    const int64_t rows = t.rows(), cols = static_cast<int64_t>(t.data.size()) / rows;
    if (!bf16_weights && !fp8_weights) {
      if (c0 == 0 && nc == cols) {
        IC_ASSIGN_OR_RETURN(w.f32, UploadRows(t, r0, nr));
      } else {
        IC_ASSIGN_OR_RETURN(w.f32, UploadCols(t, c0, nc, &w.ld));
      }
      return w;
    }
    if (r0 < 0 || nr < 0 || r0 + nr > rows || c0 < 0 || nc < 0 || c0 + nc > cols) {
      return absl::InternalError(absl::StrCat("slice [", r0, ", ", r0 + nr, ") × [", c0, ", ", c0 + nc,
                                              ") of a ", rows, " × ", cols, " tensor"));
    }
    if (fp8_weights && fp8_ok && nc % 16 == 0) return UploadFp8(t.data.data() + r0 * cols + c0, nr, nc, cols);
    std::vector<uint16_t> bits(static_cast<size_t>(nr * nc));
    for (int64_t r = 0; r < nr; ++r) {
      const float* src = t.data.data() + (r0 + r) * cols + c0;
      for (int64_t j = 0; j < nc; ++j) bits[static_cast<size_t>(r * nc + j)] = FloatToBf16(src[j]);
    }
    IC_ASSIGN_OR_RETURN(w.bf16, Keep(std::move(bits), host_keep_bf16));
    return w;
  }

  // `rows` × `cols` F32 values (row stride `ld`) as E4M3 bytes with 128 × 128 block scales amax / 448, in one
  // allocation: the bytes, then (at a 256-byte boundary) the scales — hundreds of expert matrices would
  // otherwise add as many small allocations, each rounded up by the device allocator.
  absl::StatusOr<Weight> UploadFp8(const float* src, int64_t rows, int64_t cols, int64_t ld) {
    const int64_t row_blocks = (rows + 127) / 128, col_blocks = (cols + 127) / 128;
    const int64_t scale_ld = kernels::Fp8ScaleLd(static_cast<int>(cols));  // GemmArgs::b_scale_ld's default
    const size_t scale_offset = (static_cast<size_t>(rows * cols) + 255) / 256 * 256;
    std::vector<uint8_t> buf(scale_offset + sizeof(float) * static_cast<size_t>(row_blocks * scale_ld));
    uint8_t* bytes = buf.data();
    std::vector<float> scales(static_cast<size_t>(row_blocks * scale_ld), 1.0f);
    for (int64_t bi = 0; bi < row_blocks; ++bi) {
      for (int64_t bj = 0; bj < col_blocks; ++bj) {
        const int64_t r1 = std::min(rows, (bi + 1) * 128), c1 = std::min(cols, (bj + 1) * 128);
        float amax = 0.0f;
        for (int64_t r = bi * 128; r < r1; ++r) {
          for (int64_t c = bj * 128; c < c1; ++c) amax = std::max(amax, std::fabs(src[r * ld + c]));
        }
        if (!std::isfinite(amax)) {
          return InvalidArgument("FP8 weights: a Linear weight has a non-finite value in its 128 x 128 block (",
                                 bi, ", ", bj, ")");
        }
        // amax / 448 (DeepSeek's scale); 1 where that is 0 or subnormal (a block of weights below ~5e-36, all
        // of which E4M3 rounds to 0 anyway), so that x / scale is never 0 / 0.
        const float scale = amax / 448.0f >= std::numeric_limits<float>::min() ? amax / 448.0f : 1.0f;
        scales[static_cast<size_t>(bi * scale_ld + bj)] = scale;
        for (int64_t r = bi * 128; r < r1; ++r) {
          for (int64_t c = bj * 128; c < c1; ++c) {
            bytes[r * cols + c] = kernels::cpu::internal::FloatToE4m3(src[r * ld + c] / scale);
          }
        }
      }
    }
    std::memcpy(buf.data() + scale_offset, scales.data(), sizeof(float) * scales.size());
    IC_ASSIGN_OR_RETURN(const uint8_t* base, Keep(std::move(buf), host_keep_fp8));
    Weight w;
    w.fp8 = base;
    w.fp8_scale = reinterpret_cast<const float*>(base + scale_offset);
    return w;
  }

  absl::StatusOr<Mlp> UploadMlp(const MlpWeights& w) {
    Mlp m;
    IC_ASSIGN_OR_RETURN(m.gate, UploadWeight(w.gate));
    IC_ASSIGN_OR_RETURN(m.up, UploadWeight(w.up));
    IC_ASSIGN_OR_RETURN(m.down, UploadWeight(w.down));
    m.inter = static_cast<int>(w.gate.rows());
    return m;
  }
  // The tensor-parallel part of a dense MLP: intermediate [begin, end) (gate/up rows, down columns).
  absl::StatusOr<Mlp> UploadMlpSlice(const MlpWeights& w, parallel::RowRange range) {
    Mlp m;
    IC_ASSIGN_OR_RETURN(m.gate, UploadWeightRows(w.gate, range.begin, range.size()));
    IC_ASSIGN_OR_RETURN(m.up, UploadWeightRows(w.up, range.begin, range.size()));
    IC_ASSIGN_OR_RETURN(m.down, UploadWeightCols(w.down, range.begin, range.size()));
    m.inter = static_cast<int>(range.size());
    return m;
  }
};

}  // namespace ic
