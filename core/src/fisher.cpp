#include "fisher.hpp"

#include <torch/torch.h>

#include <chrono>
#include <optional>
#include <sstream>

#include "clhost/errors.hpp"
#include "clhost/memory_budget.hpp"
#include "fisher_layers.hpp"

namespace clhost {
namespace {

// The labels of one backward pass and each sample's weight in the Fisher: TRUE and SAMPLE have
// one pass of weight 1; EXPECTATION one per active class c, weighted by p_c.
struct LabelPass {
  torch::Tensor labels;  // [N] classes, or [N, T] next bytes
  torch::Tensor weight;  // [N]
};

// The model's log-probabilities and the label passes a request asks for. Sequence outputs
// ([N, T, V]) are scored at every position: a sample's log-likelihood is the sum over them.
// With an OutputFunction (clhost.output_grads/1) the "log-probabilities" are the active classes'
// logits themselves and the one pass's "labels" are the plug-in's df/dscores.
class Labels {
 public:
  Labels(const FisherContext& context, const clhost_fisher_request_t& request,
         const OutputFunction* function, torch::Generator generator)
      : context_(context),
        request_(request),
        function_(function),
        generator_(std::move(generator)) {}

  torch::Tensor log_probs(const torch::Tensor& output) const {
    if (output.dim() == 3) return torch::log_softmax(output, 2);
    const torch::Tensor scores = output.index_select(1, context_.active_classes);
    return function_ != nullptr ? scores : torch::log_softmax(scores, 1);
  }

  std::vector<LabelPass> passes(const torch::Tensor& log_probs, const torch::Tensor& y) {
    const torch::Tensor ones =
        torch::ones({log_probs.size(0)}, log_probs.options().requires_grad(false));
    if (function_ != nullptr) return {{output_gradient(log_probs, y), ones}};
    if (request_.labels == CLHOST_FISHER_LABELS_TRUE) return {{y, ones}};
    if (request_.labels == CLHOST_FISHER_LABELS_SAMPLE) return {{sample(log_probs), ones}};
    std::vector<LabelPass> out;
    const torch::Tensor probs = log_probs.exp().detach();
    for (int64_t c = 0; c < log_probs.size(1); ++c) {
      out.push_back(
          {torch::full({log_probs.size(0)}, c, torch::kInt64), probs.select(1, c).contiguous()});
    }
    return out;
  }

  // Labels drawn from the model: one per sample, or one per position of a sequence.
  torch::Tensor sample(const torch::Tensor& log_probs) {
    const torch::Tensor probs = log_probs.exp().detach();
    return torch::multinomial(probs.reshape({-1, probs.size(-1)}), 1, true, generator_)
        .view(probs.sizes().slice(0, probs.dim() - 1));
  }

  // Summed (not averaged) negative log-likelihood, or f's linearisation sum_i <scores_i, d_i>:
  // either way each sample's output gradient is its own.
  torch::Tensor summed_loss(const torch::Tensor& log_probs, const torch::Tensor& labels) const {
    if (function_ != nullptr) return (log_probs * labels).sum();
    return -log_probs.gather(-1, labels.unsqueeze(-1)).sum();
  }

  bool absolute() const { return function_ != nullptr && function_->absolute; }

  bool expectation() const { return request_.labels == CLHOST_FISHER_LABELS_EXPECTATION; }

  // LABELS_SAMPLE: the draws that follow come from `seed`.
  void restart_draws(uint64_t seed) { generator_.set_current_seed(seed); }

  int64_t passes_per_chunk() const {
    return request_.labels == CLHOST_FISHER_LABELS_EXPECTATION ? context_.active_classes.numel()
                                                               : 1;
  }

 private:
  torch::Tensor output_gradient(const torch::Tensor& scores, const torch::Tensor& y) const {
    torch::Tensor d = function_->gradient(scores.detach(), y);
    if (!d.defined() || d.sizes() != scores.sizes()) {
      throw RunError(
          "output gradients: the plug-in's df/dscores has another shape than the scores");
    }
    return d.to(scores.scalar_type());
  }

  const FisherContext& context_;
  const clhost_fisher_request_t& request_;
  const OutputFunction* function_;
  torch::Generator generator_;
};

// The producer: per-sample gradients of one block's segments for a chunk of samples — batched
// through the known layers' closed forms, and by one backward pass per sample (the reference,
// and the way for every other parameter).
class BlockGradients {
 public:
  BlockGradients(const FisherContext& context, const clhost_fisher_request_t& request,
                 FisherMethod method, torch::nn::Sequential model,
                 const std::vector<torch::Tensor>& parameters, const ModelMap& map,
                 const FisherBlock& block, const OutputFunction* function,
                 torch::Generator generator)
      : labels_(context, request, function, std::move(generator)),
        method_(method),
        model_(std::move(model)),
        parameters_(parameters),
        map_(map),
        block_(block) {
    for (const auto& segment : block_) {
      const bool layer = uses_layer_path(segment.parameter);
      (layer ? any_layer_ : any_loop_) = true;
      if (!layer) continue;
      for (size_t id : map_.uses[segment.parameter]) {
        if (std::find(layers_.begin(), layers_.end(), id) == layers_.end()) layers_.push_back(id);
      }
    }
  }

