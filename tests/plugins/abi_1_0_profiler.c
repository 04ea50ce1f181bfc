/* Test plug-in: built against the frozen ABI 1.0 header (tests/abi/), as a plug-in compiled
 * before 1.1 existed. A 1.1 host must load it and hand it 1.1-sized events, of which it reads
 * only the 1.0 members. At the end of the run it writes what it saw into the run directory. */
#include "../abi/clhost_plugin_1_0.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if CLHOST_ABI_VERSION_MINOR != 0
#error "this plug-in must be built against the frozen 1.0 header"
#endif

static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "abi_1_0_profiler",
                                                      CLHOST_PLUGIN_KIND_PROFILER,
                                                      "1.0.0",
                                                      "built against ABI 1.0",
                                                      "tests",
                                                      NULL,
                                                      0};

typedef struct seen {
  const clhost_host_t* host;
  long events;
  long task_begins;
  uint32_t smallest_event_size;
  int64_t largest_rss;
} seen_t;

static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  seen_t* self = (seen_t*)calloc(1, sizeof(seen_t));
  (void)config, (void)error;
  if (self == NULL) return CLHOST_STATUS_OUT_OF_MEMORY;
  self->host = host;
  self->smallest_event_size = 0xffffffffu;
  *instance = self;
  return CLHOST_STATUS_OK;
}

static void destroy(void* instance) {
  free(instance);
}

static clhost_status_t on_event(void* instance, const clhost_event_t* event,
                                clhost_error_t* error) {
  seen_t* self = (seen_t*)instance;
  const clhost_memory_service_v1_t* memory =
      (const clhost_memory_service_v1_t*)self->host->get_service(self->host,
                                                                 CLHOST_SERVICE_MEMORY_V1);
  clhost_memory_info_t info;
  ++self->events;
  if (event->kind == CLHOST_EVENT_TASK_BEGIN) ++self->task_begins;
  if (event->struct_size < self->smallest_event_size)
    self->smallest_event_size = event->struct_size;
  memset(&info, 0, sizeof(info));
  info.struct_size = sizeof(info);
  if (memory != NULL && memory->get_info(self->host, &info, error) == CLHOST_STATUS_OK &&
      info.rss_bytes > self->largest_rss) {
    self->largest_rss = info.rss_bytes;
  }
  if (event->kind == CLHOST_EVENT_RUN_END) {
    char path[4096];
    FILE* out;
    snprintf(path, sizeof(path), "%s/abi_1_0_profiler.txt", event->run_dir);
    out = fopen(path, "w");
    if (out == NULL) {
      snprintf(error->message, sizeof(error->message), "cannot write %.900s", path);
      return CLHOST_STATUS_IO;
    }
    fprintf(out,
            "events %ld\ntask_begins %ld\nsmallest_event_size %u\nown_event_size %zu\n"
            "largest_rss %lld\n",
            self->events, self->task_begins, self->smallest_event_size, sizeof(clhost_event_t),
            (long long)self->largest_rss);
    fclose(out);
  }
  return CLHOST_STATUS_OK;
}

static const clhost_profiler_v1_t profiler = {sizeof(clhost_profiler_v1_t), on_event};

static const void* get_interface(const char* id) {
  return strcmp(id, CLHOST_INTERFACE_PROFILER_V1) == 0 ? &profiler : NULL;
}

static const clhost_plugin_entry_t entry = {sizeof(clhost_plugin_entry_t),
                                            {CLHOST_ABI_VERSION_MAJOR, CLHOST_ABI_VERSION_MINOR},
                                            &descriptor,
                                            NULL,
                                            create,
                                            destroy,
                                            get_interface};

CLHOST_EXPORT const clhost_plugin_entry_t* clhost_plugin_entry(void) {
  return &entry;
}
