// plugin.hpp — header-only C++17 helper over clhost_plugin.h.
//
// A plug-in author writes one class deriving from clhost::sdk::Regularizer, BatchPolicy, Replay or
// Profiler, overrides the hooks it needs, and adds one line:
//
//   CLHOST_DEFINE_PLUGIN(MyRegularizer, kMyDescriptor, nullptr);
//
// The helper generates the exported entry, the interface tables and trampolines that catch every
// exception and turn it into a status code plus message, so nothing throws across the C ABI.
// It needs only the C++ standard library; LibTorch helpers live in plugin_torch.hpp.
#ifndef CLHOST_SDK_PLUGIN_HPP
#define CLHOST_SDK_PLUGIN_HPP

#include <clhost/clhost_plugin.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace clhost::sdk {

// Throw this from a hook to choose the status code; any other exception becomes INTERNAL
// (std::bad_alloc becomes OUT_OF_MEMORY).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, clhost_status_t status = CLHOST_STATUS_INTERNAL)
      : std::runtime_error(message), status_(status) {}
  [[nodiscard]] clhost_status_t status() const noexcept { return status_; }

 private:
  clhost_status_t status_;
};

inline void write_error(clhost_error_t* error, const char* message) noexcept {
  if (error != nullptr) {
    std::snprintf(error->message, sizeof(error->message), "%s", message);
  }
}

template <class Body>
clhost_status_t guarded_call(clhost_error_t* error, Body&& body) noexcept {
  try {
    body();
    return CLHOST_STATUS_OK;
  } catch (const Error& e) {
    write_error(error, e.what());
    return e.status();
  } catch (const std::bad_alloc&) {
    write_error(error, "out of memory");
    return CLHOST_STATUS_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    write_error(error, e.what());
    return std::strstr(e.what(), "out of memory") != nullptr ? CLHOST_STATUS_OUT_OF_MEMORY
                                                             : CLHOST_STATUS_INTERNAL;
  } catch (...) {
    write_error(error, "unknown exception in plug-in");
    return CLHOST_STATUS_INTERNAL;
  }
}

// The `labels` key shared by the Fisher-based plug-ins: "true" | "sample" | "expectation".
inline clhost_fisher_labels_t fisher_labels(const std::string& name) {
  return name == "true"     ? CLHOST_FISHER_LABELS_TRUE
         : name == "sample" ? CLHOST_FISHER_LABELS_SAMPLE
                            : CLHOST_FISHER_LABELS_EXPECTATION;
}

// Read-only view of the resolved configuration given to the constructor.
class Config {
 public:
  explicit Config(const clhost_config_t* config) : config_(config) {}
  [[nodiscard]] double get_float(const char* key) const { return find(key).float_value; }
  [[nodiscard]] int64_t get_int(const char* key) const { return find(key).int_value; }
  [[nodiscard]] bool get_bool(const char* key) const { return find(key).bool_value != 0; }
  [[nodiscard]] std::string get_string(const char* key) const {
    const char* value = find(key).string_value;
    return value != nullptr ? value : "";
  }

 private:
  [[nodiscard]] const clhost_config_value_t& find(const char* key) const {
    const clhost_config_value_t* value = clhost_config_find(config_, key);
    if (value == nullptr) {
      throw Error(std::string("config key '") + key + "' is not in the plug-in's schema",
                  CLHOST_STATUS_INVALID_ARGUMENT);
    }
    return *value;
  }
  const clhost_config_t* config_;
};

