#include "trainer.hpp"

#include <malloc.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <sstream>

#include "clhost/errors.hpp"
#include "clhost/memory_budget.hpp"
#include "distributed.hpp"
#include "event_bus.hpp"
#include "event_journal.hpp"
#include "host_services.hpp"
#include "io.hpp"
#include "metrics_log.hpp"
#include "plugin_set.hpp"
#include "run_state.hpp"
#include "stop_signals.hpp"

namespace clhost {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A stop request as two counts the ranks can add up: (SIGINT, SIGTERM).
std::vector<double> stop_request_flags(int signal_number) {
  return {signal_number == SIGINT ? 1.0 : 0.0, signal_number == SIGTERM ? 1.0 : 0.0};
}

// The signal the ranks stop for, from their summed flags (SIGINT wins).
int stop_signal_of(double sigint_count, double sigterm_count) {
  return sigint_count > 0.0 ? SIGINT : sigterm_count > 0.0 ? SIGTERM : 0;
}

}  // namespace

Trainer::Trainer(const TrainerParts& parts, TrainerState& state, const ResumePoint& resume)
    : parts_(parts),
      config_(parts.config),
      state_(state),
      resume_(resume),
      batcher_(parts.plugins.batch_policy(), state, parts.events, parts.log,
               parts.runtime.budget_bytes, *parts.runtime.collective),
      output_terms_(parts.plugins, parts.runtime.model),
      replay_(parts.plugins.replay()),
      progress_(stderr, !parts.options.quiet) {
  if (resume_.checkpoint != nullptr) {
    first_task_ = resume_.saved->at("task").get<size_t>();
    first_step_ = resume_.saved->at("step").get<int64_t>();
  }
}

void Trainer::run() {
  start_run();
  parts_.runtime.model->train();
  for (size_t t = first_task_; t < parts_.sequence.tasks.size(); ++t) {
    const TaskPlan plan = plan_task(t);
    TaskTotals totals;
    totals.peak_reset = begin_task(plan);
    totals.train_seconds = train_task(plan);
    totals.consolidate_seconds = consolidate(plan);
    end_task(plan, totals);
  }
  parts_.events.emit(CLHOST_EVENT_RUN_END, -1, "run end");
  parts_.log.commit();
}

// --- the run's beginning -----------------------------------------------------------------------

void Trainer::start_run() {
  const bool resumed = resume_.checkpoint != nullptr;
  // The data's cost, on the timeline of every profiler: it was paid before the run began.
  const std::string data_note =
      " (data: " + memory::format_bytes(resident_data_bytes(parts_.sequence)) +
      " resident, set up in " + format_double(parts_.sequence.setup_seconds, 2) + " s)";
  parts_.events.emit(CLHOST_EVENT_RUN_BEGIN, -1,
                     (resumed ? "run resumed" : "run begin") + data_note);
  journal_run_begin(resumed);
  if (resumed) {
    if (!parts_.options.quiet) {
      std::fprintf(stderr, "resuming %s from task %zu step %lld (checkpoint %s)\n",
                   parts_.run_dir.c_str(), first_task_ + 1, static_cast<long long>(first_step_),
                   resume_.checkpoint->directory.c_str());
    }
    return;
  }
  // Accuracy of the untrained model: the baseline for forward transfer.
  const Evaluation untrained = evaluate(-1, "evaluate the untrained model");
  state_.random_init_accuracy = untrained.test;
  state_.random_init_validation = untrained.validation;
  journal_evaluation(-1, untrained);
  write_checkpoint(TaskPosition{}, nullptr, -1);  // every later crash can go back to it
  if (parts_.options.resume && !parts_.options.quiet) {
    std::fprintf(stderr,
                 "%s: no checkpoint was complete (it stopped before its first step); "
                 "started again from the beginning\n",
                 parts_.run_dir.c_str());
  }
}

// --- one task ----------------------------------------------------------------------------------

