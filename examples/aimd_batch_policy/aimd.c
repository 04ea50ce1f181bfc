/* aimd: a clhost batch policy in plain C11 — additive increase, multiplicative decrease, the rule
 * TCP congestion control uses to share a link: grow the micro-batch by a fixed number of samples
 * after every step that fit, cut it by a factor after an out-of-memory failure, and never grow past
 * the largest size that failed in this task. It finds a working size without a memory model and
 * keeps probing for headroom when other processes release memory.
 *
 * Keys: start (samples, 0 = a quarter of the batch), increase (samples, 0 = a sixteenth of the
 * batch), decrease (factor in (0, 1)). */
#include <clhost/clhost_plugin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const clhost_config_key_t schema[] = {
    {"start", CLHOST_CONFIG_TYPE_INT, "0", "first micro-batch, samples (0: batch/4)", 1, 0, 1e9,
     NULL},
    {"increase", CLHOST_CONFIG_TYPE_INT, "0", "samples added after a step that fit (0: batch/16)",
     1, 0, 1e9, NULL},
    {"decrease", CLHOST_CONFIG_TYPE_FLOAT, "0.5", "factor applied after out-of-memory", 1, 0.05,
     0.95, NULL},
};

static const clhost_plugin_descriptor_t descriptor = {
    sizeof(clhost_plugin_descriptor_t),
    "aimd",
    CLHOST_PLUGIN_KIND_BATCH_POLICY,
    "1.0.0",
    "additive-increase / multiplicative-decrease micro-batch",
    "clhost examples",
    schema,
    sizeof(schema) / sizeof(schema[0])};

typedef struct aimd {
  const clhost_host_t* host;
  const clhost_log_service_v1_t* log; /* may be NULL */
  int64_t start, increase;
  double decrease;
  int64_t ceiling; /* smallest size that failed in this task; 0 = none */
  int32_t task;
  int64_t last;
  int64_t cuts; /* out-of-memory reductions over the run */
  char reason[128];
} aimd_t;

static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  aimd_t* self = (aimd_t*)calloc(1, sizeof(aimd_t));
  (void)error;
  if (self == NULL) return CLHOST_STATUS_OUT_OF_MEMORY;
  self->host = host;
  self->log = (const clhost_log_service_v1_t*)host->get_service(host, CLHOST_SERVICE_LOG_V1);
  self->start = clhost_config_find(config, "start")->int_value;
  self->increase = clhost_config_find(config, "increase")->int_value;
  self->decrease = clhost_config_find(config, "decrease")->float_value;
  self->task = -1;
  *instance = self;
  return CLHOST_STATUS_OK;
}

static void destroy(void* instance) {
  free(instance);
}

static int64_t clamp(int64_t value, int64_t low, int64_t high) {
  return value < low ? low : value > high ? high : value;
}

static clhost_status_t choose(void* instance, const clhost_batch_request_t* request,
                              int64_t* micro_batch, clhost_error_t* error) {
  aimd_t* self = (aimd_t*)instance;
  const int64_t batch = request->configured_batch_size;
  const int64_t step = self->increase > 0 ? self->increase : (batch + 15) / 16;
  const int64_t current = request->current_micro_batch;
  int64_t next;
  if ((int32_t)request->task_index != self->task) {
    /* A new task: memory may have changed (a larger Fisher state, say); report, forget the
     * ceiling and keep the size that last worked. */
    char line[128];
    if (self->task >= 0 && self->log != NULL) {
      snprintf(line, sizeof(line), "task %d: micro-batch %lld at its end", self->task + 1,
               (long long)current);
      self->log->log(self->host, CLHOST_LOG_INFO, line);
    }
    self->task = (int32_t)request->task_index;
    self->ceiling = 0;
  }
  if (request->out_of_memory) {
    if (current <= 1) {
      snprintf(error->message, sizeof(error->message),
               "aimd: out of memory with a micro-batch of 1; raise run.memory_budget");
      return CLHOST_STATUS_OUT_OF_MEMORY;
    }
    self->ceiling = current;
    ++self->cuts;
    next = (int64_t)((double)current * self->decrease);
    snprintf(self->reason, sizeof(self->reason), "x%.2f after out-of-memory at %lld",
             self->decrease, (long long)current);
  } else if (current == 0) {
    next = self->start > 0 ? self->start : (batch + 3) / 4;
    snprintf(self->reason, sizeof(self->reason), "start");
  } else {
    next = current + step;
    if (self->ceiling > 0 && next >= self->ceiling) next = self->ceiling - 1;
    snprintf(self->reason, sizeof(self->reason), "+%lld after a step that fit",
             (long long)(next - current));
  }
  *micro_batch = clamp(next, 1, batch);
  self->last = *micro_batch;
  return CLHOST_STATUS_OK;
}

static const char* last_reason(void* instance) {
  return ((aimd_t*)instance)->reason;
}

static size_t write_json(void* instance, char* buffer, size_t size) {
  const aimd_t* self = (const aimd_t*)instance;
  const int needed =
      snprintf(buffer, size, "{\"last_micro_batch\": %lld, \"out_of_memory_cuts\": %lld}",
               (long long)self->last, (long long)self->cuts);
  return needed < 0 ? 0 : (size_t)needed;
}

/* Checkpoints (clhost.state/1): what the policy learnt — the task it is in, that task's
 * ceiling, the last size and the cuts so far — so a resumed run continues with the same sizes.
 * Format: five int64 (task, ceiling, last, cuts, reserved 0). */
static clhost_status_t save(void* instance, clhost_state_write_fn write, void* writer_data,
                            clhost_error_t* error) {
  const aimd_t* self = (const aimd_t*)instance;
  const int64_t values[5] = {self->task, self->ceiling, self->last, self->cuts, 0};
  return write(writer_data, values, sizeof(values), error);
}

static clhost_status_t restore(void* instance, const void* bytes, size_t size,
                               clhost_error_t* error) {
  aimd_t* self = (aimd_t*)instance;
  int64_t values[5];
  if (size != sizeof(values)) {
    snprintf(error->message, sizeof(error->message),
             "aimd: saved state has %zu bytes, this version saves %zu", size, sizeof(values));
    return CLHOST_STATUS_INVALID_ARGUMENT;
  }
  memcpy(values, bytes, sizeof(values));
  self->task = (int32_t)values[0];
  self->ceiling = values[1];
  self->last = values[2];
  self->cuts = values[3];
  return CLHOST_STATUS_OK;
}

static const clhost_report_v1_t report = {sizeof(clhost_report_v1_t), write_json};
static const clhost_state_v1_t state_table = {sizeof(clhost_state_v1_t), save, restore};

static const clhost_batch_policy_v1_t policy = {sizeof(clhost_batch_policy_v1_t), choose,
                                                last_reason};

static const void* get_interface(const char* id) {
  if (strcmp(id, CLHOST_INTERFACE_BATCH_POLICY_V1) == 0) return &policy;
  if (strcmp(id, CLHOST_INTERFACE_REPORT_V1) == 0) return &report;
  if (strcmp(id, CLHOST_INTERFACE_STATE_V1) == 0) return &state_table;
  return NULL;
}

static const clhost_plugin_entry_t entry = {sizeof(clhost_plugin_entry_t),
                                            {CLHOST_ABI_VERSION_MAJOR, CLHOST_ABI_VERSION_MINOR},
                                            &descriptor,
                                            NULL,
                                            create,
                                            destroy,
                                            get_interface};

CLHOST_EXPORT const clhost_plugin_entry_t* clhost_plugin_entry(void) {
  return &entry;
}
