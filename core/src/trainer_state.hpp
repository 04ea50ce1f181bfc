// Everything the trainer counts over a run, in one struct with one field list: the same list
// writes trainer.json into a checkpoint and reads it back on --resume, so a new counter is one
// line in fields() and cannot be forgotten on either side (which would break the bit-identical
// resume).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "clhost/metrics.hpp"

namespace clhost {

struct TrainerState {
  int64_t global_step = 0;        // optimizer steps completed over the run
  int64_t optimizer_steps = 0;    // steps of the tasks completed (the summary's count)
  int64_t micro_batch = 0;        // samples per forward/backward; 0 before the first task
  bool first_policy_call = true;  // the batch policy has not answered yet
  int64_t out_of_memory_retries = 0;
  int64_t samples_processed = 0;  // fed to a forward pass, failed attempts included
  int64_t samples_redone = 0;     // of steps redone after an out-of-memory error
  int64_t samples_in_steps = 0;   // whose gradients reached an optimizer step
  int64_t tensor_peak_bytes = 0;
  nlohmann::json batch_changes = nlohmann::json::array();
  nlohmann::json task_reports = nlohmann::json::array();
  AccuracyMatrix accuracy_matrix;
  std::vector<double> random_init_accuracy;
  // data.validation: the same evaluations on the validation samples (empty without it).
  AccuracyMatrix validation_matrix;
  std::vector<double> random_init_validation;
  double wall_seconds = 0.0;  // of the earlier processes of this run (before a resume)
  std::vector<double> checkpoint_seconds;
  nlohmann::json resumes = nlohmann::json::array();

  // Calls visit(name, member) for every field, in trainer.json's names.
  template <class State, class Visit>
  static void fields(State& state, Visit&& visit) {
    visit("global_step", state.global_step);
    visit("optimizer_steps", state.optimizer_steps);
    visit("micro_batch", state.micro_batch);
    visit("first_policy_call", state.first_policy_call);
    visit("out_of_memory_retries", state.out_of_memory_retries);
    visit("samples_processed", state.samples_processed);
    visit("samples_redone", state.samples_redone);
    visit("samples_in_steps", state.samples_in_steps);
    visit("tensor_peak_bytes", state.tensor_peak_bytes);
    visit("batch_changes", state.batch_changes);
    visit("task_reports", state.task_reports);
    visit("accuracy_matrix", state.accuracy_matrix);
    visit("random_init_accuracy", state.random_init_accuracy);
    visit("validation_matrix", state.validation_matrix);
    visit("random_init_validation", state.random_init_validation);
    visit("wall_seconds", state.wall_seconds);
    visit("checkpoint_seconds", state.checkpoint_seconds);
    visit("resumes", state.resumes);
  }

  // Adds every field to `out` (a JSON object).
  void write(nlohmann::json& out) const;
  // Reads every field; throws nlohmann::json's error naming a missing key.
  void read(const nlohmann::json& in);
};

// Where the trainer stands inside a task, for a checkpoint taken between two steps.
struct TaskPosition {
  size_t task = 0;   // the task to continue
  int64_t step = 0;  // steps of it already done
  int64_t task_out_of_memory_retries = 0;
  double task_train_seconds = 0.0;
};

}  // namespace clhost
