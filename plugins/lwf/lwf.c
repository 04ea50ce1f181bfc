/*
 * lwf — Learning without Forgetting (Li & Hoiem, 2017) in plain C: knowledge distillation from
 * the model as it was at the end of the previous task, with no autograd in the plug-in.
 *
 * At each task's end the plug-in asks the host for a frozen snapshot of the model
 * (clhost.snapshot/1) and records the output columns that task trained. While training later
 * tasks, every micro-batch's loss gets the term (clhost.output_loss/1)
 *
 *   alpha * (1/|G|) * sum over groups g of  T^2 * KL( softmax(z_old[g] / T) || softmax(z[g] / T) ),
 *
 * averaged over the micro-batch's samples, where z are the current logits, z_old the snapshot's
 * on the same samples and the groups G are the column sets of the earlier tasks with every set
 * contained in another dropped — each earlier task's head (task-incremental), the classes seen
 * up to the previous task (class-incremental), every column (domain-incremental), as in van de
 * Ven et al.'s reference implementation. Its gradient with respect to z[g] is
 * alpha * T / |G| / n * (softmax(z[g] / T) - softmax(z_old[g] / T)).
 */
#include <clhost/clhost_plugin.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct lwf_state {
  const clhost_host_t* host;
  const clhost_snapshot_service_v1_t* snapshot;
  double alpha;
  double temperature;
  int64_t columns;       /* output columns; 0 until the first micro-batch */
  unsigned char* active; /* [columns] the current task's columns, as last seen */
  unsigned char* groups; /* [group_count * columns] the earlier tasks' column sets */
  uint32_t group_count;
  double* scratch; /* [2 * columns] softmax rows */
} lwf_state_t;

static const clhost_config_key_t lwf_schema[] = {
    {"alpha", CLHOST_CONFIG_TYPE_FLOAT, "1.0",
     "weight of the distillation term added to the data loss (Li & Hoiem's lambda_o)", 1, 0.0, 1e6,
     NULL},
    {"temperature", CLHOST_CONFIG_TYPE_FLOAT, "2.0",
     "softmax temperature T of the distillation (the term is scaled by T^2)", 1, 0.01, 100.0, NULL},
};

static const clhost_plugin_descriptor_t lwf_descriptor = {
    sizeof(clhost_plugin_descriptor_t),
    "lwf",
    CLHOST_PLUGIN_KIND_REGULARIZER,
    "1.0.0",
    "Learning without Forgetting: distillation from the previous task's model (plain C)",
    "clhost",
    lwf_schema,
    (uint32_t)(sizeof(lwf_schema) / sizeof(lwf_schema[0])),
};

static clhost_status_t fail(clhost_error_t* error, clhost_status_t status, const char* message) {
  snprintf(error->message, sizeof(error->message), "lwf: %s", message);
  return status;
}

static int is_cpu_contiguous(const DLTensor* tensor, uint8_t code, uint8_t bits) {
  int32_t dim;
  int64_t expected = 1;
  if (tensor->data == NULL || tensor->device.device_type != kDLCPU || tensor->dtype.code != code ||
      tensor->dtype.bits != bits || tensor->dtype.lanes != 1) {
    return 0;
  }
  if (tensor->strides == NULL) {
    return 1;
  }
  for (dim = tensor->ndim - 1; dim >= 0; --dim) {
    if (tensor->shape[dim] != 1 && tensor->strides[dim] != expected) {
      return 0;
    }
    expected *= tensor->shape[dim];
  }
  return 1;
}

static const void* tensor_data(const DLTensor* tensor) {
  return (const char*)tensor->data + tensor->byte_offset;
}

static void lwf_destroy(void* instance) {
  lwf_state_t* state = (lwf_state_t*)instance;
  if (state == NULL) {
    return;
  }
  free(state->active);
  free(state->groups);
  free(state->scratch);
  free(state);
}