void Trainer::journal_run_begin(bool resumed) const {
  json tasks = json::array();
  for (size_t t = 0; t < parts_.sequence.tasks.size(); ++t) {
    const TaskShape shape = task_shape(t);
    tasks.push_back(json{{"name", parts_.sequence.tasks[t].name},
                         {"steps", shape.steps},
                         {"batch_size", shape.batch_size}});
  }
  json plugins = json::array();
  for (const PluginSpec& spec : config_.pipeline) plugins.push_back(spec.id);
  const bool bits = parts_.sequence.next_byte;
  parts_.journal.append(json{{"event", "run_begin"},
                             {"schema", kEventJournalSchema},
                             {"pid", ::getpid()},
                             {"pid_start", process_start_ticks(::getpid())},
                             {"resumed", resumed},
                             {"task", first_task_},
                             {"step", first_step_},
                             {"global_step", state_.global_step},
                             {"tasks", tasks},
                             {"metric", bits ? "bits_per_byte" : "accuracy"},
                             {"better", bits ? "lower" : "higher"},
                             {"plugins", plugins},
                             {"world_size", parts_.runtime.collective->world_size()}});
}

Trainer::TaskShape Trainer::task_shape(size_t index) const {
  TaskShape shape;
  shape.batch_size = index < config_.tasks.size() && config_.tasks[index].batch_size
                         ? *config_.tasks[index].batch_size
                         : config_.train.batch_size;
  const int64_t samples = parts_.sequence.tasks[index].train_size();
  shape.steps = config_.train.epochs > 0
                    ? config_.train.epochs * ((samples + shape.batch_size - 1) / shape.batch_size)
                    : config_.train.iterations;
  return shape;
}

Trainer::TaskPlan Trainer::plan_task(size_t index) {
  TaskPlan plan;
  plan.index = index;
  plan.task = &parts_.sequence.tasks[index];
  plan.train_samples = plan.task->train_size();
  if (plan.train_samples == 0)
    throw RunError("task " + plan.task->name + " has no training samples");
  const TaskShape shape = task_shape(index);
  plan.batch_size = shape.batch_size;
  plan.steps = shape.steps;
  plan.first_step = resume_.checkpoint != nullptr && index == first_task_ ? first_step_ : 0;
  plan.forward.model = &parts_.runtime.model;
  plan.forward.view = training_view(config_, parts_.sequence, index);
  // Replayed samples of earlier tasks keep their own head in task-incremental learning.
  if (parts_.plugins.replay() != nullptr && config_.data.incremental == Incremental::kTask &&
      !parts_.sequence.next_byte) {
    for (size_t j = 0; j <= index; ++j) {
      plan.forward.task_views.push_back(training_view(config_, parts_.sequence, j));
    }
  }
  plan.forward.checkpoint_segments = config_.train.checkpoint_segments;
  plan.forward.terms = output_terms_.empty() ? nullptr : &output_terms_;
  plan.info = clhost_task_info_t{sizeof(clhost_task_info_t),
                                 static_cast<uint32_t>(index),
                                 static_cast<uint32_t>(parts_.sequence.tasks.size()),
                                 plan.task->name.c_str(),
                                 plan.train_samples,
                                 plan.steps};
  return plan;
}

bool Trainer::begin_task(const TaskPlan& plan) {
  const bool resumed_in_task = plan.first_step > 0;
  parts_.log.begin_task(state_.global_step - plan.first_step);
  FisherContext& fisher = parts_.runtime.fisher_context;
  fisher.task = plan.task;
  fisher.active_classes = plan.forward.view.active;
  fisher.label_map = plan.forward.view.label_map;
  torch::Tensor active_columns = torch::zeros({parts_.sequence.num_classes}, torch::kUInt8);
  active_columns.index_fill_(0, plan.forward.view.active, 1);
  output_terms_.begin_task(static_cast<uint32_t>(plan.index), active_columns);
  const bool peak_reset = reset_peak_rss();
  // A task resumed in its middle had its beginning before the checkpoint: the plug-ins'
  // restored state already holds what on_task_begin and the policy's first answer did.
  if (!resumed_in_task) {
    parts_.events.emit(CLHOST_EVENT_TASK_BEGIN, static_cast<int32_t>(plan.index),
                       "task " + plan.task->name + " begin");
    parts_.plugins.task_begin(plan.info);
  }
  parts_.journal.append(json{{"event", "task_begin"},
                             {"task", plan.index},
                             {"name", plan.task->name},
                             {"steps", plan.steps},
                             {"batch_size", plan.batch_size},
                             {"global_step", state_.global_step - plan.first_step},
                             {"resumed", resumed_in_task}});
  // A rank's micro-batches split its shard of the step: at most ceil(batch / ranks) samples.
  const int64_t ranks = parts_.runtime.collective->world_size();
  batcher_.begin_task(plan.index, plan.task->name, (plan.batch_size + ranks - 1) / ranks,
                      resumed_in_task);
  return peak_reset;
}

