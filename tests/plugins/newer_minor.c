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
static const clhost_plugin_entry_t entry = {
    sizeof(clhost_plugin_entry_t),
    {CLHOST_ABI_VERSION_MAJOR, CLHOST_ABI_VERSION_MINOR + 1},
    &descriptor,
    NULL,
    create,
    destroy,
    get_interface};
CLHOST_EXPORT const clhost_plugin_entry_t* clhost_plugin_entry(void) {
  return &entry;
}
