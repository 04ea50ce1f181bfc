/* Test plug-in: a batch policy whose interface table is one member shorter than today's (as a
 * plug-in from before `last_reason` was added would be). Its struct_size says so, and the host
 * must not read or call past it. */
#include <clhost/clhost_plugin.h>

#include <stddef.h>
#include <string.h>
#include "test_entry.h"

static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "short_batch_table",
                                                      CLHOST_PLUGIN_KIND_BATCH_POLICY,
                                                      "0.0.1",
                                                      "an older, shorter batch-policy table",
                                                      "tests",
                                                      NULL,
                                                      0};

static clhost_status_t choose(void* instance, const clhost_batch_request_t* request,
                              int64_t* micro_batch, clhost_error_t* error) {
  (void)instance, (void)error;
  *micro_batch = request->configured_batch_size / 2 > 0 ? request->configured_batch_size / 2 : 1;
  return CLHOST_STATUS_OK;
}

/* A trap: the host must never call it, since struct_size excludes it. */
static const char* trap(void* instance) {
  (void)instance;
  return (const char*)0x1; /* crashes the caller if it reads the string */
}

static const clhost_batch_policy_v1_t policy = {
    (uint32_t)offsetof(clhost_batch_policy_v1_t, last_reason), choose, trap};

static const void* get_interface(const char* id) {
  return strcmp(id, CLHOST_INTERFACE_BATCH_POLICY_V1) == 0 ? &policy : NULL;
}

static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  (void)host, (void)config, (void)error;
  *instance = NULL;
  return CLHOST_STATUS_OK;
}
static void destroy(void* instance) {
  (void)instance;
}
CLHOST_TEST_PLUGIN_ENTRY(descriptor, create, destroy, get_interface)
