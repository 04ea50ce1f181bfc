#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <typeinfo>

#include "clhost/errors.hpp"
#include "fuzz_target.hpp"

namespace fs = std::filesystem;

namespace clhost::fuzz {

namespace {

std::map<std::string, Target>& targets() {
  static std::map<std::string, Target> all;
  return all;
}

// Removes the scratch directory when the process ends normally.
struct ScratchDir {
  std::string path;
  ScratchDir() {
    path = (fs::temp_directory_path() / ("clhost_fuzz_" + std::to_string(getpid()))).string();
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  ScratchDir(ScratchDir&&) = delete;
  ScratchDir& operator=(ScratchDir&&) = delete;
};

[[noreturn]] void finding(const char* kind, const char* what) {
  std::fprintf(stderr, "fuzz finding: %s escaped the reader: %s\n", kind, what);
  std::abort();
}

}  // namespace

bool register_target(const char* name, Target target) {
  targets()[name] = target;
  return true;
}

Target find_target(const std::string& name) {
  const auto found = targets().find(name);
  return found == targets().end() ? nullptr : found->second;
}

const std::string& scratch_dir() {
  static const ScratchDir dir;
  return dir.path;
}

std::string write_scratch(const std::string& name, const void* data, size_t size) {
  std::string path = (fs::path(scratch_dir()) / name).string();
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out.flush()) finding("a scratch-file write failure", path.c_str());
  return path;
}

void expect_clean_failure(const std::function<void()>& read, Errors errors) {
  // CLHOST_FUZZ_VERBOSE=1 prints each clean failure (is a seed read, or refused?).
  static const bool verbose = std::getenv("CLHOST_FUZZ_VERBOSE") != nullptr;
  const auto refused = [](const std::exception& e) {
    if (verbose) std::fprintf(stderr, "  refused: %s\n", e.what());
  };
  try {
    read();
    if (verbose) std::fprintf(stderr, "  read\n");
  } catch (const ConfigError& e) {
    refused(e);
  } catch (const RunError& e) {
    refused(e);
  } catch (const PluginError& e) {
    refused(e);
  } catch (const std::exception& e) {
    if (errors != Errors::kAnyStd) finding(typeid(e).name(), e.what());
    refused(e);
  } catch (...) {
    finding("a non-std exception", "?");
  }
}

std::vector<std::string> split_at_nul(const uint8_t* data, size_t size) {
  std::vector<std::string> parts(1);
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      parts.emplace_back();
    } else {
      parts.back().push_back(static_cast<char>(data[i]));
    }
  }
  return parts;
}

}  // namespace clhost::fuzz