Trainer::DataOrder Trainer::data_order(const TaskPlan& plan, double& train_seconds_before) const {
  DataOrder data{std::mt19937_64(config_.run.seed * 1000003ULL + plan.index),
                 std::vector<int64_t>(static_cast<size_t>(plan.train_samples)), 0};
  if (plan.first_step == 0) {
    for (size_t i = 0; i < data.order.size(); ++i) data.order[i] = static_cast<int64_t>(i);
    std::shuffle(data.order.begin(), data.order.end(), data.rng);
    return data;
  }
  const json& saved = *resume_.saved;
  const std::string where = resume_.checkpoint->directory + "/";
  try {
    data.order = sample_order(resume_.checkpoint->file("data_order.bin"), plan.train_samples);
  } catch (const RunError& e) {
    throw RunError(where + "data_order.bin: " + e.what() + " (task " + plan.task->name + ")");
  }
  if (!saved.contains("order_rng") || !saved.contains("cursor")) {
    throw RunError(where + "trainer.json: order_rng and cursor missing inside a task");
  }
  std::istringstream rng_state(saved.at("order_rng").get<std::string>());
  rng_state >> data.rng;
  data.cursor = saved.at("cursor").get<size_t>();
  train_seconds_before = saved.at("task_train_seconds").get<double>();
  if (rng_state.fail() || data.cursor > data.order.size()) {
    throw RunError(where + "trainer.json: order_rng or cursor does not fit task " +
                   plan.task->name + " (" + std::to_string(plan.train_samples) + " samples)");
  }
  return data;
}

