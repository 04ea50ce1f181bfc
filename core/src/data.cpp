#include "data.hpp"

#include <hdf5.h>
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

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
  gzFile file = gzopen(path.c_str(), "rb");  // reads plain files too
  if (file == nullptr) throw RunError(path + ": cannot open");
  auto read_exact = [&](void* buffer, size_t bytes) {
    size_t done = 0;
    while (done < bytes) {
      const int got = gzread(file, static_cast<char*>(buffer) + done,
                             static_cast<unsigned>(std::min<size_t>(bytes - done, 1U << 30U)));
      if (got <= 0) {
        gzclose(file);
        throw RunError(path + ": truncated or corrupt IDX file (wanted " + std::to_string(bytes) +
                       " bytes at offset " + std::to_string(done) + ")");
      }
      done += static_cast<size_t>(got);
    }
  };
  unsigned char header[4];
  read_exact(header, 4);
  if (header[0] != 0 || header[1] != 0 || header[2] != 0x08 || header[3] == 0 || header[3] > 4) {
    gzclose(file);
    throw RunError(path + ": not an unsigned-byte IDX file (bad magic number)");
  }
  std::vector<int64_t> shape(header[3]);
  int64_t total = 1;
  for (auto& dim : shape) {
    unsigned char bytes[4];
    read_exact(bytes, 4);
    dim = read_big_endian(bytes);
    total *= dim;
  }
  torch::Tensor out = torch::empty(shape, torch::kUInt8);
  read_exact(out.data_ptr<uint8_t>(), static_cast<size_t>(total));
  gzclose(file);
  return out;
}

namespace {

// One split (train or test) as read, before any checks: where each part came from, for errors.
struct RawSplit {
  torch::Tensor x;  // [N, ...] any numeric dtype
  torch::Tensor y;  // [N] or [N, 1]
  std::string x_where;
  std::string y_where;
  bool eight_bit_pixels = false;  // stored as unsigned bytes: "unit" divides by 255
};

// Closes an HDF5 handle when it goes out of scope.
struct Hdf5Handle {
  hid_t id;
  herr_t (*close)(hid_t);
  ~Hdf5Handle() {
    if (id >= 0) close(id);
  }
  Hdf5Handle(const Hdf5Handle&) = delete;
  Hdf5Handle& operator=(const Hdf5Handle&) = delete;
  Hdf5Handle(Hdf5Handle&&) = delete;
  Hdf5Handle& operator=(Hdf5Handle&&) = delete;
};

// Reads a whole numeric dataset through HDF5's type conversion: float32 for samples, int64 for
// labels. Sets *eight_bit when it is stored as unsigned bytes.
torch::Tensor read_hdf5(const std::string& file, const std::string& dataset, const std::string& key,
                        bool labels, bool* eight_bit) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // errors are reported below, with context
  const std::string where = file + ":" + dataset + " (data." + key + ")";
  const Hdf5Handle handle{H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), &H5Fclose};
  if (handle.id < 0) {
    throw RunError("data.path = \"" + file + "\": cannot open as an HDF5 file" +
                   (std::filesystem::exists(file) ? "" : " (no such file)"));
  }
  if (H5Lexists(handle.id, dataset.c_str(), H5P_DEFAULT) <= 0) {
    throw RunError(where + ": no such dataset in the file");
  }
  const Hdf5Handle set{H5Dopen2(handle.id, dataset.c_str(), H5P_DEFAULT), &H5Dclose};
  if (set.id < 0) throw RunError(where + ": not a dataset");
  const Hdf5Handle type{H5Dget_type(set.id), &H5Tclose};
  const H5T_class_t type_class = H5Tget_class(type.id);
  if (type_class != H5T_INTEGER && (labels || type_class != H5T_FLOAT)) {
    throw RunError(where + (labels ? ": labels must be integers" : ": samples must be numeric") +
                   " (HDF5 type class " + std::to_string(static_cast<int>(type_class)) + ")");
  }
  if (eight_bit != nullptr) {
    *eight_bit = type_class == H5T_INTEGER && H5Tget_size(type.id) == 1 &&
                 H5Tget_sign(type.id) == H5T_SGN_NONE;
  }
  const Hdf5Handle space{H5Dget_space(set.id), &H5Sclose};
  const int rank = H5Sget_simple_extent_ndims(space.id);
  if (rank < 1 || rank > 8)
    throw RunError(where + ": rank " + std::to_string(rank) + " unsupported");
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space.id, dims.data(), nullptr);
  std::vector<int64_t> shape(dims.begin(), dims.end());
  torch::Tensor out = torch::empty(shape, labels ? torch::kInt64 : torch::kFloat32);
  if (out.numel() > 0 && H5Dread(set.id, labels ? H5T_NATIVE_INT64 : H5T_NATIVE_FLOAT, H5S_ALL,
                                 H5S_ALL, H5P_DEFAULT, out.data_ptr()) < 0) {
    throw RunError(where + ": read failed (corrupt file?)");
  }
  return out;
}

