// Shared CLI pieces (cli.h).
#include "tools/cli.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kernels/backend.h"
#include "sdk/plan.h"
#include "sdk/status.h"
#include "sdk/synthetic_model.h"

namespace ic::cli {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

absl::StatusOr<Args> Args::Parse(int argc, char** argv, const std::vector<std::string>& known,
                                 const std::vector<std::string>& bare_flags) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      a.positional_.push_back(arg);
      continue;
    }
    std::string key = arg.substr(2), value;
    const size_t eq = key.find('=');
    const bool is_bare = std::find(bare_flags.begin(), bare_flags.end(), key) != bare_flags.end();
    if (eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
    }
    const bool is_known = std::find(known.begin(), known.end(), key) != known.end() || is_bare;
    if (!is_known) return InvalidArgument("unknown option --", key, " (see --help)");
    if (eq == std::string::npos && !is_bare) {
      if (i + 1 >= argc) return InvalidArgument("option --", key, " needs a value");
      value = argv[++i];
      // `--plan --tokens 1,2` would otherwise take "--tokens" as the plan and drop the prompt.
      if (value.rfind("--", 0) == 0) {
        return InvalidArgument("option --", key, " needs a value, got the option ", value,
                               " (write --", key, "=VALUE for a value that starts with --)");
      }
    }
    a.values_[key] = value;  // a repeated option: the last value wins (wrappers add defaults first)
  }
  return a;
}

std::string Args::Get(const std::string& key, const std::string& fallback) const {
  auto it = values_.find(key);
  return it == values_.end() ? fallback : it->second;
}

absl::StatusOr<int64_t> Args::GetInt(const std::string& key, int64_t fallback) const {
  if (!Has(key)) return fallback;
  int64_t v = 0;
  if (!absl::SimpleAtoi(Get(key), &v)) return InvalidArgument("--", key, " must be an integer, got '", Get(key), "'");
  return v;
}

absl::StatusOr<double> Args::GetDouble(const std::string& key, double fallback) const {
  if (!Has(key)) return fallback;
  double v = 0;
  if (!absl::SimpleAtod(Get(key), &v)) return InvalidArgument("--", key, " must be a number, got '", Get(key), "'");
  return v;
}

absl::StatusOr<std::shared_ptr<const Model>> SelectModel(const Args& args) {
  if (args.Has("model")) {
    LoadOptions lo;
    lo.plan_file = args.Get("plan-file");
    return LoadModel(args.Get("model"), lo);
  }
  SyntheticModelOptions o;
  IC_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", static_cast<int64_t>(o.seed)));
  IC_ASSIGN_OR_RETURN(int64_t layers, args.GetInt("layers", o.num_layers));
  if (layers < 1 || layers > 4096) {  // checked before the int conversion: 4294967304 is not 8
    return InvalidArgument("--layers must be in [1, 4096], got ", layers);
  }
  o.seed = static_cast<uint64_t>(seed);
  o.num_layers = static_cast<int>(layers);
  if (args.Has("plan-file")) {  // as with --model: the file's plan becomes the model's
    IC_ASSIGN_OR_RETURN(Plan plan, LoadPlanFile(args.Get("plan-file"), o.num_layers));
    o.plan = plan.ToString();
  }
  return BuildSyntheticModel(o);
}

absl::StatusOr<kernels::DeviceKind> SelectDevice(const Args& args) {
  const std::string d = args.Get("device", "auto");
  if (d == "cpu") return kernels::DeviceKind::kCpu;
  if (d == "cuda") return kernels::DeviceKind::kCuda;
  if (d == "auto") return kernels::CudaDeviceCount() > 0 ? kernels::DeviceKind::kCuda : kernels::DeviceKind::kCpu;
  return InvalidArgument("--device must be auto, cpu or cuda; got '", d, "'");
}

const std::vector<std::string> kContextOptionKeys = {"indexer-precision", "attention-precision", "weight-precision",
                                                     "cuda-graphs"};

namespace {
absl::StatusOr<kernels::Precision> SelectPrecision(const Args& args, const std::string& key) {
  const std::string p = args.Get(key, "f32");
  if (p == "f32") return kernels::Precision::kF32;
  if (p == "bf16") return kernels::Precision::kBF16;
  const bool fp8_ok = key != "attention-precision";  // FP8 indexer and FP8 weights; attention has none
  if (p == "fp8" && fp8_ok) return kernels::Precision::kFP8;
  return InvalidArgument("--", key, " must be ", fp8_ok ? "f32, bf16 or fp8" : "f32 or bf16", "; got '", p, "'");
}

const char* PrecisionName(kernels::Precision p) {
  return p == kernels::Precision::kFP8 ? "fp8" : p == kernels::Precision::kBF16 ? "bf16" : "f32";
}
}  // namespace

absl::Status SelectContextOptions(const Args& args, ContextOptions* options) {
  IC_ASSIGN_OR_RETURN(options->indexer_precision, SelectPrecision(args, "indexer-precision"));
  IC_ASSIGN_OR_RETURN(options->attention_precision, SelectPrecision(args, "attention-precision"));
  IC_ASSIGN_OR_RETURN(options->weight_precision, SelectPrecision(args, "weight-precision"));
  const std::string graphs = args.Get("cuda-graphs", "on");
  if (graphs != "on" && graphs != "off") return InvalidArgument("--cuda-graphs must be on or off; got '", graphs, "'");
  options->cuda_graphs = graphs == "on";
  return absl::OkStatus();
}

std::string DescribePrecisions(const ContextOptions& o, bool has_indexer) {
  return absl::StrCat("indexer ", has_indexer ? PrecisionName(o.indexer_precision) : "none", ", attention ",
                      PrecisionName(o.attention_precision), ", weights ", PrecisionName(o.weight_precision));
}

