/* The exported entry every C test plug-in needs, built against this tree's ABI version, so that
 * each test plug-in's file says only what it tests. */
#include <clhost/clhost_plugin.h>

#define CLHOST_TEST_PLUGIN_ENTRY(DESCRIPTOR, CREATE, DESTROY, GET_INTERFACE) \
  static const clhost_plugin_entry_t entry = {                               \
      sizeof(clhost_plugin_entry_t),                                         \
      {CLHOST_ABI_VERSION_MAJOR, CLHOST_ABI_VERSION_MINOR},                  \
      &(DESCRIPTOR),                                                         \
      NULL,                                                                  \
      CREATE,                                                                \
      DESTROY,                                                               \
      GET_INTERFACE};                                                        \
  CLHOST_EXPORT const clhost_plugin_entry_t* clhost_plugin_entry(void) {     \
    return &entry;                                                           \
  }
