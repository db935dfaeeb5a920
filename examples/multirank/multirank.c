/* Several ranks through the C ABI (DESIGN.md §5): how ranks get the job's id, create their contexts and
 * run forward passes together.
 *
 *   multirank threads WORLD TP EP [MODEL_DIR]
 *       WORLD ranks as threads of this process, CPU contexts (an in-process dist_id shared in memory).
 *       Shard groups of TP ranks serve their own prompt (data-parallel attention); experts split over
 *       groups of EP ranks; a group with nothing to decode calls ic_context_idle_step.
 *   multirank process RANK WORLD TP EP ID_FILE [MODEL_DIR]
 *       One process per GPU (start WORLD of them, on one node or several), CUDA contexts over NCCL: rank 0
 *       makes an NCCL id and writes it to ID_FILE (a path on a filesystem every node sees); the others
 *       wait for the file and read it. With MPI you would MPI_Bcast the IC_DIST_ID_BYTES bytes instead;
 *       the SDK owns no launcher. The GPU is $LOCAL_RANK (torchrun's convention) or else RANK.
 *
 * Without MODEL_DIR the embedded synthetic DSA model is used (a MoE model with 8 routed experts).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "indexcache/indexcache.h"

#define PROMPT 48

static ic_model_t* g_model;
static ic_dist_id_t g_id;
static int g_world, g_tp, g_ep;

static int Check(ic_status_t s, const char* what, int rank) {
  if (s == IC_OK) return 0;
  fprintf(stderr, "rank %d: %s: %s: %s\n", rank, what, ic_status_string(s), ic_last_error_message());
  return 1;
}

static ic_model_t* LoadModel(const char* dir) {
  ic_model_t* m = NULL;
  ic_synthetic_params_t sp;
  if (dir != NULL) return ic_model_load(dir, NULL, &m) == IC_OK ? m : NULL;
  ic_synthetic_default_params(&sp);
  return ic_model_create_synthetic(&sp, &m) == IC_OK ? m : NULL;
}

/* One rank: its shard group g serves prompt g; groups take turns decoding, the others idle. */
static int RunRank(int rank, ic_device_t device, int device_ordinal) {
  ic_context_params_t cp;
  ic_context_t* ctx = NULL;
  int32_t prompt[PROMPT], seq = -1, next;
  const int group = rank / g_tp, groups = g_world / g_tp;
  int i, step, failed = 0;
  float* logits;
  ic_model_info_t info;
  info.struct_size = sizeof info;
  if (Check(ic_model_info(g_model, &info), "ic_model_info", rank)) return 1;
  logits = malloc(sizeof(float) * (size_t)info.vocab_size);
  for (i = 0; i < PROMPT; ++i) prompt[i] = (int32_t)((group * 7919 + i * 104729) % info.vocab_size);
  ic_context_default_params(&cp);
  cp.device = device;
  cp.device_ordinal = device_ordinal;
  cp.max_tokens = 1024;
  cp.rank = rank;
  cp.world_size = g_world;
  cp.tp_size = g_tp;
  cp.ep_size = g_ep;
  cp.dist_id = &g_id;
  if (Check(ic_context_create(g_model, &cp, &ctx), "ic_context_create", rank)) {
    free(logits);
    return 1;
  }
  failed |= Check(ic_sequence_add(ctx, &seq), "ic_sequence_add", rank);
  failed |= Check(ic_prefill(ctx, seq, prompt, PROMPT, logits), "ic_prefill", rank);
  for (step = 0; step < 2 * groups && !failed; ++step) {
    if (step % groups == group) {
      next = 0;
      for (i = 1; i < info.vocab_size; ++i) next = logits[i] > logits[next] ? i : next;
      failed |= Check(ic_decode(ctx, &seq, &next, 1, logits), "ic_decode", rank);
      if (rank % g_tp == 0) printf("shard group %d (rank %d): decoded token %d\n", group, rank, next);
    } else {
      failed |= Check(ic_context_idle_step(ctx), "ic_context_idle_step", rank);
    }
  }
  ic_context_free(ctx);
  free(logits);
  return failed;
}

