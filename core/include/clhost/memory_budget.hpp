// A counting CPU allocator for LibTorch with an optional budget. Installed through
// c10::SetCPUAllocator, it counts the bytes of every CPU tensor allocated afterwards (current and
// peak) and throws LibTorch's OutOfMemoryError when an allocation would pass the budget, so that
// out-of-memory handling is real and testable without a GPU.
#pragma once

#include <cstdint>
#include <exception>
#include <string>

namespace clhost::memory {

// Idempotent; the allocator lives until the process exits (tensors may outlive any scope).
void install_counting_allocator();

// Freed CPU memory up to `bytes` stays in the process for the next allocation instead of going
// back to the operating system: glibc's mmap and trim thresholds, process-wide. On a virtual
// machine every page handed back costs a page fault when it is touched again, and LibTorch frees
// and reallocates the same large buffers every step (bench_sequence: the Fisher pass 2.3x faster
// with 1 GiB than with glibc's own thresholds, training up to 2.4x). 0: every allocation over
// 128 KiB is its own mapping, returned when freed. Throws std::invalid_argument when glibc refuses
// the value.
void keep_freed_memory(int64_t bytes);

// False in a sanitizer build, whose allocator replaces glibc's malloc: no mallopt thresholds, no
// mallinfo2 counters, RSS that follows the sanitizer's quarantine and shadow memory.
[[nodiscard]] bool glibc_allocator();

// Bytes; -1 removes the budget.
void set_budget(int64_t bytes);
[[nodiscard]] int64_t budget();

[[nodiscard]] int64_t current_bytes();
[[nodiscard]] int64_t peak_bytes();
// Sets the peak to the current value (start of a measured phase).
void reset_peak();
// Sets the peak back to `bytes` (or the current value, if higher) after a measurement that must
// not count in the run's peak (the memory plan's probe).
void restore_peak(int64_t bytes);

// The peak of a phase above what was live when it began (a Fisher pass), measured inside the
// run's own: on destruction the peak is the larger of the one before and the phase's.
class NestedPeak {
 public:
  NestedPeak();
  ~NestedPeak();
  NestedPeak(const NestedPeak&) = delete;
  NestedPeak& operator=(const NestedPeak&) = delete;
  NestedPeak(NestedPeak&&) = delete;
  NestedPeak& operator=(NestedPeak&&) = delete;
  // Bytes above the start, at the phase's peak so far.
  [[nodiscard]] int64_t growth() const;

 private:
  int64_t outer_peak_;
  int64_t start_;
};

// True for LibTorch's OutOfMemoryError and errors whose message says the allocator failed
// ("out of memory", "DefaultCPUAllocator: can't allocate memory").
[[nodiscard]] bool is_out_of_memory(const std::exception& error);

// "1.5GiB", "512 MiB", "2GB", "1e9", "1048576" -> bytes. Throws std::invalid_argument.
[[nodiscard]] int64_t parse_bytes(const std::string& text);
[[nodiscard]] std::string format_bytes(int64_t bytes);

}  // namespace clhost::memory
