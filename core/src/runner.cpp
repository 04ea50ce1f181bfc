// The runner: check what a run needs (resume point, plug-ins) before anything is written, set up
// the data, model, plug-ins and optimizer, hand them to the Trainer, then write the outputs.
// status.json is written in one place (run_pipeline), whatever happened.
#include "clhost/runner.hpp"

#include <torch/torch.h>
#include <torch/version.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "clhost/errors.hpp"
#include "clhost/fisher_store.hpp"
#include "clhost/memory_budget.hpp"
#include "clhost/memory_plan.hpp"
#include "clhost/plugin_loader.hpp"
#include "data.hpp"
#include "distributed.hpp"
#include "event_bus.hpp"
#include "event_journal.hpp"
#include "host_services.hpp"
#include "io.hpp"
#include "metrics_log.hpp"
#include "model.hpp"
#include "plugin_set.hpp"
#include "run_state.hpp"
#include "scripted_model.hpp"
#include "stop_signals.hpp"
#include "trainer.hpp"
#include "trainer_state.hpp"
#include "training_checkpoint.hpp"

namespace clhost {

const char* version() {
  return CLHOST_VERSION;
}

namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

std::string timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), "%Y%m%d_%H%M%S", &local);
  return buffer;
}

// A new run's directory, <output_dir>/<name>_<timestamp>[_N], taken by creating it: mkdir
// fails on a name that exists, so two runs started in the same second (a sweep's, the web UI's)
// never share one. Until keep(), the reservation removes what it created (only while empty) when
// the run fails before writing anything.
class RunDirReservation {
 public:
  RunDirReservation() = default;
  RunDirReservation(const RunDirReservation&) = delete;
  RunDirReservation& operator=(const RunDirReservation&) = delete;
  RunDirReservation(RunDirReservation&&) = delete;
  RunDirReservation& operator=(RunDirReservation&&) = delete;
  ~RunDirReservation() {
    std::error_code ignored;
    for (const auto& dir : created_) fs::remove(dir, ignored);  // innermost first; empty only
  }

  std::string take(const std::string& base) {
    std::error_code error;
    for (fs::path parent = fs::path(base).parent_path();
         !parent.empty() && !fs::exists(parent, error); parent = parent.parent_path()) {
      created_.push_back(parent);
    }
    fs::create_directories(fs::path(base).parent_path(), error);
    if (error) throw RunError(base + ": cannot create the output directory: " + error.message());
    std::string candidate = base;
    for (int suffix = 2; !fs::create_directory(candidate, error); ++suffix) {
      // Taken (by a directory or a file of that name): the next suffix; anything else is an error.
      if (error && !fs::exists(candidate)) {
        throw RunError(candidate + ": cannot create run directory: " + error.message());
      }
      candidate = base + "_" + std::to_string(suffix);
    }
    created_.insert(created_.begin(), candidate);
    return candidate;
  }

  void keep() { created_.clear(); }

 private:
  std::vector<fs::path> created_;
};

std::string choose_run_dir(const RunConfig& config, const RunOptions& options,
                           RunDirReservation& reservation) {
  if (!options.run_dir.empty()) {
    check_new_run_dir(options.run_dir);
    return options.run_dir;
  }
  return reservation.take(
      (fs::path(config.run.output_dir) / (config.run.name + "_" + timestamp())).string());
}

// --- resume: what the run continues from, checked before anything is written -------------------

// Built once per run before anything is written; a throwing default member (json) would end the
// run with the same error as any other failure at that point.
struct ResumePlan {                            // NOLINT(bugprone-exception-escape)
  std::optional<LoadedCheckpoint> checkpoint;  // none: not resuming, or starting over
  json saved;                                  // the checkpoint's trainer.json
  json record;                                 // this resume, for results.json → resumes[]
  std::vector<std::string> cli_plugin_path;    // --plugin-path now, then the run's earlier ones
};

// The configuration a resumed run may not silently change: the differences, refused unless
// they are safe and accepted. Returns them for the record.
json check_config_changes(const json& started_with, const RunConfig& config,
                          const RunOptions& options) {
  const auto changes = config_changes(started_with.dump(), config.resolved_json);
  json change_list = json::array();
  std::string listing;
  bool unsafe = false;
  for (const auto& change : changes) {
    listing += "\n  " + change.key + ": " + change.before + " -> " + change.after +
               (change.safe_on_resume ? "" : "  (cannot change in a resumed run)");
    unsafe = unsafe || !change.safe_on_resume;
    change_list.push_back(json{{"key", change.key},
                               {"from", json::parse(change.before)},
                               {"to", json::parse(change.after)}});
  }
  std::string safe_keys;
  for (const auto& key : resume_safe_keys()) safe_keys += (safe_keys.empty() ? "" : ", ") + key;
  if (!changes.empty() && (!options.allow_config_change || unsafe)) {
    throw ConfigError(
        config.source + ": the configuration differs from the one " + options.run_dir +
        " was started with:" + listing +
        (unsafe ? "\nRestore those keys; only " + safe_keys + " may change (docs/cli.md)."
                : std::string("\nThese keys are safe to change: pass --allow-config-change to "
                              "accept.")));
  }
  return change_list;
}

