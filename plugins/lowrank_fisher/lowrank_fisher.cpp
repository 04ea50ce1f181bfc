// lowrank_fisher — EWC with a low-rank plus diagonal Fisher per parameter block.
//
// For every block (fisher_computation.block_size, following layer boundaries) the Fisher of a task
// is approximated as F ~ D + U U^T from the per-sample gradients the host streams through
// clhost.sample_grads/1: U (rank r) holds the leading directions, D the rest of the exact diagonal.
// Penalty 0.5 * lambda * sum over blocks [sum D d^2 + |U^T d|^2], d = theta - theta*, its gradient
// lambda * (D d + U (U^T d)) added straight into the parameter gradients. Diagonal EWC ignores the
// correlations U keeps; compression_ratio sets how many of them (see lowrank.hpp for the maths).
#include <clhost/plugin_torch.hpp>

#include <ATen/ATen.h>
#include <malloc.h>

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "lowrank.hpp"

namespace {

namespace lowrank = clhost::lowrank;

const clhost_config_key_t kSchema[] = {
    {"lambda", CLHOST_CONFIG_TYPE_FLOAT, "100.0",
     "penalty strength (penalty 0.5*lambda*sum_blocks [sum D d^2 + |U^T d|^2], d = theta-theta*)",
     1, 0.0, 1e15, nullptr},
    {"compression_ratio", CLHOST_CONFIG_TYPE_FLOAT, "0.0",
     "rank kept per block as a fraction of the exact factor's rows (fisher_samples, times the "
     "task's classes for labels = expectation); 1 keeps the exact Fisher of those samples. "
     "0: fisher_computation.compression_ratio",
     1, 0.0, 1.0, nullptr},
    {"max_rank", CLHOST_CONFIG_TYPE_INT, "0", "upper bound on the rank per block (0: none)", 1, 0,
     1e9, nullptr},
    {"max_bytes_per_parameter", CLHOST_CONFIG_TYPE_FLOAT, "16.0",
     "upper bound on the resident state per parameter, which caps the rank: U, D and the anchor in "
     "fp32 take 4*(rank+2) bytes (per task in separate mode), so 16 allows rank 2 and 136 rank 32; "
     "at least 12, or 0 for no cap",
     1, 0.0, 1e9, nullptr},
    {"mode", CLHOST_CONFIG_TYPE_STRING, "\"online\"",
     "online: one factor, gamma*old + new re-compressed to rank r, anchor = latest parameters; "
     "separate: one factor and anchor per task",
     0, 0, 0, "separate|online"},
    {"gamma", CLHOST_CONFIG_TYPE_FLOAT, "1.0", "online decay of the old Fisher (online mode only)",
     1, 0.0, 1.0, nullptr},
    {"labels", CLHOST_CONFIG_TYPE_STRING, "\"expectation\"",
     "Fisher labels: true (empirical), sample (drawn from the model), expectation (over the "
     "softmax: one gradient row per class and sample)",
     0, 0, 0, "true|sample|expectation"},
    {"fisher_samples", CLHOST_CONFIG_TYPE_INT, "500",
     "training samples per task the Fisher averages over (the first N of the task)", 1, 1, 1e12,
     nullptr},
    {"fisher_batch_size", CLHOST_CONFIG_TYPE_INT, "8",
     "samples per chunk of gradient rows (memory: chunk rows x block elements x 4 bytes; chunks "
     "under glibc's 32 MiB mmap threshold reuse heap memory: 8 measured 27% faster than 32)",
     1, 1, 1e9, nullptr},
    {"store", CLHOST_CONFIG_TYPE_BOOL, "true",
     "save each task's D and U columns to the run's HDF5 Fisher store (fisher.h5)", 0, 0, 0,
     nullptr},
};

const clhost_plugin_descriptor_t kDescriptor{
    sizeof(clhost_plugin_descriptor_t),
    "lowrank_fisher",
    CLHOST_PLUGIN_KIND_REGULARIZER,
    "1.0.0",
    "EWC with a low-rank plus diagonal Fisher per block (compression_ratio sets the rank)",
    "clhost",
    kSchema,
    static_cast<uint32_t>(sizeof(kSchema) / sizeof(kSchema[0]))};

struct Block {
  std::vector<clhost_block_segment_t> segments;
  int64_t elements = 0;
};

// What one quadratic holds per block: the factor and the anchor theta*.
struct Quadratic {
  std::vector<lowrank::Factor> factors;
  std::vector<torch::Tensor> anchors;
  [[nodiscard]] int64_t bytes() const {
    int64_t total = 0;
    for (const auto& factor : factors) total += factor.bytes();
    for (const auto& anchor : anchors) total += anchor.numel() * 4;
    return total;
  }
};

class LowRankFisher : public clhost::sdk::Regularizer {
 public:
  // clhost.config_use/1: gamma decays the online factor only.
  static void unused_keys(const clhost::sdk::Config& config, const clhost::sdk::Settings& /*host*/,
                          clhost::sdk::UnusedKeys& unused) {
    if (config.get_string("mode") != "online") unused("gamma", "applies to mode = \"online\" only");
  }

