// C ABI: contexts, sequences and forward passes (indexcache.h "Contexts", "Sequences", "Forward passes").
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bindings_c/c_api_internal.h"
#include "indexcache/indexcache.h"
#include "kernels/backend.h"
#include "parallel/inprocess_communicator.h"
#include "parallel/nccl_communicator.h"
#include "sdk/config.h"
#include "sdk/engine.h"
#include "sdk/metrics.h"

namespace ic::capi {
namespace {

// Size of the first published ic_context_params_t (0.1.0, up to ep_size); see c_model.cc. 0.2 appended
// dist_id, read only when the caller's struct_size covers it.
constexpr size_t kContextParamsV1Size = offsetof(ic_context_params_t, dist_id);

ic_context_params_t DefaultContextParams() {
  const ContextOptions d;
  ic_context_params_t p;
  std::memset(&p, 0, sizeof(p));
  p.struct_size = sizeof(p);
  p.device = IC_DEVICE_AUTO;
  p.device_ordinal = 0;
  p.max_tokens = d.max_tokens;
  p.block_size = d.block_size;
  p.prefill_chunk = d.prefill_chunk;
  p.plan = nullptr;
  p.metrics_address = nullptr;
  p.record_metrics = d.record_metrics ? 1 : 0;
  p.rank = 0;
  p.world_size = 1;
  p.tp_size = 1;
  p.ep_size = 1;
  p.dist_id = nullptr;
  p.dist_timeout_ms = 300000;
  p.indexer_precision = IC_PRECISION_F32;
  p.attention_precision = IC_PRECISION_F32;
  p.weight_precision = IC_PRECISION_F32;
  return p;
}

absl::StatusOr<ic::kernels::Precision> ReadPrecision(int32_t value, const char* field) {
  switch (value) {
    case IC_PRECISION_F32: return ic::kernels::Precision::kF32;
    case IC_PRECISION_BF16: return ic::kernels::Precision::kBF16;
    case IC_PRECISION_FP8: return ic::kernels::Precision::kFP8;
    default:
      return absl::InvalidArgumentError(absl::StrCat("ic_context_params_t.", field, " is ", value,
                                                     "; expected IC_PRECISION_F32 (0), IC_PRECISION_BF16 (1) or ",
                                                     "IC_PRECISION_FP8 (2; indexer and weights, not attention)"));
  }
}

// Multi-GPU fields are reserved: negative values are bad input; sizes above 1 are not in this version.
constexpr int kMaxWorldSize = 65536;

// world_size, tp_size, ep_size with 0 meaning 1; the ranks' layout checked by ValidateParallelSizes.
absl::StatusOr<parallel::ParallelSizes> CheckParallelFields(const ic_context_params_t& p) {
  const struct {
    const char* name;
    int32_t value;
  } sizes[] = {{"world_size", p.world_size}, {"tp_size", p.tp_size}, {"ep_size", p.ep_size}};
  for (const auto& s : sizes) {
    if (s.value < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("ic_context_params_t.", s.name, " must be >= 1 (0 means 1), got ", s.value));
    }
  }
  parallel::ParallelSizes ps;
  ps.world_size = std::max(1, p.world_size);
  ps.tp_size = std::max(1, p.tp_size);
  ps.ep_size = std::max(1, p.ep_size);
  if (p.rank < 0 || p.rank >= ps.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("ic_context_params_t.rank is ", p.rank,
                                                   "; it must be in [0, world_size) = [0, ", ps.world_size, ")"));
  }
  if (ps.world_size > kMaxWorldSize) {
    return absl::InvalidArgumentError(absl::StrCat("ic_context_params_t.world_size is ", ps.world_size,
                                                   "; at most ", kMaxWorldSize, " ranks"));
  }
  IC_RETURN_IF_ERROR(parallel::ValidateParallelSizes(ps));
  if (p.dist_timeout_ms <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ic_context_params_t.dist_timeout_ms must be positive, got ", p.dist_timeout_ms));
  }
  if (ps.world_size > 1 && p.struct_size < offsetof(ic_context_params_t, dist_id) + sizeof(p.dist_id)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world_size > 1 needs ic_context_params_t.dist_id, which this struct (struct_size ", p.struct_size,
        ", the 0.1 layout) does not have: rebuild against the 0.2 header"));
  }
  if (ps.world_size > 1 && p.dist_id == nullptr) {
    return absl::InvalidArgumentError(
        "ic_context_params_t.dist_id is NULL but world_size > 1: make one with ic_dist_unique_id on rank 0 and "
        "give it to every rank");
  }
  return ps;
}

