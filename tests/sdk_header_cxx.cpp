// The SDK headers compiled as C++17 and C++20 (-Wall -Wextra -Wpedantic -Werror): a complete
// plug-in of each kind through the C++ helper, so every template in plugin.hpp is instantiated.
#include <clhost/clhost_plugin.h>
#include <clhost/plugin.hpp>

namespace {

const clhost_plugin_descriptor_t kDescriptor{sizeof(clhost_plugin_descriptor_t),
                                             "header_check",
                                             CLHOST_PLUGIN_KIND_PROFILER,
                                             "0.0.0",
                                             "",
                                             "",
                                             nullptr,
                                             0};

class Regularizer : public clhost::sdk::Regularizer {
 public:
  Regularizer(const clhost_host_t* host, const clhost::sdk::Config& /*config*/)
      : clhost::sdk::Regularizer(host) {}
  double after_backward(const clhost_step_info_t& /*step*/) override { return 0.0; }
};

class Policy : public clhost::sdk::BatchPolicy {
 public:
  Policy(const clhost_host_t* host, const clhost::sdk::Config& /*config*/) : BatchPolicy(host) {}
  int64_t choose_micro_batch(const clhost_batch_request_t& request) override {
    return request.configured_batch_size;
  }
};

class Profiler : public clhost::sdk::Profiler {
 public:
  Profiler(const clhost_host_t* host, const clhost::sdk::Config& /*config*/)
      : clhost::sdk::Profiler(host) {}
  void on_event(const clhost_event_t& event) override { (void)source_of(event); }
};

}  // namespace

// Each kind's entry table, as CLHOST_DEFINE_PLUGIN would make it (one per plug-in in real use).
const clhost_plugin_entry_t* header_check_entries(int kind);
const clhost_plugin_entry_t* header_check_entries(int kind) {
  switch (kind) {
    case 1: return clhost::sdk::make_entry<Regularizer>(&kDescriptor, nullptr);
    case 2: return clhost::sdk::make_entry<Policy>(&kDescriptor, nullptr);
    default: return clhost::sdk::make_entry<Profiler>(&kDescriptor, nullptr);
  }
}
