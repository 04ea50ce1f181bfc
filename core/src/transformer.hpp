// The built-in decoder-only transformer (model.kind = "transformer"): byte-level, GPT-style,
// pre-LayerNorm blocks with causal self-attention, learned positions. A Sequential of
// [embedding, block 1..L, head], so that activation checkpointing cuts it between blocks; every
// Linear, LayerNorm and Embedding inside is tapped for the exact per-sample Fisher.
// Internal to the core.
#pragma once

#include <torch/nn/modules/container/sequential.h>

#include "clhost/config.hpp"

namespace clhost {

constexpr int64_t kByteVocabulary = 256;

// Input: [N, T] int64 bytes, T <= model.context. Output: next-byte logits [N, T, 256].
torch::nn::Sequential make_transformer(const ModelSection& model);

}  // namespace clhost
