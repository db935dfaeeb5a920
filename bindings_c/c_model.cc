// C ABI: models (indexcache.h "Models"): load, synthetic, save, info, plan, free.
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "bindings_c/c_api_internal.h"
#include "indexcache/indexcache.h"
#include "sdk/config.h"
#include "sdk/plan.h"
#include "sdk/synthetic_model.h"
#include "sdk/weights.h"

namespace ic::capi {
namespace {

// Sizes of the first published version of each struct (0.1.0). A later header that appends fields
// keeps these, so libraries of either age accept the other's structs.
constexpr size_t kModelLoadParamsV1Size = sizeof(ic_model_load_params_t);
constexpr size_t kSyntheticParamsV1Size = sizeof(ic_synthetic_params_t);
constexpr size_t kModelInfoV1Size = sizeof(ic_model_info_t);

ic_model_load_params_t DefaultLoadParams() {
  ic_model_load_params_t p;
  std::memset(&p, 0, sizeof(p));
  p.struct_size = sizeof(p);
  p.plan_file = nullptr;
  return p;
}

ic_synthetic_params_t DefaultSyntheticParams() {
  const SyntheticModelOptions d;
  ic_synthetic_params_t p;
  std::memset(&p, 0, sizeof(p));
  p.struct_size = sizeof(p);
  p.architecture = IC_ARCH_DEEPSEEK_V32;
  p.seed = d.seed;
  p.num_layers = d.num_layers;
  p.hidden_size = d.hidden_size;
  p.vocab_size = d.vocab_size;
  p.index_topk = d.index_topk;
  p.index_n_heads = d.index_n_heads;
  p.index_head_dim = d.index_head_dim;
  p.max_position_embeddings = d.max_position_embeddings;
  p.plan = nullptr;
  return p;
}

absl::StatusOr<Architecture> ToArchitecture(int value) {
  switch (value) {
    case IC_ARCH_DEEPSEEK_V32: return Architecture::kDeepseekV32;
    case IC_ARCH_GLM_MOE_DSA: return Architecture::kGlmMoeDsa;
    case IC_ARCH_LLAMA_DSA: return Architecture::kLlamaDsa;
    case IC_ARCH_LLAMA: return Architecture::kLlama;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("ic_synthetic_params_t.architecture is ", value, "; expected one of IC_ARCH_* (0..3)"));
}

absl::Status CheckPositive(int32_t value, const char* field) {
  if (value < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ic_synthetic_params_t.", field, " must be positive, got ", value));
  }
  return absl::OkStatus();
}

// Wraps a model in a registered handle.
absl::Status NewModelHandle(std::shared_ptr<const Model> model, ic_model_t** out) {
  auto handle = std::make_unique<ic_model_t>();
  handle->architecture = std::string(ArchitectureName(model->config.arch));
  handle->model = std::move(model);
  RegisterHandle(handle.get());
  *out = handle.release();
  return absl::OkStatus();
}

}  // namespace
}  // namespace ic::capi

using namespace ic::capi;  // NOLINT: the shims below are thin.

