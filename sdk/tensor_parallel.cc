// Tensor parallelism of the engine (tensor_parallel.h): the sharding plan and the sharded top-k.
#include "sdk/tensor_parallel.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "parallel/sharded_topk.h"
#include "sdk/status.h"

namespace ic {

using parallel::RowRange;
using parallel::TopkCandidate;

parallel::RowRange TensorParallelPlan::MlpRange(int64_t inter) const {
  return RowRange{inter * rank / size, inter * (rank + 1) / size};
}

absl::StatusOr<TensorParallelPlan> PlanTensorParallel(const ModelConfig& c, int size, int rank) {
  if (size < 1 || rank < 0 || rank >= size) {
    return InvalidArgument("shard group: rank ", rank, " of size ", size, " is not a valid rank");
  }
  const int NH = c.num_attention_heads;
  if (NH < 1 || NH % size != 0) {
    return InvalidArgument("tensor parallel: num_attention_heads = ", NH,
                           " is not divisible by the shard group size ", size);
  }
  TensorParallelPlan p;
  p.size = size;
  p.rank = rank;
  IC_ASSIGN_OR_RETURN(p.q_heads, parallel::QueryHeadShard(NH, size, rank));
  if (c.mla) {
    p.kv_heads = {0, 1, size > 1};
  } else {
    const int NKV = c.num_key_value_heads;
    // Replicated KV heads work only when every rank's query heads use exactly one KV head, i.e. tp is a
    // multiple of the KV heads; otherwise the rank's local head → KV head mapping is not uniform.
    if (NKV < 1 || (NKV % size != 0 && size % NKV != 0)) {
      return InvalidArgument("tensor parallel: num_key_value_heads = ", NKV, " and the shard group size ", size,
                             " do not divide one another");
    }
    IC_ASSIGN_OR_RETURN(p.kv_heads, parallel::KvHeadShard(NH, NKV, size, rank));
  }
  return p;
}

absl::Status ShardedTopk::BeginPass(const Pass& pass, int k) {
  k_ = k;
  rows_ = static_cast<int>(pass.pos.size());
  decode_ = pass.decode;
  const int tp = comm_->size(), rank = comm_->rank();
  if (!decode_) {
    IC_ASSIGN_OR_RETURN(split_, parallel::ZigZagRows(rows_, tp, rank));
    std::vector<int32_t> rows, seq, pos;
    for (const RowRange& r : split_.ranges) {
      for (int64_t t = r.begin; t < r.end; ++t) {
        rows.push_back(static_cast<int32_t>(t));
        seq.push_back(pass.seq[t]);
        pos.push_back(pass.pos[t]);
      }
    }
    const int n = static_cast<int>(rows.size());
    sub_ = pass.device;
    sub_.tokens = n;
    if (n > 0) {
      IC_ASSIGN_OR_RETURN(d_local_rows_, Scratch<int32_t>("tp_rows", n));
      IC_ASSIGN_OR_RETURN(int32_t* d_seq, Scratch<int32_t>("tp_seq", n));
      IC_ASSIGN_OR_RETURN(int32_t* d_pos, Scratch<int32_t>("tp_pos", n));
      IC_RETURN_IF_ERROR(be_->CopyToDevice(d_local_rows_, rows.data(), n * sizeof(int32_t)));
      IC_RETURN_IF_ERROR(be_->CopyToDevice(d_seq, seq.data(), n * sizeof(int32_t)));
      IC_RETURN_IF_ERROR(be_->CopyToDevice(d_pos, pos.data(), n * sizeof(int32_t)));
      sub_.token_seq = d_seq;
      sub_.token_pos = d_pos;
    }
    return absl::OkStatus();
  }

  // Decode: rows with more than k valid keys take part in the merge; the others select 0..pos.
  host_short_.assign(static_cast<size_t>(rows_) * k_, -1);
  long_rows_.clear();
  long_range_.clear();
  scored_.clear();
  virt_max_len_ = 0;
  for (int t = 0; t < rows_; ++t) {
    const int pos = pass.pos[t];
    if (pos + 1 <= k_) {
      for (int i = 0; i <= pos; ++i) host_short_[static_cast<size_t>(t) * k_ + i] = i;
      continue;
    }
    IC_ASSIGN_OR_RETURN(RowRange range, parallel::DecodeKeyRange(pos + 1, tp, rank));
    if (range.size() > 0) {
      scored_.push_back(static_cast<int32_t>(long_rows_.size()));
      virt_max_len_ = std::max<int>(virt_max_len_, static_cast<int>(range.size()));
    }
    long_rows_.push_back(t);
    long_range_.push_back(range);
  }
  const int nv = static_cast<int>(scored_.size());
  virt_ = {};
  if (nv == 0) return absl::OkStatus();
  // One virtual sequence per scored row: position j is key range.begin + j, block_size 1, so the block
  // table lists the cache slots of the range.
  std::vector<int32_t> rows(nv), seq(nv), pos(nv), tables(static_cast<size_t>(nv) * virt_max_len_, 0);
  for (int v = 0; v < nv; ++v) {
    const int t = long_rows_[scored_[v]];
    const RowRange range = long_range_[scored_[v]];
    rows[v] = t;
    seq[v] = v;
    pos[v] = static_cast<int32_t>(range.size() - 1);
    const int s = pass.seq[t];
    for (int64_t j = 0; j < range.size(); ++j) {
      const int64_t p = range.begin + j;
      tables[static_cast<size_t>(v) * virt_max_len_ + j] =
          pass.tables[static_cast<size_t>(s) * pass.max_blocks + p / pass.block_size] * pass.block_size +
          static_cast<int32_t>(p % pass.block_size);
    }
  }
  IC_ASSIGN_OR_RETURN(d_scored_rows_, Scratch<int32_t>("tp_rows", nv));
  IC_ASSIGN_OR_RETURN(int32_t* d_seq, Scratch<int32_t>("tp_seq", nv));
  IC_ASSIGN_OR_RETURN(int32_t* d_pos, Scratch<int32_t>("tp_pos", nv));
  IC_ASSIGN_OR_RETURN(int32_t* d_tables, Scratch<int32_t>("tp_tables", tables.size()));
  IC_RETURN_IF_ERROR(be_->CopyToDevice(d_scored_rows_, rows.data(), nv * sizeof(int32_t)));
  IC_RETURN_IF_ERROR(be_->CopyToDevice(d_seq, seq.data(), nv * sizeof(int32_t)));
  IC_RETURN_IF_ERROR(be_->CopyToDevice(d_pos, pos.data(), nv * sizeof(int32_t)));
  IC_RETURN_IF_ERROR(be_->CopyToDevice(d_tables, tables.data(), tables.size() * sizeof(int32_t)));
  virt_.token_seq = d_seq;
  virt_.token_pos = d_pos;
  virt_.block_tables = d_tables;
  virt_.tokens = nv;
  virt_.num_seqs = nv;
  virt_.max_blocks_per_seq = virt_max_len_;
  virt_.block_size = 1;
  return absl::OkStatus();
}

absl::Status ShardedTopk::Select(const kernels::IndexerArgs& full, int32_t* topk, int64_t* topk_bytes) {
  const int64_t before = comm_->stats()[parallel::Collective::kAllGather].bytes_sent;
  IC_RETURN_IF_ERROR(decode_ ? SelectDecode(full, topk) : SelectPrefill(full, topk));
  *topk_bytes += comm_->stats()[parallel::Collective::kAllGather].bytes_sent - before;
  return absl::OkStatus();
}

absl::Status ShardedTopk::SelectPrefill(const kernels::IndexerArgs& full, int32_t* topk) {
  const int n = sub_.tokens, K = k_, HI = full.heads, dI = full.head_dim;
  local_idx_.assign(static_cast<size_t>(split_.max_rows) * K, -1);
  if (n > 0) {
    IC_ASSIGN_OR_RETURN(float* q, Scratch<float>("tp_q", static_cast<size_t>(n) * HI * dI));
    IC_ASSIGN_OR_RETURN(float* w, Scratch<float>("tp_w", static_cast<size_t>(n) * HI));
    IC_ASSIGN_OR_RETURN(int32_t* idx, Scratch<int32_t>("tp_idx", static_cast<size_t>(n) * K));
    IC_RETURN_IF_ERROR(be_->GatherRows({.out = q, .in = full.q, .rows = d_local_rows_, .count = n, .dim = HI * dI}));
    IC_RETURN_IF_ERROR(be_->GatherRows({.out = w, .in = full.w, .rows = d_local_rows_, .count = n, .dim = HI}));
    kernels::IndexerArgs ia = full;
    ia.indices = idx;
    ia.scores = nullptr;
    ia.scores_stride = 0;
    ia.q = q;
    ia.w = w;
    ia.layout = sub_;
    IC_RETURN_IF_ERROR(be_->IndexerTopk(ia));
    IC_RETURN_IF_ERROR(be_->CopyToHost(local_idx_.data(), idx, static_cast<size_t>(n) * K * sizeof(int32_t)));
  }
  out_idx_.resize(static_cast<size_t>(rows_) * K);
  IC_RETURN_IF_ERROR(parallel::AllGatherZigZagIndices(*comm_, rows_, K, local_idx_, absl::MakeSpan(out_idx_),
                                                      gathered_idx_));
  return be_->CopyToDevice(topk, out_idx_.data(), out_idx_.size() * sizeof(int32_t));
}

absl::Status ShardedTopk::SelectDecode(const kernels::IndexerArgs& full, int32_t* topk) {
  const int K = k_, HI = full.heads, dI = full.head_dim;
  const int nl = static_cast<int>(long_rows_.size()), nv = virt_.tokens;
  out_idx_ = host_short_;
  if (nl > 0) {
    local_idx_.resize(static_cast<size_t>(nv) * K);
    local_scores_.resize(static_cast<size_t>(nv) * virt_max_len_);
    if (nv > 0) {
      IC_ASSIGN_OR_RETURN(float* q, Scratch<float>("tp_q", static_cast<size_t>(nv) * HI * dI));
      IC_ASSIGN_OR_RETURN(float* w, Scratch<float>("tp_w", static_cast<size_t>(nv) * HI));
      IC_ASSIGN_OR_RETURN(int32_t* idx, Scratch<int32_t>("tp_idx", static_cast<size_t>(nv) * K));
      IC_ASSIGN_OR_RETURN(float* sc, Scratch<float>("tp_scores", local_scores_.size()));
      IC_RETURN_IF_ERROR(
          be_->GatherRows({.out = q, .in = full.q, .rows = d_scored_rows_, .count = nv, .dim = HI * dI}));
      IC_RETURN_IF_ERROR(be_->GatherRows({.out = w, .in = full.w, .rows = d_scored_rows_, .count = nv, .dim = HI}));
      kernels::IndexerArgs ia = full;
      ia.indices = idx;
      ia.scores = sc;  // the local scores give the candidates' scores
      ia.scores_stride = virt_max_len_;
      ia.q = q;
      ia.w = w;
      ia.layout = virt_;
      IC_RETURN_IF_ERROR(be_->IndexerTopk(ia));
      IC_RETURN_IF_ERROR(be_->CopyToHost(local_idx_.data(), idx, local_idx_.size() * sizeof(int32_t)));
      IC_RETURN_IF_ERROR(be_->CopyToHost(local_scores_.data(), sc, local_scores_.size() * sizeof(float)));
    }
    candidates_.assign(static_cast<size_t>(nl) * K, TopkCandidate{0.0f, -1});
    for (int v = 0; v < nv; ++v) {
      const int row = scored_[v];
      const int64_t begin = long_range_[row].begin;
      for (int j = 0; j < K; ++j) {
        const int32_t i = local_idx_[static_cast<size_t>(v) * K + j];
        if (i < 0) continue;
        candidates_[static_cast<size_t>(row) * K + j] = {local_scores_[static_cast<size_t>(v) * virt_max_len_ + i],
                                                         static_cast<int32_t>(begin + i)};
      }
    }
    gathered_idx_.resize(static_cast<size_t>(nl) * K);
    IC_RETURN_IF_ERROR(parallel::AllGatherMergeTopk(*comm_, nl, K, candidates_, absl::MakeSpan(gathered_idx_),
                                                    cand_scratch_));
    for (int r = 0; r < nl; ++r) {
      const auto src = gathered_idx_.begin() + static_cast<size_t>(r) * K;
      std::copy(src, src + K, out_idx_.begin() + static_cast<size_t>(long_rows_[r]) * K);
    }
  }
  return be_->CopyToDevice(topk, out_idx_.data(), out_idx_.size() * sizeof(int32_t));
}

}  // namespace ic