ResumePlan plan_resume(const RunConfig& config, const RunOptions& options) {
  ResumePlan plan;
  plan.cli_plugin_path = config.cli_plugin_path;
  if (!options.resume) return plan;
  const CheckpointDirectory directory(options.run_dir);
  json started_with;
  if (directory.has_checkpoints()) {
    plan.checkpoint = directory.load_latest();
    const std::string trainer_json = plan.checkpoint->directory + "/trainer.json";
    plan.saved = json::parse(plan.checkpoint->file("trainer.json"), nullptr, false);
    if (plan.saved.is_discarded()) throw RunError(trainer_json + ": not JSON");
    try {
      check_trainer_json(plan.saved);
    } catch (const RunError& e) {
      throw RunError(trainer_json + ": " + e.what() + " (written by another clhost version?)");
    }
    started_with = plan.saved.at("config");
    for (const auto& dir : plan.saved.value("cli_plugin_path", std::vector<std::string>{})) {
      if (std::find(plan.cli_plugin_path.begin(), plan.cli_plugin_path.end(), dir) ==
          plan.cli_plugin_path.end())
        plan.cli_plugin_path.push_back(dir);
    }
  } else {
    // Stopped before its first checkpoint was complete, which precedes the first step: no
    // training is lost, so the run starts over in its directory.
    started_with = json::parse(
        load_config((fs::path(options.run_dir) / "config.toml").string()).resolved_json);
  }
  const bool at_checkpoint = plan.checkpoint.has_value();
  plan.record =
      json{{"checkpoint", at_checkpoint ? json(plan.checkpoint->directory) : json(nullptr)},
           {"task", at_checkpoint ? plan.saved.at("task").get<int64_t>() + 1 : 1},
           {"step", at_checkpoint ? plan.saved.at("step").get<int64_t>() : 0},
           {"global_step", at_checkpoint ? plan.saved.at("global_step").get<int64_t>() : 0},
           {"time", timestamp()},
           {"config_changes", check_config_changes(started_with, config, options)},
           {"plugins_restarted", json::array()}};
  return plan;
}

// Every plug-in must find its own saved state, or the user must accept a fresh one.
void check_plugins_resumable(const LoadedPipeline& pipeline, ResumePlan& plan,
                             const RunOptions& options) {
  const json& saved_plugins = plan.saved.at("plugins");
  if (saved_plugins.size() != pipeline.plugins.size()) {
    throw RunError(plan.checkpoint->directory +
                   "/trainer.json: plugins: " + std::to_string(saved_plugins.size()) +
                   " entries for a pipeline of " + std::to_string(pipeline.plugins.size()));
  }
  std::string not_resumable;
  for (size_t i = 0; i < pipeline.plugins.size(); ++i) {
    const LoadedPlugin& plugin = *pipeline.plugins[i];
    const json& entry = saved_plugins.at(i);
    const bool same =
        entry.at("id") == plugin.id && entry.at("version") == plugin.descriptor->version;
    const bool has_state = plugin.entry->get_interface(CLHOST_INTERFACE_STATE_V1) != nullptr;
    if (same && has_state && entry.value("resumable", false)) continue;
    const std::string why =
        !same ? "the checkpoint was written by version " + entry.at("version").get<std::string>()
              : "it has no clhost.state/1 interface, so its state was not saved";
    not_resumable += "\n  " + plugin.id + " " + plugin.descriptor->version + ": " + why;
    plan.record["plugins_restarted"].push_back(json{{"id", plugin.id}, {"reason", why}});
  }
  if (!not_resumable.empty() && !options.resume_anyway) {
    throw PluginError(
        options.run_dir +
        ": not resumable: these plug-ins cannot continue from the checkpoint:" + not_resumable +
        "\nStart the run again, or pass --resume-anyway to continue with them "
        "starting from a fresh state (the results then differ from an "
        "uninterrupted run).");
  }
}

// --- setup ---------------------------------------------------------------------------------------

// The memory budget belongs to this run only, however it ends.
class BudgetReset {
 public:
  BudgetReset() = default;
  BudgetReset(const BudgetReset&) = delete;
  BudgetReset& operator=(const BudgetReset&) = delete;
  BudgetReset(BudgetReset&&) = delete;
  BudgetReset& operator=(BudgetReset&&) = delete;
  ~BudgetReset() { memory::set_budget(-1); }
};

