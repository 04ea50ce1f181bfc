// dynamic — finds the largest micro-batch that fits: doubles from `start` while steps fit (and
// the measured peak leaves room for twice as much), binary-searches between the largest size
// that fit and the smallest that ran out of memory, then settles. Re-probes at every task
// boundary (models, data and per-task batch sizes change). One trial = one optimizer step, so
// probing never repeats or drops a sample.
#include <clhost/plugin.hpp>

#include <algorithm>
#include <limits>
#include <string>

namespace {

const clhost_config_key_t kSchema[] = {
    {"start", CLHOST_CONFIG_TYPE_INT, "0",
     "first micro-batch of the run (samples; 0: the whole configured batch, halved until it fits)",
     1, 0, 1 << 24, nullptr},
    {"margin", CLHOST_CONFIG_TYPE_FLOAT, "0.1",
     "fraction of the remaining headroom (budget minus the last step's peak) growth may not use", 1,
     0.0, 0.9, nullptr},
};
const clhost_plugin_descriptor_t kDescriptor{
    sizeof(clhost_plugin_descriptor_t),
    "dynamic",
    CLHOST_PLUGIN_KIND_BATCH_POLICY,
    "1.0.0",
    "grows the micro-batch while it fits, shrinks on out-of-memory",
    "clhost",
    kSchema,
    2};

class Dynamic : public clhost::sdk::BatchPolicy {
 public:
  // clhost.memory_plan/1: a batch policy keeps a few numbers, nothing that grows with the model.
  static clhost::sdk::MemoryPlan plan_memory(const clhost::sdk::Config& /*config*/,
                                             const clhost::sdk::Settings& /*host*/,
                                             const clhost::sdk::MemoryPlanRequest& /*request*/) {
    clhost::sdk::MemoryPlan plan;
    plan.fisher_samples_per_pass = 0;
    return plan;
  }

  Dynamic(const clhost_host_t* host, const clhost::sdk::Config& config)
      : BatchPolicy(host), start_(config.get_int("start")), margin_(config.get_float("margin")) {}

  int64_t choose_micro_batch(const clhost_batch_request_t& request) override {
    const int64_t configured = request.configured_batch_size;
    if (request.current_micro_batch == 0 || request.task_index != task_) {
      // New task: keep what fitted (clamped to this task's batch) and probe upwards again.
      task_ = request.task_index;
      failed_ = kNone;
      settled_ = false;
      fit_ = std::min(fit_, configured);
      current_ = std::min(fit_ > 0 ? fit_ : (start_ > 0 ? start_ : configured), configured);
      set_reason(fit_ > 0 ? "task boundary: re-probe from the last size that fit" : "start");
      return current_;
    }
    current_ = request.current_micro_batch;
    if (request.out_of_memory != 0) {
      failed_ = std::min(failed_, current_);
      if (fit_ >= failed_) fit_ = 0;  // what fitted before no longer does
      settled_ = false;
      const int64_t next = fit_ > 0 ? (fit_ + failed_) / 2 : current_ / 2;
      current_ = std::max<int64_t>(1, std::min(next, current_ - 1));
      set_reason("out of memory at " + std::to_string(failed_) + ": shrink");
      return current_;
    }
    fit_ = std::max(fit_, current_);
    if (settled_) return current_;
    if (failed_ != kNone) remember(request);
    if (failed_ == kNone) {
      if (current_ >= configured) return settle("the whole batch fits");
      const bool room = request.budget_bytes < 0 || request.peak_bytes_last_step < 0 ||
                        projected_peak(request, 2 * current_) <= target(request);
      remember(request);
      if (!room) {
        // Grow only as far as the fitted line says still fits; an error there is retried.
        const int64_t projected = projected_fit(request);
        if (projected <= current_)
          return settle("the projected peak of anything larger passes the budget's margin");
        current_ = std::min(configured, projected);
        set_reason("fit: grow to the projected largest size, " + std::to_string(current_));
        return current_;
      }
      current_ = std::min(configured, 2 * current_);
      set_reason("fit: double");
      return current_;
    }
    if (failed_ - fit_ <= 1) return settle("largest size below the one that ran out of memory");
    current_ = (fit_ + failed_) / 2;
    set_reason("fit: binary search between " + std::to_string(fit_) + " and " +
               std::to_string(failed_));
    return current_;
  }