double Trainer::train_task(const TaskPlan& plan) {
  int64_t task_ooms =
      plan.first_step > 0 ? resume_.saved->at("task_out_of_memory_retries").get<int64_t>() : 0;
  double train_seconds_before = 0.0;
  DataOrder order = data_order(plan, train_seconds_before);
  const size_t task_count = parts_.sequence.tasks.size();
  progress_.begin_task("task " + std::to_string(plan.index + 1) + "/" + std::to_string(task_count) +
                           " (" + plan.task->name + ")",
                       plan.steps);
  const auto task_start = Clock::now();
  auto window_start = task_start;
  int64_t window_samples = 0;
  int64_t task_samples = 0;  // in this process (a resumed task counts from the resume)
  double samples_per_second = 0.0;
  const double communication_before = parts_.runtime.collective->seconds();
  for (int64_t step = plan.first_step; step < plan.steps; ++step) {
    const StepBatch batch = next_batch(plan, order, step);
    const MicroBatcher::Attempt attempt{[this, step] {
                                          parts_.optimizer.zero_grad();
                                          output_terms_.begin_step(step);
                                        },
                                        [&](int64_t micro_batch, int64_t* samples_processed) {
                                          return accumulate_batch_gradients(
                                              plan.forward, batch, micro_batch, samples_processed);
                                        },
                                        [this](double loss) { return step_status(loss); },
                                        kStatusFields + parts_.runtime.parameters.size()};
    const MicroBatcher::Gradients gradients =
        batcher_.gradients(attempt, batch.samples, step, task_ooms);
    const StepTotals totals = reduce_step(gradients);
    rank_tally_.samples += batch.local_samples();
    const double penalty = apply_step(plan, step, batch.samples, totals);
    const int64_t step_peak = std::max(gradients.peak_bytes, memory::peak_bytes());
    window_samples += batch.samples;
    task_samples += batch.samples;
    if ((step + 1) % config_.run.log_every == 0 || step + 1 == plan.steps) {
      const auto now = Clock::now();
      const double seconds = std::chrono::duration<double>(now - window_start).count();
      samples_per_second = seconds > 0 ? static_cast<double>(window_samples) / seconds : 0.0;
      window_start = now;
      window_samples = 0;
      parts_.log.step_row(plan.index, step + 1, state_.global_step, totals.loss, penalty,
                          batch.samples, state_.micro_batch, samples_per_second, step_peak);
    }
    // Until the first logging window closes (slow steps, large log_every), the rate so far.
    const double elapsed = seconds_since(task_start);
    const double shown_rate = samples_per_second > 0.0 || elapsed <= 0.0
                                  ? samples_per_second
                                  : static_cast<double>(task_samples) / elapsed;
    progress_.update(step + 1, totals.loss, shown_rate);
    batcher_.after_step(step_peak);
    // Checkpoints count global steps, so a resumed run keeps the same schedule.
    const int stop_signal = totals.stop_signal;
    const bool stop_requested = stop_signal != 0;
    const int64_t every = config_.run.checkpoint_every;
    if (stop_requested || (every > 0 && step + 1 < plan.steps && state_.global_step % every == 0)) {
      write_checkpoint(TaskPosition{plan.index, step + 1, task_ooms,
                                    train_seconds_before + seconds_since(task_start)},
                       &order, static_cast<int32_t>(plan.index));
    }
    if (stop_requested) stop_if_asked(plan.index, step + 1, stop_signal);
    crash_point("step");
  }
  rank_tally_.train_seconds += seconds_since(task_start);
  rank_tally_.communication_seconds += parts_.runtime.collective->seconds() - communication_before;
  return train_seconds_before + seconds_since(task_start);
}

StepBatch Trainer::next_batch(const TaskPlan& plan, DataOrder& order, int64_t step) const {
  std::vector<int64_t> indices;
  indices.reserve(static_cast<size_t>(plan.batch_size));
  while (static_cast<int64_t>(indices.size()) < std::min(plan.batch_size, plan.train_samples)) {
    if (order.cursor == order.order.size()) {
      std::shuffle(order.order.begin(), order.order.end(), order.rng);
      order.cursor = 0;
    }
    indices.push_back(order.order[order.cursor++]);
  }
  // This rank's contiguous shard of the step's samples.
  const auto total = static_cast<int64_t>(indices.size());
  const int64_t rank = parts_.runtime.collective->rank();
  const int64_t ranks = parts_.runtime.collective->world_size();
  const int64_t shard_begin = total * rank / ranks;
  const int64_t shard_end = total * (rank + 1) / ranks;
  StepBatch batch;
  batch.task = static_cast<uint32_t>(plan.index);
  batch.rows = torch::tensor(
      std::vector<int64_t>(indices.begin() + shard_begin, indices.begin() + shard_end),
      torch::kInt64);
  batch.samples = total;
  batch.x = plan.task->train_x;
  batch.y = plan.task->train_y;
  // Samples from a source: the batch is converted (or read) once, before the (retried)
  // micro-batches.
  if (plan.task->train_source) {
    Samples samples = plan.task->train_rows(batch.rows);
    batch.x = std::move(samples.x);
    batch.y = std::move(samples.y);
    batch.rows = torch::arange(shard_end - shard_begin, torch::kInt64);
  }
  replay_.append(batch, static_cast<uint32_t>(plan.index), step, state_.global_step, total, rank,
                 ranks);
  return batch;
}

std::vector<double> Trainer::step_status(double local_loss) const {
  // The loss, the stop requests, and which gradients exist (a rank whose shard is empty has none;
  // it adds zeros where the others have some).
  const int signal_number = requested_stop_signal();
  std::vector<double> status{local_loss, output_terms_.step_penalty()};
  const std::vector<double> stop = stop_request_flags(signal_number);
  status.insert(status.end(), stop.begin(), stop.end());
  for (const auto& parameter : parts_.runtime.parameters) {
    status.push_back(parameter.grad().defined() ? 1.0 : 0.0);
  }
  return status;
}

