#include "clhost/fisher_store.hpp"

#include <c10/util/Half.h>
#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <thread>

#include "clhost/errors.hpp"

namespace clhost {
namespace {

namespace fs = std::filesystem;
constexpr const char* kFormat = "clhost-fisher-store/1";
// One group's own file under <store>.groups/, reached from the index by an external link.
constexpr const char* kGroupFormat = "clhost-fisher-store-group/1";
constexpr const char* kDebianPluginDir = "/usr/lib/x86_64-linux-gnu/hdf5/serial/plugins";

struct CodecInfo {
  const char* name;
  H5Z_filter_t filter;
  const char* package;
};

// Registered HDF5 filter ids (https://portal.hdfgroup.org/display/support/Registered+Filters).
const CodecInfo kCodecs[] = {
    {"none", H5Z_FILTER_NONE, ""},
    {"gzip", H5Z_FILTER_DEFLATE, "libhdf5 (built in)"},
    {"lz4", 32004, "hdf5-filter-plugin"},
    {"bzip2", 307, "hdf5-filter-plugin"},
    {"blosc-lz4", 32001, "hdf5-filter-plugin-blosc-serial"},
    {"blosc-zstd", 32001, "hdf5-filter-plugin-blosc-serial"},
};

const CodecInfo& codec_info(const std::string& codec) {
  for (const auto& info : kCodecs) {
    if (codec == info.name) return info;
  }
  throw RunError("unknown Fisher store codec '" + codec +
                 "' (one of: none, gzip, lz4, bzip2, blosc-lz4, blosc-zstd)");
}

// HDF5 prints its error stack by default; clhost reports errors itself.
void quiet_hdf5() {
  static const bool done = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    if (fs::exists(kDebianPluginDir)) H5PLappend(kDebianPluginDir);
    // Blosc (de)compresses a chunk's blocks on this many threads; the filter plug-in has no
    // setting for it, c-blosc reads the variable. A value the user set is kept.
    const std::string cores = std::to_string(std::max(1U, std::thread::hardware_concurrency()));
    ::setenv("BLOSC_NTHREADS", cores.c_str(), 0);
    return true;
  }();
  (void)done;
}

// The innermost HDF5 error message, for context in our own errors.
std::string hdf5_reason() {
  std::string reason;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned, const H5E_error2_t* error, void* data) -> herr_t {
        auto* out = static_cast<std::string*>(data);
        if (out->empty() && error->desc != nullptr) *out = error->desc;
        return 0;
      },
      &reason);
  H5Eclear2(H5E_DEFAULT);
  return reason.empty() ? "HDF5 call failed" : reason;
}

// On-disk float types: HDF5 1.10 has no half types, so describe their bit layout.
hid_t make_disk_type(const std::string& dtype) {
  if (dtype == "fp32") return H5Tcopy(H5T_IEEE_F32LE);
  hid_t type = H5Tcopy(H5T_IEEE_F32LE);
  if (dtype == "fp16") {
    H5Tset_fields(type, 15, 10, 5, 0, 10);
    H5Tset_size(type, 2);
    H5Tset_ebias(type, 15);
  } else if (dtype == "bf16") {
    H5Tset_fields(type, 15, 7, 8, 0, 7);
    H5Tset_size(type, 2);
    H5Tset_ebias(type, 127);
  } else {
    H5Tclose(type);
    throw RunError("unknown Fisher store dtype '" + dtype + "' (one of: fp32, fp16, bf16)");
  }
  H5Tset_precision(type, 16);
  return type;
}

// Half-precision conversions are done here, not by HDF5: its soft conversion of subnormal
// half values was measured to be off by several units in the last place.
// fp32 -> fp16/bf16 for a whole block, the dtype decided once per block (not per value).
// Values beyond the type's finite range are clamped; NaN stays NaN.
void narrow_block(const float* values, int64_t count, float limit, bool bf16, uint16_t* out) {
  if (!bf16) {
    for (int64_t i = 0; i < count; ++i) {
      const float value = std::isnan(values[i]) ? values[i] : std::clamp(values[i], -limit, limit);
      out[i] = c10::Half(value).x;  // round to nearest even
    }
    return;
  }
  for (int64_t i = 0; i < count; ++i) {
    const float value = std::isnan(values[i]) ? values[i] : std::clamp(values[i], -limit, limit);
    uint32_t bits = 0;  // bf16: the upper half of the float, rounded to nearest even
    std::memcpy(&bits, &value, sizeof(bits));
    out[i] = std::isnan(value)
                 ? static_cast<uint16_t>((bits >> 16U) | 0x40U)
                 : static_cast<uint16_t>((bits + 0x7FFFU + ((bits >> 16U) & 1U)) >> 16U);
  }
}