  // clhost.memory_plan/1, an upper bound: the rank as choose_rank would pick it for the most
  // rows a task can give (fisher_samples, times data.num_classes for labels = expectation), U,
  // D and the anchor in fp32 per quadratic (one online, one per task separate). While a task is
  // folded in: its new factors for the whole model and the merged result beside the old state,
  // plus one block's builder (float64 diagonal, the sketch and Omega, their float64 copies).
  static clhost::sdk::MemoryPlan plan_memory(const clhost::sdk::Config& config,
                                             const clhost::sdk::Settings& host,
                                             const clhost::sdk::MemoryPlanRequest& request) {
    double ratio = config.get_float("compression_ratio");
    if (ratio <= 0.0) ratio = host.get_float("fisher_computation.compression_ratio", 0.0);
    if (ratio <= 0.0 || ratio > 1.0) ratio = 1.0;
    const bool expectation = config.get_string("labels") == "expectation";
    const int64_t rows =
        config.get_int("fisher_samples") *
        (expectation
             ? std::max<int64_t>(1, static_cast<int64_t>(host.get_float("data.num_classes", 1.0)))
             : 1);
    int64_t rank = lowrank::rank_for(ratio, rows, config.get_int("max_rank"));
    const double byte_cap = config.get_float("max_bytes_per_parameter");
    if (byte_cap != 0.0) {
      rank = std::min(rank, static_cast<int64_t>(std::floor(byte_cap / 4.0)) - 2);
    }
    int64_t parameters = 0;
    for (const int64_t numel : request.parameter_numels) parameters += numel;
    const int64_t quadratic = 4 * (rank + 2) * parameters;
    const bool separate = config.get_string("mode") == "separate";
    clhost::sdk::MemoryPlan plan;
    plan.fisher_samples_per_pass = clhost::sdk::samples_per_pass(
        config.get_int("fisher_batch_size"), config.get_int("fisher_samples"));
    plan.state_bytes = request.tasks < 1 ? 0 : quadratic * (separate ? request.tasks : 1);
    const int64_t block = std::min(parameters, request.fisher_block_size);
    const int64_t columns = std::min({rows, block, std::max<int64_t>(2 * rank, rank + 4)});
    const int64_t builder =
        block * (8 + 24 * columns + 4 * std::clamp<int64_t>(2 * columns, 32, 256));
    plan.consolidation_bytes = 4 * (rank + 1) * parameters + (separate ? 0 : quadratic) + builder;
    plan.advice =
        "max_bytes_per_parameter caps the rank: U, D and the anchor take 4*(rank+2) bytes "
        "per parameter (16: rank 2)";
    return plan;
  }

