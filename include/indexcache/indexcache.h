/*
 * indexcache.h — the stable C ABI of the IndexCache SDK (libindexcache.so).
 *
 * IndexCache runs DeepSeek-Sparse-Attention (DSA) models and lets layers reuse the top-k indices of
 * the nearest preceding "Full" layer instead of running their own lightning indexer ("Shared" layers).
 * The per-layer Full/Shared string is the *plan*, e.g. "FSSSFSSS" (layer 0 is always Full).
 *
 * Pure C99; compiles as C and C++. Conventions (NCCL / llama.cpp style):
 *   - Every function returns an ic_status_t (IC_OK = 0) unless documented otherwise; on failure,
 *     ic_last_error_message() gives the text, which names the offending argument and value.
 *   - Objects are opaque handles (ic_model_t, ic_context_t) created by ic_*_create / ic_*_load and
 *     destroyed by ic_*_free. Passing NULL where a handle is required returns IC_ERR_INVALID_ARGUMENT
 *     naming the argument. Using a handle after ic_*_free is undefined behaviour, but it is commonly
 *     detected (each live handle is registered and carries a magic number that ic_*_free clears) and
 *     then returns IC_ERR_INVALID_ARGUMENT.
 *   - Parameter structs start with `struct_size`; fill them with the matching ic_*_default_params()
 *     (which sets struct_size = sizeof the struct this header declares) and then change fields.
 *     Future versions only append fields: a library accepts structs from older headers (the missing
 *     fields take their defaults) and rejects structs that are larger than it knows unless the unknown
 *     tail is all zero.
 *   - Tensors are row-major float32; token ids are int32; shapes are written at each declaration
 *     ([n, vocab] = n rows of vocab floats).
 *   - No C++ exception crosses this boundary; an unexpected failure returns IC_ERR_INTERNAL.
 *   - Thread safety: models are immutable after creation and may be shared by any number of contexts
 *     and threads. A context is NOT thread-safe: serialise the calls on one context (different contexts
 *     may run concurrently). The last-error text is per thread.
 *
 * Example (error checks elided; see examples/ and tests/c_api_test.c):
 *
 *   ic_model_t* model;
 *   ic_model_load("/models/glm5-tiny", NULL, &model);
 *   ic_context_params_t cp;
 *   ic_context_default_params(&cp);
 *   cp.plan = "FSSSFSSS";                      (NULL: the model's own plan)
 *   ic_context_t* ctx;
 *   if (ic_context_create(model, &cp, &ctx) != IC_OK) fprintf(stderr, "%s\n", ic_last_error_message());
 *   ic_model_free(model);                      (the context keeps the model alive)
 *   int32_t seq;
 *   ic_sequence_add(ctx, &seq);
 *   float* logits = malloc(sizeof(float) * vocab_size);
 *   ic_prefill(ctx, seq, prompt, prompt_len, logits);
 *   int32_t next = argmax(logits);
 *   ic_decode(ctx, &seq, &next, 1, logits);
 *   ic_context_free(ctx);
 */
#ifndef INDEXCACHE_INDEXCACHE_H_
#define INDEXCACHE_INDEXCACHE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Visibility and deprecation ------------------------------------------------------------------ */

#if defined(_WIN32)
#define IC_API
#elif defined(__GNUC__) || defined(__clang__)
#define IC_API __attribute__((visibility("default")))
#else
#define IC_API
#endif

/* IC_DEPRECATED(ic_old_fn(void), "use ic_new_fn instead"); — marks a declaration as deprecated. */
#if defined(__GNUC__) || defined(__clang__)
#define IC_DEPRECATED(decl, hint) decl __attribute__((deprecated(hint)))
#elif defined(_MSC_VER)
#define IC_DEPRECATED(decl, hint) __declspec(deprecated(hint)) decl
#else
#define IC_DEPRECATED(decl, hint) decl
#endif

/* ---- Version ------------------------------------------------------------------------------------- */

/* The version of this header (kept equal to the CMake project version; the build checks it). */
#define IC_VERSION_MAJOR 0
#define IC_VERSION_MINOR 6
#define IC_VERSION_PATCH 0
#define IC_VERSION (IC_VERSION_MAJOR * 10000 + IC_VERSION_MINOR * 100 + IC_VERSION_PATCH)
#define IC_VERSION_STRING "0.6.0"

/* The version of the loaded library, encoded like IC_VERSION (compare it with IC_VERSION to detect a
 * header/library mismatch). Never fails; thread-safe. */
IC_API int ic_version(void);
/* The same as "MAJOR.MINOR.PATCH"; a static string, never NULL. */
IC_API const char* ic_version_string(void);