RawSplit read_split(const DataSection& data, bool train) {
  RawSplit raw;
  if (data.kind == DataKind::kHdf5) {
    const std::string x_key = train ? "train_x" : "test_x";
    const std::string y_key = train ? "train_y" : "test_y";
    const std::string& x_path = train ? data.hdf5_train_x : data.hdf5_test_x;
    const std::string& y_path = train ? data.hdf5_train_y : data.hdf5_test_y;
    raw.x = read_hdf5(data.path, x_path, x_key, false, &raw.eight_bit_pixels);
    raw.y = read_hdf5(data.path, y_path, y_key, true, nullptr);
    raw.x_where = data.path + ":" + x_path + " (data." + x_key + ")";
    raw.y_where = data.path + ":" + y_path + " (data." + y_key + ")";
    return raw;
  }
  const std::string x_key = train ? "train_images" : "test_images";
  const std::string y_key = train ? "train_labels" : "test_labels";
  const std::string x_path = locate(data.dir, train ? data.train_images : data.test_images, x_key);
  const std::string y_path = locate(data.dir, train ? data.train_labels : data.test_labels, y_key);
  raw.x = read_idx(x_path);
  raw.y = read_idx(y_path);
  raw.x_where = x_path + " (data." + x_key + ")";
  raw.y_where = y_path + " (data." + y_key + ")";
  raw.eight_bit_pixels = true;
  return raw;
}

}  // namespace