  LowRankFisher(const clhost_host_t* host, const clhost::sdk::Config& config)
      : Regularizer(host),
        lambda_(config.get_float("lambda")),
        ratio_(config.get_float("compression_ratio")),
        max_rank_(config.get_int("max_rank")),
        max_bytes_per_parameter_(config.get_float("max_bytes_per_parameter")),
        ratio_given_(config.get_float("compression_ratio") > 0.0),
        online_(config.get_string("mode") == "online"),
        gamma_(config.get_float("gamma")),
        labels_(config.get_string("labels")),
        fisher_samples_(config.get_int("fisher_samples")),
        batch_size_(config.get_int("fisher_batch_size")),
        store_(config.get_bool("store")) {
    if (ratio_ <= 0.0) {
      ratio_ = this->host().settings().get_float("fisher_computation.compression_ratio", ratio_);
      if (ratio_ <= 0.0 || ratio_ > 1.0) {
        throw clhost::sdk::Error(
            "lowrank_fisher: compression_ratio must be in (0, 1] (set it in the plug-in's "
            "[[pipeline]] entry or fisher_computation.compression_ratio)",
            CLHOST_STATUS_INVALID_ARGUMENT);
      }
    }
    if (max_bytes_per_parameter_ != 0.0 && byte_rank_cap() < 1) {
      throw clhost::sdk::Error(
          "lowrank_fisher: max_bytes_per_parameter = " + format(max_bytes_per_parameter_, 2) +
              " leaves no room for rank 1 (U, D and the anchor take 4*(rank+2) bytes per "
              "parameter: at least 12; 0 lifts the cap)",
          CLHOST_STATUS_INVALID_ARGUMENT);
    }
    clhost::sdk::check_fisher_labels(this->host().settings(), labels_);
    (void)this->host().sample_grads();  // fail at create, not after the first task, if missing
  }

  double after_backward(const clhost_step_info_t& /*step*/) override {
    if (quadratics_.empty()) return 0.0;
    const auto values = parameter_views(true);
    double sum = 0.0;
    for (size_t b = 0; b < blocks_.size(); ++b) {
      const torch::Tensor theta = gather(values.first, blocks_[b]);
      torch::Tensor gradient_sum;
      for (const auto& quadratic : quadratics_) {
        torch::Tensor gradient;
        sum += lowrank::quadratic(quadratic.factors[b], theta - quadratic.anchors[b], &gradient);
        gradient_sum = gradient_sum.defined() ? gradient_sum.add_(gradient) : gradient;
      }
      scatter_add(values.second, blocks_[b], gradient_sum.mul_(lambda_));
    }
    return 0.5 * lambda_ * sum;
  }

  void on_task_end(const clhost_task_info_t& task) override {
    const auto start = std::chrono::steady_clock::now();
    const int64_t heap_before = heap_bytes();
    collect_factors(task.task_index);
    const double fisher_seconds = seconds_since(start);
    const auto values = parameter_views(false);
    if (store_) {
      host().log(CLHOST_LOG_INFO, "task " + std::to_string(task.task_index + 1) + "/" +
                                      std::to_string(task.task_count) + ": factors ready in " +
                                      format(fisher_seconds, 1) + " s; saving them to the store");
      save(task.task_index, pass_factors_);
    }
    fold_in(values.first);
    // Measured after the task's own factors are gone (merged or moved): only what stays resident.
    ::malloc_trim(0);
    const int64_t heap_after = heap_bytes();
    if (heap_before < 0 || heap_after < 0) {
      measured_bytes_ = -1;  // not glibc's malloc: nothing to measure with
    } else if (measured_bytes_ >= 0) {
      measured_bytes_ += heap_after - heap_before;
    }
    ++tasks_;
    consolidate_seconds_.push_back(seconds_since(start));
    fisher_seconds_.push_back(fisher_seconds);
    host().log(CLHOST_LOG_INFO,
               "task " + std::to_string(task.task_index + 1) + "/" +
                   std::to_string(task.task_count) + ": rank " + std::to_string(rank_) + " of " +
                   std::to_string(rows_) + " gradient rows per block, " +
                   std::to_string(blocks_.size()) + " block(s), state " +
                   std::to_string(state_bytes()) + " bytes (" + format(bytes_per_parameter(), 2) +
                   " bytes/parameter), " + format(consolidate_seconds_.back(), 2) + " s");
  }

