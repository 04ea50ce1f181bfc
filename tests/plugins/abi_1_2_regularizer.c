/* Test plug-in: built against the frozen ABI 1.2 header (tests/abi/), as a plug-in compiled before
 * 1.3 existed. A regularizer that checks at every task end that the 1.3 host still offers 1.2's
 * sample_grads service. It has no clhost.state/1 interface (1.2 had none), so a run that uses it
 * is "not resumable": `clhost run --resume` must refuse it unless --resume-anyway. */
#include "../abi/clhost_plugin_1_2.h"
/* Same include guard as the current header: the macro below is built on the frozen 1.2 one. */
#include "test_entry.h"

#include <stdio.h>
#include <string.h>

#if CLHOST_ABI_VERSION_MINOR != 2
#error "this plug-in must be built against the frozen 1.2 header"
#endif

static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "abi_1_2_regularizer",
                                                      CLHOST_PLUGIN_KIND_REGULARIZER,
                                                      "1.2.0",
                                                      "built against ABI 1.2",
                                                      "tests",
                                                      NULL,
                                                      0};

static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  (void)config, (void)error;
  *instance = (void*)host;
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

static clhost_status_t on_task_end(void* instance, const clhost_task_info_t* task,
                                   clhost_error_t* error) {
  const clhost_host_t* host = (const clhost_host_t*)instance;
  (void)task;
  if (host->get_service(host, CLHOST_SERVICE_SAMPLE_GRADS_V1) == NULL) {
    snprintf(error->message, sizeof(error->message), "no clhost.sample_grads/1 service");
    return CLHOST_STATUS_UNSUPPORTED;
  }
  return CLHOST_STATUS_OK;
}

static const clhost_regularizer_v1_t regularizer = {sizeof(clhost_regularizer_v1_t), NULL,
                                                    after_backward, on_task_end, NULL};

static const void* get_interface(const char* interface_id) {
  return strcmp(interface_id, CLHOST_INTERFACE_REGULARIZER_V1) == 0 ? &regularizer : NULL;
}

CLHOST_TEST_PLUGIN_ENTRY(descriptor, create, destroy, get_interface)
