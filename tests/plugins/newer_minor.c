/* Test plug-in: built against a newer minor ABI than the host implements. */
#include <clhost/clhost_plugin.h>

static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "newer_minor",
                                                      CLHOST_PLUGIN_KIND_PROFILER,
                                                      "0.0.1",
                                                      "claims a newer minor ABI",
                                                      "tests",
                                                      NULL,
                                                      0};
#define MINIMAL_ABI_MAJOR CLHOST_ABI_VERSION_MAJOR
#define MINIMAL_ABI_MINOR (CLHOST_ABI_VERSION_MINOR + 1)
#include "minimal_plugin.h"
