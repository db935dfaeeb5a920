// IndexCache plans: parsing, checkpoint sources, plan files, uniform plans (DESIGN.md §3).
#include "sdk/plan.h"

#include <sys/stat.h>

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "plan.pb.h"
#include "sdk/status.h"

namespace ic {
namespace {

// Layer i is Shared iff max(i - offset + 1, 0) mod freq != 0 (HF, vLLM and SGLang).
std::string PatternFromFreq(int num_layers, int freq, int offset) {
  std::string pattern;
  for (int i = 0; i < num_layers; ++i) {
    pattern += std::max(i - offset + 1, 0) % freq != 0 ? 'S' : 'F';
  }
  return pattern;
}

absl::StatusOr<Plan> WithSource(absl::StatusOr<Plan> plan, std::string source) {
  if (plan.ok()) plan->source = std::move(source);
  return plan;
}

absl::Status Prefixed(const absl::Status& status, absl::string_view prefix) {
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

// A pattern quoted in an error message: C-escaped (a NUL or control byte would cut or garble the C ABI's
// message) and shortened when long (a 1 MB plan string must not become a 1 MB message).
std::string Quoted(absl::string_view pattern) {
  constexpr size_t kMax = 80;
  if (pattern.size() <= kMax) return absl::StrCat("\"", absl::CHexEscape(pattern), "\"");
  return absl::StrCat("\"", absl::CHexEscape(pattern.substr(0, kMax)), "…\" (", pattern.size(), " characters)");
}

// Plan files are a few hundred bytes (a pattern, a source, one loss per search step).
constexpr int64_t kMaxPlanFileBytes = 16 << 20;

}  // namespace

int Plan::NumFull() const {
  int n = 0;
  for (LayerKind k : layers) n += k == LayerKind::kFull;
  return n;
}

int Plan::SourceLayer(int layer) const {
  for (int i = layer; i >= 0; --i) {
    if (layers[i] == LayerKind::kFull) return i;
  }
  return 0;  // unreachable for a valid plan: layer 0 is Full
}

std::string Plan::ToString() const {
  std::string s;
  s.reserve(layers.size());
  for (LayerKind k : layers) s += static_cast<char>(k);
  return s;
}

absl::StatusOr<Plan> ParsePlan(std::string_view pattern_std, int num_layers) {
  const absl::string_view pattern(pattern_std.data(), pattern_std.size());
  // Characters first: "FSSX" on a 30-layer model has a bad letter, which matters more than its length.
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c != 'F' && c != 'S') {
      return InvalidArgument("plan ", Quoted(pattern), ": position ", i, " is '",
                             absl::CHexEscape(absl::string_view(&c, 1)), "'; expected 'F' or 'S'");
    }
  }
  if (pattern.size() != static_cast<size_t>(std::max(num_layers, 0))) {
    return InvalidArgument("plan ", Quoted(pattern), " has ", pattern.size(), " layers; the model has ", num_layers);
  }
  Plan plan;
  plan.layers.reserve(pattern.size());
  for (char c : pattern) plan.layers.push_back(static_cast<LayerKind>(c));
  if (!plan.layers.empty() && plan.layers[0] != LayerKind::kFull) {
    return InvalidArgument("plan ", Quoted(pattern), ": layer 0 must be Full");
  }
  return plan;
}

absl::StatusOr<Plan> PlanFromConfig(const ModelConfig& config) {
  const int n = config.num_hidden_layers;
  if (!config.has_indexer) {
    return WithSource(ParsePlan(std::string(n, 'F'), n), "dense (no indexer)");
  }
  if (config.indexer_types) {
    const std::vector<std::string>& types = *config.indexer_types;
    std::string pattern;
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] == "full") {
        pattern += 'F';
      } else if (types[i] == "shared") {
        pattern += 'S';
      } else {
        return InvalidArgument("indexer_types[", i, "] is \"", types[i], "\"; expected \"full\" or \"shared\"");
      }
    }
    absl::StatusOr<Plan> plan = ParsePlan(pattern, n);
    if (!plan.ok()) return Prefixed(plan.status(), "indexer_types: ");
    return WithSource(std::move(plan), "checkpoint:indexer_types");
  }
  if (config.index_topk_pattern) {
    absl::StatusOr<Plan> plan = ParsePlan(*config.index_topk_pattern, n);
    if (!plan.ok()) return Prefixed(plan.status(), "index_topk_pattern: ");
    return WithSource(std::move(plan), "checkpoint:index_topk_pattern");
  }
  if (config.index_topk_freq || config.index_skip_topk_offset) {
    const int freq = config.index_topk_freq.value_or(1);
    const int offset = config.index_skip_topk_offset.value_or(2);
    if (freq < 1) return InvalidArgument("index_topk_freq must be at least 1, got ", freq);
    if (offset < 1) return InvalidArgument("index_skip_topk_offset must be at least 1, got ", offset);
    return WithSource(ParsePlan(PatternFromFreq(n, freq, offset), n),
                      absl::StrCat("checkpoint:index_topk_freq=", freq, " offset=", offset));
  }
  return WithSource(ParsePlan(std::string(n, 'F'), n), "checkpoint:all full");
}

