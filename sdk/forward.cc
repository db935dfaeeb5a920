// The forward pass of Context (engine.h): one call per op, in the order of DESIGN.md §4.
#include <algorithm>
#include <bit>
#include <cmath>
#include <numeric>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "parallel/communicator.h"
#include "sdk/engine_impl.h"

namespace ic {
namespace {

using kernels::CacheWriteArgs;
using kernels::Copy2DArgs;
using kernels::GemmArgs;
using kernels::NormArgs;
using kernels::RopeArgs;
using kernels::RopeStyle;
using kernels::RowsArgs;
using kernels::TokenLayout;

using Weight = LinearWeight;

// Points a Gemm's B operand at `w` (F32, BF16 or block-scaled FP8: GemmArgs::b_bf16 / b_fp8) with w's row
// stride.
void SetB(GemmArgs& g, const Weight& w) {
  g.b = w.f32;
  g.b_bf16 = w.bf16;
  g.b_fp8 = w.fp8;
  g.b_scale = w.fp8_scale;
  g.ldb = w.ld;
}

// out[T, out_dim] = alpha · in[T, in_dim] · W[out_dim, in_dim]ᵀ  (an HF Linear without bias).
absl::Status Linear(Backend& b, float* out, const float* in, const Weight& w, int tokens, int out_dim,
                    int in_dim, float alpha = 1.0f, int ld_in = 0, int ld_out = 0) {
  GemmArgs g;
  g.c = out;
  g.a = in;
  SetB(g, w);
  g.m = tokens;
  g.n = out_dim;
  g.k = in_dim;
  g.lda = ld_in;
  g.ldc = ld_out;
  g.alpha = alpha;
  return b.Gemm(g);
}

absl::Status Accumulate(Backend& b, float* dst, const float* src, int rows, int cols) {
  Copy2DArgs a;
  a.dst = dst;
  a.src = src;
  a.rows = rows;
  a.cols = cols;
  a.accumulate = true;
  return b.Copy2D(a);
}

}  // namespace

absl::Status Context::Forward(std::span<const Segment> segments, const ForwardOutputs& outputs,
                              const ForwardOptions& fopts) {
  Impl& im = *impl_;
  Backend& be = *backend_;
  const ModelConfig& c = model_->config;
  if (segments.empty() && impl_->ep == nullptr) return InvalidArgument("forward pass with no segments");
  const int start_layer = fopts.start_layer;
  if (start_layer < 0 || start_layer >= c.num_hidden_layers) {
    return InvalidArgument("start_layer ", start_layer, " is outside [0, ", c.num_hidden_layers, ")");
  }
  if (start_layer > 0 && fopts.initial_hidden == nullptr) {
    return InvalidArgument("start_layer ", start_layer, " needs initial_hidden (the hidden state entering it)");
  }
  if (start_layer > 0 && c.has_indexer && fopts.initial_topk == nullptr) {
    return InvalidArgument("start_layer ", start_layer,
                           " needs initial_topk (the top-k of the nearest Full layer before it)");
  }
  // Collective traffic of this pass, recorded per group and kind at the end (metrics).
  const parallel::CommunicatorStats tp_before = im.tp != nullptr ? im.tp->stats() : parallel::CommunicatorStats{};
  const parallel::CommunicatorStats ep_before = im.ep != nullptr ? im.ep->stats() : parallel::CommunicatorStats{};
  auto record_communication = [&]() {
    if (!options_.record_metrics) return;
    for (auto [comm, before, group] : {std::tuple{im.tp, &tp_before, "shard"}, std::tuple{im.ep, &ep_before, "expert"}}) {
      if (comm == nullptr) continue;
      for (int k = 0; k < parallel::kNumCollectives; ++k) {
        const auto kind = static_cast<parallel::Collective>(k);
        const parallel::CollectiveStats& now = comm->stats()[kind];
        const parallel::CollectiveStats& was = (*before)[kind];
        if (now.calls == was.calls) continue;
        Metrics::Global().RecordCommunication(group, parallel::CollectiveName(kind), now.calls - was.calls,
                                              now.bytes_sent - was.bytes_sent, now.seconds - was.seconds);
      }
    }
  };
  const int H = c.hidden_size;
  // y[rows, H] = down(SiLU(gate·x) ⊙ up·x) of one (shared, routed or dense) MLP.
  auto run_mlp = [&](const Impl::Mlp& m, const float* in, float* out, int rows) -> absl::Status {
    IC_ASSIGN_OR_RETURN(float* gate, im.Scratch<float>("mlp_gate", static_cast<size_t>(rows) * m.inter));
    IC_ASSIGN_OR_RETURN(float* up, im.Scratch<float>("mlp_up", static_cast<size_t>(rows) * m.inter));
    IC_RETURN_IF_ERROR(Linear(be, gate, in, m.gate, rows, m.inter, H));
    IC_RETURN_IF_ERROR(Linear(be, up, in, m.up, rows, m.inter, H));
    IC_RETURN_IF_ERROR(be.SiluMul({.out = gate, .gate = gate, .up = up, .tokens = rows, .dim = m.inter}));
    return Linear(be, out, gate, m.down, rows, H, m.inter);
  };
  // Expert parallel (ContextOptions::expert_group): out[T, H] += Σ_j w[t, j] · expert_{e[t, j]}(h[t]) with
  // the experts spread over the group. Per layer, on every rank of the group (T may be 0: IdleStep):
  // all-gather of the per-destination row counts, all-to-all-v of the input rows and their expert ids to
  // the experts' owners, the owners' expert MLPs, all-to-all-v of the outputs back, weighted scatter-add.
  // Only rows [row_begin, row_end) are dispatched (inside a shard group every rank holds the same tokens:
  // each sends its own slice, and the slices are summed over the group afterwards).
  auto moe_expert_parallel = [&](const Impl::Layer& L, const float* h_dev, int T, const std::vector<int32_t>& eid,
                                 const std::vector<float>& ew, float* out, int row_begin,
                                 int row_end) -> absl::Status {
    parallel::Communicator& comm = *im.ep;
    const int P = comm.size(), TK = c.num_experts_per_tok, local = im.local_experts;
    std::vector<std::vector<int32_t>> rows(P), experts(P);
    std::vector<std::vector<float>> weights(P);
    for (int r = row_begin; r < row_end; ++r) {
      for (int j = 0; j < TK; ++j) {
        const int e = eid[static_cast<size_t>(r) * TK + j];
        if (e < 0 || e >= c.n_routed_experts) return absl::InternalError(absl::StrCat("router chose expert ", e));
        rows[e / local].push_back(r);
        experts[e / local].push_back(e % local);
        weights[e / local].push_back(ew[static_cast<size_t>(r) * TK + j]);
      }
    }
    std::vector<int64_t> my_counts(P), counts(static_cast<size_t>(P) * P);
    for (int d = 0; d < P; ++d) my_counts[d] = static_cast<int64_t>(rows[d].size());
    IC_RETURN_IF_ERROR(comm.AllGather(my_counts.data(), counts.data(), P * sizeof(int64_t)));
    const int me = comm.rank();
    std::vector<size_t> send_n(P), send_off(P), recv_n(P), recv_off(P);
    size_t n_send = 0, n_recv = 0;
    for (int d = 0; d < P; ++d) {
      send_n[d] = static_cast<size_t>(my_counts[d]);
      send_off[d] = n_send;
      n_send += send_n[d];
      recv_n[d] = static_cast<size_t>(counts[static_cast<size_t>(d) * P + me]);  // what rank d sends me
      recv_off[d] = n_recv;
      n_recv += recv_n[d];
    }
    auto scaled = [](std::vector<size_t> v, size_t unit) {
      for (size_t& x : v) x *= unit;
      return v;
    };
    const size_t row_bytes = static_cast<size_t>(H) * sizeof(float);
    std::vector<float> h_host(static_cast<size_t>(T) * H), send(n_send * H), recv(n_recv * H);
    std::vector<int32_t> send_e(n_send), recv_e(n_recv), send_rows(n_send);
    std::vector<float> send_w(n_send);
    if (T > 0) IC_RETURN_IF_ERROR(be.CopyToHost(h_host.data(), h_dev, h_host.size() * sizeof(float)));
    for (int d = 0, k = 0; d < P; ++d) {
      for (size_t i = 0; i < rows[d].size(); ++i, ++k) {
        std::copy_n(&h_host[static_cast<size_t>(rows[d][i]) * H], H, &send[static_cast<size_t>(k) * H]);
        send_e[k] = experts[d][i];
        send_rows[k] = rows[d][i];
        send_w[k] = weights[d][i];
      }
    }
    IC_RETURN_IF_ERROR(comm.AllToAllV(send.data(), scaled(send_n, row_bytes), scaled(send_off, row_bytes), recv.data(),
                                      scaled(recv_n, row_bytes), scaled(recv_off, row_bytes)));
    IC_RETURN_IF_ERROR(comm.AllToAllV(send_e.data(), scaled(send_n, 4), scaled(send_off, 4), recv_e.data(),
                                      scaled(recv_n, 4), scaled(recv_off, 4)));
    // The owner's side: every received row through its expert, results in receive order.
    std::vector<float> result(n_recv * H, 0.0f);
    if (n_recv > 0) {
      std::vector<std::vector<int32_t>> by_expert(local);
      for (size_t i = 0; i < n_recv; ++i) {
        if (recv_e[i] < 0 || recv_e[i] >= local) {
          return absl::InternalError(absl::StrCat("expert all-to-all delivered local expert ", recv_e[i]));
        }
        by_expert[recv_e[i]].push_back(static_cast<int32_t>(i));
      }
      IC_ASSIGN_OR_RETURN(float* d_in, im.Scratch<float>("ep_in", n_recv * H));
      IC_ASSIGN_OR_RETURN(float* d_res, im.Scratch<float>("ep_res", n_recv * H));
      IC_ASSIGN_OR_RETURN(float* d_rows_in, im.Scratch<float>("ep_rows_in", n_recv * H));
      IC_ASSIGN_OR_RETURN(float* d_rows_out, im.Scratch<float>("ep_rows_out", n_recv * H));
      IC_ASSIGN_OR_RETURN(int32_t* d_idx, im.Scratch<int32_t>("ep_idx", n_recv));
      IC_RETURN_IF_ERROR(be.CopyToDevice(d_in, recv.data(), recv.size() * sizeof(float)));
      IC_RETURN_IF_ERROR(be.Memset(d_res, 0, recv.size() * sizeof(float)));
      std::vector<int32_t> order;
      std::vector<size_t> begin(local + 1, 0);
      for (int e = 0; e < local; ++e) {
        begin[e] = order.size();
        order.insert(order.end(), by_expert[e].begin(), by_expert[e].end());
      }
      begin[local] = order.size();
      IC_RETURN_IF_ERROR(be.CopyToDevice(d_idx, order.data(), order.size() * sizeof(int32_t)));
      for (int e = 0; e < local; ++e) {
        const int n = static_cast<int>(begin[e + 1] - begin[e]);
        if (n == 0) continue;
        IC_RETURN_IF_ERROR(be.GatherRows({.out = d_rows_in, .in = d_in, .rows = d_idx + begin[e], .count = n, .dim = H}));
        IC_RETURN_IF_ERROR(run_mlp(L.experts[e], d_rows_in, d_rows_out, n));
        IC_RETURN_IF_ERROR(be.ScatterAddRows({.out = d_res, .in = d_rows_out, .rows = d_idx + begin[e], .scale = nullptr,
                                              .count = n, .dim = H}));
      }
      IC_RETURN_IF_ERROR(be.CopyToHost(result.data(), d_res, result.size() * sizeof(float)));
    }
    std::vector<float> back(n_send * H);
    IC_RETURN_IF_ERROR(comm.AllToAllV(result.data(), scaled(recv_n, row_bytes), scaled(recv_off, row_bytes),
                                      back.data(), scaled(send_n, row_bytes), scaled(send_off, row_bytes)));
    if (n_send == 0) return absl::OkStatus();
    IC_ASSIGN_OR_RETURN(float* d_back, im.Scratch<float>("ep_back", n_send * H));
    IC_ASSIGN_OR_RETURN(int32_t* d_rows, im.Scratch<int32_t>("ep_rows", n_send));
    IC_ASSIGN_OR_RETURN(float* d_w, im.Scratch<float>("ep_w", n_send));
    IC_RETURN_IF_ERROR(be.CopyToDevice(d_back, back.data(), back.size() * sizeof(float)));
    IC_RETURN_IF_ERROR(be.CopyToDevice(d_rows, send_rows.data(), n_send * sizeof(int32_t)));
    IC_RETURN_IF_ERROR(be.CopyToDevice(d_w, send_w.data(), n_send * sizeof(float)));
    return be.ScatterAddRows({.out = out, .in = d_back, .rows = d_rows, .scale = d_w,
                              .count = static_cast<int>(n_send), .dim = H});
  };
  if (segments.empty() && im.ep != nullptr) {  // IdleStep: join every MoE layer's exchange with no tokens
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      if (im.layers[l].is_moe) IC_RETURN_IF_ERROR(moe_expert_parallel(im.layers[l], nullptr, 0, {}, {}, nullptr, 0, 0));
    }
    record_communication();
    return absl::OkStatus();
  }

