/* Test plug-in: built against the frozen ABI 1.6 header (tests/abi/), as a plug-in compiled before
 * 1.7 existed. A resumable regularizer that uses clhost.collective/1 (new in 1.6) and knows
 * nothing of outputs, snapshots or replay: the 1.7 host must run it beside the plug-ins that use
 * them, and refuse nothing. */
#include "../abi/clhost_plugin_1_6.h"
/* Same include guard as the current header: the macro below is built on the frozen 1.6 one. */
#include "test_entry.h"

#include <string.h>

#if CLHOST_ABI_VERSION_MINOR != 6
#error "this plug-in must be built against the frozen 1.6 header"
#endif

static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "abi_1_6_regularizer",
                                                      CLHOST_PLUGIN_KIND_REGULARIZER,
                                                      "1.6.0",
                                                      "built against ABI 1.6",
                                                      "tests",
                                                      NULL,
                                                      0};

typedef struct ranks {
  const clhost_host_t* host;
  const clhost_collective_service_v1_t* collective;
} ranks_t;

static ranks_t the_instance;

static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  (void)config;
  the_instance.host = host;
  the_instance.collective =
      (const clhost_collective_service_v1_t*)host->get_service(host, CLHOST_SERVICE_COLLECTIVE_V1);
  if (the_instance.collective == NULL) {
    strcpy(error->message, "abi_1_6_regularizer: no clhost.collective/1");
    return CLHOST_STATUS_UNSUPPORTED;
  }
  *instance = &the_instance;
  return CLHOST_STATUS_OK;
}

static void destroy(void* instance) {
  (void)instance;
}

/* Every rank adds 1: the sum is the world size, or the host's collective is broken. */
static clhost_status_t task_end(void* instance, const clhost_task_info_t* task,
                                clhost_error_t* error) {
  ranks_t* self = (ranks_t*)instance;
  double one = 1.0;
  int64_t shape[1] = {1};
  DLTensor tensor;
  clhost_status_t status;
  (void)task;
  memset(&tensor, 0, sizeof(tensor));
  tensor.data = &one;
  tensor.device.device_type = kDLCPU;
  tensor.ndim = 1;
  tensor.dtype.code = kDLFloat;
  tensor.dtype.bits = 64;
  tensor.dtype.lanes = 1;
  tensor.shape = shape;
  status = self->collective->all_reduce_sum(self->host, &tensor, error);
  if (status == CLHOST_STATUS_OK && one != (double)self->collective->world_size(self->host)) {
    strcpy(error->message, "abi_1_6_regularizer: the ranks' sum is not the world size");
    return CLHOST_STATUS_INTERNAL;
  }
  return status;
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

static const clhost_regularizer_v1_t regularizer = {sizeof(clhost_regularizer_v1_t), NULL, NULL,
                                                    task_end, NULL};
static const clhost_state_v1_t state = {sizeof(clhost_state_v1_t), save, restore};

static const void* get_interface(const char* interface_id) {
  if (strcmp(interface_id, CLHOST_INTERFACE_REGULARIZER_V1) == 0) return &regularizer;
  if (strcmp(interface_id, CLHOST_INTERFACE_STATE_V1) == 0) return &state;
  return NULL;
}

CLHOST_TEST_PLUGIN_ENTRY(descriptor, create, destroy, get_interface)