// The run's resolved host configuration (clhost.settings/1), by dotted key path; a missing key
// or service gives the fallback.
class Settings {
 public:
  explicit Settings(const clhost_host_t* host)
      : host_(host),
        service_(host != nullptr ? static_cast<const clhost_settings_service_v1_t*>(
                                       host->get_service(host, CLHOST_SERVICE_SETTINGS_V1))
                                 : nullptr) {}
  [[nodiscard]] bool get_bool(const char* key_path, bool fallback) const {
    int32_t value = fallback ? 1 : 0;
    if (service_ != nullptr) service_->get_bool(host_, key_path, &value);
    return value != 0;
  }
  [[nodiscard]] double get_float(const char* key_path, double fallback) const {
    double value = fallback;
    if (service_ != nullptr) service_->get_float(host_, key_path, &value);
    return value;
  }
  [[nodiscard]] std::string get_string(const char* key_path, const std::string& fallback) const {
    const char* value = nullptr;
    if (service_ != nullptr && service_->get_string(host_, key_path, &value) == 0 &&
        value != nullptr) {
      return value;
    }
    return fallback;
  }

 private:
  const clhost_host_t* host_;
  const clhost_settings_service_v1_t* service_;
};

// Refuses at create what the first consolidation would: labels = "expectation" sums over every
// class of a sample, and a text task's sample has a label at every position (256^T sequences).
inline void check_fisher_labels(const Settings& settings, const std::string& labels) {
  if (labels == "expectation" && settings.get_string("data.kind", "") == "text") {
    throw Error(
        "labels = \"expectation\" (the default) sums over every class of a sample; text tasks "
        "(data.kind = \"text\") have a label at every position: set labels = \"true\" (the next "
        "bytes) or \"sample\" (drawn from the model)",
        CLHOST_STATUS_INVALID_ARGUMENT);
  }
}

// Typed access to host services; each accessor throws Error when the host lacks the service.
class Host {
 public:
  explicit Host(const clhost_host_t* host) : host_(host) {}

  [[nodiscard]] const clhost_host_t* raw() const noexcept { return host_; }

  void log(clhost_log_level_t level, const std::string& message) const {
    const auto* service = static_cast<const clhost_log_service_v1_t*>(
        host_->get_service(host_, CLHOST_SERVICE_LOG_V1));
    if (service != nullptr) {
      service->log(host_, level, message.c_str());
    }
  }

  [[nodiscard]] const clhost_params_service_v1_t& params() const {
    return service<clhost_params_service_v1_t>(CLHOST_SERVICE_PARAMS_V1);
  }
  [[nodiscard]] const clhost_gradstats_service_v1_t& gradstats() const {
    return service<clhost_gradstats_service_v1_t>(CLHOST_SERVICE_GRADSTATS_V1);
  }
  [[nodiscard]] const clhost_sample_grads_service_v1_t& sample_grads() const {
    return service<clhost_sample_grads_service_v1_t>(CLHOST_SERVICE_SAMPLE_GRADS_V1);
  }
  [[nodiscard]] const clhost_memory_service_v1_t& memory() const {
    return service<clhost_memory_service_v1_t>(CLHOST_SERVICE_MEMORY_V1);
  }
  // The ranks of a data-parallel run (clhost.collective/1; ABI 1.6).
  [[nodiscard]] const clhost_collective_service_v1_t& collective() const {
    return service<clhost_collective_service_v1_t>(CLHOST_SERVICE_COLLECTIVE_V1);
  }
  // A frozen copy of the model for this plug-in (clhost.snapshot/1; ABI 1.7).
  [[nodiscard]] const clhost_snapshot_service_v1_t& snapshot() const {
    return service<clhost_snapshot_service_v1_t>(CLHOST_SERVICE_SNAPSHOT_V1);
  }
  // Per-sample gradients of a function of the outputs (clhost.output_grads/1; ABI 1.7).
  [[nodiscard]] const clhost_output_grads_service_v1_t& output_grads() const {
    return service<clhost_output_grads_service_v1_t>(CLHOST_SERVICE_OUTPUT_GRADS_V1);
  }
  // The run's resolved configuration (clhost.settings/1); missing keys give the fallback.
  [[nodiscard]] Settings settings() const { return Settings(host_); }
  // The run's Fisher store (clhost.fisher_store/1), or null when the host has none.
  [[nodiscard]] const clhost_fisher_store_v1_t* fisher_store() const {
    return static_cast<const clhost_fisher_store_v1_t*>(
        host_->get_service(host_, CLHOST_SERVICE_FISHER_STORE_V1));
  }