absl::StatusOr<Plan> LoadPlanFile(const std::string& path, int num_layers) {
  // Check the kind and size before reading: a directory reads as "" (a misleading "0 layers"), a FIFO
  // blocks, and /dev/zero never ends.
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open plan file"));
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path, ": plan file is not a regular file");
  if (st.st_size > kMaxPlanFileBytes) {
    return InvalidArgument(path, ": plan file is ", st.st_size, " bytes; a plan file is at most ", kMaxPlanFileBytes);
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open plan file"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  const absl::string_view trimmed = absl::StripAsciiWhitespace(text);

  // A bare pattern: one word with no text-format syntax (so that "FFXF" gets the position error).
  if (!trimmed.empty() && trimmed.find_first_of(": \t\r\n{}#\"") == absl::string_view::npos) {
    absl::StatusOr<Plan> plan = ParsePlan(std::string_view(trimmed.data(), trimmed.size()), num_layers);
    if (!plan.ok()) return Prefixed(plan.status(), absl::StrCat(path, ": "));
    plan->source = absl::StrCat("file:", path);
    return plan;
  }

  proto::PlanFile file;
  struct Collector : google::protobuf::io::ErrorCollector {
    std::string errors;
    void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
      if (!errors.empty()) errors += "; ";
      absl::StrAppend(&errors, "line ", line + 1, " column ", column + 1, ": ", message);
    }
  } collector;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&collector);
  if (!parser.ParseFromString(text, &file)) {
    return InvalidArgument(
        path, ": not a plan file (protobuf text format PlanFile, or a bare F/S string): ", collector.errors);
  }
  absl::StatusOr<Plan> plan = ParsePlan(file.pattern(), num_layers);
  if (!plan.ok()) return Prefixed(plan.status(), absl::StrCat(path, ": "));
  plan->source = file.source().empty() ? absl::StrCat("file:", path) : file.source();
  plan->search_losses.assign(file.step_losses().begin(), file.step_losses().end());
  return plan;
}

absl::Status SavePlanFile(const std::string& path, const Plan& plan) {
  proto::PlanFile file;
  file.set_pattern(plan.ToString());
  file.set_source(plan.source);
  for (double loss : plan.search_losses) file.add_step_losses(loss);
  std::string text;
  if (!google::protobuf::TextFormat::PrintToString(file, &text)) {
    return absl::InternalError(absl::StrCat(path, ": cannot serialise the plan"));
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open for writing"));
  out << text;
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

absl::StatusOr<Plan> UniformPlan(int num_layers, int r) {
  if (num_layers < 1) return InvalidArgument("uniform plan: num_layers must be positive, got ", num_layers);
  if (r < 1) return InvalidArgument("uniform plan: r must be at least 1 (keep = 1/r), got ", r);
  Plan plan;
  for (int i = 0; i < num_layers; ++i) plan.layers.push_back(i % r == 0 ? LayerKind::kFull : LayerKind::kShared);
  plan.source = absl::StrCat("uniform 1/", r);
  return plan;
}

absl::StatusOr<int> ParseKeepFraction(std::string_view keep_std) {
  const absl::string_view keep(keep_std.data(), keep_std.size());
  const absl::string_view text = absl::StripAsciiWhitespace(keep);
  auto bad = [&](absl::string_view why) { return InvalidArgument("keep fraction \"", keep, "\": ", why); };
  double value = 0;
  const size_t slash = text.find('/');
  if (slash != absl::string_view::npos) {
    int64_t num = 0, den = 0;
    if (!absl::SimpleAtoi(text.substr(0, slash), &num) || !absl::SimpleAtoi(text.substr(slash + 1), &den)) {
      return bad("expected a fraction like 1/4, a decimal like 0.25, or 1");
    }
    if (den <= 0 || num <= 0) return bad("must be in (0, 1]");
    if (num > den) return bad("must be in (0, 1]");
    if (den % num != 0) return bad("1/keep must be an integer (keep = 1/r)");
    const int64_t r = den / num;
    if (r > std::numeric_limits<int>::max()) return bad("too small");
    return static_cast<int>(r);
  }
  if (!absl::SimpleAtod(text, &value) || !std::isfinite(value)) {
    return bad("expected a fraction like 1/4, a decimal like 0.25, or 1");
  }
  if (!(value > 0) || value > 1) return bad("must be in (0, 1]");
  const double inverse = 1.0 / value;
  const double r = std::round(inverse);
  if (r > std::numeric_limits<int>::max()) return bad("too small");
  // Decimals such as 0.1 are inexact in binary; accept a relative error of a few ulps.
  if (std::fabs(inverse - r) > 1e-9 * r) return bad("1/keep must be an integer (keep = 1/r)");
  return static_cast<int>(r);
}

}  // namespace ic
