// C ABI: contexts, sequences and forward passes (indexcache.h "Contexts", "Sequences", "Forward passes").
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bindings_c/c_api_internal.h"
#include "indexcache/indexcache.h"
#include "kernels/backend.h"
#include "sdk/engine.h"
#include "sdk/metrics.h"

namespace ic::capi {
namespace {

// Size of the first published ic_context_params_t (0.1.0); see c_model.cc.
constexpr size_t kContextParamsV1Size = sizeof(ic_context_params_t);

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
  return p;
}

// Multi-GPU fields are reserved: negative values are bad input; sizes above 1 are not in this version.
absl::Status CheckParallelFields(const ic_context_params_t& p) {
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
  std::string over;
  for (const auto& s : sizes) {
    if (s.value > 1) absl::StrAppend(&over, over.empty() ? "" : ", ", s.name, "=", s.value);
  }
  if (!over.empty()) {
    return absl::UnavailableError(absl::StrCat(
        "multi-GPU contexts are not available in this version (", over,
        "); set world_size, tp_size and ep_size to 1"));
  }
  if (p.rank != 0) {
    return absl::InvalidArgumentError(absl::StrCat("ic_context_params_t.rank is ", p.rank,
                                                   "; it must be in [0, world_size) = [0, 1)"));
  }
  return absl::OkStatus();
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

absl::StatusOr<kernels::DeviceKind> ResolveDevice(int device) {
  switch (device) {
    case IC_DEVICE_AUTO:
      return kernels::CudaDeviceCount() > 0 ? kernels::DeviceKind::kCuda : kernels::DeviceKind::kCpu;
    case IC_DEVICE_CPU: return kernels::DeviceKind::kCpu;
    case IC_DEVICE_CUDA: return kernels::DeviceKind::kCuda;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "ic_context_params_t.device is ", device, "; expected IC_DEVICE_AUTO, IC_DEVICE_CPU or IC_DEVICE_CUDA"));
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
    IC_RETURN_IF_ERROR(CheckParallelFields(p));
    IC_RETURN_IF_ERROR(CheckMaxTokens(p));
    if (p.device_ordinal < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("ic_context_params_t.device_ordinal must be >= 0, got ", p.device_ordinal));
    }
    ic::ContextOptions o;
    IC_ASSIGN_OR_RETURN(o.device, ResolveDevice(EnumFieldValue(p.device)));
    o.device_ordinal = p.device_ordinal;
    o.max_tokens = p.max_tokens;
    o.block_size = p.block_size;
    o.prefill_chunk = p.prefill_chunk;
    o.record_metrics = p.record_metrics != 0;
    if (p.plan != nullptr) o.plan = p.plan;
    auto handle = std::make_unique<ic_context_t>();
    handle->model = m->model;
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

ic_status_t ic_sequence_add(ic_context_t* ctx, int32_t* seq_id_out) {
  return Guard("ic_sequence_add", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_context_t * c, GetContext(ctx, "ctx"));
    IC_RETURN_IF_ERROR(CheckNotNull(seq_id_out, "seq_id_out"));
    IC_ASSIGN_OR_RETURN(int id, c->context->AddSequence());
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