  // The pass: the host streams each block's per-sample gradient rows into a factor builder.
  void collect_factors(uint32_t task_index) {
    pass_blocks_.clear();
    pass_factors_.clear();
    builder_.reset();
    clhost_fisher_request_t request{};
    request.struct_size = sizeof(request);
    request.labels = clhost::sdk::fisher_labels(labels_);
    request.max_samples = fisher_samples_;
    request.batched = 0;
    request.batch_size = batch_size_;
    request.block_size = 0;  // fisher_computation.block_size
    seed_ = 0x10e4a2cULL + task_index;
    clhost_error_t error{};
    const clhost_status_t status =
        host().sample_grads().sample_gradients(host().raw(), &request, &sink, this, &error);
    builder_.reset();
    if (status != CLHOST_STATUS_OK) {
      throw clhost::sdk::Error("low-rank Fisher pass failed: " + std::string(error.message),
                               status);
    }
    if (blocks_.empty()) blocks_ = pass_blocks_;
    if (pass_blocks_.size() != blocks_.size()) {
      throw clhost::sdk::Error("lowrank_fisher: the block plan changed between tasks",
                               CLHOST_STATUS_INTERNAL);
    }
  }

  // The new task's factors and anchors join the state: merged into the online quadratic, or one
  // more quadratic in separate mode.
  void fold_in(const std::vector<torch::Tensor>& values) {
    Quadratic fresh;
    fresh.factors = std::move(pass_factors_);
    pass_factors_.clear();
    for (const auto& block : blocks_) fresh.anchors.push_back(gather(values, block).clone());
    if (online_ && !quadratics_.empty()) {
      Quadratic& merged = quadratics_.front();
      for (size_t b = 0; b < blocks_.size(); ++b) {
        merged.factors[b] = lowrank::merge(merged.factors[b], fresh.factors[b], gamma_, rank_);
      }
      merged.anchors = std::move(fresh.anchors);
    } else {
      quadratics_.push_back(std::move(fresh));
    }
  }

  // Checkpoints: the block plan, the factors and anchors, and what the report counts.
  void save_state(clhost::sdk::StateWriter& out) const {
    out.value(online_ ? 1 : 0);
    out.value(rank_);
    out.value(rows_);
    out.value(tasks_);
    out.value(measured_bytes_);
    out.vector(fisher_seconds_);
    out.vector(consolidate_seconds_);
    out.vector(parameter_numel_);
    out.value(static_cast<uint64_t>(blocks_.size()));
    for (const auto& block : blocks_) {
      out.vector(block.segments);
      out.value(block.elements);
    }
    out.value(static_cast<uint64_t>(quadratics_.size()));
    for (const auto& quadratic : quadratics_) {
      for (const auto& factor : quadratic.factors) {
        clhost::sdk::write_tensor(out, factor.ut);
        clhost::sdk::write_tensor(out, factor.diag);
      }
      for (const auto& anchor : quadratic.anchors) clhost::sdk::write_tensor(out, anchor);
    }
  }

  void restore_state(clhost::sdk::StateReader& in) {
    if (in.value<int>() != (online_ ? 1 : 0)) {
      throw clhost::sdk::Error(
          "the checkpoint's low-rank state has another mode than this config's",
          CLHOST_STATUS_INVALID_ARGUMENT);
    }
    rank_ = in.value<int64_t>();
    rows_ = in.value<int64_t>();
    tasks_ = in.value<int64_t>();
    measured_bytes_ = in.value<int64_t>();
    fisher_seconds_ = in.vector<double>();
    consolidate_seconds_ = in.vector<double>();
    parameter_numel_ = in.vector<int64_t>();
    blocks_.resize(static_cast<size_t>(in.count(16)));  // a segment count and an element count
    for (auto& block : blocks_) {
      block.segments = in.vector<clhost_block_segment_t>();
      block.elements = in.value<int64_t>();
    }
    check_restored_blocks();
    // Each quadratic holds three tensors per block (at least a byte each).
    quadratics_.resize(static_cast<size_t>(in.count(3 * std::max<size_t>(blocks_.size(), 1))));
    for (auto& quadratic : quadratics_) {
      quadratic.factors.resize(blocks_.size());
      for (auto& factor : quadratic.factors) {
        factor.ut = clhost::sdk::read_tensor(in);
        factor.diag = clhost::sdk::read_tensor(in);
      }
      quadratic.anchors.resize(blocks_.size());
      for (auto& anchor : quadratic.anchors) anchor = clhost::sdk::read_tensor(in);
    }
    check_restored_factors();
  }