/* ---- Status and errors --------------------------------------------------------------------------- */

/* Values are part of the ABI: never renumbered, only appended. */
typedef enum ic_status_t {
  IC_OK = 0,
  IC_ERR_INVALID_ARGUMENT = 1,    /* bad input: NULL, out of range, malformed; the message names it */
  IC_ERR_NOT_FOUND = 2,           /* a file, directory or sequence id that does not exist */
  IC_ERR_OUT_OF_MEMORY = 3,       /* resource exhausted: host/device memory, or the KV cache is full */
  IC_ERR_UNAVAILABLE = 4,         /* not in this build / on this machine (CUDA, multi-GPU, port in use) */
  IC_ERR_FAILED_PRECONDITION = 5, /* the call is valid but not in the current state */
  IC_ERR_INTERNAL = 6,            /* a bug or an unexpected failure inside the library */
  IC_ERR_ALREADY_EXISTS = 7,      /* e.g. a metrics exposer already runs on another address */
  IC_ERR_OUT_OF_RANGE = 8,        /* a value past the end of a valid range (e.g. position limits) */
  IC_ERR_UNIMPLEMENTED = 9,      /* a feature this version does not implement */
  IC_ERR_ABORTED = 10             /* several ranks: a peer aborted or left, or a collective timed out */
} ic_status_t;

/* A static name for a status ("IC_OK", "IC_ERR_INVALID_ARGUMENT", …; "IC_ERR_UNKNOWN" for values this
 * library does not know). Never NULL; thread-safe; does not change the last-error text. */
IC_API const char* ic_status_string(ic_status_t status);

/* The message of the most recent failed ic_* call on the calling thread ("" after a successful call).
 * The pointer stays valid until the next ic_* call on this thread (other than ic_last_error_message,
 * ic_status_string, ic_version and ic_version_string); copy it to keep it. Never NULL. */
IC_API const char* ic_last_error_message(void);

/* ---- Enums --------------------------------------------------------------------------------------- */

typedef enum ic_device_t {
  IC_DEVICE_AUTO = 0, /* CUDA when the build has it and a GPU is visible, else the CPU */
  IC_DEVICE_CPU = 1,
  IC_DEVICE_CUDA = 2
} ic_device_t;

typedef enum ic_architecture_t {
  IC_ARCH_DEEPSEEK_V32 = 0, /* DeepseekV32ForCausalLM: MLA + lightning indexer + MoE */
  IC_ARCH_GLM_MOE_DSA = 1,  /* GlmMoeDsaForCausalLM: as above, interleaved indexer RoPE */
  IC_ARCH_LLAMA_DSA = 2,    /* LlamaDsaForCausalLM: Llama (GQA) + lightning indexer */
  IC_ARCH_LLAMA = 3         /* LlamaForCausalLM: dense attention, no indexer */
} ic_architecture_t;

/* ---- Opaque handles ------------------------------------------------------------------------------ */

typedef struct ic_model_t ic_model_t;     /* immutable weights + config + plan; shareable */
typedef struct ic_context_t ic_context_t; /* sequences, paged KV / index-K caches, a device backend */

/* ---- Models -------------------------------------------------------------------------------------- */

typedef struct ic_model_load_params_t {
  size_t struct_size;    /* = sizeof(ic_model_load_params_t); set by ic_model_load_default_params */
  const char* plan_file; /* NULL: the checkpoint's plan keys; else a plan file (protobuf text format or
                            a bare F/S string) that overrides them. Copied; need not outlive the call. */
} ic_model_load_params_t;

/* Fills `params` with defaults. Errors: IC_ERR_INVALID_ARGUMENT (params NULL). */
IC_API ic_status_t ic_model_load_default_params(ic_model_load_params_t* params);

/* Loads an HF checkpoint directory (config.json + *.safetensors, converted to F32 on the host).
 * params may be NULL (defaults). On success *out owns a new model; free it with ic_model_free.
 * On failure *out is set to NULL.
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL dir/out, bad struct_size, malformed config or plan, a tensor of
 * the wrong shape or an unknown tensor — the message names the file, tensor and shape),
 * IC_ERR_NOT_FOUND (missing directory, config.json, safetensors or plan file), IC_ERR_OUT_OF_MEMORY. */
IC_API ic_status_t ic_model_load(const char* dir, const ic_model_load_params_t* params, ic_model_t** out);

