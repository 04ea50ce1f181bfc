// The training loop. For each task: begin (plug-ins, batch policy), the steps (micro-batched
// gradients, plug-in penalties, optimizer step, metrics, periodic checkpoint, stop on a signal),
// consolidate (plug-ins' on_task_end), evaluate every task, end (report, checkpoint). Trainer::run
// is that page; everything else is a named step below it.
#pragma once

#include <clhost/clhost_plugin.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "clhost/config.hpp"
#include "clhost/runner.hpp"
#include "data.hpp"
#include "evaluation.hpp"
#include "micro_batcher.hpp"
#include "output_terms.hpp"
#include "progress.hpp"
#include "replay.hpp"
#include "scripted_model.hpp"
#include "trainer_state.hpp"
#include "training_checkpoint.hpp"

namespace clhost {

class EventBus;
class EventJournal;
class MetricsLog;
class PluginSet;
class Runtime;

// What the runner set up for the trainer; all owned by the runner and alive during run().
struct TrainerParts {
  const RunConfig& config;
  const RunOptions& options;
  const std::string& run_dir;
  const std::vector<std::string>& cli_plugin_path;  // recorded in trainer.json for --resume
  const TaskSequence& sequence;
  Runtime& runtime;
  ScriptedModel& scripted;
  torch::optim::Optimizer& optimizer;
  PluginSet& plugins;
  EventBus& events;
  MetricsLog& log;
  EventJournal& journal;  // events.jsonl (rank 0; a no-op elsewhere)
  CheckpointDirectory& checkpoints;
  std::chrono::steady_clock::time_point wall_start;
};

// A resumed run continues from its checkpoint and trainer.json.
struct ResumePoint {
  const LoadedCheckpoint* checkpoint = nullptr;  // null: starting over (none was complete)
  const nlohmann::json* saved = nullptr;         // the checkpoint's trainer.json
};

class Trainer {
 public:
  Trainer(const TrainerParts& parts, TrainerState& state, const ResumePoint& resume);
  void run();
  [[nodiscard]] int64_t last_checkpoint_bytes() const { return checkpoint_bytes_; }

  // This rank's share of the training steps (for results.json's "distributed" section).
  struct RankTally {
    int64_t samples = 0;                 // forward passes of training samples on this rank
    double train_seconds = 0.0;          // in training steps
    double communication_seconds = 0.0;  // of which in collectives
  };
  [[nodiscard]] const RankTally& rank_tally() const { return rank_tally_; }

 private:
  // The data order of a task: a seeded shuffle, reshuffled at every pass over the data.
  struct DataOrder {
    std::mt19937_64 rng;
    std::vector<int64_t> order;
    size_t cursor = 0;
  };
  struct TaskPlan {
    size_t index = 0;
    const TaskData* task = nullptr;
    int64_t train_samples = 0;
    int64_t batch_size = 0;
    int64_t steps = 0;
    int64_t first_step = 0;  // > 0 when resumed in its middle
    StepModel forward;       // the model, the task's classes, the output terms
    clhost_task_info_t info{};
  };
  struct TaskTotals {
    double train_seconds = 0.0;
    double consolidate_seconds = 0.0;
    bool peak_reset = false;
  };

  // Not const: the plan points at the trainer's output terms.
  [[nodiscard]] TaskPlan plan_task(size_t index);
  // A task's batch size and optimizer steps (train.*, tasks[i].batch_size).
  struct TaskShape {
    int64_t batch_size = 0;
    int64_t steps = 0;
  };
  [[nodiscard]] TaskShape task_shape(size_t index) const;
  // events.jsonl: the run (or its resume) begins; what a reader needs to follow it.
  void journal_run_begin(bool resumed) const;
  void start_run();
  // Returns whether the peak-RSS counter could be reset for this task.
  bool begin_task(const TaskPlan& plan);
  DataOrder data_order(const TaskPlan& plan, double& train_seconds_before) const;
  double train_task(const TaskPlan& plan);
  // The step's samples (drawn in the same order on every rank), with the samples a replay
  // plug-in adds, and this rank's shard of them.
  [[nodiscard]] StepBatch next_batch(const TaskPlan& plan, DataOrder& order, int64_t step) const;
  // What every rank adds up after its share of a step (MicroBatcher's step_status): the loss,
  // the output terms' penalty, SIGINT and SIGTERM requests, then one flag per parameter whose
  // gradient exists.
  static constexpr size_t kStatusFields = 4;
  [[nodiscard]] std::vector<double> step_status(double local_loss) const;
  // A step's totals over every rank.
  struct StepTotals {
    double loss = 0.0;            // the whole batch's data loss
    double output_penalty = 0.0;  // the plug-ins' output loss terms
    int stop_signal = 0;          // SIGINT/SIGTERM if any rank was asked to stop
  };
  // Data-parallel: every rank's gradients added up, and the step's totals.
  StepTotals reduce_step(const MicroBatcher::Gradients& step);
  // Plug-in penalties, the non-finite guard and the optimizer's update; returns the penalty.
  double apply_step(const TaskPlan& plan, int64_t step, int64_t samples, const StepTotals& totals);
  double consolidate(const TaskPlan& plan);
  // The model's evaluation on every task: its test row, and its validation row with
  // data.validation (else empty); `event_task` and `what` name it on the event bus.
  struct Evaluation {
    std::vector<double> test;
    std::vector<double> validation;
  };
  Evaluation evaluate(int32_t event_task, const std::string& what);
  // The evaluation event of events.jsonl (after_task -1: the untrained model).
  void journal_evaluation(int64_t after_task, const Evaluation& evaluation) const;
  void end_task(const TaskPlan& plan, const TaskTotals& totals);
  // `event_task`: the task the checkpoint event belongs to (-1 before the first).
  void write_checkpoint(const TaskPosition& position, const DataOrder* order, int32_t event_task);
  // Stops the run (Interrupted) when `signal_number` is not 0; every rank calls it alike.
  void stop_if_asked(size_t task, int64_t step, int signal_number) const;
  // --stop-after-task: stops (Interrupted, signal 0) when `task` (0-based) is the one asked for.
  void stop_if_planned(size_t task) const;
  // The stop signal any rank received (0: none): the ranks stop at the same step.
  [[nodiscard]] int agreed_stop_signal() const;

  const TrainerParts& parts_;
  const RunConfig& config_;
  TrainerState& state_;
  ResumePoint resume_;
  MicroBatcher batcher_;
  OutputTerms output_terms_;
  Replay replay_;
  ProgressReporter progress_;
  size_t first_task_ = 0;
  int64_t first_step_ = 0;
  int64_t checkpoint_bytes_ = 0;
  RankTally rank_tally_;
};

}  // namespace clhost
