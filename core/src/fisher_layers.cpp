#include "fisher_layers.hpp"

#include <torch/torch.h>

#include "scripted_model.hpp"

namespace clhost {
namespace {

std::optional<size_t> index_of(const std::vector<torch::Tensor>& parameters,
                               const torch::Tensor& tensor) {
  if (!tensor.defined()) return std::nullopt;
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (parameters[i].is_same(tensor)) return i;
  }
  return std::nullopt;
}

torch::nn::functional::UnfoldFuncOptions unfold_options(const std::vector<int64_t>& kernel,
                                                        const std::vector<int64_t>& dilation,
                                                        const std::vector<int64_t>& padding,
                                                        const std::vector<int64_t>& stride) {
  return torch::nn::functional::UnfoldFuncOptions(kernel)
      .dilation(dilation)
      .padding(padding)
      .stride(stride);
}

std::vector<int64_t> as_vector(const torch::ExpandingArray<2>& values) {
  return {(*values)[0], (*values)[1]};
}

// The child itself when it is a Linear or a plain Conv2d (torch's or a scripted one's).
std::optional<KnownLayer> known_child(const torch::nn::Module& module,
                                      const std::vector<torch::Tensor>& parameters) {
  KnownLayer layer;
  layer.key = &module;
  if (const auto* linear = module.as<torch::nn::LinearImpl>()) {
    layer.weight = index_of(parameters, linear->weight);
    layer.bias = index_of(parameters, linear->bias);
    return layer;
  }
  if (const auto* conv = module.as<torch::nn::Conv2dImpl>()) {
    const auto& options = conv->options;
    const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&options.padding());
    const bool zeros = c10::holds_alternative<torch::enumtype::kZeros>(options.padding_mode());
    if (options.groups() != 1 || padding == nullptr || !zeros) return std::nullopt;
    layer.kind = LayerKind::kConv2d;
    layer.weight = index_of(parameters, conv->weight);
    layer.bias = index_of(parameters, conv->bias);
    layer.unfold = unfold_options(as_vector(options.kernel_size()), as_vector(options.dilation()),
                                  as_vector(*padding), as_vector(options.stride()));
    return layer;
  }
  const auto* scripted = dynamic_cast<const ScriptedLayer*>(&module);
  if (scripted == nullptr || scripted->kind() == ScriptedLayer::Kind::kOther) return std::nullopt;
  if (scripted->kind() == ScriptedLayer::Kind::kConv2d) {
    const auto& shape = *scripted->conv2d();
    layer.kind = LayerKind::kConv2d;
    layer.unfold = unfold_options(shape.kernel, shape.dilation, shape.padding, shape.stride);
  }
  layer.weight = index_of(parameters, scripted->weight());
  layer.bias = index_of(parameters, scripted->bias());
  return layer;
}

KnownLayer from_tap(const TapLayer& tap, const std::vector<torch::Tensor>& parameters) {
  KnownLayer layer;
  layer.kind = tap.kind == TapKind::kLinear      ? LayerKind::kLinear
               : tap.kind == TapKind::kLayerNorm ? LayerKind::kLayerNorm
                                                 : LayerKind::kEmbedding;
  layer.key = tap.key;
  layer.weight = index_of(parameters, tap.weight);
  layer.bias = index_of(parameters, tap.bias);
  layer.eps = tap.eps;
  return layer;
}

void add_layer(ModelMap& map, const KnownLayer& layer) {
  const size_t id = map.layers.size();
  if (layer.weight) map.uses[*layer.weight].push_back(id);
  if (layer.bias) map.uses[*layer.bias].push_back(id);
  map.layers.push_back(layer);
}

}  // namespace

ModelMap map_model(torch::nn::Sequential& model, const std::vector<torch::Tensor>& parameters) {
  ModelMap map;
  map.uses.resize(parameters.size());
  for (const auto& any : *model) {
    const auto module = any.ptr();
    std::optional<KnownLayer> child = known_child(*module, parameters);
    map.child_keys.push_back(child ? module.get() : nullptr);
    if (child) {
      add_layer(map, *child);
    } else if (const auto* tapped = dynamic_cast<const TappedModule*>(module.get())) {
      for (const auto& tap : tapped->tap_layers()) add_layer(map, from_tap(tap, parameters));
    }
  }
  return map;
}

LayerCapture::LayerCapture(const ModelMap& map, const std::vector<size_t>& layers)
    : map_(map), layers_(layers), inputs_(layers.size()), outputs_(layers.size()) {}

size_t LayerCapture::slot_of(size_t layer) const {
  return static_cast<size_t>(std::find(layers_.begin(), layers_.end(), layer) - layers_.begin());
}

