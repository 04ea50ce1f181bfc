/*
 * clhost_plugin.h — the clhost plug-in ABI. This file is the whole contract between the clhost
 * host and a plug-in; nothing else is needed to write one (in C11 or C++11 and later).
 *
 * Shape (learned from CLAP, Triton backends and SQLite extensions):
 *   - A plug-in exports exactly one symbol, `clhost_plugin_entry`, a function returning a
 *     pointer to a static `clhost_plugin_entry_t`.
 *   - The entry names the ABI version the plug-in was compiled against. The host accepts it when
 *     the major versions are equal and the plug-in's minor is not newer than the host's.
 *   - Behaviour is reached through *interfaces* named by a string id with a revision, e.g.
 *     "clhost.regularizer/1". A new kind or a new revision is a new id, so structs never have to
 *     change shape and old plug-ins keep working with newer hosts.
 *   - The host hands its services to plug-ins the same way: `host->get_service(host, id)`.
 *   - Structs that may grow start with `struct_size`; readers check it before touching a member
 *     added after the first release.
 *   - Errors cross as a status code plus a message written into a caller-owned buffer. A C++
 *     exception must never cross this boundary (the process would terminate).
 *   - Tensors cross as DLPack `DLTensor` (dlpack 0.6, Debian `libdlpack-dev`).
 *
 * Threading: unless a member says otherwise, the host calls every plug-in function from one
 * thread (the trainer thread), never concurrently for one instance, and plug-ins call host
 * services only from inside a hook, on that same thread.
 *
 * Lifetimes are written next to every pointer: "static" means valid until the library is
 * unloaded (clhost never unloads plug-ins before exit); "call" means valid only during the call
 * that received it.
 */
#ifndef CLHOST_PLUGIN_H
#define CLHOST_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include <dlpack/dlpack.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------
 * Versioning
 * ------------------------------------------------------------------------------------------ */

/* Bump MINOR when adding interfaces, services, or members at the end of a sized struct.
 * Bump MAJOR only when an existing layout or meaning changes (never planned). */
#define CLHOST_ABI_VERSION_MAJOR 1
#define CLHOST_ABI_VERSION_MINOR 8

/* 1.1: service "clhost.events/1"; clhost_event_t.source.
 * 1.2: service "clhost.sample_grads/1"; clhost_fisher_store_v1_t.begin_vector_group.
 * 1.3: interface "clhost.state/1" (checkpoint and resume).
 * 1.4: interface "clhost.config_use/1" (which configured keys take effect).
 * 1.5: interface "clhost.memory_plan/1" (the memory an instance will hold, before it exists).
 * 1.6: service "clhost.collective/1" (the ranks of a data-parallel run).
 * 1.7: plug-ins that see outputs and data: interface "clhost.output_loss/1" (a loss term on the
 *      outputs), services "clhost.snapshot/1" (a frozen copy of the model) and
 *      "clhost.output_grads/1" (per-sample gradients of a function of the outputs), kind REPLAY
 *      with interface "clhost.replay/1" (samples of earlier tasks in later batches).
 * 1.8: clhost_memory_plan_answer_t.fisher_samples_per_pass (so the host plans the activations of
 *      its Fisher pass). */

/* Non-zero when the sized struct at `pointer` (of type `type`) is large enough to hold `member`,
 * i.e. its writer knew about that member. Use before reading a member added in a later minor. */
#define CLHOST_HAS_MEMBER(pointer, type, member) \
  ((pointer)->struct_size >= offsetof(type, member) + sizeof(((type*)0)->member))

typedef struct clhost_abi_version {
  uint32_t major;
  uint32_t minor;
} clhost_abi_version_t;

#if defined(_WIN32)
#define CLHOST_EXPORT __declspec(dllexport)
#else
#define CLHOST_EXPORT __attribute__((visibility("default")))
#endif

/* ---------------------------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------------------------ */

typedef enum clhost_status {
  CLHOST_STATUS_OK = 0,
  CLHOST_STATUS_INVALID_ARGUMENT = 1, /* bad configuration value or call argument */
  CLHOST_STATUS_OUT_OF_MEMORY = 2,    /* the host may retry with less memory */
  CLHOST_STATUS_UNSUPPORTED = 3,      /* e.g. a tensor dtype or device the plug-in cannot use */
  CLHOST_STATUS_IO = 4,               /* file or store access failed */
  CLHOST_STATUS_INTERNAL = 5          /* anything else; the message says what */
} clhost_status_t;

#define CLHOST_ERROR_MESSAGE_SIZE 1024

/* Owned by the caller of the function that receives it; lifetime: call. A function that returns
 * a status other than OK writes a NUL-terminated, human-readable message (what failed and why,
 * naming the config key where one is at fault) into `message`. */
typedef struct clhost_error {
  char message[CLHOST_ERROR_MESSAGE_SIZE];
} clhost_error_t;

/* ---------------------------------------------------------------------------------------------
 * Plug-in metadata and configuration schema
 * ------------------------------------------------------------------------------------------ */

typedef enum clhost_plugin_kind {
  CLHOST_PLUGIN_KIND_REGULARIZER =
      1, /* adds a penalty gradient; interface "clhost.regularizer/1" */
  CLHOST_PLUGIN_KIND_BATCH_POLICY = 2, /* chooses micro-batch sizes; "clhost.batch_policy/1" */
  CLHOST_PLUGIN_KIND_PROFILER = 3,     /* observes events and memory; "clhost.profiler/1" */
  CLHOST_PLUGIN_KIND_REPLAY = 4        /* ABI 1.7: keeps samples of earlier tasks and adds them
                                          to later batches; "clhost.replay/1" */
} clhost_plugin_kind_t;

