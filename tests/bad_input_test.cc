// Bad input, end to end: each test is an input that crashed, hung, overflowed (UBSan) or was accepted
// silently before, asserting the clear error the product rule asks for ("bad input gets a clear error
// naming the problem, never a crash, a hang or silent garbage; nothing the caller owns is lost").
//
// Layers covered: config.json, safetensors and shard index, weights mapping, plans and plan files, the
// synthetic model, the C ABI (its shims compiled in), the `indexcache` CLI (run as a child process from the
// build tree) and the Python ctypes module (python3 child process; skipped without python3).
// Inputs that could hang run in a forked child with a deadline.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "include/indexcache/indexcache.h"
#include "sdk/config.h"
#include "sdk/engine.h"
#include "sdk/plan.h"
#include "sdk/safetensors.h"
#include "sdk/synthetic_model.h"
#include "sdk/weights.h"

// The C ABI's shims, compiled into this test: the test links the SDK statically, and dlopen-ing
// libindexcache.so next to it would register plan.proto twice in the shared libprotobuf (a fatal error).
#include "bindings_c/c_context.cc"      // NOLINT(build/include)
#include "bindings_c/c_metrics.cc"      // NOLINT(build/include)
#include "bindings_c/c_model.cc"        // NOLINT(build/include)
#include "bindings_c/indexcache_c.cc"   // NOLINT(build/include)

namespace ic {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

std::string ErrorOf(const absl::Status& s) { return s.ok() ? "OK" : std::string(s.message()); }
template <typename T>
std::string ErrorOf(const absl::StatusOr<T>& s) {
  return ErrorOf(s.status());
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// The build tree: this binary is <build>/tests/bad_input_test.
std::string BuildDir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  buf[n] = '\0';
  return fs::path(buf).parent_path().parent_path().string();
}

// Runs `fn` in a forked child; true when it returned within `seconds` (the child is killed otherwise).
// For inputs that used to block forever (a FIFO) or read forever (/dev/zero).
template <typename F>
bool FinishesWithin(int seconds, F&& fn) {
  const pid_t pid = fork();
  if (pid == 0) {
    fn();
    _exit(0);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) && WEXITSTATUS(status) == 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return false;
}

struct ProcessResult {
  bool exited = false;  // false: killed by a signal (abort, crash) or by the deadline
  int code = -1;
  std::string output;   // stdout + stderr
};

// Runs argv[0] with its arguments, stdout and stderr captured, within `seconds`.
ProcessResult RunProcess(const std::vector<std::string>& argv, int seconds = 120,
                         const std::vector<std::string>& env = {}) {
  ProcessResult r;
  int fds[2];
  if (pipe(fds) != 0) return r;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    for (const std::string& e : env) putenv(const_cast<char*>(strdup(e.c_str())));
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  int status = 0;
  bool done = false;
  char buf[4096];
  while (true) {
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) r.output.append(buf, n);
    if (done) break;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      done = true;  // drain once more
      continue;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      r.output += "\n[killed: deadline]";
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  close(fds[0]);
  r.exited = WIFEXITED(status);
  r.code = r.exited ? WEXITSTATUS(status) : -WTERMSIG(status);
  return r;
}

class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* tmp = std::getenv("TEST_TMPDIR");
    std::string base = tmp != nullptr ? tmp : fs::temp_directory_path().string();
    std::string templ = base + "/ic_bad_input_XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    root_ = mkdtemp(buf.data());
    // A small DeepSeek-V3.2-style checkpoint (MLA, indexer, MoE) written to disk: the base of the attacks.
    SyntheticModelOptions o;
    o.num_layers = 4;
    o.hidden_size = 64;
    o.vocab_size = 128;
    o.index_topk = 8;
    o.index_n_heads = 4;
    o.index_head_dim = 16;
    o.plan = "FSFS";
    auto model = BuildSyntheticModel(o);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *model;
    ASSERT_TRUE(SaveModel(*model_, root_ + "/tiny").ok());
    config_ = json::parse(ReadText(root_ + "/tiny/config.json"));
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(root_, ec);
    model_.reset();
  }

  // A copy of the tiny checkpoint with config.json replaced by `config`.
  static std::string CheckpointWithConfig(const std::string& name, const json& config) {
    const std::string dir = root_ + "/" + name;
    fs::create_directories(dir);
    fs::copy_file(root_ + "/tiny/model.safetensors", dir + "/model.safetensors",
                  fs::copy_options::overwrite_existing);
    WriteText(dir + "/config.json", config.dump(2));
    return dir;
  }

  static std::string root_;
  static std::shared_ptr<const Model> model_;
  static json config_;
};
std::string BadInputTest::root_;
std::shared_ptr<const Model> BadInputTest::model_;
json BadInputTest::config_;

// ---- config.json -------------------------------------------------------------------------------------

