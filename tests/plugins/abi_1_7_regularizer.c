/* Test plug-in: built against the frozen ABI 1.7 header (tests/abi/), as a plug-in compiled before
 * 1.8 existed. A regularizer that plans its memory (clhost.memory_plan/1) with the 1.7 answer,
 * which has no fisher_samples_per_pass: the 1.8 host must plan its state, and plan the Fisher pass
 * without activations rather than read a member the plug-in never wrote. */
#include "../abi/clhost_plugin_1_7.h"
/* Same include guard as the current header: the macro below is built on the frozen 1.7 one. */
#include "test_entry.h"

#include <string.h>

#if CLHOST_ABI_VERSION_MINOR != 7
#error "this plug-in must be built against the frozen 1.7 header"
#endif

static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "abi_1_7_regularizer",
                                                      CLHOST_PLUGIN_KIND_REGULARIZER,
                                                      "1.7.0",
                                                      "built against ABI 1.7",
                                                      "tests",
                                                      NULL,
                                                      0};

static int the_instance;

static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  (void)host, (void)config, (void)error;
  *instance = &the_instance;
  return CLHOST_STATUS_OK;
}

static void destroy(void* instance) {
  (void)instance;
}

/* One float32 copy of the parameters, as an L2 anchor would hold. */
static clhost_status_t plan(const clhost_host_t* host, const clhost_config_t* config,
                            const clhost_memory_plan_request_t* request,
                            clhost_memory_plan_answer_t* out, clhost_error_t* error) {
  int64_t i;
  (void)host, (void)config, (void)error;
  out->state_bytes = 0;
  out->consolidation_bytes = 0;
  out->advice = NULL;
  for (i = 0; i < request->parameter_count; ++i) {
    out->state_bytes += 4 * request->parameter_numels[i];
  }
  return CLHOST_STATUS_OK;
}

static const clhost_regularizer_v1_t regularizer = {sizeof(clhost_regularizer_v1_t), NULL, NULL,
                                                    NULL, NULL};
static const clhost_memory_plan_v1_t memory_plan = {sizeof(clhost_memory_plan_v1_t), plan};

static const void* get_interface(const char* interface_id) {
  if (strcmp(interface_id, CLHOST_INTERFACE_REGULARIZER_V1) == 0) return &regularizer;
  if (strcmp(interface_id, CLHOST_INTERFACE_MEMORY_PLAN_V1) == 0) return &memory_plan;
  return NULL;
}

CLHOST_TEST_PLUGIN_ENTRY(descriptor, create, destroy, get_interface)