  const FisherBlock& block() const { return block_; }
  Labels& labels() { return labels_; }
  torch::nn::Sequential& model() { return model_; }
  const std::vector<torch::Tensor>& parameters() const { return parameters_; }
  bool any_layer() const { return any_layer_; }
  bool any_loop() const { return any_loop_; }
  bool uses_layer_path(size_t parameter) const {
    return method_ == FisherMethod::kAuto && !map_.uses[parameter].empty();
  }
  int64_t elements(const FisherSegment& segment) const {
    return (segment.row_end - segment.row_begin) * row_numel(parameters_[segment.parameter]);
  }
  int64_t block_elements() const {
    int64_t total = 0;
    for (const auto& segment : block_) total += elements(segment);
    return total;
  }

  // What one backward pass of the batched path gives: each known layer's input and output
  // gradient, and the pass's per-sample weights.
  struct Pass {
    const LayerCapture* capture;
    std::vector<torch::Tensor> deltas;  // by capture slot; undefined: no gradient reaches it
    torch::Tensor weight;
    size_t index;
  };

  // One forward through the known layers, then one backward per label pass.
  void for_each_pass(const torch::Tensor& x, const torch::Tensor& y,
                     const std::function<void(const Pass&)>& visit) {
    LayerCapture capture(map_, layers_);
    const torch::Tensor log_probs = labels_.log_probs(capture.forward(model_, x));
    const std::vector<LabelPass> passes = labels_.passes(log_probs, y);
    for (size_t k = 0; k < passes.size(); ++k) {
      const auto grads =
          torch::autograd::grad({labels_.summed_loss(log_probs, passes[k].labels)},
                                capture.outputs(), {}, k + 1 < passes.size(), false, true);
      visit(Pass{&capture, grads, passes[k].weight, k});
    }
  }

  bool direct_squares(size_t s, const Pass& pass) const {
    const auto& uses = map_.uses[block_[s].parameter];
    if (uses.size() != 1) return false;
    const KnownLayer& layer = map_.layers[uses[0]];
    return has_direct_squares(layer, is_weight(layer, block_[s]),
                              pass.capture->input(pass.capture->slot_of(uses[0])));
  }

  // sum_i w_i g_i^2 (or |g_i|) of segment s where direct_squares(s, pass) holds.
  torch::Tensor squares(size_t s, const Pass& pass) const {
    const size_t id = map_.uses[block_[s].parameter][0];
    const size_t slot = pass.capture->slot_of(id);
    if (!pass.deltas[slot].defined()) return {};
    return direct_weighted_sums(pass.capture->input(slot), pass.deltas[slot], pass.weight,
                                block_[s].row_begin, block_[s].row_end, labels_.absolute());
  }

  // Per-sample gradients [count, elements] of segment s for samples [begin, begin + count): the
  // sum over the layers that use the parameter (a tied matrix has two). Undefined: no gradient.
  torch::Tensor sample_gradients(size_t s, const Pass& pass, int64_t begin, int64_t count) const {
    const FisherSegment& segment = block_[s];
    torch::Tensor sum;
    for (size_t id : map_.uses[segment.parameter]) {
      const size_t slot = pass.capture->slot_of(id);
      if (!pass.deltas[slot].defined()) continue;
      const torch::Tensor g = layer_sample_gradients(
          map_.layers[id], is_weight(map_.layers[id], segment),
          pass.capture->input(slot).narrow(0, begin, count),
          pass.deltas[slot].detach().narrow(0, begin, count), segment.row_begin, segment.row_end);
      sum = sum.defined() ? sum + g : g;
    }
    return sum;
  }