// YaRN divides by log(rope_theta) and takes log(original / (beta · 2π)): theta = 1 or a negative beta
// made every RoPE frequency NaN, and every logit NaN, silently.
TEST_F(BadInputTest, YarnParametersThatMakeEveryLogitNanAreRejected) {
  json c = config_;
  c["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1.0}, {"factor", 4.0},
                          {"original_max_position_embeddings", 4096}};
  EXPECT_THAT(ErrorOf(ParseModelConfig(c.dump())), HasSubstr("rope_theta must be greater than 1"));

  c["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 10000.0}, {"factor", 4.0}, {"beta_fast", -1},
                          {"original_max_position_embeddings", 4096}};
  EXPECT_THAT(ErrorOf(ParseModelConfig(c.dump())), HasSubstr("rope_parameters.beta_fast must be positive, got -1"));

  c["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 10000.0}, {"factor", 0.0},
                          {"original_max_position_embeddings", 4096}};
  EXPECT_THAT(ErrorOf(ParseModelConfig(c.dump())), HasSubstr("rope_parameters.factor must be positive, got 0"));

  // Float32 tables: 1e-300 rounds to 0 and gives infinite frequencies.
  c["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e-300}};
  EXPECT_THAT(ErrorOf(ParseModelConfig(c.dump())), HasSubstr("rope_theta 1e-300 is outside the float32 range"));

  // Still accepted: the usual values.
  c["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 10000.0}, {"factor", 4.0},
                          {"original_max_position_embeddings", 4096}, {"beta_fast", 32}, {"beta_slow", 1}};
  EXPECT_TRUE(ParseModelConfig(c.dump()).ok());
}

// Sizes whose sums/products overflow int (UBSan: signed integer overflow in the weight shapes).
TEST_F(BadInputTest, ConfigSizesWhoseProductsOverflowInt32AreRejected) {
  json c = config_;
  c["qk_nope_head_dim"] = 2147483646;
  EXPECT_THAT(ErrorOf(ParseModelConfig(c.dump())), HasSubstr("qk_nope_head_dim + qk_rope_head_dim = 2147483662"));
  c = config_;
  c["kv_lora_rank"] = 2147483647;
  EXPECT_THAT(ErrorOf(ParseModelConfig(c.dump())), HasSubstr("kv_lora_rank + qk_rope_head_dim"));
  c = config_;
  c["num_attention_heads"] = 1 << 30;
  c["num_key_value_heads"] = 1 << 30;
  EXPECT_THAT(ErrorOf(ParseModelConfig(c.dump())), HasSubstr("exceeds the int32 range"));
  c = config_;
  c["index_n_heads"] = 1 << 20;
  c["index_head_dim"] = 1 << 12;
  EXPECT_THAT(ErrorOf(ParseModelConfig(c.dump())), HasSubstr("index_n_heads * index_head_dim = 4294967296"));
}

TEST_F(BadInputTest, ConfigThatIsADirectoryAFifoOrADirThatIsAFile) {
  const std::string dir = root_ + "/config_dir";
  fs::create_directories(dir + "/config.json");
  EXPECT_THAT(ErrorOf(LoadModelConfig(dir)), HasSubstr("config.json: not a regular file"));

  const std::string fifo_dir = root_ + "/config_fifo";
  fs::create_directories(fifo_dir);
  ASSERT_EQ(mkfifo((fifo_dir + "/config.json").c_str(), 0600), 0);
  EXPECT_TRUE(FinishesWithin(20, [&] {
    absl::StatusOr<ModelConfig> c = LoadModelConfig(fifo_dir);
    if (c.ok() || !absl::StrContains(c.status().message(), "not a regular file")) _exit(1);
  })) << "reading a FIFO named config.json must fail, not block";

  EXPECT_THAT(ErrorOf(LoadModelConfig(root_ + "/tiny/config.json")), HasSubstr("not a directory"));
}

// ---- safetensors -------------------------------------------------------------------------------------

TEST_F(BadInputTest, ShardOrIndexThatIsAFifoOrADirectoryFailsWithoutBlocking) {
  const std::string dir = root_ + "/st_fifo";
  fs::create_directories(dir);
  ASSERT_EQ(mkfifo((dir + "/model.safetensors").c_str(), 0600), 0);
  EXPECT_TRUE(FinishesWithin(20, [&] {
    auto s = TensorStore::Open(dir);
    if (s.ok() || !absl::StrContains(s.status().message(), "not a regular file")) _exit(1);
  })) << "a FIFO named model.safetensors must fail, not block in open()";

  const std::string idx_dir = root_ + "/index_fifo";
  fs::create_directories(idx_dir);
  ASSERT_EQ(mkfifo((idx_dir + "/model.safetensors.index.json").c_str(), 0600), 0);
  EXPECT_TRUE(FinishesWithin(20, [&] {
    auto s = TensorStore::Open(idx_dir);
    if (s.ok() || !absl::StrContains(s.status().message(), "not a regular file")) _exit(1);
  }));

  const std::string idx_is_dir = root_ + "/index_dir";
  fs::create_directories(idx_is_dir + "/model.safetensors.index.json");
  EXPECT_THAT(ErrorOf(TensorStore::Open(idx_is_dir)), HasSubstr("model.safetensors.index.json: not a regular file"));
}

// A zero-size tensor whose other dimensions multiply past int64 passes the header check (it holds 0 bytes);
// numel() overflowed (UBSan) before reaching the 0.
TEST_F(BadInputTest, NumelOfAnEmptyTensorWithHugeDimensionsIsZero) {
  TensorInfo t;
  t.shape = {int64_t{1} << 32, int64_t{1} << 32, 0};
  EXPECT_EQ(t.numel(), 0);
}

// ---- weights -----------------------------------------------------------------------------------------

// A 1 KB config.json claiming 2^30 experts (or 5·10^7 layers) made the loader build a slot table of
// billions of entries before looking at a tensor: std::bad_alloc (an abort in the CLI) or hours.
TEST_F(BadInputTest, ConfigClaimingHugeCountsFailsFastNamingAMissingTensor) {
  json c = config_;
  c["n_routed_experts"] = 1 << 30;
  const std::string experts = CheckpointWithConfig("huge_experts", c);
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::shared_ptr<const Model>> m = LoadModel(experts);
  EXPECT_THAT(ErrorOf(m), HasSubstr("checkpoint lacks tensor \"model.layers.1.mlp.experts.8.gate_proj.weight\""));
  EXPECT_THAT(ErrorOf(m), HasSubstr("the config requires"));

  c = config_;
  c["num_hidden_layers"] = 50000000;
  c.erase("mlp_layer_types");
  c.erase("indexer_types");
  const std::string layers = CheckpointWithConfig("huge_layers", c);
  EXPECT_THAT(ErrorOf(LoadModel(layers)), HasSubstr("checkpoint lacks tensor \"model.layers.4."));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 120);

  // One missing tensor in an otherwise complete checkpoint: still named.
  EXPECT_TRUE(LoadModel(root_ + "/tiny").ok());
}

