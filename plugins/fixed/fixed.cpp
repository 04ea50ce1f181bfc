// fixed — a batch policy that never changes the micro-batch: the configured batch, or
// `micro_batch` samples per forward/backward (gradients accumulated to the configured batch).
#include <clhost/plugin.hpp>

#include <algorithm>

namespace {

const clhost_config_key_t kSchema[] = {
    {"micro_batch", CLHOST_CONFIG_TYPE_INT, "0",
     "samples per forward/backward (0: the whole configured batch)", 1, 0, 1 << 24, nullptr},
};
const clhost_plugin_descriptor_t kDescriptor{sizeof(clhost_plugin_descriptor_t),
                                             "fixed",
                                             CLHOST_PLUGIN_KIND_BATCH_POLICY,
                                             "1.0.0",
                                             "never changes the micro-batch",
                                             "clhost",
                                             kSchema,
                                             1};

class Fixed : public clhost::sdk::BatchPolicy {
 public:
  // clhost.memory_plan/1: a batch policy keeps a few numbers, nothing that grows with the model.
  static clhost::sdk::MemoryPlan plan_memory(const clhost::sdk::Config& /*config*/,
                                             const clhost::sdk::Settings& /*host*/,
                                             const clhost::sdk::MemoryPlanRequest& /*request*/) {
    clhost::sdk::MemoryPlan plan;
    plan.fisher_samples_per_pass = 0;
    return plan;
  }

  Fixed(const clhost_host_t* host, const clhost::sdk::Config& config)
      : BatchPolicy(host), micro_batch_(config.get_int("micro_batch")) {}

  int64_t choose_micro_batch(const clhost_batch_request_t& request) override {
    const int64_t configured = request.configured_batch_size;
    const int64_t chosen = micro_batch_ > 0 ? std::min(micro_batch_, configured) : configured;
    set_reason(request.out_of_memory != 0 ? "fixed: never changes, even after out of memory"
                                          : "fixed micro-batch");
    return chosen;
  }

  // Stateless: resumable with an empty state.
  void save_state(clhost::sdk::StateWriter& /*out*/) const {}
  void restore_state(clhost::sdk::StateReader& /*in*/) {}

 private:
  int64_t micro_batch_;
};

}  // namespace

CLHOST_DEFINE_PLUGIN(Fixed, kDescriptor, nullptr)