  // Adds a named event to the run's timeline (every profiler receives it). Trainer thread only.
  void mark(const std::string& label) const {
    const auto& events = service<clhost_events_service_v1_t>(CLHOST_SERVICE_EVENTS_V1);
    clhost_error_t error{};
    check(events.mark(host_, label.c_str(), &error), error);
  }

  [[nodiscard]] uint32_t parameter_count() const { return params().count(host_); }
  [[nodiscard]] clhost_parameter_t parameter(uint32_t index) const {
    clhost_parameter_t out{};
    clhost_error_t error{};
    check(params().get(host_, index, &out, &error), error);
    return out;
  }
  [[nodiscard]] clhost_memory_info_t memory_info() const {
    clhost_memory_info_t out{};
    out.struct_size = sizeof(out);
    clhost_error_t error{};
    check(memory().get_info(host_, &out, &error), error);
    return out;
  }

  static void check(clhost_status_t status, const clhost_error_t& error) {
    if (status != CLHOST_STATUS_OK) {
      throw Error(error.message, status);
    }
  }

 private:
  template <class Table>
  const Table& service(const char* id) const {
    const auto* table = static_cast<const Table*>(host_->get_service(host_, id));
    if (table == nullptr) {
      throw Error(std::string("host does not provide service ") + id, CLHOST_STATUS_UNSUPPORTED);
    }
    return *table;
  }
  const clhost_host_t* host_;
};

// Saving a plug-in's state for a checkpoint (clhost.state/1): a stream of bytes handed to the
// host. A plug-in class becomes resumable by defining both
//   void save_state(clhost::sdk::StateWriter& out) const;
//   void restore_state(clhost::sdk::StateReader& in);
// and reading back exactly what it wrote, in the same order.
class StateWriter {
 public:
  StateWriter(clhost_state_write_fn write, void* writer_data) : write_(write), data_(writer_data) {}
  void bytes(const void* data, size_t size) {
    if (size == 0) return;
    clhost_error_t error{};
    const clhost_status_t status = write_(data_, data, size, &error);
    if (status != CLHOST_STATUS_OK) throw Error(error.message, status);
  }
  template <class T>
  void value(const T& item) {
    static_assert(std::is_trivially_copyable_v<T>, "value() writes plain bytes");
    bytes(&item, sizeof(T));
  }
  template <class T>
  void vector(const std::vector<T>& items) {
    value(static_cast<uint64_t>(items.size()));
    bytes(items.data(), items.size() * sizeof(T));
  }
  void string(const std::string& text) {
    value(static_cast<uint64_t>(text.size()));
    bytes(text.data(), text.size());
  }

 private:
  clhost_state_write_fn write_;
  void* data_;
};

