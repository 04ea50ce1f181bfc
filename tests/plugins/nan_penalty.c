/* Test plug-in: a regularizer that reports a non-finite penalty at one global step — or, with
 * poison_gradient, writes NaN into a gradient so the next step's data loss is NaN — so the tests
 * can check that the host stops before the update and names the term. */
#include <clhost/clhost_plugin.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "test_entry.h"

static const clhost_config_key_t schema[] = {
    {"at_step", CLHOST_CONFIG_TYPE_INT, "7", "global step of the bad penalty", 0, 0, 0, NULL},
    {"infinite", CLHOST_CONFIG_TYPE_BOOL, "false", "report +inf instead of NaN", 0, 0, 0, NULL},
    {"poison_gradient", CLHOST_CONFIG_TYPE_BOOL, "false",
     "write NaN into the first parameter's gradient instead", 0, 0, 0, NULL},
};
static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "nan_penalty",
                                                      CLHOST_PLUGIN_KIND_REGULARIZER,
                                                      "0.0.1",
                                                      "a penalty that goes non-finite",
                                                      "tests",
                                                      schema,
                                                      sizeof(schema) / sizeof(schema[0])};

typedef struct bad {
  const clhost_host_t* host;
  int64_t at_step;
  int infinite;
  int poison_gradient;
} bad_t;

static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  bad_t* self = (bad_t*)calloc(1, sizeof(bad_t));
  (void)error;
  if (self == NULL) return CLHOST_STATUS_OUT_OF_MEMORY;
  self->host = host;
  self->poison_gradient = clhost_config_find(config, "poison_gradient")->bool_value;
  self->at_step = clhost_config_find(config, "at_step")->int_value;
  self->infinite = clhost_config_find(config, "infinite")->bool_value;
  *instance = self;
  return CLHOST_STATUS_OK;
}

static void destroy(void* instance) {
  free(instance);
}

static clhost_status_t after_backward(void* instance, const clhost_step_info_t* step,
                                      double* penalty, clhost_error_t* error) {
  const bad_t* self = (const bad_t*)instance;
  *penalty = 0.0;
  if (step->global_step != self->at_step) return CLHOST_STATUS_OK;
  if (self->poison_gradient) {
    const clhost_params_service_v1_t* params =
        (const clhost_params_service_v1_t*)self->host->get_service(self->host,
                                                                   CLHOST_SERVICE_PARAMS_V1);
    clhost_parameter_t parameter;
    clhost_status_t status = params->get(self->host, 0, &parameter, error);
    if (status != CLHOST_STATUS_OK) return status;
    ((float*)parameter.grad.data)[0] = NAN;
    return CLHOST_STATUS_OK;
  }
  *penalty = self->infinite ? HUGE_VAL : NAN;
  return CLHOST_STATUS_OK;
}

static const clhost_regularizer_v1_t regularizer = {sizeof(clhost_regularizer_v1_t), NULL,
                                                    after_backward, NULL, NULL};

static const void* get_interface(const char* id) {
  return strcmp(id, CLHOST_INTERFACE_REGULARIZER_V1) == 0 ? &regularizer : NULL;
}

CLHOST_TEST_PLUGIN_ENTRY(descriptor, create, destroy, get_interface)