static clhost_status_t lwf_create(const clhost_host_t* host, const clhost_config_t* config,
                                  void** instance, clhost_error_t* error) {
  const clhost_settings_service_v1_t* settings =
      (const clhost_settings_service_v1_t*)host->get_service(host, CLHOST_SERVICE_SETTINGS_V1);
  const char* data_kind = NULL;
  lwf_state_t* state;
  if (settings != NULL && settings->get_string(host, "data.kind", &data_kind) == 0 &&
      data_kind != NULL && strcmp(data_kind, "text") == 0) {
    return fail(error, CLHOST_STATUS_INVALID_ARGUMENT,
                "distillation needs class outputs; text tasks (data.kind = \"text\") have none");
  }
  state = (lwf_state_t*)calloc(1, sizeof(lwf_state_t));
  if (state == NULL) {
    return fail(error, CLHOST_STATUS_OUT_OF_MEMORY, "no memory for the plug-in's state");
  }
  state->host = host;
  state->snapshot =
      (const clhost_snapshot_service_v1_t*)host->get_service(host, CLHOST_SERVICE_SNAPSHOT_V1);
  if (state->snapshot == NULL) {
    lwf_destroy(state);
    return fail(error, CLHOST_STATUS_UNSUPPORTED,
                "the host has no clhost.snapshot/1 (it needs clhost 1.7 or later)");
  }
  state->alpha = clhost_config_find(config, "alpha")->float_value;
  state->temperature = clhost_config_find(config, "temperature")->float_value;
  *instance = state;
  return CLHOST_STATUS_OK;
}

/* Allocates the per-column buffers once the number of columns is known. */
static clhost_status_t set_columns(lwf_state_t* state, int64_t columns, clhost_error_t* error) {
  if (state->columns == columns) {
    return CLHOST_STATUS_OK;
  }
  if (state->columns != 0) {
    return fail(error, CLHOST_STATUS_INVALID_ARGUMENT, "the number of output columns changed");
  }
  state->active = (unsigned char*)calloc((size_t)columns, 1);
  state->scratch = (double*)calloc((size_t)columns * 2, sizeof(double));
  if (state->active == NULL || state->scratch == NULL) {
    return fail(error, CLHOST_STATUS_OUT_OF_MEMORY, "no memory for the column buffers");
  }
  state->columns = columns;
  return CLHOST_STATUS_OK;
}

/* softmax(row[g] / T) over the columns of group g, into out (other columns untouched). */
static void group_softmax(const float* row, const unsigned char* group, int64_t columns,
                          double temperature, double* out) {
  int64_t c;
  double largest = -HUGE_VAL;
  double sum = 0.0;
  for (c = 0; c < columns; ++c) {
    if (group[c] && row[c] / temperature > largest) {
      largest = row[c] / temperature;
    }
  }
  for (c = 0; c < columns; ++c) {
    if (group[c]) {
      out[c] = exp(row[c] / temperature - largest);
      sum += out[c];
    }
  }
  for (c = 0; c < columns; ++c) {
    if (group[c]) {
      out[c] /= sum;
    }
  }
}

static clhost_status_t check_batch(lwf_state_t* state, const clhost_output_batch_t* batch,
                                   const DLTensor* gradient, clhost_error_t* error) {
  const int64_t columns = batch->logits.ndim == 2 ? batch->logits.shape[1] : 0;
  clhost_status_t status;
  if (!is_cpu_contiguous(&batch->logits, kDLFloat, 32) || columns <= 0 ||
      !is_cpu_contiguous(gradient, kDLFloat, 32) ||
      !is_cpu_contiguous(&batch->active, kDLUInt, 8)) {
    return fail(error, CLHOST_STATUS_UNSUPPORTED,
                "logits and gradient must be contiguous CPU float32 [n, columns], active uint8");
  }
  status = set_columns(state, columns, error);
  if (status != CLHOST_STATUS_OK) {
    return status;
  }
  memcpy(state->active, tensor_data(&batch->active), (size_t)columns);
  if (batch->snapshot_logits.data != NULL &&
      !is_cpu_contiguous(&batch->snapshot_logits, kDLFloat, 32)) {
    return fail(error, CLHOST_STATUS_UNSUPPORTED, "snapshot logits must be CPU float32");
  }
  return CLHOST_STATUS_OK;
}