// ---- ic_dist_id_t: "ICDIST01", backend byte, then the backend's payload.
constexpr char kDistMagic[8] = {'I', 'C', 'D', 'I', 'S', 'T', '0', '1'};
constexpr unsigned char kDistInProcess = 1, kDistNccl = 2;
constexpr size_t kDistPid = 16, kDistKey = 24, kDistNcclId = 32;
static_assert(kDistNcclId + parallel::NcclCommunicator::kUniqueIdBytes <= IC_DIST_ID_BYTES);

// In-process groups not yet fully joined: key -> the communicators, handed to ranks as they arrive.
struct PendingGroup {
  int world_size = 0;
  std::vector<std::unique_ptr<parallel::Communicator>> comms;
  int taken = 0;
  std::string broken;  // why the group can no longer form ("" = fine)
};
std::mutex g_pending_mu;
std::map<uint64_t, PendingGroup>& PendingGroups() {
  static auto* groups = new std::map<uint64_t, PendingGroup>();  // never destroyed: safe at exit
  return *groups;
}

// The key of an in-process (CPU) id made by this process; nullopt for other ids.
std::optional<uint64_t> InProcessKey(const ic_dist_id_t& id) {
  if (std::memcmp(id.bytes, kDistMagic, sizeof kDistMagic) != 0 || id.bytes[8] != kDistInProcess) return std::nullopt;
  uint64_t pid = 0, key = 0;
  std::memcpy(&pid, id.bytes + kDistPid, 8);
  std::memcpy(&key, id.bytes + kDistKey, 8);
  if (pid != static_cast<uint64_t>(getpid())) return std::nullopt;
  return key;
}

// Marks a pending group broken (the first reason stays) and aborts it: the ranks already waiting return
// at once (IC_ERR_ABORTED) instead of after the timeout. Caller holds g_pending_mu.
void BreakGroup(PendingGroup& g, std::string why) {
  if (!g.broken.empty()) return;
  g.broken = std::move(why);
  for (auto& c : g.comms) {
    if (c != nullptr) {
      c->Abort();
      break;
    }
  }
}

// Why the in-process group of `id` broke ("" when it did not, or for other backends): a rank already
// waiting in a collective only sees its communicator aborted; this names the rank that could not join.
std::string BrokenGroupReason(const ic_dist_id_t& id) {
  const std::optional<uint64_t> key = InProcessKey(id);
  if (!key) return "";
  std::lock_guard<std::mutex> lock(g_pending_mu);
  auto it = PendingGroups().find(*key);
  return it == PendingGroups().end() ? "" : it->second.broken;
}

