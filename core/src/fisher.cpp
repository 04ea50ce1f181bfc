#include "fisher.hpp"

#include <torch/torch.h>

#include <optional>

#include "clhost/errors.hpp"
#include "scripted_model.hpp"

namespace clhost {
namespace {

// A layer whose per-sample gradients follow from its input and output gradient.
struct KnownLayer {
  enum class Kind { kLinear, kConv2d } kind = Kind::kLinear;
  size_t module_index = 0;
  std::optional<size_t> weight;
  std::optional<size_t> bias;
  torch::nn::functional::UnfoldFuncOptions unfold{{1, 1}};
};

struct ModelMap {
  std::vector<KnownLayer> layers;
  std::vector<int> layer_of_parameter;  // -1: needs the per-sample loop
};

std::optional<size_t> index_of(const std::vector<torch::Tensor>& parameters,
                               const torch::Tensor& tensor) {
  if (!tensor.defined()) return std::nullopt;
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (parameters[i].is_same(tensor)) return i;
  }
  return std::nullopt;
}

ModelMap map_model(torch::nn::Sequential& model, const std::vector<torch::Tensor>& parameters) {
  ModelMap map;
  map.layer_of_parameter.assign(parameters.size(), -1);
  size_t module_index = 0;
  for (const auto& any : *model) {
    const auto module = any.ptr();
    KnownLayer layer;
    layer.module_index = module_index++;
    bool known = false;
    if (const auto* linear = module->as<torch::nn::LinearImpl>()) {
      layer.kind = KnownLayer::Kind::kLinear;
      layer.weight = index_of(parameters, linear->weight);
      layer.bias = index_of(parameters, linear->bias);
      known = true;
    } else if (const auto* conv = module->as<torch::nn::Conv2dImpl>()) {
      const auto& options = conv->options;
      const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&options.padding());
      const bool zeros = c10::holds_alternative<torch::enumtype::kZeros>(options.padding_mode());
      if (options.groups() == 1 && padding != nullptr && zeros) {
        layer.kind = KnownLayer::Kind::kConv2d;
        layer.weight = index_of(parameters, conv->weight);
        layer.bias = index_of(parameters, conv->bias);
        layer.unfold = torch::nn::functional::UnfoldFuncOptions(options.kernel_size())
                           .dilation(options.dilation())
                           .padding(*padding)
                           .stride(options.stride());
        known = true;
      }
    }
    if (const auto* scripted = dynamic_cast<const ScriptedLayer*>(module.get())) {
      if (scripted->kind() == ScriptedLayer::Kind::kLinear) {
        layer.kind = KnownLayer::Kind::kLinear;
        known = true;
      } else if (scripted->kind() == ScriptedLayer::Kind::kConv2d) {
        const auto& shape = *scripted->conv2d();
        layer.kind = KnownLayer::Kind::kConv2d;
        layer.unfold = torch::nn::functional::UnfoldFuncOptions(shape.kernel)
                           .dilation(shape.dilation)
                           .padding(shape.padding)
                           .stride(shape.stride);
        known = true;
      }
      if (known) {
        layer.weight = index_of(parameters, scripted->weight());
        layer.bias = index_of(parameters, scripted->bias());
      }
    }
    if (known) {
      const int id = static_cast<int>(map.layers.size());
      if (layer.weight) map.layer_of_parameter[*layer.weight] = id;
      if (layer.bias) map.layer_of_parameter[*layer.bias] = id;
      map.layers.push_back(layer);
    }
  }
  return map;
}

int64_t row_numel(const torch::Tensor& parameter) {
  return parameter.dim() == 0 ? 1 : parameter.numel() / std::max<int64_t>(parameter.size(0), 1);
}

int64_t rows_of(const torch::Tensor& parameter) {
  return parameter.dim() == 0 ? 1 : parameter.size(0);
}