  // Each block's U^T must be [rank, elements] (or absent: rank 0), D and the anchor [elements],
  // all float32: the penalty multiplies them with the block's parameters from the first step on.
  void check_restored_factors() const {
    const auto refuse = [](size_t quadratic, size_t block, const std::string& what) {
      throw clhost::sdk::Error("the checkpoint's low-rank state: quadratic " +
                                   std::to_string(quadratic + 1) + ", block " +
                                   std::to_string(block + 1) + ": " + what,
                               CLHOST_STATUS_INVALID_ARGUMENT);
    };
    const auto is_vector = [](const torch::Tensor& tensor, int64_t elements) {
      return tensor.defined() && tensor.scalar_type() == torch::kFloat && tensor.dim() == 1 &&
             tensor.size(0) == elements;
    };
    for (size_t q = 0; q < quadratics_.size(); ++q) {
      for (size_t b = 0; b < blocks_.size(); ++b) {
        const int64_t elements = blocks_[b].elements;
        const lowrank::Factor& factor = quadratics_[q].factors[b];
        if (factor.ut.defined() && (factor.ut.scalar_type() != torch::kFloat ||
                                    factor.ut.dim() != 2 || factor.ut.size(1) != elements)) {
          refuse(q, b, "U^T is not a float32 [rank, " + std::to_string(elements) + "] matrix");
        }
        if (!is_vector(factor.diag, elements)) {
          refuse(q, b, "D is not a float32 vector of " + std::to_string(elements) + " elements");
        }
        if (!is_vector(quadratics_[q].anchors[b], elements)) {
          refuse(q, b,
                 "the anchor is not a float32 vector of " + std::to_string(elements) + " elements");
        }
      }
    }
  }

  // The restored block plan must address this model's parameters: segments inside them, each
  // block's element count their sum (the store offsets and the penalty's slices follow it).
  void check_restored_blocks() const {
    const auto refuse = [](const std::string& what) {
      throw clhost::sdk::Error("the checkpoint's low-rank state " + what,
                               CLHOST_STATUS_INVALID_ARGUMENT);
    };
    const uint32_t count = host().parameter_count();
    if (!parameter_numel_.empty() && parameter_numel_.size() != count) {
      refuse("is of a model with " + std::to_string(parameter_numel_.size()) + " parameters");
    }
    for (uint32_t i = 0; i < parameter_numel_.size(); ++i) {
      if (parameter_numel_[i] != host().parameter(i).numel) refuse("is of another model");
    }
    for (const auto& block : blocks_) {
      int64_t elements = 0;
      for (const auto& segment : block.segments) {
        if (segment.param_index >= count || segment.offset < 0 || segment.count < 0 ||
            segment.count > host().parameter(segment.param_index).numel - segment.offset) {
          refuse("has a block outside this model's parameters");
        }
        elements += segment.count;
      }
      if (elements != block.elements) refuse("has a block whose size is not its segments'");
    }
  }

  [[nodiscard]] std::string describe() const override {
    std::ostringstream out;
    out << "low-rank + diagonal Fisher per block (F ~ D + U U^T, diag exact), compression_ratio="
        << ratio_ << " of the exact factor's rows, penalty 0.5*lambda*[sum D d^2 + |U^T d|^2], "
        << "lambda=" << lambda_ << ", " << (online_ ? "online" : "separate") << " mode"
        << (online_ ? ", gamma=" + format(gamma_, 3) : std::string()) << ", labels=" << labels_
        << ", " << fisher_samples_ << " samples per task";
    return out.str();
  }