// This rank's world communicator for the job `id`.
absl::StatusOr<std::unique_ptr<parallel::Communicator>> JoinWorld(const ic_dist_id_t& id, int rank, int world,
                                                                  kernels::DeviceKind device, int device_ordinal,
                                                                  absl::Duration timeout) {
  if (std::memcmp(id.bytes, kDistMagic, sizeof kDistMagic) != 0) {
    return absl::InvalidArgumentError("ic_context_params_t.dist_id was not made by ic_dist_unique_id");
  }
  const unsigned char backend = id.bytes[8];
  if (backend == kDistInProcess) {
    uint64_t pid = 0, key = 0;
    std::memcpy(&pid, id.bytes + kDistPid, 8);
    std::memcpy(&key, id.bytes + kDistKey, 8);
    if (pid != static_cast<uint64_t>(getpid())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dist_id is an in-process (CPU) id made by process ", pid, ": its ranks must be threads of that process; "
          "processes on GPUs use ic_dist_unique_id(IC_DEVICE_CUDA, ...)"));
    }
    if (device != kernels::DeviceKind::kCpu) {
      return absl::InvalidArgumentError("dist_id is an in-process id (IC_DEVICE_CPU) but the context is not on the CPU");
    }
    std::lock_guard<std::mutex> lock(g_pending_mu);
    PendingGroup& g = PendingGroups()[key];
    if (!g.broken.empty()) return absl::AbortedError(absl::StrCat("this dist_id's group is broken: ", g.broken));
    if (g.world_size == 0) {
      parallel::CommunicatorOptions options;
      options.timeout = timeout;
      IC_ASSIGN_OR_RETURN(g.comms, parallel::InProcessGroup::Create(world, options));
      g.world_size = world;
    }
    // A rank that cannot join breaks the group for everyone.
    auto break_group = [&](std::string why) -> absl::Status {
      BreakGroup(g, why);
      return absl::InvalidArgumentError(why);
    };
    if (g.world_size != world) {
      return break_group(absl::StrCat("world_size is ", world, " but another rank of this dist_id joined with world_size ",
                                      g.world_size));
    }
    if (g.comms[rank] == nullptr) {
      return break_group(absl::StrCat("rank ", rank, " of this dist_id has already joined"));
    }
    std::unique_ptr<parallel::Communicator> mine = std::move(g.comms[rank]);
    if (++g.taken == world) PendingGroups().erase(key);
    return mine;
  }
  if (backend == kDistNccl) {
    if (device != kernels::DeviceKind::kCuda) {
      return absl::InvalidArgumentError("dist_id is an NCCL id (IC_DEVICE_CUDA) but the context is not on a GPU");
    }
    if (kernels::CudaDeviceCount() == 0) {
      return absl::UnavailableError("dist_id is an NCCL id but no CUDA device is visible to this process");
    }
    parallel::NcclOptions options;
    options.common.timeout = timeout;
    options.device = device_ordinal;  // the context's GPU (ranks may be threads of one process)
    IC_ASSIGN_OR_RETURN(std::unique_ptr<parallel::NcclCommunicator> nccl,
                        parallel::NcclCommunicator::Create(
                            std::string_view(reinterpret_cast<const char*>(id.bytes + kDistNcclId),
                                             parallel::NcclCommunicator::kUniqueIdBytes),
                            rank, world, options));
    return std::unique_ptr<parallel::Communicator>(std::move(nccl));
  }
  return absl::InvalidArgumentError(absl::StrCat("dist_id has an unknown backend ", static_cast<int>(backend)));
}

// A rank that cannot even try to join (a bad field of its params) breaks its in-process group, so that the
// ranks already waiting return IC_ERR_ABORTED naming it instead of waiting for the timeout. (NCCL ranks:
// nothing to break before ncclCommInitRank; they wait for dist_timeout_ms.)
void AbandonWorld(const ic_dist_id_t& id, int rank, const absl::Status& why) {
  const std::optional<uint64_t> key = InProcessKey(id);
  if (!key) return;
  std::lock_guard<std::mutex> lock(g_pending_mu);
  BreakGroup(PendingGroups()[*key], absl::StrCat("rank ", rank, " could not create its context: ", why.message()));
}

// Cache slots and positions are int32 inside the engine: max_tokens rounded up to whole blocks must fit.
// (Larger values also overflowed the block arithmetic and surfaced as IC_ERR_INTERNAL "vector::_M_default_append".)
absl::Status CheckMaxTokens(const ic_context_params_t& p) {
  if (p.block_size < 1) return absl::OkStatus();  // the engine names a bad block_size
  const int64_t limit = int64_t{std::numeric_limits<int32_t>::max()} - p.block_size + 1;
  if (p.max_tokens > limit) {
    return absl::InvalidArgumentError(absl::StrCat("ic_context_params_t.max_tokens is ", p.max_tokens,
                                                   "; at most ", limit, " (cache slots are int32)"));
  }
  return absl::OkStatus();
}

// Token and sequence counts: a negative length passed as size_t arrives as ~2^64 and would make the engine
// read far past the caller's array; no call can take more than int32 tokens (positions are int32).
absl::Status CheckCount(size_t n, const char* what) {
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("n is ", n, ": more ", what, " than fit in int32 positions (",
                                                   "a negative length converted to size_t?)"));
  }
  return absl::OkStatus();
}

