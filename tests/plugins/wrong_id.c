/* Test plug-in: the file says clhost_wrong_id.so but the descriptor says another id. */
#include <clhost/clhost_plugin.h>

static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "something_else",
                                                      CLHOST_PLUGIN_KIND_PROFILER,
                                                      "0.0.1",
                                                      "id differs from file name",
                                                      "tests",
                                                      NULL,
                                                      0};
#define MINIMAL_ABI_MAJOR CLHOST_ABI_VERSION_MAJOR
#define MINIMAL_ABI_MINOR CLHOST_ABI_VERSION_MINOR
#include "minimal_plugin.h"