// Squared per-sample gradients of one known layer, weighted per sample and summed over the batch,
// for rows [row_begin, row_end) of `parameter`.
torch::Tensor layer_fisher_rows(const KnownLayer& layer, bool is_weight, const torch::Tensor& input,
                                const torch::Tensor& output_grad, const torch::Tensor& weight,
                                int64_t row_begin, int64_t row_end) {
  const torch::Tensor delta = output_grad.slice(1, row_begin, row_end);
  const torch::Tensor w = weight.view({-1, 1});
  if (layer.kind == KnownLayer::Kind::kLinear) {
    // grad_i(W) = delta_i x_i^T, so sum_i w_i grad_i(W)^2 = (w * delta^2)^T (x^2).
    if (!is_weight) return (delta.square() * w).sum(0);
    return (delta.square() * w).t().mm(input.square());
  }
  // Conv2d: grad_i(W)[o, k] = sum_p delta_i[o, p] * unfold(x_i)[k, p].
  const int64_t batch = delta.size(0);
  const torch::Tensor delta_flat = delta.reshape({batch, delta.size(1), -1});
  if (!is_weight) return (delta_flat.sum(2).square() * w).sum(0);
  const torch::Tensor patches = torch::nn::functional::unfold(input, layer.unfold);
  const torch::Tensor per_sample = delta_flat.bmm(patches.transpose(1, 2));  // [N, O, K]
  return (per_sample.square() * w.view({-1, 1, 1})).sum(0);
}

// Per-sample gradients of rows [row_begin, row_end) of a known layer's parameter, written into
// `out` [N, elements] (a strided view of the chunk's row matrix: no intermediate copies).
void layer_sample_gradients(const KnownLayer& layer, bool is_weight, const torch::Tensor& input,
                            const torch::Tensor& output_grad, int64_t row_begin, int64_t row_end,
                            torch::Tensor out) {
  const torch::Tensor delta = output_grad.slice(1, row_begin, row_end);
  const int64_t batch = delta.size(0);
  if (layer.kind == KnownLayer::Kind::kLinear) {
    if (!is_weight) {
      out.copy_(delta);
      return;
    }
    // g_i(W) = delta_i x_i^T, straight into the rows.
    torch::Tensor outer = out.view({batch, delta.size(1), input.size(1)});
    at::mul_out(outer, delta.unsqueeze(2), input.unsqueeze(1));
    return;
  }
  const torch::Tensor delta_flat = delta.reshape({batch, delta.size(1), -1});
  if (!is_weight) {
    out.copy_(delta_flat.sum(2));
    return;
  }
  const torch::Tensor patches = torch::nn::functional::unfold(input, layer.unfold);
  out.copy_(delta_flat.bmm(patches.transpose(1, 2)).reshape({batch, -1}));
}

class BlockPass {
 public:
  BlockPass(const FisherContext& context, const clhost_fisher_request_t& request,
            FisherMethod method, torch::nn::Sequential model, std::vector<torch::Tensor> parameters,
            const ModelMap& map, const FisherBlock& block, torch::Generator generator)
      : context_(context),
        request_(request),
        method_(method),
        model_(std::move(model)),
        parameters_(std::move(parameters)),
        map_(map),
        block_(block),
        generator_(std::move(generator)) {
    for (const auto& segment : block_) {
      const auto& parameter = parameters_[segment.parameter];
      std::vector<int64_t> shape = parameter.sizes().vec();
      if (shape.empty()) shape.push_back(1);
      shape[0] = segment.row_end - segment.row_begin;
      sums_.push_back(torch::zeros(shape, parameter.options().requires_grad(false)));
    }
  }

  // Accumulates one chunk of samples.
  void add_chunk(const torch::Tensor& x, const torch::Tensor& y) {
    if (request_.batched != 0) {
      add_batched(x, y);
      return;
    }
    bool any_known = false;
    bool any_loop = false;
    for (const auto& segment : block_) {
      (uses_layer_path(segment.parameter) ? any_known : any_loop) = true;
    }
    if (any_known) add_known_layers(x, y);
    if (any_loop) add_per_sample_loop(x, y);
    contributions_ += x.size(0);
  }