// ---- plans -------------------------------------------------------------------------------------------

TEST_F(BadInputTest, PlanErrorsEscapeControlBytesAndShortenLongPatterns) {
  // A NUL cut the C ABI's message at `plan "FF`.
  const std::string with_nul("FF\0F", 4);
  const std::string msg = ErrorOf(ParsePlan(with_nul, 4));
  EXPECT_THAT(msg, HasSubstr("position 2 is '\\x00'"));
  EXPECT_EQ(msg.find('\0'), std::string::npos);
  // A 1 MB plan string gave a 1 MB message.
  const std::string huge(1 << 20, 'F');
  const std::string long_msg = ErrorOf(ParsePlan(huge, 4));
  EXPECT_THAT(long_msg, HasSubstr("(1048576 characters) has 1048576 layers; the model has 4"));
  EXPECT_LT(long_msg.size(), 400u);
  // C7, unchanged.
  EXPECT_THAT(ErrorOf(ParsePlan("FFXF", 4)), HasSubstr("plan \"FFXF\": position 2 is 'X'"));
  EXPECT_THAT(ErrorOf(ParsePlan("SFFF", 4)), HasSubstr("plan \"SFFF\": layer 0 must be Full"));
}

TEST_F(BadInputTest, PlanFileThatIsADirectoryAFifoOrDevZero) {
  const std::string dir = root_ + "/plan_dir";
  fs::create_directories(dir);
  // Before: `plan "" has 0 layers`.
  EXPECT_THAT(ErrorOf(LoadPlanFile(dir, 4)), HasSubstr("plan file is not a regular file"));
  EXPECT_TRUE(FinishesWithin(20, [&] {
    if (LoadPlanFile("/dev/zero", 4).ok()) _exit(1);  // before: read until out of memory
  }));
  const std::string fifo = root_ + "/plan_fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_TRUE(FinishesWithin(20, [&] {
    if (LoadPlanFile(fifo, 4).ok()) _exit(1);
  }));
  EXPECT_EQ(LoadPlanFile(root_ + "/no_such_plan", 4).status().code(), absl::StatusCode::kNotFound);
}

// ---- synthetic model ---------------------------------------------------------------------------------

