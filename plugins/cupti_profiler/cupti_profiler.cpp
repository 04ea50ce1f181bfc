// cupti_profiler: CUDA memory activity (every device allocation and release the driver sees,
// with size and timestamp) and kernel counts, through the CUPTI Activity API. It links CUPTI, not
// LibTorch, and reports into the run's timeline with named events (clhost.events/1) at the end
// of every task and evaluation, so memory_profiler's JSON and picture carry the GPU figures too.
//
// CUPTI sees the CUDA driver: a LibTorch run's caching allocator shows up as the large segments
// it reserves (cudaMalloc), not as single tensors.
//
// Without a CUDA driver or device the plug-in loads, says so once, and does nothing.
#include <cupti.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>
#include <clhost/plugin.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const clhost_config_key_t kSchema[] = {
    {"output_dir", CLHOST_CONFIG_TYPE_STRING, "\"logs/memory_profile\"",
     "where cupti_YYYYMMDD_HHMMSS.json goes; relative paths are inside the run directory", 0, 0, 0,
     nullptr},
    {"max_records", CLHOST_CONFIG_TYPE_INT, "1000000",
     "memory records kept in the JSON (totals count every record)", 1, 0, 1e9, nullptr},
    {"kernels", CLHOST_CONFIG_TYPE_BOOL, "true",
     "count kernel launches (concurrent-kernel records)", 0, 0, 0, nullptr},
};

const clhost_plugin_descriptor_t kDescriptor{
    sizeof(clhost_plugin_descriptor_t),
    "cupti_profiler",
    CLHOST_PLUGIN_KIND_PROFILER,
    "1.0.0",
    "CUDA memory allocation/release records and kernel counts via the CUPTI Activity API",
    "clhost",
    kSchema,
    sizeof(kSchema) / sizeof(kSchema[0])};

constexpr size_t kBufferBytes = 8U << 20U;

std::string cupti_error(CUptiResult result) {
  const char* text = nullptr;
  cuptiGetResultString(result, &text);
  return text != nullptr ? text : "CUPTI error " + std::to_string(static_cast<int>(result));
}

// Why CUDA cannot be profiled here, or "" when a driver and at least one device are present.
// The driver is looked up at run time so that the plug-in loads on machines without one.
std::string cuda_unavailable_reason() {
  void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (driver == nullptr) return "no CUDA driver (libcuda.so.1 not found)";
  using InitFn = int (*)(unsigned int);
  using CountFn = int (*)(int*);
  auto init = reinterpret_cast<InitFn>(dlsym(driver, "cuInit"));
  auto count = reinterpret_cast<CountFn>(dlsym(driver, "cuDeviceGetCount"));
  int devices = 0;
  if (init == nullptr || count == nullptr) return "libcuda.so.1 lacks cuInit/cuDeviceGetCount";
  if (const int status = init(0); status != 0) {
    return "cuInit failed (CUresult " + std::to_string(status) + ")";
  }
  if (count(&devices) != 0 || devices == 0) return "the driver reports no device";
  return {};
}

struct MemoryRecord {
  double time_seconds;
  bool allocation;
  uint64_t bytes;
  uint32_t device;
  int64_t live_bytes;  // on that device, after this record
};

// CUPTI's buffer callbacks carry no user pointer: they reach the one active profiler here.
class CuptiProfiler;
std::atomic<CuptiProfiler*> g_active{nullptr};

