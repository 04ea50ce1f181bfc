#include "data.hpp"

#include <hdf5.h>
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "clhost/errors.hpp"

namespace clhost {
namespace {

uint32_t read_big_endian(const unsigned char* bytes) {
  return (uint32_t{bytes[0]} << 24U) | (uint32_t{bytes[1]} << 16U) | (uint32_t{bytes[2]} << 8U) |
         uint32_t{bytes[3]};
}

// Finds `name` (absolute, or relative to dir), or the same with ".gz".
std::string locate(const std::string& dir, const std::string& name, const std::string& key) {
  namespace fs = std::filesystem;
  const fs::path base = fs::path(name).is_absolute() ? fs::path(name) : fs::path(dir) / name;
  for (const auto& path : {base, fs::path(base.string() + ".gz")}) {
    if (fs::exists(path)) return path.string();
  }
  throw RunError("data." + key + " = \"" + name + "\": " + base.string() +
                 "(.gz) not found; expected an IDX file of an MNIST-family dataset (Debian "
                 "package dataset-fashion-mnist installs Fashion-MNIST in " +
                 "/usr/share/datasets/fashion-mnist; set data.dir or data." + key + ")");
}

// Turns every image [N, side*side] by `degrees` about its centre (bilinear, zeros outside).
torch::Tensor rotate(const torch::Tensor& flat, int64_t side, double degrees) {
  if (degrees == 0.0) return flat.contiguous();
  namespace F = torch::nn::functional;
  const double radians = degrees * M_PI / 180.0;
  const auto count = flat.size(0);
  const torch::Tensor theta = torch::tensor({{std::cos(radians), -std::sin(radians), 0.0},
                                             {std::sin(radians), std::cos(radians), 0.0}},
                                            torch::kFloat32)
                                  .unsqueeze(0)
                                  .expand({count, 2, 3});
  const torch::Tensor images = flat.reshape({count, 1, side, side});
  const torch::Tensor grid = F::affine_grid(theta, {count, 1, side, side}, false);
  return F::grid_sample(images, grid,
                        F::GridSampleFuncOptions()
                            .mode(torch::kBilinear)
                            .padding_mode(torch::kZeros)
                            .align_corners(false))
      .reshape({count, side * side})
      .contiguous();
}

}  // namespace

torch::Tensor read_idx(const std::string& path) {
  const std::unique_ptr<gzFile_s, int (*)(gzFile)> file(gzopen(path.c_str(), "rb"), &gzclose);
  if (file == nullptr) throw RunError(path + ": cannot open");
  auto read_exact = [&](void* buffer, size_t bytes) {
    size_t done = 0;
    while (done < bytes) {
      const int got = gzread(file.get(), static_cast<char*>(buffer) + done,
                             static_cast<unsigned>(std::min<size_t>(bytes - done, 1U << 30U)));
      if (got <= 0) {
        throw RunError(path + ": truncated or corrupt IDX file (wanted " + std::to_string(bytes) +
                       " bytes at offset " + std::to_string(done) + ")");
      }
      done += static_cast<size_t>(got);
    }
  };
  unsigned char header[4];
  read_exact(header, 4);
  if (header[0] != 0 || header[1] != 0 || header[2] != 0x08 || header[3] == 0 || header[3] > 4) {
    throw RunError(path + ": not an unsigned-byte IDX file (bad magic number)");
  }
  // The header's sizes are checked against what the file can hold before anything that large is
  // allocated: its size when stored plainly, deflate's best ratio (1032:1) when compressed.
  std::error_code size_error;
  const auto file_bytes = static_cast<uint64_t>(std::filesystem::file_size(path, size_error));
  const uint64_t can_hold = size_error                  ? 0
                            : gzdirect(file.get()) != 0 ? file_bytes
                                                        : file_bytes * 1032;
  std::vector<int64_t> shape(header[3]);
  uint64_t total = 1;
  uint64_t nonzero = 1;  // the product without zero sizes: LibTorch refuses it past int64
  for (auto& dim : shape) {
    unsigned char bytes[4];
    read_exact(bytes, 4);
    dim = read_big_endian(bytes);
    const auto size = static_cast<uint64_t>(dim);
    total = size == 0 || total <= can_hold / size ? total * size : can_hold + 1;
    nonzero = size == 0 || nonzero <= (uint64_t{1} << 62U) / size
                  ? nonzero * std::max<uint64_t>(size, 1)
                  : (uint64_t{1} << 62U) + 1;
  }
  if (total > can_hold || nonzero > (uint64_t{1} << 62U)) {
    throw RunError(path + ": the IDX header declares more data than the file holds");
  }
  torch::Tensor out = torch::empty(shape, torch::kUInt8);
  read_exact(out.data_ptr<uint8_t>(), static_cast<size_t>(total));
  return out;
}

namespace {

// Closes an HDF5 file and dataset when it goes out of scope.
struct Hdf5Dataset {
  hid_t file = -1;
  hid_t set = -1;
  std::vector<int64_t> shape;
  bool eight_bit = false;  // unsigned bytes: normalize = "unit" divides by 255
  std::string where;       // "file:dataset (data.key)", for errors
  Hdf5Dataset() = default;
  ~Hdf5Dataset() {
    if (set >= 0) H5Dclose(set);
    if (file >= 0) H5Fclose(file);
  }
  Hdf5Dataset(const Hdf5Dataset&) = delete;
  Hdf5Dataset& operator=(const Hdf5Dataset&) = delete;
  Hdf5Dataset(Hdf5Dataset&&) = delete;
  Hdf5Dataset& operator=(Hdf5Dataset&&) = delete;
  int64_t numel() const {
    int64_t total = 1;
    for (int64_t dim : shape) total *= dim;
    return total;
  }
};

// Opens a numeric dataset and checks its type: integers or floats for samples, integers for
// labels. cache_bytes > 0 sizes the chunk cache for reading it in pieces.
std::unique_ptr<Hdf5Dataset> open_dataset(const std::string& file, const std::string& dataset,
                                          const std::string& key, bool labels,
                                          int64_t cache_bytes = 0) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // errors are reported below, with context
  auto out = std::make_unique<Hdf5Dataset>();
  out->where = file + ":" + dataset + " (" + key + ")";
  out->file = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (out->file < 0) {
    throw RunError(key + ": \"" + file + "\": cannot open as an HDF5 file" +
                   (std::filesystem::exists(file) ? "" : " (no such file)"));
  }
  if (H5Lexists(out->file, dataset.c_str(), H5P_DEFAULT) <= 0) {
    throw RunError(out->where + ": no such dataset in the file");
  }
  const hid_t access = H5Pcreate(H5P_DATASET_ACCESS);
  if (cache_bytes > 0) {
    H5Pset_chunk_cache(access, 12421, static_cast<size_t>(cache_bytes), 1.0);
  }
  out->set = H5Dopen2(out->file, dataset.c_str(), access);
  H5Pclose(access);
  if (out->set < 0) throw RunError(out->where + ": not a dataset");
  const hid_t type = H5Dget_type(out->set);
  const H5T_class_t type_class = H5Tget_class(type);
  out->eight_bit =
      type_class == H5T_INTEGER && H5Tget_size(type) == 1 && H5Tget_sign(type) == H5T_SGN_NONE;
  H5Tclose(type);
  if (type_class != H5T_INTEGER && (labels || type_class != H5T_FLOAT)) {
    throw RunError(out->where +
                   (labels ? ": labels must be integers" : ": samples must be numeric") +
                   " (HDF5 type class " + std::to_string(static_cast<int>(type_class)) + ")");
  }
  const hid_t space = H5Dget_space(out->set);
  const int rank = H5Sget_simple_extent_ndims(space);
  if (rank < 1 || rank > 8) {
    H5Sclose(space);
    throw RunError(out->where + ": rank " + std::to_string(rank) + " unsupported");
  }
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  H5Sclose(space);
  // Sizes are counted in int64 (and as bytes, up to 8 per value) from here on.
  constexpr hsize_t kMaxValues = hsize_t{1} << 59U;
  hsize_t values = 1;
  for (const hsize_t dim : dims) {
    values = dim == 0 || values <= kMaxValues / dim ? values * dim : kMaxValues + 1;
  }
  if (values > kMaxValues) throw RunError(out->where + ": the dataset's shape is too large");
  out->shape.assign(dims.begin(), dims.end());
  return out;
}

// Bytes one sample value takes in memory as read_all reads it.
int64_t resident_value_bytes(const Hdf5Dataset& dataset) {
  return dataset.eight_bit ? 1 : static_cast<int64_t>(sizeof(float));
}

// Reads a whole dataset through HDF5's type conversion: int64 for labels; uint8 for 8-bit samples,
// float32 for other samples.
torch::Tensor read_all(const Hdf5Dataset& dataset, bool labels) {
  const bool bytes = !labels && dataset.eight_bit;
  torch::Tensor out = torch::empty(
      dataset.shape, labels ? torch::kInt64 : (bytes ? torch::kUInt8 : torch::kFloat32));
  const hid_t memory_type =
      labels ? H5T_NATIVE_INT64 : (bytes ? H5T_NATIVE_UINT8 : H5T_NATIVE_FLOAT);
  if (out.numel() > 0 &&
      H5Dread(dataset.set, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data_ptr()) < 0) {
    throw RunError(dataset.where + ": read failed (corrupt file?)");
  }
  return out;
}

// One split (train or test) as read, before any checks: where each part came from, for errors.
// Samples larger than data.max_resident are not read: `stream` names them instead.
struct RawSplit {
  torch::Tensor x;  // [N, ...] as stored (uint8 or float32); undefined when streamed
  torch::Tensor y;  // [N] or [N, 1]
  std::vector<int64_t> x_shape;
  std::string x_where;
  std::string y_where;
  bool eight_bit_pixels = false;
  std::string file;     // streamed: the HDF5 file and dataset of the samples
  std::string dataset;  // empty: resident
};

RawSplit read_hdf5_split(const std::string& file, const std::string& x_path,
                         const std::string& y_path, const std::string& x_key,
                         const std::string& y_key, int64_t max_resident_bytes) {
  RawSplit raw;
  const auto x = open_dataset(file, x_path, x_key, false);
  raw.x_shape = x->shape;
  raw.x_where = x->where;
  raw.eight_bit_pixels = x->eight_bit;
  if (x->numel() * resident_value_bytes(*x) > max_resident_bytes) {
    raw.file = file;
    raw.dataset = x_path;
  } else {
    raw.x = read_all(*x, false);
  }
  const auto y = open_dataset(file, y_path, y_key, true);
  raw.y = read_all(*y, true);
  raw.y_where = y->where;
  return raw;
}

RawSplit read_split(const DataSection& data, bool train) {
  if (data.kind == DataKind::kHdf5) {
    const std::string x_key = train ? "data.train_x" : "data.test_x";
    const std::string y_key = train ? "data.train_y" : "data.test_y";
    return read_hdf5_split(data.path, train ? data.hdf5_train_x : data.hdf5_test_x,
                           train ? data.hdf5_train_y : data.hdf5_test_y, x_key, y_key,
                           data.max_resident_bytes);
  }
  RawSplit raw;
  const std::string x_key = train ? "train_images" : "test_images";
  const std::string y_key = train ? "train_labels" : "test_labels";
  const std::string x_path = locate(data.dir, train ? data.train_images : data.test_images, x_key);
  const std::string y_path = locate(data.dir, train ? data.train_labels : data.test_labels, y_key);
  raw.x = read_idx(x_path);
  raw.y = read_idx(y_path);
  raw.x_shape = raw.x.sizes().vec();
  raw.x_where = x_path + " (data." + x_key + ")";
  raw.y_where = y_path + " (data." + y_key + ")";
  raw.eight_bit_pixels = true;
  return raw;
}

// A split after its checks: resident samples [N, input_size] as stored, or the dataset to stream
// from.
struct Split {
  torch::Tensor x;
  torch::Tensor y;  // [N] int64
  std::string file;
  std::string dataset;
  std::string where;
  bool streamed() const { return !dataset.empty(); }
  int64_t size() const { return y.size(0); }
};

// Samples [N, H, W] or [N, 1, H, W] are images; [N, D] (or any other shape, flattened) vectors.
// All splits of a run must have one sample shape: the first one read sets *height and *width.
Split check_split(const RawSplit& raw, int64_t num_classes, int64_t* height, int64_t* width,
                  bool* eight_bit) {
  std::vector<int64_t> shape = raw.x_shape;
  if (shape.size() == 4 && shape[1] == 1) shape.erase(shape.begin() + 1);
  if (shape.size() < 2) {
    throw RunError(raw.x_where + ": expected samples [N, ...], got " +
                   std::to_string(shape.size()) + " dimension(s)");
  }
  int64_t per_sample = 1;
  for (size_t d = 1; d < shape.size(); ++d) per_sample *= shape[d];
  const int64_t h = shape.size() == 3 ? shape[1] : per_sample;
  const int64_t w = shape.size() == 3 ? shape[2] : 1;
  if (*height != 0 && (h != *height || w != *width)) {
    throw RunError(raw.x_where + ": samples of " + std::to_string(h) + "x" + std::to_string(w) +
                   ", but the training samples are " + std::to_string(*height) + "x" +
                   std::to_string(*width));
  }
  *height = h;
  *width = w;
  *eight_bit = *eight_bit && raw.eight_bit_pixels;
  torch::Tensor labels = raw.y;
  if (labels.dim() == 2 && labels.size(1) == 1) labels = labels.squeeze(1);
  if (labels.dim() != 1 || labels.size(0) != shape[0]) {
    throw RunError(raw.y_where + ": expected " + std::to_string(shape[0]) +
                   " labels, one per sample in " + raw.x_where);
  }
  labels = labels.to(torch::kInt64);
  const int64_t top = labels.numel() > 0 ? labels.max().item<int64_t>() : 0;
  const int64_t bottom = labels.numel() > 0 ? labels.min().item<int64_t>() : 0;
  if (top >= num_classes || bottom < 0) {
    throw RunError(raw.y_where + ": label " + std::to_string(bottom < 0 ? bottom : top) +
                   " but data.num_classes = " + std::to_string(num_classes) +
                   " (labels must be 0.." + std::to_string(num_classes - 1) + ")");
  }
  Split split;
  split.y = labels;
  split.file = raw.file;
  split.dataset = raw.dataset;
  split.where = raw.x_where;
  if (!split.streamed()) split.x = raw.x.reshape({shape[0], h * w}).contiguous();
  return split;
}

// Mean and (unbiased) standard deviation of the training samples, read in pieces when streamed.
std::pair<double, double> sample_statistics(const std::vector<const Split*>& splits,
                                            int64_t input_size) {
  double sum = 0.0;
  double squares = 0.0;
  double count = 0.0;
  for (const Split* split : splits) {
    if (!split->streamed()) {
      sum += split->x.sum(torch::kFloat64).item<double>();
      squares += split->x.to(torch::kFloat64).square().sum().item<double>();
      count += static_cast<double>(split->x.numel());
      continue;
    }
    std::vector<int64_t> rows(static_cast<size_t>(split->size()));
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int64_t>(i);
    const StreamedSamples reader(split->file, split->dataset, split->where, rows, input_size,
                                 SampleTransform{}, 0);
    for (int64_t start = 0; start < reader.size(); start += 4096) {
      const torch::Tensor chunk =
          reader.range(start, std::min(reader.size(), start + 4096)).x.to(torch::kFloat64);
      sum += chunk.sum().item<double>();
      squares += chunk.square().sum().item<double>();
      count += static_cast<double>(chunk.numel());
    }
  }
  const double mean = count > 0 ? sum / count : 0.0;
  const double variance = count > 1 ? (squares - count * mean * mean) / (count - 1) : 0.0;
  return {mean, std::sqrt(std::max(variance, 0.0))};
}

std::vector<int64_t> iota_rows(int64_t count) {
  std::vector<int64_t> rows(static_cast<size_t>(count));
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int64_t>(i);
  return rows;
}

}  // namespace