TEST_F(BadInputTest, SyntheticModelSizesThatOverflowOrCannotFitAreRejected) {
  SyntheticModelOptions o;
  o.num_layers = 1;
  o.hidden_size = 64;
  o.vocab_size = 128;
  o.index_n_heads = 1 << 20;  // × index_head_dim overflowed int (UBSan), and the model was built anyway
  o.index_head_dim = 1 << 12;
  EXPECT_THAT(ErrorOf(BuildSyntheticModel(o)), HasSubstr("index_n_heads * index_head_dim * hidden_size"));
  o.index_n_heads = 8;
  o.index_head_dim = 64;
  o.vocab_size = std::numeric_limits<int32_t>::max();  // std::bad_alloc (ASan: abort)
  EXPECT_THAT(ErrorOf(BuildSyntheticModel(o)), HasSubstr("vocab_size * hidden_size"));
  o.vocab_size = 128;
  o.num_layers = std::numeric_limits<int32_t>::max();
  EXPECT_EQ(BuildSyntheticModel(o).status().code(), absl::StatusCode::kResourceExhausted);
}

// A checkpoint whose weight holds an inf (or NaN) used to load and make every logit NaN with exit code 0 at
// every precision: it is refused at load, naming the tensor.
TEST_F(BadInputTest, NonFiniteWeightIsRejectedAtLoadNamingTheTensor) {
  Model poisoned = *model_;
  poisoned.weights.layers[1].o_proj.data[3] = std::numeric_limits<float>::infinity();
  ASSERT_TRUE(SaveModel(poisoned, root_ + "/inf_weight").ok());
  const std::string err = ErrorOf(LoadModel(root_ + "/inf_weight"));
  EXPECT_THAT(err, HasSubstr("model.layers.1.self_attn.o_proj.weight"));
  EXPECT_THAT(err, HasSubstr("non-finite"));
}

// FP8 weights: a block whose largest magnitude is tiny (amax / 448 underflows to 0) used to be quantised as
// 0 / 0 = NaN and made every logit NaN; such a block now gets scale 1 (its values round to 0 in E4M3).
TEST_F(BadInputTest, Fp8WeightsWithATinyBlockStayFinite) {
  Model tiny = *model_;
  std::vector<float>& w = tiny.weights.layers[0].o_proj.data;
  std::fill(w.begin(), w.end(), 0.0f);
  w[5] = 1e-45f;  // the smallest subnormal
  auto model = std::make_shared<const Model>(std::move(tiny));
  auto ctx = Context::Create(model, {.max_tokens = 64, .weight_precision = kernels::Precision::kFP8});
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  const int seq = *(*ctx)->AddSequence();
  const std::vector<int32_t> tokens = {5, 17, 42, 99};
  std::vector<float> logits(model->config.vocab_size);
  Segment seg{seq, tokens};
  ASSERT_TRUE((*ctx)->Forward({&seg, 1}, {.last_logits = logits.data()}).ok());
  for (float x : logits) EXPECT_TRUE(std::isfinite(x)) << x;
}

// ---- engine (sdk/engine.cc: not fixed here) -----------------------------------------------------------

// Context::Create computes (max_tokens + block_size - 1) / block_size in int64 and sizes int32 slots from it:
// max_tokens = INT64_MAX overflows (UBSan) and ends in std::length_error thrown out of Create; 2^62 ends in
// std::bad_alloc. Proposed fix (sdk/engine.cc): reject max_tokens > INT32_MAX - block_size + 1 next to the
// block_size check, naming max_tokens (the C ABI now does this before calling Create).
TEST_F(BadInputTest, EngineRejectsMaxTokensBeyondInt32Slots) {
  for (int64_t max_tokens : {std::numeric_limits<int64_t>::max(), int64_t{1} << 62, int64_t{1} << 40}) {
    ContextOptions o;
    o.max_tokens = max_tokens;
    absl::StatusOr<std::unique_ptr<Context>> ctx;
    EXPECT_NO_THROW(ctx = Context::Create(model_, o));
    EXPECT_THAT(ErrorOf(ctx), HasSubstr("max_tokens")) << max_tokens;
  }
}

// ---- C ABI -----------------------------------------------------------------------------------------