static clhost_status_t lwf_output_loss(void* instance, const clhost_output_batch_t* batch,
                                       double* value, DLTensor* gradient, clhost_error_t* error) {
  lwf_state_t* state = (lwf_state_t*)instance;
  const clhost_status_t status = check_batch(state, batch, gradient, error);
  const int64_t n = batch->samples;
  const int64_t columns = state->columns;
  const double t = state->temperature;
  double total = 0.0;
  int64_t i;
  uint32_t g;
  int64_t c;
  *value = 0.0;
  if (status != CLHOST_STATUS_OK || batch->snapshot_logits.data == NULL ||
      state->group_count == 0 || n == 0) {
    return status;
  }
  for (i = 0; i < n; ++i) {
    const float* now = (const float*)tensor_data(&batch->logits) + i * columns;
    const float* old = (const float*)tensor_data(&batch->snapshot_logits) + i * columns;
    float* out = (float*)tensor_data(gradient) + i * columns;
    for (g = 0; g < state->group_count; ++g) {
      const unsigned char* group = state->groups + (size_t)g * (size_t)columns;
      double* p = state->scratch;
      double* q = state->scratch + columns;
      const double scale = state->alpha / (double)state->group_count / (double)n;
      group_softmax(now, group, columns, t, p);
      group_softmax(old, group, columns, t, q);
      for (c = 0; c < columns; ++c) {
        if (group[c] && q[c] > 0.0) {
          total += scale * t * t * q[c] * (log(q[c]) - log(p[c]));
        }
        if (group[c]) {
          out[c] += (float)(scale * t * (p[c] - q[c]));
        }
      }
    }
  }
  *value = total;
  return CLHOST_STATUS_OK;
}

/* Whether column set a lies inside b. */
static int subset(const unsigned char* a, const unsigned char* b, int64_t columns) {
  int64_t c;
  for (c = 0; c < columns; ++c) {
    if (a[c] && !b[c]) {
      return 0;
    }
  }
  return 1;
}

/* Adds the finished task's columns to the groups, keeping only sets no other set contains. */
static clhost_status_t record_group(lwf_state_t* state, clhost_error_t* error) {
  const int64_t columns = state->columns;
  unsigned char* kept = (unsigned char*)malloc((size_t)(state->group_count + 1) * (size_t)columns);
  uint32_t count = 0;
  uint32_t g;
  if (kept == NULL) {
    return fail(error, CLHOST_STATUS_OUT_OF_MEMORY, "no memory for the column groups");
  }
  for (g = 0; g < state->group_count; ++g) {
    const unsigned char* group = state->groups + (size_t)g * (size_t)columns;
    if (!subset(group, state->active, columns)) {
      memcpy(kept + (size_t)count++ * (size_t)columns, group, (size_t)columns);
    }
  }
  for (g = 0; g < count; ++g) {
    if (subset(state->active, kept + (size_t)g * (size_t)columns, columns)) {
      break;
    }
  }
  if (g == count) {
    memcpy(kept + (size_t)count++ * (size_t)columns, state->active, (size_t)columns);
  }
  free(state->groups);
  state->groups = kept;
  state->group_count = count;
  return CLHOST_STATUS_OK;
}

static clhost_status_t lwf_task_end(void* instance, const clhost_task_info_t* task,
                                    clhost_error_t* error) {
  lwf_state_t* state = (lwf_state_t*)instance;
  clhost_status_t status;
  (void)task;
  if (state->columns == 0) {
    return fail(error, CLHOST_STATUS_INTERNAL,
                "a task ended without a training step's outputs (nothing to distil from)");
  }
  status = record_group(state, error);
  if (status != CLHOST_STATUS_OK) {
    return status;
  }
  return state->snapshot->take(state->host, error);
}

static void lwf_describe(void* instance, char* buffer, size_t size) {
  const lwf_state_t* state = (const lwf_state_t*)instance;
  snprintf(buffer, size,
           "LwF: alpha*T^2*KL(softmax(z_old/T) || softmax(z/T)) per earlier head, alpha = %g, "
           "T = %g",
           state->alpha, state->temperature);
}

/* State: columns (int64), group_count (uint32), the groups and the current columns. The
 * snapshot itself is held, checkpointed and restored by the host. */
static clhost_status_t lwf_save(void* instance, clhost_state_write_fn write, void* writer_data,
                                clhost_error_t* error) {
  const lwf_state_t* state = (const lwf_state_t*)instance;
  clhost_status_t status = write(writer_data, &state->columns, sizeof(state->columns), error);
  if (status == CLHOST_STATUS_OK) {
    status = write(writer_data, &state->group_count, sizeof(state->group_count), error);
  }
  if (status == CLHOST_STATUS_OK && state->columns > 0) {
    status = write(writer_data, state->active, (size_t)state->columns, error);
  }
  if (status == CLHOST_STATUS_OK && state->group_count > 0) {
    status = write(writer_data, state->groups, (size_t)state->group_count * (size_t)state->columns,
                   error);
  }
  return status;
}