torch::Tensor SampleTransform::apply(torch::Tensor x) const {
  if (divide != 1.0) x.div_(divide);
  if (standardize) x.sub_(mean).div_(deviation);
  if (permutation.defined()) x = x.index_select(1, permutation).contiguous();
  if (rotation_degrees != 0.0) x = rotate(x, image_side, rotation_degrees);
  return x;
}

ResidentSamples::ResidentSamples(torch::Tensor stored, torch::Tensor rows,
                                 SampleTransform transform)
    : stored_(std::move(stored)), rows_(std::move(rows)), transform_(std::move(transform)) {}

int64_t ResidentSamples::size() const {
  return rows_.defined() ? rows_.size(0) : stored_.size(0);
}

Samples ResidentSamples::gather(const torch::Tensor& indices) const {
  const torch::Tensor wanted = rows_.defined() ? rows_.index_select(0, indices) : indices;
  // index_select copies, so the in-place scaling never touches the stored samples.
  return {transform_.apply(stored_.index_select(0, wanted).to(torch::kFloat32)), {}};
}

std::vector<torch::Tensor> ResidentSamples::resident_tensors() const {
  return {stored_, rows_};
}

int64_t resident_data_bytes(const TaskSequence& sequence) {
  std::set<const void*> counted;
  int64_t total = 0;
  auto count = [&](const torch::Tensor& tensor) {
    if (!tensor.defined() || !tensor.has_storage()) return;
    if (counted.insert(tensor.storage().data()).second)
      total += static_cast<int64_t>(tensor.storage().nbytes());
  };
  for (const TaskData& task : sequence.tasks) {
    for (const torch::Tensor& tensor : {task.train_x, task.train_y, task.test_x, task.test_y,
                                        task.validation_x, task.validation_y})
      count(tensor);
    for (const auto& source : {task.train_source, task.test_source, task.validation_source}) {
      if (!source) continue;
      for (const torch::Tensor& tensor : source->resident_tensors()) count(tensor);
    }
  }
  return total;
}