// Every rank must run the same model, plan and sizes; the collectives would otherwise pair up wrongly
// ("rank 1 called AllReduce while rank 0 called AllGather"). One all-gather of what each rank was given
// names the first disagreement on every rank. (Host buffers: the in-process backend; NCCL ranks are
// trusted to agree until the device path exists.)
absl::Status CheckRanksAgree(parallel::Communicator& world, const parallel::ParallelSizes& sizes, const Model& model,
                             const std::string& plan_param, const ContextOptions& options) {
  if (std::string(world.backend_name()) == "nccl") return absl::OkStatus();
  struct Fingerprint {
    int64_t world, tp, ep;
    uint64_t model, plan;
    int32_t indexer_precision, attention_precision, weight_precision;
  };
  const std::string plan = plan_param.empty() ? model.plan.ToString() : plan_param;
  // The model: its config and a sample of its weights (the first 4,096 values of the embedding, the final
  // norm, every layer's input norm) — enough to tell two checkpoints or seeds apart, cheap to compute.
  std::string model_bytes = ModelConfigToJson(model.config);
  auto add = [&](const HostTensor& t, size_t n) {
    n = std::min(n, t.data.size());
    model_bytes.append(reinterpret_cast<const char*>(t.data.data()), n * sizeof(float));
  };
  add(model.weights.embed_tokens, 4096);
  add(model.weights.final_norm, 1 << 16);
  for (const LayerWeights& l : model.weights.layers) add(l.input_norm, 1 << 16);
  Fingerprint mine;
  std::memset(&mine, 0, sizeof mine);  // the padding travels too
  mine.world = sizes.world_size;
  mine.tp = sizes.tp_size;
  mine.ep = sizes.ep_size;
  mine.model = std::hash<std::string>{}(model_bytes);
  mine.plan = std::hash<std::string>{}(plan);
  mine.indexer_precision = static_cast<int32_t>(options.indexer_precision);
  mine.attention_precision = static_cast<int32_t>(options.attention_precision);
  mine.weight_precision = static_cast<int32_t>(options.weight_precision);
  std::vector<Fingerprint> all(world.size());
  IC_RETURN_IF_ERROR(world.AllGather(&mine, all.data(), sizeof mine));
  for (int r = 0; r < world.size(); ++r) {
    const Fingerprint& f = all[r];
    if (f.world != mine.world || f.tp != mine.tp || f.ep != mine.ep) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the ranks disagree on the sizes: rank ", r, " has world_size ", f.world, ", tp_size ", f.tp, ", ep_size ",
          f.ep, "; rank ", world.rank(), " has ", mine.world, ", ", mine.tp, ", ", mine.ep));
    }
    if (f.model != mine.model) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", r, " loaded a different model (config or weights) than rank ",
                                                     world.rank()));
    }
    if (f.plan != mine.plan) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", r, " runs a different plan than rank ", world.rank(),
                                                     " (", plan, ")"));
    }
    if (f.indexer_precision != mine.indexer_precision || f.attention_precision != mine.attention_precision ||
        f.weight_precision != mine.weight_precision) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the ranks disagree on the precision: rank ", r, " has indexer_precision ", f.indexer_precision,
          ", attention_precision ", f.attention_precision, ", weight_precision ", f.weight_precision, "; rank ",
          world.rank(), " has ", mine.indexer_precision, ", ", mine.attention_precision, ", ",
          mine.weight_precision));
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace ic::capi

using namespace ic::capi;  // NOLINT: the shims below are thin.