static void* ThreadMain(void* arg) { return (void*)(size_t)RunRank((int)(size_t)arg, IC_DEVICE_CPU, 0); }

int main(int argc, char** argv) {
  int failed = 0, i;
  if (argc >= 5 && strcmp(argv[1], "threads") == 0) {
    pthread_t threads[64];
    g_world = atoi(argv[2]);
    g_tp = atoi(argv[3]);
    g_ep = atoi(argv[4]);
    if (g_world < 1 || g_world > 64 || g_tp < 1 || g_ep < 1) {
      fprintf(stderr, "multirank: WORLD in [1, 64], TP and EP >= 1\n");
      return 2;
    }
    g_model = LoadModel(argc > 5 ? argv[5] : NULL);
    if (g_model == NULL) return Check(IC_ERR_INVALID_ARGUMENT, "load model", 0) + 1;
    if (Check(ic_dist_unique_id(IC_DEVICE_CPU, &g_id), "ic_dist_unique_id", 0)) return 1;
    for (i = 0; i < g_world; ++i) pthread_create(&threads[i], NULL, ThreadMain, (void*)(size_t)i);
    for (i = 0; i < g_world; ++i) {
      void* r;
      pthread_join(threads[i], &r);
      failed |= (int)(size_t)r;
    }
  } else if (argc >= 7 && strcmp(argv[1], "process") == 0) {
    const int rank = atoi(argv[2]);
    const char* id_file = argv[6];
    const char* local = getenv("LOCAL_RANK");
    FILE* f;
    g_world = atoi(argv[3]);
    g_tp = atoi(argv[4]);
    g_ep = atoi(argv[5]);
    if (g_world < 1 || rank < 0 || rank >= g_world || g_tp < 1 || g_ep < 1) {
      fprintf(stderr, "multirank: RANK in [0, WORLD), TP and EP >= 1\n");
      return 2;
    }
    if (rank == 0) {  /* write to a temporary name, then rename: readers never see half an id */
      char tmp[4096];
      if (Check(ic_dist_unique_id(IC_DEVICE_CUDA, &g_id), "ic_dist_unique_id", rank)) return 1;
      snprintf(tmp, sizeof tmp, "%s.tmp", id_file);
      f = fopen(tmp, "wb");
      if (f == NULL || fwrite(g_id.bytes, 1, IC_DIST_ID_BYTES, f) != IC_DIST_ID_BYTES || fclose(f) != 0 ||
          rename(tmp, id_file) != 0) {
        perror(id_file);
        return 1;
      }
    } else {
      for (i = 0; i < 600 && access(id_file, R_OK) != 0; ++i) usleep(100000); /* up to 60 s */
      f = fopen(id_file, "rb");
      if (f == NULL || fread(g_id.bytes, 1, IC_DIST_ID_BYTES, f) != IC_DIST_ID_BYTES) {
        fprintf(stderr, "rank %d: cannot read the id from %s\n", rank, id_file);
        return 1;
      }
      fclose(f);
    }
    g_model = LoadModel(argc > 7 ? argv[7] : NULL);
    if (g_model == NULL) return Check(IC_ERR_INVALID_ARGUMENT, "load model", rank) + 1;
    failed = RunRank(rank, IC_DEVICE_CUDA, local != NULL ? atoi(local) : rank);
  } else {
    fprintf(stderr, "usage: multirank threads WORLD TP EP [MODEL_DIR]\n"
                    "       multirank process RANK WORLD TP EP ID_FILE [MODEL_DIR]\n");
    return 2;
  }
  ic_model_free(g_model);
  printf(failed ? "multirank: FAILED\n" : "multirank: all ranks done\n");
  return failed;
}