// fp16/bf16 -> fp32 for a whole block; bf16 is a shift, which the compiler vectorises.
void widen_block(const uint16_t* narrow, int64_t count, bool bf16, float* out) {
  if (!bf16) {
    for (int64_t i = 0; i < count; ++i) {
      out[i] = static_cast<float>(c10::Half(narrow[i], c10::Half::from_bits()));
    }
    return;
  }
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t wide = static_cast<uint32_t>(narrow[i]) << 16U;
    std::memcpy(&out[i], &wide, sizeof(float));
  }
}

float dtype_max(const std::string& dtype) {
  if (dtype == "fp16") return 65504.0F;
  if (dtype == "bf16") return 3.38953139e38F;
  return std::numeric_limits<float>::max();
}

std::string dtype_of(hid_t type) {
  const size_t size = H5Tget_size(type);
  if (size == 4) return "fp32";
  size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
  H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize);
  if (size == 2 && esize == 5) return "fp16";
  if (size == 2 && esize == 8) return "bf16";
  return "float" + std::to_string(size * 8);
}

void write_string_attribute(hid_t object, const char* name, const std::string& value) {
  const hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, std::max<size_t>(value.size(), 1));
  const hid_t space = H5Screate(H5S_SCALAR);
  const hid_t attribute = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  const herr_t status =
      attribute < 0 ? -1 : H5Awrite(attribute, type, value.empty() ? " " : value.c_str());
  if (attribute >= 0) H5Aclose(attribute);
  H5Sclose(space);
  H5Tclose(type);
  if (status < 0)
    throw RunError(std::string("cannot write attribute ") + name + ": " + hdf5_reason());
}

std::string read_string_attribute(hid_t object, const char* name) {
  if (H5Aexists(object, name) <= 0) return "";
  const hid_t attribute = H5Aopen(object, name, H5P_DEFAULT);
  const hid_t type = H5Aget_type(attribute);
  const hid_t space = H5Aget_space(attribute);
  // Only what write_string_attribute writes: one fixed-length string (of a sane size). H5Aread
  // fills one element per point of the attribute's space, so anything else would overrun.
  const bool one_string = H5Tget_class(type) == H5T_STRING && H5Tis_variable_str(type) == 0 &&
                          H5Sget_simple_extent_npoints(space) == 1 &&
                          H5Tget_size(type) <= (size_t{64} << 20);
  std::string value(one_string ? H5Tget_size(type) : 0, '\0');
  if (one_string) H5Aread(attribute, type, value.data());
  H5Sclose(space);
  H5Tclose(type);
  H5Aclose(attribute);
  while (!value.empty() && value.back() == '\0') value.pop_back();
  return value;
}

void write_shape_attribute(hid_t object, const std::vector<int64_t>& shape) {
  const hsize_t rank = shape.size();
  const hid_t space = H5Screate_simple(1, &rank, nullptr);
  const hid_t attribute =
      H5Acreate2(object, "shape", H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attribute, H5T_NATIVE_INT64, shape.data());
  H5Aclose(attribute);
  H5Sclose(space);
}

std::vector<int64_t> read_shape_attribute(hid_t object) {
  if (H5Aexists(object, "shape") <= 0) return {};
  const hid_t attribute = H5Aopen(object, "shape", H5P_DEFAULT);
  const hid_t space = H5Aget_space(attribute);
  // A shape has at most a few dimensions; anything else is not a clhost store's attribute.
  const hssize_t points = H5Sget_simple_extent_npoints(space);
  std::vector<int64_t> shape(static_cast<size_t>(std::clamp<hssize_t>(points, 0, 64)));
  if (points == static_cast<hssize_t>(shape.size())) {
    H5Aread(attribute, H5T_NATIVE_INT64, shape.data());
  }
  H5Sclose(space);
  H5Aclose(attribute);
  return shape;
}

std::string model_json(const std::vector<ParameterInfo>& model) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& parameter : model)
    out.push_back({{"name", parameter.name}, {"shape", parameter.shape}});
  return out.dump();
}