  [[nodiscard]] std::string report_json() const override {
    nlohmann::json blocks = nlohmann::json::array();
    for (size_t b = 0; b < blocks_.size(); ++b) {
      int64_t bytes = 0;
      int64_t rank = 0;
      for (const auto& quadratic : quadratics_) {
        bytes += quadratic.factors[b].bytes() + quadratic.anchors[b].numel() * 4;
        rank = quadratic.factors[b].rank();
      }
      blocks.push_back({{"elements", blocks_[b].elements}, {"rank", rank}, {"bytes", bytes}});
    }
    return nlohmann::json{
        {"compression_ratio", ratio_},
        {"rank", rank_},
        {"rank_limited_by", rank_limited_by_},
        {"gradient_rows", rows_},
        {"mode", online_ ? "online" : "separate"},
        {"tasks_consolidated", tasks_},
        {"parameters", parameter_total()},
        {"state_bytes", state_bytes()},
        {"state_bytes_measured",
         measured_bytes_ >= 0 ? nlohmann::json(measured_bytes_) : nlohmann::json(nullptr)},
        {"state_bytes_per_parameter", bytes_per_parameter()},
        {"blocks", blocks},
        {"fisher_seconds", fisher_seconds_},
        {"consolidate_seconds", consolidate_seconds_}}
        .dump();
  }

 private:
  // The largest rank whose state fits max_bytes_per_parameter (0 when it is 0: no cap).
  [[nodiscard]] int64_t byte_rank_cap() const {
    if (max_bytes_per_parameter_ == 0.0) return 0;
    return static_cast<int64_t>(std::floor(max_bytes_per_parameter_ / 4.0)) - 2;
  }

  // The rank: compression_ratio of the rows, then max_rank and the byte budget, whichever is
  // smallest; what limited it is logged and reported.
  void choose_rank() {
    const int64_t from_ratio = lowrank::rank_for(ratio_, rows_, 0);
    const int64_t from_bytes = byte_rank_cap();
    rank_ = lowrank::rank_for(ratio_, rows_, max_rank_);
    rank_limited_by_ = rank_ < from_ratio ? "max_rank" : "compression_ratio";
    if (from_bytes > 0 && from_bytes < rank_) {
      rank_ = from_bytes;
      rank_limited_by_ = "max_bytes_per_parameter";
    }
    if (rank_ == from_ratio || rank_explained_) return;
    rank_explained_ = true;
    const std::string message =
        "compression_ratio " + format(ratio_, 4) + " of " + std::to_string(rows_) +
        " gradient rows asks for rank " + std::to_string(from_ratio) + "; " + rank_limited_by_ +
        " caps it at " + std::to_string(rank_) +
        (rank_limited_by_ == "max_bytes_per_parameter"
             ? " (" + format(max_bytes_per_parameter_, 1) + " bytes/parameter; 0 lifts the cap)"
             : std::string());
    host().log(ratio_given_ ? CLHOST_LOG_WARNING : CLHOST_LOG_INFO, message);
  }

  static clhost_status_t sink(void* data, const clhost_sample_grads_chunk_t* chunk,
                              clhost_error_t* error) {
    return clhost::sdk::guarded_call(error,
                                     [&] { static_cast<LowRankFisher*>(data)->consume(*chunk); });
  }

  void consume(const clhost_sample_grads_chunk_t& chunk) {
    const torch::Tensor rows = clhost::sdk::tensor_view(chunk.rows);
    if (!builder_) {
      Block block;
      block.segments.assign(chunk.segments, chunk.segments + chunk.segment_count);
      for (const auto& segment : block.segments) block.elements += segment.count;
      if (rows.dim() != 2 || rows.size(1) != block.elements) {
        throw clhost::sdk::Error("lowrank_fisher: gradient rows do not match their block",
                                 CLHOST_STATUS_INTERNAL);
      }
      // Rows per sample from the first chunk (1, or the task's classes for expectation).
      const int64_t chunk_samples = std::min<int64_t>(batch_size_, chunk.samples);
      rows_ = rows.size(0) / std::max<int64_t>(chunk_samples, 1) * chunk.samples;
      choose_rank();
      builder_ = std::make_unique<lowrank::FactorBuilder>(block.elements, rank_, rows_,
                                                          seed_ + chunk.block_index);
      pass_blocks_.push_back(std::move(block));
    }
    builder_->add(rows);
    if (chunk.last_in_block != 0) {
      pass_factors_.push_back(builder_->finish(chunk.samples));
      builder_.reset();
    }
  }