extern "C" {

ic_status_t ic_model_load_default_params(ic_model_load_params_t* params) {
  return Guard("ic_model_load_default_params", [&]() -> absl::Status {
    IC_RETURN_IF_ERROR(CheckNotNull(params, "params"));
    *params = DefaultLoadParams();
    return absl::OkStatus();
  });
}

ic_status_t ic_model_load(const char* dir, const ic_model_load_params_t* params, ic_model_t** out) {
  if (out != nullptr) *out = nullptr;
  return Guard("ic_model_load", [&]() -> absl::Status {
    IC_RETURN_IF_ERROR(CheckNotNull(out, "out"));
    IC_RETURN_IF_ERROR(CheckNotNull(dir, "dir"));
    ic_model_load_params_t p = DefaultLoadParams();
    if (params != nullptr) {
      IC_RETURN_IF_ERROR(ReadParams(params, kModelLoadParamsV1Size, "ic_model_load_params_t", &p));
    }
    ic::LoadOptions options;
    if (p.plan_file != nullptr) options.plan_file = p.plan_file;
    IC_ASSIGN_OR_RETURN(std::shared_ptr<const ic::Model> model, ic::LoadModel(dir, options));
    return NewModelHandle(std::move(model), out);
  });
}

ic_status_t ic_synthetic_default_params(ic_synthetic_params_t* params) {
  return Guard("ic_synthetic_default_params", [&]() -> absl::Status {
    IC_RETURN_IF_ERROR(CheckNotNull(params, "params"));
    *params = DefaultSyntheticParams();
    return absl::OkStatus();
  });
}

ic_status_t ic_model_create_synthetic(const ic_synthetic_params_t* params, ic_model_t** out) {
  if (out != nullptr) *out = nullptr;
  return Guard("ic_model_create_synthetic", [&]() -> absl::Status {
    IC_RETURN_IF_ERROR(CheckNotNull(out, "out"));
    ic_synthetic_params_t p = DefaultSyntheticParams();
    if (params != nullptr) {
      IC_RETURN_IF_ERROR(ReadParams(params, kSyntheticParamsV1Size, "ic_synthetic_params_t", &p));
    }
    ic::SyntheticModelOptions o;
    IC_ASSIGN_OR_RETURN(o.arch, ToArchitecture(EnumFieldValue(p.architecture)));
    IC_RETURN_IF_ERROR(CheckPositive(p.num_layers, "num_layers"));
    IC_RETURN_IF_ERROR(CheckPositive(p.hidden_size, "hidden_size"));
    IC_RETURN_IF_ERROR(CheckPositive(p.vocab_size, "vocab_size"));
    IC_RETURN_IF_ERROR(CheckPositive(p.max_position_embeddings, "max_position_embeddings"));
    if (o.arch != ic::Architecture::kLlama) {
      IC_RETURN_IF_ERROR(CheckPositive(p.index_topk, "index_topk"));
      IC_RETURN_IF_ERROR(CheckPositive(p.index_n_heads, "index_n_heads"));
      IC_RETURN_IF_ERROR(CheckPositive(p.index_head_dim, "index_head_dim"));
    }
    o.seed = p.seed;
    o.num_layers = p.num_layers;
    o.hidden_size = p.hidden_size;
    o.vocab_size = p.vocab_size;
    o.index_topk = p.index_topk;
    o.index_n_heads = p.index_n_heads;
    o.index_head_dim = p.index_head_dim;
    o.max_position_embeddings = p.max_position_embeddings;
    if (p.plan != nullptr && p.plan[0] != '\0') {
      o.plan = p.plan;
      // Reject a bad plan here with the parser's message (names the position or "layer 0").
      IC_RETURN_IF_ERROR(ic::ParsePlan(o.plan, o.num_layers).status());
    }
    IC_ASSIGN_OR_RETURN(std::shared_ptr<const ic::Model> model, ic::BuildSyntheticModel(o));
    return NewModelHandle(std::move(model), out);
  });
}

ic_status_t ic_model_save(const ic_model_t* model, const char* dir) {
  return Guard("ic_model_save", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_model_t * m, GetModel(model, "model"));
    IC_RETURN_IF_ERROR(CheckNotNull(dir, "dir"));
    return ic::SaveModel(*m->model, dir);
  });
}

ic_status_t ic_model_free(ic_model_t* model) {
  return Guard("ic_model_free", [&]() -> absl::Status {
    if (model == nullptr) return absl::OkStatus();
    if (!UnregisterHandle(model)) {
      return absl::InvalidArgumentError("model is not a live ic_model_t (already freed?)");
    }
    model->magic = 0;
    delete model;
    return absl::OkStatus();
  });
}

ic_status_t ic_model_info(const ic_model_t* model, ic_model_info_t* out) {
  return Guard("ic_model_info", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_model_t * m, GetModel(model, "model"));
    IC_RETURN_IF_ERROR(CheckNotNull(out, "out"));
    if (out->struct_size < kModelInfoV1Size) {
      return absl::InvalidArgumentError(
          absl::StrCat("ic_model_info_t.struct_size is ", out->struct_size, "; expected at least ",
                       kModelInfoV1Size, " (set it to sizeof(ic_model_info_t) before the call)"));
    }
    const ic::ModelConfig& c = m->model->config;
    ic_model_info_t info;
    std::memset(&info, 0, sizeof(info));
    info.struct_size = sizeof(info);
    info.architecture = m->architecture.c_str();
    info.vocab_size = c.vocab_size;
    info.hidden_size = c.hidden_size;
    info.num_layers = c.num_hidden_layers;
    info.has_indexer = c.has_indexer ? 1 : 0;
    info.index_topk = c.has_indexer ? c.index_topk : 0;
    info.index_n_heads = c.has_indexer ? c.index_n_heads : 0;
    info.index_head_dim = c.has_indexer ? c.index_head_dim : 0;
    info.num_full_layers = m->model->plan.NumFull();
    info.max_position_embeddings = c.max_position_embeddings;
    const size_t user_size = out->struct_size;
    std::memcpy(static_cast<void*>(out), &info, std::min(user_size, sizeof(info)));
    out->struct_size = user_size;  // the caller's struct keeps its own size
    return absl::OkStatus();
  });
}

ic_status_t ic_model_plan(const ic_model_t* model, char* buf, size_t buf_size) {
  return Guard("ic_model_plan", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_model_t * m, GetModel(model, "model"));
    return WriteString(m->model->plan.ToString(), buf, buf_size, "plan");
  });
}

}  // extern "C"
