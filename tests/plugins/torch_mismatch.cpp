// Test plug-in: declares a LibTorch build fingerprint that differs from the host's.
#include <clhost/plugin.hpp>

namespace {
const clhost_plugin_descriptor_t kDescriptor{sizeof(clhost_plugin_descriptor_t),
                                             "torch_mismatch",
                                             CLHOST_PLUGIN_KIND_PROFILER,
                                             "0.0.1",
                                             "fingerprint from another LibTorch",
                                             "tests",
                                             nullptr,
                                             0};
const clhost_build_fingerprint_t kFingerprint{sizeof(clhost_build_fingerprint_t), "0.9.9", 0,
                                              "gcc 4.8"};
class Silent : public clhost::sdk::Profiler {
 public:
  Silent(const clhost_host_t* host, const clhost::sdk::Config& /*config*/) : Profiler(host) {}
  void on_event(const clhost_event_t& /*event*/) override {}
};
}  // namespace

CLHOST_DEFINE_PLUGIN(Silent, kDescriptor, &kFingerprint)