  // The rows R of one chunk with F_block = (1/n) sum R^T R: one per sample (TRUE, SAMPLE) or one
  // per (class, sample), class-major, scaled by sqrt(p_c) (EXPECTATION). [rows, block elements].
  torch::Tensor sample_rows(const torch::Tensor& x, const torch::Tensor& y) {
    const int64_t per_sample =
        request_.labels == CLHOST_FISHER_LABELS_EXPECTATION ? context_.active_classes.numel() : 1;
    int64_t elements = 0;
    std::vector<int64_t> columns;  // first column of each segment
    bool any_known = false;
    bool any_loop = false;
    for (const auto& segment : block_) {
      columns.push_back(elements);
      elements += (segment.row_end - segment.row_begin) * row_numel(parameters_[segment.parameter]);
      (uses_layer_path(segment.parameter) ? any_known : any_loop) = true;
    }
    // Every element is written below (a segment without a gradient gets zeros). The buffer is
    // reused from chunk to chunk: a fresh one of this size would be mapped and faulted in anew.
    const int64_t rows = per_sample * x.size(0);
    if (!rows_buffer_.defined() || rows_buffer_.size(0) < rows) {
      rows_buffer_ =
          torch::empty({rows, elements}, parameters_.front().options().requires_grad(false));
    }
    torch::Tensor out = rows_buffer_.narrow(0, 0, rows);
    if (any_known) known_layer_rows(x, y, out, columns);
    if (any_loop) per_sample_loop_rows(x, y, out, columns);
    return out;
  }

  void emit(const FisherSink& sink) {
    const double denominator = static_cast<double>(std::max<int64_t>(contributions_, 1));
    for (size_t s = 0; s < block_.size(); ++s) {
      const auto& segment = block_[s];
      const int64_t offset = segment.row_begin * row_numel(parameters_[segment.parameter]);
      sink(segment.parameter, offset, sums_[s].div_(denominator).reshape({-1}).contiguous());
    }
  }

 private:
  bool uses_layer_path(size_t parameter) const {
    return method_ == FisherMethod::kAuto && map_.layer_of_parameter[parameter] >= 0;
  }

  torch::Tensor log_probs(const torch::Tensor& logits) const {
    return torch::log_softmax(logits.index_select(1, context_.active_classes), 1);
  }

  torch::Tensor sample_labels(const torch::Tensor& log_probabilities) {
    return torch::multinomial(log_probabilities.exp().detach(), 1, true, generator_).squeeze(1);
  }

  // One forward pass that keeps, for every known layer this block needs, its input and its
  // output (whose gradients give the per-sample gradients).
  struct Forward {
    std::vector<int> needed;            // layer ids used by this block
    std::vector<torch::Tensor> inputs;  // by layer id
    std::vector<torch::Tensor> wanted;  // outputs of the needed layers, in `needed` order
    torch::Tensor log_probs;
  };
  Forward capture_known_layers(const torch::Tensor& x) {
    Forward out;
    for (const auto& segment : block_) {
      const int layer =
          uses_layer_path(segment.parameter) ? map_.layer_of_parameter[segment.parameter] : -1;
      if (layer >= 0 && std::find(out.needed.begin(), out.needed.end(), layer) == out.needed.end())
        out.needed.push_back(layer);
    }
    out.inputs.resize(map_.layers.size());
    std::vector<torch::Tensor> outputs(map_.layers.size());
    torch::Tensor h = x;
    size_t module_index = 0;
    for (auto& any : *model_) {
      int layer_id = -1;
      for (int id : out.needed) {
        if (map_.layers[static_cast<size_t>(id)].module_index == module_index) layer_id = id;
      }
      if (layer_id >= 0) out.inputs[static_cast<size_t>(layer_id)] = h.detach();
      h = any.forward(h);
      if (layer_id >= 0) outputs[static_cast<size_t>(layer_id)] = h;
      ++module_index;
    }
    out.log_probs = log_probs(h);
    for (int id : out.needed) out.wanted.push_back(outputs[static_cast<size_t>(id)]);
    return out;
  }

