/* Greedy generation through the C ABI, with an IndexCache plan.
 *
 *   build/examples/generate                     # embedded synthetic model, plan FSSSFSSS
 *   build/examples/generate /models/glm5 FSSF…  # an HF checkpoint directory and a plan
 *
 * Prints the generated token ids and the indexer metrics (Prometheus text).
 */
#include <indexcache/indexcache.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                     \
  do {                                                                                  \
    ic_status_t s_ = (call);                                                            \
    if (s_ != IC_OK) {                                                                  \
      fprintf(stderr, "%s failed: %s: %s\n", #call, ic_status_string(s_), ic_last_error_message()); \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

static int32_t argmax(const float* v, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; ++i) if (v[i] > v[best]) best = i;
  return best;
}

int main(int argc, char** argv) {
  ic_model_t* model = NULL;
  if (argc > 1) {
    CHECK(ic_model_load(argv[1], NULL, &model));
  } else {
    ic_synthetic_params_t sp;
    CHECK(ic_synthetic_default_params(&sp));
    CHECK(ic_model_create_synthetic(&sp, &model));
  }
  ic_model_info_t info;
  info.struct_size = sizeof info;
  CHECK(ic_model_info(model, &info));

  ic_context_params_t cp;
  CHECK(ic_context_default_params(&cp));
  cp.plan = argc > 2 ? argv[2] : (info.num_layers == 8 && info.has_indexer ? "FSSSFSSS" : NULL);
  ic_context_t* ctx = NULL;
  CHECK(ic_context_create(model, &cp, &ctx));
  CHECK(ic_model_free(model)); /* the context keeps the model alive */

  int32_t seq;
  CHECK(ic_sequence_add(ctx, &seq));
  int32_t prompt[256];
  for (int i = 0; i < 256; ++i) prompt[i] = (i * 7919 + 13) % info.vocab_size;
  float* logits = malloc(sizeof(float) * (size_t)info.vocab_size);
  CHECK(ic_prefill(ctx, seq, prompt, 256, logits));
  printf("generated:");
  for (int step = 0; step < 16; ++step) {
    int32_t next = argmax(logits, info.vocab_size);
    printf(" %d", next);
    CHECK(ic_decode(ctx, &seq, &next, 1, logits));
  }
  printf("\n");

  size_t need = 0;
  CHECK(ic_metrics_text(NULL, 0, &need));
  char* text = malloc(need);
  CHECK(ic_metrics_text(text, need, &need));
  for (char* line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    if (strncmp(line, "indexcache_indexer", 18) == 0) puts(line);
  }
  free(text);
  free(logits);
  CHECK(ic_context_free(ctx));
  return 0;
}