typedef enum clhost_config_type {
  CLHOST_CONFIG_TYPE_BOOL = 1,
  CLHOST_CONFIG_TYPE_INT = 2,   /* TOML integer, int64 */
  CLHOST_CONFIG_TYPE_FLOAT = 3, /* TOML float; an integer literal is accepted */
  CLHOST_CONFIG_TYPE_STRING = 4
} clhost_config_type_t;

/* One key of a plug-in's TOML table. The host rejects unknown keys, wrong types and numbers
 * outside [min_value, max_value] (when has_range != 0) before `create` is called, and prints
 * the schema in `clhost plugins show ID`. Lifetime of every pointer: static. */
typedef struct clhost_config_key {
  const char* key; /* e.g. "lambda" */
  clhost_config_type_t type;
  const char* default_value; /* as a TOML literal: "100.0", "true", "\"online\"" */
  const char* doc;           /* one line, with the unit */
  int32_t has_range;         /* non-zero: min_value/max_value apply (INT and FLOAT) */
  double min_value;
  double max_value;
  const char* choices; /* STRING only: NULL or "|"-separated allowed values, "a|b|c" */
} clhost_config_key_t;

/* Lifetime of every pointer: static. */
typedef struct clhost_plugin_descriptor {
  uint32_t struct_size; /* sizeof(clhost_plugin_descriptor_t) */
  const char* id;       /* [a-z0-9_]+, equal to the file name stem: clhost_<id>.so */
  clhost_plugin_kind_t kind;
  const char* version; /* the plug-in's own semantic version, "1.2.0" */
  const char* description;
  const char* vendor;
  const clhost_config_key_t* config_schema; /* array of config_schema_count keys, may be NULL */
  uint32_t config_schema_count;
} clhost_plugin_descriptor_t;

/* Resolved configuration handed to `create`: every key of the schema, with the user's value or
 * the default, already type- and range-checked. Lifetime: call (copy what you keep). */
typedef struct clhost_config_value {
  const char* key;
  clhost_config_type_t type;
  int32_t bool_value;
  int64_t int_value;
  double float_value; /* also set for INT values */
  const char* string_value;
} clhost_config_value_t;

typedef struct clhost_config {
  uint32_t struct_size;
  const clhost_config_value_t* values;
  uint32_t count;
} clhost_config_t;

/* Returns the value for `key`, or NULL when the schema has no such key. */
static inline const clhost_config_value_t* clhost_config_find(const clhost_config_t* config,
                                                              const char* key) {
  uint32_t i;
  for (i = 0; config != NULL && i < config->count; ++i) { /* NOLINT(modernize-use-nullptr): C */
    const char* a = config->values[i].key;
    const char* b = key;
    while (*a != '\0' && *a == *b) {
      ++a;
      ++b;
    }
    if (*a == *b) {
      return &config->values[i];
    }
  }
  return NULL; /* NOLINT(modernize-use-nullptr): C */
}

/* ---------------------------------------------------------------------------------------------
 * Build fingerprint (PG_MODULE_MAGIC-style): only for plug-ins that use the LibTorch C++ API.
 * The host refuses such a plug-in when its torch version or C++ ABI flag differs from its own,
 * because two LibTorch builds in one process abort at static registration. C plug-ins and
 * plug-ins that only touch DLTensors leave `fingerprint` NULL.
 * ------------------------------------------------------------------------------------------ */

typedef struct clhost_build_fingerprint {
  uint32_t struct_size;
  const char* torch_version; /* TORCH_VERSION, e.g. "1.13.1"; lifetime: static */
  int32_t cxx11_abi;         /* _GLIBCXX_USE_CXX11_ABI */
  const char* compiler;      /* informative only, e.g. "GCC 12.2.0" */
} clhost_build_fingerprint_t;

/* ---------------------------------------------------------------------------------------------
 * Host services. Fetch with host->get_service(host, "clhost.<name>/<revision>"); NULL means
 * this host does not provide that revision. Returned tables have lifetime: static (as long as
 * the host runs).
 * ------------------------------------------------------------------------------------------ */

typedef struct clhost_host clhost_host_t;

struct clhost_host {
  uint32_t struct_size;
  clhost_abi_version_t abi_version; /* the host's ABI version */
  const char* host_version;         /* clhost's own version string; lifetime: static */
  /* Thread rule: callable from any thread. */
  const void* (*get_service)(const clhost_host_t* host, const char* service_id);
  void* host_data; /* opaque to plug-ins */
};

/* "clhost.log/1" */
typedef enum clhost_log_level {
  CLHOST_LOG_DEBUG = 0,
  CLHOST_LOG_INFO = 1,
  CLHOST_LOG_WARNING = 2,
  CLHOST_LOG_ERROR = 3
} clhost_log_level_t;

#define CLHOST_SERVICE_LOG_V1 "clhost.log/1"
typedef struct clhost_log_service_v1 {
  uint32_t struct_size;
  /* Thread rule: callable from any thread (e.g. a profiler's sampler). `message` lifetime: call.
   * The host prefixes the plug-in id. */
  void (*log)(const clhost_host_t* host, clhost_log_level_t level, const char* message);
} clhost_log_service_v1_t;

/* "clhost.params/1": the model's trainable parameters, in a fixed order for the whole run. */
typedef struct clhost_parameter {
  const char* name; /* e.g. "layers.0.weight"; lifetime: static for the run */
  /* CPU or CUDA, contiguous, float32 in the built-in models. Lifetime: call (the hook in which
   * `get` was called). A regularizer may write into `grad->data` during after_backward; nothing
   * else may write either tensor. `grad->data` is NULL when the parameter has no gradient yet. */
  DLTensor value;
  DLTensor grad;
  int64_t numel;
} clhost_parameter_t;

#define CLHOST_SERVICE_PARAMS_V1 "clhost.params/1"
typedef struct clhost_params_service_v1 {
  uint32_t struct_size;
  uint32_t (*count)(const clhost_host_t* host);
  /* Fills `out` for parameter `index` (< count). Shape arrays inside the DLTensors are owned by
   * the host; lifetime: call. */
  clhost_status_t (*get)(const clhost_host_t* host, uint32_t index, clhost_parameter_t* out,
                         clhost_error_t* error);
} clhost_params_service_v1_t;

