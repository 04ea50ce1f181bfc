/* Test plug-in: a regularizer whose saved state its restore refuses (as a plug-in would bytes
 * from another version of itself), so the tests can check that --resume exits 3 ("cannot
 * resume") and names the plug-in and its message. */
#include <clhost/clhost_plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "test_entry.h"

static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "refuses_restore",
                                                      CLHOST_PLUGIN_KIND_REGULARIZER,
                                                      "0.0.1",
                                                      "saves a state it then refuses",
                                                      "tests",
                                                      NULL,
                                                      0};

static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  (void)host;
  (void)config;
  (void)error;
  *instance = malloc(1);
  return *instance == NULL ? CLHOST_STATUS_OUT_OF_MEMORY : CLHOST_STATUS_OK;
}

static void destroy(void* instance) {
  free(instance);
}

static clhost_status_t after_backward(void* instance, const clhost_step_info_t* step,
                                      double* penalty, clhost_error_t* error) {
  (void)instance;
  (void)step;
  (void)error;
  *penalty = 0.0;
  return CLHOST_STATUS_OK;
}

static clhost_status_t save(void* instance, clhost_state_write_fn write, void* writer_data,
                            clhost_error_t* error) {
  (void)instance;
  return write(writer_data, "v0", 2, error);
}

static clhost_status_t restore(void* instance, const void* bytes, size_t size,
                               clhost_error_t* error) {
  (void)instance;
  (void)bytes;
  snprintf(error->message, sizeof(error->message), "refuses_restore: %zu bytes of an older format",
           size);
  return CLHOST_STATUS_INVALID_ARGUMENT;
}

static const clhost_regularizer_v1_t regularizer = {sizeof(clhost_regularizer_v1_t), NULL,
                                                    after_backward, NULL, NULL};
static const clhost_state_v1_t state = {sizeof(clhost_state_v1_t), save, restore};

static const void* get_interface(const char* id) {
  if (strcmp(id, CLHOST_INTERFACE_REGULARIZER_V1) == 0) return &regularizer;
  if (strcmp(id, CLHOST_INTERFACE_STATE_V1) == 0) return &state;
  return NULL;
}

CLHOST_TEST_PLUGIN_ENTRY(descriptor, create, destroy, get_interface)
