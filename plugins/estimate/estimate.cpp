// estimate — the seed's "best batch size from the model and a sample": measures the step's peak
// tensor memory at two small micro-batches, fits peak = a + b * micro, and picks the largest
// micro-batch whose projected peak stays under (1 - margin) * budget. Halves on out-of-memory.
// Without a budget it uses the whole configured batch.
#include <clhost/plugin.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace {

const clhost_config_key_t kSchema[] = {
    {"probe", CLHOST_CONFIG_TYPE_INT, "8", "first probe micro-batch (the second is twice that)", 1,
     1, 1 << 20, nullptr},
    {"margin", CLHOST_CONFIG_TYPE_FLOAT, "0.1", "fraction of the budget kept free", 1, 0.0, 0.9,
     nullptr},
};
const clhost_plugin_descriptor_t kDescriptor{sizeof(clhost_plugin_descriptor_t),
                                             "estimate",
                                             CLHOST_PLUGIN_KIND_BATCH_POLICY,
                                             "1.0.0",
                                             "fits peak memory against micro-batch from two probes",
                                             "clhost",
                                             kSchema,
                                             2};

class Estimate : public clhost::sdk::BatchPolicy {
 public:
  Estimate(const clhost_host_t* host, const clhost::sdk::Config& config)
      : BatchPolicy(host), probe_(config.get_int("probe")), margin_(config.get_float("margin")) {}

  int64_t choose_micro_batch(const clhost_batch_request_t& request) override {
    const int64_t configured = request.configured_batch_size;
    if (request.current_micro_batch == 0 || request.task_index != task_) {
      task_ = request.task_index;
      if (request.budget_bytes < 0) {
        phase_ = Phase::kSettled;
        current_ = configured;
        set_reason("no memory budget: the whole batch");
        return current_;
      }
      phase_ = Phase::kFirstProbe;
      current_ = std::min(probe_, configured);
      set_reason("probe 1");
      return current_;
    }
    current_ = request.current_micro_batch;
    if (request.out_of_memory != 0) {
      phase_ = Phase::kSettled;
      current_ = std::max<int64_t>(1, current_ / 2);
      set_reason("out of memory: halve");
      return current_;
    }
    switch (phase_) {
      case Phase::kFirstProbe:
        first_ = {current_, request.peak_bytes_last_step};
        if (current_ >= configured || request.peak_bytes_last_step < 0) {
          phase_ = Phase::kSettled;
          set_reason("probe covers the whole batch");
          return current_;
        }
        phase_ = Phase::kSecondProbe;
        current_ = std::min(2 * current_, configured);
        set_reason("probe 2");
        return current_;
      case Phase::kSecondProbe: {
        const auto second = Reading{current_, request.peak_bytes_last_step};
        const double slope = static_cast<double>(second.peak - first_.peak) /
                             static_cast<double>(second.micro - first_.micro);
        const double base = static_cast<double>(first_.peak) - slope * static_cast<double>(first_.micro);
        const double target = (1.0 - margin_) * static_cast<double>(request.budget_bytes);
        int64_t best = configured;
        if (slope > 0.0) best = static_cast<int64_t>(std::floor((target - base) / slope));
        current_ = std::clamp<int64_t>(best, 1, configured);
        phase_ = Phase::kSettled;
        set_reason("fit peak = " + std::to_string(static_cast<int64_t>(base)) + " + " +
                   std::to_string(static_cast<int64_t>(slope)) + " bytes/sample");
        return current_;
      }
      case Phase::kSettled:
        return current_;
    }
    return current_;
  }

 private:
  enum class Phase { kFirstProbe, kSecondProbe, kSettled };
  struct Reading {
    int64_t micro = 0;
    int64_t peak = 0;
  };
  int64_t probe_;
  double margin_;
  uint32_t task_ = std::numeric_limits<uint32_t>::max();
  Phase phase_ = Phase::kSettled;
  int64_t current_ = 0;
  Reading first_;
};

}  // namespace

CLHOST_DEFINE_PLUGIN(Estimate, kDescriptor, nullptr)
