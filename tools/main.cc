// `indexcache`: the IndexCache SDK's command-line tool.
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "tools/cli.h"

namespace {

constexpr const char* kUsage = R"(indexcache — DeepSeek-Sparse-Attention runtime with IndexCache

usage: indexcache <command> [options]      (indexcache <command> --help for its options)

commands:
  demo    run the embedded synthetic DSA model with baseline DSA and an IndexCache plan, side by side
  info    model and plan summary (layers, Full/Shared, cache bytes per token)
  run     generate tokens from token ids
  eval    LM loss and perplexity of one or several plans on a token file
  bench   prefill and decode timing per plan
  search  greedy IndexCache plan search (--keep 1/2|1/4|1/8) on calibration tokens; writes a plan file
  distill train lightning indexers for a dense model against its own attention; writes a DSA model
)";

}  // namespace

namespace {
int Dispatch(int argc, char** argv);
}  // namespace

// Every command reports errors as statuses; an exception that still escapes (out of host memory in a
// library) becomes a message and exit status 1, never std::terminate.
int main(int argc, char** argv) {
  try {
    return Dispatch(argc, argv);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "indexcache: out of host memory\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "indexcache: internal error: %s\n", e.what());
  }
  return 1;
}

namespace {
int Dispatch(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "demo") return ic::cli::CmdDemo(argc - 1, argv + 1);
  if (cmd == "info") return ic::cli::CmdInfo(argc - 1, argv + 1);
  if (cmd == "run") return ic::cli::CmdRun(argc - 1, argv + 1);
  if (cmd == "eval") return ic::cli::CmdEval(argc - 1, argv + 1);
  if (cmd == "bench") return ic::cli::CmdBench(argc - 1, argv + 1);
  if (cmd == "search") return ic::cli::CmdSearch(argc - 1, argv + 1);
  if (cmd == "distill") return ic::cli::CmdDistill(argc - 1, argv + 1);
  std::fprintf(stderr, "indexcache: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
  return 2;
}
}  // namespace