  // The task's D and U columns in the Fisher store: group <prefix>_d, then <prefix>_u<k>.
  void save(uint32_t task_index, const std::vector<lowrank::Factor>& factors) {
    const auto* store = host().fisher_store();
    if (store == nullptr) return;
    const std::string prefix = "lowrank_task_" + std::to_string(task_index);
    std::ostringstream layout;
    layout << "low-rank Fisher of task " << task_index << ": F ~ D + U U^T per block, "
           << blocks_.size() << " block(s):";
    for (size_t b = 0; b < blocks_.size(); ++b) {
      layout << " [block " << b << ": " << blocks_[b].elements << " elements, rank "
             << factors[b].rank() << ", " << factors[b].bytes() << " bytes]";
    }
    if (!CLHOST_HAS_MEMBER(store, clhost_fisher_store_v1_t, begin_vector_group)) {
      throw clhost::sdk::Error(
          "lowrank_fisher: the host's Fisher store cannot save groups of "
          "vectors (ABI 1.2); set store = false",
          CLHOST_STATUS_UNSUPPORTED);
    }
    // One group of `vectors` vectors; vector k of block b is values_of(b, k) (its elements).
    auto write_group = [&](const std::string& group, const std::string& description,
                           int64_t vectors,
                           const std::function<torch::Tensor(size_t, int64_t)>& values_of) {
      clhost_error_t error{};
      clhost::sdk::Host::check(store->begin_vector_group(host().raw(), group.c_str(),
                                                         description.c_str(), vectors, &error),
                               error);
      try {
        for (int64_t k = 0; k < vectors; ++k) {
          for (size_t b = 0; b < blocks_.size(); ++b) {
            const torch::Tensor values = values_of(b, k).contiguous();
            int64_t column = 0;
            for (const auto& segment : blocks_[b].segments) {
              torch::Tensor part = values.slice(0, column, column + segment.count).contiguous();
              column += segment.count;
              std::vector<int64_t> shape{segment.count};
              DLTensor view{};
              view.data = part.data_ptr();
              view.device = {kDLCPU, 0};
              view.ndim = 1;
              view.dtype = {kDLFloat, 32, 1};
              view.shape = shape.data();
              const int64_t numel = parameter_numel_.at(segment.param_index);
              clhost::sdk::Host::check(
                  store->write_block(host().raw(), segment.param_index, k * numel + segment.offset,
                                     &view, &error),
                  error);
            }
          }
        }
        clhost::sdk::Host::check(store->commit_group(host().raw(), &error), error);
      } catch (...) {
        store->abort_group(host().raw());
        throw;
      }
    };
    int64_t max_rank = 0;
    for (const auto& factor : factors) max_rank = std::max(max_rank, factor.rank());
    write_group(prefix + "_u",
                "U of the low-rank Fisher of task " + std::to_string(task_index) + ": " +
                    std::to_string(max_rank) +
                    " vectors, vector k = column k, laid out like the "
                    "parameters",
                max_rank, [&](size_t b, int64_t k) {
                  return k < factors[b].rank() ? factors[b].ut[k]
                                               : torch::zeros({blocks_[b].elements});
                });
    // D last: its group's presence says the task's factor is complete.
    write_group(prefix + "_d", layout.str(), 1,
                [&](size_t b, int64_t /*k*/) { return factors[b].diag; });
  }

