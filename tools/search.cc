// `indexcache search`: training-free greedy IndexCache plan search (sdk/search.h; DESIGN.md §3).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "sdk/search.h"
#include "sdk/status.h"
#include "tools/cli.h"

namespace ic::cli {
namespace {

constexpr const char* kHelp =
    "usage: indexcache search --keep 1/2|1/4|1/8 [--token-file PATH] [options]\n\n"
    "Greedy IndexCache plan search (paper §3.1): start all-Full, flip one Full layer (never layer 0) to\n"
    "Shared per step, the one whose plan has the lowest mean LM loss on the calibration windows, until\n"
    "ceil(N / r) Full layers remain for keep 1/r. Each step's flip and loss go to stdout, progress and time\n"
    "left to stderr; the plan file holds the pattern and the loss after every step. Memory: captures of one\n"
    "window, tokens x layers x (hidden + index_topk) x 4 B (bounded at 4 GiB; see sdk/search.h).\n\n"
    "options:\n"
    "  --keep F               keep fraction 1/r of indexers (1/2, 1/4, 1/8, ...)              [required]\n"
    "  --token-file PATH      calibration tokens, little-endian uint32 ids (required with --model;\n"
    "                         the synthetic model uses seeded random tokens without it)\n"
    "  --model DIR            HF checkpoint directory; default: the embedded synthetic model (--seed, --layers)\n"
    "  --context N            tokens per calibration window (each a fresh sequence)         [1024]\n"
    "  --max-tokens N         use at most N calibration tokens (0 = all; random tokens: 2 windows) [0]\n"
    "  --out PATH             plan file to write                                           [plan.txt]\n"
    "  --device D             auto | cpu | cuda                                              [auto]\n";

}  // namespace

int CmdSearch(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
  }
  CLI_ASSIGN_OR_FAIL(args, Args::Parse(argc, argv, {"model", "device", "seed", "layers", "keep", "token-file",
                                                       "context", "max-tokens", "out"},
                                          {}), "search");
  if (!args.Has("keep")) return Fail("search", InvalidArgument("--keep is required (1/2, 1/4, 1/8, ...)"));
  CLI_ASSIGN_OR_FAIL(r, ParseKeepFraction(args.Get("keep")), "search");
  CLI_ASSIGN_OR_FAIL(model, SelectModel(args), "search");
  CLI_ASSIGN_OR_FAIL(device, SelectDevice(args), "search");
  CLI_ASSIGN_OR_FAIL(context, args.GetInt("context", 1024), "search");
  if (context < 2 || context > (int64_t{1} << 30)) {
    return Fail("search", InvalidArgument("--context must be in [2, 2^30], got ", context));
  }
  CLI_ASSIGN_OR_FAIL(max_tokens, args.GetInt("max-tokens", 0), "search");
  if (max_tokens < 0) return Fail("search", InvalidArgument("--max-tokens must be ≥ 0, got ", max_tokens));
  const ModelConfig& c = model->config;
  const int N = c.num_hidden_layers;
  const int target = (N + r - 1) / r;

  std::vector<int32_t> tokens;
  std::string data;
  if (args.Has("token-file")) {
    CLI_ASSIGN_OR_FAIL(t, ReadTokenFile(args.Get("token-file"), c.vocab_size), "search");
    tokens = std::move(t);
    data = args.Get("token-file");
  } else if (args.Has("model")) {
    return Fail("search", InvalidArgument("--token-file is required with --model (random tokens only for the synthetic model)"));
  } else {
    const int64_t n = max_tokens > 0 ? max_tokens : 2 * context;
    std::mt19937 rng(20260312);
    std::uniform_int_distribution<int32_t> d(0, c.vocab_size - 1);
    tokens.resize(static_cast<size_t>(n));
    for (auto& t : tokens) t = d(rng);
    data = "seeded random tokens";
  }
  if (max_tokens > 0 && static_cast<int64_t>(tokens.size()) > max_tokens) tokens.resize(max_tokens);
  std::vector<std::vector<int32_t>> windows;
  for (size_t off = 0; off + 1 < tokens.size(); off += context) {
    windows.emplace_back(tokens.begin() + off, tokens.begin() + std::min<size_t>(off + context, tokens.size()));
  }
  if (windows.empty()) {
    return Fail("search", InvalidArgument("the calibration set is empty: ", tokens.size(), " token(s); the loss needs at least 2"));
  }
  if (c.has_indexer && context <= c.index_topk) {
    std::fprintf(stderr, "indexcache search: warning: --context %lld is not longer than index_topk = %d: every key is "
                         "selected, so every plan scores the same and the search only shows the mechanism\n",
                 static_cast<long long>(context), c.index_topk);
  }
  const std::string out_path = args.Get("out", "plan.txt");
  std::printf("search keep 1/%d: %d -> %d Full layers of %d, %zu window(s) of <= %lld tokens (%s), captures %s MiB\n",
              r, N, target, N, windows.size(), static_cast<long long>(context), data.c_str(),
              absl::StrCat(SearchCaptureBytes(c, std::min<int64_t>(context, static_cast<int64_t>(tokens.size()))) >> 20)
                  .c_str());
  std::fflush(stdout);

  const bool tty = isatty(2);
  double last_print = -1e9;
  SearchOptions o;
  o.device = device;
  o.keep_label = absl::StrCat("1/", r);
  o.on_start = [&](double loss) {
    std::printf("step %2d  all Full       loss %.6f  %s\n", 0, loss, std::string(N, 'F').c_str());
    std::fflush(stdout);
  };
  o.on_step = [&](const SearchStep& s) {
    if (tty) std::fprintf(stderr, "\r%70s\r", "");
    std::printf("step %2d  flip layer %3d  loss %.6f  %s  (%s)\n", s.step, s.layer, s.loss, s.plan.c_str(),
                FormatSeconds(s.elapsed_seconds).c_str());
    std::fflush(stdout);
  };
  o.progress = [&](const SearchProgress& p) {
    // A terminal gets a line redrawn in place; a log gets one line per window scored, at most every 5 s.
    const bool window_done = p.candidate == p.candidates;
    if (!tty && !(window_done && p.elapsed_seconds - last_print >= 5.0)) return;
    last_print = p.elapsed_seconds;
    std::fprintf(stderr, "%sstep %d/%d  window %d/%d  candidate %d/%d  %s elapsed, ~%s left%s", tty ? "\r" : "",
                 p.step, p.steps, p.window + 1, p.windows, p.candidate, p.candidates,
                 FormatSeconds(p.elapsed_seconds).c_str(), FormatSeconds(p.remaining_seconds).c_str(),
                 tty ? "   " : "\n");
    std::fflush(stderr);
  };
  CLI_ASSIGN_OR_FAIL(plan, SearchPlan(model, windows, target, o), "search");
  if (tty) std::fprintf(stderr, "\n");
  if (absl::Status s = SavePlanFile(out_path, plan); !s.ok()) return Fail("search", s);
  std::printf("plan %s  (%d Full of %d; %s)\nwritten to %s\n", plan.ToString().c_str(), plan.NumFull(), N,
              plan.source.c_str(), out_path.c_str());
  return 0;
}

}  // namespace ic::cli