/* "clhost.gradstats/1": per-sample gradient statistics over the current task's training data,
 * computed by the host (it owns the model and data). Used by EWC-style regularizers. */
typedef enum clhost_fisher_labels {
  CLHOST_FISHER_LABELS_TRUE = 1,       /* empirical Fisher: the dataset's labels */
  CLHOST_FISHER_LABELS_SAMPLE = 2,     /* labels drawn from the model's softmax */
  CLHOST_FISHER_LABELS_EXPECTATION = 3 /* exact expectation over the softmax */
} clhost_fisher_labels_t;

typedef struct clhost_fisher_request {
  uint32_t struct_size;
  clhost_fisher_labels_t labels;
  int64_t max_samples; /* <= 0: every training sample of the task */
  int32_t batched;    /* non-zero: squared mini-batch gradients (Avalanche) instead of per-sample */
  int64_t batch_size; /* samples per forward/backward pass; bounds activation memory */
  int64_t block_size; /* parameters per block; <= 0: fisher_computation.block_size */
} clhost_fisher_request_t;

/* Receives one block of the diagonal Fisher (mean over samples, float32): the flat elements
 * [offset, offset + block->shape[0]) of parameter `param_index` (row-major), as a 1-D contiguous
 * DLTensor. Blocks follow layer boundaries: a block never spans two parameters; a parameter
 * larger than block_size arrives as several blocks of whole rows. Blocks arrive in parameter
 * order with ascending offsets and cover every element exactly once. `block` lifetime: call. */
typedef clhost_status_t (*clhost_fisher_sink_fn)(void* sink_data, uint32_t param_index,
                                                 int64_t offset, const DLTensor* block,
                                                 clhost_error_t* error);

#define CLHOST_SERVICE_GRADSTATS_V1 "clhost.gradstats/1"
typedef struct clhost_gradstats_service_v1 {
  uint32_t struct_size;
  /* Only callable from on_task_end; uses the task that just ended. Per-sample Fisher is exact:
   * for Linear and Conv2d layers it is computed from whole batches (layer inputs and output
   * gradients), for other modules by a per-sample loop. Temporary memory is bounded by one block
   * plus one batch's activations. */
  clhost_status_t (*diagonal_fisher)(const clhost_host_t* host,
                                     const clhost_fisher_request_t* request,
                                     clhost_fisher_sink_fn sink, void* sink_data,
                                     clhost_error_t* error);
} clhost_gradstats_service_v1_t;

/* "clhost.sample_grads/1" (ABI 1.2): the per-sample gradients behind the Fisher, block by block,
 * for plug-ins that keep more of it than its diagonal (e.g. a low-rank factor per block). */
typedef struct clhost_block_segment {
  uint32_t param_index;
  int64_t offset; /* first flat element (row-major) of the parameter in the block */
  int64_t count;  /* elements; a block's columns are its segments' elements, in segment order */
} clhost_block_segment_t;

typedef struct clhost_sample_grads_chunk {
  uint32_t struct_size;
  uint32_t block_index; /* 0 .. block_count-1; every chunk of a block before the next block */
  uint32_t block_count;
  uint32_t segment_count;
  const clhost_block_segment_t* segments; /* lifetime: call */
  /* [rows, block elements] float32, contiguous, lifetime: call. The block's Fisher is
   * F = (1/samples) * sum over the block's chunks of rows^T rows: LABELS_TRUE and LABELS_SAMPLE
   * give one row per sample (its log-likelihood gradient), LABELS_EXPECTATION one row per active
   * class and sample (class-major), scaled by sqrt(p_class). */
  DLTensor rows;
  int64_t samples;       /* the n the Fisher averages over: the same for every chunk */
  int32_t last_in_block; /* non-zero on the block's final chunk */
} clhost_sample_grads_chunk_t;

typedef clhost_status_t (*clhost_sample_grads_sink_fn)(void* sink_data,
                                                       const clhost_sample_grads_chunk_t* chunk,
                                                       clhost_error_t* error);

#define CLHOST_SERVICE_SAMPLE_GRADS_V1 "clhost.sample_grads/1"
typedef struct clhost_sample_grads_service_v1 {
  uint32_t struct_size;
  /* Only callable from on_task_end, on the trainer thread; uses the task that just ended, with the
   * same samples, labels and blocks as gradstats' diagonal_fisher (request->batched must be 0).
   * Temporary memory: one chunk of rows (request->batch_size samples x rows per sample x block
   * elements floats) plus one batch's activations. A sink returning non-OK stops the pass; its
   * status and message are returned. */
  clhost_status_t (*sample_gradients)(const clhost_host_t* host,
                                      const clhost_fisher_request_t* request,
                                      clhost_sample_grads_sink_fn sink, void* sink_data,
                                      clhost_error_t* error);
} clhost_sample_grads_service_v1_t;

/* "clhost.settings/1": read-only access to the run's resolved configuration, by dotted key path
 * ("fisher_computation.block_size"). Each getter returns 0 and sets *out when the key exists with
 * a compatible type (an integer is also a float), non-zero otherwise. Strings: lifetime of the
 * run. Thread rule: any thread. */
#define CLHOST_SERVICE_SETTINGS_V1 "clhost.settings/1"
typedef struct clhost_settings_service_v1 {
  uint32_t struct_size;
  int32_t (*get_bool)(const clhost_host_t* host, const char* key_path, int32_t* out);
  int32_t (*get_int)(const clhost_host_t* host, const char* key_path, int64_t* out);
  int32_t (*get_float)(const clhost_host_t* host, const char* key_path, double* out);
  int32_t (*get_string)(const clhost_host_t* host, const char* key_path, const char** out);
} clhost_settings_service_v1_t;

