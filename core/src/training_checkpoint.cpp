#include "training_checkpoint.hpp"

#include <c10/util/Exception.h>
#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "clhost/errors.hpp"
#include "io.hpp"

namespace clhost {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kFormat = "clhost-checkpoint/1";
constexpr const char* kPartialSuffix = ".partial";

// The numbered checkpoint directories present, newest first.
std::vector<int64_t> sequences_in(const std::string& root) {
  std::vector<int64_t> out;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(root, error)) {
    const std::string name = entry.path().filename().string();
    int64_t sequence = 0;
    const auto [end, parsed] = std::from_chars(name.data(), name.data() + name.size(), sequence);
    // Only clhost's own names count: digits that fit, nothing after them.
    if (!entry.is_directory() || name.empty() || parsed != std::errc() ||
        end != name.data() + name.size() || name[0] == '-') {
      continue;
    }
    out.push_back(sequence);
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw RunError(path + ": cannot open");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// The manifest's file list: plain names inside the checkpoint directory (a crafted "../x" or
// "/etc/x" would read outside it), each once, with a size and a CRC-32.
void check_file_list(const json& manifest, const std::string& manifest_path) {
  const json& files = manifest.value("files", json());
  if (!files.is_array()) throw RunError(manifest_path + ": files: should be an array");
  std::set<std::string> names;
  for (const json& entry : files) {
    const std::string where = manifest_path + ": files[" + std::to_string(names.size()) + "]";
    if (!entry.is_object() || !entry.value("name", json()).is_string() ||
        !entry.value("bytes", json()).is_number_unsigned() ||
        !entry.value("crc32", json()).is_number_unsigned() ||
        entry.at("crc32").get<uint64_t>() > 0xffffffffU) {
      throw RunError(where + ": should be {\"name\": string, \"bytes\": size, \"crc32\": CRC}");
    }
    const auto name = entry.at("name").get<std::string>();
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
        name.find('\0') != std::string::npos || !names.insert(name).second) {
      std::string message = where;
      message.append(": name '").append(name).append("' is not a plain file name, or not unique");
      throw RunError(message);
    }
  }
}

// Checks every file of one checkpoint against its manifest, reading it in pieces; throws
// RunError saying what is off.
LoadedCheckpoint load(const std::string& directory) {
  LoadedCheckpoint out;
  out.directory = directory;
  const std::string manifest_path = (fs::path(directory) / "manifest.json").string();
  if (!fs::exists(manifest_path)) throw RunError(directory + ": no manifest.json (incomplete)");
  out.manifest = json::parse(read_all(manifest_path), nullptr, false);
  if (out.manifest.is_discarded() || !out.manifest.is_object() ||
      out.manifest.value("format", json()) != kFormat) {
    throw RunError(manifest_path + ": not a " + kFormat + " manifest");
  }
  check_file_list(out.manifest, manifest_path);
  std::vector<char> buffer(size_t{1} << 20);
  for (const auto& entry : out.manifest["files"]) {
    const std::string path = (fs::path(directory) / entry.at("name").get<std::string>()).string();
    std::ifstream in(path, std::ios::binary);
    if (!in) throw RunError(path + ": missing");
    uLong crc = ::crc32(0L, Z_NULL, 0);
    int64_t size = 0;
    while (in) {
      in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      const auto got = static_cast<size_t>(in.gcount());
      crc = ::crc32(crc, reinterpret_cast<const Bytef*>(buffer.data()), static_cast<uInt>(got));
      size += static_cast<int64_t>(got);
    }
    if (size != entry.at("bytes").get<int64_t>()) {
      throw RunError(path + ": " + std::to_string(size) + " bytes, the manifest says " +
                     std::to_string(entry.at("bytes").get<int64_t>()));
    }
    if (static_cast<uint32_t>(crc) != entry.at("crc32").get<uint32_t>()) {
      throw RunError(path + ": CRC-32 does not match the manifest (the file is damaged)");
    }
  }
  return out;
}

// Writes one file through a buffer, with its CRC-32 and size; fsyncs it.
class StreamedFile {
 public:
  explicit StreamedFile(std::string path) : path_(std::move(path)), buffer_(size_t{1} << 20) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create", errno);
  }
  ~StreamedFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  StreamedFile(const StreamedFile&) = delete;
  StreamedFile& operator=(const StreamedFile&) = delete;
  StreamedFile(StreamedFile&&) = delete;
  StreamedFile& operator=(StreamedFile&&) = delete;

