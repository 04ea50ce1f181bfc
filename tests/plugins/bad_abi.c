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
    sizeof(clhost_plugin_entry_t), {99, 0}, &descriptor, NULL, create, destroy, get_interface};
CLHOST_EXPORT const clhost_plugin_entry_t* clhost_plugin_entry(void) {
  return &entry;
}
