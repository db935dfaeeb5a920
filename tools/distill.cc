// `indexcache distill`: trains lightning indexers for a dense checkpoint by distillation against its own
// attention (sdk/distill_loop.h; DESIGN.md §3; paper §3.2 with a plan) and writes a Llama-DSA model.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "sdk/distill_loop.h"
#include "sdk/status.h"
#include "tools/cli.h"

namespace ic::cli {
namespace {

constexpr const char* kHelp =
    "usage: indexcache distill --model DIR --token-file PATH --out DIR [options]\n\n"
    "Adds lightning indexers to a dense Llama checkpoint and trains only them: for each Full layer l serving\n"
    "Shared layers l+1..l+m, loss = mean_t KL(p_t || softmax(I_t)), p = the head-averaged dense attention\n"
    "averaged over layers l..l+m (m = 0 everywhere with --plan dsa: DeepSeek-V3.2's dense warm-up; with a\n"
    "plan: IndexCache's training-aware distillation, arXiv 2603.12201 §3.2). Adam, linear warm-up + cosine\n"
    "decay. Writes DIR/config.json (LlamaDsaForCausalLM), DIR/indexer.safetensors, the dense weights\n"
    "hard-linked, an index, the tokenizer; a checkpoint DIR/distill-checkpoint.safetensors every\n"
    "--checkpoint-every steps (--resume continues it exactly).\n\n"
    "options:\n"
    "  --model DIR            dense HF checkpoint (LlamaForCausalLM)                        [required]\n"
    "  --token-file PATH      calibration tokens, little-endian uint32 ids                  [required]\n"
    "  --out DIR              output model directory                                        [required]\n"
    "  --plan P               dsa (all Full) | 1/2 | 1/4 | 1/8 (uniform) | F/S string | file:PATH  [dsa]\n"
    "  --index-heads N        index_n_heads                                                  [4]\n"
    "  --index-head-dim N     index_head_dim                                                 [64]\n"
    "  --index-topk N         index_topk                                                     [256]\n"
    "  --context N            tokens per calibration window                                  [1024]\n"
    "  --max-tokens N         use at most N calibration tokens (0 = all)                     [0]\n"
    "  --steps N              optimizer steps                                                [200]\n"
    "  --batch N              windows per step                                               [1]\n"
    "  --lr X                 peak learning rate                                             [1e-3]\n"
    "  --warmup N             warm-up steps                                                  [10]\n"
    "  --seed N               initialisation and window order                                [0]\n"
    "  --init PATH            start from these indexer weights (safetensors), e.g. a DSA run's\n"
    "                         DIR/indexer.safetensors before training-aware distillation\n"
    "  --resume               continue DIR/distill-checkpoint.safetensors\n"
    "  --checkpoint-every N   steps between checkpoints (0 = only at the end)                [50]\n"
    "  --eval-token-file PATH held-out tokens: mean distillation loss before and after       [none]\n"
    "  --eval-windows N       held-out windows used                                          [4]\n"
    "  --dtype bf16|f32       indexer weights written                                        [bf16]\n"
    "  --device D             auto | cpu | cuda (the teacher's forward pass; cuda: the loss's  [auto]\n"
    "                         O(T^2) scores and their backward too)\n"
    "  --threads N            gradient threads over Full layers (0 = all cores)              [0]\n";

absl::StatusOr<std::vector<std::vector<int32_t>>> Windows(const std::string& path, int vocab, int64_t context,
                                                          int64_t max_tokens, int64_t max_windows) {
  IC_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, ReadTokenFile(path, vocab));
  if (max_tokens > 0 && static_cast<int64_t>(tokens.size()) > max_tokens) tokens.resize(max_tokens);
  std::vector<std::vector<int32_t>> windows;
  for (size_t off = 0; off + context <= tokens.size(); off += context) {
    if (max_windows > 0 && static_cast<int64_t>(windows.size()) >= max_windows) break;
    windows.emplace_back(tokens.begin() + off, tokens.begin() + off + context);
  }
  if (windows.empty()) {
    return InvalidArgument(path, ": ", tokens.size(), " token(s) do not fill one window of --context ", context,
                           " tokens");
  }
  return windows;
}

double MeanOverFull(const std::vector<double>& v, const Plan& plan) {
  double s = 0;
  for (int l = 0; l < plan.num_layers(); ++l) s += plan.IsFull(l) ? v[l] : 0.0;
  return s / plan.NumFull();
}

}  // namespace