  // Flat views of every parameter's value and gradient (undefined when it has none yet).
  std::pair<std::vector<torch::Tensor>, std::vector<torch::Tensor>> parameter_views(
      bool need_grad) const {
    std::vector<torch::Tensor> values;
    std::vector<torch::Tensor> grads;
    const uint32_t count = host().parameter_count();
    for (uint32_t i = 0; i < count; ++i) {
      const clhost_parameter_t parameter = host().parameter(i);
      if (parameter.value.dtype.code != kDLFloat || parameter.value.dtype.bits != 32) {
        throw clhost::sdk::Error(
            std::string("lowrank_fisher: parameter ") + parameter.name + " is not float32",
            CLHOST_STATUS_UNSUPPORTED);
      }
      values.push_back(clhost::sdk::tensor_view(parameter.value).view({-1}));
      if (parameter_numel_.size() < count) parameter_numel_.push_back(parameter.numel);
      grads.push_back(need_grad && parameter.grad.data != nullptr
                          ? clhost::sdk::tensor_view(parameter.grad).view({-1})
                          : torch::Tensor());
    }
    return {values, grads};
  }

  static torch::Tensor gather(const std::vector<torch::Tensor>& flat, const Block& block) {
    std::vector<torch::Tensor> parts;
    for (const auto& segment : block.segments) {
      parts.push_back(
          flat.at(segment.param_index).slice(0, segment.offset, segment.offset + segment.count));
    }
    return torch::cat(parts);
  }

  static void scatter_add(const std::vector<torch::Tensor>& flat, const Block& block,
                          const torch::Tensor& values) {
    int64_t column = 0;
    for (const auto& segment : block.segments) {
      const torch::Tensor& target = flat.at(segment.param_index);
      if (target.defined()) {
        target.slice(0, segment.offset, segment.offset + segment.count)
            .add_(values.slice(0, column, column + segment.count));
      }
      column += segment.count;
    }
  }

  [[nodiscard]] int64_t parameter_total() const {
    int64_t total = 0;
    for (const auto& block : blocks_) total += block.elements;
    return total;
  }
  [[nodiscard]] int64_t state_bytes() const {
    int64_t total = 0;
    for (const auto& quadratic : quadratics_) total += quadratic.bytes();
    return total;
  }
  [[nodiscard]] double bytes_per_parameter() const {
    const int64_t parameters = parameter_total();
    return parameters > 0 ? static_cast<double>(state_bytes()) / static_cast<double>(parameters)
                          : 0.0;
  }
  // glibc's counters of bytes in use, or -1 under another malloc (a sanitizer build's reports
  // all zeros: in a running process glibc never has an empty arena).
  static int64_t heap_bytes() {
    const struct mallinfo2 info = mallinfo2();
    if (info.arena == 0 && info.hblkhd == 0) return -1;
    return static_cast<int64_t>(info.uordblks + info.hblkhd);
  }
  static double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  static std::string format(double value, int digits) {
    std::ostringstream out;
    out.setf(std::ios::fixed);
    out.precision(digits);
    out << value;
    return out.str();
  }

  double lambda_;
  double ratio_;
  int64_t max_rank_;
  double max_bytes_per_parameter_;
  bool ratio_given_;  // compression_ratio set in the plug-in's own entry
  std::string rank_limited_by_;
  bool rank_explained_ = false;
  bool online_;
  double gamma_;
  std::string labels_;
  int64_t fisher_samples_;
  int64_t batch_size_;
  bool store_;
  uint64_t seed_ = 0;
  int64_t rank_ = 0;
  int64_t rows_ = 0;
  int64_t tasks_ = 0;
  int64_t measured_bytes_ = 0;
  std::vector<Block> blocks_;
  mutable std::vector<int64_t> parameter_numel_;  // elements per parameter, for store offsets
  std::vector<Quadratic> quadratics_;             // online: one merged; separate: one per task
  std::vector<Block> pass_blocks_;
  std::vector<lowrank::Factor> pass_factors_;
  std::unique_ptr<lowrank::FactorBuilder> builder_;
  std::vector<double> fisher_seconds_;
  std::vector<double> consolidate_seconds_;
};

}  // namespace

CLHOST_DEFINE_PLUGIN(LowRankFisher, kDescriptor, CLHOST_TORCH_FINGERPRINT)