  // The per-sample loop: for every sample and label pass, the gradients of the block's loop
  // segments (rows of the segment, flat; undefined where no gradient reaches it).
  using LoopVisitor = std::function<void(int64_t sample, size_t pass, const torch::Tensor& weight,
                                         const std::vector<torch::Tensor>& rows)>;
  void for_each_sample(const torch::Tensor& x, const torch::Tensor& y, const LoopVisitor& visit) {
    std::vector<torch::Tensor> targets;
    for (const auto& segment : block_) {
      if (!uses_layer_path(segment.parameter)) targets.push_back(parameters_[segment.parameter]);
    }
    for (int64_t i = 0; i < x.size(0); ++i) {
      const torch::Tensor log_probs = labels_.log_probs(model_->forward(x.slice(0, i, i + 1)));
      const std::vector<LabelPass> passes = labels_.passes(log_probs, y.slice(0, i, i + 1));
      for (size_t k = 0; k < passes.size(); ++k) {
        auto grads = torch::autograd::grad({labels_.summed_loss(log_probs, passes[k].labels)},
                                           targets, {}, k + 1 < passes.size(), false, true);
        size_t t = 0;
        for (const auto& segment : block_) {
          if (uses_layer_path(segment.parameter)) continue;
          torch::Tensor& grad = grads[t++];
          if (!grad.defined()) continue;
          grad =
              (grad.dim() == 0 ? grad.view({1}) : grad.slice(0, segment.row_begin, segment.row_end))
                  .reshape({-1});
        }
        visit(i, k, passes[k].weight, grads);
      }
    }
  }

 private:
  static bool is_weight(const KnownLayer& layer, const FisherSegment& segment) {
    return layer.weight && *layer.weight == segment.parameter;
  }

  Labels labels_;
  FisherMethod method_;
  torch::nn::Sequential model_;
  const std::vector<torch::Tensor>& parameters_;
  const ModelMap& map_;
  const FisherBlock& block_;
  std::vector<size_t> layers_;  // the known layers this block's segments need
  bool any_layer_ = false;
  bool any_loop_ = false;
};

// Consumer: the diagonal Fisher of a block, sum_i w_i g_i^2 over the chunks, then their mean.
class DiagonalAccumulator {
 public:
  explicit DiagonalAccumulator(const BlockGradients& producer) {
    for (const auto& segment : producer.block()) {
      const auto& parameter = producer.parameters()[segment.parameter];
      std::vector<int64_t> shape = parameter.sizes().vec();
      if (shape.empty()) shape.push_back(1);
      shape[0] = segment.row_end - segment.row_begin;
      sums_.push_back(torch::zeros(shape, parameter.options().requires_grad(false)));
    }
  }

  void add_chunk(BlockGradients& producer, const torch::Tensor& x, const torch::Tensor& y,
                 bool batched) {
    if (batched) {
      add_batched(producer, x, y);
      return;
    }
    if (producer.any_layer()) add_layers(producer, x, y);
    if (producer.any_loop()) add_loop(producer, x, y);
    contributions_ += x.size(0);
  }

  // In a data-parallel run: every rank's sums and contributions, added up on every rank.
  void reduce(Collective& collective) {
    if (!collective.distributed()) return;
    collective.sum(sums_);
    contributions_ = static_cast<int64_t>(collective.sum(static_cast<double>(contributions_)));
  }

  void emit(const BlockGradients& producer, const FisherSink& sink) {
    const double denominator = static_cast<double>(std::max<int64_t>(contributions_, 1));
    for (size_t s = 0; s < producer.block().size(); ++s) {
      const auto& segment = producer.block()[s];
      const int64_t offset =
          segment.row_begin * row_numel(producer.parameters()[segment.parameter]);
      sink(segment.parameter, offset, sums_[s].div_(denominator).reshape({-1}).contiguous());
    }
  }

 private:
  void add_layers(BlockGradients& producer, const torch::Tensor& x, const torch::Tensor& y) {
    const FisherBlock& block = producer.block();
    producer.for_each_pass(x, y, [&](const BlockGradients::Pass& pass) {
      for (size_t s = 0; s < block.size(); ++s) {
        if (!producer.uses_layer_path(block[s].parameter)) continue;
        torch::Tensor flat = sums_[s].view({-1});
        if (producer.direct_squares(s, pass)) {
          const torch::Tensor squares = producer.squares(s, pass);
          if (squares.defined()) flat.add_(squares);
          continue;
        }
        add_sample_squares(producer, pass, s, x.size(0), flat);
      }
    });
  }

  // Segment s's per-sample gradients squared (or absolute) and summed into `flat`, a slice of
  // samples at a time, which keeps [samples, elements] near 64 MiB.
  static void add_sample_squares(BlockGradients& producer, const BlockGradients::Pass& pass,
                                 size_t s, int64_t samples, torch::Tensor& flat) {
    const int64_t step =
        std::max<int64_t>(1, (int64_t{16} << 20) / std::max<int64_t>(flat.numel(), 1));
    for (int64_t begin = 0; begin < samples; begin += step) {
      const int64_t count = std::min(step, samples - begin);
      torch::Tensor g = producer.sample_gradients(s, pass, begin, count);
      if (!g.defined()) return;
      // g is this call's own tensor: squared and weighted in place, no [samples, elements]
      // temporaries (the pass is bound by writing and reading them).
      if (producer.labels().expectation()) {
        g.mul_(pass.weight.narrow(0, begin, count).sqrt().view({-1, 1}));
      }
      flat.add_((producer.labels().absolute() ? g.abs_() : g.square_()).sum(0));
    }
  }