/* A small deterministic model built in memory from a seed (same weights on every machine). */
typedef struct ic_synthetic_params_t {
  size_t struct_size;                /* = sizeof(ic_synthetic_params_t) */
  ic_architecture_t architecture;    /* default IC_ARCH_DEEPSEEK_V32 */
  uint64_t seed;                     /* default 20260312 */
  int32_t num_layers;                /* default 8 */
  int32_t hidden_size;               /* default 256 */
  int32_t vocab_size;                /* default 512 */
  int32_t index_topk;                /* default 64 (top-k of the lightning indexer) */
  int32_t index_n_heads;             /* default 8 */
  int32_t index_head_dim;            /* default 64 */
  int32_t max_position_embeddings;   /* default 8192 */
  const char* plan;                  /* NULL or "": all Full; else an F/S string of num_layers chars */
} ic_synthetic_params_t;

/* Fills `params` with the defaults above. Errors: IC_ERR_INVALID_ARGUMENT (params NULL). */
IC_API ic_status_t ic_synthetic_default_params(ic_synthetic_params_t* params);

/* Builds a synthetic model (params NULL = defaults). On success *out owns a new model (ic_model_free);
 * on failure *out is NULL. Errors: IC_ERR_INVALID_ARGUMENT (NULL out, bad struct_size, an unknown
 * architecture, a non-positive size, an invalid plan), IC_ERR_OUT_OF_MEMORY. */
IC_API ic_status_t ic_model_create_synthetic(const ic_synthetic_params_t* params, ic_model_t** out);

/* Writes the model as an HF checkpoint (config.json with `indexer_types` from its plan, and an F32
 * model.safetensors) to `dir`, created if missing; ic_model_load reads it back.
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL or freed model, NULL dir), IC_ERR_NOT_FOUND / IC_ERR_INTERNAL
 * (I/O failures, with the path in the message). */
IC_API ic_status_t ic_model_save(const ic_model_t* model, const char* dir);

/* Releases the caller's reference. Contexts created from the model keep it alive, so freeing the model
 * before its contexts is safe. NULL is a no-op returning IC_OK. Errors: IC_ERR_INVALID_ARGUMENT (a
 * handle that is not a live model, when detected). Not thread-safe with other calls on this handle. */
IC_API ic_status_t ic_model_free(ic_model_t* model);

/* What ic_model_info reports. An output struct: set struct_size = sizeof(ic_model_info_t) before the
 * call; the library fills min(struct_size, its own size) bytes. */
typedef struct ic_model_info_t {
  size_t struct_size;
  const char* architecture;        /* "DeepseekV32ForCausalLM", …; owned by the model handle (valid
                                      until ic_model_free) */
  int32_t vocab_size;
  int32_t hidden_size;
  int32_t num_layers;              /* num_hidden_layers (MTP layers excluded); the plan's length */
  int32_t index_topk;              /* k of the lightning indexer; 0 without an indexer */
  int32_t has_indexer;             /* 1: DSA model; 0: dense attention (e.g. LlamaForCausalLM) */
  int32_t index_n_heads;           /* 0 without an indexer */
  int32_t index_head_dim;          /* 0 without an indexer */
  int32_t num_full_layers;         /* Full layers in the model's plan */
  int32_t max_position_embeddings;
} ic_model_info_t;

/* Fills *out (see ic_model_info_t). Thread-safe.
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL or freed model, NULL out, struct_size smaller than the first
 * version of the struct). */
IC_API ic_status_t ic_model_info(const ic_model_t* model, ic_model_info_t* out);

/* Writes the model's plan (one 'F' or 'S' per layer, num_layers characters) and a NUL to buf.
 * buf_size must be at least num_layers + 1 (see ic_model_info); if it is smaller nothing is written and
 * the call returns IC_ERR_INVALID_ARGUMENT with the needed size in the message. Thread-safe.
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL or freed model, NULL buf, buf_size too small). */
IC_API ic_status_t ic_model_plan(const ic_model_t* model, char* buf, size_t buf_size);

/* ---- Contexts ------------------------------------------------------------------------------------ */

