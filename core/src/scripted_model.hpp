// TorchScript models (model.kind = "torchscript"): an archive written by torch.jit.save in Python,
// trained in place. Internal to the core.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "clhost/config.hpp"

namespace torch::jit {
struct Module;
}

namespace clhost {

// One scripted submodule as a LibTorch module: its parameters and buffers are registered under
// their Python names and are the very tensors of the TorchScript module, so the optimizer's
// in-place updates are what torch.jit.save writes back.
class ScriptedLayer : public torch::nn::Module {
 public:
  // What the batched exact Fisher pass needs: Linear and Conv2d (zero padding, one group) are
  // recognised from torch.nn's own types; everything else uses the per-sample loop.
  enum class Kind { kOther, kLinear, kConv2d };
  struct Conv2dShape {
    std::vector<int64_t> kernel, stride, padding, dilation;
  };

  ScriptedLayer(std::shared_ptr<torch::jit::Module> module, std::string python_name);
  torch::Tensor forward(const torch::Tensor& input);
  void train(bool on = true) override;

  Kind kind() const { return kind_; }
  const std::string& python_name() const { return python_name_; }  // "" for the whole model
  const std::string& type_name() const { return type_name_; }      // e.g. "Linear"
  torch::Tensor weight() const;
  torch::Tensor bias() const;  // undefined when the layer has none
  const std::optional<Conv2dShape>& conv2d() const { return conv2d_; }

 private:
  std::shared_ptr<torch::jit::Module> module_;
  std::string python_name_;
  std::string type_name_;
  Kind kind_ = Kind::kOther;
  std::optional<Conv2dShape> conv2d_;
};

struct ScriptedModel {
  torch::nn::Sequential net;  // [unflatten to model.input_shape,] then one ScriptedLayer per link
  std::shared_ptr<torch::jit::Module> module;  // the loaded archive, saved after every task
  std::vector<std::string> parameter_names;    // Python names, in net->parameters() order
  std::vector<std::string> layer_notes;        // "3 (Linear): batched exact" per layer
};

// Loads model.path, splits a forward that is a chain of submodule calls (nn.Sequential, scripted
// or traced, nested ones too) into one layer per link, and checks the forward on two zero samples:
// one tensor in, [N, num_classes] out. Throws RunError naming model.path and what is wrong.
ScriptedModel load_scripted_model(const ModelSection& model, int64_t input_size,
                                  int64_t num_classes);

// Writes the module as a TorchScript archive that torch.jit.load reads, atomically.
void save_scripted_model(const torch::jit::Module& module, const std::string& path);

}  // namespace clhost
