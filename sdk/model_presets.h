// Benchmark presets: the shapes of real DSA models, with synthetic weights built fast in parallel.
//
// A preset is an HF config.json held in the binary (the values of tests/data/reference/*.json) and parsed
// by ParseModelConfig, so a preset's shapes are exactly what our loader would read from the checkpoint:
//
//   glm-4.7-flash-dsa   the IndexCache paper's "30B DSA model": GLM-4.7-Flash (47 layers, hidden 2048,
//                       MLA 20 heads, q_lora 768, kv_lora 512, qk_nope 192, qk_rope 64, v 256; 64 routed
//                       experts top-4 + 1 shared, moe_intermediate 1536; layer 0 dense, intermediate 10240;
//                       vocab 154880) with a lightning indexer of 32 heads × 128 and top-k 2048 (the paper
//                       does not give the indexer's size: assumed from GLM-5). GlmMoeDsa layout: interleaved
//                       indexer RoPE, n_group = topk_group = 1, max_position_embeddings 202752, rope_theta
//                       1e6, routed_scaling_factor 1.8, rms_norm_eps 1e-5 (GLM-4.7-Flash's own values).
//   deepseek-v3.2       DeepSeek-V3.2 (61 layers, 3 dense; YaRN; max positions 163840)
//   glm-5               GLM-5 (78 layers, 3 dense; max positions 202752; rope_theta absent from its
//                       config.json: the loader's default, 10000, applies — timing does not depend on it)
//   tiny-dsa            a small GlmMoeDsa-shaped model (8 layers, hidden 256) for tests and CPU smoke runs
//
// Full-depth F32 weights of the big presets do not fit one GPU (the 30B preset is 120 GB in F32, the
// engine's weight format today), so benchmarks run a *layer slice* (MakeLayerSlice, sdk/layer_sampling.h)
// and compose the full depth from per-layer times. BuildFastSyntheticModel builds the weights of any
// MLA / MoE config (a slice config included) with a counter-based generator: value i of tensor j is a
// function of (seed, j, i) only, so the model is the same for every thread count.
//
//   IC_ASSIGN_OR_RETURN(ModelConfig full, PresetConfig("glm-4.7-flash-dsa"));
//   LayerSlice slice = MakeLayerSlice(full);                          // dense F, MoE F, MoE S: "FFS"
//   IC_ASSIGN_OR_RETURN(auto model, BuildFastSyntheticModel(SliceConfig(full, slice), {.plan = slice.plan}));
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sdk/config.h"
#include "sdk/weights.h"

namespace ic {

struct PresetInfo {
  std::string name;
  std::string description;
};

// Every preset, in a stable order.
std::vector<PresetInfo> ListPresets();

// The full-depth config of a preset. InvalidArgument naming the valid presets for an unknown name.
absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);

struct FastInitOptions {
  uint64_t seed = 20260312;
  int threads = 0;   // 0 = std::thread::hardware_concurrency()
  std::string plan;  // F/S string for model->plan ("" = all Full); Shared layers still get indexer weights
};

// Synthetic weights for `config` (MLA or GQA, dense or MoE): linear weights N(0, 1/in), embeddings
// N(0, 1), norm weights 1 + N(0, 0.1²), router bias N(0, 0.05²). ResourceExhausted (naming the bytes)
// when the F32 weights exceed the host's available memory; InvalidArgument when a tensor exceeds
// 2^31 − 1 values.
absl::StatusOr<std::shared_ptr<const Model>> BuildFastSyntheticModel(const ModelConfig& config,
                                                                     const FastInitOptions& options = {});

// out[i] = std · N(0, 1) from (seed, stream, offset + i) only (splitmix64 + Box–Muller), filled by
// `threads` threads over contiguous chunks (0 = hardware concurrency). Deterministic for any thread count.
void FillNormal(std::span<float> out, uint64_t seed, uint64_t stream, float std, int threads, uint64_t offset = 0);

// F32 values of the weights BuildFastSyntheticModel would allocate for `config` (no allocation).
int64_t SyntheticParamCount(const ModelConfig& config);

}  // namespace ic
