#include "layer_tap.hpp"

namespace clhost {
namespace {

thread_local TapRecorder* g_active_tap = nullptr;

}  // namespace

void tap_layer(const void* key, const torch::Tensor& input, const torch::Tensor& output) {
  if (g_active_tap != nullptr) g_active_tap->record(key, input, output);
}

ScopedTap::ScopedTap(TapRecorder* recorder) : previous_(g_active_tap) {
  g_active_tap = recorder;
}

ScopedTap::~ScopedTap() {
  g_active_tap = previous_;
}

}  // namespace clhost