/* Arithmetic of the indexer, of attention and of the weights (ic_context_params_t.indexer_precision,
 * .attention_precision and .weight_precision; kernels/backend.h Precision).
 *   IC_PRECISION_F32:  F32 everywhere (the reference).
 *   IC_PRECISION_BF16: inputs rounded to BF16 (round to nearest even), F32 accumulation, on tensor cores on
 *                      CUDA. Indexer: q and the index keys (index-K cache stored in BF16, half the bytes);
 *                      8/16/32/64 index heads of dimension 64 or 128 on tensor cores, other shapes round
 *                      the same way on CUDA cores. Top-k may differ from F32 where two scores are within
 *                      BF16 rounding of each other. Attention: sparse absorbed-MLA attention (latent 512 +
 *                      64, any number of heads: DeepSeek-V3.2, GLM-5, GLM-4.7-Flash shapes) on tensor cores with
 *                      q, k, v and the probabilities at BF16; other shapes compute in F32. The KV cache is
 *                      then stored in BF16 (half the bytes). Outputs agree with F32 to about 1e-2 relative.
 *   IC_PRECISION_FP8:  the indexer and the weights (IC_ERR_INVALID_ARGUMENT for attention). Indexer:
 *                      DeepSeek-V3.2's FP8 E4M3
 *                      indexer — q and k rotated by an orthonormal Hadamard transform (index_head_dim a
 *                      power of two), the index-K cache stores E4M3 keys with one F32 scale per token
 *                      (amax / 448 rounded up to a power of two; 132 bytes per token at d = 128), q is
 *                      quantised per (token, head) the same way; mma.sync m16n8k32 on CUDA (8/16/32/64 index heads of dimension 64 or 128;
 *                      other shapes are IC_ERR_INVALID_ARGUMENT on CUDA at the first forward pass). Its
 *                      top-k recalls ≥ 0.99 of the BF16 path's on random inputs at DSA's k = 2048.
 * Weights (weight_precision): IC_PRECISION_BF16 holds every Linear weight (attention and indexer
 *                      projections, dense and expert MLPs, LM head) in BF16 — half the bytes — and runs
 *                      their GEMMs on BF16 tensor cores (cuBLASLt) with F32 accumulation, activations
 *                      rounded to BF16 at each GEMM's input; norms, the embedding table and the MoE router
 *                      stay F32. IC_PRECISION_FP8 (since 0.5): DeepSeek-V3's block-scaled FP8 — the
 *                      attention projections (but MLA's kv_b), dense, shared and routed expert MLPs held as
 *                      E4M3 with one F32 scale per 128 x 128 block (amax / 448, quantised at context
 *                      creation), activations quantised per token and 128 channels at each GEMM
 *                      (cuBLASLt's block-scaled FP8 on CUDA, F32 accumulation); the LM head, the indexer
 *                      projections, kv_b and weights whose in-features are not a multiple of 16 are BF16.
 *                      Logits differ from F32 weights' by up to about 10% (relative L2 on synthetic dense
 *                      and MoE models; BF16: about 1%), more where a rounding flips an expert choice. Tensor-parallel ranks
 *                      quantise their own slices, so they agree with each other but not bit for bit with
 *                      one rank. */
typedef enum ic_precision_t { IC_PRECISION_F32 = 0, IC_PRECISION_BF16 = 1, IC_PRECISION_FP8 = 2 } ic_precision_t;

typedef struct ic_context_params_t {
  size_t struct_size;          /* = sizeof(ic_context_params_t) */
  ic_device_t device;          /* default IC_DEVICE_AUTO */
  int32_t device_ordinal;      /* CUDA device index; default 0 */
  int64_t max_tokens;          /* KV cache capacity over all sequences, in tokens (rounded up to whole
                                  blocks); default 16384 */
  int32_t block_size;          /* tokens per KV cache block, 1..4096; default 64 */
  int32_t prefill_chunk;       /* tokens per prefill forward pass; default 512 */
  const char* plan;            /* NULL or "": the model's plan; else an F/S string of num_layers chars
                                  overriding it (fixed for the context's lifetime). Copied. */
  const char* metrics_address; /* NULL: no HTTP exposer; else start the process-wide Prometheus exposer
                                  on it ("127.0.0.1:9464", "[::1]:9464", ":9464"; see
                                  ic_metrics_start_exposer). Copied. */
  int32_t record_metrics;      /* 1 (default): record this context's metrics (ic_metrics_text), timing the
                                  indexer at Full layers with device time marks (no synchronisation inside
                                  a pass); 0: record none */
  /* Several ranks (DESIGN.md §5; ic_dist_unique_id). world_size = dp × tp_size: ranks
   * [g·tp_size, (g+1)·tp_size) form shard group g (attention tensor parallel, one top-k per group);
   * routed experts are split over expert groups of ep_size consecutive ranks. Every rank creates its
   * context with the same model, plan and sizes; creation returns once all have joined. Ranks of an
   * expert group run forward passes in lockstep (ic_context_idle_step for a rank with nothing to run). */
  int32_t rank;                /* default 0; in [0, world_size) */
  int32_t world_size;          /* default 1 (0 means 1), at most 65536; > 1 needs dist_id */
  int32_t tp_size;             /* attention tensor-parallel size, divides world_size; default 1 (0 means 1) */
  int32_t ep_size;             /* expert-parallel size, divides world_size; default 1 (0 means 1) */
  const struct ic_dist_id_t* dist_id; /* world_size > 1: the id from ic_dist_unique_id (same on every
                                         rank); NULL otherwise. Since 0.2; read only when struct_size
                                         covers it. */
  int32_t dist_timeout_ms;     /* several ranks: how long joining and each collective may wait for the
                                  others before IC_ERR_ABORTED; default 300000 (5 min). Since 0.2. */
  int32_t indexer_precision;   /* ic_precision_t: the lightning indexer's q·k arithmetic; default
                                  IC_PRECISION_F32. Since 0.3. */
  int32_t attention_precision; /* ic_precision_t: attention's arithmetic; default IC_PRECISION_F32. Since 0.3. */
  int32_t reserved0;           /* ignored: where 0.3's struct had padding (so that weight_precision lies past
                                  0.3's struct_size and a 0.3 caller's padding is never read as it) */
  int32_t weight_precision;    /* ic_precision_t: the Linear weights' storage and GEMMs (F32, BF16, or FP8
                                  since 0.5); default IC_PRECISION_F32. Since 0.4. */
} ic_context_params_t;