int CmdDistill(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
  }
  CLI_ASSIGN_OR_FAIL(
      args, Args::Parse(argc, argv,
                        {"model", "token-file", "out", "plan", "index-heads", "index-head-dim", "index-topk", "context",
                         "max-tokens", "steps", "batch", "lr", "warmup", "seed", "init", "checkpoint-every",
                         "eval-token-file", "eval-windows", "dtype", "device", "threads"},
                        {"resume"}),
      "distill");
  for (const char* required : {"model", "token-file", "out"}) {
    if (!args.Has(required)) return Fail("distill", InvalidArgument("--", required, " is required (see --help)"));
  }
  CLI_ASSIGN_OR_FAIL(model, SelectModel(args), "distill");
  CLI_ASSIGN_OR_FAIL(device, SelectDevice(args), "distill");
  {  // --device cuda without a GPU fails here, before anything is read or printed
    CLI_ASSIGN_OR_FAIL(probe, kernels::CreateBackend(device), "distill");
    (void)probe;
  }
  const ModelConfig& c = model->config;
  CLI_ASSIGN_OR_FAIL(heads, args.GetInt("index-heads", 4), "distill");
  CLI_ASSIGN_OR_FAIL(head_dim, args.GetInt("index-head-dim", 64), "distill");
  CLI_ASSIGN_OR_FAIL(topk, args.GetInt("index-topk", 256), "distill");
  CLI_ASSIGN_OR_FAIL(context, args.GetInt("context", 1024), "distill");
  CLI_ASSIGN_OR_FAIL(max_tokens, args.GetInt("max-tokens", 0), "distill");
  CLI_ASSIGN_OR_FAIL(steps, args.GetInt("steps", 200), "distill");
  CLI_ASSIGN_OR_FAIL(batch, args.GetInt("batch", 1), "distill");
  CLI_ASSIGN_OR_FAIL(lr, args.GetDouble("lr", 1e-3), "distill");
  CLI_ASSIGN_OR_FAIL(warmup, args.GetInt("warmup", 10), "distill");
  CLI_ASSIGN_OR_FAIL(seed, args.GetInt("seed", 0), "distill");
  CLI_ASSIGN_OR_FAIL(every, args.GetInt("checkpoint-every", 50), "distill");
  CLI_ASSIGN_OR_FAIL(eval_windows, args.GetInt("eval-windows", 4), "distill");
  CLI_ASSIGN_OR_FAIL(threads, args.GetInt("threads", 0), "distill");
  if (context < 2 || context > c.max_position_embeddings) {
    return Fail("distill", InvalidArgument("--context must be in [2, max_position_embeddings = ", c.max_position_embeddings,
                                "], got ", context));
  }
  if (heads < 1 || heads > 1024 || head_dim < 2 || head_dim > 4096 || topk < 1 || topk > 65536) {
    return Fail("distill", InvalidArgument("--index-heads must be in [1, 1024], --index-head-dim in [2, 4096], --index-topk in "
                                "[1, 65536]; got ", heads, ", ", head_dim, ", ", topk));
  }
  if (batch < 1 || batch > 4096 || steps < 0 || warmup < 0 || seed < 0 || every < 0 || eval_windows < 1 ||
      threads < 0 || threads > 1024 || max_tokens < 0) {
    return Fail("distill", InvalidArgument("--batch must be in [1, 4096], --eval-windows >= 1, --threads in [0, 1024], and "
                                "--steps, --warmup, --seed, --checkpoint-every, --max-tokens >= 0"));
  }
  const IndexerShape shape{.n_heads = static_cast<int>(heads), .head_dim = static_cast<int>(head_dim),
                           .topk = static_cast<int>(topk)};
  if (auto dsa = DsaConfigFor(c, shape); !dsa.ok()) return Fail("distill", dsa.status());  // before reading any tokens
  const std::string dtype_name = args.Get("dtype", "bf16");
  if (dtype_name != "bf16" && dtype_name != "f32") {
    return Fail("distill", InvalidArgument("--dtype must be bf16 or f32, got \"", dtype_name, "\""));
  }
  const DType dtype = dtype_name == "bf16" ? DType::kBF16 : DType::kF32;
  const std::string plan_arg = args.Get("plan", "dsa");
  CLI_ASSIGN_OR_FAIL(plans, ParsePlans(plan_arg == "dsa" ? std::string(c.num_hidden_layers, 'F') : plan_arg, *model), "distill");
  if (plans.size() != 1) return Fail("distill", InvalidArgument("--plan takes one plan, got ", plans.size()));
  CLI_ASSIGN_OR_FAIL(plan, ParsePlan(plans[0].pattern, c.num_hidden_layers), "distill");
  CLI_ASSIGN_OR_FAIL(windows, Windows(args.Get("token-file"), c.vocab_size, context, max_tokens, 0), "distill");

  if (!(lr > 0) || !std::isfinite(lr)) return Fail("distill", InvalidArgument("--lr must be positive and finite, got ", lr));
  if (steps == 0 && !args.Has("init") && !args.Has("resume")) {
    return Fail("distill", InvalidArgument("--steps 0 trains nothing: give --init FILE to assemble a DSA model from trained "
                                "indexers (untrained ones would only add noise)"));
  }
  const std::string out = args.Get("out");
  const std::string ckpt = out + "/distill-checkpoint.safetensors";
  // Where the results go is checked before any work (not after the last step).
  if (absl::Status s = CheckDistillOutputs(model->path, out, ckpt); !s.ok()) return Fail("distill", s);
  std::error_code ec;
  const bool have_ckpt = std::filesystem::exists(ckpt, ec);
  IndexerTrainingState state;
  if (args.Has("resume")) {
    if (!have_ckpt) return Fail("distill", absl::NotFoundError(absl::StrCat("--resume: ", ckpt, " does not exist")));
    CLI_ASSIGN_OR_FAIL(loaded, LoadIndexerCheckpoint(ckpt, c), "distill");
    if (loaded.plan.ToString() != plan.ToString()) {
      return Fail("distill", InvalidArgument("--resume: the checkpoint's plan ", loaded.plan.ToString(), " differs from --plan ",
                                  plan.ToString()));
    }
    if (args.Has("init")) return Fail("distill", InvalidArgument("--resume continues the checkpoint's indexers; drop --init"));
    const ModelConfig& k = loaded.config;
    const struct {
      const char* flag;
      int64_t given, stored;
    } fixed[] = {{"index-heads", heads, k.index_n_heads},
                 {"index-head-dim", head_dim, k.index_head_dim},
                 {"index-topk", topk, k.index_topk},
                 {"seed", seed, static_cast<int64_t>(loaded.seed)}};
    for (const auto& f : fixed) {
      if (args.Has(f.flag) && f.given != f.stored) {
        return Fail("distill", InvalidArgument("--resume: the checkpoint has ", f.flag, " ", f.stored, "; --", f.flag, " ",
                                    f.given, " conflicts (drop it or start a new run)"));
      }
    }
    state = std::move(loaded);
    std::printf("resuming %s at step %lld\n", ckpt.c_str(), static_cast<long long>(state.step));
  } else {
    if (have_ckpt) {
      return Fail("distill", absl::AlreadyExistsError(absl::StrCat(ckpt, " exists: pass --resume to continue it, or remove it")));
    }
    CLI_ASSIGN_OR_FAIL(fresh, InitIndexerTraining(c, shape, plan, static_cast<uint64_t>(seed)), "distill");
    state = std::move(fresh);
    if (args.Has("init")) {
      if (absl::Status s = LoadInitialIndexers(args.Get("init"), &state); !s.ok()) return Fail("distill", s);
    }
  }
  // --out is created by the first checkpoint or the final write, so a run that fails early leaves nothing.

  std::vector<std::vector<int32_t>> held_out;
  if (args.Has("eval-token-file")) {
    CLI_ASSIGN_OR_FAIL(h, Windows(args.Get("eval-token-file"), c.vocab_size, context, 0, eval_windows), "distill");
    held_out = std::move(h);
  }
  std::printf("distill %s: %d layers (%d Full: %s), indexer %lld heads x %lld, top-k %lld; %zu window(s) of %lld "
              "tokens; %lld steps x %lld window(s), lr %g, warm-up %lld, seed %lld, %s\n",
              model->path.c_str(), c.num_hidden_layers, plan.NumFull(), plan.ToString().c_str(),
              static_cast<long long>(state.config.index_n_heads), static_cast<long long>(state.config.index_head_dim),
              static_cast<long long>(state.config.index_topk), windows.size(), static_cast<long long>(context),
              static_cast<long long>(steps), static_cast<long long>(batch), lr, static_cast<long long>(warmup),
              static_cast<long long>(state.seed),
              device == kernels::DeviceKind::kCuda ? "teacher and loss on cuda" : "teacher and loss on the cpu");
  std::fflush(stdout);
  auto evaluate = [&](const char* when) -> absl::Status {
    if (held_out.empty()) return absl::OkStatus();
    IC_ASSIGN_OR_RETURN(std::vector<double> loss,
                        EvaluateIndexers(model, held_out, state, device, static_cast<int>(threads)));
    std::printf("held-out loss %s: %.6f (mean over Full layers, %zu window(s));", when, MeanOverFull(loss, state.plan),
                held_out.size());
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      if (state.plan.IsFull(l)) std::printf(" L%d %.4f", l, loss[l]);
    }
    std::printf("\n");
    std::fflush(stdout);
    return absl::OkStatus();
  };
  if (absl::Status s = evaluate("before"); !s.ok()) return Fail("distill", s);

  DistillOptions o;
  o.steps = steps;
  o.windows_per_step = static_cast<int>(batch);
  o.learning_rate = lr;
  o.warmup_steps = warmup;
  o.device = device;
  o.threads = static_cast<int>(threads);
  o.checkpoint_path = ckpt;
  o.checkpoint_every = every;
  const int64_t print_every = std::max<int64_t>(1, steps / 50);
  o.on_step = [&](const DistillProgress& p) {
    if (p.step % print_every != 0 && p.step != p.steps) return;
    std::printf("step %lld/%lld  loss %.6f  lr %.3g  %s elapsed (teacher %s, gradients %s), ~%s left\n",
                static_cast<long long>(p.step), static_cast<long long>(p.steps), p.loss, p.learning_rate,
                FormatSeconds(p.elapsed_seconds).c_str(), FormatSeconds(p.teacher_seconds).c_str(),
                FormatSeconds(p.gradient_seconds).c_str(), FormatSeconds(p.remaining_seconds).c_str());
    std::fflush(stdout);
  };
  if (steps > 0 && steps <= warmup) {
    std::fprintf(stderr, "distill: note: --steps %lld ends within the %lld warm-up steps (--warmup): the learning "
                         "rate never reaches its peak --lr\n", static_cast<long long>(steps),
                 static_cast<long long>(warmup));
  }
  if (absl::Status s = TrainIndexers(model, windows, o, &state); !s.ok()) return Fail("distill", s);
  if (absl::Status s = evaluate("after"); !s.ok()) return Fail("distill", s);
  if (absl::Status s = WriteDsaModel(model->path, state, out, dtype); !s.ok()) return Fail("distill", s);
  std::printf("wrote %s (LlamaDsaForCausalLM, plan %s, indexers %s in indexer.safetensors)%s%s\n", out.c_str(),
              state.plan.ToString().c_str(), dtype_name.c_str(), steps > 0 ? "; checkpoint " : "",
              steps > 0 ? ckpt.c_str() : "");
  return 0;
}

}  // namespace ic::cli