TaskSequence build_task_sequence(const DataSection& data, const std::vector<TaskOverride>& names,
                                 uint64_t seed) {
  int64_t height = 0;
  int64_t width = 0;
  bool eight_bit = true;
  // Samples [N, H, W] or [N, 1, H, W] are images; [N, D] (or any other shape, flattened) vectors.
  auto load_split = [&](bool train) {
    RawSplit raw = read_split(data, train);
    torch::Tensor images = raw.x;
    if (images.dim() == 4 && images.size(1) == 1) images = images.squeeze(1);
    if (images.dim() < 2) {
      throw RunError(raw.x_where + ": expected samples [N, ...], got " +
                     std::to_string(images.dim()) + " dimension(s)");
    }
    const int64_t h = images.dim() == 3 ? images.size(1) : images[0].numel();
    const int64_t w = images.dim() == 3 ? images.size(2) : 1;
    if (height != 0 && (h != height || w != width)) {
      throw RunError(raw.x_where + ": samples of " + std::to_string(h) + "x" + std::to_string(w) +
                     ", but the training samples are " + std::to_string(height) + "x" +
                     std::to_string(width));
    }
    height = h;
    width = w;
    eight_bit = eight_bit && raw.eight_bit_pixels;
    torch::Tensor labels = raw.y;
    if (labels.dim() == 2 && labels.size(1) == 1) labels = labels.squeeze(1);
    if (labels.dim() != 1 || labels.size(0) != images.size(0)) {
      throw RunError(raw.y_where + ": expected " + std::to_string(images.size(0)) +
                     " labels, one per sample in " + raw.x_where);
    }
    labels = labels.to(torch::kInt64);
    const int64_t top = labels.numel() > 0 ? labels.max().item<int64_t>() : 0;
    const int64_t bottom = labels.numel() > 0 ? labels.min().item<int64_t>() : 0;
    if (top >= data.num_classes || bottom < 0) {
      throw RunError(raw.y_where + ": label " + std::to_string(bottom < 0 ? bottom : top) +
                     " but data.num_classes = " + std::to_string(data.num_classes) +
                     " (labels must be 0.." + std::to_string(data.num_classes - 1) + ")");
    }
    return std::make_pair(images.reshape({images.size(0), h * w}).to(torch::kFloat32), labels);
  };
  auto [train_x, train_y] = load_split(true);
  auto [test_x, test_y] = load_split(false);
  // Pixel scaling, with statistics of the training set only. "unit" scales 8-bit pixels; other
  // stored types are taken as they are.
  if (data.normalize == Normalize::kUnit && eight_bit) {
    train_x.div_(255.0);
    test_x.div_(255.0);
  } else if (data.normalize == Normalize::kStandard) {
    const double mean = train_x.mean().item<double>();
    const double deviation = std::max(train_x.std().item<double>(), 1e-12);
    train_x.sub_(mean).div_(deviation);
    test_x.sub_(mean).div_(deviation);
  }
  const int64_t input_size = height * width;

  auto limit = [](const torch::Tensor& tensor, int64_t count) {
    return count > 0 && count < tensor.size(0) ? tensor.slice(0, 0, count) : tensor;
  };

  // The classes of each split task: listed, or equal chunks of the (optionally shuffled) order.
  std::vector<std::vector<int64_t>> split_classes = data.task_classes;
  if (data.scenario == Scenario::kSplit && split_classes.empty()) {
    std::vector<int64_t> order(static_cast<size_t>(data.num_classes));
    for (size_t c = 0; c < order.size(); ++c) order[c] = static_cast<int64_t>(c);
    if (data.shuffle_classes) {
      std::mt19937_64 class_rng(seed ^ 0xc1a55e5ULL);
      std::shuffle(order.begin(), order.end(), class_rng);
    }
    const auto per_task = static_cast<size_t>(data.num_classes / data.num_tasks);
    for (int64_t task = 0; task < data.num_tasks; ++task) {
      const auto begin = order.begin() + static_cast<std::ptrdiff_t>(task * per_task);
      split_classes.emplace_back(begin, begin + static_cast<std::ptrdiff_t>(per_task));
    }
  }

  TaskSequence sequence;
  sequence.num_classes = data.num_classes;
  sequence.input_size = input_size;
  sequence.image_side = height == width ? height : 0;
  std::mt19937_64 rng(seed ^ 0x5eedda7aULL);
  for (int64_t task = 0; task < data.num_tasks; ++task) {
    TaskData entry;
    const auto index = static_cast<size_t>(task);
    entry.name = index < names.size() && !names[index].name.empty() ? names[index].name
                                                                    : "task" + std::to_string(task);
    if (data.scenario == Scenario::kSplit) {
      entry.classes = split_classes[index];
      auto select = [&](const torch::Tensor& x, const torch::Tensor& y, int64_t count) {
        torch::Tensor mask = torch::zeros_like(y, torch::kBool);
        for (int64_t c : entry.classes) mask.logical_or_(y == c);
        torch::Tensor rows = limit(mask.nonzero().squeeze(1), count);
        return std::make_pair(x.index_select(0, rows).contiguous(), y.index_select(0, rows));
      };
      std::tie(entry.train_x, entry.train_y) =
          select(train_x, train_y, data.train_samples_per_task);
      std::tie(entry.test_x, entry.test_y) = select(test_x, test_y, data.test_samples_per_task);
      if (entry.train_x.size(0) == 0) {
        throw RunError("data: task " + std::to_string(task + 1) + " (" + entry.name +
                       ") has no training samples: no label in " + data.train_labels +
                       " is one of its classes");
      }
    } else if (data.scenario == Scenario::kRotated) {
      for (int64_t c = 0; c < data.num_classes; ++c) entry.classes.push_back(c);
      if (sequence.image_side == 0) {
        throw RunError(
            "data.scenario = \"rotated\" needs square images; the training samples are " +
            std::to_string(height) + "x" + std::to_string(width));
      }
      const double degrees = data.rotation_step_degrees * static_cast<double>(task);
      entry.train_x =
          rotate(limit(train_x, data.train_samples_per_task), sequence.image_side, degrees);
      entry.train_y = limit(train_y, data.train_samples_per_task);
      entry.test_x =
          rotate(limit(test_x, data.test_samples_per_task), sequence.image_side, degrees);
      entry.test_y = limit(test_y, data.test_samples_per_task);
    } else {
      for (int64_t c = 0; c < data.num_classes; ++c) entry.classes.push_back(c);
      // Task 0 keeps the original pixel order; every later task a seeded random permutation.
      std::vector<int64_t> order(static_cast<size_t>(input_size));
      for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
      if (task > 0) std::shuffle(order.begin(), order.end(), rng);
      torch::Tensor permutation = torch::tensor(order, torch::kInt64);
      entry.train_x =
          limit(train_x, data.train_samples_per_task).index_select(1, permutation).contiguous();
      entry.train_y = limit(train_y, data.train_samples_per_task);
      entry.test_x =
          limit(test_x, data.test_samples_per_task).index_select(1, permutation).contiguous();
      entry.test_y = limit(test_y, data.test_samples_per_task);
    }
    sequence.tasks.push_back(std::move(entry));
  }
  return sequence;
}

}  // namespace clhost