/* "clhost.fisher_store/1": the run's Fisher store, an HDF5 file in the run directory
 * (fisher.h5): one group per saved state, one dataset per parameter (flat, float32 in memory;
 * on disk as fisher_computation.store_dtype, compressed as configured, Fletcher-32 checksummed),
 * plus the model fingerprint (parameter names and shapes). A save is atomic: after a crash the
 * file holds either every group it had before, or those plus the new one.
 * Call sequence: begin_group, write_block for every element of every parameter, commit_group
 * (or abort_group). Only from hooks, on the trainer thread. */
#define CLHOST_SERVICE_FISHER_STORE_V1 "clhost.fisher_store/1"
typedef struct clhost_fisher_store_v1 {
  uint32_t struct_size;
  /* `group`: [A-Za-z0-9_]+, new in the file. `description`: stored as an attribute (e.g. the
   * Fisher variant). Both lifetime: call. */
  clhost_status_t (*begin_group)(const clhost_host_t* host, const char* group,
                                 const char* description, clhost_error_t* error);
  /* Flat elements [offset, offset + block->shape[0]) of parameter `param_index`; `block` is 1-D
   * float32 contiguous, lifetime: call. */
  clhost_status_t (*write_block)(const clhost_host_t* host, uint32_t param_index, int64_t offset,
                                 const DLTensor* block, clhost_error_t* error);
  clhost_status_t (*commit_group)(const clhost_host_t* host, clhost_error_t* error);
  void (*abort_group)(const clhost_host_t* host);
  /* Reads flat elements [offset, offset + out->shape[0]) of parameter `param_index` from `group`
   * into `out` (1-D float32 contiguous, caller-owned), verifying checksums and that the file was
   * written for this model. */
  clhost_status_t (*read_block)(const clhost_host_t* host, const char* group, uint32_t param_index,
                                int64_t offset, DLTensor* out, clhost_error_t* error);
  /* ABI 1.2 (check with CLHOST_HAS_MEMBER: a 1.1 host's table ends before it). Like begin_group,
   * for a group of `vectors` >= 1 parameter-shaped vectors saved at once (e.g. the columns of a
   * low-rank factor): vector k of a parameter is its flat elements [k*numel, (k+1)*numel), which
   * write_block and read_block address; commit_group needs all vectors*numel of every parameter.
   * One atomic save instead of one per vector. */
  clhost_status_t (*begin_vector_group)(const clhost_host_t* host, const char* group,
                                        const char* description, int64_t vectors,
                                        clhost_error_t* error);
} clhost_fisher_store_v1_t;

/* "clhost.memory/1" */
typedef struct clhost_memory_info {
  uint32_t struct_size;
  int64_t rss_bytes;              /* process resident set size now */
  int64_t rss_peak_bytes;         /* process high-water mark (VmHWM) */
  int64_t tensor_bytes;           /* bytes held by LibTorch's CPU allocator now, -1 if unknown */
  int64_t tensor_peak_bytes;      /* high-water mark of the above, -1 if unknown */
  int64_t budget_bytes;           /* configured memory budget, -1 when none */
  int64_t device_allocated_bytes; /* GPU allocator bytes, -1 on CPU-only runs */
  int64_t device_reserved_bytes;  /* GPU bytes reserved by the caching allocator, -1 likewise */
} clhost_memory_info_t;

#define CLHOST_SERVICE_MEMORY_V1 "clhost.memory/1"
typedef struct clhost_memory_service_v1 {
  uint32_t struct_size;
  /* Thread rule: callable from any thread. Set out->struct_size before calling. */
  clhost_status_t (*get_info)(const clhost_host_t* host, clhost_memory_info_t* out,
                              clhost_error_t* error);
} clhost_memory_service_v1_t;

/* "clhost.events/1" (ABI 1.1): named events on the run's timeline, e.g. "cache warm" or "probe
 * allocated". The host stamps the time and task and delivers a CLHOST_EVENT_USER event with
 * source = the calling plug-in's id to every profiler in the pipeline, in order, before `mark`
 * returns — or, when called from a profiler's own on_event, right after the current event has
 * reached every profiler (so a profiler may mark without recursion). Thread rule: trainer thread
 * only, from inside a hook. `label` lifetime: call; NULL or "" is INVALID_ARGUMENT. */
#define CLHOST_SERVICE_EVENTS_V1 "clhost.events/1"
typedef struct clhost_events_service_v1 {
  uint32_t struct_size;
  clhost_status_t (*mark)(const clhost_host_t* host, const char* label, clhost_error_t* error);
} clhost_events_service_v1_t;

/* "clhost.collective/1" (ABI 1.6): the ranks of a data-parallel run (docs/distributed.md), for a
 * plug-in that keeps statistics of its own. The host already reduces what its services compute
 * (the Fisher of clhost.gradstats/1, the rows of clhost.sample_grads/1) and every rank holds the
 * same parameters, so most plug-ins need nothing here. Every rank runs the same hooks in the same
 * order: a collective call must be made by every rank, in the same order, with tensors of the same
 * dtype and shape, or the run fails (after distributed.timeout at most). In a single process,
 * rank 0 of 1, every call returns at once and leaves the tensor as it was.
 * Thread rule: trainer thread only, from inside a hook. Tensors: contiguous CPU float32, float64,
 * int32 or int64; lifetime: call; changed in place. */
#define CLHOST_SERVICE_COLLECTIVE_V1 "clhost.collective/1"
typedef struct clhost_collective_service_v1 {
  uint32_t struct_size;
  int32_t (*rank)(const clhost_host_t* host);       /* 0 .. world_size - 1 */
  int32_t (*world_size)(const clhost_host_t* host); /* 1 in a single process */
  /* The element-wise sum over every rank's `tensor`, in place on every rank. */
  clhost_status_t (*all_reduce_sum)(const clhost_host_t* host, DLTensor* tensor,
                                    clhost_error_t* error);
  /* Rank `root`'s `tensor`, in place on every rank. */
  clhost_status_t (*broadcast)(const clhost_host_t* host, DLTensor* tensor, int32_t root,
                               clhost_error_t* error);
} clhost_collective_service_v1_t;

