// The Fisher store: an HDF5 file with one group per saved state (e.g. per task) and one flat
// dataset per model parameter, chunked by block, compressed, Fletcher-32 checksummed, with the
// model's fingerprint (parameter names and shapes) so a file is never applied to another model.
// The file named by the path is an index: the model's fingerprint and one HDF5 external link per
// saved group, to that group's own file in "<file>.groups/" (any HDF5 reader follows them).
// Every save is atomic and writes only its own group: the group file is written as
// "<group>.h5.tmp", fsynced and renamed, then the link is added in a copy of the (small) index that
// replaces it the same way. A crash leaves at most an unlinked group file, which is not a group.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace clhost {

struct StoreOptions {
  std::string codec = "gzip";  // gzip | none | lz4 | blosc-lz4 | blosc-zstd | bzip2
  int level = 9;               // gzip 1..9; blosc 1..9
  bool shuffle = true;         // byte shuffle before gzip (blosc shuffles itself)
  std::string dtype = "fp32";  // on-disk type: fp32 | fp16 | bf16 (clamped to the finite range)
  int64_t chunk_elements = 1000000;
};

struct ParameterInfo {
  std::string name;
  std::vector<int64_t> shape;
  [[nodiscard]] int64_t numel() const;
};

struct StoredDataset {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
  std::string codec;
  int64_t vectors = 1;       // parameter-shaped vectors held (a group of vectors: > 1)
  int64_t raw_bytes = 0;     // float32 in memory
  int64_t stored_bytes = 0;  // on disk, after filters
};

struct StoredGroup {
  std::string name;
  std::string description;
  std::vector<StoredDataset> datasets;
};

struct StoreSummary {
  std::string path;
  std::string format;
  std::string clhost_version;
  std::vector<ParameterInfo> model;
  std::vector<StoredGroup> groups;
  int64_t file_bytes = 0;  // the index and its group files
};

class FisherStore {
 public:
  FisherStore(std::string path, StoreOptions options, std::vector<ParameterInfo> model,
              std::string clhost_version);
  ~FisherStore();
  FisherStore(const FisherStore&) = delete;
  FisherStore& operator=(const FisherStore&) = delete;
  FisherStore(FisherStore&&) = delete;
  FisherStore& operator=(FisherStore&&) = delete;

  // All throw RunError with the file, group and parameter named. A group may hold `vectors`
  // parameter-shaped vectors (e.g. a low-rank factor's columns) in one atomic save: vector k of a
  // parameter is its flat elements [k * numel, (k + 1) * numel), which write/read_block address.
  void begin_group(const std::string& group, const std::string& description, int64_t vectors = 1);
  void write_block(size_t parameter, int64_t offset, const float* values, int64_t count);
  void commit_group();
  void abort_group() noexcept;
  void read_block(const std::string& group, size_t parameter, int64_t offset, float* out,
                  int64_t count) const;

  // The groups in the file now (none when it does not exist yet).
  [[nodiscard]] std::vector<std::string> committed_groups() const;
  // Removes every group not in `keep`, atomically like a save (a resumed run redoes them).
  void keep_only(const std::vector<std::string>& keep);

  // Reads the layout of any store file (for `clhost fisher inspect`).
  static StoreSummary inspect(const std::string& path);
  // Checks that the codec's HDF5 filter is available; throws RunError naming the package.
  static void require_codec(const std::string& codec);

 private:
  std::string path_;
  StoreOptions options_;
  std::vector<ParameterInfo> model_;
  std::string clhost_version_;
  int64_t file_ = -1;  // hid_t of the open temporary file, -1 when no group is being written
  int64_t group_ = -1;
  std::string group_name_;
  std::vector<int64_t> written_;  // elements written per parameter in the open group
  // hid_t per parameter of the group being written; -1 once written completely and closed.
  std::vector<int64_t> open_datasets_;

  void close_dataset(size_t parameter);
  [[nodiscard]] std::string set_filters(int64_t properties, uint64_t chunk) const;
  int64_t create_dataset(const ParameterInfo& parameter, int64_t disk_type);
  void link_group(const std::string& group);
  void check_index_accepts(const std::string& group) const;
  void remove_unlinked_group_files(const std::vector<std::string>& linked) const;
  [[nodiscard]] std::string groups_directory() const;
  [[nodiscard]] std::string group_file(const std::string& group) const;
  int64_t vectors_ = 1;
};

}  // namespace clhost