static clhost_status_t lwf_restore(void* instance, const void* bytes, size_t size,
                                   clhost_error_t* error) {
  lwf_state_t* state = (lwf_state_t*)instance;
  const unsigned char* in = (const unsigned char*)bytes;
  int64_t columns;
  uint32_t group_count;
  size_t expected;
  clhost_status_t status;
  if (size < sizeof(columns) + sizeof(group_count)) {
    return fail(error, CLHOST_STATUS_INVALID_ARGUMENT, "saved state is truncated");
  }
  memcpy(&columns, in, sizeof(columns));
  memcpy(&group_count, in + sizeof(columns), sizeof(group_count));
  if (columns < 0 || columns > (1 << 24) || group_count > (1U << 16) ||
      (columns == 0 && group_count != 0)) {
    return fail(error, CLHOST_STATUS_INVALID_ARGUMENT, "saved state is not an lwf state");
  }
  expected = sizeof(columns) + sizeof(group_count) + (size_t)columns * (1 + group_count);
  if (size != expected) {
    return fail(error, CLHOST_STATUS_INVALID_ARGUMENT, "saved state has the wrong size");
  }
  if (columns == 0) {
    return CLHOST_STATUS_OK;
  }
  status = set_columns(state, columns, error);
  if (status != CLHOST_STATUS_OK) {
    return status;
  }
  in += sizeof(columns) + sizeof(group_count);
  memcpy(state->active, in, (size_t)columns);
  free(state->groups);
  state->groups = NULL;
  if (group_count > 0) {
    state->groups = (unsigned char*)malloc((size_t)group_count * (size_t)columns);
    if (state->groups == NULL) {
      return fail(error, CLHOST_STATUS_OUT_OF_MEMORY, "no memory for the column groups");
    }
    memcpy(state->groups, in + columns, (size_t)group_count * (size_t)columns);
  }
  state->group_count = group_count;
  return CLHOST_STATUS_OK;
}

/* The host's snapshot: one float32 copy of the parameters (buffers, a few bytes in the built-in
 * models, left out). */
static clhost_status_t lwf_plan(const clhost_host_t* host, const clhost_config_t* config,
                                const clhost_memory_plan_request_t* request,
                                clhost_memory_plan_answer_t* out, clhost_error_t* error) {
  int64_t i;
  int64_t elements = 0;
  (void)host;
  (void)config;
  (void)error;
  for (i = 0; i < request->parameter_count; ++i) {
    elements += request->parameter_numels[i];
  }
  out->state_bytes = elements * (int64_t)sizeof(float);
  out->consolidation_bytes = 0;
  if (CLHOST_HAS_MEMBER(out, clhost_memory_plan_answer_t, fisher_samples_per_pass)) {
    out->fisher_samples_per_pass = 0;
  }
  out->advice = "the snapshot is one copy of the model; nothing in lwf's settings shrinks it";
  return CLHOST_STATUS_OK;
}

static const clhost_regularizer_v1_t lwf_regularizer = {
    sizeof(clhost_regularizer_v1_t), NULL, NULL, lwf_task_end, lwf_describe,
};
static const clhost_output_loss_v1_t lwf_output = {sizeof(clhost_output_loss_v1_t),
                                                   lwf_output_loss};
static const clhost_state_v1_t lwf_state_table = {sizeof(clhost_state_v1_t), lwf_save, lwf_restore};
static const clhost_memory_plan_v1_t lwf_memory_plan = {sizeof(clhost_memory_plan_v1_t), lwf_plan};

static const void* lwf_get_interface(const char* id) {
  if (strcmp(id, CLHOST_INTERFACE_REGULARIZER_V1) == 0) {
    return &lwf_regularizer;
  }
  if (strcmp(id, CLHOST_INTERFACE_OUTPUT_LOSS_V1) == 0) {
    return &lwf_output;
  }
  if (strcmp(id, CLHOST_INTERFACE_STATE_V1) == 0) {
    return &lwf_state_table;
  }
  if (strcmp(id, CLHOST_INTERFACE_MEMORY_PLAN_V1) == 0) {
    return &lwf_memory_plan;
  }
  return NULL;
}

static const clhost_plugin_entry_t lwf_entry = {
    sizeof(clhost_plugin_entry_t),
    {CLHOST_ABI_VERSION_MAJOR, CLHOST_ABI_VERSION_MINOR},
    &lwf_descriptor,
    NULL,
    lwf_create,
    lwf_destroy,
    lwf_get_interface,
};

CLHOST_EXPORT const clhost_plugin_entry_t* clhost_plugin_entry(void) {
  return &lwf_entry;
}
