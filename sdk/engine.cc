// The DSA runtime (engine.h): sequences, paged caches, and the forward pass over the kernel interface.
#include "sdk/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <string_view>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "parallel/communicator.h"
#include "sdk/engine_impl.h"
#include "sdk/status.h"

namespace ic {

using kernels::Backend;
using kernels::DeviceKind;

double LossResult::perplexity() const { return std::exp(mean_loss); }

namespace {

// The o_proj / MLP all-reduces run on the backend's buffers: a CUDA context needs a communicator on
// device memory (NCCL), a CPU context one on host memory (in-process).
absl::Status CheckGroupBuffers(const parallel::Communicator& comm, DeviceKind device, const char* field) {
  const bool nccl = std::string_view(comm.backend_name()) == "nccl";
  if (device == DeviceKind::kCuda && !nccl) {
    return absl::InvalidArgumentError(absl::StrCat("ContextOptions::", field, " is a '", comm.backend_name(),
                                                   "' communicator (host buffers); a CUDA context needs NCCL"));
  }
  if (device == DeviceKind::kCpu && nccl) {
    return absl::InvalidArgumentError(absl::StrCat("ContextOptions::", field,
                                                   " is an NCCL communicator (device buffers); a CPU context needs "
                                                   "an in-process one"));
  }
  return absl::OkStatus();
}

}  // namespace

Context::~Context() = default;

absl::StatusOr<std::unique_ptr<Context>> Context::Create(std::shared_ptr<const Model> model,
                                                         const ContextOptions& options) {
  if (model == nullptr) return InvalidArgument("model is null");
  if (options.block_size < 1 || options.block_size > 4096) {
    return InvalidArgument("block_size must be in [1, 4096], got ", options.block_size);
  }
  if (options.max_tokens < 1) return InvalidArgument("max_tokens must be positive, got ", options.max_tokens);
  // Cache slots are int32 (block tables, slot mappings): the capacity must fit.
  if (options.max_tokens > int64_t{std::numeric_limits<int32_t>::max()} - options.block_size + 1) {
    return InvalidArgument("max_tokens = ", options.max_tokens, " exceeds the int32 slot range (at most ",
                           int64_t{std::numeric_limits<int32_t>::max()} - options.block_size + 1, " tokens)");
  }
  if (options.attention_precision != kernels::Precision::kF32 &&
      options.attention_precision != kernels::Precision::kBF16) {
    return InvalidArgument("attention_precision must be F32 or BF16 (FP8 is for the indexer and the weights), got ",
                           static_cast<int>(options.attention_precision));
  }
  if (options.indexer_precision != kernels::Precision::kF32 && options.indexer_precision != kernels::Precision::kBF16 &&
      options.indexer_precision != kernels::Precision::kFP8) {
    return InvalidArgument("indexer_precision must be F32, BF16 or FP8, got ",
                           static_cast<int>(options.indexer_precision));
  }
  if (options.weight_precision != kernels::Precision::kF32 && options.weight_precision != kernels::Precision::kBF16 &&
      options.weight_precision != kernels::Precision::kFP8) {
    return InvalidArgument("weight_precision must be F32, BF16 or FP8, got ", static_cast<int>(options.weight_precision));
  }
  if (options.prefill_chunk < 1) {
    return InvalidArgument("prefill_chunk must be positive, got ", options.prefill_chunk);
  }
  const ModelConfig& c = model->config;
  std::unique_ptr<Context> ctx(new Context());
  ctx->model_ = model;
  ctx->options_ = options;
  if (!options.plan.empty()) {
    IC_ASSIGN_OR_RETURN(ctx->plan_, ParsePlan(options.plan, c.num_hidden_layers));
    ctx->plan_.source = "context parameter";
  } else {
    ctx->plan_ = model->plan;
  }
  IC_RETURN_IF_ERROR(CheckIndexersForPlan(*model, ctx->plan_));
  TensorParallelPlan tp_plan;
  if (options.shard_group != nullptr) {
    IC_ASSIGN_OR_RETURN(tp_plan, PlanTensorParallel(c, options.shard_group->size(), options.shard_group->rank()));
    IC_RETURN_IF_ERROR(CheckGroupBuffers(*options.shard_group, options.device, "shard_group"));
  }
  if (options.expert_group != nullptr) {
    const int P = options.expert_group->size();
    if (c.n_routed_experts == 0) {
      return InvalidArgument("expert parallel (ContextOptions::expert_group) needs a MoE model; this one has no "
                             "routed experts");
    }
    if (c.n_routed_experts % P != 0) {
      return InvalidArgument("expert parallel: n_routed_experts ", c.n_routed_experts,
                             " is not divisible by the expert group size ", P);
    }
    IC_RETURN_IF_ERROR(CheckGroupBuffers(*options.expert_group, options.device, "expert_group"));
  }
  IC_ASSIGN_OR_RETURN(ctx->backend_, kernels::CreateBackend(options.device, options.device_ordinal));

  ctx->impl_ = std::make_unique<Impl>();
  Impl& im = *ctx->impl_;
  im.backend = ctx->backend_.get();
  im.bf16_weights = options.weight_precision == kernels::Precision::kBF16;
  im.fp8_weights = options.weight_precision == kernels::Precision::kFP8;
  im.q_heads = c.num_attention_heads;
  im.kv_heads = c.mla ? 1 : c.num_key_value_heads;
  if (options.shard_group != nullptr) {
    im.tp = options.shard_group;
    im.tp_plan = tp_plan;
    im.q_heads = tp_plan.q_heads.count;
    if (!c.mla) im.kv_heads = tp_plan.kv_heads.count;
    Impl* impl = &im;
    im.sharded_topk = std::make_unique<ShardedTopk>(
        im.tp, im.backend, [impl](const std::string& name, size_t bytes) -> absl::StatusOr<void*> {
          IC_ASSIGN_OR_RETURN(char* p, impl->Scratch<char>(name, bytes));
          return static_cast<void*>(p);
        });
  }
  if (options.expert_group != nullptr) {
    im.ep = options.expert_group;
    im.local_experts = c.n_routed_experts / im.ep->size();
    im.expert_begin = im.ep->rank() * im.local_experts;
  } else {
    im.local_experts = c.n_routed_experts;
  }
  const ModelWeights& w = model->weights;
  IC_ASSIGN_OR_RETURN(im.embed, im.Upload(w.embed_tokens));
  IC_ASSIGN_OR_RETURN(im.final_norm, im.Upload(w.final_norm));
  if (w.lm_head.empty() && !im.bf16_weights && !im.fp8_weights) {
    im.lm_head.f32 = im.embed;  // tied: the embedding table itself
  } else {  // (tied with BF16 or FP8 weights: a BF16 copy of the embedding table; the embedding stays F32)
    IC_ASSIGN_OR_RETURN(im.lm_head, im.UploadWeight(w.output_embedding(), /*fp8_ok=*/false));
  }
  im.layers.resize(c.num_hidden_layers);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const LayerWeights& lw = w.layers[i];
    Impl::Layer& L = im.layers[i];
    IC_ASSIGN_OR_RETURN(L.input_norm, im.Upload(lw.input_norm));
    IC_ASSIGN_OR_RETURN(L.post_norm, im.Upload(lw.post_attention_norm));
    IC_ASSIGN_OR_RETURN(L.q_a_proj, im.UploadWeight(lw.q_a_proj));
    IC_ASSIGN_OR_RETURN(L.q_a_norm, im.Upload(lw.q_a_norm));
    IC_ASSIGN_OR_RETURN(L.kv_a_proj, im.UploadWeight(lw.kv_a_proj));
    IC_ASSIGN_OR_RETURN(L.kv_a_norm, im.Upload(lw.kv_a_norm));
    if (im.tp == nullptr) {
      IC_ASSIGN_OR_RETURN(L.q_proj, im.UploadWeight(lw.q_proj));
      IC_ASSIGN_OR_RETURN(L.k_proj, im.UploadWeight(lw.k_proj));
      IC_ASSIGN_OR_RETURN(L.v_proj, im.UploadWeight(lw.v_proj));
      IC_ASSIGN_OR_RETURN(L.q_b_proj, im.UploadWeight(lw.q_b_proj));
      IC_ASSIGN_OR_RETURN(L.kv_b_proj, im.UploadWeight(lw.kv_b_proj, /*fp8_ok=*/false));
      IC_ASSIGN_OR_RETURN(L.o_proj, im.UploadWeight(lw.o_proj));
    } else {
      // This rank's heads (tensor_parallel.h): MLA q_b / kv_b rows and o_proj columns; GQA q rows, the
      // rank's KV heads' k / v rows and o_proj columns. The latent projections stay replicated.
      const int h0 = tp_plan.q_heads.begin, nh = tp_plan.q_heads.count;
      if (c.mla) {
        const int qk = c.qk_nope_head_dim + c.qk_rope_head_dim, kvb = c.qk_nope_head_dim + c.v_head_dim;
        IC_ASSIGN_OR_RETURN(L.q_b_proj, im.UploadWeightRows(lw.q_b_proj, int64_t{h0} * qk, int64_t{nh} * qk));
        IC_ASSIGN_OR_RETURN(L.kv_b_proj,
                            im.UploadWeightRows(lw.kv_b_proj, int64_t{h0} * kvb, int64_t{nh} * kvb, /*fp8_ok=*/false));
        IC_ASSIGN_OR_RETURN(L.o_proj,
                            im.UploadWeightCols(lw.o_proj, int64_t{h0} * c.v_head_dim, int64_t{nh} * c.v_head_dim));
      } else {
        const int D = c.head_dim, kv0 = tp_plan.kv_heads.begin, nkv = tp_plan.kv_heads.count;
        IC_ASSIGN_OR_RETURN(L.q_proj, im.UploadWeightRows(lw.q_proj, int64_t{h0} * D, int64_t{nh} * D));
        IC_ASSIGN_OR_RETURN(L.k_proj, im.UploadWeightRows(lw.k_proj, int64_t{kv0} * D, int64_t{nkv} * D));
        IC_ASSIGN_OR_RETURN(L.v_proj, im.UploadWeightRows(lw.v_proj, int64_t{kv0} * D, int64_t{nkv} * D));
        IC_ASSIGN_OR_RETURN(L.o_proj, im.UploadWeightCols(lw.o_proj, int64_t{h0} * D, int64_t{nh} * D));
      }
    }
    if (c.has_indexer && ctx->plan_.IsFull(i)) {  // Shared layers: no indexer weights uploaded
      IC_ASSIGN_OR_RETURN(L.ix_wq, im.UploadWeight(lw.indexer.wq, /*fp8_ok=*/false));
      IC_ASSIGN_OR_RETURN(L.ix_wk, im.UploadWeight(lw.indexer.wk, /*fp8_ok=*/false));
      IC_ASSIGN_OR_RETURN(L.ix_norm_w, im.Upload(lw.indexer.k_norm_weight));
      IC_ASSIGN_OR_RETURN(L.ix_norm_b, im.Upload(lw.indexer.k_norm_bias));
      IC_ASSIGN_OR_RETURN(L.ix_weights, im.UploadWeight(lw.indexer.weights_proj, /*fp8_ok=*/false));
    }
    L.is_moe = lw.is_moe;
    if (lw.is_moe) {
      IC_ASSIGN_OR_RETURN(L.router, im.Upload(lw.moe.router));
      IC_ASSIGN_OR_RETURN(L.router_bias, im.Upload(lw.moe.correction_bias));
      for (int e = im.expert_begin; e < im.expert_begin + im.local_experts; ++e) {  // this rank's experts
        IC_ASSIGN_OR_RETURN(Impl::Mlp m, im.UploadMlp(lw.moe.experts[e]));
        L.experts.push_back(m);
      }
      if (im.ep == nullptr) {
        IC_ASSIGN_OR_RETURN(L.expert_table, im.UploadExpertTable(L.experts));
      }
      if (lw.moe.shared) {
        IC_ASSIGN_OR_RETURN(Impl::Mlp m, im.UploadMlp(*lw.moe.shared));
        L.shared = m;
      }
    } else if (im.tp == nullptr) {
      IC_ASSIGN_OR_RETURN(L.mlp, im.UploadMlp(lw.mlp));
    } else {
      const int64_t inter = lw.mlp.gate.rows();
      if (inter < tp_plan.size) {
        return InvalidArgument("tensor parallel: layer ", i, " has a dense MLP of intermediate size ", inter,
                               ", smaller than the shard group size ", tp_plan.size);
      }
      IC_ASSIGN_OR_RETURN(L.mlp, im.UploadMlpSlice(lw.mlp, tp_plan.MlpRange(inter)));
    }
  }

