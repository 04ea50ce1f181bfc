#include "transformer.hpp"

#include <torch/torch.h>

#include <cmath>

#include "clhost/errors.hpp"
#include "layer_tap.hpp"

namespace clhost {
namespace {

namespace nn = torch::nn;

torch::Tensor tapped(nn::Linear& layer, const torch::Tensor& x) {
  torch::Tensor y = layer->forward(x);
  tap_layer(layer.get(), x, y);
  return y;
}

torch::Tensor tapped(nn::LayerNorm& layer, const torch::Tensor& x) {
  torch::Tensor y = layer->forward(x);
  tap_layer(layer.get(), x, y);
  return y;
}

TapLayer tap_of(const nn::Linear& layer) {
  return {TapKind::kLinear, layer.get(), layer->weight, layer->bias};
}

TapLayer tap_of(const nn::LayerNorm& layer) {
  return {TapKind::kLayerNorm, layer.get(), layer->weight, layer->bias, layer->options.eps()};
}

// Token and position embeddings, summed.
class EmbeddingsImpl : public nn::Module, public TappedModule {
 public:
  EmbeddingsImpl(int64_t context, int64_t width, double dropout)
      : tokens_(register_module("tokens", nn::Embedding(kByteVocabulary, width))),
        positions_(register_module("positions", nn::Embedding(context, width))),
        dropout_(register_module("dropout", nn::Dropout(dropout))),
        context_(context) {}

  torch::Tensor forward(const torch::Tensor& input) {
    if (input.dim() != 2 ||
        (input.scalar_type() != torch::kInt64 && input.scalar_type() != torch::kByte)) {
      throw RunError("the transformer takes [samples, positions] bytes (uint8 or int64)");
    }
    const torch::Tensor bytes = input.to(torch::kInt64);
    const int64_t length = bytes.size(1);
    if (length > context_) {
      throw RunError("a window of " + std::to_string(length) +
                     " bytes is longer than model.context = " + std::to_string(context_));
    }
    const torch::Tensor token_out = tokens_(bytes);
    tap_layer(tokens_.get(), bytes, token_out);
    // Expanded per sample so that the tap sees each sample's own position gradient.
    const torch::Tensor where =
        torch::arange(length, bytes.options()).unsqueeze(0).expand({bytes.size(0), length});
    const torch::Tensor position_out = positions_(torch::arange(length, bytes.options()))
                                           .unsqueeze(0)
                                           .expand({bytes.size(0), length, -1});
    tap_layer(positions_.get(), where, position_out);
    return dropout_(token_out + position_out);
  }

  [[nodiscard]] std::vector<TapLayer> tap_layers() const override {
    return {{TapKind::kEmbedding, tokens_.get(), tokens_->weight, {}},
            {TapKind::kEmbedding, positions_.get(), positions_->weight, {}}};
  }

  [[nodiscard]] const torch::Tensor& token_weight() const { return tokens_->weight; }

 private:
  nn::Embedding tokens_;
  nn::Embedding positions_;
  nn::Dropout dropout_;
  int64_t context_;
};
TORCH_MODULE(Embeddings);

// x + attention(ln1(x)), then x + mlp(ln2(x)).
class DecoderBlockImpl : public nn::Module, public TappedModule {
 public:
  DecoderBlockImpl(int64_t width, int64_t heads, int64_t mlp_ratio, double dropout)
      : ln1_(register_module("ln1", nn::LayerNorm(nn::LayerNormOptions({width})))),
        qkv_(register_module("qkv", nn::Linear(width, 3 * width))),
        proj_(register_module("proj", nn::Linear(width, width))),
        ln2_(register_module("ln2", nn::LayerNorm(nn::LayerNormOptions({width})))),
        fc1_(register_module("fc1", nn::Linear(width, mlp_ratio * width))),
        fc2_(register_module("fc2", nn::Linear(mlp_ratio * width, width))),
        dropout_(register_module("dropout", nn::Dropout(dropout))),
        heads_(heads) {}

  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = x + dropout_(tapped(proj_, attention(tapped(ln1_, x))));
    const torch::Tensor inner = torch::gelu(tapped(fc1_, tapped(ln2_, h)));
    return h + dropout_(tapped(fc2_, inner));
  }

