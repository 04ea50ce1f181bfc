/* Shared by the C test plug-ins: a plug-in that does nothing, so that each test file states only
 * what it gets wrong (its descriptor or its ABI version). Define MINIMAL_ABI_MAJOR/MINOR and
 * `descriptor` before including. */
#include <clhost/clhost_plugin.h>

static const void* get_interface(const char* id) {
  (void)id;
  return NULL;
}
static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                              void** instance, clhost_error_t* error) {
  (void)host, (void)config, (void)instance, (void)error;
  return CLHOST_STATUS_OK;
}
static void destroy(void* instance) {
  (void)instance;
}
static const clhost_plugin_entry_t entry = {sizeof(clhost_plugin_entry_t),
                                            {MINIMAL_ABI_MAJOR, MINIMAL_ABI_MINOR},
                                            &descriptor,
                                            NULL,
                                            create,
                                            destroy,
                                            get_interface};
CLHOST_EXPORT const clhost_plugin_entry_t* clhost_plugin_entry(void) {
  return &entry;
}