  // RoPE tables.
  const int rope_dim = c.mla ? c.qk_rope_head_dim : c.head_dim;
  RopeTables rope = ComputeRope(c.rope, rope_dim, c.max_position_embeddings);
  IC_ASSIGN_OR_RETURN(im.rope_inv_freq, im.UploadVector(rope.inv_freq));
  im.rope_scaling = rope.attention_scaling;
  if (c.has_indexer) {
    RopeTables ix_rope = ComputeRope(c.rope, c.index_rope_head_dim, c.max_position_embeddings);
    IC_ASSIGN_OR_RETURN(im.ix_rope_inv_freq, im.UploadVector(ix_rope.inv_freq));
    im.ix_rope_scaling = ix_rope.attention_scaling;
  }
  im.softmax_scale = AttentionSoftmaxScale(c);

  // Caches.
  im.num_blocks = (options.max_tokens + options.block_size - 1) / options.block_size;
  im.num_slots = im.num_blocks * options.block_size;
  if (c.mla) {
    im.kv_entry = c.kv_lora_rank + c.qk_rope_head_dim;
  } else {
    im.kv_entry = im.kv_heads * c.head_dim;  // this rank's KV heads (all of them on a single rank)
    im.v_entry = im.kv_entry;
  }
  im.kv_bf16 = options.attention_precision == kernels::Precision::kBF16;
  auto alloc_cache = [&](size_t bytes_per_slot) -> absl::StatusOr<void*> {
    const size_t bytes = static_cast<size_t>(im.num_slots) * bytes_per_slot;
    absl::StatusOr<void*> p = im.backend->Allocate(bytes);
    if (!p.ok()) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate the cache for max_tokens=",
                                                       options.max_tokens, " (", bytes, " bytes per layer): ",
                                                       p.status().message()));
    }
    return *p;
  };
  im.k_cache.assign(c.num_hidden_layers, nullptr);
  im.v_cache.assign(c.num_hidden_layers, nullptr);
  im.index_k_cache.assign(c.num_hidden_layers, nullptr);
  im.index_k_scale.assign(c.num_hidden_layers, nullptr);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    IC_ASSIGN_OR_RETURN(im.k_cache[i], alloc_cache(im.kv_entry * im.kv_elem_bytes()));
    if (!c.mla) {
      IC_ASSIGN_OR_RETURN(im.v_cache[i], alloc_cache(im.v_entry * im.kv_elem_bytes()));
    }
    if (c.has_indexer && ctx->plan_.IsFull(i)) {  // index-K cache for Full layers only
      // BF16: index_head_dim uint16 per slot (the room of ⌈d/2⌉ floats); FP8: d bytes (⌈d/4⌉ floats) plus
      // one F32 scale per slot.
      const kernels::Precision ip = options.indexer_precision;
      const int floats = ip == kernels::Precision::kBF16  ? (c.index_head_dim + 1) / 2
                         : ip == kernels::Precision::kFP8 ? (c.index_head_dim + 3) / 4
                                                          : c.index_head_dim;
      IC_ASSIGN_OR_RETURN(im.index_k_cache[i], alloc_cache(floats * sizeof(float)));
      if (ip == kernels::Precision::kFP8) {
        IC_ASSIGN_OR_RETURN(void* scale, alloc_cache(sizeof(float)));
        im.index_k_scale[i] = static_cast<float*>(scale);
      }
    }
  }
  if (options.profile_layers) {
    im.profile.layer_seconds.assign(c.num_hidden_layers, 0.0);
    im.profile.indexer_seconds.assign(c.num_hidden_layers, 0.0);
  }
  im.free_blocks.resize(im.num_blocks);
  // Hand out low block ids first.
  std::iota(im.free_blocks.rbegin(), im.free_blocks.rend(), 0);
  return ctx;
}