StreamedSamples::StreamedSamples(const std::string& file, const std::string& dataset,
                                 std::string where, std::vector<int64_t> rows, int64_t input_size,
                                 SampleTransform transform, int64_t cache_bytes)
    : where_(std::move(where)),
      rows_(std::move(rows)),
      input_size_(input_size),
      transform_(std::move(transform)) {
  auto opened = open_dataset(file, dataset, where_, false, cache_bytes);
  dataset_rank_ = static_cast<int64_t>(opened->shape.size());
  file_ = opened->file;
  dataset_ = opened->set;
  opened->file = -1;  // owned here from now on
  opened->set = -1;
}

StreamedSamples::~StreamedSamples() {
  if (dataset_ >= 0) H5Dclose(dataset_);
  if (file_ >= 0) H5Fclose(file_);
}

Samples StreamedSamples::gather(const torch::Tensor& indices) const {
  const torch::Tensor wanted = indices.to(torch::kInt64).contiguous();
  const int64_t* positions = wanted.data_ptr<int64_t>();
  const auto count = static_cast<size_t>(wanted.numel());
  std::vector<int64_t> file_rows(count);
  for (size_t i = 0; i < count; ++i) {
    if (positions[i] < 0 || positions[i] >= size()) {
      throw RunError(where_ + ": sample " + std::to_string(positions[i]) + " out of range");
    }
    file_rows[i] = rows_[static_cast<size_t>(positions[i])];
  }
  std::vector<int64_t> unique = file_rows;
  std::sort(unique.begin(), unique.end());
  unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
  // One hyperslab block per run of consecutive rows; HDF5 reads them in file order.
  const hid_t space = H5Dget_space(dataset_);
  std::vector<hsize_t> dims(static_cast<size_t>(dataset_rank_));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  H5Sselect_none(space);
  std::vector<hsize_t> start(dims.size(), 0);
  std::vector<hsize_t> block = dims;
  for (size_t i = 0; i < unique.size();) {
    size_t j = i + 1;
    while (j < unique.size() && unique[j] == unique[j - 1] + 1) ++j;
    start[0] = static_cast<hsize_t>(unique[i]);
    block[0] = static_cast<hsize_t>(j - i);
    H5Sselect_hyperslab(space, H5S_SELECT_OR, start.data(), nullptr, block.data(), nullptr);
    i = j;
  }
  torch::Tensor buffer = torch::empty({static_cast<int64_t>(unique.size()), input_size_});
  const hsize_t elements = static_cast<hsize_t>(buffer.numel());
  const hid_t memory = H5Screate_simple(1, &elements, nullptr);
  const herr_t status = unique.empty() ? 0
                                       : H5Dread(dataset_, H5T_NATIVE_FLOAT, memory, space,
                                                 H5P_DEFAULT, buffer.data_ptr());
  H5Sclose(memory);
  H5Sclose(space);
  if (status < 0) throw RunError(where_ + ": read failed (corrupt file or I/O error)");
  bytes_read_ += buffer.numel() * static_cast<int64_t>(sizeof(float));
  std::vector<int64_t> order(count);
  for (size_t i = 0; i < count; ++i) {
    order[i] = std::lower_bound(unique.begin(), unique.end(), file_rows[i]) - unique.begin();
  }
  return {transform_.apply(buffer.index_select(0, torch::tensor(order, torch::kInt64))), {}};
}

