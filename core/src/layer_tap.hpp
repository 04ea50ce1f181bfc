// Layer taps: how the Fisher pass sees the input and output of every layer inside a module whose
// forward is more than a chain (the transformer's blocks). Modules call tap_layer() after each
// layer whose per-sample gradient has a closed form; outside a Fisher pass no tap is active and
// the call is one thread-local load. Internal to the core.
#pragma once

#include <torch/types.h>

#include <vector>

namespace clhost {

enum class TapKind {
  kLinear,     // y = x W^T + b over the last dimension; x [N, in] or [N, T, in]
  kLayerNorm,  // y = (x - mean) / sqrt(var + eps) * weight + bias over the last dimension
  kEmbedding,  // y = weight[indices]; the tap's input is the indices [N, T] (int64)
};

// One layer of a tapped module: its kind, the key it records under and its parameters.
struct TapLayer {
  TapKind kind = TapKind::kLinear;
  const void* key = nullptr;  // the layer's module (unique per layer)
  torch::Tensor weight;
  torch::Tensor bias;  // undefined: none
  double eps = 1e-5;   // kLayerNorm
};

// A module that reports its tapped layers, in forward order.
class TappedModule {
 public:
  virtual ~TappedModule() = default;
  [[nodiscard]] virtual std::vector<TapLayer> tap_layers() const = 0;

 protected:
  TappedModule() = default;
  TappedModule(const TappedModule&) = default;
  TappedModule& operator=(const TappedModule&) = default;
  TappedModule(TappedModule&&) = default;
  TappedModule& operator=(TappedModule&&) = default;
};

// Receives what the layers record while it is the thread's active tap.
class TapRecorder {
 public:
  virtual ~TapRecorder() = default;
  // `output` is the tensor the forward goes on with: its gradient is the layer's output gradient.
  virtual void record(const void* key, const torch::Tensor& input, const torch::Tensor& output) = 0;

 protected:
  TapRecorder() = default;
  TapRecorder(const TapRecorder&) = default;
  TapRecorder& operator=(const TapRecorder&) = default;
  TapRecorder(TapRecorder&&) = default;
  TapRecorder& operator=(TapRecorder&&) = default;
};

// Hands (input, output) of layer `key` to the active recorder, if any.
void tap_layer(const void* key, const torch::Tensor& input, const torch::Tensor& output);

// Makes `recorder` the thread's active tap for its lifetime (scopes nest).
class ScopedTap {
 public:
  explicit ScopedTap(TapRecorder* recorder);
  ~ScopedTap();
  ScopedTap(const ScopedTap&) = delete;
  ScopedTap& operator=(const ScopedTap&) = delete;
  ScopedTap(ScopedTap&&) = delete;
  ScopedTap& operator=(ScopedTap&&) = delete;

 private:
  TapRecorder* previous_;
};

}  // namespace clhost
