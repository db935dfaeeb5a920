/* The C ABI end to end, compiled as C (C99): models (synthetic, saved and reloaded, and the golden dense
 * Llama checkpoint when present), plans, contexts, prefill, decode, loss, metrics, and the error paths
 * (NULL and freed handles, struct_size, bad tokens, invalid plans, a full KV cache), and two threads
 * sharing one model with per-thread error messages.
 *
 * Prints "N passed, M failed" and returns nonzero when anything failed. IC_SOURCE_DIR (a compile
 * definition) locates tests/data/golden/llama-tiny-dense; $IC_SHARED_DIR/golden/llama-tiny-dense is
 * the fallback. */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "indexcache/indexcache.h"

#ifndef IC_SOURCE_DIR
#define IC_SOURCE_DIR "."
#endif

static int g_passed = 0;
static int g_failed = 0;

static void Report(int ok, const char* file, int line, const char* what, const char* detail) {
  if (ok) {
    ++g_passed;
    return;
  }
  ++g_failed;
  fprintf(stderr, "FAILED %s:%d: %s%s%s\n  last error: %s\n", file, line, what, detail[0] ? ": " : "",
          detail, ic_last_error_message());
}

#define CHECK(cond) Report((cond) ? 1 : 0, __FILE__, __LINE__, #cond, "")