namespace {

Samples read_samples(const SampleSource* stream, const torch::Tensor& x, const torch::Tensor& y,
                     const torch::Tensor& indices) {
  if (stream == nullptr) return {x.index_select(0, indices), y.index_select(0, indices)};
  Samples out = stream->gather(indices);
  if (!out.y.defined()) out.y = y.index_select(0, indices);
  return out;
}

Samples read_range(const SampleSource* stream, const torch::Tensor& x, const torch::Tensor& y,
                   int64_t begin, int64_t end) {
  if (stream == nullptr) return {x.slice(0, begin, end), y.slice(0, begin, end)};
  Samples out = stream->range(begin, end);
  if (!out.y.defined()) out.y = y.slice(0, begin, end);
  return out;
}

}  // namespace

Samples TaskData::train_rows(const torch::Tensor& indices) const {
  return read_samples(train_source.get(), train_x, train_y, indices);
}

Samples TaskData::train_range(int64_t begin, int64_t end) const {
  return read_range(train_source.get(), train_x, train_y, begin, end);
}

Samples TaskData::test_range(int64_t begin, int64_t end) const {
  return read_range(test_source.get(), test_x, test_y, begin, end);
}

Samples TaskData::validation_range(int64_t begin, int64_t end) const {
  return read_range(validation_source.get(), validation_x, validation_y, begin, end);
}