  // A known-layer segment's layer id, and where that layer's output sits in Forward::wanted.
  std::pair<size_t, size_t> layer_position(const FisherSegment& segment,
                                           const std::vector<int>& needed) const {
    const int id = map_.layer_of_parameter[segment.parameter];
    return {static_cast<size_t>(id),
            static_cast<size_t>(std::find(needed.begin(), needed.end(), id) - needed.begin())};
  }

  // Batched exact per-sample Fisher for the Linear/Conv2d segments of the block.
  void add_known_layers(const torch::Tensor& x, const torch::Tensor& y) {
    const Forward forward = capture_known_layers(x);
    const std::vector<int>& needed = forward.needed;
    const std::vector<torch::Tensor>& inputs = forward.inputs;
    const std::vector<torch::Tensor>& wanted = forward.wanted;
    const torch::Tensor& lp = forward.log_probs;

    auto accumulate = [&](const torch::Tensor& loss, const torch::Tensor& weight, bool keep_graph) {
      const auto grads = torch::autograd::grad({loss}, wanted, {}, keep_graph, false, true);
      for (size_t s = 0; s < block_.size(); ++s) {
        const auto& segment = block_[s];
        if (!uses_layer_path(segment.parameter)) continue;
        const auto [id, position] = layer_position(segment, needed);
        const KnownLayer& layer = map_.layers[id];
        if (!grads[position].defined()) continue;
        const bool is_weight = layer.weight && *layer.weight == segment.parameter;
        sums_[s].add_(layer_fisher_rows(layer, is_weight, inputs[id], grads[position], weight,
                                        segment.row_begin, segment.row_end)
                          .reshape(sums_[s].sizes()));
      }
    };
    const torch::Tensor ones = torch::ones({x.size(0)}, lp.options().requires_grad(false));
    if (request_.labels == CLHOST_FISHER_LABELS_EXPECTATION) {
      // E_{c ~ p}[g_c^2] = sum_c p_c g_c^2: one backward pass per class, weighted per sample.
      const torch::Tensor probs = lp.exp().detach();
      const int64_t classes = lp.size(1);
      for (int64_t c = 0; c < classes; ++c) {
        accumulate(-lp.select(1, c).sum(), probs.select(1, c).contiguous(), c + 1 < classes);
      }
    } else {
      const torch::Tensor labels =
          request_.labels == CLHOST_FISHER_LABELS_SAMPLE ? sample_labels(lp) : y;
      // Summed (not averaged) loss: each sample's output gradient is its own.
      accumulate(-lp.gather(1, labels.view({-1, 1})).sum(), ones, false);
    }
  }

  // Labels per sample for TRUE/SAMPLE, or every active class with its probability (EXPECTATION):
  // (label columns [C or 1][N], sqrt weights [C or 1][N]).
  std::pair<std::vector<torch::Tensor>, std::vector<torch::Tensor>> row_targets(
      const torch::Tensor& lp, const torch::Tensor& y) {
    std::vector<torch::Tensor> labels;
    std::vector<torch::Tensor> weights;
    if (request_.labels == CLHOST_FISHER_LABELS_EXPECTATION) {
      const torch::Tensor probs = lp.exp().detach();
      for (int64_t c = 0; c < lp.size(1); ++c) {
        labels.push_back(torch::full({lp.size(0)}, c, torch::kInt64));
        weights.push_back(probs.select(1, c).sqrt().contiguous());
      }
    } else {
      labels.push_back(request_.labels == CLHOST_FISHER_LABELS_SAMPLE ? sample_labels(lp) : y);
      weights.push_back(torch::ones({lp.size(0)}, lp.options().requires_grad(false)));
    }
    return {labels, weights};
  }

