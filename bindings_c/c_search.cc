// extern "C" shim of the greedy plan search (ic_search_plan; sdk/search.h).
#include <span>
#include <vector>

#include "bindings_c/c_api_internal.h"
#include "kernels/backend.h"
#include "sdk/search.h"

using namespace ic::capi;

extern "C" {

ic_status_t ic_search_plan(const ic_model_t* model, const int32_t* const* windows, const size_t* window_lengths,
                           size_t n_windows, int32_t target_full_layers, ic_device_t device, char* plan_buf,
                           size_t plan_buf_size, double* losses, size_t n_losses) {
  return Guard("ic_search_plan", [&]() -> absl::Status {
    IC_ASSIGN_OR_RETURN(ic_model_t * m, GetModel(model, "model"));
    IC_RETURN_IF_ERROR(CheckNotNull(plan_buf, "plan_buf"));
    if (n_windows > 0) {
      IC_RETURN_IF_ERROR(CheckNotNull(windows, "windows"));
      IC_RETURN_IF_ERROR(CheckNotNull(window_lengths, "window_lengths"));
    }
    const int N = m->model->config.num_hidden_layers;
    if (plan_buf_size < static_cast<size_t>(N) + 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan_buf_size is ", plan_buf_size, "; the plan needs ", N + 1, " bytes"));
    }
    if (losses != nullptr && target_full_layers >= 1 && target_full_layers <= N &&
        n_losses < static_cast<size_t>(N - target_full_layers + 1)) {
      return absl::InvalidArgumentError(absl::StrCat("n_losses is ", n_losses, "; the search records ",
                                                     N - target_full_layers + 1, " losses"));
    }
    ic::SearchOptions o;
    IC_ASSIGN_OR_RETURN(o.device, ResolveDevice(EnumFieldValue(device), "device"));
    IC_ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> copies,
                        CopyWindows(windows, window_lengths, n_windows, SIZE_MAX, "SIZE_MAX"));
    IC_ASSIGN_OR_RETURN(ic::Plan plan, ic::SearchPlan(m->model, copies, target_full_layers, o));
    IC_RETURN_IF_ERROR(WriteString(plan.ToString(), plan_buf, plan_buf_size, "plan"));
    if (losses != nullptr) {
      for (size_t i = 0; i < plan.search_losses.size(); ++i) losses[i] = plan.search_losses[i];
    }
    return absl::OkStatus();
  });
}

}  // extern "C"