/* Fills `params` with the defaults above. Errors: IC_ERR_INVALID_ARGUMENT (params NULL). */
IC_API ic_status_t ic_context_default_params(ic_context_params_t* params);

/* ---- Several ranks (DESIGN.md §5) --------------------------------------------------------------- */

#define IC_DIST_ID_BYTES 256

/* Identifies one distributed job: made once (by rank 0) with ic_dist_unique_id and given, byte for byte,
 * to every rank's ic_context_create (params.dist_id). How the bytes reach the other ranks is the
 * caller's: memory for threads of one process; for processes and nodes, a file on a shared filesystem,
 * MPI_Bcast in the caller's launcher, a key-value store (examples/multirank/ shows both). */
typedef struct ic_dist_id_t {
  unsigned char bytes[IC_DIST_ID_BYTES];
} ic_dist_id_t;

/* device IC_DEVICE_CPU: ranks are threads of this process, each with a CPU context (an in-process
 * group; the id is valid in this process only). IC_DEVICE_CUDA: ranks are processes (or threads) with one
 * GPU each, over NCCL (ncclGetUniqueId: NCCL's bootstrap root — a thread and a listening socket on this
 * host — runs from this call until the job's ranks have connected; make one id per job).
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL out, another device value), IC_ERR_UNAVAILABLE (CUDA: the library
 * was built without NCCL, or no CUDA device is visible to this process). */
IC_API ic_status_t ic_dist_unique_id(ic_device_t device, ic_dist_id_t* out);

/* Creates a context on `model` (params NULL = defaults): resolves the plan, checks that every Full
 * layer has indexer weights, creates the device backend, uploads the weights and allocates the caches.
 * The context holds a reference to the model. On success *out owns the context (ic_context_free); on
 * failure *out is NULL.
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL/freed model, NULL out, bad struct_size, a bad field — the
 * message names it and its value —, an invalid plan, e.g. "layer 0 must be Full", a Full layer without
 * indexer weights; several ranks: no dist_id, sizes that do not divide, ranks that disagree on the
 * sizes, model or plan, a rank joining twice), IC_ERR_UNAVAILABLE (IC_DEVICE_CUDA without CUDA or a
 * GPU; the metrics address cannot be bound), IC_ERR_ABORTED (another rank failed
 * to join, or not all joined within dist_timeout_ms), IC_ERR_FAILED_PRECONDITION (the group was already
 * broken by another rank's failure), IC_ERR_ALREADY_EXISTS (an exposer already runs on another
 * address), IC_ERR_OUT_OF_MEMORY (the caches do not fit). */
IC_API ic_status_t ic_context_create(ic_model_t* model, const ic_context_params_t* params,
                                     ic_context_t** out);

/* Destroys the context, its sequences and caches, and drops its model reference. NULL is a no-op
 * returning IC_OK. Errors: IC_ERR_INVALID_ARGUMENT (not a live context, when detected). */
IC_API ic_status_t ic_context_free(ic_context_t* ctx);

/* The device the context runs on (IC_DEVICE_CPU or IC_DEVICE_CUDA; AUTO resolved).
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL/freed ctx, NULL out). */
IC_API ic_status_t ic_context_device(const ic_context_t* ctx, ic_device_t* out);

/* Writes the context's plan (num_layers characters + NUL), like ic_model_plan. */
IC_API ic_status_t ic_context_plan(const ic_context_t* ctx, char* buf, size_t buf_size);

/* *out = tokens that still fit in the free KV cache blocks (a sequence with a partly filled last block
 * can append more than this). Errors: IC_ERR_INVALID_ARGUMENT (NULL/freed ctx, NULL out). */
IC_API ic_status_t ic_context_free_tokens(const ic_context_t* ctx, int64_t* out);