// Builds or loads the model onto `runtime`; returns results.json's "model".
json bind_model(const RunConfig& config, const RunOptions& options, const TaskSequence& sequence,
                Runtime& runtime, ScriptedModel& scripted) {
  json report{{"kind", to_string(config.model.kind)}};
  if (config.model.kind == ModelKind::kTorchScript) {
    scripted = load_scripted_model(config.model, sequence.input_size, sequence.num_classes);
    runtime.bind_model(scripted.net, scripted.parameter_names);
    report["path"] = config.model.path;
    report["fisher_paths"] = scripted.layer_notes;
    if (!options.quiet) {
      std::fprintf(stderr, "model %s: %zu layer(s); Fisher pass per layer:\n",
                   config.model.path.c_str(), scripted.layer_notes.size());
      for (const auto& note : scripted.layer_notes) std::fprintf(stderr, "  %s\n", note.c_str());
    }
  } else {
    runtime.bind_model(
        make_model(config.model, sequence.input_size, sequence.image_side, sequence.num_classes));
  }
  int64_t parameter_count = 0;
  for (const auto& parameter : runtime.parameters) parameter_count += parameter.numel();
  report["parameters"] = parameter_count;
  return report;
}

// Enforced from here on: reading the IDX files briefly holds the whole dataset, which is not
// what the budget is for; the task tensors and the model that stay resident do count.
void enforce_budget(const RunConfig& config) {
  memory::set_budget(config.run.memory_budget);
  memory::reset_peak();
  if (config.run.memory_budget >= 0 && memory::current_bytes() > config.run.memory_budget) {
    throw RunError("the model and task data already hold " +
                   memory::format_bytes(memory::current_bytes()) +
                   " of tensors, more than run.memory_budget = " +
                   memory::format_bytes(config.run.memory_budget) +
                   ": not even one sample fits; raise the budget");
  }
}

// What the host services read besides the model: the Fisher context, settings and store.
void prepare_runtime(const RunConfig& config, const std::string& run_dir, Runtime& runtime) {
  runtime.fisher_context.model = runtime.model;
  runtime.fisher_context.seed = config.run.seed;
  runtime.fisher_context.collective = runtime.collective;
  runtime.fisher_context.samples_computed = &runtime.fisher_samples_computed;
  runtime.fisher_block_size = config.fisher.block_size;
  runtime.settings = json::parse(config.resolved_json);
  StoreOptions store_options;
  store_options.codec = config.fisher.use_compression ? config.fisher.codec : "none";
  store_options.level = static_cast<int>(config.fisher.compression_level);
  store_options.dtype = config.fisher.store_dtype;
  store_options.chunk_elements = config.fisher.block_size;
  std::vector<ParameterInfo> model_info;
  for (size_t i = 0; i < runtime.parameters.size(); ++i) {
    model_info.push_back({runtime.parameter_names[i], runtime.parameter_shapes[i]});
  }
  try {
    runtime.store = std::make_unique<FisherStore>((fs::path(run_dir) / "fisher.h5").string(),
                                                  store_options, model_info, CLHOST_VERSION);
  } catch (const RunError& e) {
    throw ConfigError(config.source + ": fisher_computation: " + e.what());
  }
}

// The checkpoint's state replaces the fresh one: plug-ins, model, optimizer, generator.
void restore_checkpoint(const ResumePlan& plan, PluginSet& plugins, Runtime& runtime,
                        torch::optim::Optimizer& optimizer) {
  plugins.restore_states(plan.saved.at("plugins"), *plan.checkpoint);
  const LoadedCheckpoint& checkpoint = *plan.checkpoint;
  // Each reader says what does not fit; the file it was reading goes in front.
  const auto restore = [&checkpoint](const char* file, const auto& read) {
    try {
      read(checkpoint.file(file));
    } catch (const RunError& e) {
      throw RunError(checkpoint.directory + "/" + file + ": " + e.what());
    }
  };
  restore("model.bin",
          [&](const std::string& bytes) { restore_model_tensors(runtime.model, bytes); });
  // An uninterrupted run enters its next step with gradient tensors from the last one, which
  // zero_grad() zeroes; backward then adds into zeros. Recreate them so the sums match.
  if (plan.saved.at("global_step").get<int64_t>() > 0) {
    for (auto& parameter : runtime.parameters) {
      parameter.mutable_grad() = torch::zeros_like(parameter);
    }
  }
  if (!checkpoint.has("optimizer.bin") && checkpoint.has("optimizer.pt")) {
    throw RunError(checkpoint.directory +
                   "/optimizer.pt: a LibTorch archive of an older clhost, which this one no longer "
                   "reads (LibTorch's archive parser can crash on a damaged file); start the run "
                   "again");
  }
  restore("optimizer.bin", [&](const std::string& bytes) { restore_optimizer(optimizer, bytes); });
  restore("generator.bin", [](const std::string& bytes) { restore_generator(bytes); });
}

void stop_if_interrupted_during_startup(const RunOptions& options) {
  crash_point("startup");
  if (const int signal_number = requested_stop_signal(); signal_number != 0) {
    throw Interrupted(signal_name(signal_number) +
                          " during start-up, before the first step: nothing was written" +
                          (options.resume ? " (the run directory is as it was)" : ""),
                      signal_number);
  }
}

void create_run_directory(const std::string& run_dir) {
  std::error_code dir_error;
  fs::create_directories(run_dir, dir_error);
  if (dir_error) throw RunError(run_dir + ": cannot create run directory: " + dir_error.message());
}

