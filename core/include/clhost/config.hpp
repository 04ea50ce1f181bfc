// The run configuration: parsed from TOML, merged with CLI overrides, validated in full before
// anything runs. Every key, unit and default is documented in docs/config.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace clhost {

// One value of a plug-in's table, kept with where it came from so that the plug-in's schema can
// be checked later (after the plug-in is loaded) with a precise error location.
struct PluginSetting {
  std::string key;
  std::variant<bool, int64_t, double, std::string> value;
  std::string location;  // "file:line:column"
};

struct PluginSpec {
  std::string id;
  std::vector<PluginSetting> settings;
  std::string location;  // where the [[pipeline]] entry starts
};

struct TaskOverride {
  std::string name;                   // empty: default "task<K>"
  std::optional<int64_t> batch_size;  // the seed's per-task batch size
  // data.scenario = "sources": this task's own HDF5 datasets, <group>/train/x, <group>/train/y,
  // <group>/test/x, <group>/test/y in `path` (default data.path).
  std::string path;
  std::string group;
  // data.kind = "text": this task's text, files, folders or globs (gzip read as such); or, with
  // `tokens`, one HDF5 file whose dataset `tokens` holds the text as byte ids (1-D, 0..255).
  std::vector<std::string> text_paths;
  std::string tokens;
};

enum class Scenario { kSplit, kPermuted, kRotated, kSources };
enum class Incremental { kTask, kDomain, kClass };
enum class ModelKind { kMlp, kCnn, kTorchScript, kTransformer };
enum class OptimizerKind { kSgd, kAdam };

struct RunSection {
  std::string name = "run";
  uint64_t seed = 0;
  int threads = 1;
  std::string output_dir = "runs";
  std::vector<std::string> plugin_path;
  int64_t log_every = 50;           // steps between metrics.csv rows / progress lines
  int64_t memory_budget = -1;       // bytes of LibTorch CPU tensors; -1: no budget
  int64_t checkpoint_every = 1000;  // steps between checkpoints; 0: at task boundaries only
  int64_t keep_freed_memory = int64_t{1} << 30;  // bytes freed memory stays in the process
};

enum class Normalize { kUnit, kStandard, kNone };
enum class DataKind { kIdx, kHdf5, kText };

// data.validation: samples held out of each task's training data, to tune settings on (clhost
// sweep) without seeing the test set. A fraction or a count; neither: nothing held out.
struct ValidationSplit {
  double fraction = 0.0;  // of each task's training samples, in (0, 1)
  int64_t count = 0;      // samples per task
  [[nodiscard]] bool enabled() const { return fraction > 0.0 || count > 0; }
  // How many of a task's `train_size` samples are held out (at least one when enabled).
  [[nodiscard]] int64_t samples_of(int64_t train_size) const;
};

struct DataSection {
  DataKind kind = DataKind::kIdx;
  std::string dir = "/usr/share/datasets/fashion-mnist";
  // kind = "hdf5": one file, four datasets (samples [N, ...] numeric, labels [N] integer).
  std::string path;
  std::string hdf5_train_x = "/train/x";
  std::string hdf5_train_y = "/train/y";
  std::string hdf5_test_x = "/test/x";
  std::string hdf5_test_y = "/test/y";
  // IDX files, relative to dir (or absolute); each also found with a ".gz" suffix.
  std::string train_images = "train-images-idx3-ubyte";
  std::string train_labels = "train-labels-idx1-ubyte";
  std::string test_images = "t10k-images-idx3-ubyte";
  std::string test_labels = "t10k-labels-idx1-ubyte";
  int64_t num_classes = 10;  // labels are 0..num_classes-1
  Scenario scenario = Scenario::kSplit;
  int64_t num_tasks = 5;
  Incremental incremental = Incremental::kTask;
  // Split: the classes of each task. Empty: num_tasks equal chunks of the class order.
  std::vector<std::vector<int64_t>> task_classes;
  bool shuffle_classes = false;      // class_order = "shuffled": seeded by run.seed
  double rotation_step_degrees = 0;  // rotated: task k (0-based) is turned by k * this, degrees
  Normalize normalize = Normalize::kUnit;
  int64_t train_samples_per_task = 0;  // 0: all
  int64_t test_samples_per_task = 0;   // 0: all
  // HDF5 samples larger than this (as float32) stay in the file and are read batch by batch.
  int64_t max_resident_bytes = int64_t{4} << 30;
  int64_t stream_cache_bytes = int64_t{64} << 20;  // HDF5 chunk cache per streamed dataset
  // kind = "text": one task per named language (Debian's fortunes packages), or per [[tasks]]
  // entry with its own path; test_fraction of each task's documents is held out (seeded).
  std::vector<std::string> languages;
  std::string fortunes_dir = "/usr/share/games/fortunes";
  double test_fraction = 0.1;
  ValidationSplit validation;
};

struct ModelSection {
  ModelKind kind = ModelKind::kMlp;
  std::vector<int64_t> hidden = {400, 400};  // mlp, cnn
  std::string path;                          // torchscript: the torch.jit.save archive
  std::vector<int64_t> input_shape;          // torchscript: one sample's shape; empty: flat
  // transformer: decoder-only, byte vocabulary (256), pre-LayerNorm blocks.
  int64_t layers = 4;
  int64_t heads = 4;
  int64_t d_model = 128;
  int64_t context = 128;  // bytes per window (and learned positions)
  int64_t mlp_ratio = 4;
  double dropout = 0.0;
  bool tied_head = false;  // the output matrix is the byte embedding's
};