  void append(const void* data, size_t size) {
    const auto* bytes = static_cast<const char*>(data);
    while (size > 0) {
      const size_t piece = std::min(size, buffer_.size() - used_);
      std::memcpy(buffer_.data() + used_, bytes, piece);
      used_ += piece;
      bytes += piece;
      size -= piece;
      if (used_ == buffer_.size()) flush();
    }
  }
  void finish() {
    flush();
    if (::fsync(fd_) != 0) fail("fsync failed", errno);
    if (::close(fd_) != 0) {
      fd_ = -1;
      fail("close failed", errno);
    }
    fd_ = -1;
  }
  [[nodiscard]] int64_t size() const { return size_; }
  [[nodiscard]] uint32_t crc() const { return static_cast<uint32_t>(crc_); }

 private:
  void flush() {
    crc_ = ::crc32(crc_, reinterpret_cast<const Bytef*>(buffer_.data()), static_cast<uInt>(used_));
    size_t written = 0;
    while (written < used_) {
      const ssize_t n = ::write(fd_, buffer_.data() + written, used_ - written);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail("write failed", errno);
      }
      written += static_cast<size_t>(n);
    }
    size_ += static_cast<int64_t>(used_);
    used_ = 0;
  }
  [[noreturn]] void fail(const char* what, int error_number) const {
    throw RunError(failure(path_, what, error_number));
  }

  std::string path_;
  int fd_ = -1;
  std::vector<char> buffer_;
  size_t used_ = 0;
  int64_t size_ = 0;
  uLong crc_ = ::crc32(0L, Z_NULL, 0);
};

void fsync_directory(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

}  // namespace

CheckpointFile file_from_bytes(std::string name, std::string bytes) {
  return {std::move(name),
          [bytes = std::move(bytes)](const ByteSink& sink) { sink(bytes.data(), bytes.size()); }};
}

std::string LoadedCheckpoint::file(const std::string& name) const {
  if (!has(name)) throw RunError(directory + ": the checkpoint has no file '" + name + "'");
  return read_all((fs::path(directory) / name).string());
}

bool LoadedCheckpoint::has(const std::string& name) const {
  const auto& files = manifest.at("files");
  return std::any_of(files.begin(), files.end(),
                     [&](const json& entry) { return entry.at("name") == name; });
}

CheckpointDirectory::CheckpointDirectory(std::string run_dir)
    : root_((fs::path(std::move(run_dir)) / "checkpoints").string()) {
  const auto existing = sequences_in(root_);
  if (!existing.empty()) next_sequence_ = existing.front() + 1;
}