absl::StatusOr<int> Context::AddSequence() {
  const int id = impl_->next_seq_id++;
  impl_->sequences[id] = {};
  return id;
}

absl::Status Context::RemoveSequence(int seq_id) {
  auto it = impl_->sequences.find(seq_id);
  if (it == impl_->sequences.end()) return absl::NotFoundError(absl::StrCat("no sequence with id ", seq_id));
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b) impl_->free_blocks.push_back(*b);
  impl_->sequences.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Context::SequenceLength(int seq_id) const {
  auto it = impl_->sequences.find(seq_id);
  if (it == impl_->sequences.end()) return absl::NotFoundError(absl::StrCat("no sequence with id ", seq_id));
  return it->second.length;
}

absl::StatusOr<int> Context::ForkSequence(int src_seq_id) {
  Impl& im = *impl_;
  auto it = im.sequences.find(src_seq_id);
  if (it == im.sequences.end()) {
    return absl::NotFoundError(absl::StrCat("fork: no sequence with id ", src_seq_id));
  }
  const Impl::Sequence& src = it->second;
  const size_t n = src.blocks.size();
  if (n > im.free_blocks.size()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: fork of sequence ", src_seq_id, " (", src.length,
                                                     " tokens) needs ", n, " cache block(s) of ", options_.block_size,
                                                     " tokens; free: ", im.free_blocks.size()));
  }
  Impl::Sequence copy;
  copy.length = src.length;
  for (size_t b = 0; b < n; ++b) {
    copy.blocks.push_back(im.free_blocks.back());
    im.free_blocks.pop_back();
  }
  // Whole blocks, every layer's KV (and V) cache and each Full layer's index-K cache; the tail of a
  // partial last block is copied too (never read: positions ≥ length are masked).
  const size_t bs = static_cast<size_t>(options_.block_size);
  const ModelConfig& c = model_->config;
  absl::Status status;
  auto copy_blocks = [&](void* cache, size_t entry_bytes) -> absl::Status {
    if (cache == nullptr) return absl::OkStatus();
    char* base = static_cast<char*>(cache);
    const size_t block_bytes = bs * entry_bytes;
    for (size_t b = 0; b < n; ++b) {
      IC_RETURN_IF_ERROR(backend_->CopyOnDevice(base + copy.blocks[b] * block_bytes,
                                                base + src.blocks[b] * block_bytes, block_bytes));
    }
    return absl::OkStatus();
  };
  const kernels::Precision ip = options_.indexer_precision;
  const size_t ik_elem = ip == kernels::Precision::kFP8 ? 1 : ip == kernels::Precision::kBF16 ? 2 : 4;
  for (int l = 0; l < c.num_hidden_layers && status.ok(); ++l) {
    status = copy_blocks(im.k_cache[l], im.kv_elem_bytes() * im.kv_entry);
    if (status.ok()) status = copy_blocks(im.v_cache[l], im.kv_elem_bytes() * im.v_entry);
    if (status.ok()) status = copy_blocks(im.index_k_cache[l], ik_elem * c.index_head_dim);
    if (status.ok()) status = copy_blocks(im.index_k_scale[l], sizeof(float));
  }
  if (status.ok()) status = backend_->Synchronize();
  if (!status.ok()) {
    for (auto b = copy.blocks.rbegin(); b != copy.blocks.rend(); ++b) im.free_blocks.push_back(*b);
    return status;
  }
  const int id = im.next_seq_id++;
  im.sequences[id] = std::move(copy);
  return id;
}

