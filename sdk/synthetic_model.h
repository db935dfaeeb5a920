// The embedded default model: a small deterministic DSA model built in memory from a seed.
//
// Used by `indexcache demo` with no arguments, by tests, and by benchmarks. The default is a
// DeepSeek-V3.2-style model (MLA, lightning indexer, MoE with a dense first layer) small enough to run
// prefill and decode in seconds on 2 CPU cores. Weights are N(0, 0.02²)-like from a fixed-seed
// generator (std::mt19937_64), so every machine builds the same model.
//
//   IC_ASSIGN_OR_RETURN(std::shared_ptr<const Model> model, BuildSyntheticModel({}));
//   IC_RETURN_IF_ERROR(SaveModel(*model, "/tmp/tiny"));  // config.json + model.safetensors
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "sdk/weights.h"

namespace ic {

struct SyntheticModelOptions {
  Architecture arch = Architecture::kDeepseekV32;  // any of the four
  uint64_t seed = 20260312;
  int num_layers = 8;
  int hidden_size = 256;
  int vocab_size = 512;
  int index_topk = 64;
  int index_n_heads = 8;
  int index_head_dim = 64;
  int max_position_embeddings = 8192;
  std::string plan;  // "" = all Full (written as indexer_types when saved)
};

absl::StatusOr<std::shared_ptr<const Model>> BuildSyntheticModel(const SyntheticModelOptions& options);

// The plan of a synthetic model: `pattern` parsed for num_layers layers ("" = all Full), with its source
// named "synthetic". Errors: ParsePlan's (wrong length, a character other than F/S, layer 0 Shared).
absl::StatusOr<Plan> SyntheticPlan(const std::string& pattern, int num_layers);

// Writes config.json (HF keys, with `indexer_types` from model.plan) and model.safetensors (F32) to
// `dir` (created if missing). Layers that are Shared in model.plan get no indexer tensors when
// `drop_shared_indexers` (GLM-5.2 style).
absl::Status SaveModel(const Model& model, const std::string& dir, bool drop_shared_indexers = false);

}  // namespace ic