Trainer::StepTotals Trainer::reduce_step(const MicroBatcher::Gradients& step) {
  const std::vector<double>& agreed = step.status;  // already summed over the ranks
  StepTotals totals{agreed[0], agreed[1], stop_signal_of(agreed[2], agreed[3])};
  Collective& collective = *parts_.runtime.collective;
  if (!collective.distributed()) {
    totals.loss = step.loss;
    return totals;
  }
  std::vector<torch::Tensor> gradients;
  for (size_t p = 0; p < parts_.runtime.parameters.size(); ++p) {
    torch::Tensor& parameter = parts_.runtime.parameters[p];
    if (agreed[kStatusFields + p] == 0.0) continue;
    if (!parameter.grad().defined()) parameter.mutable_grad() = torch::zeros_like(parameter);
    gradients.push_back(parameter.grad());
  }
  collective.sum(gradients);
  return totals;
}

double Trainer::apply_step(const TaskPlan& plan, int64_t step, int64_t samples,
                           const StepTotals& totals) {
  const double loss = totals.loss;
  std::string non_finite;  // the first term that is NaN or infinite, named for the user
  if (!std::isfinite(loss)) non_finite = "the data loss is " + std::to_string(loss);
  if (non_finite.empty() && !std::isfinite(totals.output_penalty)) {
    non_finite = output_terms_.non_finite().empty()
                     ? "the output loss terms sum to " + std::to_string(totals.output_penalty)
                     : output_terms_.non_finite();
  }
  const clhost_step_info_t step_info{sizeof(clhost_step_info_t),
                                     static_cast<uint32_t>(plan.index),
                                     step,
                                     state_.global_step,
                                     samples,
                                     loss};
  const double penalty =
      parts_.plugins.after_backward(step_info, non_finite) + totals.output_penalty;
  if (!non_finite.empty()) {
    // Stop before the optimizer step: the parameters stay those of the last good step.
    throw RunError("task " + std::to_string(plan.index + 1) + " (" + plan.task->name + ") step " +
                   std::to_string(step + 1) + ": " + non_finite +
                   "; the run stopped before this step's update. Lower train.lr or the "
                   "regularizer's strength");
  }
  try {
    parts_.optimizer.step();
  } catch (const std::exception& e) {
    if (!memory::is_out_of_memory(e)) throw;
    // Parameters may be half-updated: this cannot be retried.
    throw RunError("task " + plan.task->name + " step " + std::to_string(step + 1) +
                   ": out of memory in the optimizer step (its state and update must fit in " +
                   "run.memory_budget = " + memory::format_bytes(parts_.runtime.budget_bytes) +
                   "); raise the budget");
  }
  ++state_.global_step;
  return penalty;
}

double Trainer::consolidate(const TaskPlan& plan) {
  // Cache release between phases: give the training step's freed heap back to the system
  // before the Fisher pass and evaluation allocate their own.
  ::malloc_trim(0);
  const auto task = static_cast<int32_t>(plan.index);
  const std::string& name = plan.task->name;
  parts_.events.emit(CLHOST_EVENT_CONSOLIDATE_BEGIN, task, "consolidate " + name);
  const auto start = Clock::now();
  parts_.runtime.in_task_end = true;
  replay_.update(*plan.task, static_cast<uint32_t>(plan.index), parts_.sequence.streamed);
  parts_.plugins.task_end(plan.info);
  parts_.runtime.in_task_end = false;
  const double seconds = seconds_since(start);
  parts_.events.emit(CLHOST_EVENT_CONSOLIDATE_END, task, "consolidate " + name + " end");
  crash_point("task_end");
  parts_.events.emit(CLHOST_EVENT_TASK_END, task, "task " + name + " end");
  return seconds;
}