class CuptiProfiler : public clhost::sdk::Profiler {
 public:
  CuptiProfiler(const clhost_host_t* host, const clhost::sdk::Config& config)
      : Profiler(host),
        output_dir_(config.get_string("output_dir")),
        max_records_(static_cast<size_t>(config.get_int("max_records"))),
        count_kernels_(config.get_bool("kernels")) {
    disabled_reason_ = cuda_unavailable_reason();
    if (!disabled_reason_.empty()) {
      this->host().log(CLHOST_LOG_WARNING,
                       "no CUDA device: cupti_profiler disabled (" + disabled_reason_ + ")");
      return;
    }
    CuptiProfiler* expected = nullptr;
    if (!g_active.compare_exchange_strong(expected, this)) {
      throw clhost::sdk::Error("only one cupti_profiler can run in a process",
                               CLHOST_STATUS_INVALID_ARGUMENT);
    }
    try {
      check(cuptiActivityRegisterCallbacks(&buffer_requested, &buffer_completed),
            "cuptiActivityRegisterCallbacks");
      check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMORY2), "enable MEMORY2");
      if (count_kernels_) {
        check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL),
              "enable CONCURRENT_KERNEL");
      }
    } catch (...) {
      g_active.store(nullptr);
      throw;
    }
  }

  ~CuptiProfiler() override {
    if (g_active.load() != this) return;
    cuptiActivityFlushAll(1);
    cuptiActivityDisable(CUPTI_ACTIVITY_KIND_MEMORY2);
    if (count_kernels_) cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    g_active.store(nullptr);
  }
  CuptiProfiler(const CuptiProfiler&) = delete;
  CuptiProfiler& operator=(const CuptiProfiler&) = delete;
  CuptiProfiler(CuptiProfiler&&) = delete;
  CuptiProfiler& operator=(CuptiProfiler&&) = delete;

  void on_event(const clhost_event_t& event) override {
    if (!disabled_reason_.empty() || event.kind == CLHOST_EVENT_USER) return;
    if (event.kind == CLHOST_EVENT_RUN_BEGIN) {
      run_dir_ = event.run_dir != nullptr ? event.run_dir : ".";
      started_at_ = std::time(nullptr);
      uint64_t now = 0;
      check(cuptiGetTimestamp(&now), "cuptiGetTimestamp");
      const std::lock_guard<std::mutex> lock(mutex_);
      origin_ns_ = now;
      origin_seconds_ = event.time_seconds;
      return;
    }
    const bool summarise = event.kind == CLHOST_EVENT_TASK_END ||
                           event.kind == CLHOST_EVENT_EVAL_END ||
                           event.kind == CLHOST_EVENT_RUN_END;
    if (!summarise) return;
    check(cuptiActivityFlushAll(0), "cuptiActivityFlushAll");
    std::string line;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      char buffer[256];
      std::snprintf(buffer, sizeof(buffer),
                    "cuda: %.1f MiB live, peak %.1f MiB, %lld allocations / %lld releases, "
                    "%lld kernels",
                    static_cast<double>(total_live()) / 1048576.0,
                    static_cast<double>(peak_live_) / 1048576.0,
                    static_cast<long long>(allocations_), static_cast<long long>(releases_),
                    static_cast<long long>(kernels_));
      line = buffer;
    }
    host().mark(line);
    if (event.kind == CLHOST_EVENT_RUN_END) write_records();
  }

  [[nodiscard]] std::string report_json() const override {
    if (!disabled_reason_.empty()) {
      return json{{"enabled", false}, {"reason", disabled_reason_}}.dump();
    }
    const std::lock_guard<std::mutex> lock(mutex_);
    return json{{"enabled", true},
                {"allocations", allocations_},
                {"releases", releases_},
                {"allocated_bytes_total", allocated_bytes_total_},
                {"peak_live_bytes", peak_live_},
                {"kernels", kernels_},
                {"dropped_records", dropped_},
                {"file", file_}}
        .dump();
  }

 private:
  static void check(CUptiResult result, const char* what) {
    if (result != CUPTI_SUCCESS) {
      throw clhost::sdk::Error(std::string("cupti_profiler: ") + what + ": " + cupti_error(result),
                               CLHOST_STATUS_INTERNAL);
    }
  }

  static void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
    // CUPTI wants 8-byte alignment.
    *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
    *size = *buffer != nullptr ? kBufferBytes : 0;
    *max_records = 0;
  }

  static void CUPTIAPI buffer_completed(CUcontext context, uint32_t stream, uint8_t* buffer,
                                        size_t /*size*/, size_t valid_size) {
    if (CuptiProfiler* self = g_active.load()) self->consume(context, stream, buffer, valid_size);
    std::free(buffer);
  }

  int64_t total_live() const {
    int64_t sum = 0;
    for (const auto& [device, bytes] : live_by_device_) sum += bytes;
    return sum;
  }

  void consume(CUcontext context, uint32_t stream, uint8_t* buffer, size_t valid_size) {
    const std::lock_guard<std::mutex> lock(mutex_);
    CUpti_Activity* record = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid_size, &record) == CUPTI_SUCCESS) {
      if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL ||
          record->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
        ++kernels_;
      } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMORY2) {
        // The leading members are the same in every CUpti_ActivityMemory revision.
        const auto* memory = reinterpret_cast<const CUpti_ActivityMemory4*>(record);
        const bool allocation =
            memory->memoryOperationType == CUPTI_ACTIVITY_MEMORY_OPERATION_TYPE_ALLOCATION;
        int64_t& live = live_by_device_[memory->deviceId];
        live +=
            allocation ? static_cast<int64_t>(memory->bytes) : -static_cast<int64_t>(memory->bytes);
        peak_live_ = std::max(peak_live_, total_live());
        if (allocation) {
          ++allocations_;
          allocated_bytes_total_ += static_cast<int64_t>(memory->bytes);
        } else {
          ++releases_;
        }
        if (records_.size() < max_records_) {
          const double seconds =
              origin_seconds_ +
              static_cast<double>(static_cast<int64_t>(memory->timestamp - origin_ns_)) * 1e-9;
          records_.push_back({seconds, allocation, memory->bytes, memory->deviceId, live});
        }
      }
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(context, stream, &dropped) == CUPTI_SUCCESS) {
      dropped_ += static_cast<int64_t>(dropped);
    }
  }

  void write_records() {
    const fs::path configured(output_dir_);
    const fs::path directory =
        configured.is_absolute() ? configured : fs::path(run_dir_) / configured;
    fs::create_directories(directory);
    std::tm local{};
    localtime_r(&started_at_, &local);
    char stem[64];
    std::strftime(stem, sizeof(stem), "cupti_%Y%m%d_%H%M%S", &local);
    const fs::path path = directory / (std::string(stem) + ".json");
    json records = json::array();
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      for (const MemoryRecord& record : records_) {
        records.push_back(json{{"t_s", record.time_seconds},
                               {"op", record.allocation ? "alloc" : "free"},
                               {"bytes", record.bytes},
                               {"device", record.device},
                               {"live_bytes", record.live_bytes}});
      }
    }
    json document = json::parse(report_json());
    document["schema"] = "clhost.cupti_profile/1";
    document["memory_records"] = std::move(records);
    const fs::path partial = path.string() + ".partial";
    {
      std::ofstream out(partial);
      out << document.dump(1) << "\n";
      if (!out) throw clhost::sdk::Error(partial.string() + ": write failed", CLHOST_STATUS_IO);
    }
    const int fd = ::open(partial.c_str(), O_RDONLY | O_CLOEXEC);  // to disk before the rename
    if (fd >= 0) {
      (void)::fsync(fd);
      ::close(fd);
    }
    fs::rename(partial, path);
    const std::lock_guard<std::mutex> lock(mutex_);
    file_ = path.string();
  }

  const std::string output_dir_;
  const size_t max_records_;
  const bool count_kernels_;
  std::string disabled_reason_;
  std::string run_dir_;
  std::time_t started_at_ = 0;

  mutable std::mutex mutex_;  // CUPTI delivers buffers on its own thread
  uint64_t origin_ns_ = 0;
  double origin_seconds_ = 0;
  std::map<uint32_t, int64_t> live_by_device_;
  int64_t peak_live_ = 0;
  int64_t allocations_ = 0;
  int64_t releases_ = 0;
  int64_t allocated_bytes_total_ = 0;
  int64_t kernels_ = 0;
  int64_t dropped_ = 0;
  std::vector<MemoryRecord> records_;
  std::string file_;
};

}  // namespace

CLHOST_DEFINE_PLUGIN(CuptiProfiler, kDescriptor, nullptr);
