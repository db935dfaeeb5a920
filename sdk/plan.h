// IndexCache plans: which layers run their own lightning indexer (Full) and which reuse the top-k of
// the nearest preceding Full layer (Shared). arXiv 2603.12201; semantics in DESIGN.md §3.
//
// Sources, in order of precedence: a context parameter or plan file (the caller's choice) > the
// checkpoint's `indexer_types` > `index_topk_pattern` > `index_topk_freq` + `index_skip_topk_offset`.
//
//   IC_ASSIGN_OR_RETURN(Plan plan, ParsePlan("FSSSFSSS", config.num_hidden_layers));
//   plan.ToString();          // "FSSSFSSS"
//   plan.SourceLayer(3);      // 0: layer 3 reuses layer 0's top-k
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "sdk/config.h"

namespace ic {

enum class LayerKind : char { kFull = 'F', kShared = 'S' };

struct Plan {
  std::vector<LayerKind> layers;
  std::string source;                 // "checkpoint:indexer_types", "file:<path>", "search", "uniform 1/4", …
  std::vector<double> search_losses;  // from greedy search: the loss after each step (step 0: all Full)

  int num_layers() const { return static_cast<int>(layers.size()); }
  bool IsFull(int layer) const { return layers[layer] == LayerKind::kFull; }
  int NumFull() const;
  // The Full layer whose top-k `layer` uses: itself when Full, else the nearest preceding Full layer.
  int SourceLayer(int layer) const;
  std::string ToString() const;  // "FFSS…"
};

// Parses an F/S string. InvalidArgument naming the position and character, the length mismatch, or
// "layer 0 must be Full".
absl::StatusOr<Plan> ParsePlan(std::string_view pattern, int num_layers);

// The plan a checkpoint asks for (precedence above). A model with no indexer gets all-Full (unused).
// Errors: indexer_types entry other than "full"/"shared" (naming index and value), freq < 1, offset < 1,
// wrong lengths, layer 0 Shared.
absl::StatusOr<Plan> PlanFromConfig(const ModelConfig& config);

// Plan files are protobuf text format (sdk/plan.proto: pattern, source, losses); a file holding only the
// F/S string is accepted too.
absl::StatusOr<Plan> LoadPlanFile(const std::string& path, int num_layers);
absl::Status SavePlanFile(const std::string& path, const Plan& plan);

// keep = 1/r: ceil(N / r) Full layers; uniform: layer i is Full iff i mod r == 0 (DESIGN.md §3).
absl::StatusOr<Plan> UniformPlan(int num_layers, int r);
// Parses "1/4", "0.25", "1" into r (keep = 1/r); keep must be in (0, 1] and 1/keep an integer.
absl::StatusOr<int> ParseKeepFraction(std::string_view keep);

}  // namespace ic
