/* Test plug-in: a regularizer with statistics of its own, reduced through clhost.collective/1
 * (ABI 1.6). After each task every rank all-reduces [rank + 1, 1] (expects the sums over the
 * ranks) and broadcasts [rank] from the last rank (expects world_size - 1), and checks that a
 * tensor the service cannot use is refused with INVALID_ARGUMENT. Any other outcome fails the
 * run; what it saw is logged on rank 0 ("collective: ..."). */
#include <clhost/clhost_plugin.h>
#include <stdio.h>
#include <string.h>

#include "test_entry.h"

static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "collective_probe",
                                                      CLHOST_PLUGIN_KIND_REGULARIZER,
                                                      "1.6.0",
                                                      "checks clhost.collective/1",
                                                      "tests",
                                                      NULL,
                                                      0};

typedef struct probe {
  const clhost_host_t* host;
} probe_t;

static probe_t the_probe;

static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  (void)config, (void)error;
  the_probe.host = host;
  *instance = &the_probe;
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

static DLTensor vector_of(void* data, int64_t* shape, uint8_t code, uint8_t bits) {
  DLTensor tensor;
  memset(&tensor, 0, sizeof(tensor));
  tensor.data = data;
  tensor.device.device_type = kDLCPU;
  tensor.ndim = 1;
  tensor.dtype.code = code;
  tensor.dtype.bits = bits;
  tensor.dtype.lanes = 1;
  tensor.shape = shape;
  return tensor;
}

static clhost_status_t fail(clhost_error_t* error, const char* what) {
  snprintf(error->message, sizeof(error->message), "collective_probe: %s", what);
  return CLHOST_STATUS_INTERNAL;
}

static clhost_status_t on_task_end(void* instance, const clhost_task_info_t* task,
                                   clhost_error_t* error) {
  const clhost_host_t* host = ((probe_t*)instance)->host;
  const clhost_collective_service_v1_t* collective =
      (const clhost_collective_service_v1_t*)host->get_service(host, CLHOST_SERVICE_COLLECTIVE_V1);
  if (collective == NULL) return fail(error, "no clhost.collective/1");
  const int32_t rank = collective->rank(host);
  const int32_t world = collective->world_size(host);
  double sums[2] = {rank + 1.0, 1.0};
  int64_t two = 2;
  DLTensor sum_tensor = vector_of(sums, &two, kDLFloat, 64);
  clhost_status_t status = collective->all_reduce_sum(host, &sum_tensor, error);
  if (status != CLHOST_STATUS_OK) return status;
  if (sums[0] != world * (world + 1) / 2.0 || sums[1] != (double)world) {
    return fail(error, "all_reduce_sum gave the wrong sums");
  }
  int64_t value = rank;
  int64_t one = 1;
  DLTensor broadcast_tensor = vector_of(&value, &one, kDLInt, 64);
  status = collective->broadcast(host, &broadcast_tensor, world - 1, error);
  if (status != CLHOST_STATUS_OK) return status;
  if (value != world - 1) return fail(error, "broadcast did not give the root's value");
  /* Every other element of a vector: refused before anything is sent. */
  float strided[4] = {0};
  int64_t stride = 2;
  DLTensor bad = vector_of(strided, &two, kDLFloat, 32);
  bad.strides = &stride;
  clhost_error_t refused;
  memset(&refused, 0, sizeof(refused));
  if (collective->all_reduce_sum(host, &bad, &refused) != CLHOST_STATUS_INVALID_ARGUMENT) {
    return fail(error, "a strided tensor was not refused");
  }
  const clhost_log_service_v1_t* log =
      (const clhost_log_service_v1_t*)host->get_service(host, CLHOST_SERVICE_LOG_V1);
  char line[160];
  snprintf(line, sizeof(line), "collective: task %u, rank %d of %d, sums %.0f %.0f, broadcast %lld",
           task->task_index + 1, rank, world, sums[0], sums[1], (long long)value);
  if (log != NULL) log->log(host, CLHOST_LOG_WARNING, line);
  return CLHOST_STATUS_OK;
}

static const clhost_regularizer_v1_t regularizer = {sizeof(clhost_regularizer_v1_t), NULL,
                                                    after_backward, on_task_end, NULL};

static const void* get_interface(const char* interface_id) {
  if (strcmp(interface_id, CLHOST_INTERFACE_REGULARIZER_V1) == 0) return &regularizer;
  return NULL;
}

CLHOST_TEST_PLUGIN_ENTRY(descriptor, create, destroy, get_interface)