// The run directory's config.toml and metrics.csv (new, or the resumed run's cut back to its
// checkpoint), and the Fisher store's groups kept from the checkpoint.
std::unique_ptr<MetricsLog> open_run_files(const RunConfig& config, const RunOptions& options,
                                           const ResumePlan& plan, const std::string& run_dir,
                                           Runtime& runtime, EventJournal& journal) {
  const std::string metrics_path = (fs::path(run_dir) / "metrics.csv").string();
  int64_t keep_bytes = -1;
  if (plan.checkpoint) {
    // Groups a crashed attempt added after the checkpoint are redone, so they go first.
    runtime.store->keep_only(plan.saved.at("fisher_groups").get<std::vector<std::string>>());
    keep_bytes = plan.saved.at("metrics_csv_bytes").get<int64_t>();
  } else if (options.resume) {
    runtime.store->keep_only({});  // starting over: nothing is kept
  }
  // The configuration now in force (it may differ in safe keys) is what a later resume reads.
  write_file_atomic((fs::path(run_dir) / "config.toml").string(), config.resolved_toml);
  return std::make_unique<MetricsLog>(metrics_path, keep_bytes, options.quiet, journal);
}

TrainerState initial_state(const ResumePlan& plan, const RunOptions& options) {
  TrainerState state;
  if (plan.checkpoint) state.read(plan.saved);
  if (options.resume) state.resumes.push_back(plan.record);
  return state;
}

// --- the ranks of a data-parallel run -----------------------------------------------------------

// Joins the run's process group (world size 1: a single process, no communication).
std::unique_ptr<Collective> join_ranks(const RunConfig& config) {
  const LaunchEnvironment launch = launch_environment();
  if (launch.world_size == 1) return std::make_unique<Collective>();
  return std::make_unique<Collective>(launch, config.distributed);
}

// Every rank must run the same configuration: refused at start, naming the keys that differ.
void check_same_config(Collective& collective, const RunConfig& config) {
  const std::string mine = std::string(CLHOST_VERSION) + "\n" + config.resolved_json;
  const std::vector<std::string> all = collective.exchange("config", mine);
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r] == all[0]) continue;
    const auto version_of = [](const std::string& text) { return text.substr(0, text.find('\n')); };
    std::string listing;
    if (version_of(all[r]) != version_of(all[0])) {
      listing = "\n  clhost " + version_of(all[0]) + " -> " + version_of(all[r]);
    }
    const auto json_of = [](const std::string& text) { return text.substr(text.find('\n') + 1); };
    for (const auto& change : config_changes(json_of(all[0]), json_of(all[r]))) {
      listing += "\n  " + change.key + ": " + change.before + " -> " + change.after;
    }
    throw ConfigError("rank " + std::to_string(r) +
                      " runs another configuration than rank 0:" + listing +
                      "\nEvery rank must run the same config file, --set values and clhost");
  }
}

// Where a rank writes. Rank 0: the run directory. Every other rank: a private directory that is
// removed when the run ends (its plug-ins' files and Fisher store mirror rank 0's; nobody reads
// them). A resumed rank's copy starts from the run's metrics.csv and Fisher store.
class RankDirectory {
 public:
  RankDirectory(const Collective& collective, const std::string& run_dir, bool resume) {
    if (collective.writes_outputs()) {
      path_ = run_dir;
      return;
    }
    std::string pattern = (fs::temp_directory_path() /
                           ("clhost-rank" + std::to_string(collective.rank()) + "-XXXXXX"))
                              .string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw RunError("rank " + std::to_string(collective.rank()) +
                     ": cannot create a private directory in " +
                     fs::temp_directory_path().string());
    }
    path_ = pattern;
    scratch_ = true;
    if (!resume) return;
    for (const char* file : {"metrics.csv", "fisher.h5"}) {
      const fs::path source = fs::path(run_dir) / file;
      if (fs::exists(source)) fs::copy_file(source, fs::path(path_) / file);
    }
  }
  ~RankDirectory() {
    std::error_code ignored;
    if (scratch_) fs::remove_all(path_, ignored);
  }
  RankDirectory(const RankDirectory&) = delete;
  RankDirectory& operator=(const RankDirectory&) = delete;
  RankDirectory(RankDirectory&&) = delete;
  RankDirectory& operator=(RankDirectory&&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool scratch_ = false;
};

// Every rank starts from rank 0's parameters and buffers.
void broadcast_model(Collective& collective, Runtime& runtime) {
  if (!collective.distributed()) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> tensors;
  for (auto& parameter : runtime.model->parameters()) tensors.push_back(parameter.data());
  for (auto& buffer : runtime.model->buffers()) tensors.push_back(buffer);
  collective.broadcast(tensors);
}