/* "clhost.snapshot/1" (ABI 1.7): a frozen copy of the model for the calling plug-in, e.g. the
 * model of the previous task that LwF distils from. While a plug-in holds one, every
 * clhost_output_batch_t it receives carries the snapshot's logits on the same samples (one more
 * forward pass per micro-batch, in evaluation mode, without gradients). A snapshot holds the
 * model's parameter and buffer bytes: counted as tensor bytes by run.memory_budget, written into
 * every checkpoint and restored by --resume. Thread rule: trainer thread only, from a hook. */
#define CLHOST_SERVICE_SNAPSHOT_V1 "clhost.snapshot/1"
typedef struct clhost_snapshot_service_v1 {
  uint32_t struct_size;
  /* Freezes the model's parameters and buffers as they are now, replacing the caller's previous
   * snapshot. Only from on_task_end (the model that finished the task, before its evaluation). */
  clhost_status_t (*take)(const clhost_host_t* host, clhost_error_t* error);
  /* Drops the caller's snapshot and frees its memory; nothing when it holds none. */
  void (*release)(const clhost_host_t* host);
} clhost_snapshot_service_v1_t;

/* "clhost.output_grads/1" (ABI 1.7): per-sample parameter gradients of a function f of the
 * outputs that the plug-in chooses, e.g. MAS's squared L2 norm of the logits. The plug-in gives
 * df/dscores per sample; the host back-propagates it (g_i = J_i^T d_i) and accumulates |g_i| or
 * g_i^2 exactly as clhost.gradstats/1 accumulates the Fisher (same samples, blocks, layer closed
 * forms, memory bound and data-parallel reduction). */
typedef enum clhost_gradient_reduction {
  CLHOST_GRADIENTS_ABSOLUTE = 1, /* mean over samples of |g_i| (MAS, Aljundi et al. 2018) */
  CLHOST_GRADIENTS_SQUARED = 2   /* mean over samples of g_i^2 */
} clhost_gradient_reduction_t;

/* Writes df_i/dscores_i for the n samples of a pass into `gradient`. `scores`: [n, classes]
 * float32, the logits of the ended task's active classes (its head; class-incremental: every
 * class seen so far), read-only; `targets`: [n] int64, each sample's label as an index into
 * them; `gradient`: [n, classes] float32, zero-filled. All contiguous CPU, lifetime: call.
 * Called any number of times per request, with any n >= 1; must give the same rows for the same
 * samples each time. A non-OK status stops the pass and is returned with its message. */
typedef clhost_status_t (*clhost_output_function_fn)(void* function_data, const DLTensor* scores,
                                                     const DLTensor* targets, DLTensor* gradient,
                                                     clhost_error_t* error);

typedef struct clhost_output_grads_request {
  uint32_t struct_size;
  clhost_gradient_reduction_t reduction;
  int64_t max_samples; /* <= 0: every training sample of the task */
  int64_t batch_size;  /* samples per forward/backward pass; bounds activation memory */
  int64_t block_size;  /* parameters per block; <= 0: fisher_computation.block_size */
  clhost_output_function_fn output_gradient;
  void* function_data; /* handed to output_gradient; lifetime: the accumulate call */
} clhost_output_grads_request_t;

#define CLHOST_SERVICE_OUTPUT_GRADS_V1 "clhost.output_grads/1"
typedef struct clhost_output_grads_service_v1 {
  uint32_t struct_size;
  /* Only from on_task_end, on the trainer thread, for the task that just ended (classification
   * tasks; UNSUPPORTED on text). Delivers the mean over samples of |g_i| or g_i^2 through `sink`
   * in blocks, as diagonal_fisher delivers the Fisher (same order, shapes and lifetimes). */
  clhost_status_t (*accumulate)(const clhost_host_t* host,
                                const clhost_output_grads_request_t* request,
                                clhost_fisher_sink_fn sink, void* sink_data, clhost_error_t* error);
} clhost_output_grads_service_v1_t;

/* ---------------------------------------------------------------------------------------------
 * Hook arguments
 * ------------------------------------------------------------------------------------------ */

typedef struct clhost_task_info {
  uint32_t struct_size;
  uint32_t task_index; /* 0-based position in the sequence */
  uint32_t task_count;
  const char* task_name; /* lifetime: call */
  int64_t train_samples;
  int64_t steps; /* optimizer steps planned for this task */
} clhost_task_info_t;

typedef struct clhost_step_info {
  uint32_t struct_size;
  uint32_t task_index;
  int64_t step;        /* optimizer step within the task, 0-based */
  int64_t global_step; /* across the run */
  int64_t batch_size;  /* samples in this optimizer step */
  double loss;         /* data loss of this step (before any penalty) */
} clhost_step_info_t;

/* ---------------------------------------------------------------------------------------------
 * Interfaces. get_interface(id) returns one of these tables or NULL. Lifetime: static.
 * ------------------------------------------------------------------------------------------ */

#define CLHOST_INTERFACE_REGULARIZER_V1 "clhost.regularizer/1"
typedef struct clhost_regularizer_v1 {
  uint32_t struct_size;
  /* Any member may be NULL (nothing to do). */
  clhost_status_t (*on_task_begin)(void* instance, const clhost_task_info_t* task,
                                   clhost_error_t* error);
  /* After the data loss's backward pass, before the optimizer step. The regularizer adds the
   * gradient of its penalty to the parameter gradients (params service, grad tensors) and
   * writes the penalty value (not multiplied into the loss by the host) into *penalty. */
  clhost_status_t (*after_backward)(void* instance, const clhost_step_info_t* step, double* penalty,
                                    clhost_error_t* error);
  /* After the task's last step, before evaluation: consolidate (Fisher, anchors). */
  clhost_status_t (*on_task_end)(void* instance, const clhost_task_info_t* task,
                                 clhost_error_t* error);
  /* Writes a short description of the variant that ran ("penalty 0.5*lambda*sum(...)") into
   * buffer (size bytes, NUL-terminated) for results.json. May be NULL. */
  void (*describe)(void* instance, char* buffer, size_t size);
} clhost_regularizer_v1_t;

