// The layers whose per-sample gradients have a closed form in their input and output gradient:
// which parameters they own (the model map), how one forward pass captures them, and the
// formulas. Used by the Fisher pass (fisher.cpp). Internal to the core.
#pragma once

#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/options/fold.h>
#include <torch/types.h>

#include <optional>
#include <vector>

#include "layer_tap.hpp"

namespace clhost {

enum class LayerKind { kLinear, kConv2d, kLayerNorm, kEmbedding };

struct KnownLayer {
  LayerKind kind = LayerKind::kLinear;
  const void* key = nullptr;  // what the capture records it under
  std::optional<size_t> weight;
  std::optional<size_t> bias;
  torch::nn::functional::UnfoldFuncOptions unfold{{1, 1}};  // kConv2d
  double eps = 1e-5;                                        // kLayerNorm
};

struct ModelMap {
  std::vector<KnownLayer> layers;
  // The known layers that use each parameter (two for a tied embedding and output matrix);
  // empty: the parameter needs the per-sample loop.
  std::vector<std::vector<size_t>> uses;
  std::vector<const void*> child_keys;  // per child of the Sequential; null: not a known layer
};

// Finds the Linear, Conv2d (zero padding, one group) and scripted layers among the model's
// children, and the tapped layers of the children that report theirs.
ModelMap map_model(torch::nn::Sequential& model, const std::vector<torch::Tensor>& parameters);

// The inputs and outputs of the known layers a pass needs, from one forward.
class LayerCapture : public TapRecorder {
 public:
  LayerCapture(const ModelMap& map, const std::vector<size_t>& layers);
  void record(const void* key, const torch::Tensor& input, const torch::Tensor& output) override;
  // Runs the model's children in order (recording the known children and, through the tap, the
  // layers inside tapped children); returns the model output.
  torch::Tensor forward(torch::nn::Sequential& model, const torch::Tensor& x);

  const std::vector<size_t>& layers() const { return layers_; }
  const torch::Tensor& input(size_t slot) const { return inputs_[slot]; }
  // Output tensors of the layers, in slot order: what the output gradients are taken of.
  const std::vector<torch::Tensor>& outputs() const { return outputs_; }
  // The slot of known layer `layer`.
  size_t slot_of(size_t layer) const;

 private:
  const ModelMap& map_;
  std::vector<size_t> layers_;
  std::vector<torch::Tensor> inputs_;
  std::vector<torch::Tensor> outputs_;
};

int64_t row_numel(const torch::Tensor& parameter);
int64_t rows_of(const torch::Tensor& parameter);

// The per-sample gradients [N, rows * row_numel] of rows [row_begin, row_end) of the layer's
// weight (is_weight) or bias, from its input and its output gradient `delta` (sample-major).
torch::Tensor layer_sample_gradients(const KnownLayer& layer, bool is_weight,
                                     const torch::Tensor& input, const torch::Tensor& delta,
                                     int64_t row_begin, int64_t row_end);

// Whether layer_weighted_squares can skip the per-sample gradients (a Linear weight over [N, in]
// inputs, where sum_i w_i g_i^2 = (w * delta^2)^T x^2).
bool has_direct_squares(const KnownLayer& layer, bool is_weight, const torch::Tensor& input);
// sum_i weight_i * g_i^2 (absolute: weight_i * |g_i|) for those rows, [rows * row_numel]; only
// where has_direct_squares.
torch::Tensor direct_weighted_sums(const torch::Tensor& input, const torch::Tensor& delta,
                                   const torch::Tensor& weight, int64_t row_begin, int64_t row_end,
                                   bool absolute);

}  // namespace clhost
