/*
 * l2 — an L2 anchor regularizer written in plain C11, proving the clhost ABI end to end.
 *
 * Penalty: 0.5 * lambda * sum_i (theta_i - theta*_i)^2, where theta* is a copy of the
 * parameters taken at the end of the previous task (no penalty during the first task).
 * Gradient lambda * (theta - theta*) is added straight into the parameter gradients.
 * Works on CPU float32 contiguous parameters; anything else is reported as UNSUPPORTED.
 */
#include <clhost/clhost_plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct l2_state {
  const clhost_host_t* host;
  const clhost_params_service_v1_t* params;
  double lambda;
  uint32_t parameter_count;
  float** anchors; /* one buffer per parameter, NULL until the first task ends */
  int64_t* anchor_numel;
} l2_state_t;

static const clhost_config_key_t l2_schema[] = {
    {"lambda", CLHOST_CONFIG_TYPE_FLOAT, "1.0",
     "penalty strength (dimensionless; the penalty is 0.5*lambda*||theta-theta*||^2)", 1, 0.0, 1e12,
     NULL},
};

static const clhost_plugin_descriptor_t l2_descriptor = {
    sizeof(clhost_plugin_descriptor_t),
    "l2",
    CLHOST_PLUGIN_KIND_REGULARIZER,
    "1.0.0",
    "L2 pull towards the parameters at the end of the previous task (plain C)",
    "clhost",
    l2_schema,
    (uint32_t)(sizeof(l2_schema) / sizeof(l2_schema[0])),
};

static clhost_status_t fail(clhost_error_t* error, clhost_status_t status, const char* message,
                            const char* name) {
  snprintf(error->message, sizeof(error->message), "l2: %s%s%s", message, name ? ": " : "",
           name ? name : "");
  return status;
}