  [[nodiscard]] std::vector<TapLayer> tap_layers() const override {
    return {tap_of(ln1_), tap_of(qkv_), tap_of(proj_), tap_of(ln2_), tap_of(fc1_), tap_of(fc2_)};
  }

 private:
  // Causal multi-head self-attention of a normalized input [N, T, d] -> [N, T, d].
  torch::Tensor attention(const torch::Tensor& a) {
    const int64_t batch = a.size(0);
    const int64_t length = a.size(1);
    const int64_t width = a.size(2);
    const int64_t head_width = width / heads_;
    const auto split = tapped(qkv_, a)
                           .view({batch, length, 3, heads_, head_width})
                           .permute({2, 0, 3, 1, 4});  // [3, N, H, T, hd]
    const torch::Tensor scores = torch::matmul(split[0], split[1].transpose(-2, -1)) /
                                 std::sqrt(static_cast<double>(head_width));
    const torch::Tensor future = torch::ones({length, length}, torch::dtype(torch::kBool)).triu(1);
    const torch::Tensor weights =
        dropout_(torch::softmax(scores.masked_fill(future, -INFINITY), -1));
    return torch::matmul(weights, split[2]).transpose(1, 2).reshape({batch, length, width});
  }

  nn::LayerNorm ln1_;
  nn::Linear qkv_;
  nn::Linear proj_;
  nn::LayerNorm ln2_;
  nn::Linear fc1_;
  nn::Linear fc2_;
  nn::Dropout dropout_;
  int64_t heads_;
};
TORCH_MODULE(DecoderBlock);

// Final LayerNorm and the next-byte logits; the output matrix is the token embedding's own when
// tied (then it is not a parameter of this module: the optimizer sees it once).
class ByteHeadImpl : public nn::Module, public TappedModule {
 public:
  ByteHeadImpl(int64_t width, const torch::Tensor& tied_weight)
      : norm_(register_module("norm", nn::LayerNorm(nn::LayerNormOptions({width})))) {
    if (tied_weight.defined()) {
      weight_ = tied_weight;
    } else {
      output_ = register_module("output",
                                nn::Linear(nn::LinearOptions(width, kByteVocabulary).bias(false)));
      weight_ = output_->weight;
    }
  }

  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor normed = tapped(norm_, x);
    torch::Tensor logits = torch::matmul(normed, weight_.t());
    tap_layer(&weight_, normed, logits);
    return logits;
  }

  [[nodiscard]] std::vector<TapLayer> tap_layers() const override {
    return {tap_of(norm_), {TapKind::kLinear, &weight_, weight_, {}}};
  }

 private:
  nn::LayerNorm norm_;
  nn::Linear output_{nullptr};
  torch::Tensor weight_;
};
TORCH_MODULE(ByteHead);

// GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm scales.
void initialize(nn::Module& model) {
  torch::NoGradGuard no_grad;
  for (auto& module : model.modules(/*include_self=*/false)) {
    if (auto* linear = module->as<nn::Linear>()) {
      linear->weight.normal_(0.0, 0.02);
      if (linear->bias.defined()) linear->bias.zero_();
    } else if (auto* embedding = module->as<nn::Embedding>()) {
      embedding->weight.normal_(0.0, 0.02);
    }
  }
}

}  // namespace

torch::nn::Sequential make_transformer(const ModelSection& model) {
  if (model.d_model % model.heads != 0) {
    throw ConfigError("model.d_model = " + std::to_string(model.d_model) +
                      " is not a multiple of model.heads = " + std::to_string(model.heads));
  }
  torch::nn::Sequential net;
  const Embeddings embeddings(model.context, model.d_model, model.dropout);
  net->push_back("embeddings", embeddings);
  for (int64_t layer = 0; layer < model.layers; ++layer) {
    net->push_back("block" + std::to_string(layer + 1),
                   DecoderBlock(model.d_model, model.heads, model.mlp_ratio, model.dropout));
  }
  net->push_back("head", ByteHead(model.d_model,
                                  model.tied_head ? embeddings->token_weight() : torch::Tensor()));
  initialize(*net);
  return net;
}

}  // namespace clhost