// results.json's "distributed": world size, backend, and each rank's share of the training steps.
json distributed_json(Collective& collective, const RunConfig& config,
                      const Trainer::RankTally& tally, int64_t fisher_samples) {
  const int ranks = collective.world_size();
  constexpr size_t kColumns = 4;
  std::vector<double> table(kColumns * static_cast<size_t>(ranks), 0.0);
  const size_t mine = kColumns * static_cast<size_t>(collective.rank());
  table[mine] = static_cast<double>(tally.samples);
  table[mine + 1] = tally.train_seconds;
  table[mine + 2] = tally.communication_seconds;
  table[mine + 3] = static_cast<double>(fisher_samples);
  table = collective.sum(table);
  json per_rank = json::array();
  for (size_t r = 0; r < static_cast<size_t>(ranks); ++r) {
    const double samples = table[kColumns * r];
    const double seconds = table[kColumns * r + 1];
    const double communication = table[kColumns * r + 2];
    per_rank.push_back(json{{"rank", r},
                            {"train_samples", static_cast<int64_t>(samples)},
                            {"train_seconds", seconds},
                            {"samples_per_second", seconds > 0 ? samples / seconds : 0.0},
                            {"communication_seconds", communication},
                            {"communication_share", seconds > 0 ? communication / seconds : 0.0},
                            {"fisher_samples", static_cast<int64_t>(table[kColumns * r + 3])}});
  }
  return json{{"world_size", ranks},
              {"backend", collective.backend_name()},
              {"bucket_bytes", config.distributed.bucket_bytes},
              {"timeout_seconds", config.distributed.timeout_seconds},
              {"ranks", per_rank}};
}

// The pipeline's plug-ins; the warnings (given keys without effect) recorded and printed.
LoadedPipeline load_pipeline_and_warn(PluginLoader& loader, const RunConfig& config,
                                      const Collective& collective, bool quiet) {
  LoadedPipeline pipeline = load_pipeline(loader, config);
  for (const auto& key : config.given_keys) {
    if (key.rfind("distributed.", 0) == 0 && !collective.distributed()) {
      pipeline.warnings.push_back(key + " has no effect in a single-process run (it applies to " +
                                  "the ranks of --nproc or torchrun)");
    }
  }
  if (!quiet) {
    for (const auto& warning : pipeline.warnings)
      std::fprintf(stderr, "warning: %s\n", warning.c_str());
  }
  return pipeline;
}

// The pipeline; a plug-in a resume cannot find is explained when the run has no complete
// checkpoint, the only record of the --plugin-path it was started with.
LoadedPipeline load_resumed_pipeline(PluginLoader& loader, const RunConfig& config,
                                     const ResumePlan& plan, const RunOptions& options,
                                     const Collective& collective) {
  try {
    return load_pipeline_and_warn(loader, config, collective, options.quiet);
  } catch (const PluginError& e) {
    if (!options.resume || plan.checkpoint) throw;
    throw PluginError("--resume " + options.run_dir +
                      ": the run stopped before its first checkpoint was complete, so the "
                      "--plugin-path it was started with is not recorded; pass it again. " +
                      e.what());
  }
}

// --- outputs ---------------------------------------------------------------------------------

// `file`: <metric>_matrix.csv (accuracy_matrix.csv, or bits_per_byte_matrix.csv for text
// tasks), validation_<metric>_matrix.csv for data.validation's evaluations.
void write_evaluation_matrix(const std::string& run_dir, const TaskSequence& sequence,
                             const AccuracyMatrix& accuracy, const std::string& file) {
  std::ostringstream csv;
  csv << "after_task";
  for (const auto& task : sequence.tasks) csv << ',' << task.name;
  csv << '\n';
  for (size_t i = 0; i < accuracy.size(); ++i) {
    csv << sequence.tasks[i].name;
    for (double value : accuracy[i]) csv << ',' << format_double(value, 6);
    csv << '\n';
  }
  write_file_atomic((fs::path(run_dir) / file).string(), csv.str());
}

int64_t streamed_bytes_read(const TaskSequence& sequence) {
  int64_t total = 0;
  for (const auto& task : sequence.tasks) {
    if (task.train_source) total += task.train_source->bytes_read();
    if (task.test_source) total += task.test_source->bytes_read();
    if (task.validation_source) total += task.validation_source->bytes_read();
  }
  return total;
}

std::string machine_name() {
  char buffer[256] = {};
  if (::gethostname(buffer, sizeof(buffer) - 1) != 0) return "unknown";
  return buffer;
}

json optional_json(const std::optional<double>& value) {
  return value ? json(*value) : json(nullptr);
}

// Everything results.json reports, gathered by the runner.
struct RunRecord {
  const RunConfig& config;
  const TaskSequence& sequence;
  const LoadedPipeline& pipeline;
  const PluginSet& plugins;
  const TrainerState& state;
  const RunSummary& summary;
  const Runtime& runtime;
  const json& model_report;
  const MemoryPlan& memory_plan;
  const json& distributed;
  int64_t budget_bytes;
  int64_t checkpoint_bytes;
  const std::string& checkpoint_root;
};