void LayerCapture::record(const void* key, const torch::Tensor& input,
                          const torch::Tensor& output) {
  for (size_t slot = 0; slot < layers_.size(); ++slot) {
    if (map_.layers[layers_[slot]].key != key) continue;
    inputs_[slot] = input.detach();
    outputs_[slot] = output;
  }
}

torch::Tensor LayerCapture::forward(torch::nn::Sequential& model, const torch::Tensor& x) {
  const ScopedTap tap(this);
  torch::Tensor h = x;
  size_t child = 0;
  for (auto& any : *model) {
    const torch::Tensor in = h;
    h = any.forward(h);
    if (map_.child_keys[child] != nullptr) record(map_.child_keys[child], in, h);
    ++child;
  }
  return h;
}

int64_t row_numel(const torch::Tensor& parameter) {
  return parameter.dim() == 0 ? 1 : parameter.numel() / std::max<int64_t>(parameter.size(0), 1);
}

int64_t rows_of(const torch::Tensor& parameter) {
  return parameter.dim() == 0 ? 1 : parameter.size(0);
}

torch::Tensor layer_sample_gradients(const KnownLayer& layer, bool is_weight,
                                     const torch::Tensor& input, const torch::Tensor& delta,
                                     int64_t row_begin, int64_t row_end) {
  const int64_t batch = delta.size(0);
  const int64_t rows = row_end - row_begin;
  switch (layer.kind) {
    case LayerKind::kLinear: {
      // A Linear applied at every position: g_i(W) = sum_t delta_{i,t} x_{i,t}^T.
      const torch::Tensor d = delta.reshape({batch, -1, delta.size(-1)}).narrow(2, row_begin, rows);
      if (!is_weight) return d.sum(1);
      const torch::Tensor x = input.reshape({batch, -1, input.size(-1)});
      if (x.size(1) == 1) return (d.transpose(1, 2) * x).reshape({batch, -1});
      return d.transpose(1, 2).bmm(x).reshape({batch, -1});
    }
    case LayerKind::kConv2d: {
      // g_i(W)[o, k] = sum_p delta_i[o, p] * unfold(x_i)[k, p].
      const torch::Tensor d = delta.narrow(1, row_begin, rows).reshape({batch, rows, -1});
      if (!is_weight) return d.sum(2);
      const torch::Tensor patches = torch::nn::functional::unfold(input, layer.unfold);
      return d.bmm(patches.transpose(1, 2)).reshape({batch, -1});
    }
    case LayerKind::kLayerNorm: {
      // y = x_hat * weight + bias elementwise over the last dimension.
      const int64_t width = delta.size(-1);
      const torch::Tensor d = delta.reshape({batch, -1, width}).narrow(2, row_begin, rows);
      if (!is_weight) return d.sum(1);
      const torch::Tensor normalized =
          torch::layer_norm(input, {width}, {}, {}, layer.eps).reshape({batch, -1, width});
      return (d * normalized.narrow(2, row_begin, rows)).sum(1);
    }
    case LayerKind::kEmbedding: {
      // g_i(E)[v] = sum of delta_{i,t} over the positions t where sample i holds index v.
      const torch::Tensor indices = input.reshape({batch, -1});
      const torch::Tensor hits =
          indices.unsqueeze(2)
              .eq(torch::arange(row_begin, row_end, indices.options()).view({1, 1, -1}))
              .to(delta.scalar_type());  // [N, T, rows]
      return hits.transpose(1, 2)
          .bmm(delta.reshape({batch, -1, delta.size(-1)}))
          .reshape({batch, -1});
    }
  }
  return {};
}

bool has_direct_squares(const KnownLayer& layer, bool is_weight, const torch::Tensor& input) {
  return layer.kind == LayerKind::kLinear && is_weight && input.dim() == 2;
}

torch::Tensor direct_weighted_sums(const torch::Tensor& input, const torch::Tensor& delta,
                                   const torch::Tensor& weight, int64_t row_begin, int64_t row_end,
                                   bool absolute) {
  const torch::Tensor d = delta.narrow(1, row_begin, row_end - row_begin);
  // A Linear weight's per-sample gradient is the outer product d_i a_i^T: its squares are
  // d_i^2 (a_i^2)^T and its absolute values |d_i| |a_i|^T, so both sums are one product.
  if (absolute) return (d.abs() * weight.view({-1, 1})).t().mm(input.abs()).reshape({-1});
  return (d.square() * weight.view({-1, 1})).t().mm(input.square()).reshape({-1});
}

}  // namespace clhost