/* Expects `expr` to return `code`; prints the status names otherwise. */
#define CHECK_STATUS(expr, code)                                                            \
  do {                                                                                      \
    ic_status_t s_ = (expr);                                                                \
    char d_[256];                                                                           \
    snprintf(d_, sizeof(d_), "got %s, expected %s", ic_status_string(s_), ic_status_string(code)); \
    Report(s_ == (code), __FILE__, __LINE__, #expr, d_);                                    \
  } while (0)

#define CHECK_OK(expr) CHECK_STATUS(expr, IC_OK)

/* Expects the last error message to contain `needle`. */
#define CHECK_MESSAGE_HAS(needle)                                                           \
  do {                                                                                      \
    char d_[256];                                                                           \
    snprintf(d_, sizeof(d_), "message lacks \"%s\"", (needle));                            \
    Report(strstr(ic_last_error_message(), (needle)) != NULL, __FILE__, __LINE__,           \
           "CHECK_MESSAGE_HAS(" #needle ")", d_);                                           \
  } while (0)

/* ---- helpers ------------------------------------------------------------------------------------- */

static void MakeTokens(int32_t* out, size_t n, int32_t vocab, uint32_t seed) {
  size_t i;
  uint32_t x = seed;
  for (i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    out[i] = (int32_t)((x >> 8) % (uint32_t)vocab);
  }
}

static double MaxAbsDiff(const float* a, const float* b, size_t n) {
  double m = 0;
  size_t i;
  for (i = 0; i < n; ++i) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (d > m || d != d) m = d;
  }
  return m;
}

static int32_t Argmax(const float* x, size_t n) {
  size_t i, best = 0;
  for (i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return (int32_t)best;
}

/* −log softmax(logits)[target], in double. */
static double TokenLoss(const float* logits, size_t vocab, int32_t target) {
  double mx = logits[0], sum = 0;
  size_t i;
  for (i = 1; i < vocab; ++i) {
    if (logits[i] > mx) mx = logits[i];
  }
  for (i = 0; i < vocab; ++i) sum += exp((double)logits[i] - mx);
  return log(sum) + mx - (double)logits[target];
}

static int IsDirectory(const char* path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ---- tests --------------------------------------------------------------------------------------- */

static void TestVersionAndStatus(void) {
  CHECK(ic_version() == IC_VERSION);
  CHECK(strcmp(ic_version_string(), IC_VERSION_STRING) == 0);
  CHECK(strcmp(ic_status_string(IC_OK), "IC_OK") == 0);
  CHECK(strcmp(ic_status_string(IC_ERR_OUT_OF_MEMORY), "IC_ERR_OUT_OF_MEMORY") == 0);
  CHECK(strcmp(ic_status_string((ic_status_t)999), "IC_ERR_UNKNOWN") == 0);
  CHECK(ic_cuda_device_count() >= 0);
  CHECK(ic_last_error_message() != NULL);
}

static void TestNullArguments(void) {
  ic_model_t* model = (ic_model_t*)1;
  ic_context_t* ctx = (ic_context_t*)1;
  ic_model_info_t info;
  int32_t seq = 0;
  int32_t tok = 1;
  int64_t len = 0;
  double loss = 0;
  char buf[16];

  CHECK_STATUS(ic_model_create_synthetic(NULL, NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("out is NULL");
  CHECK_STATUS(ic_model_load(NULL, NULL, &model), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("dir is NULL");
  CHECK(model == NULL); /* outputs are cleared on failure */
  CHECK_STATUS(ic_model_load("/nonexistent/indexcache-model", NULL, &model), IC_ERR_NOT_FOUND);
  CHECK_MESSAGE_HAS("/nonexistent/indexcache-model");
  info.struct_size = sizeof(info);
  CHECK_STATUS(ic_model_info(NULL, &info), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("model is NULL");
  CHECK_STATUS(ic_model_plan(NULL, buf, sizeof(buf)), IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_context_create(NULL, NULL, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("model is NULL");
  CHECK(ctx == NULL);
  CHECK_STATUS(ic_sequence_add(NULL, &seq), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("ctx is NULL");
  CHECK_STATUS(ic_sequence_remove(NULL, 0), IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_sequence_length(NULL, 0, &len), IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_prefill(NULL, 0, &tok, 1, NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_decode(NULL, &seq, &tok, 1, NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_eval_loss(NULL, &tok, 1, &loss, NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_context_default_params(NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("params is NULL");
  CHECK_STATUS(ic_metrics_start_exposer(NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_metrics_text(NULL, 5, NULL), IC_ERR_INVALID_ARGUMENT);
  /* Freeing NULL is a no-op, like free(). */
  CHECK_OK(ic_model_free(NULL));
  CHECK_OK(ic_context_free(NULL));
  CHECK(strcmp(ic_last_error_message(), "") == 0); /* cleared by a successful call */
}

/* A 4-layer DeepSeek-V3.2-style synthetic model with plan FSFS, small enough for seconds on a CPU. */
static ic_model_t* MakeSmallModel(const char* plan) {
  ic_synthetic_params_t sp;
  ic_model_t* model = NULL;
  CHECK_OK(ic_synthetic_default_params(&sp));
  CHECK(sp.struct_size == sizeof(sp));
  CHECK(sp.architecture == IC_ARCH_DEEPSEEK_V32);
  sp.num_layers = 4;
  sp.hidden_size = 64;
  sp.vocab_size = 128;
  sp.index_topk = 8;
  sp.index_n_heads = 4;
  sp.index_head_dim = 16;
  sp.plan = plan;
  CHECK_OK(ic_model_create_synthetic(&sp, &model));
  return model;
}

static void TestStructSize(ic_model_t* model) {
  struct {
    ic_context_params_t p;
    uint64_t future_field;
  } bigger;
  ic_context_params_t cp;
  ic_context_t* ctx = NULL;
  ic_model_info_t info;

  CHECK_OK(ic_context_default_params(&cp));
  CHECK(cp.struct_size == sizeof(cp));
  cp.struct_size = 4;
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("struct_size");
  CHECK(ctx == NULL);

  cp.struct_size = (size_t)-1; /* uninitialised garbage is not read as a huge struct */
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("uninitialised");

  /* A caller built against a newer header: unknown trailing bytes must be zero. */
  memset(&bigger, 0, sizeof(bigger));
  CHECK_OK(ic_context_default_params(&bigger.p));
  bigger.p.struct_size = sizeof(bigger);
  bigger.p.device = IC_DEVICE_CPU;
  bigger.p.max_tokens = 64;
  bigger.future_field = 1;
  CHECK_STATUS(ic_context_create(model, &bigger.p, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("does not have");
  bigger.future_field = 0;
  CHECK_OK(ic_context_create(model, &bigger.p, &ctx));
  CHECK_OK(ic_context_free(ctx));

  info.struct_size = 8;
  CHECK_STATUS(ic_model_info(model, &info), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("struct_size");
}

static void TestContextParamErrors(ic_model_t* model) {
  ic_context_params_t cp;
  ic_context_t* ctx = NULL;

  ic_context_default_params(&cp);
  CHECK(cp.indexer_precision == IC_PRECISION_F32 && cp.attention_precision == IC_PRECISION_F32 &&
        cp.weight_precision == IC_PRECISION_F32);
  cp.device = IC_DEVICE_CPU;
  cp.indexer_precision = 7;
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("indexer_precision");
  CHECK(ctx == NULL);
  cp.indexer_precision = IC_PRECISION_BF16;
  cp.attention_precision = -1;
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("attention_precision");
  CHECK(ctx == NULL);
  cp.attention_precision = IC_PRECISION_BF16;
  cp.weight_precision = IC_PRECISION_FP8; /* block-scaled FP8 weights (since 0.5) */
  cp.max_tokens = 64;
  CHECK_OK(ic_context_create(model, &cp, &ctx));
  CHECK_OK(ic_context_free(ctx));
  ctx = NULL;
  cp.weight_precision = 9;
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("weight_precision");
  cp.weight_precision = IC_PRECISION_BF16;
  cp.max_tokens = 64;
  CHECK_OK(ic_context_create(model, &cp, &ctx));
  CHECK_OK(ic_context_free(ctx));
  ctx = NULL;
  /* A 0.3 caller: its struct ends where weight_precision starts, and its padding (here 0x01 bytes) sits
   * in reserved0, which is never read; weight_precision beyond its struct_size takes the default. */
  cp.weight_precision = 9;
  memset(&cp.reserved0, 1, sizeof cp.reserved0);
  cp.struct_size = offsetof(ic_context_params_t, weight_precision);
  CHECK_OK(ic_context_create(model, &cp, &ctx));
  CHECK_OK(ic_context_free(ctx));
  ctx = NULL;
  /* ic_context_set_cuda_graphs (since 0.6): 0 or 1 on a live context (a no-op on the CPU). */
  ic_context_default_params(&cp);
  cp.device = IC_DEVICE_CPU;
  cp.max_tokens = 64;
  CHECK_OK(ic_context_create(model, &cp, &ctx));
  CHECK_STATUS(ic_context_set_cuda_graphs(ctx, 2), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("enabled must be 0 or 1");
  CHECK_OK(ic_context_set_cuda_graphs(ctx, 0));
  CHECK_OK(ic_context_set_cuda_graphs(ctx, 1));
  CHECK_STATUS(ic_context_set_cuda_graphs(NULL, 0), IC_ERR_INVALID_ARGUMENT);
  CHECK_OK(ic_context_free(ctx));
  ctx = NULL;
  ic_context_default_params(&cp);
  cp.device = IC_DEVICE_CPU;
  cp.plan = "SFFF";
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("layer 0");
  CHECK(ctx == NULL);
  cp.plan = "FSF";
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("FSF");
  cp.plan = "FSXF";
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("position 2");

  ic_context_default_params(&cp);
  cp.world_size = 2;
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("dist_id is NULL");
  ic_context_default_params(&cp);
  cp.tp_size = 4;
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("tp_size 4");
  ic_context_default_params(&cp);
  cp.rank = 1;
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("rank");
  ic_context_default_params(&cp);
  cp.device = (ic_device_t)7;
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("device is 7");
  ic_context_default_params(&cp);
  cp.block_size = 0;
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("block_size");
  if (ic_cuda_device_count() == 0) {
    ic_context_default_params(&cp);
    cp.device = IC_DEVICE_CUDA;
    CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_UNAVAILABLE);
  }
  ic_context_default_params(&cp);
  cp.metrics_address = "not an address";
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK(ctx == NULL);
}

/* Prefill/decode agreement, batched decode, loss against logits computed through the API. */
static void TestForward(ic_model_t* model, const char* expect_plan) {
  enum { kN = 40 };
  ic_context_params_t cp;
  ic_context_t* ctx = NULL;
  ic_model_info_t info;
  ic_device_t device;
  int32_t tokens[kN];
  int32_t seq_a, seq_b, seq_c, ids[2], next[2];
  int64_t len = -1, predicted = 0;
  double loss = 0, expected = 0;
  float *la, *lb, *row, *batch;
  char plan[16];
  size_t vocab, i;

  info.struct_size = sizeof(info);
  CHECK_OK(ic_model_info(model, &info));
  vocab = (size_t)info.vocab_size;
  MakeTokens(tokens, kN, info.vocab_size, 7u);

  ic_context_default_params(&cp);
  cp.device = IC_DEVICE_CPU;
  cp.max_tokens = 512;
  cp.block_size = 16;
  cp.prefill_chunk = 16; /* several forward passes per prefill */
  CHECK_OK(ic_context_create(model, &cp, &ctx));
  if (ctx == NULL) return;
  CHECK_OK(ic_context_device(ctx, &device));
  CHECK(device == IC_DEVICE_CPU);
  CHECK_OK(ic_context_plan(ctx, plan, sizeof(plan)));
  CHECK(strcmp(plan, expect_plan) == 0);

  la = (float*)malloc(sizeof(float) * vocab);
  lb = (float*)malloc(sizeof(float) * vocab);
  row = (float*)malloc(sizeof(float) * vocab);
  batch = (float*)malloc(sizeof(float) * vocab * 2);

  /* Decode at position t gives prefill's row t. */
  CHECK_OK(ic_sequence_add(ctx, &seq_a));
  CHECK_OK(ic_sequence_add(ctx, &seq_b));
  CHECK(seq_a != seq_b);
  CHECK_OK(ic_prefill(ctx, seq_a, tokens, kN, la));
  CHECK_OK(ic_prefill(ctx, seq_b, tokens, kN - 1, NULL));
  CHECK_OK(ic_decode(ctx, &seq_b, &tokens[kN - 1], 1, lb));
  CHECK(MaxAbsDiff(la, lb, vocab) <= 1e-4);
  CHECK(la[0] == la[0] && fabs(la[0]) < 1e6);
  CHECK_OK(ic_sequence_length(ctx, seq_a, &len));
  CHECK(len == kN);
  CHECK_OK(ic_sequence_length(ctx, seq_b, &len));
  CHECK(len == kN);

  /* A batch of two sequences with the same history gives two equal rows, equal to a single decode. */
  ids[0] = seq_a;
  ids[1] = seq_b;
  next[0] = next[1] = Argmax(la, vocab);
  CHECK_OK(ic_decode(ctx, ids, next, 2, batch));
  CHECK(MaxAbsDiff(batch, batch + vocab, vocab) <= 1e-4);
  CHECK_OK(ic_sequence_length(ctx, seq_a, &len));
  CHECK(len == kN + 1);
  ids[1] = seq_a;
  CHECK_STATUS(ic_decode(ctx, ids, next, 2, batch), IC_ERR_INVALID_ARGUMENT); /* repeated id */
  CHECK_MESSAGE_HAS("twice");

  /* Error paths leave the sequence as it was. */
  tokens[3] = 9999;
  CHECK_STATUS(ic_prefill(ctx, seq_a, tokens, 8, NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("9999");
  CHECK_STATUS(ic_decode(ctx, &seq_a, &tokens[3], 1, NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("9999");
  next[0] = -5;
  CHECK_STATUS(ic_decode(ctx, &seq_a, next, 1, NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("-5");
  CHECK_OK(ic_sequence_length(ctx, seq_a, &len));
  CHECK(len == kN + 1);
  MakeTokens(tokens, kN, info.vocab_size, 7u);
  CHECK_STATUS(ic_prefill(ctx, seq_a, tokens, 0, NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_prefill(ctx, seq_a, NULL, 3, NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("tokens is NULL");
  CHECK_STATUS(ic_prefill(ctx, 12345, tokens, 3, NULL), IC_ERR_NOT_FOUND);
  CHECK_MESSAGE_HAS("12345");
  CHECK_STATUS(ic_sequence_remove(ctx, 12345), IC_ERR_NOT_FOUND);
  CHECK_STATUS(ic_sequence_length(ctx, seq_a, NULL), IC_ERR_INVALID_ARGUMENT);

  /* Loss: the mean of −log p(t[i+1]) over logits computed one position at a time through the API. */
  CHECK_OK(ic_sequence_add(ctx, &seq_c));
  CHECK_OK(ic_prefill(ctx, seq_c, tokens, 1, row));
  expected = TokenLoss(row, vocab, tokens[1]);
  for (i = 1; i + 1 < kN; ++i) {
    CHECK_OK(ic_decode(ctx, &seq_c, &tokens[i], 1, row));
    expected += TokenLoss(row, vocab, tokens[i + 1]);
  }
  expected /= (double)(kN - 1);
  CHECK_OK(ic_eval_loss(ctx, tokens, kN, &loss, &predicted));
  CHECK(predicted == kN - 1);
  CHECK(isfinite(loss) && loss > 0);
  CHECK(fabs(loss - expected) <= 1e-4 * (1.0 + fabs(expected)));
  if (fabs(loss - expected) > 1e-4 * (1.0 + fabs(expected))) {
    fprintf(stderr, "  loss %.8f vs %.8f from logits\n", loss, expected);
  }
  CHECK_STATUS(ic_eval_loss(ctx, tokens, 1, &loss, NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_eval_loss(ctx, tokens, kN, NULL, NULL), IC_ERR_INVALID_ARGUMENT);

  /* Fork: same length, and the same next-token logits as the source (bitwise: same code, same cache). */
  CHECK_OK(ic_sequence_fork(ctx, seq_a, &seq_b));
  CHECK_OK(ic_sequence_length(ctx, seq_b, &len));
  CHECK(len == kN + 1);
  CHECK_OK(ic_decode(ctx, &seq_a, &tokens[1], 1, la));
  CHECK_OK(ic_decode(ctx, &seq_b, &tokens[1], 1, lb));
  CHECK(MaxAbsDiff(la, lb, vocab) == 0.0);
  CHECK_STATUS(ic_sequence_fork(ctx, 12345, &seq_b), IC_ERR_NOT_FOUND);
  CHECK_MESSAGE_HAS("12345");
  CHECK_STATUS(ic_sequence_fork(ctx, seq_a, NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_sequence_fork(NULL, seq_a, &seq_b), IC_ERR_INVALID_ARGUMENT);

  CHECK_OK(ic_sequence_remove(ctx, seq_a));
  CHECK_STATUS(ic_sequence_length(ctx, seq_a, &len), IC_ERR_NOT_FOUND);
  CHECK_OK(ic_context_free(ctx));
  free(la);
  free(lb);
  free(row);
  free(batch);
}

/* A full KV cache is IC_ERR_OUT_OF_MEMORY and changes nothing. */
static void TestKvCacheFull(ic_model_t* model) {
  ic_context_params_t cp;
  ic_context_t* ctx = NULL;
  int32_t tokens[80];
  int32_t seq, other;
  int64_t len = -1, free_tokens = -1;
  double loss;

  MakeTokens(tokens, 80, 128, 3u);
  ic_context_default_params(&cp);
  cp.device = IC_DEVICE_CPU;
  cp.max_tokens = 64;
  cp.block_size = 16;
  CHECK_OK(ic_context_create(model, &cp, &ctx));
  if (ctx == NULL) return;
  CHECK_OK(ic_context_free_tokens(ctx, &free_tokens));
  CHECK(free_tokens == 64);
  CHECK_OK(ic_sequence_add(ctx, &seq));
  CHECK_OK(ic_prefill(ctx, seq, tokens, 60, NULL));
  CHECK_STATUS(ic_prefill(ctx, seq, tokens + 60, 10, NULL), IC_ERR_OUT_OF_MEMORY);
  CHECK_MESSAGE_HAS("KV cache full");
  CHECK_OK(ic_sequence_length(ctx, seq, &len));
  CHECK(len == 60);
  CHECK_OK(ic_prefill(ctx, seq, tokens + 60, 4, NULL)); /* fills the last block */
  CHECK_STATUS(ic_decode(ctx, &seq, tokens, 1, NULL), IC_ERR_OUT_OF_MEMORY); /* needs a new block */
  CHECK_OK(ic_sequence_length(ctx, seq, &len));
  CHECK(len == 64);
  CHECK_OK(ic_sequence_add(ctx, &other));
  CHECK_STATUS(ic_decode(ctx, &other, tokens, 1, NULL), IC_ERR_OUT_OF_MEMORY);
  CHECK_OK(ic_sequence_length(ctx, other, &len));
  CHECK(len == 0);
  CHECK_STATUS(ic_eval_loss(ctx, tokens, 10, &loss, NULL), IC_ERR_OUT_OF_MEMORY);
  CHECK_OK(ic_sequence_remove(ctx, seq));
  CHECK_OK(ic_context_free_tokens(ctx, &free_tokens));
  CHECK(free_tokens == 64);
  CHECK_OK(ic_eval_loss(ctx, tokens, 64, &loss, NULL));
  CHECK_OK(ic_context_free(ctx));
}

static void TestMetricsText(void) {
  size_t needed = 0, small_needed = 0;
  char small[8];
  char* text;
  CHECK_OK(ic_metrics_text(NULL, 0, &needed));
  CHECK(needed > 1);
  text = (char*)malloc(needed + 65536);
  CHECK_OK(ic_metrics_text(text, needed + 65536, &needed));
  CHECK(strlen(text) + 1 == needed);
  CHECK(strstr(text, "indexcache_indexer_layers_total") != NULL);
  CHECK(strstr(text, "indexcache_prompt_tokens_total") != NULL);
  CHECK(strstr(text, "indexcache_generated_tokens_total") != NULL);
  CHECK_STATUS(ic_metrics_text(small, sizeof(small), &small_needed), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("too small");
  CHECK(small_needed > sizeof(small));
  free(text);
}

/* Two threads share one model, each with its own context; each sees its own last-error text. The
 * CHECK counters are not thread-safe, so threads record results and the main thread checks them. */
typedef struct {
  ic_model_t* model;
  pthread_barrier_t* barrier;
  int fail_with_ctx; /* which NULL argument this thread's failing call names */
  ic_status_t create, prefill, failing;
  int message_ok;
  float logits[128];
} ThreadArgs;

static void* ThreadBody(void* p) {
  ThreadArgs* a = (ThreadArgs*)p;
  ic_context_params_t cp;
  ic_context_t* ctx = NULL;
  int32_t tokens[24], seq = 0;
  int64_t len;
  MakeTokens(tokens, 24, 128, 5u);
  ic_context_default_params(&cp);
  cp.device = IC_DEVICE_CPU;
  cp.max_tokens = 64;
  a->create = ic_context_create(a->model, &cp, &ctx);
  a->prefill = IC_ERR_INTERNAL;
  if (a->create == IC_OK) {
    ic_sequence_add(ctx, &seq);
    a->prefill = ic_prefill(ctx, seq, tokens, 24, a->logits);
  }
  /* Both threads fail a call, differently, then check their own message after the other's failure. */
  a->failing = a->fail_with_ctx ? ic_sequence_length(NULL, 0, &len) : ic_model_plan(a->model, NULL, 0);
  pthread_barrier_wait(a->barrier);
  a->message_ok = strstr(ic_last_error_message(), a->fail_with_ctx ? "ctx is NULL" : "buf is NULL") != NULL;
  pthread_barrier_wait(a->barrier);
  ic_context_free(ctx);
  return NULL;
}

static void TestThreads(ic_model_t* model) {
  pthread_t threads[2];
  pthread_barrier_t barrier;
  ThreadArgs args[2];
  int i;
  pthread_barrier_init(&barrier, NULL, 2);
  for (i = 0; i < 2; ++i) {
    memset(&args[i], 0, sizeof(args[i]));
    args[i].model = model;
    args[i].barrier = &barrier;
    args[i].fail_with_ctx = i;
    pthread_create(&threads[i], NULL, ThreadBody, &args[i]);
  }
  for (i = 0; i < 2; ++i) pthread_join(threads[i], NULL);
  pthread_barrier_destroy(&barrier);
  for (i = 0; i < 2; ++i) {
    CHECK(args[i].create == IC_OK);
    CHECK(args[i].prefill == IC_OK);
    CHECK(args[i].failing == IC_ERR_INVALID_ARGUMENT);
    CHECK(args[i].message_ok);
  }
  CHECK(MaxAbsDiff(args[0].logits, args[1].logits, 128) == 0.0); /* same code, same inputs */
}

/* The exposer: one per process, started by a context parameter or directly. */
static void TestExposer(ic_model_t* model) {
  ic_context_params_t cp;
  ic_context_t* ctx = NULL;
  int32_t port = -1;
  CHECK_OK(ic_metrics_exposer_port(&port));
  CHECK(port == 0);
  CHECK_STATUS(ic_metrics_start_exposer("127.0.0.1:notaport"), IC_ERR_INVALID_ARGUMENT);
  ic_context_default_params(&cp);
  cp.device = IC_DEVICE_CPU;
  cp.max_tokens = 64;
  cp.metrics_address = "127.0.0.1:0";
  CHECK_OK(ic_context_create(model, &cp, &ctx));
  CHECK_OK(ic_context_free(ctx));
  CHECK_OK(ic_metrics_exposer_port(&port));
  CHECK(port > 0);
  CHECK_OK(ic_metrics_start_exposer("127.0.0.1:0")); /* the same address again: a no-op */
  CHECK_STATUS(ic_metrics_start_exposer("127.0.0.1:1"), IC_ERR_ALREADY_EXISTS);
  CHECK_MESSAGE_HAS("127.0.0.1:0");
}

/* Handles: plan buffer sizes, model freed before its context, freed-handle detection. */
static void TestHandles(void) {
  ic_model_t* model = MakeSmallModel("FSFS");
  ic_context_t* ctx = NULL;
  ic_context_params_t cp;
  ic_model_info_t info;
  char plan[8];
  int32_t seq = -1, tok = 5;
  float* logits;
  if (model == NULL) return;

  info.struct_size = sizeof(info);
  CHECK_OK(ic_model_info(model, &info));
  CHECK(info.struct_size == sizeof(info));
  CHECK(strcmp(info.architecture, "DeepseekV32ForCausalLM") == 0);
  CHECK(info.vocab_size == 128 && info.hidden_size == 64 && info.num_layers == 4);
  CHECK(info.has_indexer == 1 && info.index_topk == 8 && info.index_n_heads == 4);
  CHECK(info.index_head_dim == 16 && info.num_full_layers == 2);
  CHECK_OK(ic_model_plan(model, plan, sizeof(plan)));
  CHECK(strcmp(plan, "FSFS") == 0);
  CHECK_OK(ic_model_plan(model, plan, 5));
  CHECK_STATUS(ic_model_plan(model, plan, 4), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("needs 5 bytes");
  CHECK_STATUS(ic_model_plan(model, NULL, 0), IC_ERR_INVALID_ARGUMENT);

  TestStructSize(model);
  TestContextParamErrors(model);

  ic_context_default_params(&cp);
  cp.device = IC_DEVICE_CPU;
  cp.max_tokens = 128;
  CHECK_OK(ic_context_create(model, &cp, &ctx));
  CHECK_OK(ic_model_free(model)); /* the context keeps the model alive */
  CHECK_STATUS(ic_model_free(model), IC_ERR_INVALID_ARGUMENT); /* double free detected */
  CHECK_STATUS(ic_model_plan(model, plan, sizeof(plan)), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("not a live");
  logits = (float*)malloc(sizeof(float) * 128);
  CHECK_OK(ic_sequence_add(ctx, &seq));
  CHECK_OK(ic_prefill(ctx, seq, &tok, 1, logits));
  CHECK_OK(ic_decode(ctx, &seq, &tok, 1, logits));
  CHECK_OK(ic_context_free(ctx));
  CHECK_STATUS(ic_sequence_add(ctx, &seq), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("not a live");
  CHECK_STATUS(ic_context_free(ctx), IC_ERR_INVALID_ARGUMENT);
  free(logits);
}

/* Save a synthetic model, load it back through ic_model_load, and get the same logits. */
static void TestSaveLoad(ic_model_t* model) {
  char dir[] = "/tmp/ic_c_api_test_XXXXXX";
  char path[512], plan[16];
  ic_model_t* loaded = NULL;
  ic_context_t *c1 = NULL, *c2 = NULL;
  ic_context_params_t cp;
  ic_model_load_params_t lp;
  int32_t tokens[20], s1, s2;
  float a[128], b[128];
  FILE* f;

  if (mkdtemp(dir) == NULL) {
    CHECK(!"mkdtemp failed");
    return;
  }
  CHECK_OK(ic_model_save(model, dir));
  CHECK_STATUS(ic_model_save(model, NULL), IC_ERR_INVALID_ARGUMENT);
  CHECK_OK(ic_model_load(dir, NULL, &loaded));
  if (loaded != NULL) {
    CHECK_OK(ic_model_plan(loaded, plan, sizeof(plan)));
    CHECK(strcmp(plan, "FSFS") == 0);
    MakeTokens(tokens, 20, 128, 11u);
    ic_context_default_params(&cp);
    cp.device = IC_DEVICE_CPU;
    cp.max_tokens = 64;
    CHECK_OK(ic_context_create(model, &cp, &c1));
    CHECK_OK(ic_context_create(loaded, &cp, &c2));
    if (c1 != NULL && c2 != NULL) {
      CHECK_OK(ic_sequence_add(c1, &s1));
      CHECK_OK(ic_sequence_add(c2, &s2));
      CHECK_OK(ic_prefill(c1, s1, tokens, 20, a));
      CHECK_OK(ic_prefill(c2, s2, tokens, 20, b));
      CHECK(MaxAbsDiff(a, b, 128) <= 1e-5);
    }
    ic_context_free(c1);
    ic_context_free(c2);
    ic_model_free(loaded);
    loaded = NULL;
  }

  /* A plan file overrides the checkpoint's plan. */
  snprintf(path, sizeof(path), "%s/plan.txt", dir);
  f = fopen(path, "w");
  if (f != NULL) {
    fputs("FFSS\n", f);
    fclose(f);
    ic_model_load_default_params(&lp);
    lp.plan_file = path;
    CHECK_OK(ic_model_load(dir, &lp, &loaded));
    if (loaded != NULL) {
      CHECK_OK(ic_model_plan(loaded, plan, sizeof(plan)));
      CHECK(strcmp(plan, "FFSS") == 0);
      ic_model_free(loaded);
    }
    remove(path);
  }
  snprintf(path, sizeof(path), "%s/config.json", dir);
  remove(path);
  snprintf(path, sizeof(path), "%s/model.safetensors", dir);
  remove(path);
  rmdir(dir);
}

/* ---- the golden dense Llama checkpoint (HF transformers' own numbers) ---------------------------- */

typedef struct {
  unsigned char* bytes;
  size_t size;
  size_t data_start;
  const char* header; /* NUL-terminated copy */
} Safetensors;

static int ReadSafetensors(const char* path, Safetensors* st) {
  FILE* f = fopen(path, "rb");
  uint64_t hlen = 0;
  long size;
  int i;
  char* header;
  if (f == NULL) return 0;
  fseek(f, 0, SEEK_END);
  size = ftell(f);
  fseek(f, 0, SEEK_SET);
  st->bytes = (unsigned char*)malloc((size_t)size);
  st->size = (size_t)size;
  if (fread(st->bytes, 1, (size_t)size, f) != (size_t)size) {
    fclose(f);
    return 0;
  }
  fclose(f);
  for (i = 7; i >= 0; --i) hlen = (hlen << 8) | st->bytes[i];
  if (8 + hlen > (uint64_t)size) return 0;
  header = (char*)malloc((size_t)hlen + 1);
  memcpy(header, st->bytes + 8, (size_t)hlen);
  header[hlen] = '\0';
  st->header = header;
  st->data_start = 8 + (size_t)hlen;
  return 1;
}

/* The data of tensor `name` and its size in bytes (NULL if absent). */
static const void* Tensor(const Safetensors* st, const char* name, size_t* bytes) {
  char key[128];
  const char* p;
  unsigned long begin = 0, end = 0;
  snprintf(key, sizeof(key), "\"%s\"", name);
  p = strstr(st->header, key);
  if (p == NULL) return NULL;
  p = strstr(p, "\"data_offsets\"");
  if (p == NULL || sscanf(p, "\"data_offsets\":[%lu,%lu]", &begin, &end) != 2) return NULL;
  if (st->data_start + end > st->size) return NULL;
  *bytes = end - begin;
  return st->bytes + st->data_start + begin;
}

static void TestGoldenLlama(void) {
  char dir[512], path[600], plan[8];
  const char* shared = getenv("IC_SHARED_DIR");
  Safetensors st;
  ic_model_t* model = NULL;
  ic_context_t* ctx = NULL;
  ic_context_params_t cp;
  ic_model_info_t info;
  const int32_t* ids;
  const float* golden;
  const int32_t* greedy;
  const int32_t* prompt_len;
  size_t n_ids_bytes = 0, n_logits_bytes = 0, n_greedy_bytes = 0, n_len_bytes = 0;
  size_t S, V, t, i;
  float* logits;
  double err2 = 0, ref2 = 0, loss = 0, expected = 0;
  int32_t seq, tok;
  int64_t predicted = 0;

  snprintf(dir, sizeof(dir), "%s/tests/data/golden/llama-tiny-dense", IC_SOURCE_DIR);
  if (!IsDirectory(dir) && shared != NULL) {
    snprintf(dir, sizeof(dir), "%s/golden/llama-tiny-dense", shared);
  }
  if (!IsDirectory(dir)) {
    printf("golden llama-tiny-dense not found: skipped\n");
    return;
  }
  snprintf(path, sizeof(path), "%s/golden.safetensors", dir);
  memset(&st, 0, sizeof(st));
  CHECK(ReadSafetensors(path, &st));
  if (st.header == NULL) return;
  ids = (const int32_t*)Tensor(&st, "input_ids", &n_ids_bytes);
  golden = (const float*)Tensor(&st, "logits", &n_logits_bytes);
  greedy = (const int32_t*)Tensor(&st, "greedy_tokens", &n_greedy_bytes);
  prompt_len = (const int32_t*)Tensor(&st, "greedy_prompt_len", &n_len_bytes);
  CHECK(ids != NULL && golden != NULL && greedy != NULL && prompt_len != NULL);
  if (ids == NULL || golden == NULL || greedy == NULL || prompt_len == NULL) return;

  CHECK_OK(ic_model_load(dir, NULL, &model));
  if (model == NULL) return;
  info.struct_size = sizeof(info);
  CHECK_OK(ic_model_info(model, &info));
  CHECK(strcmp(info.architecture, "LlamaForCausalLM") == 0);
  CHECK(info.has_indexer == 0 && info.index_topk == 0 && info.num_layers == 3);
  CHECK_OK(ic_model_plan(model, plan, sizeof(plan)));
  CHECK(strcmp(plan, "FFF") == 0);
  S = n_ids_bytes / sizeof(int32_t);
  V = (size_t)info.vocab_size;
  CHECK(n_logits_bytes == S * V * sizeof(float));

  ic_context_default_params(&cp);
  cp.device = IC_DEVICE_CPU;
  cp.max_tokens = 256;
  cp.block_size = 16;
  cp.prefill_chunk = 32;
  CHECK_OK(ic_context_create(model, &cp, &ctx));
  CHECK_OK(ic_model_free(model));
  if (ctx == NULL) return;
  logits = (float*)malloc(sizeof(float) * V);

  /* Every row: prefill token 0, then decode one token at a time; relative Frobenius error < 1e-4. */
  CHECK_OK(ic_sequence_add(ctx, &seq));
  for (t = 0; t < S; ++t) {
    if (t == 0) {
      CHECK_OK(ic_prefill(ctx, seq, ids, 1, logits));
    } else {
      CHECK_OK(ic_decode(ctx, &seq, &ids[t], 1, logits));
    }
    for (i = 0; i < V; ++i) {
      double d = (double)logits[i] - (double)golden[t * V + i];
      err2 += d * d;
      ref2 += (double)golden[t * V + i] * golden[t * V + i];
    }
    if (t + 1 < S) expected += TokenLoss(&golden[t * V], V, ids[t + 1]);
  }
  CHECK(sqrt(err2 / ref2) < 1e-4);
  printf("golden llama-tiny-dense: decode-path logits relative error %.3g\n", sqrt(err2 / ref2));
  CHECK_OK(ic_sequence_remove(ctx, seq));

  /* One chunked prefill: its last row is golden's last row. */
  CHECK_OK(ic_sequence_add(ctx, &seq));
  CHECK_OK(ic_prefill(ctx, seq, ids, S, logits));
  err2 = ref2 = 0;
  for (i = 0; i < V; ++i) {
    double d = (double)logits[i] - (double)golden[(S - 1) * V + i];
    err2 += d * d;
    ref2 += (double)golden[(S - 1) * V + i] * golden[(S - 1) * V + i];
  }
  CHECK(sqrt(err2 / ref2) < 1e-4);
  CHECK_OK(ic_sequence_remove(ctx, seq));

  /* The loss from golden logits. */
  expected /= (double)(S - 1);
  CHECK_OK(ic_eval_loss(ctx, ids, S, &loss, &predicted));
  CHECK(predicted == (int64_t)S - 1);
  CHECK(fabs(loss - expected) <= 1e-4 * (1.0 + expected));

  /* Greedy decoding from the first greedy_prompt_len tokens. */
  CHECK_OK(ic_sequence_add(ctx, &seq));
  CHECK_OK(ic_prefill(ctx, seq, ids, (size_t)prompt_len[0], logits));
  for (i = 0; i < n_greedy_bytes / sizeof(int32_t); ++i) {
    tok = Argmax(logits, V);
    if (tok != greedy[i]) {
      fprintf(stderr, "  greedy token %u: %d, golden %d\n", (unsigned)i, tok, greedy[i]);
    }
    CHECK(tok == greedy[i]);
    CHECK_OK(ic_decode(ctx, &seq, &tok, 1, logits));
  }
  CHECK_OK(ic_context_free(ctx));
  free(logits);
  free(st.bytes);
  free((void*)st.header);
}

/* ic_search_plan: a greedy search to 2 Full layers of 4; its last loss is the found plan's loss. */
static void TestSearchPlan(ic_model_t* model) {
  enum { kLen = 32 };
  int32_t w0[kLen], w1[kLen];
  const int32_t* windows[2];
  size_t lengths[2] = {kLen, kLen};
  char plan[8];
  double losses[3] = {0, 0, 0};
  double loss = 0, mean = 0;
  int i, full = 0;
  ic_context_params_t cp;
  ic_context_t* ctx = NULL;
  MakeTokens(w0, kLen, 128, 11u);
  MakeTokens(w1, kLen, 128, 12u);
  windows[0] = w0;
  windows[1] = w1;
  CHECK_OK(ic_search_plan(model, windows, lengths, 2, 2, IC_DEVICE_CPU, plan, sizeof plan, losses, 3));
  CHECK(strlen(plan) == 4 && plan[0] == 'F');
  for (i = 0; i < 4; ++i) full += plan[i] == 'F';
  CHECK(full == 2);
  for (i = 0; i < 3; ++i) CHECK(losses[i] > 0 && losses[i] < 20);
  printf("ic_search_plan: %s, losses %.5f %.5f %.5f\n", plan, losses[0], losses[1], losses[2]);
  CHECK_OK(ic_context_default_params(&cp));
  cp.device = IC_DEVICE_CPU;
  cp.plan = plan;
  CHECK_OK(ic_context_create(model, &cp, &ctx));
  if (ctx != NULL) {
    CHECK_OK(ic_eval_loss(ctx, w0, kLen, &loss, NULL));
    mean = loss;
    CHECK_OK(ic_eval_loss(ctx, w1, kLen, &loss, NULL));
    mean = (mean + loss) / 2;
    CHECK(fabs(mean - losses[2]) < 1e-4);
    CHECK_OK(ic_context_free(ctx));
  }
  CHECK_STATUS(ic_search_plan(NULL, windows, lengths, 2, 2, IC_DEVICE_CPU, plan, sizeof plan, NULL, 0),
               IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_search_plan(model, windows, lengths, 0, 2, IC_DEVICE_CPU, plan, sizeof plan, NULL, 0),
               IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_search_plan(model, windows, lengths, 2, 5, IC_DEVICE_CPU, plan, sizeof plan, NULL, 0),
               IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_search_plan(model, windows, lengths, 2, 2, IC_DEVICE_CPU, plan, 4, NULL, 0),
               IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_search_plan(model, windows, lengths, 2, 2, IC_DEVICE_CPU, plan, sizeof plan, losses, 2),
               IC_ERR_INVALID_ARGUMENT);
}

/* ic_distill_indexers: a dense Llama model gets trained indexers (3 steps, progress reported) and the
 * written Llama-DSA checkpoint loads with the requested plan and runs. */
static int g_distill_calls;
static int g_stop_after = 0;
static int CountStep(int64_t step, int64_t steps, double loss, void* user) {
  CHECK(step == g_distill_calls + 1 && steps == 3 && loss > 0 && user == (void*)&g_distill_calls);
  ++g_distill_calls;
  return g_stop_after > 0 && step >= g_stop_after; /* nonzero: stop */
}

static void TestDistill(void) {
  char dense_dir[] = "/tmp/ic_c_distill_XXXXXX";
  char out_dir[256];
  ic_synthetic_params_t sp;
  ic_distill_params_t dp;
  ic_model_t *mem = NULL, *dense = NULL, *dsa = NULL;
  ic_model_info_t info;
  ic_context_params_t cp;
  ic_context_t* ctx = NULL;
  int32_t w0[24], w1[24];
  const int32_t* windows[2] = {w0, w1};
  size_t lengths[2] = {24, 24};
  char plan[8];
  double loss = -1, eval = 0, dense_eval = 0;
  MakeTokens(w0, 24, 128, 31u);
  MakeTokens(w1, 24, 128, 32u);
  if (mkdtemp(dense_dir) == NULL) {
    CHECK(!"mkdtemp failed");
    return;
  }
  snprintf(out_dir, sizeof out_dir, "%s/dsa", dense_dir);
  CHECK_OK(ic_synthetic_default_params(&sp));
  sp.architecture = IC_ARCH_LLAMA;
  sp.num_layers = 4;
  sp.hidden_size = 64;
  sp.vocab_size = 128;
  CHECK_OK(ic_model_create_synthetic(&sp, &mem));
  CHECK_OK(ic_model_save(mem, dense_dir));
  CHECK_OK(ic_model_load(dense_dir, NULL, &dense));
  CHECK_OK(ic_distill_default_params(&dp));
  CHECK(dp.struct_size == sizeof dp && dp.index_n_heads == 4 && dp.index_topk == 256 && dp.bf16 == 1);
  dp.index_n_heads = 2;
  dp.index_head_dim = 16;
  dp.index_topk = 8;
  dp.plan = "FSFS";
  dp.steps = 3;
  dp.device = IC_DEVICE_CPU;
  dp.on_step = CountStep;
  dp.user = &g_distill_calls;
  /* An in-memory model has no files to link; a synthetic DSA model is not dense. */
  CHECK_STATUS(ic_distill_indexers(mem, windows, lengths, 2, out_dir, &dp, &loss), IC_ERR_FAILED_PRECONDITION);
  CHECK_STATUS(ic_distill_indexers(dense, windows, lengths, 0, out_dir, &dp, &loss), IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_distill_indexers(dense, windows, lengths, 2, NULL, &dp, &loss), IC_ERR_INVALID_ARGUMENT);
  dp.plan = "SFFS";
  CHECK_STATUS(ic_distill_indexers(dense, windows, lengths, 2, out_dir, &dp, &loss), IC_ERR_INVALID_ARGUMENT);
  dp.plan = "FSFS";
  dp.resume = 1;
  CHECK_STATUS(ic_distill_indexers(dense, windows, lengths, 2, out_dir, &dp, &loss), IC_ERR_INVALID_ARGUMENT);
  dp.resume = 0;
  CHECK(g_distill_calls == 0);
  CHECK_OK(ic_distill_indexers(dense, windows, lengths, 2, out_dir, &dp, &loss));
  CHECK(g_distill_calls == 3 && loss > 0);
  /* A checkpoint is never overwritten without resume; a callback can stop a run (resumable). */
  {
    char ckpt[300];
    snprintf(ckpt, sizeof ckpt, "%s/ck.safetensors", out_dir);
    dp.checkpoint = ckpt;
    g_distill_calls = 0;
    g_stop_after = 1;
    CHECK_STATUS(ic_distill_indexers(dense, windows, lengths, 2, out_dir, &dp, &loss), IC_ERR_ABORTED);
    CHECK_MESSAGE_HAS("stopped by the caller after step 1");
    CHECK(g_distill_calls == 1);
    CHECK_STATUS(ic_distill_indexers(dense, windows, lengths, 2, out_dir, &dp, &loss), IC_ERR_ALREADY_EXISTS);
    g_stop_after = 0;
    dp.resume = 1;
    CHECK_OK(ic_distill_indexers(dense, windows, lengths, 2, out_dir, &dp, &loss));
    CHECK(g_distill_calls == 3); /* steps 2 and 3 of the resumed run */
    dp.resume = 0;
    dp.checkpoint = NULL;
    CHECK_STATUS(ic_distill_indexers(dense, windows, lengths, 2, dense_dir, &dp, &loss), IC_ERR_INVALID_ARGUMENT);
    CHECK_MESSAGE_HAS("must differ");
  }
  CHECK_OK(ic_model_load(out_dir, NULL, &dsa));
  if (dsa != NULL) {
    info.struct_size = sizeof info;
    CHECK_OK(ic_model_info(dsa, &info));
    CHECK(strcmp(info.architecture, "LlamaDsaForCausalLM") == 0);
    CHECK_OK(ic_model_plan(dsa, plan, sizeof plan));
    CHECK(strcmp(plan, "FSFS") == 0);
    CHECK_OK(ic_context_default_params(&cp));
    cp.device = IC_DEVICE_CPU;
    CHECK_OK(ic_context_create(dsa, &cp, &ctx));
    if (ctx != NULL) {
      CHECK_OK(ic_eval_loss(ctx, w0, 24, &eval, NULL));
      CHECK_OK(ic_context_free(ctx));
    }
    ctx = NULL;
    CHECK_OK(ic_context_create(dense, &cp, &ctx));
    if (ctx != NULL) {
      CHECK_OK(ic_eval_loss(ctx, w0, 24, &dense_eval, NULL));
      CHECK_OK(ic_context_free(ctx));
    }
    /* Top-k 8 of up to 24 keys: close to the dense model's loss (this synthetic model's is ~50 nats). */
    CHECK(eval > 0 && fabs(eval - dense_eval) < 0.05 * dense_eval);
    CHECK_OK(ic_model_free(dsa));
  }
  printf("ic_distill_indexers: last loss %.5f, eval loss DSA %.5f vs dense %.5f\n", loss, eval, dense_eval);
  CHECK_OK(ic_model_free(dense));
  CHECK_OK(ic_model_free(mem));
  {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dense_dir);
    CHECK(system(cmd) == 0);
  }
}

/* Several ranks through the C ABI: 4 threads of this process, world 4 = dp 2 x tp 2, ep 4, joined with an
 * in-process dist_id. Shard group 0 (ranks 0, 1) serves prompt A, shard group 1 (ranks 2, 3) prompt B;
 * every rank's logits match a single-rank context on its prompt; then group 1 decodes one step while
 * group 0 runs ic_context_idle_step. */
typedef struct {
  ic_model_t* model;
  const ic_dist_id_t* id;
  int rank;
  const int32_t* prompt;
  int32_t next;
  ic_status_t create, prefill, step;
  float logits[128], decoded[128];
} RankArgs;

static void* RankBody(void* p) {
  RankArgs* a = (RankArgs*)p;
  ic_context_params_t cp;
  ic_context_t* ctx = NULL;
  int32_t seq = -1;
  ic_context_default_params(&cp);
  cp.device = IC_DEVICE_CPU;
  cp.max_tokens = 256;
  cp.rank = a->rank;
  cp.world_size = 4;
  cp.tp_size = 2;
  cp.ep_size = 4;
  cp.dist_id = a->id;
  a->create = ic_context_create(a->model, &cp, &ctx);
  if (a->create != IC_OK) return NULL;
  ic_sequence_add(ctx, &seq);
  a->prefill = ic_prefill(ctx, seq, a->prompt, 24, a->logits);
  a->step = a->rank >= 2 ? ic_decode(ctx, &seq, &a->next, 1, a->decoded) : ic_context_idle_step(ctx);
  ic_context_free(ctx);
  return NULL;
}

/* Ranks that cannot form a group fail fast (not after the timeout) and name the problem. */
typedef struct {
  ic_model_t* model;
  const ic_dist_id_t* id;
  int rank, world, tp, indexer_precision, weight_precision;
  ic_status_t status;
  char message[512];
} JoinArgs;

static void* JoinBody(void* p) {
  JoinArgs* a = (JoinArgs*)p;
  ic_context_params_t cp;
  ic_context_t* ctx = NULL;
  ic_context_default_params(&cp);
  cp.device = IC_DEVICE_CPU;
  cp.max_tokens = 64;
  cp.rank = a->rank;
  cp.world_size = a->world;
  cp.tp_size = a->tp;
  cp.dist_id = a->id;
  cp.dist_timeout_ms = 60000;
  cp.indexer_precision = a->indexer_precision;
  cp.weight_precision = a->weight_precision;
  a->status = ic_context_create(a->model, &cp, &ctx);
  snprintf(a->message, sizeof a->message, "%s", ic_last_error_message());
  ic_context_free(ctx);
  return NULL;
}

static void TestMultiRankMismatch(ic_model_t* model) {
  /* 0: world sizes differ; 1: tp sizes differ; 2: the same rank joins twice; 3: indexer precisions differ;
   * 4: rank 0's weight_precision is invalid, so it never joins: rank 1 must not wait for the timeout. */
  struct { int world[2], tp[2], rank[2], ip[2], wp[2]; } cases[5] = {
      {{2, 3}, {1, 1}, {0, 1}, {0, 0}, {0, 0}}, {{2, 2}, {2, 1}, {0, 1}, {0, 0}, {0, 0}},
      {{2, 2}, {1, 1}, {0, 0}, {0, 0}, {0, 0}}, {{2, 2}, {2, 2}, {0, 1}, {IC_PRECISION_FP8, IC_PRECISION_F32}, {0, 0}},
      {{2, 2}, {2, 2}, {0, 1}, {0, 0}, {7, IC_PRECISION_F32}}};
  const char* expect[5] = {"world_size", "disagree", "already joined", "precision", "weight_precision"};
  int c, i;
  for (c = 0; c < 5; ++c) {
    ic_dist_id_t id;
    pthread_t threads[2];
    JoinArgs args[2];
    time_t t0 = time(NULL);
    CHECK_OK(ic_dist_unique_id(IC_DEVICE_CPU, &id));
    for (i = 0; i < 2; ++i) {
      memset(&args[i], 0, sizeof args[i]);
      args[i].model = model;
      args[i].id = &id;
      args[i].rank = cases[c].rank[i];
      args[i].world = cases[c].world[i];
      args[i].tp = cases[c].tp[i];
      args[i].indexer_precision = cases[c].ip[i];
      args[i].weight_precision = cases[c].wp[i];
      pthread_create(&threads[i], NULL, JoinBody, &args[i]);
    }
    for (i = 0; i < 2; ++i) pthread_join(threads[i], NULL);
    CHECK(time(NULL) - t0 < 30); /* not the 60 s timeout */
    for (i = 0; i < 2; ++i) {
      /* The rank that finds the mismatch: INVALID_ARGUMENT; the other: ABORTED while waiting, or
       * FAILED_PRECONDITION when the group was already broken when it called. */
      if (!(args[i].status == IC_ERR_INVALID_ARGUMENT || args[i].status == IC_ERR_ABORTED ||
            args[i].status == IC_ERR_FAILED_PRECONDITION)) {
        printf("case %d rank %d: %s: %s\n", c, i, ic_status_string(args[i].status), args[i].message);
      }
      CHECK(args[i].status == IC_ERR_INVALID_ARGUMENT || args[i].status == IC_ERR_ABORTED ||
            args[i].status == IC_ERR_FAILED_PRECONDITION);
    }
    CHECK(strstr(args[0].message, expect[c]) != NULL || strstr(args[1].message, expect[c]) != NULL);
    if (c == 4) { /* the waiting rank names the one that could not create its context, and why */
      if (strstr(args[1].message, "rank 0 could not create its context") == NULL) printf("rank 1: %s\n", args[1].message);
      CHECK(strstr(args[1].message, "rank 0 could not create its context") != NULL);
      CHECK(strstr(args[1].message, "weight_precision") != NULL);
    }
    if (c == 2) { /* both ranks name the duplicate: the one refused, and the one that was waiting */
      for (i = 0; i < 2; ++i) {
        if (strstr(args[i].message, "already joined") == NULL) printf("rank %d: %s\n", i, args[i].message);
        CHECK(strstr(args[i].message, "already joined") != NULL);
      }
    }
  }
}

static void TestMultiRank(void) {
  ic_model_t* model = MakeSmallModel("FSFS");
  ic_dist_id_t id;
  ic_context_params_t cp;
  ic_context_t *ctx = NULL, *ref = NULL;
  pthread_t threads[4];
  RankArgs args[4];
  int32_t prompts[2][24], seq = -1, next = 7;
  float want[2][128], want_decoded[128];
  int i, g;
  if (model == NULL) return;
  MakeTokens(prompts[0], 24, 128, 41u);
  MakeTokens(prompts[1], 24, 128, 42u);
  for (g = 0; g < 2; ++g) {
    CHECK_OK(ic_context_default_params(&cp));
    cp.device = IC_DEVICE_CPU;
    cp.max_tokens = 256;
    CHECK_OK(ic_context_create(model, &cp, &ref));
    CHECK_OK(ic_sequence_add(ref, &seq));
    CHECK_OK(ic_prefill(ref, seq, prompts[g], 24, want[g]));
    if (g == 1) CHECK_OK(ic_decode(ref, &seq, &next, 1, want_decoded));
    CHECK_OK(ic_context_free(ref));
  }
  CHECK_OK(ic_dist_unique_id(IC_DEVICE_CPU, &id));
  for (i = 0; i < 4; ++i) {
    memset(&args[i], 0, sizeof args[i]);
    args[i].model = model;
    args[i].id = &id;
    args[i].rank = i;
    args[i].prompt = prompts[i / 2];
    args[i].next = next;
    pthread_create(&threads[i], NULL, RankBody, &args[i]);
  }
  for (i = 0; i < 4; ++i) pthread_join(threads[i], NULL);
  for (i = 0; i < 4; ++i) {
    CHECK(args[i].create == IC_OK && args[i].prefill == IC_OK && args[i].step == IC_OK);
    CHECK(MaxAbsDiff(args[i].logits, want[i / 2], 128) < 1e-3);
  }
  CHECK(MaxAbsDiff(args[0].logits, args[1].logits, 128) == 0.0); /* one shard group: bitwise identical */
  CHECK(MaxAbsDiff(args[2].decoded, want_decoded, 128) < 1e-3);
  printf("multi-rank (world 4 = dp 2 x tp 2, ep 4): logits max |diff| vs one rank %.2e\n",
         MaxAbsDiff(args[2].logits, want[1], 128));

  /* Bad configurations get clear errors, and no rank waits for peers that never come. */
  CHECK_OK(ic_context_default_params(&cp));
  cp.device = IC_DEVICE_CPU;
  cp.world_size = 2;
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT); /* no dist_id */
  CHECK_MESSAGE_HAS("dist_id is NULL");
  cp.dist_id = &id;
  cp.rank = 2;
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("[0, 2)");
  cp.rank = 0;
  cp.world_size = 4;
  cp.tp_size = 3;
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("tp_size 3");
  cp.tp_size = 1;
  cp.world_size = 2;
  memset(&id, 0, sizeof id);
  CHECK_STATUS(ic_context_create(model, &cp, &ctx), IC_ERR_INVALID_ARGUMENT);
  CHECK_MESSAGE_HAS("not made by ic_dist_unique_id");
  CHECK_STATUS(ic_dist_unique_id((ic_device_t)7, &id), IC_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(ic_dist_unique_id(IC_DEVICE_CPU, NULL), IC_ERR_INVALID_ARGUMENT);
  if (ic_cuda_device_count() == 0) { /* no NCCL bootstrap (a thread and a socket) for a job that cannot run */
    CHECK_STATUS(ic_dist_unique_id(IC_DEVICE_CUDA, &id), IC_ERR_UNAVAILABLE);
  }
  CHECK(strcmp(ic_status_string(IC_ERR_ABORTED), "IC_ERR_ABORTED") == 0);
  TestMultiRankMismatch(model);
  CHECK_OK(ic_model_free(model));
}

int main(void) {
  ic_model_t* model;
  TestVersionAndStatus();
  TestNullArguments();
  TestHandles();
  model = MakeSmallModel("FSFS");
  if (model != NULL) {
    TestForward(model, "FSFS");
    TestKvCacheFull(model);
    TestSaveLoad(model);
    TestExposer(model);
    TestThreads(model);
    TestSearchPlan(model);
    CHECK_OK(ic_model_free(model));
  }
  TestMetricsText();
  TestGoldenLlama();
  TestDistill();
  TestMultiRank();
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