json memory_json(const RunRecord& run) {
  return json{{"budget_bytes", run.budget_bytes},
              {"tensor_peak_bytes", std::max(run.state.tensor_peak_bytes, memory::peak_bytes())},
              {"fisher_pass_peak_bytes", run.runtime.fisher_pass_peak_bytes},
              {"out_of_memory_retries", run.state.out_of_memory_retries},
              {"samples_processed", run.state.samples_processed},
              {"samples_in_optimizer_steps", run.state.samples_in_steps},
              {"samples_redone_after_out_of_memory", run.state.samples_redone},
              {"batch_size_changes", run.state.batch_changes}};
}

json metrics_json(const ContinualMetrics& metrics, const std::string& name) {
  return json{{"average_" + name, metrics.average_accuracy},
              {"forgetting", optional_json(metrics.forgetting)},
              {"backward_transfer", optional_json(metrics.backward_transfer)},
              {"forward_transfer", optional_json(metrics.forward_transfer)}};
}

// data.validation: the same evaluations on the samples held out of each task's training data,
// and after each task the mean over the tasks seen so far (what clhost sweep compares).
json validation_json(const RunRecord& run) {
  const TrainerState& state = run.state;
  const std::string name = run.summary.metric.name;
  json samples = json::array();
  for (const auto& task : run.sequence.tasks) samples.push_back(task.validation_size());
  json seen = json::array();
  for (size_t i = 0; i < state.validation_matrix.size(); ++i) {
    double sum = 0.0;
    for (size_t j = 0; j <= i; ++j) sum += state.validation_matrix[i][j];
    seen.push_back(sum / static_cast<double>(i + 1));
  }
  json out{{"samples", samples},
           {name + "_matrix", state.validation_matrix},
           {"random_init_" + name, state.random_init_validation},
           {"average_" + name + "_seen", seen}};
  if (state.validation_matrix.size() == run.sequence.tasks.size()) {
    out["metrics"] =
        metrics_json(compute_metrics(state.validation_matrix, state.random_init_validation,
                                     run.summary.metric.higher_is_better),
                     name);
  }
  return out;
}

json results_json(const RunRecord& run) {
  const RunConfig& config = run.config;
  const ContinualMetrics& metrics = run.summary.metrics;
  const std::string name = run.summary.metric.name;
  const ProcessMemory memory = read_process_memory();
  return json{
      {"clhost_version", CLHOST_VERSION},
      {"abi_version", {CLHOST_ABI_VERSION_MAJOR, CLHOST_ABI_VERSION_MINOR}},
      {"config_file", config.source},
      {"config", json::parse(config.resolved_json)},
      {"given_keys", config.given_keys},
      {"warnings", run.pipeline.warnings},
      {"scenario",
       {{"kind", run.sequence.next_byte ? "text" : to_string(config.data.scenario)},
        {"incremental", to_string(config.data.incremental)},
        {"tasks", run.sequence.tasks.size()},
        {"streamed", run.sequence.streamed},
        {"streamed_bytes_read", streamed_bytes_read(run.sequence)},
        {"resident_data_bytes", resident_data_bytes(run.sequence)},
        {"data_setup_seconds", run.sequence.setup_seconds}}},
      {"model", run.model_report},
      {"memory_plan", json::parse(memory_plan_json(run.memory_plan))},
      {"plugins", run.plugins.reports(run.pipeline)},
      {"evaluation",
       {{"metric", name}, {"better", run.summary.metric.higher_is_better ? "higher" : "lower"}}},
      {name + "_matrix", run.summary.accuracy},
      {"random_init_" + name, run.summary.random_init_accuracy},
      {"metrics", metrics_json(metrics, name)},
      {"tasks", run.state.task_reports},
      {"optimizer_steps", run.summary.optimizer_steps},
      {"memory", memory_json(run)},
      {"wall_seconds", run.summary.wall_seconds},
      {"checkpoints",
       {{"every_steps", config.run.checkpoint_every},
        {"written", run.state.checkpoint_seconds.size()},
        {"seconds", run.state.checkpoint_seconds},
        {"last_bytes", run.checkpoint_bytes},
        {"directory", run.checkpoint_root}}},
      {"resumes", run.state.resumes},
      {"distributed", run.distributed},
      {"peak_rss_bytes", memory.peak_rss_bytes},
      {"machine",
       {{"hostname", machine_name()},
        {"hardware_threads", std::thread::hardware_concurrency()},
        {"torch_threads", at::get_num_threads()},
        {"torch_version", TORCH_VERSION},
        {"device", "cpu"}}}};
}

RunSummary summarize(const TrainerState& state, const TaskSequence& sequence,
                     const std::string& run_dir, Clock::time_point wall_start) {
  RunSummary summary;
  summary.run_dir = run_dir;
  summary.metric = sequence.next_byte ? kBitsPerByteMetric : kAccuracyMetric;
  summary.accuracy = state.accuracy_matrix;
  summary.random_init_accuracy = state.random_init_accuracy;
  summary.optimizer_steps = state.optimizer_steps;
  summary.metrics = compute_metrics(summary.accuracy, summary.random_init_accuracy,
                                    summary.metric.higher_is_better);
  if (state.validation_matrix.size() == sequence.tasks.size()) {
    summary.validation = compute_metrics(state.validation_matrix, state.random_init_validation,
                                         summary.metric.higher_is_better);
  }
  summary.wall_seconds =
      state.wall_seconds + std::chrono::duration<double>(Clock::now() - wall_start).count();
  return summary;
}