/* CUDA-graph decode (on by default; ignored by CPU contexts). enabled 1: decode steps replay CUDA graphs,
 * one per step shape (the number of sequences and the block-table width, padded to a power of two of
 * blocks), captured at that shape's second eager step; one graph launch replaces the step's kernel
 * launches (20–30 a layer). Results equal those of eager steps of the same shape bit for bit on DSA models;
 * a model without an indexer attends densely, and its split of the keys follows the padded width, so it
 * agrees to F32 rounding. Steps that need the host between ops stay eager: all-token logits, loss, tensor
 * or expert parallel (tp_size or ep_size > 1), and MoE steps above 32 (token, expert) pairs — batches
 * above 4 sequences with 8 experts a token (DeepSeek-V3.2, GLM-5). enabled 0: every step eager, and the captured graphs are freed.
 * Since 0.6 (a setter rather than an ic_context_params_t field, so that structs from 0.5 headers keep
 * their size). Errors: IC_ERR_INVALID_ARGUMENT (NULL or freed ctx, enabled not 0 or 1). */
IC_API ic_status_t ic_context_set_cuda_graphs(ic_context_t* ctx, int32_t enabled);

/* ---- Sequences ----------------------------------------------------------------------------------- */

/* Adds an empty sequence; *seq_id_out receives its id (ids are not reused within a context).
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL/freed ctx, NULL seq_id_out). */
IC_API ic_status_t ic_sequence_add(ic_context_t* ctx, int32_t* seq_id_out);

/* Removes a sequence and frees its cache blocks.
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL/freed ctx), IC_ERR_NOT_FOUND (unknown seq_id). */
IC_API ic_status_t ic_sequence_remove(ic_context_t* ctx, int32_t seq_id);

/* *out = the number of tokens in the sequence (its next position).
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL/freed ctx, NULL out), IC_ERR_NOT_FOUND (unknown seq_id). */
IC_API ic_status_t ic_sequence_length(const ic_context_t* ctx, int32_t seq_id, int64_t* out);

/* Adds a sequence whose cache is a copy of src_seq_id's (same length and tokens): parallel sampling
 * (n > 1) with one prefill. *seq_id_out receives the new id. The copy runs on the context's device.
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL/freed ctx, NULL seq_id_out), IC_ERR_NOT_FOUND (unknown src_seq_id),
 * IC_ERR_OUT_OF_MEMORY (the free cache blocks cannot hold the copy; nothing changes). Since 0.3. */
IC_API ic_status_t ic_sequence_fork(ic_context_t* ctx, int32_t src_seq_id, int32_t* seq_id_out);

/* ---- Forward passes ------------------------------------------------------------------------------ */

/* Appends tokens [n] (int32 ids in [0, vocab_size)) to sequence seq_id, in forward passes of
 * prefill_chunk tokens. last_logits: NULL, or a caller buffer of vocab_size floats that receives the
 * logits of the last token. On error the sequence is left as it was (length and cache).
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL/freed ctx, NULL tokens, n == 0, a token id outside the
 * vocabulary — the message names the id and its index), IC_ERR_NOT_FOUND (unknown seq_id),
 * IC_ERR_OUT_OF_MEMORY (the KV cache is full: the message gives the blocks needed and free). */
IC_API ic_status_t ic_prefill(ic_context_t* ctx, int32_t seq_id, const int32_t* tokens, size_t n,
                              float* last_logits);

/* One decode step for n distinct sequences: appends tokens[i] to seq_ids[i] (sequences may have
 * different lengths). logits: NULL, or a caller buffer [n, vocab_size] (row i = next-token logits of
 * seq_ids[i]). Decoding token x at position t gives the same logits as prefilling up to t (within
 * floating-point tolerance). On error every sequence is left as it was.
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL/freed ctx, NULL arrays, n == 0, a repeated seq_id, a token id
 * outside the vocabulary), IC_ERR_NOT_FOUND (unknown seq_id), IC_ERR_OUT_OF_MEMORY (KV cache full). */
IC_API ic_status_t ic_decode(ic_context_t* ctx, const int32_t* seq_ids, const int32_t* tokens, size_t n,
                             float* logits);

/* Expert parallel: one forward pass with no tokens of this rank's own, joining every MoE layer's expert
 * all-to-all so that the other ranks of its expert group can run theirs (data-parallel attention ranks
 * with nothing to serve). A no-op for a context without an expert group. Errors:
 * IC_ERR_INVALID_ARGUMENT (NULL/freed ctx), IC_ERR_ABORTED (a peer aborted or timed out; the message
 * names it), IC_ERR_FAILED_PRECONDITION (the group was already broken). */