namespace {

// The samples a run reads: each task's own train/test datasets (scenario "sources"), or one
// train and one test split that the scenario divides into tasks. One sample shape for all.
struct RunSplits {
  std::vector<std::pair<Split, Split>> sources;
  Split train;
  Split test;
  int64_t height = 0;
  int64_t width = 0;
  bool eight_bit = true;

  [[nodiscard]] std::vector<const Split*> training() const {
    std::vector<const Split*> out;
    for (const auto& pair : sources) out.push_back(&pair.first);
    if (sources.empty()) out.push_back(&train);
    return out;
  }
};

RunSplits read_splits(const DataSection& data, const std::vector<TaskOverride>& names) {
  RunSplits splits;
  if (data.scenario != Scenario::kSources) {
    splits.train = check_split(read_split(data, true), data.num_classes, &splits.height,
                               &splits.width, &splits.eight_bit);
    splits.test = check_split(read_split(data, false), data.num_classes, &splits.height,
                              &splits.width, &splits.eight_bit);
    return splits;
  }
  for (size_t t = 0; t < names.size(); ++t) {
    const TaskOverride& task = names[t];
    const std::string key = "tasks[" + std::to_string(t) + "]";
    auto read = [&](const std::string& split) {
      return check_split(
          read_hdf5_split(task.path, task.group + "/" + split + "/x",
                          task.group + "/" + split + "/y", key + " " + split + " samples",
                          key + " " + split + " labels", data.max_resident_bytes),
          data.num_classes, &splits.height, &splits.width, &splits.eight_bit);
    };
    Split task_train = read("train");
    Split task_test = read("test");
    splits.sources.emplace_back(std::move(task_train), std::move(task_test));
  }
  return splits;
}

// Pixel scaling, with statistics of the training set only. "unit" scales 8-bit pixels; other
// stored types are taken as they are. Applied batch by batch, as the samples are read.
SampleTransform scale_samples(const DataSection& data, const RunSplits& splits,
                              int64_t input_size) {
  SampleTransform scaling;
  if (data.normalize == Normalize::kUnit && splits.eight_bit) {
    scaling.divide = 255.0;
  } else if (data.normalize == Normalize::kStandard) {
    const auto [mean, deviation] = sample_statistics(splits.training(), input_size);
    scaling.standardize = true;
    scaling.mean = mean;
    scaling.deviation = std::max(deviation, 1e-12);
  }
  return scaling;
}

// The classes of each split task: listed, or equal chunks of the (optionally shuffled) order.
std::vector<std::vector<int64_t>> split_classes(const DataSection& data, uint64_t seed) {
  std::vector<std::vector<int64_t>> classes = data.task_classes;
  if (data.scenario != Scenario::kSplit || !classes.empty()) return classes;
  std::vector<int64_t> order = iota_rows(data.num_classes);
  if (data.shuffle_classes) {
    std::mt19937_64 class_rng(seed ^ 0xc1a55e5ULL);
    std::shuffle(order.begin(), order.end(), class_rng);
  }
  const auto per_task = static_cast<size_t>(data.num_classes / data.num_tasks);
  for (int64_t task = 0; task < data.num_tasks; ++task) {
    const auto begin = order.begin() + static_cast<std::ptrdiff_t>(task * per_task);
    classes.emplace_back(begin, begin + static_cast<std::ptrdiff_t>(per_task));
  }
  return classes;
}

torch::Tensor all_rows(const Split& split) {
  return torch::arange(split.size(), torch::kInt64);
}

// The first `limit` of `rows` (all when 0).
torch::Tensor first_rows(const torch::Tensor& rows, int64_t limit) {
  return limit > 0 && limit < rows.size(0) ? rows.slice(0, 0, limit) : rows;
}

// The samples of a resident split that some task uses, and only those: a run that takes 500
// samples per task does not hold all 60,000 (`used`: the split's rows kept, sorted; undefined
// when every row is).
struct UsedSamples {
  torch::Tensor x;
  torch::Tensor used;
};

UsedSamples used_samples(const Split& split, const std::vector<torch::Tensor>& task_rows) {
  torch::Tensor all = torch::cat(task_rows);
  const torch::Tensor used = std::get<0>(at::_unique(all, /*sorted=*/true));
  if (used.size(0) == split.size()) return {split.x, {}};
  return {split.x.index_select(0, used).contiguous(), used};
}

// One task's samples of one split (`kept`: its rows), held as stored or streamed, made model
// inputs batch by batch (scaling, then the scenario's transform).
struct TaskSamples {
  torch::Tensor y;
  std::shared_ptr<const SampleSource> source;
};

TaskSamples take_samples(const Split& split, const UsedSamples* resident, const torch::Tensor& kept,
                         const SampleTransform& transform, const SampleTransform& scaling,
                         int64_t input_size, int64_t stream_cache_bytes) {
  TaskSamples out;
  out.y = split.y.index_select(0, kept);
  SampleTransform full = transform;
  full.divide = scaling.divide;
  full.standardize = scaling.standardize;
  full.mean = scaling.mean;
  full.deviation = scaling.deviation;
  if (split.streamed()) {
    out.source = std::make_shared<StreamedSamples>(
        split.file, split.dataset, split.where,
        std::vector<int64_t>(kept.data_ptr<int64_t>(), kept.data_ptr<int64_t>() + kept.numel()),
        input_size, full, stream_cache_bytes);
  } else {
    const torch::Tensor rows =
        resident->used.defined() ? torch::searchsorted(resident->used, kept) : kept;
    const bool all = rows.size(0) == resident->x.size(0) &&
                     torch::equal(rows, torch::arange(rows.size(0), torch::kInt64));
    out.source =
        std::make_shared<ResidentSamples>(resident->x, all ? torch::Tensor() : rows.clone(), full);
  }
  return out;
}

torch::Tensor rows_of_classes(const torch::Tensor& y, const std::vector<int64_t>& classes) {
  torch::Tensor mask = torch::zeros_like(y, torch::kBool);
  for (int64_t c : classes) mask.logical_or_(y == c);
  return mask.nonzero().squeeze(1);
}

// Where task `task` takes its samples from, which classes it has, and the scenario's transform
// (a rotation, or a pixel permutation drawn from `rng` for every task after the first).
struct TaskSource {
  const Split* train = nullptr;
  const Split* test = nullptr;
  torch::Tensor train_rows;
  torch::Tensor test_rows;
  std::vector<int64_t> classes;
  SampleTransform transform;  // the scenario's part; scaling is already in resident samples
};

TaskSource task_source(const DataSection& data, const RunSplits& splits,
                       const std::vector<std::vector<int64_t>>& classes, int64_t task,
                       const TaskSequence& sequence, std::mt19937_64& rng) {
  TaskSource source;
  source.train = &splits.train;
  source.test = &splits.test;
  const auto index = static_cast<size_t>(task);
  if (data.scenario == Scenario::kSources) {
    source.train = &splits.sources[index].first;
    source.test = &splits.sources[index].second;
    source.train_rows = all_rows(*source.train);
    source.test_rows = all_rows(*source.test);
    const torch::Tensor present = std::get<0>(at::_unique(source.train->y, true));
    source.classes.assign(present.data_ptr<int64_t>(),
                          present.data_ptr<int64_t>() + present.numel());
  } else if (data.scenario == Scenario::kSplit) {
    source.classes = classes[index];
    source.train_rows = rows_of_classes(splits.train.y, source.classes);
    source.test_rows = rows_of_classes(splits.test.y, source.classes);
  } else {
    source.classes = iota_rows(data.num_classes);
    source.train_rows = all_rows(splits.train);
    source.test_rows = all_rows(splits.test);
    if (data.scenario == Scenario::kRotated) {
      source.transform.rotation_degrees = data.rotation_step_degrees * static_cast<double>(task);
      source.transform.image_side = sequence.image_side;
    } else {
      // Task 0 keeps the original pixel order; every later task a seeded random permutation.
      std::vector<int64_t> order = iota_rows(sequence.input_size);
      if (task > 0) std::shuffle(order.begin(), order.end(), rng);
      if (task > 0) source.transform.permutation = torch::tensor(order, torch::kInt64);
    }
  }
  return source;
}

// Every task's source, its rows cut to data.train_samples_per_task / test_samples_per_task.
std::vector<TaskSource> task_sources(const DataSection& data, const RunSplits& splits,
                                     const std::vector<std::vector<int64_t>>& classes,
                                     const TaskSequence& sequence, uint64_t seed) {
  std::mt19937_64 rng(seed ^ 0x5eedda7aULL);
  std::vector<TaskSource> sources;
  for (int64_t task = 0; task < data.num_tasks; ++task) {
    TaskSource source = task_source(data, splits, classes, task, sequence, rng);
    source.train_rows = first_rows(source.train_rows, data.train_samples_per_task);
    source.test_rows = first_rows(source.test_rows, data.test_samples_per_task);
    sources.push_back(std::move(source));
  }
  return sources;
}

// The samples each resident split keeps: those its tasks use.
std::map<const Split*, UsedSamples> resident_samples(const std::vector<TaskSource>& sources) {
  std::map<const Split*, std::vector<torch::Tensor>> rows_by_split;
  for (const TaskSource& source : sources) {
    rows_by_split[source.train].push_back(source.train_rows);
    rows_by_split[source.test].push_back(source.test_rows);
  }
  std::map<const Split*, UsedSamples> resident;
  for (const auto& [split, rows] : rows_by_split) {
    if (!split->streamed()) resident[split] = used_samples(*split, rows);
  }
  return resident;
}

}  // namespace

