// One fuzz target per reader of untrusted input (docs/testing.md, "Fuzzing").
//
// CLHOST_FUZZ_TARGET(name) { ... } defines a target's body over (data, size). Built with
// -DCLHOST_LIBFUZZER (tools/fuzz.sh, clang's libFuzzer) it is the binary's LLVMFuzzerTestOneInput;
// in every other build it registers with fuzz_replay, which CTest runs over the checked-in seed
// corpus and every crash input kept as a regression (tests/fuzz/regressions/<name>/).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace clhost::fuzz {

using Target = int (*)(const uint8_t* data, size_t size);
bool register_target(const char* name, Target target);
Target find_target(const std::string& name);

// A directory of this process's own (created once, removed at exit): targets write the input
// where the reader under test expects a file.
const std::string& scratch_dir();
// Writes `size` bytes to scratch_dir()/name and returns the path.
std::string write_scratch(const std::string& name, const void* data, size_t size);

// How much a reader may throw for bad input.
enum class Errors {
  kLocated,  // only clhost's own ConfigError, RunError, PluginError (each names where)
  kAnyStd,   // any std::exception (commands whose main prints what() and exits non-zero)
};
// Runs `read`. The errors the reader promises end the input quietly; anything else escaping it is
// a finding: printed with its type's message, then abort() so the fuzzer keeps the input.
void expect_clean_failure(const std::function<void()>& read, Errors errors = Errors::kLocated);

// The input split at NUL bytes (a target taking several strings: a file, then overrides...).
std::vector<std::string> split_at_nul(const uint8_t* data, size_t size);

}  // namespace clhost::fuzz

#ifdef CLHOST_LIBFUZZER
#define CLHOST_FUZZ_TARGET(name) \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
#else
#define CLHOST_FUZZ_TARGET(name)                                   \
  static int fuzz_target_##name(const uint8_t* data, size_t size); \
  [[maybe_unused]] static const bool fuzz_registered_##name =      \
      clhost::fuzz::register_target(#name, &fuzz_target_##name);   \
  static int fuzz_target_##name(const uint8_t* data, size_t size)
#endif