extern "C" {

ic_status_t ic_context_default_params(ic_context_params_t* params) {
  return Guard("ic_context_default_params", [&]() -> absl::Status {
    IC_RETURN_IF_ERROR(CheckNotNull(params, "params"));
    *params = DefaultContextParams();
    return absl::OkStatus();
  });
}

ic_status_t ic_context_create(ic_model_t* model, const ic_context_params_t* params, ic_context_t** out) {
  if (out != nullptr) *out = nullptr;
  return Guard("ic_context_create", [&]() -> absl::Status {
    IC_RETURN_IF_ERROR(CheckNotNull(out, "out"));
    IC_ASSIGN_OR_RETURN(ic_model_t * m, GetModel(model, "model"));
    ic_context_params_t p = DefaultContextParams();
    if (params != nullptr) {
      IC_RETURN_IF_ERROR(ReadParams(params, kContextParamsV1Size, "ic_context_params_t", &p));
    }
    if (p.struct_size < sizeof(ic_context_params_t)) p.dist_id = nullptr;  // a 0.1 caller's struct
    IC_ASSIGN_OR_RETURN(ic::parallel::ParallelSizes sizes, CheckParallelFields(p));
    auto read_options = [&]() -> absl::StatusOr<ic::ContextOptions> {
      IC_RETURN_IF_ERROR(CheckMaxTokens(p));
      if (p.device_ordinal < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("ic_context_params_t.device_ordinal must be >= 0, got ", p.device_ordinal));
      }
      ic::ContextOptions o;
      IC_ASSIGN_OR_RETURN(o.device, ResolveDevice(EnumFieldValue(p.device), "ic_context_params_t.device"));
      o.device_ordinal = p.device_ordinal;
      o.max_tokens = p.max_tokens;
      o.block_size = p.block_size;
      o.prefill_chunk = p.prefill_chunk;
      o.record_metrics = p.record_metrics != 0;
      IC_ASSIGN_OR_RETURN(o.indexer_precision, ReadPrecision(p.indexer_precision, "indexer_precision"));
      IC_ASSIGN_OR_RETURN(o.attention_precision, ReadPrecision(p.attention_precision, "attention_precision"));
      IC_ASSIGN_OR_RETURN(o.weight_precision, ReadPrecision(p.weight_precision, "weight_precision"));
      if (p.plan != nullptr) o.plan = p.plan;
      return o;
    };
    absl::StatusOr<ic::ContextOptions> o_or = read_options();
    if (!o_or.ok()) {
      if (sizes.world_size > 1 && p.dist_id != nullptr) AbandonWorld(*p.dist_id, p.rank, o_or.status());
      return o_or.status();
    }
    ic::ContextOptions o = *std::move(o_or);
    auto handle = std::make_unique<ic_context_t>();
    handle->model = m->model;
    if (sizes.world_size > 1) {
      // Joins the job (blocks until every rank has), then splits the shard / dp / expert groups.
      IC_ASSIGN_OR_RETURN(handle->world, JoinWorld(*p.dist_id, p.rank, sizes.world_size, o.device, o.device_ordinal,
                                                   absl::Milliseconds(p.dist_timeout_ms)));
      absl::Status agree = CheckRanksAgree(*handle->world, sizes, *m->model, o.plan, o);
      // A later rank broke the group while this one waited (ABORTED), or before this one reached the
      // collective (FAILED_PRECONDITION: "the communicator is broken"): say why.
      if (absl::IsAborted(agree) || absl::IsFailedPrecondition(agree)) {
        const std::string why = BrokenGroupReason(*p.dist_id);
        if (!why.empty()) {
          agree = absl::AbortedError(absl::StrCat("another rank could not join: ", why, " (", agree.message(), ")"));
        }
      }
      IC_RETURN_IF_ERROR(agree);
      IC_ASSIGN_OR_RETURN(ic::parallel::ProcessGroups groups, ic::parallel::ProcessGroups::Create(*handle->world, sizes));
      handle->groups = std::make_unique<ic::parallel::ProcessGroups>(std::move(groups));
      if (sizes.tp_size > 1) o.shard_group = &handle->groups->shard();
      if (sizes.ep_size > 1) o.expert_group = &handle->groups->expert();
    }
    IC_ASSIGN_OR_RETURN(handle->context, ic::Context::Create(handle->model, o));
    // After the context exists, so that a context that fails to be created starts no exposer.
    if (p.metrics_address != nullptr) {
      IC_RETURN_IF_ERROR(ic::Metrics::Global().StartExposer(p.metrics_address));
    }
    RegisterHandle(handle.get());
    *out = handle.release();
    return absl::OkStatus();
  });
}