  void add_loop(BlockGradients& producer, const torch::Tensor& x, const torch::Tensor& y) {
    const FisherBlock& block = producer.block();
    producer.for_each_sample(
        x, y,
        [&](int64_t, size_t, const torch::Tensor& weight, const std::vector<torch::Tensor>& rows) {
          size_t t = 0;
          const double w = weight[0].item<double>();
          for (size_t s = 0; s < block.size(); ++s) {
            if (producer.uses_layer_path(block[s].parameter)) continue;
            const torch::Tensor& row = rows[t++];
            if (!row.defined()) continue;
            sums_[s].view({-1}).add_(producer.labels().absolute() ? row.abs() : row.square(), w);
          }
        });
  }

  // Avalanche's estimate: the squared gradient of each mini-batch's mean loss.
  void add_batched(BlockGradients& producer, const torch::Tensor& x, const torch::Tensor& y) {
    const FisherBlock& block = producer.block();
    std::vector<torch::Tensor> targets;
    for (const auto& segment : block) targets.push_back(producer.parameters()[segment.parameter]);
    Labels& labels = producer.labels();
    const torch::Tensor lp = labels.log_probs(producer.model()->forward(x));
    torch::Tensor loss;
    if (labels.expectation()) {
      loss = -(lp.exp().detach() * lp).sum(1).mean();
    } else {
      const torch::Tensor chosen = labels.passes(lp, y).front().labels;
      loss = torch::nll_loss(lp.reshape({-1, lp.size(-1)}), chosen.reshape({-1}));
    }
    const auto grads = torch::autograd::grad({loss}, targets, {}, false, false, true);
    for (size_t s = 0; s < block.size(); ++s) {
      if (!grads[s].defined()) continue;
      const auto& segment = block[s];
      torch::Tensor rows = grads[s].dim() == 0
                               ? grads[s].view({1})
                               : grads[s].slice(0, segment.row_begin, segment.row_end);
      sums_[s].add_(rows.square());
    }
    ++contributions_;
  }

  std::vector<torch::Tensor> sums_;
  int64_t contributions_ = 0;
};

// Consumer: the rows R of a chunk with F_block = (1/n) sum R^T R: one per sample (TRUE, SAMPLE)
// or one per (class, sample), class-major, scaled by sqrt(p_c) (EXPECTATION).
class RowWriter {
 public:
  // [rows, block elements]; a view of a buffer reused from chunk to chunk (a fresh one of this
  // size would be mapped and faulted in anew).
  torch::Tensor rows(BlockGradients& producer, const torch::Tensor& x, const torch::Tensor& y) {
    const FisherBlock& block = producer.block();
    columns_.clear();
    int64_t elements = 0;
    for (const auto& segment : block) {
      columns_.push_back(elements);
      elements += producer.elements(segment);
    }
    const int64_t rows = producer.labels().passes_per_chunk() * x.size(0);
    if (!buffer_.defined() || buffer_.size(0) < rows) {
      buffer_ = torch::empty({rows, elements},
                             producer.parameters().front().options().requires_grad(false));
    }
    out_ = buffer_.narrow(0, 0, rows);
    // Every element is written below: a segment without a gradient gets zeros.
    if (producer.any_layer()) write_layer_rows(producer, x, y);
    if (producer.any_loop()) write_loop_rows(producer, x, y);
    return out_;
  }

 private:
  // Rows [first_row, first_row + count) of segment s's columns.
  torch::Tensor target(const BlockGradients& producer, size_t s, int64_t first_row,
                       int64_t count) const {
    return out_.narrow(0, first_row, count)
        .narrow(1, columns_[s], producer.elements(producer.block()[s]));
  }

  void write_layer_rows(BlockGradients& producer, const torch::Tensor& x, const torch::Tensor& y) {
    const FisherBlock& block = producer.block();
    const int64_t samples = x.size(0);
    producer.for_each_pass(x, y, [&](const BlockGradients::Pass& pass) {
      const torch::Tensor scale = pass.weight.sqrt().view({-1, 1});
      for (size_t s = 0; s < block.size(); ++s) {
        if (!producer.uses_layer_path(block[s].parameter)) continue;
        torch::Tensor into =
            target(producer, s, static_cast<int64_t>(pass.index) * samples, samples);
        const torch::Tensor g = producer.sample_gradients(s, pass, 0, samples);
        if (!g.defined()) {
          into.zero_();
        } else if (producer.labels().expectation()) {
          at::mul_out(into, g, scale);
        } else {
          into.copy_(g);
        }
      }
    });
  }