  void known_layer_rows(const torch::Tensor& x, const torch::Tensor& y, torch::Tensor& out,
                        const std::vector<int64_t>& columns) {
    const Forward forward = capture_known_layers(x);
    const std::vector<int>& needed = forward.needed;
    const std::vector<torch::Tensor>& inputs = forward.inputs;
    const std::vector<torch::Tensor>& wanted = forward.wanted;
    const torch::Tensor& lp = forward.log_probs;
    const auto [labels, weights] = row_targets(lp, y);
    const int64_t samples = x.size(0);
    for (size_t k = 0; k < labels.size(); ++k) {
      // Summed loss: each sample's output gradient is its own; sqrt(p) scales it (EXPECTATION).
      const torch::Tensor loss = -lp.gather(1, labels[k].view({-1, 1})).sum();
      auto grads = torch::autograd::grad({loss}, wanted, {}, k + 1 < labels.size(), false, true);
      if (request_.labels == CLHOST_FISHER_LABELS_EXPECTATION) {
        for (auto& grad : grads) {
          if (!grad.defined()) continue;
          std::vector<int64_t> shape(static_cast<size_t>(grad.dim()), 1);
          shape[0] = samples;
          grad = grad * weights[k].view(shape);
        }
      }
      const auto first_row = static_cast<int64_t>(k) * samples;
      for (size_t s = 0; s < block_.size(); ++s) {
        const auto& segment = block_[s];
        if (!uses_layer_path(segment.parameter)) continue;
        const auto [id, position] = layer_position(segment, needed);
        const KnownLayer& layer = map_.layers[id];
        const bool is_weight = layer.weight && *layer.weight == segment.parameter;
        const int64_t elements =
            (segment.row_end - segment.row_begin) * row_numel(parameters_[segment.parameter]);
        torch::Tensor target = out.slice(0, first_row, first_row + samples)
                                   .slice(1, columns[s], columns[s] + elements);
        if (grads[position].defined()) {
          layer_sample_gradients(layer, is_weight, inputs[id], grads[position].detach(),
                                 segment.row_begin, segment.row_end, target);
        } else {
          target.zero_();
        }
      }
    }
  }

  void per_sample_loop_rows(const torch::Tensor& x, const torch::Tensor& y, torch::Tensor& out,
                            const std::vector<int64_t>& columns) {
    std::vector<torch::Tensor> targets;
    std::vector<size_t> segment_of_target;
    for (size_t s = 0; s < block_.size(); ++s) {
      if (uses_layer_path(block_[s].parameter)) continue;
      targets.push_back(parameters_[block_[s].parameter]);
      segment_of_target.push_back(s);
    }
    const int64_t samples = x.size(0);
    std::vector<torch::Tensor> columns_of(targets.size());  // [rows, elements] views of `out`
    for (size_t t = 0; t < targets.size(); ++t) {
      const size_t s = segment_of_target[t];
      const auto& segment = block_[s];
      const int64_t elements =
          (segment.row_end - segment.row_begin) * row_numel(parameters_[segment.parameter]);
      columns_of[t] = out.slice(1, columns[s], columns[s] + elements);
      columns_of[t].zero_();  // a gradient that does not reach the segment stays zero
    }
    for (int64_t i = 0; i < samples; ++i) {
      const torch::Tensor lp = log_probs(model_->forward(x.slice(0, i, i + 1)));
      const auto [labels, weights] = row_targets(lp, y.slice(0, i, i + 1));
      for (size_t k = 0; k < labels.size(); ++k) {
        const torch::Tensor loss = -lp[0][labels[k][0].item<int64_t>()];
        const auto grads =
            torch::autograd::grad({loss}, targets, {}, k + 1 < labels.size(), false, true);
        for (size_t t = 0; t < targets.size(); ++t) {
          if (!grads[t].defined()) continue;
          const auto& segment = block_[segment_of_target[t]];
          const torch::Tensor part = grads[t].dim() == 0
                                         ? grads[t].view({1})
                                         : grads[t].slice(0, segment.row_begin, segment.row_end);
          columns_of[t][static_cast<int64_t>(k) * samples + i].copy_(part.reshape({-1}) *
                                                                     weights[k][0]);
        }
      }
    }
  }

