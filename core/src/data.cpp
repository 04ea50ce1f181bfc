#include "data.hpp"

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

TaskSequence build_task_sequence(const DataSection& data, const std::vector<TaskOverride>& names,
                                 uint64_t seed) {
  int64_t height = 0;
  int64_t width = 0;
  auto load_split = [&](const std::string& images_key, const std::string& images_name,
                        const std::string& labels_key, const std::string& labels_name) {
    const std::string images_path = locate(data.dir, images_name, images_key);
    const std::string labels_path = locate(data.dir, labels_name, labels_key);
    torch::Tensor images = read_idx(images_path);
    torch::Tensor labels = read_idx(labels_path);
    if (images.dim() != 3 && images.dim() != 2) {
      throw RunError(images_path + " (data." + images_key + "): expected images [N, H, W] or " +
                     "vectors [N, D], got " + std::to_string(images.dim()) + " dimensions");
    }
    const int64_t h = images.size(1);
    const int64_t w = images.dim() == 3 ? images.size(2) : 1;
    if (height != 0 && (h != height || w != width)) {
      throw RunError(images_path + " (data." + images_key + "): samples of " + std::to_string(h) +
                     "x" + std::to_string(w) + ", but the training images are " +
                     std::to_string(height) + "x" + std::to_string(width));
    }
    height = h;
    width = w;
    if (labels.dim() != 1 || labels.size(0) != images.size(0)) {
      throw RunError(labels_path + " (data." + labels_key + "): expected " +
                     std::to_string(images.size(0)) + " labels, one per image in " + images_path);
    }
    const int64_t top = labels.numel() > 0 ? labels.max().item<int64_t>() : 0;
    if (top >= data.num_classes) {
      throw RunError(labels_path + " (data." + labels_key + "): label " + std::to_string(top) +
                     " but data.num_classes = " + std::to_string(data.num_classes) +
                     " (labels must be 0.." + std::to_string(data.num_classes - 1) + ")");
    }
    return std::make_pair(images.reshape({images.size(0), h * w}).to(torch::kFloat32),
                          labels.to(torch::kInt64));
  };
  auto [train_x, train_y] =
      load_split("train_images", data.train_images, "train_labels", data.train_labels);
  auto [test_x, test_y] =
      load_split("test_images", data.test_images, "test_labels", data.test_labels);
  // Pixel scaling, with statistics of the training set only.
  if (data.normalize == Normalize::kUnit) {
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
        throw RunError("data.scenario = \"rotated\" needs square images; " + data.train_images +
                       " holds " + std::to_string(height) + "x" + std::to_string(width) +
                       " samples");
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
