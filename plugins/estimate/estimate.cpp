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
    {"probe", CLHOST_CONFIG_TYPE_INT, "0",
     "first probe micro-batch, the second is twice that (0: an eighth of the configured batch)", 1,
     0, 1 << 20, nullptr},
    {"margin", CLHOST_CONFIG_TYPE_FLOAT, "0.1",
     "fraction of the headroom above the fitted base (budget minus resident memory) kept free", 1,
     0.0, 0.9, nullptr},
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
  // clhost.memory_plan/1: a batch policy keeps a few numbers, nothing that grows with the model.
  static clhost::sdk::MemoryPlan plan_memory(const clhost::sdk::Config& /*config*/,
                                             const clhost::sdk::Settings& /*host*/,
                                             const clhost::sdk::MemoryPlanRequest& /*request*/) {
    clhost::sdk::MemoryPlan plan;
    plan.fisher_samples_per_pass = 0;
    return plan;
  }

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
      if (fitted_) {
        // The line measured on an earlier task still describes the model: reuse it.
        phase_ = Phase::kSettled;
        current_ = best_for(request, configured);
        set_reason("reuse the fitted line");
        return current_;
      }
      phase_ = Phase::kFirstProbe;
      current_ = std::min(probe_ > 0 ? probe_ : std::max<int64_t>(1, configured / 8), configured);
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
        slope_ = static_cast<double>(second.peak - first_.peak) /
                 static_cast<double>(second.micro - first_.micro);
        base_ = static_cast<double>(first_.peak) - slope_ * static_cast<double>(first_.micro);
        fitted_ = true;
        current_ = best_for(request, configured);
        phase_ = Phase::kSettled;
        set_reason("fit peak = " + std::to_string(static_cast<int64_t>(base_)) + " + " +
                   std::to_string(static_cast<int64_t>(slope_)) + " bytes/sample");
        return current_;
      }
      case Phase::kSettled: return current_;
    }
    return current_;
  }

 private:
  // Largest micro-batch whose projected peak leaves `margin` of the headroom above the base.
  [[nodiscard]] int64_t best_for(const clhost_batch_request_t& request, int64_t configured) const {
    const double target =
        base_ + (1.0 - margin_) * (static_cast<double>(request.budget_bytes) - base_);
    int64_t best = configured;
    if (slope_ > 0.0) best = static_cast<int64_t>(std::floor((target - base_) / slope_));
    return std::clamp<int64_t>(best, 1, configured);
  }

  enum class Phase { kFirstProbe, kSecondProbe, kSettled };
  struct Reading {
    int64_t micro = 0;
    int64_t peak = 0;
  };

 public:
  // Checkpoints: the probe's phase and the fitted line.
  void save_state(clhost::sdk::StateWriter& out) const {
    out.value(task_);
    out.value(phase_);
    out.value(current_);
    out.value(first_);
    out.value(fitted_);
    out.value(base_);
    out.value(slope_);
  }
  void restore_state(clhost::sdk::StateReader& in) {
    task_ = in.value<uint32_t>();
    phase_ = in.value<Phase>();
    current_ = in.value<int64_t>();
    first_ = in.value<Reading>();
    fitted_ = in.value<bool>();
    base_ = in.value<double>();
    slope_ = in.value<double>();
  }

 private:
  int64_t probe_;
  double margin_;
  uint32_t task_ = std::numeric_limits<uint32_t>::max();
  Phase phase_ = Phase::kSettled;
  int64_t current_ = 0;
  Reading first_;
  bool fitted_ = false;
  double base_ = 0.0;
  double slope_ = 0.0;
};

}  // namespace

CLHOST_DEFINE_PLUGIN(Estimate, kDescriptor, nullptr)