IC_API ic_status_t ic_context_idle_step(ic_context_t* ctx);

/* Scores tokens [n] (n >= 2) as a fresh temporary sequence: *mean_loss = mean over the n − 1
 * predicted positions of −log p(tokens[i + 1] | tokens[0..i]) in nats; *predicted_tokens = n − 1
 * (predicted_tokens may be NULL). Uses (and then frees) n tokens of KV cache; other sequences are not
 * affected. Errors: IC_ERR_INVALID_ARGUMENT (NULL/freed ctx, NULL tokens or mean_loss, n < 2, a token
 * id outside the vocabulary), IC_ERR_OUT_OF_MEMORY (fewer than n tokens of KV cache are free). */
IC_API ic_status_t ic_eval_loss(ic_context_t* ctx, const int32_t* tokens, size_t n, double* mean_loss,
                                int64_t* predicted_tokens);

/* ---- Indexer distillation (DESIGN.md §3; sdk/distill_loop.h) ------------------------------------- */

/* Progress callback of ic_distill_indexers: after each optimizer step, `step` of `steps` done, `loss` the
 * mean over Full layers of that step's distillation loss (nats). Return 0 to go on; anything else stops
 * the run after this step (a checkpoint is written when one is configured, so it can be resumed) and
 * ic_distill_indexers returns IC_ERR_ABORTED. */
typedef int (*ic_distill_step_fn)(int64_t step, int64_t steps, double loss, void* user);

typedef struct ic_distill_params_t {
  size_t struct_size;        /* = sizeof(ic_distill_params_t); set by ic_distill_default_params */
  int32_t index_n_heads;     /* indexer heads; default 4 */
  int32_t index_head_dim;    /* indexer head dim (even); default 64 */
  int32_t index_topk;        /* top-k written to the config; default 256 */
  const char* plan;          /* NULL or "": all Full (DeepSeek-V3.2's dense warm-up, m = 0); else an F/S
                                string: each Full layer learns the mean attention of the layers it serves
                                (training-aware IndexCache, arXiv 2603.12201 §3.2). Copied. */
  int64_t steps;             /* optimizer steps; default 200; 0 only with init_indexers (assembles a model) */
  int32_t windows_per_step;  /* windows averaged per step; default 1 */
  double learning_rate;      /* peak Adam learning rate; default 1e-3 */
  int64_t warmup_steps;      /* linear warm-up, then cosine decay; default 10 */
  uint64_t seed;             /* initialisation and window order; default 0 */
  ic_device_t device;        /* the teacher's forward pass and (CUDA) the loss's O(T^2) part; default AUTO */
  int32_t threads;           /* gradient threads over Full layers; 0 (default) = all cores */
  const char* init_indexers; /* NULL, or indexer safetensors to start from (e.g. a warm-up's
                                out_dir/indexer.safetensors); copied */
  const char* checkpoint;    /* NULL: no checkpoints; else a path written every checkpoint_every steps */
  int64_t checkpoint_every;  /* default 50; 0 = only after the last step */
  int32_t resume;            /* 1: continue `checkpoint` (which must exist); 0 (default): start fresh */
  int32_t bf16;              /* 1 (default): indexer weights written as BF16; 0: F32 */
  ic_distill_step_fn on_step;/* NULL or a progress callback (called on the calling thread); nonzero stops */
  void* user;                /* passed to on_step */
} ic_distill_params_t;

/* Fills `params` with the defaults above. Errors: IC_ERR_INVALID_ARGUMENT (params NULL). */
IC_API ic_status_t ic_distill_default_params(ic_distill_params_t* params);

/* Trains lightning indexers for the dense model `dense` (LlamaForCausalLM loaded with ic_model_load; it
 * is not changed) against its own head-averaged attention, loss mean_t KL(p_t || softmax(I_t)) (DESIGN.md
 * §3), and writes a loadable Llama-DSA checkpoint to out_dir (config.json, indexer.safetensors, the
 * dense weights hard-linked, an index, the tokenizer). windows[i] points to window_lengths[i] >= 2 token
 * ids (each a fresh sequence at positions 0..len−1). final_loss (may be NULL) receives the last step's
 * loss. Memory: layers × len² × 4 bytes of captures per window. out_dir and the checkpoint path are checked
 * before any training. Errors: IC_ERR_INVALID_ARGUMENT (NULL or freed model, NULL arrays or out_dir,
 * n_windows == 0, a window shorter than 2 or longer than max_position_embeddings, a token id outside the
 * vocabulary, a model with indexers, a bad field, out_dir the model's own directory or not a writable
 * directory, a checkpoint of another model or plan, corrupt or non-finite checkpoint / init values, a
 * run that diverges), IC_ERR_ALREADY_EXISTS (the checkpoint exists and resume is 0: nothing is
 * overwritten), IC_ERR_FAILED_PRECONDITION (a model not loaded from a directory), IC_ERR_NOT_FOUND (resume
 * without the checkpoint), IC_ERR_ABORTED (on_step asked to stop), IC_ERR_OUT_OF_MEMORY,
 * IC_ERR_UNAVAILABLE (CUDA asked for and absent). */
