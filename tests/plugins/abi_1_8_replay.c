/* Test plug-in: built against the frozen ABI 1.8 header (tests/abi/), as a plug-in compiled before
 * 1.9 existed. A replay plug-in (its buffer: the first 32 samples offered; 16 of them in every
 * step) that plans its memory with the 1.8 answer, which has no replay_samples_per_step or
 * replay_capacity: the 1.9 host must plan the rest of the run, and name its samples as not
 * planned rather than read members the plug-in never wrote. */
#include "../abi/clhost_plugin_1_8.h"
/* Same include guard as the current header: the macro below is built on the frozen 1.8 one. */
#include "test_entry.h"

#include <string.h>

#if CLHOST_ABI_VERSION_MINOR != 8
#error "this plug-in must be built against the frozen 1.8 header"
#endif

enum { kCapacity = 32, kPerStep = 16 };

static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "abi_1_8_replay",
                                                      CLHOST_PLUGIN_KIND_REPLAY,
                                                      "1.8.0",
                                                      "built against ABI 1.8",
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

/* Keeps what it holds and fills the free slots with the first candidates. */
static clhost_status_t select_samples(void* instance, const clhost_replay_candidates_t* offer,
                                      int64_t* keep, int64_t* kept, clhost_error_t* error) {
  int64_t k;
  (void)instance, (void)error;
  *kept = 0;
  for (k = 0; k < offer->stored && *kept < kCapacity; ++k) keep[(*kept)++] = k;
  for (k = 0; k < offer->candidates && *kept < kCapacity; ++k) keep[(*kept)++] = -k - 1;
  return CLHOST_STATUS_OK;
}

static clhost_status_t draw(void* instance, const clhost_replay_draw_t* step, int64_t* slots,
                            int64_t max_count, int64_t* count, clhost_error_t* error) {
  int64_t k;
  (void)instance, (void)error;
  *count = max_count < kPerStep ? max_count : kPerStep;
  for (k = 0; k < *count; ++k) slots[k] = (step->global_step + k) % step->stored;
  return CLHOST_STATUS_OK;
}

/* The host holds the buffer; the plug-in holds nothing and asks for no Fisher pass. */
static clhost_status_t plan(const clhost_host_t* host, const clhost_config_t* config,
                            const clhost_memory_plan_request_t* request,
                            clhost_memory_plan_answer_t* out, clhost_error_t* error) {
  (void)host, (void)config, (void)request, (void)error;
  out->state_bytes = 0;
  out->consolidation_bytes = 0;
  out->advice = NULL;
  out->fisher_samples_per_pass = 0;
  return CLHOST_STATUS_OK;
}

static const clhost_replay_v1_t replay = {sizeof(clhost_replay_v1_t), select_samples, draw, 0};
static const clhost_memory_plan_v1_t memory_plan = {sizeof(clhost_memory_plan_v1_t), plan};

static const void* get_interface(const char* interface_id) {
  if (strcmp(interface_id, CLHOST_INTERFACE_REPLAY_V1) == 0) return &replay;
  if (strcmp(interface_id, CLHOST_INTERFACE_MEMORY_PLAN_V1) == 0) return &memory_plan;
  return NULL;
}

CLHOST_TEST_PLUGIN_ENTRY(descriptor, create, destroy, get_interface)
