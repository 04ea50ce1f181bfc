/* Test plug-in: at one optimizer step it allocates and touches a known number of bytes, holds
 * them, frees them, and marks each moment on the timeline (clhost.events/1), so a profiler test
 * can check that the sampler saw the allocation and its release. It can also fail on purpose. */
#define _POSIX_C_SOURCE 200809L
#include <clhost/clhost_plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "test_entry.h"

static const clhost_config_key_t schema[] = {
    {"at_step", CLHOST_CONFIG_TYPE_INT, "5", "global optimizer step of the allocation", 0, 0, 0,
     NULL},
    {"bytes", CLHOST_CONFIG_TYPE_INT, "268435456", "bytes to allocate and touch", 0, 0, 0, NULL},
    {"hold_ms", CLHOST_CONFIG_TYPE_INT, "300", "how long to hold, and to wait after the free", 0, 0,
     0, NULL},
    {"fail_at_step", CLHOST_CONFIG_TYPE_INT, "-1", "global step at which to fail; -1: never", 0, 0,
     0, NULL},
};
static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "alloc_probe",
                                                      CLHOST_PLUGIN_KIND_REGULARIZER,
                                                      "0.0.1",
                                                      "allocates a known amount once",
                                                      "tests",
                                                      schema,
                                                      sizeof(schema) / sizeof(schema[0])};

typedef struct probe {
  const clhost_host_t* host;
  const clhost_events_service_v1_t* events;
  int64_t at_step, bytes, hold_ms, fail_at_step;
} probe_t;

static void sleep_ms(int64_t ms) {
  struct timespec pause = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  nanosleep(&pause, NULL);
}

static clhost_status_t mark(probe_t* self, const char* label, clhost_error_t* error) {
  return self->events->mark(self->host, label, error);
}

static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  probe_t* self = (probe_t*)calloc(1, sizeof(probe_t));
  if (self == NULL) return CLHOST_STATUS_OUT_OF_MEMORY;
  self->host = host;
  self->events =
      (const clhost_events_service_v1_t*)host->get_service(host, CLHOST_SERVICE_EVENTS_V1);
  if (self->events == NULL) {
    free(self);
    snprintf(error->message, sizeof(error->message), "host lacks %s", CLHOST_SERVICE_EVENTS_V1);
    return CLHOST_STATUS_UNSUPPORTED;
  }
  self->at_step = clhost_config_find(config, "at_step")->int_value;
  self->bytes = clhost_config_find(config, "bytes")->int_value;
  self->hold_ms = clhost_config_find(config, "hold_ms")->int_value;
  self->fail_at_step = clhost_config_find(config, "fail_at_step")->int_value;
  *instance = self;
  return CLHOST_STATUS_OK;
}

static void destroy(void* instance) {
  free(instance);
}

static clhost_status_t after_backward(void* instance, const clhost_step_info_t* step,
                                      double* penalty, clhost_error_t* error) {
  probe_t* self = (probe_t*)instance;
  char* block;
  clhost_status_t status;
  *penalty = 0.0;
  if (step->global_step == self->fail_at_step) {
    snprintf(error->message, sizeof(error->message), "alloc_probe: failing at step %lld as asked",
             (long long)step->global_step);
    return CLHOST_STATUS_INTERNAL;
  }
  if (step->global_step != self->at_step) return CLHOST_STATUS_OK;
  if ((status = mark(self, "probe allocate", error)) != CLHOST_STATUS_OK) return status;
  block = (char*)malloc((size_t)self->bytes);
  if (block == NULL) return CLHOST_STATUS_OUT_OF_MEMORY;
  memset(block, 1, (size_t)self->bytes);
  if ((status = mark(self, "probe allocated", error)) != CLHOST_STATUS_OK) return status;
  sleep_ms(self->hold_ms);
  if ((status = mark(self, "probe free", error)) != CLHOST_STATUS_OK) return status;
  free(block);
  sleep_ms(self->hold_ms);
  return mark(self, "probe freed", error);
}

static const clhost_regularizer_v1_t regularizer = {sizeof(clhost_regularizer_v1_t), NULL,
                                                    after_backward, NULL, NULL};

static const void* get_interface(const char* id) {
  return strcmp(id, CLHOST_INTERFACE_REGULARIZER_V1) == 0 ? &regularizer : NULL;
}

CLHOST_TEST_PLUGIN_ENTRY(descriptor, create, destroy, get_interface)