class StateReader {
 public:
  StateReader(const void* data, size_t size)
      : data_(static_cast<const unsigned char*>(data)), size_(size) {}
  void bytes(void* out, size_t size) {
    if (size > size_ - position_) {
      throw Error("saved state is truncated (wanted " + std::to_string(size) + " bytes at " +
                      std::to_string(position_) + " of " + std::to_string(size_) + ")",
                  CLHOST_STATUS_INVALID_ARGUMENT);
    }
    if (size > 0) std::memcpy(out, data_ + position_, size);
    position_ += size;
  }
  template <class T>
  T value() {
    static_assert(std::is_trivially_copyable_v<T>, "value() reads plain bytes");
    if constexpr (std::is_same_v<T, bool>) {
      // Any byte but 0 and 1 is not a bool: copying it into one is undefined behaviour.
      const auto byte = value<unsigned char>();
      if (byte > 1) {
        throw Error("saved state has a flag byte " + std::to_string(byte) + " (not 0 or 1) at " +
                        std::to_string(position_ - 1),
                    CLHOST_STATUS_INVALID_ARGUMENT);
      }
      return byte == 1;
    } else {
      T item{};
      bytes(&item, sizeof(T));
      return item;
    }
  }
  template <class T>
  std::vector<T> vector() {
    std::vector<T> items(static_cast<size_t>(count(sizeof(T))));
    bytes(items.data(), items.size() * sizeof(T));
    return items;
  }
  std::string string() {
    const auto chars = vector<char>();
    return {chars.begin(), chars.end()};
  }
  // Bytes not read yet: a reader checks a count read from the state against it before
  // allocating for it.
  [[nodiscard]] size_t remaining() const { return size_ - position_; }
  // A count of items that follow, each at least `min_item_bytes` long: more than the bytes left
  // can hold is refused before the caller allocates for them.
  uint64_t count(size_t min_item_bytes) {
    const auto items = value<uint64_t>();
    if (min_item_bytes > 0 && items > remaining() / min_item_bytes) {
      throw Error("saved state is truncated (" + std::to_string(items) + " items of at least " +
                      std::to_string(min_item_bytes) + " bytes, " + std::to_string(remaining()) +
                      " bytes left)",
                  CLHOST_STATUS_INVALID_ARGUMENT);
    }
    return items;
  }
  // Call after reading everything: leftover bytes mean the writer and reader disagree.
  void finish() const {
    if (position_ != size_) {
      throw Error("saved state has " + std::to_string(size_ - position_) +
                      " bytes more than this plug-in version reads",
                  CLHOST_STATUS_INVALID_ARGUMENT);
    }
  }

 private:
  const unsigned char* data_;
  size_t size_;
  size_t position_ = 0;
};

// Telling the host which configured keys take effect (clhost.config_use/1). A plug-in class
// whose keys depend on each other defines
//   static void unused_keys(const clhost::sdk::Config& config, const clhost::sdk::Settings& host,
//                           clhost::sdk::UnusedKeys& unused);
// and calls unused("gamma", "applies to mode = \"online\" only") for each key without effect.
class UnusedKeys {
 public:
  UnusedKeys(clhost_unused_key_fn sink, void* sink_data) : sink_(sink), data_(sink_data) {}
  void operator()(const char* key, const std::string& reason) const {
    sink_(data_, key, reason.c_str());
  }

 private:
  clhost_unused_key_fn sink_;
  void* data_;
};

// Planning memory before a run (clhost.memory_plan/1). A plug-in class that holds memory
// defines
//   static clhost::sdk::MemoryPlan plan_memory(const clhost::sdk::Config& config,
//                                              const clhost::sdk::Settings& host,
//                                              const clhost::sdk::MemoryPlanRequest& request);
// and throws clhost::sdk::Error for a request it cannot plan.
struct MemoryPlanRequest {
  std::vector<int64_t> parameter_numels;  // each trainable tensor's elements, in service order
  int64_t tasks = 0;                      // tasks of the run: one consolidation after each
  int64_t fisher_block_size = 0;          // elements per block of the host's Fisher pass
};
struct MemoryPlan {
  int64_t state_bytes = 0;          // held after the last consolidation
  int64_t consolidation_bytes = 0;  // beyond state_bytes at the peak of one consolidation
  const char* advice = nullptr;     // static text: what would shrink state_bytes
  // Samples per pass of the host's Fisher or per-sample-gradient service in a consolidation (its
  // batch, or its sample count when smaller); 0: none; -1: not said (ABI 1.8).
  int64_t fisher_samples_per_pass = -1;
  // A replay plug-in's stored samples added to every training step and its buffer's capacity in
  // samples; -1: not said (ABI 1.9).
  int64_t replay_samples_per_step = -1;
  int64_t replay_capacity = -1;
};
// fisher_samples_per_pass of a Fisher request with these batch_size and max_samples (0: all).
inline int64_t samples_per_pass(int64_t batch_size, int64_t max_samples) {
  return max_samples > 0 ? std::min(batch_size, max_samples) : batch_size;
}