TEST(BadInputCApiTest, MaxTokensBeyondInt32SlotsAndNegativeLengths) {
  ic_synthetic_params_t sp;
  ASSERT_EQ(ic_synthetic_default_params(&sp), IC_OK);
  sp.num_layers = 2;
  sp.hidden_size = 64;
  sp.vocab_size = 128;
  sp.index_topk = 8;
  sp.index_n_heads = 2;
  sp.index_head_dim = 16;
  ic_model_t* model = nullptr;
  ASSERT_EQ(ic_model_create_synthetic(&sp, &model), IC_OK) << ic_last_error_message();

  ic_context_params_t cp;
  ASSERT_EQ(ic_context_default_params(&cp), IC_OK);
  cp.device = IC_DEVICE_CPU;
  ic_context_t* ctx = nullptr;
  // Before: IC_ERR_INTERNAL "vector::_M_default_append" (INT64_MAX, after a signed overflow) or
  // IC_ERR_OUT_OF_MEMORY "std::bad_alloc" (2^62).
  for (int64_t max_tokens : {std::numeric_limits<int64_t>::max(), int64_t{1} << 62}) {
    cp.max_tokens = max_tokens;
    EXPECT_EQ(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT) << max_tokens;
    EXPECT_THAT(ic_last_error_message(), HasSubstr("max_tokens is " + std::to_string(max_tokens)));
    EXPECT_EQ(ctx, nullptr);
  }
  cp.max_tokens = 256;
  ASSERT_EQ(ic_context_create(model, &cp, &ctx), IC_OK) << ic_last_error_message();
  int32_t seq = -1;
  ASSERT_EQ(ic_sequence_add(ctx, &seq), IC_OK);
  const int32_t tokens[4] = {1, 2, 3, 4};
  ASSERT_EQ(ic_prefill(ctx, seq, tokens, 4, nullptr), IC_OK);

  // A negative length converted to size_t: before, prefill validated ~2^64 "tokens" reading past `tokens`
  // (ASan: stack-buffer-overflow) and decode copied ~2^64 ids (IC_ERR_INTERNAL).
  const size_t negative = static_cast<size_t>(-1);
  EXPECT_EQ(ic_prefill(ctx, seq, tokens, negative, nullptr), IC_ERR_INVALID_ARGUMENT);
  EXPECT_THAT(ic_last_error_message(), HasSubstr("n is 18446744073709551615"));
  const int32_t ids[1] = {seq};
  EXPECT_EQ(ic_decode(ctx, ids, tokens, negative, nullptr), IC_ERR_INVALID_ARGUMENT);
  EXPECT_THAT(ic_last_error_message(), HasSubstr("n is 18446744073709551615"));
  double loss = 0;
  EXPECT_EQ(ic_eval_loss(ctx, tokens, negative, &loss, nullptr), IC_ERR_INVALID_ARGUMENT);
  // Nothing the caller owns is lost: the sequence is as it was.
  int64_t len = 0;
  ASSERT_EQ(ic_sequence_length(ctx, seq, &len), IC_OK);
  EXPECT_EQ(len, 4);

  EXPECT_EQ(ic_context_free(ctx), IC_OK);
  EXPECT_EQ(ic_model_free(model), IC_OK);
}

// ---- CLI (`indexcache`) ------------------------------------------------------------------------------

class BadInputCliTest : public BadInputTest {
 protected:
  void SetUp() override {
    cli_ = BuildDir() + "/indexcache";
    if (access(cli_.c_str(), X_OK) != 0) GTEST_SKIP() << "no CLI at " << cli_;
  }
  ProcessResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), cli_);
    return RunProcess(args, 300);
  }
  // Exit status 1 with `message` on stderr: an error, not an abort (134) or a silent success (0).
  void ExpectError(const std::vector<std::string>& args, const std::string& message) {
    ProcessResult r = Cli(args);
    EXPECT_TRUE(r.exited) << "killed by signal " << -r.code << ": " << r.output;
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_THAT(r.output, HasSubstr(message));
    EXPECT_THAT(r.output, Not(HasSubstr("terminate called")));
  }
  std::string cli_;
};

TEST_F(BadInputCliTest, TokenFileThatIsADirectoryIsAnErrorNotAnAbort) {
  const std::string dir = root_ + "/tokens_dir";
  fs::create_directories(dir);
  // Before: std::ios_base::failure escaped main (abort, exit 134).
  ExpectError({"eval", "--token-file", dir, "--layers", "2"}, "is not a regular file");
  ExpectError({"run", "--token-file", dir, "--layers", "2"}, "is not a regular file");
}

TEST_F(BadInputCliTest, OptionsTakeTheirOwnValues) {
  // Before: --attention-precision took "--tokens" as its value and the prompt was silently dropped.
  ExpectError({"run", "--attention-precision", "--tokens", "1,2,3", "--layers", "2"},
              "option --attention-precision needs a value, got the option --tokens");
  ExpectError({"run", "--tokens", "1,2", "--bogus", "x", "--layers", "2"}, "unknown option --bogus");
  ExpectError({"run", "--tokens"}, "option --tokens needs a value");
}

TEST_F(BadInputCliTest, HugeLengthsAreErrorsNotAborts) {
  // Before: std::bad_alloc escaped main (abort) while allocating the prompt.
  ExpectError({"bench", "--contexts", "100000000000", "--plans", "dsa", "--layers", "2"}, "--contexts");
  ExpectError({"demo", "--prompt-tokens", "100000000000", "--layers", "2"}, "--prompt-tokens");
  ExpectError({"demo", "--prompt-tokens", "8", "--decode-tokens", "100000000000", "--layers", "2"},
              "--decode-tokens");
  // Before: prompt + max-new + 64 overflowed int64: "max_tokens must be positive, got -9223372036854775743".
  ExpectError({"run", "--tokens", "1,2", "--max-new", "9223372036854775807", "--layers", "2"},
              "--max-new must be in [1, 1073741824], got 9223372036854775807");
  ExpectError({"bench", "--contexts", "8", "--batch", "100000000000", "--layers", "2"}, "--batch must be in");
}

