#include "data.hpp"

#include <torch/torch.h>
#include <zlib.h>

#include <filesystem>
#include <random>

#include "clhost/errors.hpp"

namespace clhost {
namespace {

uint32_t read_big_endian(const unsigned char* bytes) {
  return (uint32_t{bytes[0]} << 24U) | (uint32_t{bytes[1]} << 16U) | (uint32_t{bytes[2]} << 8U) |
         uint32_t{bytes[3]};
}

// Finds "<stem>" or "<stem>.gz" in dir.
std::string locate(const std::string& dir, const std::string& stem) {
  namespace fs = std::filesystem;
  for (const auto& name : {stem + ".gz", stem}) {
    const fs::path path = fs::path(dir) / name;
    if (fs::exists(path)) return path.string();
  }
  throw RunError("data.dir = \"" + dir + "\": missing " + stem + "(.gz); expected the IDX files " +
                 "of an MNIST-family dataset (Debian package dataset-fashion-mnist installs them " +
                 "in /usr/share/datasets/fashion-mnist)");
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
  auto load_split = [&](const std::string& images_stem, const std::string& labels_stem) {
    const std::string images_path = locate(data.dir, images_stem);
    const std::string labels_path = locate(data.dir, labels_stem);
    torch::Tensor images = read_idx(images_path);
    torch::Tensor labels = read_idx(labels_path);
    if (images.dim() != 3 || images.size(1) != 28 || images.size(2) != 28) {
      throw RunError(images_path + ": expected images of shape [N, 28, 28]");
    }
    if (labels.dim() != 1 || labels.size(0) != images.size(0)) {
      throw RunError(labels_path + ": expected " + std::to_string(images.size(0)) + " labels");
    }
    if (labels.max().item<int64_t>() > 9) throw RunError(labels_path + ": labels above 9");
    return std::make_pair(images.reshape({images.size(0), 784}).to(torch::kFloat32).div_(255.0),
                          labels.to(torch::kInt64));
  };
  auto [train_x, train_y] = load_split("train-images-idx3-ubyte", "train-labels-idx1-ubyte");
  auto [test_x, test_y] = load_split("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte");

  auto limit = [](const torch::Tensor& tensor, int64_t count) {
    return count > 0 && count < tensor.size(0) ? tensor.slice(0, 0, count) : tensor;
  };

  TaskSequence sequence;
  std::mt19937_64 rng(seed ^ 0x5eedda7aULL);
  for (int64_t task = 0; task < data.num_tasks; ++task) {
    TaskData entry;
    const auto index = static_cast<size_t>(task);
    entry.name = index < names.size() && !names[index].name.empty() ? names[index].name
                                                                    : "task" + std::to_string(task);
    if (data.scenario == Scenario::kSplit) {
      const int64_t per_task = 10 / data.num_tasks;
      for (int64_t c = 0; c < per_task; ++c) entry.classes.push_back(task * per_task + c);
      auto select = [&](const torch::Tensor& x, const torch::Tensor& y, int64_t count) {
        torch::Tensor mask = torch::zeros_like(y, torch::kBool);
        for (int64_t c : entry.classes) mask.logical_or_(y == c);
        torch::Tensor rows = limit(mask.nonzero().squeeze(1), count);
        return std::make_pair(x.index_select(0, rows).contiguous(), y.index_select(0, rows));
      };
      std::tie(entry.train_x, entry.train_y) =
          select(train_x, train_y, data.train_samples_per_task);
      std::tie(entry.test_x, entry.test_y) = select(test_x, test_y, data.test_samples_per_task);
    } else {
      for (int64_t c = 0; c < 10; ++c) entry.classes.push_back(c);
      // Task 0 keeps the original pixel order; every later task a seeded random permutation.
      std::vector<int64_t> order(784);
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
