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

// Samples and their labels or targets, as the model takes them.
struct Samples {
  torch::Tensor x;
  torch::Tensor y;  // undefined from a SampleSource whose labels are resident in the TaskData
};

// Samples made model inputs on demand, batch by batch: held in memory in their stored type
// (ResidentSamples), or read from disk (HDF5 datasets larger than data.max_resident, text spilled
// to disk). Not thread-safe: one reader at a time, as the trainer does.
class SampleSource {
 public:
  SampleSource() = default;
  virtual ~SampleSource() = default;
  SampleSource(const SampleSource&) = delete;
  SampleSource& operator=(const SampleSource&) = delete;
  SampleSource(SampleSource&&) = delete;
  SampleSource& operator=(SampleSource&&) = delete;

  [[nodiscard]] virtual int64_t size() const = 0;
  // Samples `indices` (positions in this task's samples), or [begin, end).
  [[nodiscard]] virtual Samples gather(const torch::Tensor& indices) const = 0;
  [[nodiscard]] Samples range(int64_t begin, int64_t end) const {
    return gather(torch::arange(begin, end, torch::kInt64));
  }
  // Bytes read from disk so far: float32 values of HDF5 samples, bytes of text.
  [[nodiscard]] virtual int64_t bytes_read() const = 0;
  // The tensors this source keeps in memory (shared ones may appear in several sources).
  [[nodiscard]] virtual std::vector<torch::Tensor> resident_tensors() const { return {}; }
};

// One task's rows of a split held in memory as stored — 8-bit pixels stay uint8, 1 byte a pixel
// instead of 4 — and shared by every task that takes rows from the split; each batch is converted
// to float32 and transformed (scaling, then the scenario's permutation or rotation) when read,
// which gives the values a whole-split conversion gives.
class ResidentSamples final : public SampleSource {
 public:
  // stored: [N, input_size]; rows: this task's rows of it in order, undefined for all N.
  ResidentSamples(torch::Tensor stored, torch::Tensor rows, SampleTransform transform);

  [[nodiscard]] int64_t size() const override;
  [[nodiscard]] Samples gather(const torch::Tensor& indices) const override;
  [[nodiscard]] int64_t bytes_read() const override { return 0; }
  [[nodiscard]] std::vector<torch::Tensor> resident_tensors() const override;

 private:
  torch::Tensor stored_;
  torch::Tensor rows_;
  SampleTransform transform_;
};

// Rows of an HDF5 sample dataset that stay in the file (data.max_resident) and are read on demand
// through HDF5's chunk cache, [k, input_size] float32, transformed. Labels stay in the TaskData.
class StreamedSamples final : public SampleSource {
 public:
  StreamedSamples(const std::string& file, const std::string& dataset, std::string where,
                  std::vector<int64_t> rows, int64_t input_size, SampleTransform transform,
                  int64_t cache_bytes);
  ~StreamedSamples() override;
  StreamedSamples(const StreamedSamples&) = delete;
  StreamedSamples& operator=(const StreamedSamples&) = delete;
  StreamedSamples(StreamedSamples&&) = delete;
  StreamedSamples& operator=(StreamedSamples&&) = delete;

  [[nodiscard]] int64_t size() const override { return static_cast<int64_t>(rows_.size()); }
  [[nodiscard]] Samples gather(const torch::Tensor& indices) const override;
  [[nodiscard]] int64_t bytes_read() const override { return bytes_read_; }

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
  // Model inputs as they are: text windows [N, context] uint8; undefined when train_source is set.
  torch::Tensor train_x;
  // [N] int64 global class labels (also when the samples come from a source); text: the next
  // bytes, undefined when streamed.
  torch::Tensor train_y;
  torch::Tensor test_x;
  torch::Tensor test_y;
  std::vector<int64_t> classes;  // the classes this task contains
  bool next_byte = false;        // text: x [N, context] uint8 byte windows, y the byte after each
  // Set instead of train_x: samples converted or read batch by batch (every image task).
  std::shared_ptr<const SampleSource> train_source;
  std::shared_ptr<const SampleSource> test_source;
  // data.validation: samples held out of the training data, kept as the training samples are
  // (validation_x/_y, or a source with labels in validation_y); empty without data.validation.
  torch::Tensor validation_x;
  torch::Tensor validation_y;
  std::shared_ptr<const SampleSource> validation_source;

  [[nodiscard]] int64_t train_size() const {
    return train_source ? train_source->size() : train_x.size(0);
  }
  [[nodiscard]] int64_t test_size() const {
    return test_source ? test_source->size() : test_x.size(0);
  }
  [[nodiscard]] int64_t validation_size() const {
    if (validation_source) return validation_source->size();
    return validation_y.defined() ? validation_y.size(0) : 0;
  }
  [[nodiscard]] Samples train_rows(const torch::Tensor& indices) const;
  [[nodiscard]] Samples train_range(int64_t begin, int64_t end) const;
  [[nodiscard]] Samples test_range(int64_t begin, int64_t end) const;
  [[nodiscard]] Samples validation_range(int64_t begin, int64_t end) const;
};

struct TaskSequence {
  std::vector<TaskData> tasks;
  int64_t num_classes = 10;
  int64_t input_size = 784;
  int64_t image_side = 28;  // 0 when the samples are not square images (no CNN)
  bool streamed = false;    // samples read batch by batch (data.max_resident)
  // Text tasks: x [N, context] uint8 byte windows, y [N, context] uint8 the byte after each
  // position; num_classes is the byte vocabulary and evaluation reports bits per byte.
  bool next_byte = false;
  double setup_seconds = 0.0;  // reading and preparing the data, set by the runner
};

// Bytes of memory the sequence's samples and labels hold, each shared tensor counted once.
int64_t resident_data_bytes(const TaskSequence& sequence);

// data.validation: moves each task's held-out share of its training samples into its validation
// samples — drawn by a shuffle seeded by `seed` and the task, both parts kept in their original
// order. Throws RunError naming a task that would keep no training or no validation samples.
void hold_out_validation(TaskSequence& sequence, const ValidationSplit& split, uint64_t seed);

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
// bytes; a task whose text passes data.max_resident is read from disk window by window. Throws
// RunError naming the task and the file for unusable text.
TaskSequence build_text_tasks(const DataSection& data, int64_t context,
                              const std::vector<TaskOverride>& tasks, uint64_t seed);

// The documents of one text file as the text tasks cut them, each read back whole through a store
// that spills to disk past `max_resident` bytes (what the tests compare with a reference).
std::vector<std::string> text_file_documents(const std::string& path, int64_t max_resident);

}  // namespace clhost
