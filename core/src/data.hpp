// Task sequences built from IDX files (the MNIST family: Fashion-MNIST, MNIST, KMNIST, EMNIST...).
// Internal to the core.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

#include "clhost/config.hpp"

namespace clhost {

struct TaskData {
  std::string name;
  torch::Tensor train_x;  // [N, input_size] float32, scaled by data.normalize
  torch::Tensor train_y;  // [N] int64, global class labels 0..9
  torch::Tensor test_x;
  torch::Tensor test_y;
  std::vector<int64_t> classes;  // the classes this task contains
};

struct TaskSequence {
  std::vector<TaskData> tasks;
  int64_t num_classes = 10;
  int64_t input_size = 784;
  int64_t image_side = 28;  // 0 when the samples are not square images (no CNN)
};

// Reads an IDX file (gzip-compressed or not) into a uint8 tensor of its shape.
// Throws RunError naming the file and what is wrong.
torch::Tensor read_idx(const std::string& path);

TaskSequence build_task_sequence(const DataSection& data, const std::vector<TaskOverride>& names,
                                 uint64_t seed);

}  // namespace clhost