ic_status_t ic_dist_unique_id(ic_device_t device, ic_dist_id_t* out) {
  return Guard("ic_dist_unique_id", [&]() -> absl::Status {
    IC_RETURN_IF_ERROR(CheckNotNull(out, "out"));
    ic_dist_id_t id;
    std::memset(&id, 0, sizeof id);
    std::memcpy(id.bytes, kDistMagic, sizeof kDistMagic);
    const int dev = EnumFieldValue(device);
    if (dev == IC_DEVICE_CPU) {
      id.bytes[8] = kDistInProcess;
      const uint64_t pid = static_cast<uint64_t>(getpid());
      std::random_device rd;
      const uint64_t key = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^
                           static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
      std::memcpy(id.bytes + kDistPid, &pid, 8);
      std::memcpy(id.bytes + kDistKey, &key, 8);
    } else if (dev == IC_DEVICE_CUDA) {
      if (ic::kernels::CudaDeviceCount() == 0) {  // before NCCL starts its bootstrap thread and socket
        return absl::UnavailableError("IC_DEVICE_CUDA: no CUDA device is visible to this process");
      }
      id.bytes[8] = kDistNccl;
      absl::StatusOr<std::string> unique = ic::parallel::NcclCommunicator::UniqueId();
      if (absl::IsUnimplemented(unique.status())) return absl::UnavailableError(unique.status().message());
      IC_ASSIGN_OR_RETURN(std::string nccl, std::move(unique));
      if (nccl.size() != ic::parallel::NcclCommunicator::kUniqueIdBytes) {
        return absl::InternalError(absl::StrCat("NCCL unique id of ", nccl.size(), " bytes"));
      }
      std::copy_n(nccl.begin(), ic::parallel::NcclCommunicator::kUniqueIdBytes, id.bytes + kDistNcclId);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("device is ", dev, "; expected IC_DEVICE_CPU (threads of this process) or IC_DEVICE_CUDA (NCCL)"));
    }
    *out = id;
    return absl::OkStatus();
  });
}

ic_status_t ic_context_idle_step(ic_context_t* ctx) {
  return Guard("ic_context_idle_step", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_context_t * c, GetContext(ctx, "ctx"));
    return c->context->IdleStep();
  });
}

ic_status_t ic_context_free(ic_context_t* ctx) {
  return Guard("ic_context_free", [&]() -> absl::Status {
    if (ctx == nullptr) return absl::OkStatus();
    if (!UnregisterHandle(ctx)) {
      return absl::InvalidArgumentError("ctx is not a live ic_context_t (already freed?)");
    }
    ctx->magic = 0;
    delete ctx;
    return absl::OkStatus();
  });
}

ic_status_t ic_context_device(const ic_context_t* ctx, ic_device_t* out) {
  return Guard("ic_context_device", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_context_t * c, GetContext(ctx, "ctx"));
    IC_RETURN_IF_ERROR(CheckNotNull(out, "out"));
    *out = c->context->options().device == ic::kernels::DeviceKind::kCuda ? IC_DEVICE_CUDA : IC_DEVICE_CPU;
    return absl::OkStatus();
  });
}

ic_status_t ic_context_plan(const ic_context_t* ctx, char* buf, size_t buf_size) {
  return Guard("ic_context_plan", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_context_t * c, GetContext(ctx, "ctx"));
    return WriteString(c->context->plan().ToString(), buf, buf_size, "plan");
  });
}

ic_status_t ic_context_free_tokens(const ic_context_t* ctx, int64_t* out) {
  return Guard("ic_context_free_tokens", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_context_t * c, GetContext(ctx, "ctx"));
    IC_RETURN_IF_ERROR(CheckNotNull(out, "out"));
    *out = c->context->FreeTokens();
    return absl::OkStatus();
  });
}

ic_status_t ic_context_set_cuda_graphs(ic_context_t* ctx, int32_t enabled) {
  return Guard("ic_context_set_cuda_graphs", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_context_t * c, GetContext(ctx, "ctx"));
    if (enabled != 0 && enabled != 1) {
      return absl::InvalidArgumentError(absl::StrCat("enabled must be 0 or 1, got ", enabled));
    }
    c->context->SetCudaGraphs(enabled != 0);
    return absl::OkStatus();
  });
}