Trainer::Evaluation Trainer::evaluate(int32_t event_task, const std::string& what) {
  parts_.events.emit(CLHOST_EVENT_EVAL_BEGIN, event_task, what);
  Evaluation evaluation;
  evaluation.test = evaluate_all_tasks(parts_.runtime.model, config_, parts_.sequence,
                                       *parts_.runtime.collective);
  if (config_.data.validation.enabled()) {
    evaluation.validation = evaluate_all_tasks(parts_.runtime.model, config_, parts_.sequence,
                                               *parts_.runtime.collective, EvalSplit::kValidation);
  }
  parts_.events.emit(CLHOST_EVENT_EVAL_END, event_task, what + " end");
  return evaluation;
}

void Trainer::journal_evaluation(int64_t after_task, const Evaluation& evaluation) const {
  json event{{"event", "evaluation"}, {"after_task", after_task}, {"row", evaluation.test}};
  if (!evaluation.validation.empty()) event["validation_row"] = evaluation.validation;
  parts_.journal.append(event);
}

void Trainer::end_task(const TaskPlan& plan, const TaskTotals& totals) {
  const auto task = static_cast<int32_t>(plan.index);
  const std::string& name = plan.task->name;
  parts_.journal.append(json{{"event", "task_end"},
                             {"task", plan.index},
                             {"train_seconds", totals.train_seconds},
                             {"consolidate_seconds", totals.consolidate_seconds}});
  const Evaluation evaluation = evaluate(task, "evaluate after " + name);
  const std::vector<double>& row = evaluation.test;
  if (parts_.scripted.module && parts_.runtime.collective->writes_outputs()) {
    // The trained module after every task, for torch.jit.load in Python.
    const std::string file = "model_task_" + std::to_string(plan.index + 1) + ".pt";
    save_scripted_model(*parts_.scripted.module,
                        (std::filesystem::path(parts_.run_dir) / file).string());
  }
  journal_evaluation(static_cast<int64_t>(plan.index), evaluation);
  state_.accuracy_matrix.push_back(row);
  if (!evaluation.validation.empty()) state_.validation_matrix.push_back(evaluation.validation);
  state_.optimizer_steps += plan.steps;
  const ProcessMemory memory = read_process_memory();
  double seen_sum = 0.0;
  for (size_t j = 0; j <= plan.index; ++j) seen_sum += row[j];
  state_.task_reports.push_back(
      json{{"name", name},
           {"classes", plan.task->classes},
           {"train_samples", plan.train_samples},
           {"test_samples", plan.task->test_size()},
           {"steps", plan.steps},
           {"batch_size", plan.batch_size},
           {"final_micro_batch", state_.micro_batch},
           {"train_seconds", totals.train_seconds},
           {"consolidate_seconds", totals.consolidate_seconds},
           {"samples_per_second",
            static_cast<double>(plan.steps * plan.batch_size) / totals.train_seconds},
           {"peak_rss_bytes", memory.peak_rss_bytes},
           {"peak_rss_scope", totals.peak_reset ? "this task" : "process lifetime"}});
  if (config_.data.validation.enabled()) {
    state_.task_reports.back()["validation_samples"] = plan.task->validation_size();
  }
  const size_t task_count = parts_.sequence.tasks.size();
  progress_.end_task(
      "task " + std::to_string(plan.index + 1) + "/" + std::to_string(task_count) + " done in " +
      format_double(totals.train_seconds, 1) + " s; mean " +
      (parts_.sequence.next_byte ? "bits per byte" : "accuracy") +
      " on tasks seen: " + format_double(seen_sum / static_cast<double>(plan.index + 1), 4));
  write_checkpoint(TaskPosition{plan.index + 1, 0, 0, 0.0}, nullptr,
                   static_cast<int32_t>(plan.index));
  stop_if_asked(plan.index + 1, 0, agreed_stop_signal());
  stop_if_planned(plan.index);
}

// --- checkpoints and stopping ------------------------------------------------------------------