// --- the run -----------------------------------------------------------------------------------

TaskSequence prepare_data(const RunConfig& config) {
  const auto start = Clock::now();
  TaskSequence sequence =
      config.data.kind == DataKind::kText
          ? build_text_tasks(config.data, config.model.context, config.tasks, config.run.seed)
          : build_task_sequence(config.data, config.tasks, config.run.seed);
  sequence.setup_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return sequence;
}

// A resume reads the run's own config.toml, where every key is written out: the keys the user
// gave are those the run started with (trainer.json) plus those set on the resume's command line,
// so results.json's given_keys and the warnings stay those of the run.
RunConfig with_original_given_keys(const RunConfig& config, const RunOptions& options,
                                   const ResumePlan& plan) {
  RunConfig resumed = config;
  if (!plan.checkpoint || !plan.saved.contains("given_keys") ||  // older checkpoints lack it
      config.source != (fs::path(options.run_dir) / "config.toml").string()) {
    return resumed;
  }
  std::vector<std::string> given = plan.saved.at("given_keys").get<std::vector<std::string>>();
  for (const auto& key : config.command_line_keys) {
    if (std::find(given.begin(), given.end(), key) == given.end()) given.push_back(key);
  }
  resumed.given_keys = given;
  return resumed;
}

// Rank 0's files once the run has ended: the evaluation matrices, then results.json (written
// last: with status.json's "complete" it marks a finished run to `compare`, `sweep`, `serve`).
void write_run_outputs(const RunRecord& record, const std::string& run_dir) {
  const std::string matrix_file = std::string(record.summary.metric.name) + "_matrix.csv";
  write_evaluation_matrix(run_dir, record.sequence, record.summary.accuracy, matrix_file);
  const bool validation = record.config.data.validation.enabled();
  if (validation) {
    write_evaluation_matrix(run_dir, record.sequence, record.state.validation_matrix,
                            "validation_" + matrix_file);
  }
  json results = results_json(record);
  if (validation) results["validation"] = validation_json(record);
  write_file_atomic((fs::path(run_dir) / "results.json").string(), results.dump(2) + "\n");
}

RunSummary run_pipeline_in(const RunConfig& given_config, const RunOptions& given_options,
                           std::string& created_run_dir) {
  const auto wall_start = Clock::now();
  // SIGINT/SIGTERM from here on: during start-up the run stops before it writes anything; once
  // it trains, at the next step, with a checkpoint.
  const StopSignals stop_signals;
  // 1. Everything that can fail because of the user's input happens before any file is written.
  const std::unique_ptr<Collective> collective = join_ranks(given_config);
  RunOptions options = given_options;
  options.quiet = options.quiet || !collective->writes_outputs();  // rank 0 speaks for all
  check_same_config(*collective, given_config);
  ResumePlan plan = plan_resume(given_config, options);
  const RunConfig config = with_original_given_keys(given_config, options, plan);
  PluginLoader loader(PluginLoader::search_path_for(plan.cli_plugin_path, config.run.plugin_path));
  LoadedPipeline pipeline = load_resumed_pipeline(loader, config, plan, options, *collective);
  // Rank 0 names a new run's directory; every rank learns it.
  RunDirReservation reservation;
  const std::string run_dir =
      collective->share("run_dir", options.resume || !collective->writes_outputs()
                                       ? options.run_dir
                                       : choose_run_dir(config, options, reservation));
  if (plan.checkpoint) check_plugins_resumable(pipeline, plan, options);

  at::set_num_threads(config.run.threads);
  torch::manual_seed(config.run.seed);
  memory::install_counting_allocator();
  memory::keep_freed_memory(config.run.keep_freed_memory);
  const BudgetReset budget_reset;
  memory::reset_peak();
  const TaskSequence sequence = prepare_data(config);
  Runtime runtime;
  runtime.budget_bytes = config.run.memory_budget;
  runtime.collective = collective.get();
  ScriptedModel scripted;
  const json model_report = bind_model(config, options, sequence, runtime, scripted);
  const MemoryPlan memory_plan = plan_memory(config, pipeline, runtime.parameter_shapes, sequence);
  check_memory_plan(memory_plan, memory_limit(config));
  enforce_budget(config);
  const RankDirectory output(*collective, run_dir, plan.checkpoint.has_value());
  prepare_runtime(config, output.path(), runtime);
  PluginSet plugins(pipeline, config, runtime, options.quiet);
  const auto optimizer = make_optimizer(config, runtime.parameters);
  if (plan.checkpoint) restore_checkpoint(plan, plugins, runtime, *optimizer);
  broadcast_model(*collective, runtime);
  stop_if_interrupted_during_startup(options);

  // 2. The run directory, then training.
  create_run_directory(output.path());
  reservation.keep();
  if (collective->writes_outputs()) created_run_dir = run_dir;
  EventJournal journal(collective->writes_outputs() ? journal_path(run_dir) : "");
  const std::unique_ptr<MetricsLog> log =
      open_run_files(config, options, plan, output.path(), runtime, journal);
  CheckpointDirectory checkpoints(run_dir);
  TrainerState state = initial_state(plan, options);
  EventBus events(plugins, runtime, output.path(), wall_start);
  const TrainerParts parts{config,      options,   run_dir,  plan.cli_plugin_path,
                           sequence,    runtime,   scripted, *optimizer,
                           plugins,     events,    *log,     journal,
                           checkpoints, wall_start};
  Trainer trainer(parts, state,
                  ResumePoint{plan.checkpoint ? &*plan.checkpoint : nullptr, &plan.saved});
  trainer.run();

  // 3. Outputs (rank 0).
  RunSummary summary = summarize(state, sequence, run_dir, wall_start);
  summary.rank = collective->rank();
  const json distributed = collective->distributed()
                               ? distributed_json(*collective, config, trainer.rank_tally(),
                                                  runtime.fisher_samples_computed)
                               : json(nullptr);
  if (!collective->writes_outputs()) return summary;
  const RunRecord record{config,
                         sequence,
                         pipeline,
                         plugins,
                         state,
                         summary,
                         runtime,
                         model_report,
                         memory_plan,
                         distributed,
                         runtime.budget_bytes,
                         trainer.last_checkpoint_bytes(),
                         checkpoints.root()};
  write_run_outputs(record, run_dir);
  return summary;
}