typedef enum clhost_event_kind {
  CLHOST_EVENT_RUN_BEGIN = 1,
  CLHOST_EVENT_RUN_END = 2,
  CLHOST_EVENT_TASK_BEGIN = 3,
  CLHOST_EVENT_TASK_END = 4,
  CLHOST_EVENT_EVAL_BEGIN = 5,
  CLHOST_EVENT_EVAL_END = 6,
  CLHOST_EVENT_CONSOLIDATE_BEGIN = 7,
  CLHOST_EVENT_CONSOLIDATE_END = 8,
  CLHOST_EVENT_OUT_OF_MEMORY = 9,
  CLHOST_EVENT_BATCH_SIZE_CHANGE = 10,
  CLHOST_EVENT_CHECKPOINT = 11,
  CLHOST_EVENT_USER = 100
} clhost_event_kind_t;

typedef struct clhost_event {
  uint32_t struct_size;
  clhost_event_kind_t kind;
  double time_seconds; /* monotonic, seconds since the run began */
  int32_t task_index;  /* -1 when not inside a task */
  const char* label;   /* e.g. "task 2 begin"; lifetime: call */
  const char* run_dir; /* the run's output directory; lifetime: call */
  /* ABI 1.1 (check with CLHOST_HAS_MEMBER): "clhost" for the host's events, the marking
   * plug-in's id for CLHOST_EVENT_USER. Lifetime: call. */
  const char* source;
} clhost_event_t;

#define CLHOST_INTERFACE_PROFILER_V1 "clhost.profiler/1"
typedef struct clhost_profiler_v1 {
  uint32_t struct_size;
  /* Called for every event in order. Thread rule: trainer thread; a profiler that samples in
   * its own thread must synchronise itself. RUN_END is the last call before destroy. */
  clhost_status_t (*on_event)(void* instance, const clhost_event_t* event, clhost_error_t* error);
} clhost_profiler_v1_t;

typedef struct clhost_batch_request {
  uint32_t struct_size;
  uint32_t task_index;
  int64_t configured_batch_size; /* the optimizer batch; it never changes */
  int64_t current_micro_batch;   /* 0 before the first step of the run */
  int32_t out_of_memory;         /* non-zero: the last attempt at current_micro_batch failed */
  int64_t budget_bytes;          /* run.memory_budget; without one, tensor bytes now plus the
                                    system's available memory; -1 when unknown */
  int64_t peak_bytes_last_step;  /* tensor bytes high-water mark during the last step (absolute:
                                    model, data and optimizer state included), -1 unknown */
} clhost_batch_request_t;

#define CLHOST_INTERFACE_BATCH_POLICY_V1 "clhost.batch_policy/1"
typedef struct clhost_batch_policy_v1 {
  uint32_t struct_size;
  /* Returns in *micro_batch the number of samples to process per forward/backward, in
   * [1, configured_batch_size]; the host accumulates gradients so the optimizer still sees the
   * configured batch. Called before the first step of every task, after every step, and after an
   * out-of-memory failure. */
  clhost_status_t (*choose_micro_batch)(void* instance, const clhost_batch_request_t* request,
                                        int64_t* micro_batch, clhost_error_t* error);
  /* May be NULL. Why the last choice was made ("doubled: the last step fit"), for the console
   * and metrics.csv. Lifetime: until the next call on this instance. */
  const char* (*last_reason)(void* instance);
} clhost_batch_policy_v1_t;

/* Optional for every kind: a JSON object the host puts under plugins[i].report in results.json
 * at the end of the run (e.g. measured state sizes). Writes a NUL-terminated JSON object into
 * buffer (size bytes); returns the length it needed (excluding NUL), so a caller can retry with
 * a larger buffer. */
#define CLHOST_INTERFACE_REPORT_V1 "clhost.report/1"
typedef struct clhost_report_v1 {
  uint32_t struct_size;
  size_t (*write_json)(void* instance, char* buffer, size_t size);
} clhost_report_v1_t;

/* Optional for every kind (ABI 1.3): the instance's state for checkpoints, so that
 * `clhost run --resume` continues exactly where the run stopped. A plug-in without this table is
 * reported as "not resumable" and a resume refuses to start unless --resume-anyway is given.
 * The bytes are the plug-in's own format; the host stores them with the plug-in's id and
 * version and hands them back only to the same id and version. A plug-in that keeps nothing
 * across hooks implements both with zero bytes. */
#define CLHOST_INTERFACE_STATE_V1 "clhost.state/1"
/* Appends `size` bytes to the state being saved. `writer_data`: the value passed to save. */
typedef clhost_status_t (*clhost_state_write_fn)(void* writer_data, const void* bytes, size_t size,
                                                 clhost_error_t* error);
typedef struct clhost_state_v1 {
  uint32_t struct_size;
  /* Writes the whole state through `write` (any number of calls, in order). Called on the
   * trainer thread between hooks (after a step, or after a task's evaluation), never while
   * another hook of this instance runs; a profiler's own threads must be excluded by the
   * plug-in. `write` and `writer_data` are valid during this call only. On a non-OK status from
   * `write`, return it (the checkpoint is abandoned; the previous one stays). */
  clhost_status_t (*save)(void* instance, clhost_state_write_fn write, void* writer_data,
                          clhost_error_t* error);
  /* Replaces the state of a freshly created instance with saved bytes. Called once, on the
   * trainer thread, after create and before any other hook. `bytes` lifetime: this call; copy
   * what you keep. Return INVALID_ARGUMENT with a message when the bytes are not yours. */
  clhost_status_t (*restore)(void* instance, const void* bytes, size_t size, clhost_error_t* error);
} clhost_state_v1_t;

