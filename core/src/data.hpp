// Task sequences from IDX files (the MNIST family) or HDF5 datasets: split, permuted, rotated or
// per-task sources, resident or streamed batch by batch; or from text files (text_data.cpp).
// Internal to the core.
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "clhost/config.hpp"

namespace clhost {

// How stored samples become model inputs, applied after reading, in this order.
struct SampleTransform {
  double divide = 1.0;       // 255 for 8-bit pixels with normalize = "unit"
  bool standardize = false;  // normalize = "standard": (x - mean) / deviation
  double mean = 0.0;
  double deviation = 1.0;
  torch::Tensor permutation;      // permuted scenario: input columns, undefined for none
  double rotation_degrees = 0.0;  // rotated scenario
  int64_t image_side = 0;
  torch::Tensor apply(torch::Tensor x) const;  // x: [k, input_size] float32, changed in place
};

// Rows of an HDF5 sample dataset that stay in the file (data.max_resident) and are read on demand
// through HDF5's chunk cache. Not thread-safe: one reader at a time, as the trainer does.
class StreamedSamples {
 public:
  StreamedSamples(const std::string& file, const std::string& dataset, std::string where,
                  std::vector<int64_t> rows, int64_t input_size, SampleTransform transform,
                  int64_t cache_bytes);
  ~StreamedSamples();
  StreamedSamples(const StreamedSamples&) = delete;
  StreamedSamples& operator=(const StreamedSamples&) = delete;
  StreamedSamples(StreamedSamples&&) = delete;
  StreamedSamples& operator=(StreamedSamples&&) = delete;

  int64_t size() const { return static_cast<int64_t>(rows_.size()); }
  // Samples `indices` (positions in this task's rows), [k, input_size] float32, transformed.
  torch::Tensor gather(const torch::Tensor& indices) const;
  torch::Tensor range(int64_t begin, int64_t end) const;
  int64_t bytes_read() const { return bytes_read_; }

 private:
  int64_t file_ = -1;
  int64_t dataset_ = -1;
  std::string where_;
  std::vector<int64_t> rows_;  // rows of the dataset, in task order
  int64_t input_size_;
  int64_t dataset_rank_;
  SampleTransform transform_;
  mutable int64_t bytes_read_ = 0;
};

struct TaskData {
  std::string name;
  torch::Tensor
      train_x;  // [N, input_size] float32, scaled by data.normalize; undefined if streamed
  torch::Tensor train_y;  // [N] int64 global class labels (always resident); text: next bytes
  torch::Tensor test_x;
  torch::Tensor test_y;
  std::vector<int64_t> classes;                         // the classes this task contains
  std::shared_ptr<const StreamedSamples> train_stream;  // set instead of train_x when streamed
  std::shared_ptr<const StreamedSamples> test_stream;

  int64_t train_size() const { return train_stream ? train_stream->size() : train_x.size(0); }
  int64_t test_size() const { return test_stream ? test_stream->size() : test_x.size(0); }
  torch::Tensor train_rows(const torch::Tensor& indices) const {
    return train_stream ? train_stream->gather(indices) : train_x.index_select(0, indices);
  }
  torch::Tensor train_range(int64_t begin, int64_t end) const {
    return train_stream ? train_stream->range(begin, end) : train_x.slice(0, begin, end);
  }
  torch::Tensor test_range(int64_t begin, int64_t end) const {
    return test_stream ? test_stream->range(begin, end) : test_x.slice(0, begin, end);
  }
};

struct TaskSequence {
  std::vector<TaskData> tasks;
  int64_t num_classes = 10;
  int64_t input_size = 784;
  int64_t image_side = 28;  // 0 when the samples are not square images (no CNN)
  bool streamed = false;    // HDF5 samples read batch by batch (data.max_resident)
  // Text tasks: x [N, context] uint8 byte windows, y [N, context] uint8 the byte after each
  // position; num_classes is the byte vocabulary and evaluation reports bits per byte.
  bool next_byte = false;
};

// Reads an IDX file (gzip-compressed or not) into a uint8 tensor of its shape.
// Throws RunError naming the file and what is wrong.
torch::Tensor read_idx(const std::string& path);

TaskSequence build_task_sequence(const DataSection& data, const std::vector<TaskOverride>& names,
                                 uint64_t seed);

// The files of every text task: the data.languages folders' text files, or the [[tasks]] paths
// expanded (folders, globs). Throws RunError naming the task and the path that gives none.
std::vector<std::vector<std::string>> text_task_files(const DataSection& data,
                                                      const std::vector<TaskOverride>& tasks);

// data.kind = "text": one next-byte task per language or [[tasks]] path, windows of `context`
// bytes. Throws RunError naming the task and the file for unusable text.
TaskSequence build_text_tasks(const DataSection& data, int64_t context,
                              const std::vector<TaskOverride>& tasks, uint64_t seed);

}  // namespace clhost