  // The reference: one backward pass per sample (and per class for EXPECTATION).
  void add_per_sample_loop(const torch::Tensor& x, const torch::Tensor& y) {
    std::vector<torch::Tensor> targets;
    std::vector<size_t> segment_of_target;
    for (size_t s = 0; s < block_.size(); ++s) {
      if (uses_layer_path(block_[s].parameter)) continue;
      targets.push_back(parameters_[block_[s].parameter]);
      segment_of_target.push_back(s);
    }
    auto accumulate = [&](const std::vector<torch::Tensor>& grads, double weight) {
      for (size_t t = 0; t < targets.size(); ++t) {
        if (!grads[t].defined()) continue;
        const auto& segment = block_[segment_of_target[t]];
        torch::Tensor rows = grads[t].dim() == 0
                                 ? grads[t].view({1})
                                 : grads[t].slice(0, segment.row_begin, segment.row_end);
        sums_[segment_of_target[t]].add_(rows.square(), weight);
      }
    };
    for (int64_t i = 0; i < x.size(0); ++i) {
      const torch::Tensor lp = log_probs(model_->forward(x.slice(0, i, i + 1))).squeeze(0);
      if (request_.labels == CLHOST_FISHER_LABELS_EXPECTATION) {
        const torch::Tensor probs = lp.exp().detach();
        const int64_t classes = lp.size(0);
        for (int64_t c = 0; c < classes; ++c) {
          accumulate(torch::autograd::grad({-lp[c]}, targets, {}, c + 1 < classes, false, true),
                     probs[c].item<double>());
        }
      } else {
        int64_t label = y[i].item<int64_t>();
        if (request_.labels == CLHOST_FISHER_LABELS_SAMPLE) {
          label = sample_labels(lp.view({1, -1})).item<int64_t>();
        }
        accumulate(torch::autograd::grad({-lp[label]}, targets, {}, false, false, true), 1.0);
      }
    }
  }

  // Avalanche's estimate: the squared gradient of each mini-batch's mean loss.
  void add_batched(const torch::Tensor& x, const torch::Tensor& y) {
    std::vector<torch::Tensor> targets;
    for (const auto& segment : block_) targets.push_back(parameters_[segment.parameter]);
    const torch::Tensor lp = log_probs(model_->forward(x));
    torch::Tensor loss;
    if (request_.labels == CLHOST_FISHER_LABELS_EXPECTATION) {
      loss = -(lp.exp().detach() * lp).sum(1).mean();
    } else {
      const torch::Tensor labels =
          request_.labels == CLHOST_FISHER_LABELS_SAMPLE ? sample_labels(lp) : y;
      loss = torch::nll_loss(lp, labels);
    }
    const auto grads = torch::autograd::grad({loss}, targets, {}, false, false, true);
    for (size_t s = 0; s < block_.size(); ++s) {
      if (!grads[s].defined()) continue;
      const auto& segment = block_[s];
      torch::Tensor rows = grads[s].dim() == 0
                               ? grads[s].view({1})
                               : grads[s].slice(0, segment.row_begin, segment.row_end);
      sums_[s].add_(rows.square());
    }
    ++contributions_;
  }

  const FisherContext& context_;
  const clhost_fisher_request_t& request_;
  FisherMethod method_;
  torch::nn::Sequential model_;
  std::vector<torch::Tensor> parameters_;
  const ModelMap& map_;
  const FisherBlock& block_;
  torch::Generator generator_;
  std::vector<torch::Tensor> sums_;
  torch::Tensor rows_buffer_;  // sample_rows' output, reused across chunks
  int64_t contributions_ = 0;
};

}  // namespace

std::vector<FisherBlock> plan_fisher_blocks(const std::vector<torch::Tensor>& parameters,
                                            int64_t block_size) {
  if (block_size <= 0) throw RunError("Fisher block_size must be positive");
  std::vector<FisherBlock> blocks;
  FisherBlock current;
  int64_t current_size = 0;
  for (size_t p = 0; p < parameters.size(); ++p) {
    const int64_t numel = parameters[p].numel();
    const int64_t rows = rows_of(parameters[p]);
    if (numel <= block_size) {
      if (current_size + numel > block_size && !current.empty()) {
        blocks.push_back(std::move(current));
        current = {};
        current_size = 0;
      }
      current.push_back({p, 0, rows});
      current_size += numel;
      continue;
    }
    if (!current.empty()) {
      blocks.push_back(std::move(current));
      current = {};
      current_size = 0;
    }
    const int64_t rows_per_block = std::max<int64_t>(1, block_size / row_numel(parameters[p]));
    for (int64_t row = 0; row < rows; row += rows_per_block) {
      blocks.push_back({{p, row, std::min(rows, row + rows_per_block)}});
    }
  }
  if (!current.empty()) blocks.push_back(std::move(current));
  return blocks;
}