// `indexcache bench --preset` (tools/bench_sampled.cc): a smoke run of the layer-sampled table on the
// tiny preset and on the embedded model, and its bad input. The 30B preset is not run here (7.6 GB).
TEST_F(BadInputCliTest, BenchPresetSmoke) {
  for (const std::vector<std::string>& model : {std::vector<std::string>{"--preset", "tiny-dsa"},
                                                std::vector<std::string>{"--sample-layers", "--layers", "6"}}) {
    std::vector<std::string> args = {"bench", "--sample-layers", "--contexts", "300", "--decode-steps", "2",
                                     "--max-batch", "3", "--device", "cpu"};
    args.insert(args.begin() + 1, model.begin(), model.end());
    ProcessResult r = Cli(args);
    ASSERT_TRUE(r.exited) << r.output;
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_THAT(r.output, HasSubstr("composed from a 3-layer slice, per-layer timed"));
    EXPECT_THAT(r.output, HasSubstr("slice: plan FFS"));
    EXPECT_THAT(r.output, HasSubstr("context 300"));
    for (const char* plan : {"\n  DSA ", "\n  1/2 uniform ", "\n  1/4 uniform "}) {
      EXPECT_THAT(r.output, HasSubstr(plan));
    }
    EXPECT_THAT(r.output, HasSubstr("KV cache full"));
    EXPECT_THAT(r.output, HasSubstr("capped to 3"));
  }
  ProcessResult help = Cli({"bench", "--preset", "x", "--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_THAT(help.output, HasSubstr("glm-4.7-flash-dsa"));
  EXPECT_THAT(help.output, HasSubstr("composed from a 3-layer slice, per-layer timed"));
}

TEST_F(BadInputCliTest, BenchPresetBadInput) {
  ExpectError({"bench", "--preset", "glm-9"}, "valid presets: glm-4.7-flash-dsa, deepseek-v3.2, glm-5, tiny-dsa");
  ExpectError({"bench", "--preset", "tiny-dsa", "--contexts", "9000", "--device", "cpu"},
              "exceeds tiny-dsa's max_position_embeddings 8192");
  ExpectError({"bench", "--preset", "deepseek-v3.2", "--contexts", "200000"},
              "exceeds deepseek-v3.2's max_position_embeddings 163840");
  ExpectError({"bench", "--preset", "tiny-dsa", "--contexts", "1"}, "--contexts: '1' is not a length");
  ExpectError({"bench", "--preset", "tiny-dsa", "--decode-steps", "0"}, "--decode-steps must be in");
  ExpectError({"bench", "--preset", "tiny-dsa", "--plans", "FSX"}, "");
  ExpectError({"bench", "--preset", "tiny-dsa", "--model", "/nonexistent"}, "--model is not supported");
  ExpectError({"bench", "--preset", "tiny-dsa", "--batch", "2"}, "batch");
}

TEST_F(BadInputCliTest, ValuesThatWereAcceptedSilently) {
  // Before: 4294967304 was truncated to 8 layers and `info` succeeded.
  ExpectError({"info", "--layers", "4294967304"}, "--layers must be in [1, 4096], got 4294967304");
  // Before: `info` ignored --device.
  ExpectError({"info", "--device", "nonsense"}, "--device must be auto, cpu or cuda; got 'nonsense'");
  // Before: a negative --max-tokens was ignored (and the whole file evaluated).
  const std::string tokens = root_ + "/five.tokens";
  {
    std::ofstream f(tokens, std::ios::binary);
    for (uint32_t t : {1u, 2u, 3u, 4u, 5u}) f.write(reinterpret_cast<const char*>(&t), 4);
  }
  ExpectError({"eval", "--token-file", tokens, "--max-tokens", "-5", "--layers", "2"}, "--max-tokens must be in");
  // Before: a table with loss 0 and perplexity 1 over 0 tokens.
  ExpectError({"eval", "--token-file", tokens, "--max-tokens", "1", "--layers", "2", "--plans", "dsa"},
              "nothing to evaluate");
  // Before: --plan-file without --model was ignored.
  const std::string plan = root_ + "/fsss.plan";
  WriteText(plan, "FSSS\n");
  ProcessResult r = Cli({"info", "--layers", "4", "--plan-file", plan});
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("plan           FSSS"));
  ExpectError({"info", "--layers", "4", "--plan-file", root_ + "/tokens_missing_plan"}, "cannot open plan file");
  // --serve-seconds without an exposer would just sleep.
  ExpectError({"demo", "--serve-seconds", "5", "--prompt-tokens", "8", "--layers", "2"},
              "--serve-seconds needs --metrics-address");
}

TEST_F(BadInputCliTest, PlanStringsGetThePlanErrorNotTheKeepFractionError) {
  // C7 through the CLI. Before: `keep fraction "FFXF": expected a fraction like 1/4, …`.
  ExpectError({"info", "--layers", "4", "--plan", "FFXF"}, "plan \"FFXF\": position 2 is 'X'; expected 'F' or 'S'");
  ExpectError({"info", "--layers", "4", "--plan", "fsss"}, "plan \"fsss\": position 0 is 'f'");
  ExpectError({"info", "--layers", "4", "--plan", "SFFF"}, "layer 0 must be Full");
  ExpectError({"info", "--layers", "4", "--plan", "FFF"}, "has 3 layers; the model has 4");
  ExpectError({"info", "--layers", "4", "--plan", "1/0"}, "keep fraction \"1/0\": must be in (0, 1]");
  ExpectError({"info", "--layers", "4", "--plan", "0.3"}, "1/keep must be an integer");
  ExpectError({"info", "--layers", "4", "--plan", "file:" + root_}, "plan file is not a regular file");
}

// Issue 3's bad input for distillation and evaluation, and eval --report's files.
TEST_F(BadInputCliTest, DistillAndReport) {
  SyntheticModelOptions o;
  o.arch = Architecture::kLlama;
  o.num_layers = 4;
  o.hidden_size = 64;
  o.vocab_size = 128;
  auto dense = BuildSyntheticModel(o);
  ASSERT_TRUE(dense.ok());
  const std::string dense_dir = root_ + "/dense", out = root_ + "/dsa";
  ASSERT_TRUE(SaveModel(**dense, dense_dir).ok());
  const std::string tokens = root_ + "/calib.tokens", bad = root_ + "/bad.tokens", empty = root_ + "/empty.tokens";
  {
    std::ofstream f(tokens, std::ios::binary), g(bad, std::ios::binary), e(empty, std::ios::binary);
    for (uint32_t t = 0; t < 200; ++t) {
      const uint32_t v = (t * 37) % 128, w = t == 50 ? 128 : v;
      f.write(reinterpret_cast<const char*>(&v), 4);
      g.write(reinterpret_cast<const char*>(&w), 4);
    }
  }
  const std::vector<std::string> common = {"--index-heads", "2", "--index-head-dim", "16", "--index-topk", "8",
                                           "--context", "40", "--device", "cpu"};
  auto distill = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = {"distill", "--model", dense_dir, "--out", out};
    a.insert(a.end(), common.begin(), common.end());
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  ExpectError(distill({"--token-file", bad}), "id 128 at index 50 is outside the vocabulary [0, 128)");
  ExpectError(distill({"--token-file", empty}), "is empty");
  ExpectError(distill({"--token-file", tokens, "--context", "1000"}), "do not fill one window");
  ExpectError(distill({"--token-file", tokens, "--plan", "1/0"}), "keep fraction \"1/0\": must be in (0, 1]");
  ExpectError(distill({"--token-file", tokens, "--resume"}), "does not exist");
  ExpectError(distill({"--token-file", tokens, "--steps", "0"}), "--steps 0 trains nothing");
  ExpectError({"distill", "--model", dense_dir, "--token-file", tokens}, "--out is required");
  ExpectError({"distill", "--model", root_ + "/tiny", "--token-file", tokens, "--out", out},
              "indexers can be added to a dense Llama model");
  ProcessResult r = Cli(distill({"--token-file", tokens, "--plan", "FSFS", "--steps", "2"}));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("step 2/2"));
  // A second run would overwrite the checkpoint: refused without --resume.
  ExpectError(distill({"--token-file", tokens, "--plan", "FSFS", "--steps", "2"}), "pass --resume");
  // The model trained with FSFS has no indexers for layers 1 and 3: an all-Full plan is refused.
  ExpectError({"eval", "--model", out, "--token-file", tokens, "--plans", "dsa", "--device", "cpu"},
              "layer 1 is Full in plan FFFF but the checkpoint lacks model.layers.1.self_attn.indexer");
  // eval --report: recall table, overlap matrix and the PNG heatmap (4×4 cells of 16 px).
  const std::string report = root_ + "/report";
  r = Cli({"eval", "--model", out, "--token-file", tokens, "--plans", "checkpoint", "--context", "40", "--device",
           "cpu", "--report", report, "--report-windows", "1"});
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("top-k overlap between layers"));
  std::ifstream png(report + "/overlap.png", std::ios::binary);
  std::string head(24, '\0');
  png.read(head.data(), 24);
  ASSERT_TRUE(png.good());
  EXPECT_EQ(head.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  auto be32 = [&](int at) {
    return (static_cast<uint32_t>(static_cast<uint8_t>(head[at])) << 24) |
           (static_cast<uint32_t>(static_cast<uint8_t>(head[at + 1])) << 16) |
           (static_cast<uint32_t>(static_cast<uint8_t>(head[at + 2])) << 8) | static_cast<uint8_t>(head[at + 3]);
  };
  EXPECT_EQ(be32(16), 64u);  // width: 4 layers × 16 px
  EXPECT_EQ(be32(20), 64u);
  std::ifstream overlap(report + "/overlap.tsv");
  std::string line;
  std::getline(overlap, line);
  EXPECT_EQ(line, "layer\t0\t1\t2\t3");
  std::getline(overlap, line);
  EXPECT_EQ(line.substr(0, 13), "0\t1.000\t1.000");  // layer 1 is Shared: layer 0's own set
}