ic_status_t ic_sequence_add(ic_context_t* ctx, int32_t* seq_id_out) {
  return Guard("ic_sequence_add", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_context_t * c, GetContext(ctx, "ctx"));
    IC_RETURN_IF_ERROR(CheckNotNull(seq_id_out, "seq_id_out"));
    IC_ASSIGN_OR_RETURN(int id, c->context->AddSequence());
    *seq_id_out = id;
    return absl::OkStatus();
  });
}

ic_status_t ic_sequence_fork(ic_context_t* ctx, int32_t src_seq_id, int32_t* seq_id_out) {
  return Guard("ic_sequence_fork", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_context_t * c, GetContext(ctx, "ctx"));
    IC_RETURN_IF_ERROR(CheckNotNull(seq_id_out, "seq_id_out"));
    IC_ASSIGN_OR_RETURN(int id, c->context->ForkSequence(src_seq_id));
    *seq_id_out = id;
    return absl::OkStatus();
  });
}

ic_status_t ic_sequence_remove(ic_context_t* ctx, int32_t seq_id) {
  return Guard("ic_sequence_remove", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_context_t * c, GetContext(ctx, "ctx"));
    return c->context->RemoveSequence(seq_id);
  });
}

ic_status_t ic_sequence_length(const ic_context_t* ctx, int32_t seq_id, int64_t* out) {
  return Guard("ic_sequence_length", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_context_t * c, GetContext(ctx, "ctx"));
    IC_RETURN_IF_ERROR(CheckNotNull(out, "out"));
    IC_ASSIGN_OR_RETURN(*out, c->context->SequenceLength(seq_id));
    return absl::OkStatus();
  });
}

ic_status_t ic_prefill(ic_context_t* ctx, int32_t seq_id, const int32_t* tokens, size_t n,
                       float* last_logits) {
  return Guard("ic_prefill", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_context_t * c, GetContext(ctx, "ctx"));
    if (n == 0) return absl::InvalidArgumentError("n is 0: prefill needs at least one token");
    IC_RETURN_IF_ERROR(CheckCount(n, "tokens"));
    IC_RETURN_IF_ERROR(CheckNotNull(tokens, "tokens"));
    return c->context->Prefill(seq_id, std::span<const int32_t>(tokens, n), last_logits);
  });
}

ic_status_t ic_decode(ic_context_t* ctx, const int32_t* seq_ids, const int32_t* tokens, size_t n,
                      float* logits) {
  return Guard("ic_decode", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_context_t * c, GetContext(ctx, "ctx"));
    if (n == 0) return absl::InvalidArgumentError("n is 0: decode needs at least one sequence");
    IC_RETURN_IF_ERROR(CheckCount(n, "sequences"));
    IC_RETURN_IF_ERROR(CheckNotNull(seq_ids, "seq_ids"));
    IC_RETURN_IF_ERROR(CheckNotNull(tokens, "tokens"));
    const std::vector<int> ids(seq_ids, seq_ids + n);
    return c->context->Decode(ids, std::span<const int32_t>(tokens, n), logits);
  });
}

ic_status_t ic_eval_loss(ic_context_t* ctx, const int32_t* tokens, size_t n, double* mean_loss,
                         int64_t* predicted_tokens) {
  return Guard("ic_eval_loss", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_context_t * c, GetContext(ctx, "ctx"));
    IC_RETURN_IF_ERROR(CheckNotNull(tokens, "tokens"));
    IC_RETURN_IF_ERROR(CheckNotNull(mean_loss, "mean_loss"));
    IC_RETURN_IF_ERROR(CheckCount(n, "tokens"));
    IC_ASSIGN_OR_RETURN(ic::LossResult r, c->context->EvalLoss(std::span<const int32_t>(tokens, n)));
    *mean_loss = r.mean_loss;
    if (predicted_tokens != nullptr) *predicted_tokens = r.tokens;
    return absl::OkStatus();
  });
}

}  // extern "C"