  const Plan& plan = fopts.plan != nullptr ? *fopts.plan : plan_;
  if (fopts.plan != nullptr) {
    if (plan.num_layers() != c.num_hidden_layers) {
      return InvalidArgument("pass plan has ", plan.num_layers(), " layers; the model has ", c.num_hidden_layers);
    }
    if (!plan.IsFull(0)) return InvalidArgument("pass plan: layer 0 must be Full");
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      if (plan.IsFull(l) && !plan_.IsFull(l)) {
        return InvalidArgument("pass plan ", plan.ToString(), ": layer ", l,
                               " is Full but Shared in the context's plan ", plan_.ToString(),
                               " (it has no index-K cache)");
      }
    }
  }

  if ((outputs.attention_by_layer != nullptr || outputs.dense_attention_by_layer != nullptr) && im.tp != nullptr) {
    return InvalidArgument("attention captures are single-rank only (this context is one rank of a shard group)");
  }

  // ---- Validate everything before touching state.
  int total = 0;
  std::vector<int64_t> start(segments.size());
  int64_t new_blocks = 0;
  for (size_t s = 0; s < segments.size(); ++s) {
    const Segment& seg = segments[s];
    auto it = im.sequences.find(seg.seq_id);
    if (it == im.sequences.end()) return absl::NotFoundError(absl::StrCat("no sequence with id ", seg.seq_id));
    for (size_t p = 0; p < s; ++p) {
      if (segments[p].seq_id == seg.seq_id) {
        return InvalidArgument("sequence ", seg.seq_id, " appears twice in one forward pass");
      }
    }
    if (seg.tokens.empty()) return InvalidArgument("sequence ", seg.seq_id, ": segment with no tokens");
    for (size_t i = 0; i < seg.tokens.size(); ++i) {
      if (seg.tokens[i] < 0 || seg.tokens[i] >= c.vocab_size) {
        return InvalidArgument("token id ", seg.tokens[i], " (sequence ", seg.seq_id, ", index ", i,
                               ") is outside the vocabulary [0, ", c.vocab_size, ")");
      }
    }
    start[s] = it->second.length;
    const int64_t end = start[s] + static_cast<int64_t>(seg.tokens.size());
    new_blocks += (end + options_.block_size - 1) / options_.block_size -
                  static_cast<int64_t>(it->second.blocks.size());
    total += static_cast<int>(seg.tokens.size());
  }
  if (!outputs.targets.empty() && outputs.targets.size() != static_cast<size_t>(total)) {
    return InvalidArgument("targets has ", outputs.targets.size(), " entries; the pass has ", total, " tokens");
  }
  for (int32_t t : outputs.targets) {
    if (t >= c.vocab_size) {
      return InvalidArgument("target token id ", t, " is outside the vocabulary [0, ", c.vocab_size, ")");
    }
  }
  if (new_blocks > static_cast<int64_t>(im.free_blocks.size())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: this pass needs ", new_blocks, " more blocks of ", options_.block_size, " tokens; ",
        im.free_blocks.size(), " are free (capacity ", im.num_slots, " tokens)"));
  }

  // ---- Allocate blocks (rolled back on error) and build the token layout.
  std::vector<std::pair<int, size_t>> grown;  // (seq, old block count)
  for (size_t s = 0; s < segments.size(); ++s) {
    Impl::Sequence& sq = im.sequences[segments[s].seq_id];
    grown.emplace_back(segments[s].seq_id, sq.blocks.size());
    const int64_t end = start[s] + static_cast<int64_t>(segments[s].tokens.size());
    while (static_cast<int64_t>(sq.blocks.size()) * options_.block_size < end) {
      sq.blocks.push_back(im.free_blocks.back());
      im.free_blocks.pop_back();
    }
  }
  auto rollback = [&]() {
    for (auto& [id, old] : grown) {
      Impl::Sequence& sq = im.sequences[id];
      while (sq.blocks.size() > old) {
        im.free_blocks.push_back(sq.blocks.back());
        sq.blocks.pop_back();
      }
    }
  };

  const double t_pass = NowSeconds();
  ForwardPassStats stats;
  const bool profile = options_.profile_layers;
  std::vector<double> pass_layer_seconds, pass_indexer_seconds;  // this pass (profile_layers only)
  // Metrics without profiling: the indexer of each Full layer is timed by backend time marks (no
  // synchronisation inside the pass), read once the pass has synchronised at its end.
  const bool mark_indexer = options_.record_metrics && !profile;
  std::vector<std::pair<int, int>> indexer_marks;
  if (mark_indexer) be.ResetTimeMarks();
  if (profile) {
    pass_layer_seconds.assign(c.num_hidden_layers, 0.0);
    pass_indexer_seconds.assign(c.num_hidden_layers, 0.0);
  }
  const bool decode_step = std::all_of(segments.begin(), segments.end(),
                                      [](const Segment& s) { return s.tokens.size() == 1; }) &&
                          std::all_of(start.begin(), start.end(), [](int64_t p) { return p > 0; });
  // A decode step runs as a CUDA graph (ContextOptions::cuda_graphs) when nothing in it needs the host
  // between ops: the context's plan from layer 0, no captures or loss, one rank, no per-layer profile,
  // and every MoE layer on the fused MoeExperts op (no host round trip of the expert ids).
  const bool graph_mode = [&]() {
    if (!decode_step || !options_.cuda_graphs || be.kind() != kernels::DeviceKind::kCuda) return false;
    if (fopts.start_layer != 0 || fopts.plan != nullptr || profile || im.tp != nullptr || im.ep != nullptr) {
      return false;
    }
    if (outputs.all_logits != nullptr || outputs.topk_by_layer != nullptr || outputs.scores_by_layer != nullptr ||
        outputs.hidden_by_layer != nullptr || outputs.attention_by_layer != nullptr ||
        outputs.dense_attention_by_layer != nullptr || outputs.indexer_inputs_by_layer != nullptr ||
        !outputs.targets.empty() || outputs.token_loss != nullptr) {
      return false;
    }
    const int64_t pairs = static_cast<int64_t>(total) * c.num_experts_per_tok;
    return std::all_of(im.layers.begin(), im.layers.end(), [&](const Impl::Layer& L) {
      return !L.is_moe || (L.expert_table != nullptr && pairs <= kernels::kMoeFusedMaxPairs);
    });
  }();
  absl::Status status = [&]() -> absl::Status {
    const int S = static_cast<int>(segments.size());
    const int T = total;
    int max_blocks = 1;
    for (const Segment& seg : segments) {
      max_blocks = std::max<int>(max_blocks, static_cast<int>(im.sequences[seg.seq_id].blocks.size()));
    }
    // A CUDA-graph decode step: the block tables are padded to a power of two of blocks, so that one graph
    // serves every step until a sequence outgrows it (the kernels read the true positions on the device;
    // key tiles past a row's position exit at once).
    if (graph_mode) max_blocks = static_cast<int>(std::bit_ceil(static_cast<unsigned>(max_blocks)));
    std::vector<int32_t> h_ids(T), h_seq(T), h_pos(T), h_slots(T), h_tables(static_cast<size_t>(S) * max_blocks, 0);
    std::vector<int32_t> last_rows(S);
    int t = 0;
    for (int s = 0; s < S; ++s) {
      const Impl::Sequence& sq = im.sequences[segments[s].seq_id];
      std::copy(sq.blocks.begin(), sq.blocks.end(), h_tables.begin() + static_cast<size_t>(s) * max_blocks);
      for (size_t i = 0; i < segments[s].tokens.size(); ++i, ++t) {
        const int64_t pos = start[s] + static_cast<int64_t>(i);
        h_ids[t] = segments[s].tokens[i];
        h_seq[t] = s;
        h_pos[t] = static_cast<int32_t>(pos);
        h_slots[t] = sq.blocks[pos / options_.block_size] * options_.block_size + pos % options_.block_size;
      }
      last_rows[s] = t - 1;
    }
    IC_ASSIGN_OR_RETURN(int32_t* d_ids, im.Scratch<int32_t>("ids", T));
    IC_ASSIGN_OR_RETURN(int32_t* d_seq, im.Scratch<int32_t>("seq", T));
    IC_ASSIGN_OR_RETURN(int32_t* d_pos, im.Scratch<int32_t>("pos", T));
    IC_ASSIGN_OR_RETURN(int32_t* d_slots, im.Scratch<int32_t>("slots", T));
    IC_ASSIGN_OR_RETURN(int32_t* d_tables, im.Scratch<int32_t>("tables", h_tables.size()));
    IC_RETURN_IF_ERROR(be.CopyToDevice(d_ids, h_ids.data(), T * sizeof(int32_t)));
    IC_RETURN_IF_ERROR(be.CopyToDevice(d_seq, h_seq.data(), T * sizeof(int32_t)));
    IC_RETURN_IF_ERROR(be.CopyToDevice(d_pos, h_pos.data(), T * sizeof(int32_t)));
    IC_RETURN_IF_ERROR(be.CopyToDevice(d_slots, h_slots.data(), T * sizeof(int32_t)));
    IC_RETURN_IF_ERROR(be.CopyToDevice(d_tables, h_tables.data(), h_tables.size() * sizeof(int32_t)));
    TokenLayout layout;
    layout.token_seq = d_seq;
    layout.token_pos = d_pos;
    layout.block_tables = d_tables;
    layout.tokens = T;
    layout.num_seqs = S;
    layout.max_blocks_per_seq = max_blocks;
    layout.block_size = options_.block_size;

    IC_ASSIGN_OR_RETURN(float* x, im.Scratch<float>("x", static_cast<size_t>(T) * H));
    IC_ASSIGN_OR_RETURN(float* h, im.Scratch<float>("h", static_cast<size_t>(T) * H));
    IC_ASSIGN_OR_RETURN(float* attn, im.Scratch<float>("attn", static_cast<size_t>(T) * H));
    const int K = c.has_indexer ? c.index_topk : 0;
    int32_t* topk = nullptr;
    if (c.has_indexer) {
      IC_ASSIGN_OR_RETURN(topk, im.Scratch<int32_t>("topk", static_cast<size_t>(T) * K));
    }
    const float eps = static_cast<float>(c.rms_norm_eps);

    // Tensor parallel: the row / key split of the sharded top-k is fixed for the pass.
    const bool sharded_topk = im.tp != nullptr && c.has_indexer;
    if (sharded_topk) {
      ShardedTopk::Pass pass;
      pass.seq = h_seq;
      pass.pos = h_pos;
      pass.tables = h_tables;
      pass.num_seqs = S;
      pass.max_blocks = max_blocks;
      pass.block_size = options_.block_size;
      pass.device = layout;
      // Decode: every segment is one token appended to existing context (every rank decides alike).
      pass.decode = decode_step;
      IC_RETURN_IF_ERROR(im.sharded_topk->BeginPass(pass, K));
    }
    // o_proj / dense MLP partial outputs of a shard group: summed over its ranks, in place.
    auto all_reduce = [&](float* buf) -> absl::Status {
      if (im.tp == nullptr) return absl::OkStatus();
      // NCCL runs on its own stream: the backend's work that wrote `buf` must be done first (the
      // collective itself returns once complete).
      if (be.kind() == kernels::DeviceKind::kCuda) IC_RETURN_IF_ERROR(be.Synchronize());
      return im.tp->AllReduceSum(buf, buf, static_cast<size_t>(T) * H);
    };

    // attention_by_layer: a second attention call with `probs` (its output is discarded). Dense layers
    // attend over an explicit all-keys list (row t: 0..pos(t), then −1), which equals dense causal
    // attention (DESIGN.md §3); sparse layers over their own top-k, scattered into position columns.
    const int capture_cols =
        outputs.attention_by_layer != nullptr || outputs.dense_attention_by_layer != nullptr
            ? 1 + *std::max_element(h_pos.begin(), h_pos.end())
            : 0;
    int32_t* all_keys = nullptr;
    // The KV cache of a layer, F32 or BF16 (Impl::kv_bf16): writes of `dim` values per token, and the
    // attention arguments that read it.
    auto kv_write = [&](void* cache, const float* src, int dim) -> absl::Status {
      CacheWriteArgs w{.src = src, .slots = d_slots, .tokens = T, .dim = dim, .cache_stride = dim, .src_stride = dim,
                       .num_slots = im.num_slots};
      if (im.kv_bf16) {
        w.cache_bf16 = static_cast<uint16_t*>(cache);
      } else {
        w.cache = static_cast<float*>(cache);
      }
      return be.CacheWrite(w);
    };
    auto set_kv = [&](kernels::AttentionArgs& at, void* k, void* v) {
      if (im.kv_bf16) {
        at.k_cache_bf16 = static_cast<const uint16_t*>(k);
        at.v_cache_bf16 = static_cast<const uint16_t*>(v);
      } else {
        at.k_cache = static_cast<const float*>(k);
        at.v_cache = static_cast<const float*>(v);
      }
    };
    auto capture_attention = [&](int layer, const kernels::AttentionArgs& at, bool force_dense,
                                 std::map<int, std::vector<float>>* into) -> absl::Status {
      const bool dense = at.topk == nullptr || force_dense;
      kernels::AttentionArgs pa = at;
      if (dense && all_keys == nullptr) {
        std::vector<int32_t> keys(static_cast<size_t>(T) * capture_cols, -1);
        for (int r = 0; r < T; ++r) {
          std::iota(keys.begin() + static_cast<size_t>(r) * capture_cols,
                    keys.begin() + static_cast<size_t>(r) * capture_cols + h_pos[r] + 1, 0);
        }
        IC_ASSIGN_OR_RETURN(all_keys, im.Scratch<int32_t>("capture_keys", keys.size()));
        IC_RETURN_IF_ERROR(be.CopyToDevice(all_keys, keys.data(), keys.size() * sizeof(int32_t)));
      }
      if (dense) {
        pa.topk = all_keys;
        pa.topk_k = capture_cols;
      }
      const size_t n = static_cast<size_t>(T) * pa.topk_k;
      IC_ASSIGN_OR_RETURN(pa.out, im.Scratch<float>("capture_out", static_cast<size_t>(T) * at.q_heads * at.v_dim));
      IC_ASSIGN_OR_RETURN(pa.probs, im.Scratch<float>("capture_probs", n));
      pa.lse = nullptr;
      IC_RETURN_IF_ERROR(be.Attention(pa));
      std::vector<float>& dst = (*into)[layer];
      if (dense) {
        dst.resize(n);
        return be.CopyToHost(dst.data(), pa.probs, n * sizeof(float));
      }
      std::vector<float> probs(n);
      std::vector<int32_t> keys(n);
      IC_RETURN_IF_ERROR(be.CopyToHost(probs.data(), pa.probs, n * sizeof(float)));
      IC_RETURN_IF_ERROR(be.CopyToHost(keys.data(), pa.topk, n * sizeof(int32_t)));
      dst.assign(static_cast<size_t>(T) * capture_cols, 0.0f);
      for (int r = 0; r < T; ++r) {
        for (int i = 0; i < pa.topk_k; ++i) {
          const int32_t key = keys[static_cast<size_t>(r) * pa.topk_k + i];
          if (key >= 0 && key <= h_pos[r]) {
            dst[static_cast<size_t>(r) * capture_cols + key] = probs[static_cast<size_t>(r) * pa.topk_k + i];
          }
        }
      }
      return absl::OkStatus();
    };

    // Per-layer timing (ContextOptions::profile_layers): synchronise at each layer boundary; a layer's
    // time runs from its start to the next layer's start (the `continue`s below need no bookkeeping).
    int open_layer = -1;
    double layer_start = 0;
    auto mark_layer_boundary = [&](int next_layer) -> absl::Status {
      if (absl::Status s = be.Synchronize(); !s.ok()) {  // name the layer whose kernels failed
        return absl::Status(s.code(), absl::StrCat(open_layer >= 0 ? absl::StrCat("layer ", open_layer)
                                                                   : std::string("before the first layer"),
                                                   " of a pass of ", T, " tokens: ", s.message()));
      }
      const double now = NowSeconds();
      if (open_layer >= 0) pass_layer_seconds[open_layer] += now - layer_start;
      open_layer = next_layer;
      layer_start = now;
      return absl::OkStatus();
    };

    // The pass from the embedding to the last layer's residual. `st` and `marks` receive what it measures
    // (separate for a CUDA-graph capture, whose work does not run); `timed`: time each Full layer's
    // indexer with a pair of backend time marks.
    auto run_layers = [&](ForwardPassStats& st, std::vector<std::pair<int, int>>& marks, bool timed) -> absl::Status {
      if (start_layer == 0) {
        IC_RETURN_IF_ERROR(be.Embedding({.out = x, .table = im.embed, .ids = d_ids, .tokens = T, .dim = H,
                                         .vocab = c.vocab_size}));
      } else {  // partial pass (ForwardOptions): start from the caller's hidden state and top-k
        IC_RETURN_IF_ERROR(be.CopyToDevice(x, fopts.initial_hidden, static_cast<size_t>(T) * H * sizeof(float)));
        if (c.has_indexer) {
          IC_RETURN_IF_ERROR(be.CopyToDevice(topk, fopts.initial_topk, static_cast<size_t>(T) * K * sizeof(int32_t)));
        }
      }
      for (int l = start_layer; l < c.num_hidden_layers; ++l) {
        if (profile) IC_RETURN_IF_ERROR(mark_layer_boundary(l));
        const Impl::Layer& L = im.layers[l];
        if (outputs.hidden_by_layer != nullptr) {
          std::vector<float>& dst = (*outputs.hidden_by_layer)[l];
          dst.resize(static_cast<size_t>(T) * H);
          IC_RETURN_IF_ERROR(be.CopyToHost(dst.data(), x, dst.size() * sizeof(float)));
        }
        IC_RETURN_IF_ERROR(be.RmsNorm({.out = h, .in = x, .weight = L.input_norm, .rows = T, .dim = H, .eps = eps}));
        IndexerInputs* capture_inputs =
            outputs.indexer_inputs_by_layer != nullptr ? &(*outputs.indexer_inputs_by_layer)[l] : nullptr;
        if (capture_inputs != nullptr) {
          capture_inputs->x.resize(static_cast<size_t>(T) * H);
          capture_inputs->x_q.clear();
          IC_RETURN_IF_ERROR(be.CopyToHost(capture_inputs->x.data(), h, capture_inputs->x.size() * sizeof(float)));
        }

        // ---- Attention inputs and KV cache append.
        const float* q_latent = nullptr;  // MLA: indexer query input
        kernels::AttentionArgs at;
        at.precision = options_.attention_precision;
        at.layout = layout;
        at.scale = im.softmax_scale;
        at.num_slots = im.num_slots;
        float* o_heads = nullptr;  // [T, heads · v_dim] (GQA) or latent output (MLA)
        if (c.mla) {
          const int NH = im.q_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim;  // this rank's heads
          const int dv = c.v_head_dim, R = c.kv_lora_rank, QL = c.q_lora_rank, qk = dn + dr;
          IC_ASSIGN_OR_RETURN(float* qa, im.Scratch<float>("qa", static_cast<size_t>(T) * QL));
          IC_ASSIGN_OR_RETURN(float* q, im.Scratch<float>("q", static_cast<size_t>(T) * NH * qk));
          IC_ASSIGN_OR_RETURN(float* kva, im.Scratch<float>("kva", static_cast<size_t>(T) * (R + dr)));
          IC_ASSIGN_OR_RETURN(float* qabs, im.Scratch<float>("qabs", static_cast<size_t>(T) * NH * (R + dr)));
          IC_ASSIGN_OR_RETURN(float* olat, im.Scratch<float>("olat", static_cast<size_t>(T) * NH * R));
          IC_ASSIGN_OR_RETURN(o_heads, im.Scratch<float>("oheads", static_cast<size_t>(T) * NH * dv));
          IC_RETURN_IF_ERROR(Linear(be, qa, h, L.q_a_proj, T, QL, H));
          IC_RETURN_IF_ERROR(be.RmsNorm({.out = qa, .in = qa, .weight = L.q_a_norm, .rows = T, .dim = QL, .eps = eps}));
          q_latent = qa;
          if (capture_inputs != nullptr) {
            capture_inputs->x_q.resize(static_cast<size_t>(T) * QL);
            IC_RETURN_IF_ERROR(be.CopyToHost(capture_inputs->x_q.data(), qa, capture_inputs->x_q.size() * sizeof(float)));
          }
          IC_RETURN_IF_ERROR(Linear(be, q, qa, L.q_b_proj, T, NH * qk, QL));
          IC_RETURN_IF_ERROR(Linear(be, kva, h, L.kv_a_proj, T, R + dr, H));
          IC_RETURN_IF_ERROR(be.RmsNorm({.out = kva, .in = kva, .weight = L.kv_a_norm, .rows = T, .dim = R,
                                         .in_stride = R + dr, .out_stride = R + dr, .eps = eps}));
          RopeArgs rq{.x = q, .positions = d_pos, .inv_freq = im.rope_inv_freq, .tokens = T, .heads = NH,
                      .token_stride = NH * qk, .head_stride = qk, .rot_offset = dn, .rot_dim = dr,
                      .attention_scaling = im.rope_scaling, .style = RopeStyle::kInterleaved};
          IC_RETURN_IF_ERROR(be.Rope(rq));
          RopeArgs rk = rq;
          rk.x = kva;
          rk.heads = 1;
          rk.token_stride = R + dr;
          rk.head_stride = R + dr;
          rk.rot_offset = R;
          IC_RETURN_IF_ERROR(be.Rope(rk));
          IC_RETURN_IF_ERROR(kv_write(im.k_cache[l], kva, R + dr));
          // Absorbed MLA: q_abs[t, h, :R] = q_nope[t, h] · W_UK[h] (W_UK[h]: rows h·(dn+dv)… of kv_b, [dn, R]).
          GemmArgs ab;
          ab.c = qabs;
          ab.a = q;
          SetB(ab, L.kv_b_proj);
          ab.m = T;
          ab.n = R;
          ab.k = dn;
          ab.lda = NH * qk;
          ab.ldb = R;  // kv_b is never a column slice
          ab.ldc = NH * (R + dr);
          ab.b_transposed = false;
          ab.batch = NH;
          ab.stride_a = qk;
          ab.stride_b = static_cast<int64_t>(dn + dv) * R;
          ab.stride_c = R + dr;
          IC_RETURN_IF_ERROR(be.Gemm(ab));
          IC_RETURN_IF_ERROR(be.Copy2D({.dst = qabs + R, .src = q + dn, .rows = T * NH, .cols = dr,
                                        .dst_stride = R + dr, .src_stride = qk}));
          at.out = olat;
          at.q = qabs;
          set_kv(at, im.k_cache[l], im.k_cache[l]);
          at.k_stride = at.v_stride = R + dr;
          at.q_heads = NH;
          at.kv_heads = 1;
          at.qk_dim = R + dr;
          at.v_dim = R;
        } else {
          const int NH = im.q_heads, NKV = im.kv_heads, D = c.head_dim;  // this rank's heads
          IC_ASSIGN_OR_RETURN(float* q, im.Scratch<float>("q", static_cast<size_t>(T) * NH * D));
          IC_ASSIGN_OR_RETURN(float* k, im.Scratch<float>("k", static_cast<size_t>(T) * NKV * D));
          IC_ASSIGN_OR_RETURN(float* v, im.Scratch<float>("v", static_cast<size_t>(T) * NKV * D));
          IC_ASSIGN_OR_RETURN(o_heads, im.Scratch<float>("oheads", static_cast<size_t>(T) * NH * D));
          IC_RETURN_IF_ERROR(Linear(be, q, h, L.q_proj, T, NH * D, H));
          IC_RETURN_IF_ERROR(Linear(be, k, h, L.k_proj, T, NKV * D, H));
          IC_RETURN_IF_ERROR(Linear(be, v, h, L.v_proj, T, NKV * D, H));
          RopeArgs rq{.x = q, .positions = d_pos, .inv_freq = im.rope_inv_freq, .tokens = T, .heads = NH,
                      .token_stride = NH * D, .head_stride = D, .rot_offset = 0, .rot_dim = D,
                      .attention_scaling = im.rope_scaling, .style = RopeStyle::kNeox};
          IC_RETURN_IF_ERROR(be.Rope(rq));
          RopeArgs rk = rq;
          rk.x = k;
          rk.heads = NKV;
          rk.token_stride = NKV * D;
          IC_RETURN_IF_ERROR(be.Rope(rk));
          IC_RETURN_IF_ERROR(kv_write(im.k_cache[l], k, NKV * D));
          IC_RETURN_IF_ERROR(kv_write(im.v_cache[l], v, NKV * D));
          at.out = o_heads;
          at.q = q;
          set_kv(at, im.k_cache[l], im.v_cache[l]);
          at.k_stride = at.v_stride = NKV * D;
          at.q_heads = NH;
          at.kv_heads = NKV;
          at.qk_dim = D;
          at.v_dim = D;
        }

        // ---- Lightning indexer (Full layers) or reuse (Shared layers).
        if (c.has_indexer) {
          if (plan.IsFull(l)) {
            if (profile) IC_RETURN_IF_ERROR(be.Synchronize());
            const double t0 = NowSeconds();
            int mark0 = -1;
            if (timed) {
              IC_ASSIGN_OR_RETURN(mark0, be.TimeMark());
            }
            const int HI = c.index_n_heads, dI = c.index_head_dim;
            const int q_in = c.mla ? c.q_lora_rank : H;
            IC_ASSIGN_OR_RETURN(float* qi, im.Scratch<float>("ix_q", static_cast<size_t>(T) * HI * dI));
            IC_ASSIGN_OR_RETURN(float* ki, im.Scratch<float>("ix_k", static_cast<size_t>(T) * dI));
            IC_ASSIGN_OR_RETURN(float* wi, im.Scratch<float>("ix_w", static_cast<size_t>(T) * HI));
            IC_RETURN_IF_ERROR(Linear(be, qi, c.mla ? q_latent : h, L.ix_wq, T, HI * dI, q_in));
            IC_RETURN_IF_ERROR(Linear(be, ki, h, L.ix_wk, T, dI, H));
            IC_RETURN_IF_ERROR(be.LayerNorm({.out = ki, .in = ki, .weight = L.ix_norm_w, .bias = L.ix_norm_b,
                                             .rows = T, .dim = dI, .eps = 1e-6f}));
            // w scaled by H_I^-½ · d_I^-½ (DeepSeek-V3.2 reference; HF: weights · H^-½, scores · d^-½).
            const float w_scale = 1.0f / std::sqrt(static_cast<float>(HI)) / std::sqrt(static_cast<float>(dI));
            IC_RETURN_IF_ERROR(Linear(be, wi, h, L.ix_weights, T, HI, H, w_scale));
            const RopeStyle style = c.indexer_rope_interleave ? RopeStyle::kInterleaved : RopeStyle::kNeox;
            RopeArgs rq{.x = qi, .positions = d_pos, .inv_freq = im.ix_rope_inv_freq, .tokens = T, .heads = HI,
                        .token_stride = HI * dI, .head_stride = dI, .rot_offset = 0,
                        .rot_dim = c.index_rope_head_dim, .attention_scaling = im.ix_rope_scaling, .style = style};
            IC_RETURN_IF_ERROR(be.Rope(rq));
            RopeArgs rk = rq;
            rk.x = ki;
            rk.heads = 1;
            rk.token_stride = dI;
            IC_RETURN_IF_ERROR(be.Rope(rk));
            const kernels::Precision ip = options_.indexer_precision;
            if (ip == kernels::Precision::kFP8) {
              // DeepSeek-V3.2: q_I and k_I are rotated by an orthonormal Hadamard transform before the FP8
              // quantisation (dot products unchanged; outliers spread over the dims). A power-of-two d_I only.
              if (dI < 1 || dI > 1024 || (dI & (dI - 1)) != 0) {
                return InvalidArgument("indexer_precision FP8 rotates q and k by a Hadamard transform: index_head_dim ",
                                       dI, " must be a power of two in [1, 1024]");
              }
              IC_RETURN_IF_ERROR(be.Hadamard({.x = ki, .rows = T, .dim = dI}));
              IC_RETURN_IF_ERROR(be.Hadamard({.x = qi, .rows = T * HI, .dim = dI}));
            }
            float* ik_f32 = ip == kernels::Precision::kF32 ? static_cast<float*>(im.index_k_cache[l]) : nullptr;
            uint16_t* ik_b16 = ip == kernels::Precision::kBF16 ? static_cast<uint16_t*>(im.index_k_cache[l]) : nullptr;
            uint8_t* ik_fp8 = ip == kernels::Precision::kFP8 ? static_cast<uint8_t*>(im.index_k_cache[l]) : nullptr;
            IC_RETURN_IF_ERROR(be.CacheWrite({.cache = ik_f32, .cache_bf16 = ik_b16, .cache_fp8 = ik_fp8,
                                              .scale = ik_fp8 != nullptr ? im.index_k_scale[l] : nullptr, .src = ki,
                                              .slots = d_slots, .tokens = T, .dim = dI, .cache_stride = dI,
                                              .src_stride = dI, .num_slots = im.num_slots}));
            kernels::IndexerArgs ia;
            ia.indices = topk;
            ia.q = qi;
            ia.w = wi;
            ia.k_cache = ik_f32;
            ia.k_cache_bf16 = ik_b16;
            ia.k_cache_fp8 = ik_fp8;
            ia.k_scale = ik_fp8 != nullptr ? im.index_k_scale[l] : nullptr;
            ia.k_stride = dI;
            ia.num_slots = im.num_slots;
            ia.heads = HI;
            ia.head_dim = dI;
            ia.k = K;
            ia.precision = options_.indexer_precision;
            ia.layout = layout;
            float* d_scores = nullptr;
            int score_cols = 0;
            if (outputs.scores_by_layer != nullptr) {
              score_cols = *std::max_element(h_pos.begin(), h_pos.end()) + 1;
              IC_ASSIGN_OR_RETURN(d_scores, im.Scratch<float>("ix_scores", static_cast<size_t>(T) * score_cols));
              ia.scores = d_scores;
              ia.scores_stride = score_cols;
            }
            if (!sharded_topk) {
              IC_RETURN_IF_ERROR(be.IndexerTopk(ia));
            } else {
              if (d_scores != nullptr) {
                // Audit output under tensor parallel: every row's scores, computed locally (replicated work,
                // no communication; tests and audits only). The indices come from the sharded path below.
                IC_ASSIGN_OR_RETURN(int32_t* audit, im.Scratch<int32_t>("ix_audit_topk", static_cast<size_t>(T) * K));
                kernels::IndexerArgs audit_args = ia;
                audit_args.indices = audit;
                IC_RETURN_IF_ERROR(be.IndexerTopk(audit_args));
              }
              IC_RETURN_IF_ERROR(im.sharded_topk->Select(ia, topk, &st.topk_bytes));
            }
            if (d_scores != nullptr) {
              std::vector<float>& dst = (*outputs.scores_by_layer)[l];
              dst.resize(static_cast<size_t>(T) * score_cols);
              IC_RETURN_IF_ERROR(be.CopyToHost(dst.data(), d_scores, dst.size() * sizeof(float)));
            }
            if (timed) {
              IC_ASSIGN_OR_RETURN(const int mark1, be.TimeMark());
              marks.emplace_back(mark0, mark1);
            } else if (profile) {
              IC_RETURN_IF_ERROR(be.Synchronize());
              const double indexer_seconds = NowSeconds() - t0;
              if (options_.record_metrics) st.full_indexer_seconds.push_back(indexer_seconds);
              pass_indexer_seconds[l] += indexer_seconds;
            }
          } else {
            ++st.shared_layers;
          }
          at.topk = topk;
          at.topk_k = K;
          if (outputs.topk_by_layer != nullptr) {
            std::vector<int32_t>& dst = (*outputs.topk_by_layer)[l];
            dst.resize(static_cast<size_t>(T) * K);
            IC_RETURN_IF_ERROR(be.CopyToHost(dst.data(), topk, dst.size() * sizeof(int32_t)));
          }
        }
        IC_RETURN_IF_ERROR(be.Attention(at));
        if (outputs.attention_by_layer != nullptr) {
          IC_RETURN_IF_ERROR(capture_attention(l, at, /*force_dense=*/false, outputs.attention_by_layer));
        }
        if (outputs.dense_attention_by_layer != nullptr) {
          if (at.topk == nullptr && outputs.attention_by_layer != nullptr) {  // a dense layer: the same numbers
            (*outputs.dense_attention_by_layer)[l] = (*outputs.attention_by_layer)[l];
          } else {
            IC_RETURN_IF_ERROR(capture_attention(l, at, /*force_dense=*/true, outputs.dense_attention_by_layer));
          }
        }

        // ---- Output projection.
        if (c.mla) {
          const int NH = im.q_heads, dn = c.qk_nope_head_dim, dv = c.v_head_dim, R = c.kv_lora_rank;
          // o[t, h] = olat[t, h] · W_UV[h]ᵀ (W_UV[h]: rows h·(dn+dv)+dn … of kv_b, [dv, R]).
          GemmArgs uv;
          uv.c = o_heads;
          uv.a = at.out;
          SetB(uv, L.kv_b_proj.Offset(static_cast<int64_t>(dn) * R));
          uv.m = T;
          uv.n = dv;
          uv.k = R;
          uv.lda = NH * R;
          uv.ldb = R;
          uv.ldc = NH * dv;
          uv.batch = NH;
          uv.stride_a = R;
          uv.stride_b = static_cast<int64_t>(dn + dv) * R;
          uv.stride_c = dv;
          IC_RETURN_IF_ERROR(be.Gemm(uv));
          IC_RETURN_IF_ERROR(Linear(be, attn, o_heads, L.o_proj, T, H, NH * dv));
        } else {
          IC_RETURN_IF_ERROR(Linear(be, attn, o_heads, L.o_proj, T, H, im.q_heads * c.head_dim));
        }
        IC_RETURN_IF_ERROR(all_reduce(attn));
        IC_RETURN_IF_ERROR(Accumulate(be, x, attn, T, H));

        // ---- FFN: dense SwiGLU MLP or MoE.
        IC_RETURN_IF_ERROR(be.RmsNorm({.out = h, .in = x, .weight = L.post_norm, .rows = T, .dim = H, .eps = eps}));
        if (!L.is_moe) {
          IC_RETURN_IF_ERROR(run_mlp(L.mlp, h, attn, T));
          IC_RETURN_IF_ERROR(all_reduce(attn));  // split intermediate (tensor parallel); experts are replicated
          IC_RETURN_IF_ERROR(Accumulate(be, x, attn, T, H));
          continue;
        }
        const int E = c.n_routed_experts, TK = c.num_experts_per_tok;
        IC_ASSIGN_OR_RETURN(float* logits, im.Scratch<float>("router_logits", static_cast<size_t>(T) * E));
        IC_ASSIGN_OR_RETURN(int32_t* eid, im.Scratch<int32_t>("expert_ids", static_cast<size_t>(T) * TK));
        IC_ASSIGN_OR_RETURN(float* ew, im.Scratch<float>("expert_w", static_cast<size_t>(T) * TK));
        IC_RETURN_IF_ERROR(Linear(be, logits, h, Weight{.f32 = L.router}, T, E, H));
        IC_RETURN_IF_ERROR(be.MoeRoute({.expert_ids = eid, .expert_weights = ew, .logits = logits,
                                        .bias = L.router_bias, .tokens = T, .experts = E, .top_k = TK,
                                        .n_group = c.n_group, .topk_group = c.topk_group,
                                        .norm_topk_prob = c.norm_topk_prob,
                                        .routed_scaling_factor = static_cast<float>(c.routed_scaling_factor)}));
        // A few tokens (decode): the fused routed-expert op straight into the residual, with no host round
        // trip of the expert ids; a shared expert of the same size rides along in the same op.
        if (L.expert_table != nullptr && static_cast<int64_t>(T) * TK <= kernels::kMoeFusedMaxPairs) {
          const int inter = L.experts[0].inter;
          // (FP8: the shared expert folds in only if it is FP8 too; MoeExperts takes one kind of weight.)
          const bool fold = L.shared && L.shared->inter == inter && (L.shared->gate.fp8 != nullptr) == im.fp8_weights;
          if (L.shared && !fold) {
            IC_RETURN_IF_ERROR(run_mlp(*L.shared, h, attn, T));
            IC_RETURN_IF_ERROR(Accumulate(be, x, attn, T, H));
          }
          IC_RETURN_IF_ERROR(be.MoeExperts({.out = x, .x = h, .expert_ids = eid, .expert_weights = ew,
                                            .weights = L.expert_table,
                                            .shared_gate = fold ? L.shared->gate.data() : nullptr,
                                            .shared_up = fold ? L.shared->up.data() : nullptr,
                                            .shared_down = fold ? L.shared->down.data() : nullptr,
                                            .bf16 = im.bf16_weights, .tokens = T, .hidden = H, .inter = inter,
                                            .top_k = TK, .experts = E, .fp8 = im.fp8_weights,
                                            .shared_gate_scale = fold ? L.shared->gate.fp8_scale : nullptr,
                                            .shared_up_scale = fold ? L.shared->up.fp8_scale : nullptr,
                                            .shared_down_scale = fold ? L.shared->down.fp8_scale : nullptr}));
          continue;
        }
        // Shared experts first (into attn), then routed experts scatter-added.
        if (L.shared) {
          IC_RETURN_IF_ERROR(run_mlp(*L.shared, h, attn, T));
        } else {
          IC_RETURN_IF_ERROR(be.Memset(attn, 0, static_cast<size_t>(T) * H * sizeof(float)));
        }
        std::vector<int32_t> h_eid(static_cast<size_t>(T) * TK);
        std::vector<float> h_ew(h_eid.size());
        IC_RETURN_IF_ERROR(be.CopyToHost(h_eid.data(), eid, h_eid.size() * sizeof(int32_t)));
        IC_RETURN_IF_ERROR(be.CopyToHost(h_ew.data(), ew, h_ew.size() * sizeof(float)));
        if (im.ep != nullptr) {
          if (im.tp == nullptr || im.tp->size() == 1) {
            IC_RETURN_IF_ERROR(moe_expert_parallel(L, h, T, h_eid, h_ew, attn, 0, T));
          } else {
            // Tensor parallel × expert parallel: rank r of the shard group dispatches rows
            // [T·r/S, T·(r+1)/S) only, so no token's experts run twice; the routed outputs (disjoint rows)
            // are then summed over the group, giving every rank all rows, bitwise identical.
            const int S = im.tp->size(), r = im.tp->rank();
            const int r0 = static_cast<int>(static_cast<int64_t>(T) * r / S);
            const int r1 = static_cast<int>(static_cast<int64_t>(T) * (r + 1) / S);
            IC_ASSIGN_OR_RETURN(float* routed, im.Scratch<float>("ep_routed", static_cast<size_t>(T) * H));
            IC_RETURN_IF_ERROR(be.Memset(routed, 0, static_cast<size_t>(T) * H * sizeof(float)));
            IC_RETURN_IF_ERROR(moe_expert_parallel(L, h, T, h_eid, h_ew, routed, r0, r1));
            IC_RETURN_IF_ERROR(all_reduce(routed));
            IC_RETURN_IF_ERROR(Accumulate(be, attn, routed, T, H));
          }
          IC_RETURN_IF_ERROR(Accumulate(be, x, attn, T, H));
          continue;
        }
        std::vector<std::vector<int32_t>> rows_of(E);
        std::vector<std::vector<float>> w_of(E);
        for (int r = 0; r < T; ++r) {
          for (int j = 0; j < TK; ++j) {
            const int e = h_eid[static_cast<size_t>(r) * TK + j];
            if (e < 0 || e >= E) return absl::InternalError(absl::StrCat("router chose expert ", e));
            rows_of[e].push_back(r);
            w_of[e].push_back(h_ew[static_cast<size_t>(r) * TK + j]);
          }
        }
        std::vector<int32_t> all_rows;
        std::vector<float> all_w;
        std::vector<size_t> offset(E + 1, 0);
        for (int e = 0; e < E; ++e) {
          offset[e] = all_rows.size();
          all_rows.insert(all_rows.end(), rows_of[e].begin(), rows_of[e].end());
          all_w.insert(all_w.end(), w_of[e].begin(), w_of[e].end());
        }
        offset[E] = all_rows.size();
        IC_ASSIGN_OR_RETURN(int32_t* d_rows, im.Scratch<int32_t>("moe_rows", all_rows.size()));
        IC_ASSIGN_OR_RETURN(float* d_w, im.Scratch<float>("moe_w", all_w.size()));
        IC_RETURN_IF_ERROR(be.CopyToDevice(d_rows, all_rows.data(), all_rows.size() * sizeof(int32_t)));
        IC_RETURN_IF_ERROR(be.CopyToDevice(d_w, all_w.data(), all_w.size() * sizeof(float)));
        IC_ASSIGN_OR_RETURN(float* gathered, im.Scratch<float>("moe_in", static_cast<size_t>(T) * H));
        IC_ASSIGN_OR_RETURN(float* eout, im.Scratch<float>("moe_out", static_cast<size_t>(T) * H));
        for (int e = 0; e < E; ++e) {
          const int n = static_cast<int>(offset[e + 1] - offset[e]);
          if (n == 0) continue;
          IC_RETURN_IF_ERROR(be.GatherRows({.out = gathered, .in = h, .rows = d_rows + offset[e], .count = n, .dim = H}));
          IC_RETURN_IF_ERROR(run_mlp(L.experts[e], gathered, eout, n));
          IC_RETURN_IF_ERROR(be.ScatterAddRows({.out = attn, .in = eout, .rows = d_rows + offset[e],
                                                .scale = d_w + offset[e], .count = n, .dim = H}));
        }
        IC_RETURN_IF_ERROR(Accumulate(be, x, attn, T, H));
      }
      if (profile) IC_RETURN_IF_ERROR(mark_layer_boundary(-1));
      return absl::OkStatus();
    };

    // ---- Final norm + LM head, only on the rows asked for (d_rows: n row indices on the device).
    auto head_logits = [&](const int32_t* d_rows, int n, float* logits) -> absl::Status {
      IC_ASSIGN_OR_RETURN(float* rows, im.Scratch<float>("head_in", static_cast<size_t>(n) * H));
      IC_RETURN_IF_ERROR(be.GatherRows({.out = rows, .in = x, .rows = d_rows, .count = n, .dim = H}));
      IC_RETURN_IF_ERROR(be.RmsNorm({.out = rows, .in = rows, .weight = im.final_norm, .rows = n, .dim = H, .eps = eps}));
      return Linear(be, logits, rows, im.lm_head, n, c.vocab_size, H);
    };

    if (graph_mode) {  // one decode step from a CUDA graph (captured at the first step of its shape)
      int32_t* d_rows = nullptr;
      float* logits = nullptr;
      if (outputs.last_logits != nullptr) {
        IC_ASSIGN_OR_RETURN(d_rows, im.Scratch<int32_t>("head_rows", S));
        IC_ASSIGN_OR_RETURN(logits, im.Scratch<float>("logits", static_cast<size_t>(S) * c.vocab_size));
        IC_RETURN_IF_ERROR(be.CopyToDevice(d_rows, last_rows.data(), S * sizeof(int32_t)));
      }
      auto step = [&](ForwardPassStats& st, std::vector<std::pair<int, int>>& marks, bool timed) -> absl::Status {
        IC_RETURN_IF_ERROR(run_layers(st, marks, timed));
        return logits != nullptr ? head_logits(d_rows, S, logits) : absl::OkStatus();
      };
      const Impl::GraphKey key{S, max_blocks, logits != nullptr};
      Impl::DecodeGraph* replayed = nullptr;
      const int64_t captures_before = im.graph_stats.captures, failures_before = im.graph_stats.capture_failures;
      const bool time_graph = mark_indexer && c.has_indexer;  // a model without an indexer needs no timed graph
      IC_ASSIGN_OR_RETURN(replayed, im.RunDecodeGraph(key, step, time_graph, stats, indexer_marks));
      if (logits != nullptr) {
        IC_RETURN_IF_ERROR(be.CopyToHost(outputs.last_logits, logits,
                                         static_cast<size_t>(S) * c.vocab_size * sizeof(float)));
      }
      IC_RETURN_IF_ERROR(be.Synchronize());
      for (const auto& [m0, m1] : indexer_marks) {
        IC_ASSIGN_OR_RETURN(const double seconds, be.SecondsBetween(m0, m1));
        stats.full_indexer_seconds.push_back(seconds);
      }
      if (replayed != nullptr && time_graph) {
        // A timed replay refreshes the shape's sample; the untimed ones between report it.
        if (!indexer_marks.empty()) replayed->sampled_indexer_seconds = stats.full_indexer_seconds;
        if (indexer_marks.empty()) stats.full_indexer_seconds = replayed->sampled_indexer_seconds;
      }
      stats.graph_step = replayed != nullptr ? GraphStep::kReplay : GraphStep::kEager;
      IC_RETURN_IF_ERROR(im.CaptureDecodeGraphIfDue(key, step, time_graph));
      stats.graph_captures = static_cast<int>(im.graph_stats.captures - captures_before);
      stats.graph_capture_failures = static_cast<int>(im.graph_stats.capture_failures - failures_before);
      return absl::OkStatus();
    }

    IC_RETURN_IF_ERROR(run_layers(stats, indexer_marks, mark_indexer));
    auto head = [&](const int32_t* h_rows, int n, float* host_out, bool want_loss) -> absl::Status {
      IC_ASSIGN_OR_RETURN(int32_t* d_rows, im.Scratch<int32_t>("head_rows", n));
      IC_ASSIGN_OR_RETURN(float* logits, im.Scratch<float>("logits", static_cast<size_t>(n) * c.vocab_size));
      IC_RETURN_IF_ERROR(be.CopyToDevice(d_rows, h_rows, n * sizeof(int32_t)));
      IC_RETURN_IF_ERROR(head_logits(d_rows, n, logits));
      if (host_out != nullptr) {
        IC_RETURN_IF_ERROR(be.CopyToHost(host_out, logits, static_cast<size_t>(n) * c.vocab_size * sizeof(float)));
      }
      if (want_loss) {
        IC_ASSIGN_OR_RETURN(int32_t* d_tgt, im.Scratch<int32_t>("targets", n));
        IC_ASSIGN_OR_RETURN(float* d_loss, im.Scratch<float>("loss", n));
        IC_RETURN_IF_ERROR(be.CopyToDevice(d_tgt, outputs.targets.data(), n * sizeof(int32_t)));
        IC_RETURN_IF_ERROR(be.CrossEntropy({.loss = d_loss, .logits = logits, .targets = d_tgt, .tokens = n,
                                            .vocab = c.vocab_size}));
        IC_RETURN_IF_ERROR(be.CopyToHost(outputs.token_loss, d_loss, n * sizeof(float)));
      }
      return absl::OkStatus();
    };
    if (outputs.all_logits != nullptr || outputs.token_loss != nullptr) {
      if (outputs.token_loss != nullptr && outputs.targets.empty()) {
        return InvalidArgument("token_loss requested without targets");
      }
      std::vector<int32_t> all(T);
      std::iota(all.begin(), all.end(), 0);
      IC_RETURN_IF_ERROR(head(all.data(), T, outputs.all_logits, outputs.token_loss != nullptr));
    }
    if (outputs.last_logits != nullptr) IC_RETURN_IF_ERROR(head(last_rows.data(), S, outputs.last_logits, false));
    IC_RETURN_IF_ERROR(be.Synchronize());
    for (const auto& [m0, m1] : indexer_marks) {
      IC_ASSIGN_OR_RETURN(const double seconds, be.SecondsBetween(m0, m1));
      stats.full_indexer_seconds.push_back(seconds);
    }
    return absl::OkStatus();
  }();

  if (!status.ok()) {
    rollback();
    return status;
  }
  for (size_t s = 0; s < segments.size(); ++s) {
    im.sequences[segments[s].seq_id].length = start[s] + static_cast<int64_t>(segments[s].tokens.size());
  }
  if (profile) {
    LayerProfile& p = im.profile;
    const double pass_seconds = NowSeconds() - t_pass;
    double layers = 0;
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      p.layer_seconds[l] += pass_layer_seconds[l];
      p.indexer_seconds[l] += pass_indexer_seconds[l];
      layers += pass_layer_seconds[l];
    }
    p.total_seconds += pass_seconds;
    p.other_seconds += std::max(pass_seconds - layers, 0.0);
    ++p.passes;
  }
  if (options_.record_metrics) {
    const bool decode = std::all_of(segments.begin(), segments.end(),
                                    [](const Segment& s) { return s.tokens.size() == 1; }) &&
                        start[0] > 0;
    stats.phase = decode ? Phase::kDecode : Phase::kPrefill;
    stats.seconds = NowSeconds() - t_pass;
    stats.tokens = total;
    Metrics::Global().RecordForwardPass(stats);
  }
  record_communication();
  return absl::OkStatus();
}

}  // namespace ic