/* "clhost.config_use/1" (ABI 1.4, optional): which keys of the plug-in's table take effect for
 * the given values, e.g. a decay that only an "online" mode uses. With it, a setting is never
 * silently ignored: the host refuses a key the user set that has no effect (exit 2, located,
 * before anything runs; `clhost validate` does the same), and results.json lists each defaulted
 * key without effect under plugins[i].not_in_effect. */
#define CLHOST_INTERFACE_CONFIG_USE_V1 "clhost.config_use/1"
/* Receives one key without effect. `key`: a key of the schema; `reason`: what would make it
 * apply, in words a user can act on ("applies to mode = \"online\" only"). Lifetime of both:
 * call. */
typedef void (*clhost_unused_key_fn)(void* sink_data, const char* key, const char* reason);
typedef struct clhost_config_use_v1 {
  uint32_t struct_size;
  /* Calls `unused` once for every key of `config` that would have no effect in a run with these
   * values and these host settings. No instance exists: `host` offers only "clhost.settings/1"
   * and "clhost.log/1", lifetime call. Called on the trainer thread before create, and by
   * `clhost validate`; must not fail or keep any pointer. */
  void (*unused_keys)(const clhost_host_t* host, const clhost_config_t* config,
                      clhost_unused_key_fn unused, void* sink_data);
} clhost_config_use_v1_t;

/* "clhost.memory_plan/1" (ABI 1.5, optional): the memory an instance will hold, known before it
 * exists, so that `clhost memory-plan` and `clhost run` can tell whether a run fits before it
 * trains for hours. Without it the host plans the plug-in as "not planned". */
#define CLHOST_INTERFACE_MEMORY_PLAN_V1 "clhost.memory_plan/1"
typedef struct clhost_memory_plan_request {
  uint32_t struct_size;
  const int64_t* parameter_numels; /* elements of each trainable tensor, in the order of the
                                      "clhost.parameters/1" service; lifetime: call */
  int64_t parameter_count;         /* entries of parameter_numels */
  int64_t tasks;                   /* tasks of the run: one consolidation after each */
  int64_t fisher_block_size;       /* elements per block of the host's Fisher pass */
} clhost_memory_plan_request_t;
typedef struct clhost_memory_plan_answer {
  uint32_t struct_size;
  /* Bytes held after the last task's consolidation — for state that grows with the tasks, the
   * most it holds between tasks. */
  int64_t state_bytes;
  /* Bytes held beyond state_bytes at the peak of one consolidation (scratch buffers, a copy
   * being merged), not counting the host's Fisher pass, which the host plans itself. */
  int64_t consolidation_bytes;
  /* What would shrink state_bytes, in words a user can act on, printed when the run does not
   * fit; NULL for nothing. Lifetime: static. */
  const char* advice;
  /* ABI 1.8: the most samples one pass of the host's "clhost.fisher/1", "clhost.sample_grads/1"
   * or "clhost.output_grads/1" service will take in a consolidation (the request's batch_size, or
   * max_samples when that is smaller); 0: the plug-in asks for none. The host plans the model's
   * activations at that many samples. The host sets -1 before the call: a plug-in built before
   * 1.8 leaves it, and its passes' activations are reported as not planned. */
  int64_t fisher_samples_per_pass;
} clhost_memory_plan_answer_t;
typedef struct clhost_memory_plan_v1 {
  uint32_t struct_size;
  /* Fills *out (the host sets out->struct_size) for a run with this config and this request.
   * No instance exists: `host` offers only "clhost.settings/1" and "clhost.log/1", lifetime
   * call. Called on the trainer thread before create, and by `clhost memory-plan`; keeps no
   * pointer. Return INVALID_ARGUMENT with a message for a request it cannot plan. */
  clhost_status_t (*plan)(const clhost_host_t* host, const clhost_config_t* config,
                          const clhost_memory_plan_request_t* request,
                          clhost_memory_plan_answer_t* out, clhost_error_t* error);
} clhost_memory_plan_v1_t;

/* "clhost.output_loss/1" (ABI 1.7, optional for regularizers): a loss term on the model's
 * outputs, added to the data loss of every training micro-batch (LwF's distillation, a margin, a
 * logit penalty). The plug-in returns the term and its gradient with respect to the logits; the
 * host back-propagates that gradient together with the data loss, so a C plug-in needs no
 * autograd. Classification tasks only: the host does not call it on text (next-byte) tasks. */
typedef struct clhost_output_batch {
  uint32_t struct_size;
  uint32_t task_index; /* the task being trained */
  int64_t step;        /* optimizer step within the task, 0-based */
  int64_t samples;     /* n: samples in this micro-batch */
  /* Every DLTensor below: contiguous, CPU, read-only, lifetime: call. */
  DLTensor logits;       /* [n, columns] float32: every output column (every task's head) */
  DLTensor targets;      /* [n] int64: the column of each sample's label */
  DLTensor sample_tasks; /* [n] int32: the task each sample comes from (replayed: an earlier one) */
  /* [columns] uint8: 1 where the current task trains — its head (task-incremental), every class
   * seen so far (class-incremental), every column (domain-incremental). */
  DLTensor active;
  /* [n, columns] float32: the logits of the caller's snapshot (clhost.snapshot/1) on the same
   * samples; data == NULL while the caller holds no snapshot. */
  DLTensor snapshot_logits;
} clhost_output_batch_t;

