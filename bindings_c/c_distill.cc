// extern "C" shim of the indexer distillation loop (ic_distill_indexers; sdk/distill_loop.h).
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "bindings_c/c_api_internal.h"
#include "kernels/backend.h"
#include "sdk/distill_loop.h"

using namespace ic::capi;

namespace {

constexpr size_t kDistillParamsV1Size = sizeof(ic_distill_params_t);

ic_distill_params_t DefaultDistillParams() {
  ic_distill_params_t p{};
  p.struct_size = sizeof(p);
  p.index_n_heads = 4;
  p.index_head_dim = 64;
  p.index_topk = 256;
  p.steps = 200;
  p.windows_per_step = 1;
  p.learning_rate = 1e-3;
  p.warmup_steps = 10;
  p.device = IC_DEVICE_AUTO;
  p.checkpoint_every = 50;
  p.bf16 = 1;
  return p;
}

}  // namespace

extern "C" {

ic_status_t ic_distill_default_params(ic_distill_params_t* params) {
  return Guard("ic_distill_default_params", [&]() -> absl::Status {
    IC_RETURN_IF_ERROR(CheckNotNull(params, "params"));
    *params = DefaultDistillParams();
    return absl::OkStatus();
  });
}

ic_status_t ic_distill_indexers(const ic_model_t* dense, const int32_t* const* windows, const size_t* window_lengths,
                                size_t n_windows, const char* out_dir, const ic_distill_params_t* params,
                                double* final_loss) {
  return Guard("ic_distill_indexers", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_model_t * m, GetModel(dense, "dense"));
    IC_RETURN_IF_ERROR(CheckNotNull(out_dir, "out_dir"));
    if (n_windows == 0) return absl::InvalidArgumentError("n_windows is 0: the calibration set is empty");
    IC_RETURN_IF_ERROR(CheckNotNull(windows, "windows"));
    IC_RETURN_IF_ERROR(CheckNotNull(window_lengths, "window_lengths"));
    ic_distill_params_t p = DefaultDistillParams();
    if (params != nullptr) IC_RETURN_IF_ERROR(ReadParams(params, kDistillParamsV1Size, "ic_distill_params_t", &p));
    if (m->model->path.empty()) {
      return absl::FailedPreconditionError(
          "the dense model was not loaded from a directory (ic_model_load): its weights cannot be linked into "
          "the DSA checkpoint");
    }
    ic::DistillOptions o;
    IC_ASSIGN_OR_RETURN(o.device, ResolveDevice(EnumFieldValue(p.device), "ic_distill_params_t.device"));
    if (p.threads < 0) return absl::InvalidArgumentError(absl::StrCat("threads is ", p.threads, "; expected >= 0"));
    if (p.resume != 0 && p.resume != 1) {
      return absl::InvalidArgumentError(absl::StrCat("resume is ", p.resume, "; expected 0 or 1"));
    }
    if (p.bf16 != 0 && p.bf16 != 1) return absl::InvalidArgumentError(absl::StrCat("bf16 is ", p.bf16, "; expected 0 or 1"));
    const ic::ModelConfig& c = m->model->config;
    constexpr size_t kMaxWindows = size_t{1} << 24;
    if (n_windows > kMaxWindows) {
      return absl::InvalidArgumentError(absl::StrCat("n_windows is ", n_windows, "; at most ", kMaxWindows));
    }
    IC_ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> copies,
                        CopyWindows(windows, window_lengths, n_windows,
                                    static_cast<size_t>(c.max_position_embeddings), "max_position_embeddings"));
    if (p.steps == 0 && p.init_indexers == nullptr && p.resume == 0) {
      return absl::InvalidArgumentError(
          "steps is 0 and there is no init_indexers: nothing would be trained (untrained indexers only add noise)");
    }
    const std::string checkpoint_path = p.checkpoint != nullptr ? p.checkpoint : "";
    IC_RETURN_IF_ERROR(ic::CheckDistillOutputs(m->model->path, out_dir, checkpoint_path));
    const std::string pattern = p.plan == nullptr || p.plan[0] == '\0' ? std::string(c.num_hidden_layers, 'F')
                                                                       : std::string(p.plan);
    IC_ASSIGN_OR_RETURN(ic::Plan plan, ic::ParsePlan(pattern, c.num_hidden_layers));
    ic::IndexerTrainingState state;
    const std::string checkpoint = p.checkpoint != nullptr ? p.checkpoint : "";
    if (p.resume == 1) {
      if (checkpoint.empty()) return absl::InvalidArgumentError("resume is 1 but checkpoint is NULL");
      std::error_code ec;
      if (!std::filesystem::exists(checkpoint, ec)) {
        return absl::NotFoundError(absl::StrCat("resume: checkpoint ", checkpoint, " does not exist"));
      }
      IC_ASSIGN_OR_RETURN(state, ic::LoadIndexerCheckpoint(checkpoint, c));
      if (state.plan.ToString() != plan.ToString()) {
        return absl::InvalidArgumentError(absl::StrCat("resume: the checkpoint's plan ", state.plan.ToString(),
                                                       " differs from params.plan ", plan.ToString()));
      }
    } else {
      std::error_code ec;
      if (!checkpoint.empty() && std::filesystem::exists(checkpoint, ec)) {
        return absl::AlreadyExistsError(absl::StrCat("the checkpoint ", checkpoint,
                                                     " exists: set resume = 1 to continue it, or remove it"));
      }
      IC_ASSIGN_OR_RETURN(state, ic::InitIndexerTraining(c,
                                                         {.n_heads = p.index_n_heads,
                                                          .head_dim = p.index_head_dim,
                                                          .topk = p.index_topk},
                                                         plan, p.seed));
      if (p.init_indexers != nullptr) IC_RETURN_IF_ERROR(ic::LoadInitialIndexers(p.init_indexers, &state));
    }
    o.steps = p.steps;
    o.windows_per_step = p.windows_per_step;
    o.learning_rate = p.learning_rate;
    o.warmup_steps = p.warmup_steps;
    o.threads = p.threads;
    o.checkpoint_path = checkpoint;
    o.checkpoint_every = p.checkpoint_every;
    double last = 0;
    bool stop = false;
    o.on_step = [&](const ic::DistillProgress& pr) {
      last = pr.loss;
      if (p.on_step != nullptr) stop = p.on_step(pr.step, pr.steps, pr.loss, p.user) != 0;
    };
    o.should_stop = [&]() { return stop; };
    IC_RETURN_IF_ERROR(ic::TrainIndexers(m->model, copies, o, &state));
    IC_RETURN_IF_ERROR(ic::WriteDsaModel(m->model->path, state, out_dir, p.bf16 ? ic::DType::kBF16 : ic::DType::kF32));
    if (final_loss != nullptr) *final_loss = last;
    return absl::OkStatus();
  });
}

}  // extern "C"