namespace {

// The walk both passes share: the model in eval mode (restored on every exit), every block of the
// plan, and for each the task's first `samples` training samples in chunks of batch_size, each
// handed to on_chunk with its BlockPass; on_block_end after a block's last chunk.
using ChunkVisitor = std::function<void(
    size_t block_index, size_t block_count, const FisherBlock& block, BlockPass& pass,
    const torch::Tensor& x, const torch::Tensor& y, int64_t samples, bool last)>;

void walk_blocks(const FisherContext& context, const clhost_fisher_request_t& request,
                 int64_t block_size, FisherMethod method, const ChunkVisitor& on_chunk,
                 const std::function<void(BlockPass&)>& on_block_end) {
  const TaskData& task = *context.task;
  torch::nn::Sequential model = context.model;
  const std::vector<torch::Tensor> parameters = model->parameters();
  if (request.labels != CLHOST_FISHER_LABELS_TRUE &&
      request.labels != CLHOST_FISHER_LABELS_SAMPLE &&
      request.labels != CLHOST_FISHER_LABELS_EXPECTATION) {
    throw RunError("Fisher request: unknown labels mode " + std::to_string(request.labels));
  }
  int64_t samples = task.train_size();
  if (request.max_samples > 0) samples = std::min(samples, request.max_samples);
  if (samples == 0) throw RunError("Fisher requested on a task without training samples");
  const int64_t chunk = std::max<int64_t>(request.batch_size, 1);
  const ModelMap map = map_model(model, parameters);
  const auto blocks = plan_fisher_blocks(parameters, block_size);
  const bool was_training = model->is_training();
  model->eval();
  try {
    for (size_t b = 0; b < blocks.size(); ++b) {
      // The same label draws for every block: the generator restarts per block.
      BlockPass pass(context, request, method, model, parameters, map, blocks[b],
                     at::detail::createCPUGenerator(context.seed ^ 0xf15e4ULL));
      for (int64_t start = 0; start < samples; start += chunk) {
        const int64_t end = std::min(samples, start + chunk);
        const torch::Tensor x = task.train_range(start, end).to(parameters.front().dtype());
        const torch::Tensor y =
            context.label_map.index_select(0, task.train_y.slice(0, start, end));
        on_chunk(b, blocks.size(), blocks[b], pass, x, y, samples, end == samples);
      }
      if (on_block_end) on_block_end(pass);
    }
  } catch (...) {
    if (was_training) model->train();
    throw;
  }
  if (was_training) model->train();
}

}  // namespace

void diagonal_fisher(const FisherContext& context, const clhost_fisher_request_t& request,
                     int64_t block_size, FisherMethod method, const FisherSink& sink) {
  walk_blocks(
      context, request, block_size, method,
      [](size_t, size_t, const FisherBlock&, BlockPass& pass, const torch::Tensor& x,
         const torch::Tensor& y, int64_t, bool) { pass.add_chunk(x, y); },
      [&](BlockPass& pass) { pass.emit(sink); });
}

void per_sample_gradients(const FisherContext& context, const clhost_fisher_request_t& request,
                          int64_t block_size, FisherMethod method, const SampleGradientSink& sink) {
  if (request.batched != 0) {
    throw RunError(
        "per-sample gradients: request->batched must be 0 (mini-batch gradients are "
        "not per-sample)");
  }
  walk_blocks(
      context, request, block_size, method,
      [&](size_t block_index, size_t block_count, const FisherBlock& block, BlockPass& pass,
          const torch::Tensor& x, const torch::Tensor& y, int64_t samples, bool last) {
        sink(block_index, block_count, block, pass.sample_rows(x, y).contiguous(), samples, last);
      },
      nullptr);
}

}  // namespace clhost
