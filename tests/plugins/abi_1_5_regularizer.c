/* Test plug-in: built against the frozen ABI 1.5 header (tests/abi/), as a plug-in compiled before
 * 1.6 existed. A regularizer with clhost.state/1 and clhost.memory_plan/1 (4 bytes per parameter)
 * that knows nothing of clhost.collective/1: the 1.6 host must run it, in one process and as the
 * ranks of a data-parallel run, and record its plan. */
#include "../abi/clhost_plugin_1_5.h"
/* Same include guard as the current header: the macro below is built on the frozen 1.5 one. */
#include "test_entry.h"

#include <string.h>

#if CLHOST_ABI_VERSION_MINOR != 5
#error "this plug-in must be built against the frozen 1.5 header"
#endif

static const clhost_config_key_t schema[] = {
    {"strength", CLHOST_CONFIG_TYPE_FLOAT, "0.0", "unused strength", 1, 0.0, 1.0, NULL},
};

static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "abi_1_5_regularizer",
                                                      CLHOST_PLUGIN_KIND_REGULARIZER,
                                                      "1.5.0",
                                                      "built against ABI 1.5",
                                                      "tests",
                                                      schema,
                                                      1};

static int instance_token;

static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  (void)host, (void)config, (void)error;
  *instance = &instance_token;
  return CLHOST_STATUS_OK;
}

static void destroy(void* instance) {
  (void)instance;
}

static clhost_status_t after_backward(void* instance, const clhost_step_info_t* step,
                                      double* penalty, clhost_error_t* error) {
  (void)instance, (void)step, (void)error;
  *penalty = 0.0;
  return CLHOST_STATUS_OK;
}

static clhost_status_t save(void* instance, clhost_state_write_fn write, void* writer_data,
                            clhost_error_t* error) {
  (void)instance, (void)write, (void)writer_data, (void)error;
  return CLHOST_STATUS_OK;
}

static clhost_status_t restore(void* instance, const void* bytes, size_t size,
                               clhost_error_t* error) {
  (void)instance, (void)bytes, (void)error;
  return size == 0 ? CLHOST_STATUS_OK : CLHOST_STATUS_INVALID_ARGUMENT;
}

static void unused_keys(const clhost_host_t* host, const clhost_config_t* config,
                        clhost_unused_key_fn unused, void* sink_data) {
  (void)host, (void)config, (void)unused, (void)sink_data;
}

static clhost_status_t plan(const clhost_host_t* host, const clhost_config_t* config,
                            const clhost_memory_plan_request_t* request,
                            clhost_memory_plan_answer_t* out, clhost_error_t* error) {
  (void)host, (void)config, (void)error;
  int64_t elements = 0;
  for (int64_t i = 0; i < request->parameter_count; ++i) elements += request->parameter_numels[i];
  out->state_bytes = 4 * elements;
  out->consolidation_bytes = 0;
  out->advice = NULL;
  return CLHOST_STATUS_OK;
}

static const clhost_regularizer_v1_t regularizer = {sizeof(clhost_regularizer_v1_t), NULL,
                                                    after_backward, NULL, NULL};
static const clhost_state_v1_t state = {sizeof(clhost_state_v1_t), save, restore};
static const clhost_config_use_v1_t config_use = {sizeof(clhost_config_use_v1_t), unused_keys};
static const clhost_memory_plan_v1_t memory_plan = {sizeof(clhost_memory_plan_v1_t), plan};

static const void* get_interface(const char* interface_id) {
  if (strcmp(interface_id, CLHOST_INTERFACE_REGULARIZER_V1) == 0) return &regularizer;
  if (strcmp(interface_id, CLHOST_INTERFACE_STATE_V1) == 0) return &state;
  if (strcmp(interface_id, CLHOST_INTERFACE_CONFIG_USE_V1) == 0) return &config_use;
  if (strcmp(interface_id, CLHOST_INTERFACE_MEMORY_PLAN_V1) == 0) return &memory_plan;
  return NULL;
}

CLHOST_TEST_PLUGIN_ENTRY(descriptor, create, destroy, get_interface)
