/* Test plug-in: claims an ABI major the host does not implement. */
#include <clhost/clhost_plugin.h>

static const clhost_plugin_descriptor_t descriptor = {sizeof(clhost_plugin_descriptor_t),
                                                      "bad_abi",
                                                      CLHOST_PLUGIN_KIND_REGULARIZER,
                                                      "0.0.1",
                                                      "claims ABI 99.0",
                                                      "tests",
                                                      NULL,
                                                      0};
#define MINIMAL_ABI_MAJOR 99
#define MINIMAL_ABI_MINOR 0
#include "minimal_plugin.h"
