// Training checkpoints in a run directory (docs/outputs.md, "Checkpoints").
//
// RUN_DIR/checkpoints/<sequence>/ holds the files of one checkpoint and a manifest.json naming
// each file with its size and CRC-32; the manifest is written last, so a directory without a
// valid manifest is not a checkpoint. RUN_DIR/checkpoints/LATEST names the newest one and is
// replaced atomically after it is complete; older checkpoints are removed only then. A crash at
// any moment leaves the previous checkpoint whole.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace clhost {

// Receives a file's bytes in pieces, in order.
using ByteSink = std::function<void(const void* data, size_t size)>;

// One file of a checkpoint. Its bytes are streamed to disk as `produce` hands them over, so a
// checkpoint never holds a second copy of the model, the optimizer or a plug-in's state.
struct CheckpointFile {
  std::string name;  // a plain file name inside the checkpoint directory
  std::function<void(const ByteSink&)> produce;
};
CheckpointFile file_from_bytes(std::string name, std::string bytes);

struct LoadedCheckpoint {
  std::string directory;
  nlohmann::json manifest;
  // Reads one file (its size and CRC-32 were checked when the checkpoint was loaded).
  [[nodiscard]] std::string file(const std::string& name) const;  // throws RunError
  [[nodiscard]] bool has(const std::string& name) const;
};

class CheckpointDirectory {
 public:
  explicit CheckpointDirectory(std::string run_dir);

  // Writes a new checkpoint, streaming each file through a 1 MiB buffer; `info` goes into the
  // manifest next to the file list. Returns the bytes written. On failure (disk full, ...) the
  // partial directory is removed, the previous checkpoint stays, and a RunError names the file and
  // the reason.
  int64_t write(const std::vector<CheckpointFile>& files, const nlohmann::json& info);

  // The newest checkpoint whose manifest and files check out. Throws RunError saying what is
  // wrong when there is none.
  [[nodiscard]] LoadedCheckpoint load_latest() const;

  // Whether any numbered checkpoint directory exists (complete or damaged).
  [[nodiscard]] bool has_checkpoints() const;

  [[nodiscard]] std::string root() const { return root_; }

 private:
  std::string root_;
  int64_t next_sequence_ = 1;
};

// Test hook: when the environment variable CLHOST_TEST_KILL_AT is "<point>:<n>", the n-th call
// of crash_point(<point>) in this process kills it with SIGKILL (as a crash would), or with a
// ":SIGINT" suffix sends it SIGINT (as Ctrl-C would). Unset — in
// every normal run — each call is one branch on a cached flag.
void crash_point(const char* point);

// Test hook: when CLHOST_TEST_OOM_AT is "<point>:<n>", the n-th call of
// out_of_memory_point(<point>) throws LibTorch's out-of-memory error, as an allocation past
// run.memory_budget would; with CLHOST_TEST_OOM_RANK=R only rank R of a data-parallel run does (one
// rank's out-of-memory).
void out_of_memory_point(const char* point);

}  // namespace clhost
