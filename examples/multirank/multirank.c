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
 *       the SDK owns no launcher. The GPU is $LOCAL_RANK (torchrun's convention) or else RANK. ID_FILE
 *       must not exist when the job starts; rank 0 removes it once every rank has joined.
 *
 * Without MODEL_DIR the embedded synthetic DSA model is used (a MoE model with 8 routed experts).
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "indexcache/indexcache.h"

#define PROMPT 48

static ic_model_t* g_model;
static ic_dist_id_t g_id;
static int g_world, g_tp, g_ep;
static const char* g_id_file; /* process mode: removed by rank 0 once every rank has joined */

/* argv[i] as an int in [lo, hi]; exits with a message naming the argument otherwise. */
static int ParseInt(const char* text, const char* name, long lo, long hi) {
  char* end = NULL;
  long v;
  errno = 0;
  v = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v < lo || v > hi) {
    fprintf(stderr, "multirank: %s must be an integer in [%ld, %ld], got '%s'\n", name, lo, hi, text);
    exit(2);
  }
  return (int)v;
}

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
  /* Every rank has joined (creation returns only then): the id is spent, so a later job cannot read it. */
  if (rank == 0 && g_id_file != NULL) unlink(g_id_file);
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
    g_world = ParseInt(argv[2], "WORLD", 1, 64);
    g_tp = ParseInt(argv[3], "TP", 1, 64);
    g_ep = ParseInt(argv[4], "EP", 1, 64);
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
    const char* id_file = argv[6];
    const char* local = getenv("LOCAL_RANK");
    struct stat st;
    FILE* f;
    int rank;
    g_world = ParseInt(argv[3], "WORLD", 1, 65536);
    rank = ParseInt(argv[2], "RANK", 0, g_world - 1);
    g_tp = ParseInt(argv[4], "TP", 1, g_world);
    g_ep = ParseInt(argv[5], "EP", 1, g_world);
    if (rank == 0) {  /* write to a temporary name, then rename: readers never see half an id */
      char tmp[4096];
      if (Check(ic_dist_unique_id(IC_DEVICE_CUDA, &g_id), "ic_dist_unique_id", rank)) return 1;
      snprintf(tmp, sizeof tmp, "%s.tmp", id_file);
      f = fopen(tmp, "wb");
      if (f == NULL || fwrite(g_id.bytes, 1, IC_DIST_ID_BYTES, f) != IC_DIST_ID_BYTES || fclose(f) != 0 ||
          rename(tmp, id_file) != 0) {
        perror(id_file);
        unlink(tmp);
        return 1;
      }
      g_id_file = id_file;
    } else {
      /* ID_FILE must not exist before the job starts (rank 0 removes it once every rank has joined). */
      for (i = 0; i < 600 && access(id_file, R_OK) != 0; ++i) usleep(100000); /* up to 60 s */
      if (stat(id_file, &st) != 0) {
        fprintf(stderr, "rank %d: %s did not appear within 60 s: is rank 0 running?\n", rank, id_file);
        return 1;
      }
      if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "rank %d: %s is not a regular file\n", rank, id_file);
        return 1;
      }
      f = fopen(id_file, "rb");
      if (f == NULL || fread(g_id.bytes, 1, IC_DIST_ID_BYTES, f) != IC_DIST_ID_BYTES) {
        fprintf(stderr, "rank %d: cannot read the %d-byte id from %s\n", rank, IC_DIST_ID_BYTES, id_file);
        if (f != NULL) fclose(f);
        return 1;
      }
      fclose(f);
    }
    g_model = LoadModel(argc > 7 ? argv[7] : NULL);
    if (g_model == NULL) return Check(IC_ERR_INVALID_ARGUMENT, "load model", rank) + 1;
    failed = RunRank(rank, IC_DEVICE_CUDA, local != NULL ? atoi(local) : rank);
  } else {
    fprintf(stderr, "usage: multirank threads WORLD TP EP [MODEL_DIR]\n"
                    "       multirank process RANK WORLD TP EP ID_FILE [MODEL_DIR]\n"
                    "         (one process per GPU; GPU $LOCAL_RANK, else RANK; ID_FILE must not exist yet)\n");
    return 2;
  }
  ic_model_free(g_model);
  printf(failed ? "multirank: FAILED\n" : "multirank: all ranks done\n");
  return failed;
}