absl::StatusOr<std::vector<NamedPlan>> ParsePlans(const std::string& list, const Model& model) {
  return ParsePlans(list, model.config.num_hidden_layers, &model.plan);
}

absl::StatusOr<std::vector<NamedPlan>> ParsePlans(const std::string& list, int n, const Plan* checkpoint_plan) {
  std::vector<NamedPlan> plans;
  for (absl::string_view piece : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    const std::string item(piece);
    if (item == "dsa" || item == "DSA") {
      plans.push_back({"DSA", std::string(n, 'F')});
    } else if (item == "model" || item == "checkpoint") {
      if (checkpoint_plan == nullptr) return InvalidArgument("plan '", item, "': this model has no checkpoint plan");
      plans.push_back({"checkpoint", checkpoint_plan->ToString()});
    } else if (item.rfind("file:", 0) == 0) {
      IC_ASSIGN_OR_RETURN(Plan p, LoadPlanFile(item.substr(5), n));
      // Named by the file's stem ("searched-1_4" for file:plans/searched-1_4.txt): tables stay narrow.
      std::string name = std::filesystem::path(item.substr(5)).stem().string();
      plans.push_back({name.empty() ? item.substr(5) : name, p.ToString()});
    } else if (item.find_first_of("0123456789./") == std::string::npos) {
      // Letters only: a plan string ("fsss", "FFXF"), whose error names the position and character.
      IC_ASSIGN_OR_RETURN(Plan p, ParsePlan(item, n));
      plans.push_back({item, p.ToString()});
    } else {
      IC_ASSIGN_OR_RETURN(int r, ParseKeepFraction(item));
      IC_ASSIGN_OR_RETURN(Plan p, UniformPlan(n, r));
      plans.push_back({absl::StrCat(r == 1 ? std::string("1/1") : absl::StrCat("1/", r), " uniform"), p.ToString()});
    }
  }
  if (plans.empty()) return InvalidArgument("no plan given");
  return plans;
}

absl::StatusOr<std::vector<int32_t>> ReadTokenFile(const std::string& path, int vocab_size) {
  // A directory made the read throw (std::ios_base::failure: abort), a FIFO blocks, /dev/zero never ends.
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return absl::NotFoundError(absl::StrCat("cannot open token file ", path));
  if (!S_ISREG(st.st_mode)) return InvalidArgument("token file ", path, " is not a regular file");
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot open token file ", path));
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (bytes.size() % 4 != 0) {
    return InvalidArgument("token file ", path, " has ", bytes.size(), " bytes, not a multiple of 4 (uint32 ids)");
  }
  std::vector<int32_t> ids(bytes.size() / 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto* b = reinterpret_cast<const unsigned char*>(bytes.data() + 4 * i);
    const uint32_t v = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t{b[3]} << 24);
    if (v >= static_cast<uint32_t>(vocab_size)) {
      return InvalidArgument("token file ", path, ": id ", v, " at index ", i, " is outside the vocabulary [0, ",
                             vocab_size, ")");
    }
    ids[i] = static_cast<int32_t>(v);
  }
  if (ids.empty()) return InvalidArgument("token file ", path, " is empty");
  return ids;
}

absl::StatusOr<std::vector<int32_t>> ParseTokenList(const std::string& list, int vocab_size) {
  std::vector<int32_t> ids;
  for (absl::string_view piece : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(piece, &v)) return InvalidArgument("token '", piece, "' is not an integer");
    if (v < 0 || v >= vocab_size) {
      return InvalidArgument("token id ", v, " is outside the vocabulary [0, ", vocab_size, ")");
    }
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) return InvalidArgument("no tokens given");
  return ids;
}

Progress::Progress(std::string label, int64_t total)
    : label_(std::move(label)), total_(std::max<int64_t>(total, 1)), start_(Now()), tty_(isatty(2)) {}

void Progress::Update(int64_t done) {
  const double frac = std::min(1.0, static_cast<double>(done) / total_);
  const double elapsed = Now() - start_;
  const double left = frac > 0 ? elapsed / frac - elapsed : 0;
  const int decile = static_cast<int>(frac * 10);
  if (!tty_ && decile == last_decile_) return;
  last_decile_ = decile;
  const int width = 24, filled = static_cast<int>(frac * width);
  std::string bar = std::string(filled, '=') + std::string(width - filled, ' ');
  std::fprintf(stderr, "%s%s [%s] %3d%%  %s left%s", tty_ ? "\r" : "", label_.c_str(), bar.c_str(),
               static_cast<int>(frac * 100), FormatSeconds(left).c_str(), tty_ ? "" : "\n");
  std::fflush(stderr);
}

void Progress::Finish() {
  if (tty_) std::fprintf(stderr, "\r%s done in %s%30s\n", label_.c_str(), FormatSeconds(Now() - start_).c_str(), "");
}

std::string FormatSeconds(double s) {
  char buf[32];
  if (s <= 0) return "0 s";  // (a finished run's "time left")
  if (s < 1e-3) {
    std::snprintf(buf, sizeof buf, "%.1f us", s * 1e6);
  } else if (s < 1) {
    std::snprintf(buf, sizeof buf, "%.1f ms", s * 1e3);
  } else {
    std::snprintf(buf, sizeof buf, "%.2f s", s);
  }
  return buf;
}

int Fail(const char* cmd, const absl::Status& s) {
  std::fprintf(stderr, "indexcache %s: %s\n", cmd, std::string(s.message()).c_str());
  return 1;
}

}  // namespace ic::cli