struct TrainSection {
  OptimizerKind optimizer = OptimizerKind::kAdam;
  double lr = 1e-3;
  double momentum = 0.0;  // SGD only
  int64_t batch_size = 128;
  int64_t iterations = 2000;  // optimizer steps per task; ignored when epochs > 0
  int64_t epochs = 0;
  int64_t eval_batch_size = 1000;
  int64_t checkpoint_segments = 0;  // activation checkpointing: 0/1 off, N: N recomputed segments
};

// The seed's [fisher_computation] keys; consumed by Fisher-based regularizers.
struct FisherSection {
  bool use_memory_efficient = true;
  int64_t block_size = 1000000;
  bool use_compression = true;
  int64_t compression_level = 1;
  double compression_ratio = 0.1;
  // The store's defaults, chosen on a 1 GiB Fisher (bench_store): against the seed's gzip-9 fp32,
  // 80x faster to save, 9x faster to load, 0.41x the file.
  std::string codec = "blosc-zstd";  // Fisher store codec (see docs/config.md)
  std::string store_dtype = "bf16";  // on-disk dtype of stored Fisher blocks
};

// [distributed]: how the processes of a data-parallel run talk (docs/distributed.md). The number
// of processes comes from the launch (--nproc, torchrun), not from the config.
enum class CollectiveBackend { kGloo };
struct DistributedSection {
  CollectiveBackend backend = CollectiveBackend::kGloo;
  // A collective (or the rendezvous) that waits longer than this fails the run, naming the rank.
  double timeout_seconds = 300.0;
  // Gradients are all-reduced in buckets of about this many bytes. 1 MiB: on loopback Gloo
  // all-reduces 22 MB of gradients in 20 ms in 1 MiB buckets, 43 ms in DDP's 25 MiB (docs).
  int64_t bucket_bytes = int64_t{1} << 20;
};

struct RunConfig {
  std::string source;  // the config file path
  RunSection run;
  DistributedSection distributed;
  DataSection data;
  ModelSection model;
  TrainSection train;
  FisherSection fisher;
  std::vector<PluginSpec> pipeline;
  std::vector<TaskOverride> tasks;
  bool profile_memory = false;
  bool dynamic_batch_size = false;
  std::vector<std::string> cli_plugin_path;  // --plugin-path, searched before everything else
  // Host keys the user gave (file or --set) as dotted paths, "train.lr"; the rest are defaults.
  std::vector<std::string> given_keys;
  // The host keys this command line set (--set, the switches), a subset of given_keys: a resume
  // of the run's own config.toml counts only these and the original run's given keys as given.
  std::vector<std::string> command_line_keys;
  // Settings that were given but change nothing in this run where that is harmless (e.g. a
  // fisher_computation key with no plug-in that computes a Fisher); printed and recorded.
  std::vector<std::string> warnings;
  std::string resolved_json;  // the whole validated configuration, as JSON, for results.json
  std::string resolved_toml;  // the same as a config file that load_config reads back
};

// Command-line inputs that change the configuration.
struct ConfigOverrides {
  std::vector<std::string> set;  // "key.path=value" (value in TOML syntax)
  // --plugins: replaces the pipeline's list (applied before `set`, so pipeline.N counts in this
  // order; --set ID.KEY=... names an entry by its plug-in id).
  std::optional<std::vector<std::string>> plugins;
  std::vector<std::string> plugin_path;  // --plugin-path entries, searched first
  bool use_memory_efficient = false;     // --use-memory-efficient
  bool profile_memory = false;
  bool dynamic_batch_size = false;
  std::string memory_budget;  // --memory-budget, e.g. "1.5GiB"
};

// Parses and validates; throws ConfigError("file:line:column: key: reason").
RunConfig load_config(const std::string& path, const ConfigOverrides& overrides = {});

// Checks that the files a run reads exist: the IDX or HDF5 data (and each task's source file),
// a TorchScript model. Throws ConfigError naming the key and the path (clhost validate).
void check_input_files(const RunConfig& config);

// Checks that `dir` can become a new run directory: absent or empty, and no part of its path is a
// file. Throws ConfigError ("--output DIR: ...").
void check_new_run_dir(const std::string& dir);

// A key whose resolved value differs between two configurations (clhost run --resume).
struct ConfigChange {
  std::string key;     // "train.lr", "pipeline[0].lambda"
  std::string before;  // the value as JSON text; "null" when the key is absent
  std::string after;
  bool safe_on_resume;  // one of resume_safe_keys()
};
// Compares two resolved configurations (RunConfig::resolved_json).
std::vector<ConfigChange> config_changes(const std::string& before_json,
                                         const std::string& after_json);
// The keys a resumed run may change with --allow-config-change: none changes what is computed.
const std::vector<std::string>& resume_safe_keys();

// The languages data.languages can name: Debian's fortunes, fortunes-de, -es, -it, -ru, -pl.
const std::vector<std::string>& fortune_languages();

// Names of enum values as written in TOML.
const char* to_string(Scenario value);
const char* to_string(Incremental value);
const char* to_string(ModelKind value);
const char* to_string(OptimizerKind value);

}  // namespace clhost