namespace detail {
template <class Plugin, class = void>
struct HasMemoryPlan : std::false_type {};
template <class Plugin>
struct HasMemoryPlan<Plugin, std::void_t<decltype(Plugin::plan_memory(
                                 std::declval<const Config&>(), std::declval<const Settings&>(),
                                 std::declval<const MemoryPlanRequest&>()))>> : std::true_type {};

template <class Plugin, class = void>
struct HasUnusedKeys : std::false_type {};
template <class Plugin>
struct HasUnusedKeys<Plugin, std::void_t<decltype(Plugin::unused_keys(
                                 std::declval<const Config&>(), std::declval<const Settings&>(),
                                 std::declval<UnusedKeys&>()))>> : std::true_type {};

template <class Plugin, class = void>
struct HasState : std::false_type {};
template <class Plugin>
struct HasState<
    Plugin,
    std::void_t<decltype(std::declval<const Plugin&>().save_state(std::declval<StateWriter&>())),
                decltype(std::declval<Plugin&>().restore_state(std::declval<StateReader&>()))>>
    : std::true_type {};

// A regularizer adds a loss term on the outputs (clhost.output_loss/1) by defining
//   double output_loss(const clhost_output_batch_t& batch, DLTensor& gradient);
// returning the term's mean over the micro-batch and writing its gradient into `gradient`.
template <class Plugin, class = void>
struct HasOutputLoss : std::false_type {};
template <class Plugin>
struct HasOutputLoss<Plugin,
                     std::void_t<decltype(std::declval<Plugin&>().output_loss(
                         std::declval<const clhost_output_batch_t&>(), std::declval<DLTensor&>()))>>
    : std::true_type {};
}  // namespace detail

class PluginBase {
 public:
  explicit PluginBase(const clhost_host_t* host) : host_(host) {}
  virtual ~PluginBase() = default;
  PluginBase(const PluginBase&) = delete;
  PluginBase& operator=(const PluginBase&) = delete;
  PluginBase(PluginBase&&) = delete;
  PluginBase& operator=(PluginBase&&) = delete;

  // Optional: a JSON object for results.json (plugins[i].report); empty means none.
  [[nodiscard]] virtual std::string report_json() const { return {}; }

 protected:
  [[nodiscard]] const Host& host() const noexcept { return host_; }

 private:
  Host host_;
};

class Regularizer : public PluginBase {
 public:
  using PluginBase::PluginBase;
  virtual void on_task_begin(const clhost_task_info_t& /*task*/) {}
  // Adds the penalty's gradient into the parameter gradients and returns the penalty.
  virtual double after_backward(const clhost_step_info_t& step) = 0;
  virtual void on_task_end(const clhost_task_info_t& /*task*/) {}
  [[nodiscard]] virtual std::string describe() const { return {}; }
};

class BatchPolicy : public PluginBase {
 public:
  using PluginBase::PluginBase;
  virtual int64_t choose_micro_batch(const clhost_batch_request_t& request) = 0;
  // Why the last choice was made; shown on the console and in metrics.csv.
  [[nodiscard]] virtual const std::string& reason() const { return reason_; }

 protected:
  void set_reason(std::string reason) { reason_ = std::move(reason); }

 private:
  std::string reason_;
};