// status.json, and the journal's last word on this attempt (its run_end event).
void write_status(const std::string& run_dir, const json& status) {
  write_file_atomic((fs::path(run_dir) / "status.json").string(), status.dump(2) + "\n");
  json run_end = status;
  run_end["event"] = "run_end";
  if (run_end.contains("error")) run_end["message"] = run_end["error"];
  EventJournal(journal_path(run_dir)).append(run_end);
}

}  // namespace

RunConfig load_resume_config(const std::string& run_dir, const std::string& config_path,
                             const ConfigOverrides& overrides) {
  if (!fs::is_directory(run_dir)) throw ConfigError("--resume " + run_dir + ": no such directory");
  const std::string status_path = (fs::path(run_dir) / "status.json").string();
  if (fs::exists(status_path)) {
    std::ifstream status_file(status_path);
    const json status = json::parse(status_file, nullptr, false);
    if (!status.is_discarded() && status.value("status", "") == "complete") {
      throw ConfigError("--resume " + run_dir + ": this run is complete; nothing to resume");
    }
  }
  const std::string saved_config = (fs::path(run_dir) / "config.toml").string();
  if (config_path.empty() && !fs::exists(saved_config)) {
    throw ConfigError("--resume " + run_dir +
                      ": no config.toml (not a clhost run directory, or written before resume "
                      "existed); pass --config with the run's configuration");
  }
  return load_config(config_path.empty() ? saved_config : config_path, overrides);
}

// status.json, in one place: complete, interrupted (the checkpoint is what counts) or failed
// (next to whatever the run wrote, e.g. metrics.csv up to the failure). Nothing is marked when
// the run stopped before its directory existed.
RunSummary run_pipeline(const RunConfig& config, const RunOptions& options) {
  std::string run_dir;
  try {
    RunSummary summary = run_pipeline_in(config, options, run_dir);
    // Empty: a rank other than 0 of a data-parallel run, which writes no run directory.
    if (!run_dir.empty()) write_status(run_dir, json{{"status", "complete"}});
    return summary;
  } catch (const Interrupted& e) {
    if (run_dir.empty()) throw;
    try {
      json status{{"status", "interrupted"}, {"message", e.what()}};
      if (e.signal_number() == 0) status["stopped_after_task"] = options.stop_after_task;
      write_status(run_dir, status);
    } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch): the checkpoint counts
    }
    throw;
  } catch (const std::exception& e) {
    if (memory::is_out_of_memory(e) && dynamic_cast<const RunError*>(&e) == nullptr) {
      // Outside a training step nothing is retried, except the diagonal Fisher pass, which halves
      // its samples per pass, then its blocks (fisher.cpp), before an error gets here.
      const std::string message =
          std::string("out of memory outside a training step (evaluation, ") +
          "consolidation or setup) under run.memory_budget; raise the budget or lower " +
          "train.eval_batch_size / the plug-ins' batch sizes. Allocator: " +
          std::string(e.what()).substr(0, std::string(e.what()).find('\n'));
      if (!run_dir.empty()) write_status(run_dir, json{{"status", "failed"}, {"error", message}});
      throw RunError(message);
    }
    if (!run_dir.empty()) {
      try {
        write_status(run_dir, json{{"status", "failed"}, {"error", e.what()}});
      } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch): keep the first error
      }
    }
    throw;
  }
}

}  // namespace clhost