// The "model" attribute (model_json's text); `file` names the store in the error.
std::vector<ParameterInfo> parse_model(const std::string& text, const std::string& file) {
  std::vector<ParameterInfo> model;
  if (text.empty()) return model;
  try {
    for (const auto& item : nlohmann::json::parse(text)) {
      model.push_back(
          {item.at("name").get<std::string>(), item.at("shape").get<std::vector<int64_t>>()});
    }
  } catch (const nlohmann::json::exception& e) {
    throw RunError(file + ": its model fingerprint is not a clhost store's (" + e.what() + ")");
  }
  return model;
}

// The open store's "model" attribute, parsed; `file` is closed before anything is thrown.
std::vector<ParameterInfo> stored_model(hid_t file, const std::string& path) {
  try {
    return parse_model(read_string_attribute(file, "model"), path);
  } catch (...) {
    H5Fclose(file);
    throw;
  }
}

// Groups are external links to "<index>.groups/<group>.h5", object "/" (link_group). Anything
// else in an index — a soft or hard link, a link to another file — was not written by clhost, and
// HDF5's own link traversal is not safe on crafted ones (a fuzzed index crashed it in
// H5G__traverse_special), so such a link is never followed.
bool is_group_link(hid_t index, const char* group, const std::string& index_path) {
  H5L_info_t info{};
  if (H5Lget_info(index, group, &info, H5P_DEFAULT) < 0 || info.type != H5L_TYPE_EXTERNAL ||
      info.u.val_size > 4096) {
    return false;
  }
  std::vector<char> value(info.u.val_size);
  unsigned flags = 0;
  const char* file = nullptr;
  const char* object = nullptr;
  if (H5Lget_val(index, group, value.data(), value.size(), H5P_DEFAULT) < 0 ||
      H5Lunpack_elink_val(value.data(), value.size(), &flags, &file, &object) < 0 ||
      file == nullptr || object == nullptr) {
    return false;
  }
  const std::string expected =
      fs::path(index_path).filename().string() + ".groups/" + group + ".h5";
  return expected == file && std::string(object) == "/";
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw RunError(path + ": cannot open for fsync");
  const int status = ::fsync(fd);
  ::close(fd);
  if (status != 0) throw RunError(path + ": fsync failed");
}

hid_t open_existing(const std::string& path, unsigned flags) {
  quiet_hdf5();
  if (!fs::exists(path)) throw RunError(path + ": no such Fisher store");
  const hid_t file = H5Fopen(path.c_str(), flags, H5P_DEFAULT);
  if (file < 0) throw RunError(path + ": not a readable HDF5 file (" + hdf5_reason() + ")");
  return file;
}

}  // namespace

int64_t ParameterInfo::numel() const {
  int64_t count = 1;
  for (int64_t dim : shape) count *= dim;
  return count;
}

void FisherStore::require_codec(const std::string& codec) {
  quiet_hdf5();
  const CodecInfo& info = codec_info(codec);
  if (info.filter == H5Z_FILTER_NONE) return;
  if (H5Zfilter_avail(info.filter) <= 0) {
    const char* env = std::getenv("HDF5_PLUGIN_PATH");
    throw RunError("Fisher store codec '" + codec + "' needs HDF5 filter " +
                   std::to_string(info.filter) +
                   ", which is not available: install Debian package " + info.package +
                   " (filters are searched in " + (env ? env : "") + (env ? ":" : "") +
                   kDebianPluginDir + ")");
  }
}

FisherStore::FisherStore(std::string path, StoreOptions options, std::vector<ParameterInfo> model,
                         std::string clhost_version)
    : path_(std::move(path)),
      options_(std::move(options)),
      model_(std::move(model)),
      clhost_version_(std::move(clhost_version)) {
  quiet_hdf5();
  require_codec(options_.codec);
  hid_t probe = make_disk_type(options_.dtype);  // validates the dtype name
  H5Tclose(probe);
  if (options_.chunk_elements <= 0) throw RunError("Fisher store chunk size must be positive");
}

FisherStore::~FisherStore() {
  abort_group();
}

