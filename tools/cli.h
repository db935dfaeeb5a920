// Shared pieces of the `indexcache` CLI: argument parsing, model selection, token files, progress.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sdk/engine.h"
#include "sdk/weights.h"

namespace ic::cli {

// `--key=value`, `--key value` and bare `--flag` options plus positional arguments.
// Unknown options are errors naming them (each command declares what it accepts).
class Args {
 public:
  static absl::StatusOr<Args> Parse(int argc, char** argv, const std::vector<std::string>& known,
                                    const std::vector<std::string>& bare_flags);
  bool Has(const std::string& key) const { return values_.count(key) > 0; }
  std::string Get(const std::string& key, const std::string& fallback = "") const;
  absl::StatusOr<int64_t> GetInt(const std::string& key, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& key, double fallback) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

// --model DIR, or the embedded synthetic model when absent (--seed, --layers for it).
absl::StatusOr<std::shared_ptr<const Model>> SelectModel(const Args& args);

// --device auto|cpu|cuda.
absl::StatusOr<kernels::DeviceKind> SelectDevice(const Args& args);
// --indexer-precision f32|bf16|fp8, --attention-precision f32|bf16, --weight-precision f32|bf16|fp8 (each
// default f32) and --cuda-graphs on|off (default on) into the matching ContextOptions fields;
// InvalidArgument naming the option otherwise.
extern const std::vector<std::string> kContextOptionKeys;
absl::Status SelectContextOptions(const Args& args, ContextOptions* options);
// "indexer bf16, attention f32, weights bf16" ("indexer none" for a model without one).
std::string DescribePrecisions(const ContextOptions& options, bool has_indexer = true);

// Plans from a comma-separated list: "dsa" (all Full), "1/2", "1/4" (uniform), F/S strings, or
// "file:PATH". Each gets a display name.
struct NamedPlan {
  std::string name;
  std::string pattern;
};
absl::StatusOr<std::vector<NamedPlan>> ParsePlans(const std::string& list, const Model& model);
// The same for a model of `num_layers` layers known only by its config (layer-sampled benchmarks);
// "model" / "checkpoint" need `checkpoint_plan` (InvalidArgument when it is null).
absl::StatusOr<std::vector<NamedPlan>> ParsePlans(const std::string& list, int num_layers,
                                                  const Plan* checkpoint_plan);

// Token files: little-endian uint32 ids. Every id must be < vocab_size (InvalidArgument naming the
// first bad id and its offset).
absl::StatusOr<std::vector<int32_t>> ReadTokenFile(const std::string& path, int vocab_size);
// "1,2,3" → ids.
absl::StatusOr<std::vector<int32_t>> ParseTokenList(const std::string& list, int vocab_size);

// A progress line on stderr ("eval 1/4 [=====     ] 52%  12.1 s left"), redrawn in place on a terminal,
// printed every 10% otherwise.
class Progress {
 public:
  Progress(std::string label, int64_t total);
  void Update(int64_t done);
  void Finish();

 private:
  std::string label_;
  int64_t total_;
  double start_;
  int last_decile_ = -1;
  bool tty_;
};

std::string FormatSeconds(double s);

// "indexcache <cmd>: <message>" on stderr; returns the exit status 1.
int Fail(const char* cmd, const absl::Status& s);

// Declares `lhs` as the value of a StatusOr expression, or returns Fail(cmd, status) from the command.
#define CLI_ASSIGN_OR_FAIL(lhs, expr, cmd)                  \
  auto lhs##_or = (expr);                                   \
  if (!lhs##_or.ok()) return ::ic::cli::Fail(cmd, lhs##_or.status()); \
  auto& lhs = *lhs##_or

int CmdDemo(int argc, char** argv);
int CmdInfo(int argc, char** argv);
int CmdRun(int argc, char** argv);
int CmdEval(int argc, char** argv);
int CmdBench(int argc, char** argv);
int CmdBenchSampled(int argc, char** argv);  // tools/bench_sampled.cc: `bench --preset` / `--sample-layers`
int CmdSearch(int argc, char** argv);   // tools/search.cc
int CmdDistill(int argc, char** argv);  // tools/distill.cc

}  // namespace ic::cli