  void write_loop_rows(BlockGradients& producer, const torch::Tensor& x, const torch::Tensor& y) {
    const FisherBlock& block = producer.block();
    const int64_t samples = x.size(0);
    for (size_t s = 0; s < block.size(); ++s) {
      if (!producer.uses_layer_path(block[s].parameter))
        target(producer, s, 0, out_.size(0)).zero_();
    }
    producer.for_each_sample(x, y,
                             [&](int64_t i, size_t k, const torch::Tensor& weight,
                                 const std::vector<torch::Tensor>& grads) {
                               size_t t = 0;
                               for (size_t s = 0; s < block.size(); ++s) {
                                 if (producer.uses_layer_path(block[s].parameter)) continue;
                                 const torch::Tensor& row = grads[t++];
                                 if (!row.defined()) continue;
                                 target(producer, s, static_cast<int64_t>(k) * samples + i, 1)
                                     .copy_((row * weight.sqrt()[0]).view({1, -1}));
                               }
                             });
  }

  std::vector<int64_t> columns_;  // first column of each segment
  torch::Tensor out_;             // this chunk's rows, a view of buffer_
  torch::Tensor buffer_;          // reused from chunk to chunk
};

}  // namespace

namespace {

int64_t shape_numel(const std::vector<int64_t>& shape) {
  int64_t numel = 1;
  for (const int64_t size : shape) numel *= size;
  return numel;
}

int64_t shape_rows(const std::vector<int64_t>& shape) {
  return shape.empty() ? 1 : shape[0];
}

}  // namespace

std::vector<FisherBlock> plan_fisher_blocks(const std::vector<torch::Tensor>& parameters,
                                            int64_t block_size) {
  std::vector<std::vector<int64_t>> shapes;
  shapes.reserve(parameters.size());
  for (const auto& parameter : parameters) shapes.push_back(parameter.sizes().vec());
  return plan_fisher_blocks(shapes, block_size);
}

int64_t largest_block_elements(const std::vector<FisherBlock>& blocks,
                               const std::vector<std::vector<int64_t>>& shapes) {
  int64_t largest = 0;
  for (const FisherBlock& block : blocks) {
    int64_t elements = 0;
    for (const FisherSegment& segment : block) {
      const auto& shape = shapes[segment.parameter];
      const int64_t per_row = shape_numel(shape) / std::max<int64_t>(shape_rows(shape), 1);
      elements += (segment.row_end - segment.row_begin) * per_row;
    }
    largest = std::max(largest, elements);
  }
  return largest;
}

std::vector<FisherBlock> plan_fisher_blocks(const std::vector<std::vector<int64_t>>& shapes,
                                            int64_t block_size) {
  if (block_size <= 0) throw RunError("Fisher block_size must be positive");
  std::vector<FisherBlock> blocks;
  FisherBlock current;
  int64_t current_size = 0;
  for (size_t p = 0; p < shapes.size(); ++p) {
    const int64_t numel = shape_numel(shapes[p]);
    const int64_t rows = shape_rows(shapes[p]);
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
    const int64_t rows_per_block =
        std::max<int64_t>(1, block_size / std::max<int64_t>(numel / std::max<int64_t>(rows, 1), 1));
    for (int64_t row = 0; row < rows; row += rows_per_block) {
      blocks.push_back({{p, row, std::min(rows, row + rows_per_block)}});
    }
  }
  if (!current.empty()) blocks.push_back(std::move(current));
  return blocks;
}

namespace {

void check_request(const FisherContext& context, const clhost_fisher_request_t& request) {
  if (request.labels != CLHOST_FISHER_LABELS_TRUE &&
      request.labels != CLHOST_FISHER_LABELS_SAMPLE &&
      request.labels != CLHOST_FISHER_LABELS_EXPECTATION) {
    throw RunError("Fisher request: unknown labels mode " + std::to_string(request.labels));
  }
  if (request.labels == CLHOST_FISHER_LABELS_EXPECTATION && context.task->next_byte) {
    throw RunError(
        "Fisher request: labels = expectation sums over every output class of a sample; a "
        "sequence has 256^T of them. Use labels = \"true\" (the next bytes) or \"sample\" (drawn "
        "from the model) for text tasks");
  }
}

// The chunk [start, end) of the task's first training samples, as the model takes them.
std::pair<torch::Tensor, torch::Tensor> training_chunk(const FisherContext& context,
                                                       torch::ScalarType dtype, int64_t start,
                                                       int64_t end) {
  const TaskData& task = *context.task;
  const Samples samples = task.train_range(start, end);
  if (task.next_byte) {  // byte windows: next-byte targets at every position
    return {samples.x.to(torch::kInt64), samples.y.to(torch::kInt64)};
  }
  return {samples.x.to(dtype), context.label_map.index_select(0, samples.y)};
}

// Where a long pass is, about every 10 s: block, samples, elapsed time and what remains.
class PassProgress {
 public:
  PassProgress(const std::function<void(const std::string&)>& report, size_t blocks,
               int64_t samples)
      : report_(report), blocks_(blocks), samples_(samples) {}