void FisherStore::begin_group(const std::string& group, const std::string& description,
                              int64_t vectors) {
  if (vectors < 1) throw RunError(path_ + ": a group holds at least one vector per parameter");
  if (file_ >= 0) throw RunError(path_ + ": group '" + group_name_ + "' is still being written");
  if (group.empty() ||
      group.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") !=
          std::string::npos) {
    throw RunError(path_ + ": invalid group name '" + group + "' (letters, digits, _)");
  }
  if (fs::exists(path_)) check_index_accepts(group);
  std::error_code error;
  fs::create_directories(groups_directory(), error);
  if (error) throw RunError(groups_directory() + ": cannot create: " + error.message());
  // The group is written into its own file, next to the index, never into a file that holds
  // earlier groups: adding a task writes that task's data only.
  const std::string temporary = group_file(group) + ".tmp";
  fs::remove(temporary, error);
  file_ = H5Fcreate(temporary.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file_ < 0) throw RunError(temporary + ": cannot create: " + hdf5_reason());
  write_string_attribute(file_, "format", kGroupFormat);
  write_string_attribute(file_, "model", model_json(model_));
  group_ = H5Gopen2(file_, "/", H5P_DEFAULT);
  group_name_ = group;
  if (group_ < 0) {
    abort_group();
    throw RunError(temporary + ": cannot open its root group: " + hdf5_reason());
  }
  write_string_attribute(group_, "description", description);
  vectors_ = vectors;
  written_.assign(model_.size(), 0);

  const hid_t disk_type = make_disk_type(options_.dtype);
  for (const auto& parameter : model_) {
    const int64_t dataset = create_dataset(parameter, disk_type);
    if (dataset < 0) {
      const std::string reason = hdf5_reason();
      H5Tclose(disk_type);
      abort_group();
      std::string message = path_ + ": cannot create dataset ";
      message.append(group).append("/").append(parameter.name).append(" with codec ");
      throw RunError(message.append(options_.codec).append(": ").append(reason));
    }
    open_datasets_.push_back(dataset);
  }
  H5Tclose(disk_type);
}

// Filters of one dataset: the codec (a blosc chunk under 2048 elements stays uncompressed:
// Debian's blosc filter was measured to return zeros for them, and they are a negligible share of
// the bytes), then the Fletcher-32 checksum. Returns the codec applied.
std::string FisherStore::set_filters(int64_t properties, uint64_t chunk) const {
  const CodecInfo& codec = codec_info(options_.codec);
  const bool blosc = options_.codec == "blosc-lz4" || options_.codec == "blosc-zstd";
  const std::string applied = blosc && chunk < 2048 ? "none" : options_.codec;
  herr_t status = 0;
  if (applied == "gzip") {
    if (options_.shuffle) status |= H5Pset_shuffle(properties);
    status |= H5Pset_deflate(properties, static_cast<unsigned>(options_.level));
  } else if (blosc && applied != "none") {
    // Blosc's own byte shuffle; compressor codes: 1 lz4, 5 zstd.
    const unsigned values[7] = {0,
                                0,
                                0,
                                0,
                                static_cast<unsigned>(options_.level),
                                1,
                                options_.codec == "blosc-lz4" ? 1U : 5U};
    status |= H5Pset_filter(properties, codec.filter, H5Z_FLAG_MANDATORY, 7, values);
  } else if (applied != "none") {
    if (options_.shuffle) status |= H5Pset_shuffle(properties);
    status |= H5Pset_filter(properties, codec.filter, H5Z_FLAG_MANDATORY, 0, nullptr);
  }
  status |= H5Pset_fletcher32(properties);
  return status < 0 ? std::string() : applied;
}

// One parameter's dataset in the open group, left open (-1 on failure). It keeps a chunk cache
// that holds its chunk: writes smaller than a chunk (a low-rank factor's columns) fill it in
// memory and it is compressed once, instead of read, decompressed and recompressed per write.
int64_t FisherStore::create_dataset(const ParameterInfo& parameter, int64_t disk_type) {
  const auto size = static_cast<hsize_t>(parameter.numel()) * static_cast<hsize_t>(vectors_);
  const hsize_t chunk =
      std::max<hsize_t>(1, std::min<hsize_t>(size, static_cast<hsize_t>(options_.chunk_elements)));
  const hid_t space = H5Screate_simple(1, &size, nullptr);
  const hid_t properties = H5Pcreate(H5P_DATASET_CREATE);
  const hid_t access = H5Pcreate(H5P_DATASET_ACCESS);
  herr_t status = H5Pset_chunk(properties, 1, &chunk);
  const std::string applied = set_filters(properties, chunk);
  status |= H5Pset_chunk_cache(access, 521, chunk * H5Tget_size(disk_type) + 4096, 1.0);
  const hid_t dataset = status < 0 || applied.empty()
                            ? -1
                            : H5Dcreate2(group_, parameter.name.c_str(), disk_type, space,
                                         H5P_DEFAULT, properties, access);
  H5Pclose(access);
  H5Pclose(properties);
  H5Sclose(space);
  if (dataset < 0) return -1;
  write_shape_attribute(dataset, parameter.shape);
  write_string_attribute(dataset, "codec", applied);
  if (vectors_ > 1) write_string_attribute(dataset, "vectors", std::to_string(vectors_));
  return dataset;
}

