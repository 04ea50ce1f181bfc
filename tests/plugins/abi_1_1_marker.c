/* Test plug-in: built against the frozen ABI 1.1 header (tests/abi/), as a plug-in compiled before
 * 1.2 existed. It uses 1.1's events service: a mark at every task end, which the 1.2 host must
 * deliver back to it as a USER event carrying its id. At the end it writes what it saw. */
#include "../abi/clhost_plugin_1_1.h"
/* Same include guard as the current header: the macro below is built on the frozen 1.1 one. */
#include "test_entry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if CLHOST_ABI_VERSION_MINOR != 1
#error "this plug-in must be built against the frozen 1.1 header"
#endif

static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "abi_1_1_marker",
                                                      CLHOST_PLUGIN_KIND_PROFILER,
                                                      "1.1.0",
                                                      "built against ABI 1.1",
                                                      "tests",
                                                      NULL,
                                                      0};

typedef struct seen {
  const clhost_host_t* host;
  long marks_sent;
  long own_marks_seen;
} seen_t;

static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  seen_t* self = (seen_t*)calloc(1, sizeof(seen_t));
  (void)config, (void)error;
  if (self == NULL) return CLHOST_STATUS_OUT_OF_MEMORY;
  self->host = host;
  *instance = self;
  return CLHOST_STATUS_OK;
}

static void destroy(void* instance) {
  free(instance);
}

static clhost_status_t on_event(void* instance, const clhost_event_t* event,
                                clhost_error_t* error) {
  seen_t* self = (seen_t*)instance;
  if (event->kind == CLHOST_EVENT_TASK_END) {
    const clhost_events_service_v1_t* events =
        (const clhost_events_service_v1_t*)self->host->get_service(self->host,
                                                                   CLHOST_SERVICE_EVENTS_V1);
    if (events == NULL) {
      snprintf(error->message, sizeof(error->message), "no clhost.events/1 service");
      return CLHOST_STATUS_UNSUPPORTED;
    }
    if (events->mark(self->host, "abi 1.1 mark", error) != CLHOST_STATUS_OK) {
      return CLHOST_STATUS_INTERNAL;
    }
    ++self->marks_sent;
  }
  if (event->kind == CLHOST_EVENT_USER && CLHOST_HAS_MEMBER(event, clhost_event_t, source) &&
      event->source != NULL && strcmp(event->source, "abi_1_1_marker") == 0) {
    ++self->own_marks_seen;
  }
  if (event->kind == CLHOST_EVENT_RUN_END) {
    char path[4096];
    FILE* out;
    snprintf(path, sizeof(path), "%s/abi_1_1_marker.txt", event->run_dir);
    out = fopen(path, "w");
    if (out == NULL) return CLHOST_STATUS_IO;
    fprintf(out, "marks_sent %ld\nown_marks_seen %ld\n", self->marks_sent, self->own_marks_seen);
    fclose(out);
  }
  return CLHOST_STATUS_OK;
}

static const clhost_profiler_v1_t profiler = {sizeof(clhost_profiler_v1_t), on_event};

static const void* get_interface(const char* id) {
  return strcmp(id, CLHOST_INTERFACE_PROFILER_V1) == 0 ? &profiler : NULL;
}

CLHOST_TEST_PLUGIN_ENTRY(descriptor, create, destroy, get_interface)
