/* Test plug-in: a regularizer that appends "<tag> <hook>" to the file named by the environment
 * variable CLHOST_TEST_RECORD at every hook, and returns its configured `penalty`, so a test can
 * see which hooks ran, for which instance, in which order (test_trainer_parts). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_entry.h"

static const clhost_config_key_t schema[] = {
    {"tag", CLHOST_CONFIG_TYPE_STRING, "\"x\"", "name written with every hook", 0, 0, 0, NULL},
    {"penalty", CLHOST_CONFIG_TYPE_FLOAT, "0.0", "penalty returned by after_backward", 0, 0, 0,
     NULL},
    {"infinite", CLHOST_CONFIG_TYPE_BOOL, "false", "return an infinite penalty instead", 0, 0, 0,
     NULL},
};

static const clhost_plugin_descriptor_t descriptor = {
    sizeof(clhost_plugin_descriptor_t), "call_recorder", CLHOST_PLUGIN_KIND_REGULARIZER, "1.0.0",
    "records its hooks", "tests", schema, 3};

typedef struct recorder {
  char tag[64];
  double penalty;
} recorder_t;

static void record(const recorder_t* self, const char* hook) {
  const char* path = getenv("CLHOST_TEST_RECORD");
  if (path == NULL) return;
  FILE* file = fopen(path, "a");
  if (file == NULL) return;
  fprintf(file, "%s %s\n", self->tag, hook);
  fclose(file);
}

static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  recorder_t* self = (recorder_t*)calloc(1, sizeof(recorder_t));
  (void)host, (void)error;
  if (self == NULL) return CLHOST_STATUS_OUT_OF_MEMORY;
  snprintf(self->tag, sizeof(self->tag), "%s", clhost_config_find(config, "tag")->string_value);
  self->penalty = clhost_config_find(config, "infinite")->bool_value
                      ? INFINITY
                      : clhost_config_find(config, "penalty")->float_value;
  *instance = self;
  return CLHOST_STATUS_OK;
}

static void destroy(void* instance) {
  free(instance);
}

static clhost_status_t on_task_begin(void* instance, const clhost_task_info_t* task,
                                     clhost_error_t* error) {
  (void)task, (void)error;
  record((const recorder_t*)instance, "task_begin");
  return CLHOST_STATUS_OK;
}

static clhost_status_t after_backward(void* instance, const clhost_step_info_t* step,
                                      double* penalty, clhost_error_t* error) {
  (void)step, (void)error;
  record((const recorder_t*)instance, "after_backward");
  *penalty = ((const recorder_t*)instance)->penalty;
  return CLHOST_STATUS_OK;
}

static clhost_status_t on_task_end(void* instance, const clhost_task_info_t* task,
                                   clhost_error_t* error) {
  (void)task, (void)error;
  record((const recorder_t*)instance, "task_end");
  return CLHOST_STATUS_OK;
}

static const clhost_regularizer_v1_t regularizer = {sizeof(clhost_regularizer_v1_t), on_task_begin,
                                                    after_backward, on_task_end, NULL};

static const void* get_interface(const char* interface_id) {
  return strcmp(interface_id, CLHOST_INTERFACE_REGULARIZER_V1) == 0 ? &regularizer : NULL;
}

CLHOST_TEST_PLUGIN_ENTRY(descriptor, create, destroy, get_interface)