void Trainer::write_checkpoint(const TaskPosition& position, const DataOrder* order,
                               int32_t event_task) {
  // Every rank holds the same state; rank 0 writes it, and every rank resumes from it.
  if (!parts_.runtime.collective->writes_outputs()) return;
  const auto start = Clock::now();
  std::vector<CheckpointFile> files;
  const json plugin_entries = parts_.plugins.add_state_files(files);
  files.push_back({"model.bin", [this](const ByteSink& sink) {
                     save_model_tensors(parts_.runtime.model, sink);
                   }});
  files.push_back(
      {"optimizer.bin", [this](const ByteSink& sink) { save_optimizer(parts_.optimizer, sink); }});
  files.push_back(file_from_bytes("generator.bin", save_generator()));
  // The counters as of now: wall time so far, the tensor peak including this step's.
  TrainerState now = state_;
  now.wall_seconds += std::chrono::duration<double>(start - parts_.wall_start).count();
  now.tensor_peak_bytes = std::max(now.tensor_peak_bytes, memory::peak_bytes());
  json trainer{{"config", json::parse(config_.resolved_json)},
               {"cli_plugin_path", parts_.cli_plugin_path},
               {"given_keys", config_.given_keys},
               {"plugins", plugin_entries},
               {"task", position.task},
               {"step", position.step},
               {"task_out_of_memory_retries", position.task_out_of_memory_retries},
               {"task_train_seconds", position.task_train_seconds},
               {"fisher_groups", parts_.runtime.store->committed_groups()},
               {"metrics_csv_bytes", parts_.log.commit()}};
  now.write(trainer);
  if (order != nullptr) {
    files.push_back(file_from_bytes("data_order.bin", int64_bytes(order->order)));
    std::ostringstream rng_state;
    rng_state << order->rng;
    trainer["order_rng"] = rng_state.str();
    trainer["cursor"] = order->cursor;
  }
  files.push_back(file_from_bytes("trainer.json", trainer.dump(1) + "\n"));
  try {
    checkpoint_bytes_ = parts_.checkpoints.write(files, json{{"task", position.task + 1},
                                                             {"step", position.step},
                                                             {"global_step", state_.global_step}});
  } catch (const std::exception& e) {
    throw RunError(std::string("writing a checkpoint failed: ") + e.what() +
                   ". The previous checkpoint is intact; fix the cause, then: clhost run "
                   "--resume " +
                   parts_.run_dir);
  }
  const double seconds = seconds_since(start);
  state_.checkpoint_seconds.push_back(seconds);
  // Profilers see it on the timeline; it happens between steps, outside any other event.
  parts_.events.emit(CLHOST_EVENT_CHECKPOINT, event_task,
                     "checkpoint at task " + std::to_string(position.task + 1) + " step " +
                         std::to_string(position.step) + ": " +
                         memory::format_bytes(checkpoint_bytes_) + " in " +
                         format_double(seconds, 3) + " s");
  parts_.journal.append(json{{"event", "checkpoint"},
                             {"task", position.task},
                             {"step", position.step},
                             {"global_step", state_.global_step},
                             {"bytes", checkpoint_bytes_},
                             {"seconds", seconds}});
}

int Trainer::agreed_stop_signal() const {
  Collective& collective = *parts_.runtime.collective;
  const int local = requested_stop_signal();
  if (!collective.distributed()) return local;
  const std::vector<double> agreed = collective.sum(stop_request_flags(local));
  return stop_signal_of(agreed[0], agreed[1]);
}

void Trainer::stop_if_planned(size_t task) const {
  const int64_t stop = parts_.options.stop_after_task;
  if (stop <= 0 || static_cast<int64_t>(task) + 1 != stop ||
      task + 1 == parts_.sequence.tasks.size()) {
    return;
  }
  throw Interrupted("stopped after task " + std::to_string(stop) +
                        " as asked (--stop-after-task), after writing a checkpoint. Continue "
                        "with: clhost run --resume " +
                        parts_.run_dir,
                    0);
}

void Trainer::stop_if_asked(size_t task, int64_t step, int signal_number) const {
  if (signal_number == 0) return;
  throw Interrupted(signal_name(signal_number) + ": stopped at task " + std::to_string(task + 1) +
                        " step " + std::to_string(step) +
                        " after writing a checkpoint. Continue with: clhost run --resume " +
                        parts_.run_dir,
                    signal_number);
}

}  // namespace clhost