static int is_cpu_float32_contiguous(const DLTensor* tensor) {
  int32_t dim;
  int64_t expected = 1;
  if (tensor->device.device_type != kDLCPU || tensor->dtype.code != kDLFloat ||
      tensor->dtype.bits != 32 || tensor->dtype.lanes != 1) {
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

static float* tensor_floats(const DLTensor* tensor) {
  return (float*)((char*)tensor->data + tensor->byte_offset);
}

static void l2_destroy(void* instance) {
  l2_state_t* state = (l2_state_t*)instance;
  uint32_t i;
  if (state == NULL) {
    return;
  }
  for (i = 0; state->anchors != NULL && i < state->parameter_count; ++i) {
    free(state->anchors[i]);
  }
  free(state->anchors);
  free(state->anchor_numel);
  free(state);
}

static clhost_status_t l2_create(const clhost_host_t* host, const clhost_config_t* config,
                                 void** instance, clhost_error_t* error) {
  const clhost_config_value_t* lambda = clhost_config_find(config, "lambda");
  const clhost_params_service_v1_t* params =
      (const clhost_params_service_v1_t*)host->get_service(host, CLHOST_SERVICE_PARAMS_V1);
  l2_state_t* state;
  if (params == NULL) {
    return fail(error, CLHOST_STATUS_UNSUPPORTED, "host lacks service " CLHOST_SERVICE_PARAMS_V1,
                NULL);
  }
  state = (l2_state_t*)calloc(1, sizeof(*state));
  if (state == NULL) {
    return fail(error, CLHOST_STATUS_OUT_OF_MEMORY, "out of memory", NULL);
  }
  state->host = host;
  state->params = params;
  state->lambda = lambda != NULL ? lambda->float_value : 1.0;
  *instance = state;
  return CLHOST_STATUS_OK;
}

static clhost_status_t l2_after_backward(void* instance, const clhost_step_info_t* step,
                                         double* penalty, clhost_error_t* error) {
  l2_state_t* state = (l2_state_t*)instance;
  double sum = 0.0;
  uint32_t i;
  (void)step;
  *penalty = 0.0;
  if (state->anchors == NULL) {
    return CLHOST_STATUS_OK;
  }
  for (i = 0; i < state->parameter_count; ++i) {
    clhost_parameter_t parameter;
    const float* anchor = state->anchors[i];
    float* value;
    float* grad;
    int64_t k;
    clhost_status_t status = state->params->get(state->host, i, &parameter, error);
    if (status != CLHOST_STATUS_OK) {
      return status;
    }
    if (parameter.grad.data == NULL) {
      continue; /* parameter not used by this task's loss: nothing to add to */
    }
    if (!is_cpu_float32_contiguous(&parameter.grad)) {
      return fail(error, CLHOST_STATUS_UNSUPPORTED,
                  "only contiguous float32 CPU gradients are supported", parameter.name);
    }
    value = tensor_floats(&parameter.value);
    grad = tensor_floats(&parameter.grad);
    for (k = 0; k < parameter.numel; ++k) {
      const float delta = value[k] - anchor[k];
      sum += (double)delta * (double)delta;
      grad[k] += (float)(state->lambda * delta);
    }
  }
  *penalty = 0.5 * state->lambda * sum;
  return CLHOST_STATUS_OK;
}

/* The per-parameter anchor table (entries still NULL), made when the first anchors arrive. */
static clhost_status_t allocate_anchor_table(l2_state_t* state, uint32_t count,
                                             clhost_error_t* error) {
  state->anchors = (float**)calloc(count, sizeof(float*));
  state->anchor_numel = (int64_t*)calloc(count, sizeof(int64_t));
  if (state->anchors == NULL || state->anchor_numel == NULL) {
    return fail(error, CLHOST_STATUS_OUT_OF_MEMORY, "out of memory for anchors", NULL);
  }
  state->parameter_count = count;
  return CLHOST_STATUS_OK;
}

static clhost_status_t l2_task_end(void* instance, const clhost_task_info_t* task,
                                   clhost_error_t* error) {
  l2_state_t* state = (l2_state_t*)instance;
  uint32_t count = state->params->count(state->host);
  uint32_t i;
  (void)task;
  if (state->anchors == NULL) {
    clhost_status_t status = allocate_anchor_table(state, count, error);
    if (status != CLHOST_STATUS_OK) return status;
  }
  for (i = 0; i < count; ++i) {
    clhost_parameter_t parameter;
    clhost_status_t status = state->params->get(state->host, i, &parameter, error);
    if (status != CLHOST_STATUS_OK) {
      return status;
    }
    if (!is_cpu_float32_contiguous(&parameter.value)) {
      return fail(error, CLHOST_STATUS_UNSUPPORTED,
                  "only contiguous float32 CPU parameters are supported", parameter.name);
    }
    if (state->anchors[i] == NULL) {
      state->anchors[i] = (float*)malloc((size_t)parameter.numel * sizeof(float));
      if (state->anchors[i] == NULL) {
        return fail(error, CLHOST_STATUS_OUT_OF_MEMORY, "out of memory for anchor", parameter.name);
      }
      state->anchor_numel[i] = parameter.numel;
    }
    memcpy(state->anchors[i], tensor_floats(&parameter.value),
           (size_t)parameter.numel * sizeof(float));
  }
  return CLHOST_STATUS_OK;
}

static void l2_describe(void* instance, char* buffer, size_t size) {
  const l2_state_t* state = (const l2_state_t*)instance;
  snprintf(buffer, size,
           "penalty 0.5*lambda*||theta-theta*||^2, lambda=%g, theta* = parameters at the end of "
           "the previous task; gradient added directly",
           state->lambda);
}

/* Checkpoints: the anchors, as [count: uint32] then per parameter [numel: int64][numel floats];
 * count 0 before the first task ends. */
static clhost_status_t l2_save(void* instance, clhost_state_write_fn write, void* writer_data,
                               clhost_error_t* error) {
  const l2_state_t* state = (const l2_state_t*)instance;
  const uint32_t count = state->anchors != NULL ? state->parameter_count : 0;
  uint32_t i;
  clhost_status_t status = write(writer_data, &count, sizeof(count), error);
  for (i = 0; i < count && status == CLHOST_STATUS_OK; ++i) {
    status = write(writer_data, &state->anchor_numel[i], sizeof(int64_t), error);
    if (status == CLHOST_STATUS_OK) {
      status = write(writer_data, state->anchors[i], (size_t)state->anchor_numel[i] * sizeof(float),
                     error);
    }
  }
  return status;
}

static clhost_status_t l2_restore(void* instance, const void* bytes, size_t size,
                                  clhost_error_t* error) {
  l2_state_t* state = (l2_state_t*)instance;
  const char* cursor = (const char*)bytes;
  const char* end = cursor + size;
  uint32_t count;
  uint32_t i;
  if (size < sizeof(count) || state->anchors != NULL) {
    return fail(error, CLHOST_STATUS_INVALID_ARGUMENT, "saved l2 state is malformed", NULL);
  }
  memcpy(&count, cursor, sizeof(count));
  cursor += sizeof(count);
  if (count == 0)
    return cursor == end
               ? CLHOST_STATUS_OK
               : fail(error, CLHOST_STATUS_INVALID_ARGUMENT, "saved l2 state is malformed", NULL);
  if (allocate_anchor_table(state, count, error) != CLHOST_STATUS_OK) {
    return CLHOST_STATUS_OUT_OF_MEMORY;
  }
  for (i = 0; i < count; ++i) {
    int64_t numel;
    size_t bytes_needed;
    if ((size_t)(end - cursor) < sizeof(numel)) break;
    memcpy(&numel, cursor, sizeof(numel));
    cursor += sizeof(numel);
    bytes_needed = (size_t)numel * sizeof(float);
    if (numel < 0 || (size_t)(end - cursor) < bytes_needed) break;
    state->anchors[i] = (float*)malloc(bytes_needed > 0 ? bytes_needed : 1);
    if (state->anchors[i] == NULL) {
      return fail(error, CLHOST_STATUS_OUT_OF_MEMORY, "out of memory for anchor", NULL);
    }
    memcpy(state->anchors[i], cursor, bytes_needed);
    state->anchor_numel[i] = numel;
    cursor += bytes_needed;
  }
  if (i != count || cursor != end) {
    return fail(error, CLHOST_STATUS_INVALID_ARGUMENT, "saved l2 state is truncated or malformed",
                NULL);
  }
  return CLHOST_STATUS_OK;
}

static const clhost_state_v1_t l2_state_table = {sizeof(clhost_state_v1_t), l2_save, l2_restore};

static const clhost_regularizer_v1_t l2_regularizer = {
    sizeof(clhost_regularizer_v1_t), NULL, l2_after_backward, l2_task_end, l2_describe,
};

/* clhost.memory_plan/1: one float32 anchor per parameter, from the first task's end on. */
static clhost_status_t l2_plan_memory(const clhost_host_t* host, const clhost_config_t* config,
                                      const clhost_memory_plan_request_t* request,
                                      clhost_memory_plan_answer_t* out, clhost_error_t* error) {
  int64_t i;
  (void)host, (void)config, (void)error;
  out->state_bytes = 0;
  out->consolidation_bytes = 0;
  out->advice = NULL;
  if (CLHOST_HAS_MEMBER(out, clhost_memory_plan_answer_t, fisher_samples_per_pass)) {
    out->fisher_samples_per_pass = 0;
  }
  if (request->tasks < 1) return CLHOST_STATUS_OK;
  for (i = 0; i < request->parameter_count; ++i) {
    out->state_bytes += request->parameter_numels[i] * (int64_t)sizeof(float);
  }
  return CLHOST_STATUS_OK;
}

static const clhost_memory_plan_v1_t l2_memory_plan = {sizeof(clhost_memory_plan_v1_t),
                                                       l2_plan_memory};

static const void* l2_get_interface(const char* interface_id) {
  if (strcmp(interface_id, CLHOST_INTERFACE_REGULARIZER_V1) == 0) {
    return &l2_regularizer;
  }
  if (strcmp(interface_id, CLHOST_INTERFACE_STATE_V1) == 0) {
    return &l2_state_table;
  }
  if (strcmp(interface_id, CLHOST_INTERFACE_MEMORY_PLAN_V1) == 0) {
    return &l2_memory_plan;
  }
  return NULL;
}

static const clhost_plugin_entry_t l2_entry = {
    sizeof(clhost_plugin_entry_t),
    {CLHOST_ABI_VERSION_MAJOR, CLHOST_ABI_VERSION_MINOR},
    &l2_descriptor,
    NULL,
    l2_create,
    l2_destroy,
    l2_get_interface,
};

CLHOST_EXPORT const clhost_plugin_entry_t* clhost_plugin_entry(void) {
  return &l2_entry;
}