  // `blocks` can grow during the pass: a block that ran out of memory is split in two.
  void update(size_t block, size_t blocks, int64_t samples_done) {
    blocks_ = blocks;
    if (!report_) return;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::seconds(10)) return;
    last_ = now;
    const double elapsed = std::chrono::duration<double>(now - started_).count();
    const double done = (static_cast<double>(block) +
                         static_cast<double>(samples_done) / static_cast<double>(samples_)) /
                        static_cast<double>(blocks_);
    std::ostringstream line;
    line.setf(std::ios::fixed);
    line.precision(0);
    line << "Fisher pass: block " << block + 1 << "/" << blocks_ << ", sample " << samples_done
         << "/" << samples_ << ", " << elapsed << " s elapsed, about "
         << elapsed * (1.0 - done) / std::max(done, 1e-9) << " s left";
    report_(line.str());
  }

 private:
  const std::function<void(const std::string&)>& report_;
  size_t blocks_;
  int64_t samples_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_ = started_;
};

// The chunks a block's samples are walked in: [k * size, min(samples, (k + 1) * size)). In a
// data-parallel run chunk k belongs to rank k % world_size; every rank walks every block.
struct ChunkPlan {
  int64_t samples = 0;
  int64_t size = 1;
  int rank = 0;
  int ranks = 1;