IC_API ic_status_t ic_distill_indexers(const ic_model_t* dense, const int32_t* const* windows,
                                       const size_t* window_lengths, size_t n_windows, const char* out_dir,
                                       const ic_distill_params_t* params, double* final_loss);

/* ---- Plan search (DESIGN.md §3; sdk/search.h) ------------------------------------------------------ */

/* Training-free greedy IndexCache plan search (arXiv 2603.12201 §3.1): start all-Full; each step flips
 * the Full layer (never layer 0) whose flip to Shared gives the lowest mean next-token loss over all
 * predicted tokens of the calibration windows (ties: the smaller layer), until target_full_layers Full
 * layers remain (keep 1/r: ceil(num_layers / r)). Each window is scored as a fresh sequence; windows[i]
 * points to window_lengths[i] >= 2 token ids. device: IC_DEVICE_AUTO, IC_DEVICE_CPU or IC_DEVICE_CUDA.
 * plan_buf receives the plan ("FSSF…", NUL-terminated; plan_buf_size >= num_layers + 1). losses: NULL,
 * or a caller array of n_losses >= num_layers − target_full_layers + 1 doubles receiving the loss after
 * each step ([0] = all Full). Memory: the captures of one window, tokens × layers × (hidden +
 * index_topk) × 4 bytes, at most 4 GiB. Runs for a while (per step and window: one full pass plus one
 * partial pass per remaining Full layer); the model is not changed (load the plan with a context's
 * `plan` field). Errors: IC_ERR_INVALID_ARGUMENT (NULL/freed model, NULL arrays, n_windows == 0, a
 * window shorter than 2 tokens, a token id outside the vocabulary, target outside [1, num_layers], a
 * buffer too small), IC_ERR_FAILED_PRECONDITION (the model has no indexer: nothing to search),
 * IC_ERR_OUT_OF_MEMORY (a window's captures exceed 4 GiB), IC_ERR_UNAVAILABLE (CUDA asked for and
 * absent). */
IC_API ic_status_t ic_search_plan(const ic_model_t* model, const int32_t* const* windows,
                                  const size_t* window_lengths, size_t n_windows, int32_t target_full_layers,
                                  ic_device_t device, char* plan_buf, size_t plan_buf_size, double* losses,
                                  size_t n_losses);

/* ---- Metrics (one registry per process, DESIGN.md §6) -------------------------------------------- */

/* Writes the Prometheus text exposition of every indexcache_* metric, NUL-terminated, to buf.
 * *needed (may be NULL) receives the size the text needs, NUL included. Call with buf = NULL and
 * buf_size = 0 to learn the size (returns IC_OK). If buf_size is smaller than needed nothing is written
 * and IC_ERR_INVALID_ARGUMENT is returned; metrics may grow between two calls, so allocate some slack
 * or retry. Thread-safe.
 * Errors: IC_ERR_INVALID_ARGUMENT (buf NULL with buf_size > 0, buf_size too small). */
IC_API ic_status_t ic_metrics_text(char* buf, size_t buf_size, size_t* needed);

/* Starts the process-wide HTTP exposer serving GET /metrics on `address` ("127.0.0.1:9464",
 * "[::1]:9464", ":9464" or "9464" for every interface; port 0 picks a free port, see
 * ic_metrics_exposer_port). Calling it again with the same address is a no-op. Thread-safe.
 * Errors: IC_ERR_INVALID_ARGUMENT (NULL or malformed address), IC_ERR_ALREADY_EXISTS (an exposer runs
 * on another address), IC_ERR_UNAVAILABLE (the address cannot be bound). */
IC_API ic_status_t ic_metrics_start_exposer(const char* address);

/* *port = the TCP port the exposer listens on, or 0 when none runs.
 * Errors: IC_ERR_INVALID_ARGUMENT (port NULL). */
IC_API ic_status_t ic_metrics_exposer_port(int32_t* port);

/* ---- Devices ------------------------------------------------------------------------------------- */

/* The number of visible CUDA devices: 0 in a CUDA-less build or on a machine without a GPU. Never
 * fails; thread-safe. */
IC_API int ic_cuda_device_count(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* INDEXCACHE_INDEXCACHE_H_ */