// Kind REPLAY (clhost.replay/1; ABI 1.7): which samples the host's buffer holds and which are
// replayed. Both answers are index lists in the ABI's terms (docs/plugins.md, "Replay").
class Replay : public PluginBase {
 public:
  using PluginBase::PluginBase;
  // A derived class that reads candidates.candidate_inputs in select (herding) redefines this as
  // true; otherwise the host does not copy the task's inputs for it.
  static constexpr bool kWantsCandidateInputs = false;
  // The buffer's new content in slot order: k >= 0 keeps stored sample k, k < 0 stores candidate
  // -k - 1; at most candidates.stored + candidates.candidates entries.
  virtual std::vector<int64_t> select(const clhost_replay_candidates_t& candidates) = 0;
  // The stored samples to append to this step's batch (at most draw.stored).
  virtual std::vector<int64_t> draw(const clhost_replay_draw_t& draw) = 0;
};

class Profiler : public PluginBase {
 public:
  using PluginBase::PluginBase;
  virtual void on_event(const clhost_event_t& event) = 0;

  // Who raised the event: "clhost", or the id of the plug-in that marked it. Hosts older than
  // ABI 1.1 do not say; then "clhost" is assumed.
  static const char* source_of(const clhost_event_t& event) noexcept {
    return CLHOST_HAS_MEMBER(&event, clhost_event_t, source) && event.source != nullptr
               ? event.source
               : "clhost";
  }
};

namespace detail {

template <class Plugin>
struct Trampolines {
  static clhost_status_t create(const clhost_host_t* host, const clhost_config_t* config,
                                void** instance, clhost_error_t* error) noexcept {
    return guarded_call(error, [&] {
      Config view(config);
      *instance =
          new Plugin(host, view);  // NOLINT(bugprone-unhandled-exception-at-new): caught below
    });
  }
  static void destroy(void* instance) noexcept {
    try {
      delete static_cast<Plugin*>(instance);
    } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not cross the ABI
    }
  }
  static Plugin& self(void* instance) { return *static_cast<Plugin*>(instance); }

  static clhost_status_t task_begin(void* instance, const clhost_task_info_t* task,
                                    clhost_error_t* error) noexcept {
    return guarded_call(error, [&] { self(instance).on_task_begin(*task); });
  }
  static clhost_status_t after_backward(void* instance, const clhost_step_info_t* step,
                                        double* penalty, clhost_error_t* error) noexcept {
    return guarded_call(error, [&] { *penalty = self(instance).after_backward(*step); });
  }
  static clhost_status_t task_end(void* instance, const clhost_task_info_t* task,
                                  clhost_error_t* error) noexcept {
    return guarded_call(error, [&] { self(instance).on_task_end(*task); });
  }
  static void describe(void* instance, char* buffer, size_t size) noexcept {
    try {
      std::snprintf(buffer, size, "%s", self(instance).describe().c_str());
    } catch (...) {
      std::snprintf(buffer, size, "%s", "");
    }
  }
  static clhost_status_t choose(void* instance, const clhost_batch_request_t* request,
                                int64_t* micro_batch, clhost_error_t* error) noexcept {
    return guarded_call(error, [&] { *micro_batch = self(instance).choose_micro_batch(*request); });
  }
  static const char* last_reason(void* instance) noexcept {
    if constexpr (std::is_base_of_v<BatchPolicy, Plugin>) {
      return self(instance).reason().c_str();
    } else {
      return "";
    }
  }
  static clhost_status_t event(void* instance, const clhost_event_t* event,
                               clhost_error_t* error) noexcept {
    return guarded_call(error, [&] { self(instance).on_event(*event); });
  }
  static clhost_status_t output_loss(void* instance, const clhost_output_batch_t* batch,
                                     double* value, DLTensor* gradient,
                                     clhost_error_t* error) noexcept {
    return guarded_call(error, [&] { *value = self(instance).output_loss(*batch, *gradient); });
  }
  static void copy_indices(const std::vector<int64_t>& from, int64_t capacity, int64_t* to,
                           int64_t* count, const char* what) {
    if (static_cast<int64_t>(from.size()) > capacity) {
      throw Error(std::string(what) + " returned " + std::to_string(from.size()) +
                      " entries; there is room for " + std::to_string(capacity),
                  CLHOST_STATUS_INVALID_ARGUMENT);
    }
    std::copy(from.begin(), from.end(), to);
    *count = static_cast<int64_t>(from.size());
  }
  static clhost_status_t replay_select(void* instance, const clhost_replay_candidates_t* offer,
                                       int64_t* keep, int64_t* kept,
                                       clhost_error_t* error) noexcept {
    return guarded_call(error, [&] {
      copy_indices(self(instance).select(*offer), offer->stored + offer->candidates, keep, kept,
                   "select");
    });
  }
  static clhost_status_t replay_draw(void* instance, const clhost_replay_draw_t* draw,
                                     int64_t* slots, int64_t max_count, int64_t* count,
                                     clhost_error_t* error) noexcept {
    return guarded_call(
        error, [&] { copy_indices(self(instance).draw(*draw), max_count, slots, count, "draw"); });
  }