  [[nodiscard]] int64_t count() const { return (samples + size - 1) / size; }
  [[nodiscard]] bool mine(int64_t k) const { return k % ranks == rank; }
  [[nodiscard]] int64_t begin(int64_t k) const { return k * size; }
  [[nodiscard]] int64_t end(int64_t k) const { return std::min(samples, (k + 1) * size); }
};

// Thrown by a block's walk when some rank ran out of memory before anything of the block left:
// every rank restarts the block with smaller chunks, or as two smaller blocks when the block's own
// buffers did not fit or one sample per chunk did not (`in_chunk` says where it happened).
struct BlockOutOfMemory {
  bool in_chunk = true;
};

// The block as two blocks of about half its elements each — its segments shared between them, or
// one segment's rows — or nothing when it is a single row.
std::optional<std::pair<FisherBlock, FisherBlock>> split_block(
    const FisherBlock& block, const std::vector<torch::Tensor>& parameters) {
  auto elements = [&](const FisherSegment& segment) {
    return (segment.row_end - segment.row_begin) * row_numel(parameters[segment.parameter]);
  };
  if (block.size() == 1) {
    const FisherSegment& only = block.front();
    if (only.row_end - only.row_begin < 2) return std::nullopt;
    const int64_t middle = only.row_begin + (only.row_end - only.row_begin) / 2;
    return std::make_pair(FisherBlock{{only.parameter, only.row_begin, middle}},
                          FisherBlock{{only.parameter, middle, only.row_end}});
  }
  int64_t total = 0;
  for (const auto& segment : block) total += elements(segment);
  FisherBlock first;
  int64_t taken = 0;
  size_t s = 0;
  // At least one segment on each side; the first side stops at half of the elements.
  do {
    taken += elements(block[s]);
    first.push_back(block[s++]);
  } while (s + 1 < block.size() && taken + elements(block[s]) <= total / 2);
  return std::make_pair(std::move(first),
                        FisherBlock(block.begin() + static_cast<ptrdiff_t>(s), block.end()));
}

int64_t block_elements(const FisherBlock& block, const std::vector<torch::Tensor>& parameters) {
  int64_t total = 0;
  for (const auto& segment : block) {
    total += (segment.row_end - segment.row_begin) * row_numel(parameters[segment.parameter]);
  }
  return total;
}

// What the walk of one block does with the producer and its chunks (a consumer's whole pass).
using BlockWalk = std::function<void(BlockGradients& producer, size_t block_index,
                                     size_t block_count, const ChunkPlan& chunks)>;

// The chunk's samples as the model takes them, with the label draws seeded by where the chunk
// starts: the same draws whichever rank computes it, and for every block. The first block's
// chunks are counted into context.samples_computed.
std::pair<torch::Tensor, torch::Tensor> prepare_chunk(const FisherContext& context,
                                                      BlockGradients& producer,
                                                      const ChunkPlan& chunks, int64_t k,
                                                      size_t block_index) {
  producer.labels().restart_draws((context.seed ^ 0xf15e4ULL) +
                                  static_cast<uint64_t>(chunks.begin(k)));
  if (context.samples_computed != nullptr && block_index == 0)
    *context.samples_computed += chunks.end(k) - chunks.begin(k);
  return training_chunk(context, producer.parameters().front().scalar_type(), chunks.begin(k),
                        chunks.end(k));
}

// After block b ran out of memory: fewer samples per pass while they can shrink and the failure
// was in a chunk, else the block as two halves (blocks[b] and a new blocks[b + 1]). Throws
// RunError when one row of a parameter does not fit.
void shrink_after_out_of_memory(const FisherContext& context,
                                const clhost_fisher_request_t& request,
                                const BlockOutOfMemory& failure,
                                const std::vector<torch::Tensor>& parameters,
                                std::vector<FisherBlock>& blocks, size_t b, ChunkPlan& chunks) {
  const std::string where = "out of memory in the Fisher pass (block " + std::to_string(b + 1) +
                            "/" + std::to_string(blocks.size()) + "): ";
  if (failure.in_chunk && chunks.size > 1 && request.batched == 0) {
    chunks.size /= 2;
    if (context.progress) {
      context.progress(where + "the block starts over with " + std::to_string(chunks.size) +
                       " samples per pass");
    }
    return;
  }
  auto halves = split_block(blocks[b], parameters);
  if (!halves) {
    throw RunError(where + "one row of parameters (" +
                   std::to_string(block_elements(blocks[b], parameters)) + " elements) with " +
                   std::to_string(chunks.size) + " samples per pass does not fit; raise " +
                   "run.memory_budget" +
                   (chunks.size > 1 ? " or lower the plug-in's fisher batch size" : ""));
  }
  blocks[b] = std::move(halves->first);
  blocks.insert(blocks.begin() + static_cast<ptrdiff_t>(b) + 1, std::move(halves->second));
  if (context.progress) {
    context.progress(where + "the block starts over as two blocks of " +
                     std::to_string(block_elements(blocks[b], parameters)) + " and " +
                     std::to_string(block_elements(blocks[b + 1], parameters)) + " parameters");
  }
}

// The walk both passes share: the model in eval mode (restored on every exit), every block of the
// plan, each walked by `walk_block`. A block whose walk throws BlockOutOfMemory starts over with
// half the samples per chunk while chunks can shrink, else as two halves (the sums are the same).
void walk_blocks(const FisherContext& context, const clhost_fisher_request_t& request,
                 int64_t block_size, FisherMethod method, const OutputFunction* function,
                 const BlockWalk& walk_block) {
  check_request(context, request);
  torch::nn::Sequential model = context.model;
  const std::vector<torch::Tensor> parameters = model->parameters();
  ChunkPlan chunks;
  chunks.samples = context.task->train_size();
  if (request.max_samples > 0) chunks.samples = std::min(chunks.samples, request.max_samples);
  if (chunks.samples == 0) throw RunError("Fisher requested on a task without training samples");
  chunks.size = std::max<int64_t>(request.batch_size, 1);
  chunks.rank = context.collective->rank();
  chunks.ranks = context.collective->world_size();
  const ModelMap map = map_model(model, parameters);
  std::vector<FisherBlock> blocks = plan_fisher_blocks(parameters, block_size);
  const bool was_training = model->is_training();
  model->eval();
  try {
    for (size_t b = 0; b < blocks.size(); ++b) {
      while (true) {
        BlockGradients producer(context, request, method, context.model, parameters, map, blocks[b],
                                function, at::detail::createCPUGenerator(context.seed));
        try {
          walk_block(producer, b, blocks.size(), chunks);
          break;
        } catch (const BlockOutOfMemory& failure) {
          shrink_after_out_of_memory(context, request, failure, parameters, blocks, b, chunks);
        }
      }
    }
  } catch (...) {
    if (was_training) model->train();
    throw;
  }
  if (was_training) model->train();
}

// Sums this rank's chunks of one block into `sums`; returns whether it ran out of memory (then it
// stopped early, and the sums are incomplete).
bool add_my_chunks(const FisherContext& context, BlockGradients& producer,
                   DiagonalAccumulator& sums, const ChunkPlan& chunks, bool batched,
                   PassProgress& progress, size_t block_index, size_t block_count) {
  for (int64_t k = 0; k < chunks.count(); ++k) {
    if (!chunks.mine(k)) continue;
    try {
      const auto [x, y] = prepare_chunk(context, producer, chunks, k, block_index);
      sums.add_chunk(producer, x, y, batched);
    } catch (const std::exception& e) {
      if (!memory::is_out_of_memory(e)) throw;
      return true;
    }
    progress.update(block_index, block_count, chunks.end(k));
  }
  return false;
}

}  // namespace

