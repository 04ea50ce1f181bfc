// Test plug-in written with the C++ helper: its constructor throws, which must arrive at the
// host as a status code plus the message, not as an exception.
#include <clhost/plugin.hpp>

namespace {

const clhost_config_key_t kSchema[] = {
    {"reason", CLHOST_CONFIG_TYPE_STRING, "\"no GPU found\"", "why create fails", 0, 0, 0, nullptr},
    {"strength", CLHOST_CONFIG_TYPE_FLOAT, "1.0", "a bounded number", 1, 0.0, 10.0, nullptr},
    {"mode", CLHOST_CONFIG_TYPE_STRING, "\"a\"", "a choice", 0, 0, 0, "a|b"},
    {"fail", CLHOST_CONFIG_TYPE_BOOL, "true", "whether create fails", 0, 0, 0, nullptr},
};
const clhost_plugin_descriptor_t kDescriptor{sizeof(clhost_plugin_descriptor_t),
                                             "failing_create",
                                             CLHOST_PLUGIN_KIND_REGULARIZER,
                                             "0.0.1",
                                             "throws from its constructor",
                                             "tests",
                                             kSchema,
                                             4};

class FailingCreate : public clhost::sdk::Regularizer {
 public:
  FailingCreate(const clhost_host_t* host, const clhost::sdk::Config& config) : Regularizer(host) {
    if (config.get_bool("fail")) {
      throw clhost::sdk::Error("cannot start: " + config.get_string("reason"),
                               CLHOST_STATUS_INVALID_ARGUMENT);
    }
  }
  double after_backward(const clhost_step_info_t& /*step*/) override { return 0.0; }
};

}  // namespace

CLHOST_DEFINE_PLUGIN(FailingCreate, kDescriptor, nullptr)