#define CLHOST_INTERFACE_OUTPUT_LOSS_V1 "clhost.output_loss/1"
typedef struct clhost_output_loss_v1 {
  uint32_t struct_size;
  /* Writes the term's mean over the micro-batch's n samples into *value and its gradient with
   * respect to batch->logits into `gradient` ([n, columns] float32, contiguous CPU, zero-filled
   * by the host; lifetime: call). The host weights both by n / the step's samples (as it weights
   * the data loss), adds the value to the step's penalty (metrics.csv, after_backward's step)
   * and back-propagates the gradient with the data loss. Called on the trainer thread after each
   * micro-batch's forward pass, before the step's after_backward; called again for the same
   * samples when a step is redone after out-of-memory. */
  clhost_status_t (*output_loss)(void* instance, const clhost_output_batch_t* batch, double* value,
                                 DLTensor* gradient, clhost_error_t* error);
} clhost_output_loss_v1_t;

/* "clhost.replay/1" (ABI 1.7): the interface of kind REPLAY. The host holds the buffer — each
 * stored sample's input and label as the model takes them, and its task — in tensors counted by
 * run.memory_budget, written into checkpoints and restored by --resume; the plug-in decides what
 * the buffer holds and what is replayed. Replayed samples are appended to a step's batch: the
 * step's loss is the mean over its batch_size + count samples, each scored on its own task's
 * classes (task-incremental: its head; otherwise the current task's), and the batch policy's
 * micro-batches split that whole batch (docs/plugins.md, "Replay"). At most one replay plug-in
 * per pipeline. In a data-parallel run every rank makes the same calls with the same arguments:
 * the answers must depend on them and on the instance's state only (seed from run.seed). */
typedef struct clhost_replay_candidates {
  uint32_t struct_size;
  uint32_t task_index; /* the task that just ended */
  /* Every DLTensor below: contiguous, CPU, read-only, lifetime: call. */
  int64_t stored;            /* samples in the buffer now */
  DLTensor stored_labels;    /* [stored] int64 dataset labels; data == NULL on text tasks */
  DLTensor stored_tasks;     /* [stored] int32 */
  int64_t candidates;        /* the ended task's training samples */
  DLTensor candidate_labels; /* [candidates] int64 dataset labels; data == NULL on text tasks */
  /* [candidates, ...] float32, the inputs as the model takes them (e.g. for herding): one copy
   * of the task's training inputs, made only for a plug-in whose table sets
   * wants_candidate_inputs; data == NULL otherwise, on text tasks and when the run streams its
   * data (data.max_resident). */
  DLTensor candidate_inputs;
} clhost_replay_candidates_t;

typedef struct clhost_replay_draw {
  uint32_t struct_size;
  uint32_t task_index;
  int64_t step; /* optimizer step within the task, 0-based */
  int64_t global_step;
  int64_t batch_size; /* the step's samples of the current task */
  int64_t stored;     /* samples in the buffer (>= 1) */
  /* [stored] int64, contiguous CPU, read-only, lifetime: call; data == NULL on text tasks. */
  DLTensor stored_labels;
  DLTensor stored_tasks; /* [stored] int32, likewise (never NULL) */
} clhost_replay_draw_t;

#define CLHOST_INTERFACE_REPLAY_V1 "clhost.replay/1"
typedef struct clhost_replay_v1 {
  uint32_t struct_size;
  /* At the end of every task, before the regularizers' on_task_end: the buffer's new content.
   * Writes one entry per sample to hold, in slot order, into keep[0 .. *kept): k >= 0 keeps
   * stored sample k, k < 0 stores candidate -k - 1. `keep` has room for stored + candidates
   * entries; each stored sample and candidate at most once. */
  clhost_status_t (*select)(void* instance, const clhost_replay_candidates_t* candidates,
                            int64_t* keep, int64_t* kept, clhost_error_t* error);
  /* Before every training step while the buffer is not empty: the stored samples to append to
   * this step's batch, written into slots[0 .. *count), *count <= max_count (= stored); a slot
   * may repeat. *count = 0 replays nothing this step. */
  clhost_status_t (*draw)(void* instance, const clhost_replay_draw_t* draw, int64_t* slots,
                          int64_t max_count, int64_t* count, clhost_error_t* error);
  /* Non-zero: select reads candidate_inputs (the host then copies the task's training inputs
   * for the call, counted by run.memory_budget); zero: it reads labels and tasks only. */
  int32_t wants_candidate_inputs;
} clhost_replay_v1_t;

/* ---------------------------------------------------------------------------------------------
 * The entry point
 * ------------------------------------------------------------------------------------------ */

typedef struct clhost_plugin_entry_table {
  uint32_t struct_size;
  clhost_abi_version_t abi_version;              /* CLHOST_ABI_VERSION_MAJOR/MINOR at build */
  const clhost_plugin_descriptor_t* descriptor;  /* lifetime: static */
  const clhost_build_fingerprint_t* fingerprint; /* NULL unless the plug-in uses LibTorch C++ */
  /* Creates one instance. `host` lifetime: until destroy (keep the pointer). `config`: call.
   * On failure return non-OK, write the message, leave *instance untouched. */
  clhost_status_t (*create)(const clhost_host_t* host, const clhost_config_t* config,
                            void** instance, clhost_error_t* error);
  void (*destroy)(void* instance);
  /* Returns the table for `interface_id` (e.g. CLHOST_INTERFACE_REGULARIZER_V1) or NULL.
   * Thread rule: any thread; must not allocate or fail. */
  const void* (*get_interface)(const char* interface_id);
} clhost_plugin_entry_t;

#define CLHOST_ENTRY_SYMBOL "clhost_plugin_entry"
typedef const clhost_plugin_entry_t* (*clhost_plugin_entry_fn)(void);

/* Every plug-in defines this function and exports nothing else:
 *   CLHOST_EXPORT const clhost_plugin_entry_t* clhost_plugin_entry(void) { return &entry; } */
CLHOST_EXPORT const clhost_plugin_entry_t* clhost_plugin_entry(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CLHOST_PLUGIN_H */