const LayerProfile& Context::layer_profile() const { return impl_->profile; }

const DecodeGraphStats& Context::decode_graph_stats() const { return impl_->graph_stats; }

void Context::SetCudaGraphs(bool enabled) {
  options_.cuda_graphs = enabled;
  if (!enabled) {
    impl_->decode_graphs.clear();
    impl_->graph_stats.graphs = 0;
  }
}

void Context::ResetLayerProfile() {
  LayerProfile& p = impl_->profile;
  std::fill(p.layer_seconds.begin(), p.layer_seconds.end(), 0.0);
  std::fill(p.indexer_seconds.begin(), p.indexer_seconds.end(), 0.0);
  p.other_seconds = p.total_seconds = 0;
  p.passes = 0;
}

int64_t Context::FreeTokens() const {
  return static_cast<int64_t>(impl_->free_blocks.size()) * options_.block_size;
}

Context::CacheBytes Context::cache_bytes() const {
  CacheBytes b;
  const ModelConfig& c = model_->config;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    b.kv += impl_->num_slots * (impl_->kv_entry + (c.mla ? 0 : impl_->v_entry)) *
            static_cast<int64_t>(impl_->kv_elem_bytes());
    const kernels::Precision ip = options_.indexer_precision;
    const int64_t ik_bytes = ip == kernels::Precision::kFP8    ? c.index_head_dim + 4  // + the scale
                             : ip == kernels::Precision::kBF16 ? 2 * c.index_head_dim
                                                               : 4 * c.index_head_dim;
    if (impl_->index_k_cache[i] != nullptr) b.index_k += impl_->num_slots * ik_bytes;
  }
  return b;
}