  static size_t report(void* instance, char* buffer, size_t size) noexcept {
    try {
      const std::string json = self(instance).report_json();
      if (size > 0) std::snprintf(buffer, size, "%s", json.c_str());
      return json.size();
    } catch (...) {
      if (size > 0) buffer[0] = '\0';
      return 0;
    }
  }

  static clhost_status_t save(void* instance, clhost_state_write_fn write, void* writer_data,
                              clhost_error_t* error) noexcept {
    return guarded_call(error, [&] {
      StateWriter out(write, writer_data);
      self(instance).save_state(out);
    });
  }
  static clhost_status_t restore(void* instance, const void* bytes, size_t size,
                                 clhost_error_t* error) noexcept {
    return guarded_call(error, [&] {
      StateReader in(bytes, size);
      self(instance).restore_state(in);
      in.finish();
    });
  }

  static void unused_keys(const clhost_host_t* host, const clhost_config_t* config,
                          clhost_unused_key_fn sink, void* sink_data) noexcept {
    try {
      UnusedKeys unused(sink, sink_data);
      Plugin::unused_keys(Config(config), Settings(host), unused);
    } catch (...) {  // NOLINT(bugprone-empty-catch): must not fail; the keys then count as used
    }
  }

  static clhost_status_t plan_memory(const clhost_host_t* host, const clhost_config_t* config,
                                     const clhost_memory_plan_request_t* request,
                                     clhost_memory_plan_answer_t* out,
                                     clhost_error_t* error) noexcept {
    return guarded_call(error, [&] {
      MemoryPlanRequest wanted;
      wanted.parameter_numels.assign(request->parameter_numels,
                                     request->parameter_numels + request->parameter_count);
      wanted.tasks = request->tasks;
      wanted.fisher_block_size = request->fisher_block_size;
      const MemoryPlan plan = Plugin::plan_memory(Config(config), Settings(host), wanted);
      out->state_bytes = plan.state_bytes;
      out->consolidation_bytes = plan.consolidation_bytes;
      out->advice = plan.advice;
      // A host older than 1.8 hands a shorter answer.
      if (CLHOST_HAS_MEMBER(out, clhost_memory_plan_answer_t, fisher_samples_per_pass)) {
        out->fisher_samples_per_pass = plan.fisher_samples_per_pass;
      }
      if (CLHOST_HAS_MEMBER(out, clhost_memory_plan_answer_t, replay_capacity)) {
        out->replay_samples_per_step = plan.replay_samples_per_step;
        out->replay_capacity = plan.replay_capacity;
      }
    });
  }