 private:
  static constexpr int64_t kNone = std::numeric_limits<int64_t>::max();

  int64_t settle(const char* why) {
    settled_ = true;
    current_ = fit_;
    set_reason(std::string("settled: ") + why);
    return current_;
  }

  // Growth may use (1 - margin) of the headroom left above the last step's peak: a margin of the
  // whole budget would forbid any growth when resident data and state fill most of it.
  [[nodiscard]] double target(const clhost_batch_request_t& request) const {
    const auto peak = static_cast<double>(request.peak_bytes_last_step);
    return peak + (1.0 - margin_) * (static_cast<double>(request.budget_bytes) - peak);
  }

  // Largest micro-batch whose projected peak stays under the target.
  [[nodiscard]] int64_t projected_fit(const clhost_batch_request_t& request) const {
    const double target = this->target(request);
    const double at_current = static_cast<double>(request.peak_bytes_last_step);
    const double one_more = projected_peak(request, request.current_micro_batch + 1) - at_current;
    if (one_more <= 0.0) return request.current_micro_batch;
    return request.current_micro_batch + static_cast<int64_t>((target - at_current) / one_more);
  }

  void remember(const clhost_batch_request_t& request) {
    if (request.peak_bytes_last_step >= 0 && request.current_micro_batch != last_micro_) {
      previous_micro_ = last_micro_;
      previous_peak_ = last_peak_;
      last_micro_ = request.current_micro_batch;
      last_peak_ = request.peak_bytes_last_step;
    }
  }

  // Step memory grows about linearly with the micro-batch above a fixed base (model, data,
  // optimizer state). The line needs two readings at different sizes; until then, grow and let
  // an out-of-memory error (which the host retries) mark the limit.
  [[nodiscard]] double projected_peak(const clhost_batch_request_t& request, int64_t micro) const {
    const int64_t known_micro = request.current_micro_batch;
    const auto known_peak = static_cast<double>(request.peak_bytes_last_step);
    const int64_t other_micro = last_micro_ == known_micro ? previous_micro_ : last_micro_;
    const int64_t other_peak = last_micro_ == known_micro ? previous_peak_ : last_peak_;
    if (other_micro <= 0 || other_micro == known_micro || other_peak < 0) return 0.0;
    const double slope = (known_peak - static_cast<double>(other_peak)) /
                         static_cast<double>(known_micro - other_micro);
    return known_peak + std::max(0.0, slope) * static_cast<double>(micro - known_micro);
  }

 public:
  // Checkpoints: the search's position, so a resumed run makes the same choices.
  void save_state(clhost::sdk::StateWriter& out) const {
    out.value(task_);
    out.value(current_);
    out.value(fit_);
    out.value(failed_);
    out.value(settled_);
    out.value(last_micro_);
    out.value(last_peak_);
    out.value(previous_micro_);
    out.value(previous_peak_);
  }
  void restore_state(clhost::sdk::StateReader& in) {
    task_ = in.value<uint32_t>();
    current_ = in.value<int64_t>();
    fit_ = in.value<int64_t>();
    failed_ = in.value<int64_t>();
    settled_ = in.value<bool>();
    last_micro_ = in.value<int64_t>();
    last_peak_ = in.value<int64_t>();
    previous_micro_ = in.value<int64_t>();
    previous_peak_ = in.value<int64_t>();
  }

 private:
  int64_t start_;
  double margin_;
  uint32_t task_ = std::numeric_limits<uint32_t>::max();
  int64_t current_ = 0;
  int64_t fit_ = 0;
  int64_t failed_ = kNone;
  bool settled_ = false;
  int64_t last_micro_ = 0;
  int64_t last_peak_ = -1;
  int64_t previous_micro_ = 0;
  int64_t previous_peak_ = -1;
};

}  // namespace

CLHOST_DEFINE_PLUGIN(Dynamic, kDescriptor, nullptr)
