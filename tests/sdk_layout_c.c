/* Compiled as C11 with -Wpedantic -Werror: the ABI header must be valid C. Reports the layout
 * a C compiler sees, which test_sdk_header compares with the C++ view. */
#include <clhost/clhost_plugin.h>

#include <stddef.h>

size_t clhost_test_c_layout(int which);

size_t clhost_test_c_layout(int which) {
  switch (which) {
    case 0: return sizeof(clhost_plugin_entry_t);
    case 1: return sizeof(clhost_plugin_descriptor_t);
    case 2: return sizeof(clhost_host_t);
    case 3: return sizeof(clhost_parameter_t);
    case 4: return sizeof(clhost_memory_info_t);
    case 5: return sizeof(clhost_event_t);
    case 6: return sizeof(clhost_batch_request_t);
    case 7: return sizeof(clhost_regularizer_v1_t);
    case 8: return offsetof(clhost_plugin_entry_t, get_interface);
    case 9: return sizeof(clhost_config_value_t);
    case 10: return sizeof(clhost_events_service_v1_t);
    case 11: {
      /* A 1.0-sized event (no `source`) and a 1.1 one, as a reader must tell them apart. */
      clhost_event_t event;
      int old_host;
      int new_host;
      event.struct_size = (uint32_t)offsetof(clhost_event_t, source);
      old_host = CLHOST_HAS_MEMBER(&event, clhost_event_t, source);
      event.struct_size = (uint32_t)sizeof(clhost_event_t);
      new_host = CLHOST_HAS_MEMBER(&event, clhost_event_t, source);
      return (size_t)(old_host == 0 && new_host != 0);
    }
    default: return 0;
  }
}
