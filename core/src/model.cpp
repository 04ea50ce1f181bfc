#include "model.hpp"

#include <torch/torch.h>

#include "clhost/errors.hpp"
#include "transformer.hpp"

namespace clhost {

torch::nn::Sequential make_model(const ModelSection& model, int64_t input_size, int64_t image_side,
                                 int64_t num_classes) {
  if (model.kind == ModelKind::kTransformer) return make_transformer(model);
  torch::nn::Sequential net;
  int64_t features = input_size;
  if (model.kind == ModelKind::kCnn) {
    if (image_side < 16) {
      throw RunError(
          "model.kind = \"cnn\" needs square images of at least 16x16 pixels; the data "
          "has " +
          std::to_string(input_size) + " values per sample" +
          (image_side > 0
               ? " (" + std::to_string(image_side) + "x" + std::to_string(image_side) + ")"
               : " (not a square image)") +
          "; use model.kind = \"mlp\"");
    }
    net->push_back("unflatten", torch::nn::Unflatten(torch::nn::UnflattenOptions(
                                    1, std::vector<int64_t>{1, image_side, image_side})));
    net->push_back("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 16, 5)));
    net->push_back("relu_c1", torch::nn::ReLU());
    net->push_back("pool1", torch::nn::MaxPool2d(torch::nn::MaxPool2dOptions(2)));
    net->push_back("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 5)));
    net->push_back("relu_c2", torch::nn::ReLU());
    net->push_back("pool2", torch::nn::MaxPool2d(torch::nn::MaxPool2dOptions(2)));
    net->push_back("flatten", torch::nn::Flatten());
    const int64_t side = ((image_side - 4) / 2 - 4) / 2;
    features = 32 * side * side;
  }
  for (size_t i = 0; i < model.hidden.size(); ++i) {
    net->push_back("fc" + std::to_string(i + 1), torch::nn::Linear(features, model.hidden[i]));
    net->push_back("relu" + std::to_string(i + 1), torch::nn::ReLU());
    features = model.hidden[i];
  }
  net->push_back("out", torch::nn::Linear(features, num_classes));
  return net;
}

namespace {

using Shapes = std::vector<std::vector<int64_t>>;

void add_linear(Shapes& shapes, int64_t in, int64_t out, bool bias = true) {
  shapes.push_back({out, in});
  if (bias) shapes.push_back({out});
}

void add_layer_norm(Shapes& shapes, int64_t width) {
  shapes.push_back({width});
  shapes.push_back({width});
}

Shapes transformer_shapes(const ModelSection& model) {
  const int64_t width = model.d_model;
  Shapes shapes{{kByteVocabulary, width}, {model.context, width}};
  for (int64_t layer = 0; layer < model.layers; ++layer) {
    add_layer_norm(shapes, width);
    add_linear(shapes, width, 3 * width);
    add_linear(shapes, width, width);
    add_layer_norm(shapes, width);
    add_linear(shapes, width, model.mlp_ratio * width);
    add_linear(shapes, model.mlp_ratio * width, width);
  }
  add_layer_norm(shapes, width);
  if (!model.tied_head) add_linear(shapes, width, kByteVocabulary, false);
  return shapes;
}

}  // namespace

std::vector<std::vector<int64_t>> model_parameter_shapes(const ModelSection& model,
                                                         int64_t input_size, int64_t image_side,
                                                         int64_t num_classes) {
  if (model.kind == ModelKind::kTransformer) return transformer_shapes(model);
  if (model.kind == ModelKind::kTorchScript) {
    throw RunError("model_parameter_shapes: a TorchScript model's shapes are in its archive");
  }
  Shapes shapes;
  int64_t features = input_size;
  if (model.kind == ModelKind::kCnn) {
    shapes = {{16, 1, 5, 5}, {16}, {32, 16, 5, 5}, {32}};
    const int64_t side = ((image_side - 4) / 2 - 4) / 2;
    features = 32 * side * side;
  }
  for (const int64_t hidden : model.hidden) {
    add_linear(shapes, features, hidden);
    features = hidden;
  }
  add_linear(shapes, features, num_classes);
  return shapes;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const RunConfig& config,
                                                        const std::vector<torch::Tensor>& params) {
  if (config.train.optimizer == OptimizerKind::kAdam) {
    return std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(config.train.lr));
  }
  return std::make_unique<torch::optim::SGD>(
      params, torch::optim::SGDOptions(config.train.lr).momentum(config.train.momentum));
}

}  // namespace clhost