  static const void* get_interface(const char* id) noexcept {
    static const clhost_report_v1_t report_table{sizeof(clhost_report_v1_t), &report};
    if (std::strcmp(id, CLHOST_INTERFACE_REPORT_V1) == 0) return &report_table;
    if constexpr (HasMemoryPlan<Plugin>::value) {
      static const clhost_memory_plan_v1_t plan_table{sizeof(clhost_memory_plan_v1_t),
                                                      &plan_memory};
      if (std::strcmp(id, CLHOST_INTERFACE_MEMORY_PLAN_V1) == 0) return &plan_table;
    }
    if constexpr (HasUnusedKeys<Plugin>::value) {
      static const clhost_config_use_v1_t use_table{sizeof(clhost_config_use_v1_t), &unused_keys};
      if (std::strcmp(id, CLHOST_INTERFACE_CONFIG_USE_V1) == 0) return &use_table;
    }
    if constexpr (HasState<Plugin>::value) {
      static const clhost_state_v1_t state_table{sizeof(clhost_state_v1_t), &save, &restore};
      if (std::strcmp(id, CLHOST_INTERFACE_STATE_V1) == 0) return &state_table;
    }
    if constexpr (std::is_base_of_v<Regularizer, Plugin>) {
      static const clhost_regularizer_v1_t table{sizeof(clhost_regularizer_v1_t), &task_begin,
                                                 &after_backward, &task_end, &describe};
      if (std::strcmp(id, CLHOST_INTERFACE_REGULARIZER_V1) == 0) return &table;
      if constexpr (HasOutputLoss<Plugin>::value) {
        static const clhost_output_loss_v1_t loss_table{sizeof(clhost_output_loss_v1_t),
                                                        &output_loss};
        if (std::strcmp(id, CLHOST_INTERFACE_OUTPUT_LOSS_V1) == 0) return &loss_table;
      }
    } else if constexpr (std::is_base_of_v<Replay, Plugin>) {
      static const clhost_replay_v1_t table{sizeof(clhost_replay_v1_t), &replay_select,
                                            &replay_draw, Plugin::kWantsCandidateInputs ? 1 : 0};
      if (std::strcmp(id, CLHOST_INTERFACE_REPLAY_V1) == 0) return &table;
    } else if constexpr (std::is_base_of_v<BatchPolicy, Plugin>) {
      static const clhost_batch_policy_v1_t table{sizeof(clhost_batch_policy_v1_t), &choose,
                                                  &last_reason};
      if (std::strcmp(id, CLHOST_INTERFACE_BATCH_POLICY_V1) == 0) return &table;
    } else {
      static_assert(std::is_base_of_v<Profiler, Plugin>,
                    "a plug-in class derives from Regularizer, BatchPolicy, Replay or Profiler");
      static const clhost_profiler_v1_t table{sizeof(clhost_profiler_v1_t), &event};
      if (std::strcmp(id, CLHOST_INTERFACE_PROFILER_V1) == 0) return &table;
    }
    return nullptr;
  }
};

}  // namespace detail

template <class Plugin>
const clhost_plugin_entry_t* make_entry(const clhost_plugin_descriptor_t* descriptor,
                                        const clhost_build_fingerprint_t* fingerprint) noexcept {
  using T = detail::Trampolines<Plugin>;
  static const clhost_plugin_entry_t entry{sizeof(clhost_plugin_entry_t),
                                           {CLHOST_ABI_VERSION_MAJOR, CLHOST_ABI_VERSION_MINOR},
                                           descriptor,
                                           fingerprint,
                                           &T::create,
                                           &T::destroy,
                                           &T::get_interface};
  return &entry;
}

}  // namespace clhost::sdk

// Defines the plug-in's single exported symbol. FINGERPRINT: nullptr, or
// CLHOST_TORCH_FINGERPRINT from plugin_torch.hpp when the plug-in uses the LibTorch C++ API.
#define CLHOST_DEFINE_PLUGIN(PLUGIN_CLASS, DESCRIPTOR, FINGERPRINT)                 \
  extern "C" CLHOST_EXPORT const clhost_plugin_entry_t* clhost_plugin_entry(void) { \
    return ::clhost::sdk::make_entry<PLUGIN_CLASS>(&(DESCRIPTOR), (FINGERPRINT));   \
  }

#endif  // CLHOST_SDK_PLUGIN_HPP