void FisherStore::write_block(size_t parameter, int64_t offset, const float* values,
                              int64_t count) {
  if (file_ < 0) throw RunError(path_ + ": write_block without begin_group");
  if (parameter >= model_.size()) throw RunError(path_ + ": parameter index out of range");
  const ParameterInfo& info = model_[parameter];
  if (offset < 0 || count < 0 || offset + count > info.numel() * vectors_) {
    throw RunError(path_ + ": block [" + std::to_string(offset) + ", " +
                   std::to_string(offset + count) + ") is outside parameter " + info.name + " (" +
                   std::to_string(info.numel() * vectors_) + " elements)");
  }
  // Narrow types overflow to inf: a Fisher entry that large is clamped to the largest finite value.
  std::vector<uint16_t> narrow;
  const void* source = values;
  hid_t memory_type = H5Tcopy(H5T_NATIVE_FLOAT);
  if (options_.dtype != "fp32") {
    const float limit = dtype_max(options_.dtype);
    narrow.resize(static_cast<size_t>(count));
    narrow_block(values, count, limit, options_.dtype == "bf16", narrow.data());
    source = narrow.data();
    H5Tclose(memory_type);
    memory_type = make_disk_type(options_.dtype);
  }
  const hid_t dataset = open_datasets_.at(parameter);
  if (dataset < 0) {
    H5Tclose(memory_type);
    throw RunError(path_ + ": parameter " + info.name + " was already written completely");
  }
  const hid_t file_space = H5Dget_space(dataset);
  const hsize_t start = static_cast<hsize_t>(offset);
  const hsize_t size = static_cast<hsize_t>(count);
  H5Sselect_hyperslab(file_space, H5S_SELECT_SET, &start, nullptr, &size, nullptr);
  const hid_t memory_space = H5Screate_simple(1, &size, nullptr);
  const herr_t status =
      H5Dwrite(dataset, memory_type, memory_space, file_space, H5P_DEFAULT, source);
  H5Tclose(memory_type);
  H5Sclose(memory_space);
  H5Sclose(file_space);
  if (status < 0)
    throw RunError(path_ + ": writing " + group_name_ + "/" + info.name +
                   " failed: " + hdf5_reason());
  written_[parameter] += count;
  // Complete: compress its last chunk now and free the cache.
  if (written_[parameter] == info.numel() * vectors_) close_dataset(parameter);
}

void FisherStore::close_dataset(size_t parameter) {
  const hid_t dataset = open_datasets_[parameter];
  open_datasets_[parameter] = -1;
  if (dataset >= 0 && H5Dclose(dataset) < 0) {
    throw RunError(path_ + ": writing " + group_name_ + "/" + model_[parameter].name +
                   " failed: " + hdf5_reason());
  }
}

void FisherStore::commit_group() {
  if (file_ < 0) throw RunError(path_ + ": commit_group without begin_group");
  for (size_t p = 0; p < model_.size(); ++p) {
    if (written_[p] != model_[p].numel() * vectors_) {
      const std::string message =
          path_ + ": group '" + group_name_ + "' is incomplete: parameter " + model_[p].name +
          " has " + std::to_string(written_[p]) + " of " +
          std::to_string(model_[p].numel() * vectors_) + " elements written";
      abort_group();
      throw RunError(message);
    }
  }
  try {
    for (size_t p = 0; p < open_datasets_.size(); ++p) close_dataset(p);  // empty parameters
  } catch (const RunError&) {
    abort_group();
    throw;
  }
  open_datasets_.clear();
  H5Gclose(group_);
  group_ = -1;
  const herr_t status = H5Fclose(file_);
  file_ = -1;
  const std::string final_path = group_file(group_name_);
  const std::string temporary = final_path + ".tmp";
  std::error_code ignored;
  if (status < 0) {
    fs::remove(temporary, ignored);
    throw RunError(temporary + ": closing failed: " + hdf5_reason());
  }
  fsync_path(temporary);
  if (std::rename(temporary.c_str(), final_path.c_str()) != 0) {
    fs::remove(temporary, ignored);
    throw RunError(final_path + ": rename failed");
  }
  fsync_path(groups_directory());
  try {
    link_group(group_name_);
  } catch (const RunError&) {
    fs::remove(final_path, ignored);  // never linked: as if the save had not happened
    throw;
  }
}