int64_t CheckpointDirectory::write(const std::vector<CheckpointFile>& files, const json& info) {
  const int64_t sequence = next_sequence_;
  const std::string final_dir = (fs::path(root_) / std::to_string(sequence)).string();
  const std::string partial = final_dir + kPartialSuffix;
  std::error_code error;
  fs::remove_all(partial, error);
  fs::create_directories(partial, error);
  if (error)
    throw RunError(partial + ": cannot create the checkpoint directory: " + error.message());
  int64_t total = 0;
  try {
    json manifest = info;
    manifest["format"] = kFormat;
    manifest["sequence"] = sequence;
    manifest["files"] = json::array();
    for (const auto& file : files) {
      StreamedFile out((fs::path(partial) / file.name).string());
      file.produce([&](const void* data, size_t size) { out.append(data, size); });
      out.finish();
      manifest["files"].push_back(
          json{{"name", file.name}, {"bytes", out.size()}, {"crc32", out.crc()}});
      total += out.size();
      crash_point("checkpoint");
    }
    // The manifest last: without it the directory is not a checkpoint.
    const std::string manifest_text = manifest.dump(2) + "\n";
    write_file_synced((fs::path(partial) / "manifest.json").string(), manifest_text);
    total += static_cast<int64_t>(manifest_text.size());
    fsync_directory(partial);
    fs::rename(partial, final_dir, error);
    if (error) throw RunError(final_dir + ": cannot rename the checkpoint: " + error.message());
    fsync_directory(root_);
    crash_point("checkpoint");
    write_file_atomic((fs::path(root_) / "LATEST").string(), std::to_string(sequence) + "\n");
  } catch (...) {
    fs::remove_all(partial, error);
    throw;
  }
  next_sequence_ = sequence + 1;
  // Only now may the older ones go.
  for (const int64_t old : sequences_in(root_)) {
    if (old < sequence) fs::remove_all(fs::path(root_) / std::to_string(old), error);
  }
  return total;
}

bool CheckpointDirectory::has_checkpoints() const {
  return !sequences_in(root_).empty();
}

LoadedCheckpoint CheckpointDirectory::load_latest() const {
  if (!fs::is_directory(root_)) {
    throw RunError(root_ + ": no checkpoints (was the run started by a clhost with checkpoints?)");
  }
  std::string problems;
  for (const int64_t sequence : sequences_in(root_)) {
    try {
      return load((fs::path(root_) / std::to_string(sequence)).string());
    } catch (const std::exception& e) {
      problems += std::string("\n  ") + e.what();
    }
  }
  throw RunError(
      root_ + ": no complete checkpoint" +
      (problems.empty() ? std::string(" (the run stopped before its first one)") : ":" + problems));
}

namespace {

// A test hook's "<point>:<n>" from `variable`, inactive when unset or when `rank_variable` names
// another rank than this process's (its RANK variable).
struct TestHook {
  bool active = false;
  std::string point;
  long long at_call = 0;
  int signal_number = SIGKILL;
};

TestHook parse_test_hook(const char* variable, const char* rank_variable) {
  TestHook parsed;
  const char* value = std::getenv(variable);
  if (value == nullptr || *value == '\0') return parsed;
  const char* only_rank = std::getenv(rank_variable);
  const char* rank = std::getenv("RANK");
  if (only_rank != nullptr && std::string(only_rank) != (rank != nullptr ? rank : "0")) {
    return parsed;
  }
  std::string text(value);
  const std::string sigint_suffix = ":SIGINT";
  if (text.size() > sigint_suffix.size() &&
      text.compare(text.size() - sigint_suffix.size(), sigint_suffix.size(), sigint_suffix) == 0) {
    parsed.signal_number = SIGINT;
    text.resize(text.size() - sigint_suffix.size());
  }
  const size_t colon = text.rfind(':');
  parsed.active = true;
  parsed.point = text.substr(0, colon);
  parsed.at_call = colon == std::string::npos ? 1 : std::atoll(text.c_str() + colon + 1);
  return parsed;
}

}  // namespace

void crash_point(const char* point) {
  // CLHOST_TEST_KILL_RANK=R: only rank R of a data-parallel run stops.
  static const TestHook hook = parse_test_hook("CLHOST_TEST_KILL_AT", "CLHOST_TEST_KILL_RANK");
  if (!hook.active || hook.point != point) return;
  static std::atomic<long long> calls{0};
  if (++calls == hook.at_call) ::raise(hook.signal_number);
}

void out_of_memory_point(const char* point) {
  static const TestHook hook = parse_test_hook("CLHOST_TEST_OOM_AT", "CLHOST_TEST_OOM_RANK");
  if (!hook.active || hook.point != point) return;
  static std::atomic<long long> calls{0};
  if (++calls == hook.at_call) {
    TORCH_CHECK_WITH(OutOfMemoryError, false, "injected by CLHOST_TEST_OOM_AT (", point, ":",
                     hook.at_call, ")");
  }
}

}  // namespace clhost