// ---- Python ctypes module ----------------------------------------------------------------------------

// ctypes truncates ints silently: seq_id 2^32 + s named sequence s (remove_sequence(2**32) removed sequence
// 0), max_tokens 2^64 + 5 became 5, num_layers 2^32 + 4 became 4.
TEST(BadInputPythonTest, OutOfRangeIntsRaiseInsteadOfNamingSomethingElse) {
  const std::string lib = BuildDir() + "/bindings_c/libindexcache.so";
  if (access(lib.c_str(), R_OK) != 0) GTEST_SKIP() << "no " << lib;
  if (RunProcess({"python3", "-c", "pass"}, 60).code != 0) GTEST_SKIP() << "no python3";
  std::vector<std::string> env = {"INDEXCACHE_LIB=" + lib};
#if defined(__SANITIZE_ADDRESS__)
  // An ASan-instrumented libindexcache.so loads into python3 only with the sanitizer runtimes preloaded:
  // take the ones this binary runs with.
  std::string asan, ubsan;
  {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    while (std::getline(maps, line)) {
      const size_t slash = line.find('/');
      if (slash == std::string::npos) continue;
      const std::string path = line.substr(slash);
      const std::string name = fs::path(path).filename().string();
      if (name.rfind("libasan.so", 0) == 0) asan = path;
      if (name.rfind("libubsan.so", 0) == 0) ubsan = path;
    }
  }
  if (asan.empty()) GTEST_SKIP() << "ASan build, but no libasan.so found to preload into python3";
  const std::string preload = ubsan.empty() ? asan : asan + ":" + ubsan;  // ASan's runtime must come first
  env.push_back("LD_PRELOAD=" + preload);
  env.push_back("ASAN_OPTIONS=detect_leaks=0");  // python3 itself leaks by design
#endif
  const std::string script = R"PY(
import sys
sys.path.insert(0, sys.argv[1])
import indexcache as ic

def raises(exc, fn, text):
    try:
        fn()
    except exc as e:
        assert text in str(e), (text, str(e))
        return
    raise AssertionError(f"no {exc.__name__} for {text}")

m = ic.Model.synthetic(num_layers=2, hidden_size=64, vocab_size=128, index_topk=8, index_n_heads=2,
                       index_head_dim=16)
raises(OverflowError, lambda: ic.Model.synthetic(num_layers=2**32 + 2), "num_layers is 4294967298")
raises(OverflowError, lambda: ic.Context(m, device=ic.Device.CPU, max_tokens=2**64 + 5), "max_tokens is")
raises(OverflowError, lambda: ic.Context(m, device=ic.Device.CPU, device_ordinal=2**32), "device_ordinal")
raises(TypeError, lambda: ic.Context(None), "model must be an indexcache.Model")
raises(ValueError, lambda: ic.Context(m, device="tpu"), "device is 'tpu'; expected one of auto, cpu, cuda")
with ic.Context(m, device="cpu", max_tokens=256) as ctx:
    assert ctx.device == ic.Device.CPU
    s = ctx.add_sequence()
    ctx.prefill(s, [1, 2, 3])
    raises(OverflowError, lambda: ctx.remove_sequence(2**32 + s), "seq_id is")
    raises(OverflowError, lambda: ctx.prefill(2**32 + s, [1]), "seq_id is")
    raises(OverflowError, lambda: ctx.decode([2**32 + s], [1]), "seq_ids")
    raises(OverflowError, lambda: ctx.prefill(s, [2**31]), "tokens: 2147483648 does not fit in int32")
    raises(TypeError, lambda: ctx.prefill(s, "abc"), "tokens must be ints")
    assert ctx.sequence_length(s) == 3, ctx.sequence_length(s)  # nothing lost
print("ok")
)PY";
  ProcessResult r = RunProcess({"python3", "-c", script, std::string(IC_SOURCE_DIR) + "/bindings_c/python"}, 300, env);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("ok"));
}

}  // namespace
}  // namespace ic