namespace {

// The diagonal of either pass: the Fisher, or (with `function`) |g| or g^2 of an output function.
void accumulate_diagonal(const FisherContext& context, const clhost_fisher_request_t& request,
                         int64_t block_size, FisherMethod method, const OutputFunction* function,
                         const FisherSink& sink) {
  const bool batched = request.batched != 0;
  std::unique_ptr<PassProgress> progress;
  walk_blocks(context, request, block_size, method, function,
              [&](BlockGradients& producer, size_t b, size_t block_count, const ChunkPlan& chunks) {
                if (!progress) {
                  progress =
                      std::make_unique<PassProgress>(context.progress, block_count, chunks.samples);
                }
                std::optional<DiagonalAccumulator> sums;
                bool buffers_failed = false;
                bool chunk_failed = false;
                try {
                  sums.emplace(producer);
                } catch (const std::exception& e) {
                  if (!memory::is_out_of_memory(e)) throw;
                  buffers_failed = true;
                }
                if (sums) {
                  chunk_failed = add_my_chunks(context, producer, *sums, chunks, batched, *progress,
                                               b, block_count);
                }
                // Every rank learns whether any ran out of memory, and where, before the sums are
                // reduced.
                const std::vector<double> failed = context.collective->sum(
                    std::vector<double>{buffers_failed ? 1.0 : 0.0, chunk_failed ? 1.0 : 0.0});
                if (failed[0] > 0.0) throw BlockOutOfMemory{false};
                if (failed[1] > 0.0) throw BlockOutOfMemory{true};
                sums->reduce(*context.collective);
                sums->emit(producer, sink);
              });
}

}  // namespace

void diagonal_fisher(const FisherContext& context, const clhost_fisher_request_t& request,
                     int64_t block_size, FisherMethod method, const FisherSink& sink) {
  accumulate_diagonal(context, request, block_size, method, nullptr, sink);
}

void diagonal_output_gradients(const FisherContext& context, const clhost_fisher_request_t& request,
                               int64_t block_size, const OutputFunction& function,
                               const FisherSink& sink) {
  if (context.task->next_byte) {
    throw RunError("output gradients: text tasks have no class scores; only classification tasks");
  }
  clhost_fisher_request_t plain = request;
  plain.labels = CLHOST_FISHER_LABELS_TRUE;
  plain.batched = 0;
  accumulate_diagonal(context, plain, block_size, FisherMethod::kAuto, &function, sink);
}

void per_sample_gradients(const FisherContext& context, const clhost_fisher_request_t& request,
                          int64_t block_size, FisherMethod method, const SampleGradientSink& sink) {
  if (request.batched != 0) {
    throw RunError(
        "per-sample gradients: request->batched must be 0 (mini-batch gradients are "
        "not per-sample)");
  }
  std::unique_ptr<PassProgress> progress;
  walk_blocks(
      context, request, block_size, method, nullptr,
      [&](BlockGradients& producer, size_t b, size_t block_count, const ChunkPlan& chunks) {
        if (!progress) {
          progress = std::make_unique<PassProgress>(context.progress, block_count, chunks.samples);
        }
        RowWriter writer;
        // In rounds of one chunk per rank: each computes its chunk's rows, the rows are gathered,
        // and every rank hands every chunk to the sink in sample order, as one process would.
        for (int64_t first = 0; first < chunks.count(); first += chunks.ranks) {
          const int64_t k = first + chunks.rank;
          torch::Tensor rows;
          if (k < chunks.count()) {
            const auto [x, y] = prepare_chunk(context, producer, chunks, k, b);
            rows = writer.rows(producer, x, y).contiguous();
          } else {
            rows = torch::empty({0, producer.block_elements()},
                                producer.parameters().front().options().requires_grad(false));
          }
          const std::vector<torch::Tensor> gathered = context.collective->gather(rows);
          for (int r = 0; r < chunks.ranks && first + r < chunks.count(); ++r) {
            const bool last = first + r + 1 == chunks.count();
            sink(b, block_count, producer.block(), gathered[static_cast<size_t>(r)], chunks.samples,
                 last);
          }
          progress->update(b, block_count,
                           chunks.end(std::min(chunks.count(), first + chunks.ranks) - 1));
        }
      });
}

}  // namespace clhost
