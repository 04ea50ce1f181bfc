#include "clhost/memory_budget.hpp"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <malloc.h>

#include <atomic>
#include <cctype>
#include <cmath>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

namespace clhost::memory {
namespace {

// Counts the bytes LibTorch holds on the CPU and enforces run.memory_budget. Its DataPtrs keep
// the data pointer as their context, as the default CPU allocator's do, because some kernels
// (convolution scratch buffers) allocate through raw_allocate(), which requires that; the size of
// each live allocation is kept in a table instead.
class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* base)
      : base_(base), base_deleter_(base->raw_deleter()) {}

  c10::DataPtr allocate(size_t bytes) const override {
    const auto size = static_cast<int64_t>(bytes);
    const int64_t limit = budget_.load(std::memory_order_relaxed);
    const int64_t after = current_.fetch_add(size, std::memory_order_relaxed) + size;
    if (limit >= 0 && after > limit) {
      current_.fetch_sub(size, std::memory_order_relaxed);
      TORCH_CHECK_WITH(OutOfMemoryError, false,
                       "clhost memory budget: out of memory: tried to allocate ", bytes,
                       " bytes with ", after - size, " of ", limit, " bytes in use");
    }
    int64_t peak = peak_.load(std::memory_order_relaxed);
    while (after > peak && !peak_.compare_exchange_weak(peak, after, std::memory_order_relaxed)) {
    }
    c10::DataPtr inner;
    try {
      inner = base_->allocate(bytes);
    } catch (...) {
      current_.fetch_sub(size, std::memory_order_relaxed);
      throw;
    }
    void* data = inner.get();
    if (data == nullptr) return inner;  // zero bytes: nothing held
    TORCH_INTERNAL_ASSERT(inner.get_context() == data && base_deleter_ != nullptr,
                          "clhost's counting allocator needs a base CPU allocator whose context "
                          "is the data pointer");
    (void)inner.release_context();  // ownership moves to the DataPtr below
    {
      const std::lock_guard<std::mutex> lock(sizes_mutex_);
      sizes_.emplace(data, size);
    }
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  [[nodiscard]] c10::DeleterFnPtr raw_deleter() const override { return &release; }

  mutable std::atomic<int64_t> current_{0};
  mutable std::atomic<int64_t> peak_{0};
  std::atomic<int64_t> budget_{-1};

 private:
  static void release(void* data);

  c10::Allocator* base_;
  c10::DeleterFnPtr base_deleter_;
  mutable std::mutex sizes_mutex_;
  mutable std::unordered_map<void*, int64_t> sizes_;
};

CountingAllocator*& instance() {
  static CountingAllocator* allocator = nullptr;
  return allocator;
}

void CountingAllocator::release(void* data) {
  CountingAllocator* self = instance();
  int64_t size = 0;
  {
    const std::lock_guard<std::mutex> lock(self->sizes_mutex_);
    const auto found = self->sizes_.find(data);
    if (found != self->sizes_.end()) {
      size = found->second;
      self->sizes_.erase(found);
    }
  }
  self->current_.fetch_sub(size, std::memory_order_relaxed);
  self->base_deleter_(data);
}

}  // namespace

void install_counting_allocator() {
  if (instance() != nullptr) return;
  // Leaked on purpose: tensors freed during static destruction still call into it.
  instance() = new CountingAllocator(c10::GetCPUAllocator());
  c10::SetCPUAllocator(instance(), /*priority=*/100);
}

bool glibc_allocator() {
  // GCC says AddressSanitizer is on with __SANITIZE_ADDRESS__, clang with __has_feature.
#if defined(__SANITIZE_ADDRESS__)
  return false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  return false;
#else
  return true;
#endif
#else
  return true;
#endif
}

void keep_freed_memory(int64_t bytes) {
  constexpr int64_t kGlibcDefault = int64_t{128} * 1024;
  const int64_t threshold = bytes > 0 ? bytes : kGlibcDefault;
  if (threshold > INT32_MAX) {
    throw std::invalid_argument("glibc's thresholds are ints: at most " +
                                std::to_string(INT32_MAX) + " bytes, not " + format_bytes(bytes));
  }
  const int value = static_cast<int>(threshold);
  // A sanitizer build: its malloc has no such thresholds (mallopt refuses every one); freed
  // memory is its quarantine's, not ours, to keep.
  if (!glibc_allocator()) return;
  if (mallopt(M_MMAP_THRESHOLD, value) != 1 || mallopt(M_TRIM_THRESHOLD, value) != 1) {
    throw std::invalid_argument("glibc's mallopt refused " + format_bytes(bytes));
  }
}

void set_budget(int64_t bytes) {
  install_counting_allocator();
  instance()->budget_.store(bytes < 0 ? -1 : bytes);
}

int64_t budget() {
  return instance() != nullptr ? instance()->budget_.load() : -1;
}
int64_t current_bytes() {
  return instance() != nullptr ? instance()->current_.load() : -1;
}
int64_t peak_bytes() {
  return instance() != nullptr ? instance()->peak_.load() : -1;
}
void reset_peak() {
  if (instance() != nullptr) instance()->peak_.store(instance()->current_.load());
}
NestedPeak::NestedPeak() : outer_peak_(peak_bytes()) {
  reset_peak();
  start_ = current_bytes();
}

NestedPeak::~NestedPeak() {
  restore_peak(std::max(outer_peak_, peak_bytes()));
}

int64_t NestedPeak::growth() const {
  return peak_bytes() - start_;
}

void restore_peak(int64_t bytes) {
  if (instance() != nullptr) {
    instance()->peak_.store(std::max(bytes, instance()->current_.load()));
  }
}

bool is_out_of_memory(const std::exception& error) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&error) != nullptr) return true;
  const char* message = error.what();
  return std::strstr(message, "out of memory") != nullptr ||
         std::strstr(message, "DefaultCPUAllocator: can't allocate memory") != nullptr;
}

int64_t parse_bytes(const std::string& text) {
  size_t index = 0;
  double value = 0.0;
  try {
    value = std::stod(text, &index);
  } catch (const std::exception&) {
    throw std::invalid_argument("'" + text + "' is not a size (e.g. 1.5GiB, 512MiB, 2GB, 1048576)");
  }
  std::string unit;
  for (size_t i = index; i < text.size(); ++i) {
    if (!std::isspace(static_cast<unsigned char>(text[i])))
      unit += static_cast<char>(std::tolower(static_cast<unsigned char>(text[i])));
  }
  double scale = 1.0;
  if (unit.empty() || unit == "b")
    scale = 1.0;
  else if (unit == "kib")
    scale = 1024.0;
  else if (unit == "mib")
    scale = 1024.0 * 1024.0;
  else if (unit == "gib")
    scale = 1024.0 * 1024.0 * 1024.0;
  else if (unit == "tib")
    scale = 1024.0 * 1024.0 * 1024.0 * 1024.0;
  else if (unit == "kb")
    scale = 1e3;
  else if (unit == "mb")
    scale = 1e6;
  else if (unit == "gb")
    scale = 1e9;
  else if (unit == "tb")
    scale = 1e12;
  else
    throw std::invalid_argument("'" + text + "': unknown unit '" + unit +
                                "' (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)");
  const double bytes = value * scale;
  if (!std::isfinite(bytes) || bytes < 1.0 || bytes > 9.0e18) {
    throw std::invalid_argument("'" + text + "' is out of range (1 byte .. 9e18 bytes)");
  }
  return static_cast<int64_t>(bytes);
}

std::string format_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (std::abs(value) >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
  return buffer;
}

}  // namespace clhost::memory