absl::Status Context::Prefill(int seq_id, std::span<const int32_t> tokens, float* last_logits) {
  if (tokens.empty()) return InvalidArgument("prefill of sequence ", seq_id, ": no tokens");
  IC_ASSIGN_OR_RETURN(const int64_t start_len, SequenceLength(seq_id));
  // Validate all chunks up front so that an error leaves the sequence as it was.
  const int vocab = model_->config.vocab_size;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return InvalidArgument("token id ", tokens[i], " at index ", i, " is outside the vocabulary [0, ", vocab,
                             ")");
    }
  }
  const int64_t need_blocks =
      (start_len + static_cast<int64_t>(tokens.size()) + options_.block_size - 1) / options_.block_size -
      static_cast<int64_t>(impl_->sequences[seq_id].blocks.size());
  if (need_blocks > static_cast<int64_t>(impl_->free_blocks.size())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: prefill of ", tokens.size(), " tokens needs ", need_blocks, " more cache block(s) of ",
        options_.block_size, " tokens; free: ", impl_->free_blocks.size(), " (capacity ", impl_->num_slots,
        " tokens)"));
  }
  for (size_t off = 0; off < tokens.size(); off += options_.prefill_chunk) {
    const size_t n = std::min<size_t>(options_.prefill_chunk, tokens.size() - off);
    Segment seg{seq_id, tokens.subspan(off, n)};
    ForwardOutputs out;
    if (off + n == tokens.size()) out.last_logits = last_logits;
    absl::Status s = Forward({&seg, 1}, out);
    if (!s.ok()) {
      // Roll back the chunks already appended.
      Impl::Sequence& sq = impl_->sequences[seq_id];
      sq.length = start_len;
      const size_t keep = (start_len + options_.block_size - 1) / options_.block_size;
      while (sq.blocks.size() > keep) {
        impl_->free_blocks.push_back(sq.blocks.back());
        sq.blocks.pop_back();
      }
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status Context::Decode(std::span<const int> seq_ids, std::span<const int32_t> tokens, float* logits) {
  if (seq_ids.size() != tokens.size()) {
    return InvalidArgument("decode: ", seq_ids.size(), " sequence ids but ", tokens.size(), " tokens");
  }
  if (seq_ids.empty()) return InvalidArgument("decode: empty batch");
  std::vector<Segment> segs(seq_ids.size());
  for (size_t i = 0; i < seq_ids.size(); ++i) segs[i] = {seq_ids[i], tokens.subspan(i, 1)};
  ForwardOutputs out;
  out.last_logits = logits;
  return Forward(segs, out);
}

absl::Status Context::IdleStep() {
  if (impl_->ep == nullptr) return absl::OkStatus();
  return Forward({}, {});
}

absl::StatusOr<LossResult> Context::EvalLoss(std::span<const int32_t> tokens) {
  if (tokens.size() < 2) return InvalidArgument("loss needs at least 2 tokens, got ", tokens.size());
  const int64_t capacity = FreeTokens();
  if (static_cast<int64_t>(tokens.size()) > capacity) {
    return absl::ResourceExhaustedError(absl::StrCat("loss over ", tokens.size(), " tokens: only ", capacity,
                                                     " tokens of KV cache are free"));
  }
  IC_ASSIGN_OR_RETURN(int seq, AddSequence());
  double total = 0;
  std::vector<float> losses;
  absl::Status status;
  for (size_t off = 0; off < tokens.size() && status.ok(); off += options_.prefill_chunk) {
    const size_t n = std::min<size_t>(options_.prefill_chunk, tokens.size() - off);
    Segment seg{seq, tokens.subspan(off, n)};
    std::vector<int32_t> targets(n);
    for (size_t i = 0; i < n; ++i) targets[i] = off + i + 1 < tokens.size() ? tokens[off + i + 1] : -1;
    losses.assign(n, 0.0f);
    ForwardOutputs out;
    out.targets = targets;
    out.token_loss = losses.data();
    status = Forward({&seg, 1}, out);
    for (float l : losses) total += l;
  }
  IC_RETURN_IF_ERROR(RemoveSequence(seq));
  IC_RETURN_IF_ERROR(status);
  LossResult r;
  r.tokens = static_cast<int64_t>(tokens.size()) - 1;
  r.mean_loss = total / static_cast<double>(r.tokens);
  return r;
}

}  // namespace ic