TaskSequence build_task_sequence(const DataSection& data, const std::vector<TaskOverride>& names,
                                 uint64_t seed) {
  RunSplits splits = read_splits(data, names);
  const int64_t input_size = splits.height * splits.width;
  const SampleTransform scaling = scale_samples(data, splits, input_size);
  const std::vector<std::vector<int64_t>> classes = split_classes(data, seed);
  TaskSequence sequence;
  sequence.num_classes = data.num_classes;
  sequence.input_size = input_size;
  sequence.image_side = splits.height == splits.width ? splits.height : 0;
  if (data.scenario == Scenario::kRotated && sequence.image_side == 0) {
    throw RunError("data.scenario = \"rotated\" needs square images; the training samples are " +
                   std::to_string(splits.height) + "x" + std::to_string(splits.width));
  }
  const std::vector<TaskSource> sources = task_sources(data, splits, classes, sequence, seed);
  const std::map<const Split*, UsedSamples> resident = resident_samples(sources);
  // Domain-incremental split (van de Ven et al.): every task is the same problem, "which of the
  // task's classes", one output per position within the task.
  const bool by_position = data.scenario == Scenario::kSplit &&
                           data.incremental == Incremental::kDomain && !classes.empty();
  if (by_position) sequence.num_classes = static_cast<int64_t>(classes.front().size());
  for (int64_t task = 0; task < data.num_tasks; ++task) {
    const auto index = static_cast<size_t>(task);
    const TaskSource& source = sources[index];
    TaskData entry;
    entry.name = index < names.size() && !names[index].name.empty() ? names[index].name
                                                                    : "task" + std::to_string(task);
    entry.classes = source.classes;
    const auto resident_of = [&](const Split* split) {
      const auto found = resident.find(split);
      return found != resident.end() ? &found->second : nullptr;
    };
    TaskSamples train =
        take_samples(*source.train, resident_of(source.train), source.train_rows, source.transform,
                     scaling, input_size, data.stream_cache_bytes);
    TaskSamples test = take_samples(*source.test, resident_of(source.test), source.test_rows,
                                    source.transform, scaling, input_size, data.stream_cache_bytes);
    if (by_position) {
      torch::Tensor position = torch::full({data.num_classes}, -1, torch::kInt64);
      for (size_t i = 0; i < source.classes.size(); ++i) {
        position[source.classes[i]] = static_cast<int64_t>(i);
      }
      train.y = position.index_select(0, train.y);
      test.y = position.index_select(0, test.y);
      entry.classes = iota_rows(sequence.num_classes);
    }
    entry.train_y = std::move(train.y);
    entry.train_source = std::move(train.source);
    entry.test_y = std::move(test.y);
    entry.test_source = std::move(test.source);
    sequence.streamed = sequence.streamed || source.train->streamed() || source.test->streamed();
    if (entry.train_size() == 0) {
      throw RunError("data: task " + std::to_string(task + 1) + " (" + entry.name +
                     ") has no training samples" +
                     (data.scenario == Scenario::kSplit
                          ? ": no label in " + source.train->where + " is one of its classes"
                          : std::string()));
    }
    sequence.tasks.push_back(std::move(entry));
  }
  hold_out_validation(sequence, data.validation, seed);
  return sequence;
}

}  // namespace clhost