// The index (path_) holds the model's fingerprint and one external link per committed group;
// each link is added in a copy of the index (a few KB) that replaces it atomically.
void FisherStore::link_group(const std::string& group) {
  const std::string temporary = path_ + ".tmp";
  std::error_code error;
  fs::remove(temporary, error);
  hid_t index = -1;
  if (fs::exists(path_)) {
    fs::copy_file(path_, temporary, fs::copy_options::overwrite_existing, error);
    if (error) throw RunError(temporary + ": cannot copy the index: " + error.message());
    index = H5Fopen(temporary.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  } else {
    index = H5Fcreate(temporary.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (index >= 0) {
      write_string_attribute(index, "format", kFormat);
      write_string_attribute(index, "clhost_version", clhost_version_);
      write_string_attribute(index, "model", model_json(model_));
    }
  }
  if (index < 0) throw RunError(temporary + ": cannot open: " + hdf5_reason());
  // Relative: HDF5 resolves it against the index's own directory, so a moved run still reads.
  const std::string target = fs::path(path_).filename().string() + ".groups/" + group + ".h5";
  const bool linked =
      H5Lcreate_external(target.c_str(), "/", index, group.c_str(), H5P_DEFAULT, H5P_DEFAULT) >= 0;
  const std::string reason = linked ? "" : hdf5_reason();
  if (H5Fclose(index) < 0 || !linked) {
    fs::remove(temporary, error);
    throw RunError(path_ + ": cannot add group '" + group + "' to the index: " + reason);
  }
  fsync_path(temporary);
  if (std::rename(temporary.c_str(), path_.c_str()) != 0) throw RunError(path_ + ": rename failed");
  fsync_path(fs::path(path_).parent_path().empty() ? "." : fs::path(path_).parent_path().string());
}

// Before a group is written: the index is this model's and does not hold the group yet.
void FisherStore::check_index_accepts(const std::string& group) const {
  const hid_t index = open_existing(path_, H5F_ACC_RDONLY);
  const auto stored = stored_model(index, path_);
  const bool present = H5Lexists(index, group.c_str(), H5P_DEFAULT) > 0;
  H5Fclose(index);
  if (model_json(stored) != model_json(model_)) {
    throw RunError(path_ + ": written for another model; refusing to add to it");
  }
  if (present) throw RunError(path_ + ": group '" + group + "' already exists");
}

std::string FisherStore::groups_directory() const {
  return path_ + ".groups";
}

std::string FisherStore::group_file(const std::string& group) const {
  return groups_directory() + "/" + group + ".h5";
}

void FisherStore::abort_group() noexcept {
  for (const int64_t dataset : open_datasets_) {
    if (dataset >= 0) H5Dclose(dataset);
  }
  open_datasets_.clear();
  if (group_ >= 0) H5Gclose(group_);
  if (file_ >= 0) H5Fclose(file_);
  if (file_ >= 0) {
    std::error_code ignored;
    fs::remove(group_file(group_name_) + ".tmp", ignored);
  }
  group_ = -1;
  file_ = -1;
}

void FisherStore::read_block(const std::string& group, size_t parameter, int64_t offset, float* out,
                             int64_t count) const {
  if (parameter >= model_.size()) throw RunError(path_ + ": parameter index out of range");
  const hid_t file = open_existing(path_, H5F_ACC_RDONLY);
  const auto stored = stored_model(file, path_);
  for (size_t p = 0; p < std::max(stored.size(), model_.size()); ++p) {
    if (p >= stored.size() || p >= model_.size() || stored[p].name != model_[p].name ||
        stored[p].shape != model_[p].shape) {
      H5Fclose(file);
      const std::string mine =
          p < model_.size() ? model_[p].name + " " + shape_text(model_[p].shape) : "(none)";
      const std::string theirs =
          p < stored.size() ? stored[p].name + " " + shape_text(stored[p].shape) : "(none)";
      throw RunError(path_ + ": written for another model: parameter " + std::to_string(p) +
                     " is " + theirs + " in the file but " + mine + " in this model");
    }
  }
  const std::string name = group + "/" + model_[parameter].name;
  const hid_t dataset =
      H5Lexists(file, group.c_str(), H5P_DEFAULT) > 0 && is_group_link(file, group.c_str(), path_)
          ? H5Dopen2(file, name.c_str(), H5P_DEFAULT)
          : -1;
  if (dataset < 0) {
    H5Fclose(file);
    throw RunError(path_ + ": no dataset " + name + " (or its group file " + group_file(group) +
                   " is missing)");
  }
  const hid_t file_space = H5Dget_space(dataset);
  const hsize_t start = static_cast<hsize_t>(offset);
  const hsize_t size = static_cast<hsize_t>(count);
  const auto stored_elements = static_cast<int64_t>(H5Sget_simple_extent_npoints(file_space));
  herr_t status =
      offset >= 0 && offset + count <= stored_elements
          ? H5Sselect_hyperslab(file_space, H5S_SELECT_SET, &start, nullptr, &size, nullptr)
          : -1;
  const hid_t memory_space = H5Screate_simple(1, &size, nullptr);
  if (status >= 0) {
    const hid_t disk_type = H5Dget_type(dataset);
    const std::string dtype = dtype_of(disk_type);
    if (dtype == "fp16" || dtype == "bf16") {
      std::vector<uint16_t> narrow(static_cast<size_t>(count));
      status = H5Dread(dataset, disk_type, memory_space, file_space, H5P_DEFAULT, narrow.data());
      if (status >= 0) widen_block(narrow.data(), count, dtype == "bf16", out);
    } else {
      status = H5Dread(dataset, H5T_NATIVE_FLOAT, memory_space, file_space, H5P_DEFAULT, out);
    }
    H5Tclose(disk_type);
  }
  const std::string reason = status < 0 ? hdf5_reason() : "";
  H5Sclose(memory_space);
  H5Sclose(file_space);
  H5Dclose(dataset);
  H5Fclose(file);
  if (status < 0) {
    throw RunError(path_ + ": reading " + name +
                   " failed (corrupt data or checksum mismatch?): " + reason);
  }
}

std::vector<std::string> FisherStore::committed_groups() const {
  std::vector<std::string> names;
  if (!fs::exists(path_)) return names;
  const hid_t file = open_existing(path_, H5F_ACC_RDONLY);
  hsize_t count = 0;
  H5Gget_num_objs(file, &count);
  for (hsize_t i = 0; i < count; ++i) {
    char name[256] = {};
    H5Gget_objname_by_idx(file, i, name, sizeof(name));
    if (!is_group_link(file, name, path_)) {
      H5Fclose(file);
      throw RunError(path_ + ": '" + name + "' is not a link to one of its group files");
    }
    names.emplace_back(name);
  }
  H5Fclose(file);
  return names;
}

void FisherStore::keep_only(const std::vector<std::string>& keep) {
  const std::vector<std::string> present = committed_groups();
  std::vector<std::string> extra;
  for (const auto& name : keep) {
    if (std::find(present.begin(), present.end(), name) == present.end()) {
      throw RunError(path_ + ": group '" + name +
                     "' that the checkpoint recorded is missing; the store was changed outside "
                     "clhost");
    }
  }
  for (const auto& name : present) {
    if (std::find(keep.begin(), keep.end(), name) == keep.end()) extra.push_back(name);
  }
  std::error_code error;
  if (extra.empty()) {
    remove_unlinked_group_files(keep);
    return;
  }
  if (keep.empty()) {
    fs::remove(path_, error);
    if (error) throw RunError(path_ + ": cannot remove: " + error.message());
    remove_unlinked_group_files(keep);
    return;
  }
  const std::string temporary = path_ + ".tmp";
  fs::copy_file(path_, temporary, fs::copy_options::overwrite_existing, error);
  if (error) throw RunError(temporary + ": cannot copy the store: " + error.message());
  const hid_t file = H5Fopen(temporary.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (file < 0) throw RunError(path_ + ": cannot open the store copy: " + hdf5_reason());
  bool failed = false;
  for (const auto& name : extra) failed = failed || H5Ldelete(file, name.c_str(), H5P_DEFAULT) < 0;
  failed = H5Fclose(file) < 0 || failed;
  if (failed) {
    fs::remove(temporary, error);
    throw RunError(path_ +
                   ": cannot remove the groups written after the checkpoint: " + hdf5_reason());
  }
  fsync_path(temporary);
  if (std::rename(temporary.c_str(), path_.c_str()) != 0) throw RunError(path_ + ": rename failed");
  fsync_path(fs::path(path_).parent_path().empty() ? "." : fs::path(path_).parent_path().string());
  remove_unlinked_group_files(keep);
}

// Group files the index does not link (dropped groups, a save cut short before its link).
void FisherStore::remove_unlinked_group_files(const std::vector<std::string>& linked) const {
  std::error_code error;
  if (!fs::is_directory(groups_directory(), error)) return;
  for (const auto& entry : fs::directory_iterator(groups_directory(), error)) {
    const std::string name = entry.path().filename().string();
    const bool kept = std::any_of(linked.begin(), linked.end(),
                                  [&](const std::string& group) { return name == group + ".h5"; });
    if (!kept) fs::remove(entry.path(), error);
  }
  if (linked.empty()) fs::remove(groups_directory(), error);
}

StoreSummary FisherStore::inspect(const std::string& path) {
  const hid_t file = open_existing(path, H5F_ACC_RDONLY);
  StoreSummary summary;
  summary.path = path;
  summary.format = read_string_attribute(file, "format");
  if (summary.format != kFormat) {
    H5Fclose(file);
    throw RunError(path + ": not a clhost Fisher store (format attribute is '" + summary.format +
                   "')");
  }
  summary.clhost_version = read_string_attribute(file, "clhost_version");
  summary.model = stored_model(file, path);
  summary.file_bytes = static_cast<int64_t>(fs::file_size(path));
  hsize_t count = 0;
  H5Gget_num_objs(file, &count);
  for (hsize_t i = 0; i < count; ++i) {
    char name[256] = {};
    H5Gget_objname_by_idx(file, i, name, sizeof(name));
    if (!is_group_link(file, name, path)) {
      H5Fclose(file);
      throw RunError(path + ": '" + name + "' is not a link to one of its group files");
    }
    const hid_t group = H5Gopen2(file, name, H5P_DEFAULT);
    if (group < 0) {
      const std::string reason = hdf5_reason();
      H5Fclose(file);
      std::string message = path + ": group '" + name + "' cannot be opened (its file ";
      message.append(path).append(".groups/").append(name).append(".h5 missing or damaged?): ");
      throw RunError(message + reason);
    }
    StoredGroup stored{name, read_string_attribute(group, "description"), {}};
    for (const auto& parameter : summary.model) {
      if (H5Lexists(group, parameter.name.c_str(), H5P_DEFAULT) <= 0) continue;
      const hid_t dataset = H5Dopen2(group, parameter.name.c_str(), H5P_DEFAULT);
      const hid_t type = H5Dget_type(dataset);
      StoredDataset entry;
      entry.name = parameter.name;
      entry.shape = read_shape_attribute(dataset);
      entry.dtype = dtype_of(type);
      entry.codec = read_string_attribute(dataset, "codec");
      const hid_t space = H5Dget_space(dataset);
      const auto elements = static_cast<int64_t>(H5Sget_simple_extent_npoints(space));
      H5Sclose(space);
      entry.vectors = std::max<int64_t>(1, elements / std::max<int64_t>(parameter.numel(), 1));
      entry.raw_bytes = elements * static_cast<int64_t>(sizeof(float));
      entry.stored_bytes = static_cast<int64_t>(H5Dget_storage_size(dataset));
      H5Tclose(type);
      H5Dclose(dataset);
      stored.datasets.push_back(entry);
    }
    H5Gclose(group);
    summary.groups.push_back(stored);
    const fs::path group_path = fs::path(path + ".groups") / (std::string(name) + ".h5");
    std::error_code missing;
    const auto group_bytes = fs::file_size(group_path, missing);
    if (!missing) summary.file_bytes += static_cast<int64_t>(group_bytes);
  }
  H5Fclose(file);
  return summary;
}

}  // namespace clhost
