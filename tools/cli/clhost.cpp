// clhost — the command-line entry point. Every command is documented in docs/cli.md.
// Exit codes: 0 success, 1 run failed, 2 bad configuration or usage, 3 plug-in problem.
#include <algorithm>
#include <boost/program_options.hpp>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "clhost/fisher_store.hpp"
#include "clhost/memory_plan.hpp"
#include "clhost/plugin_loader.hpp"
#include "clhost/runner.hpp"
#include "cli/launch.hpp"
#include "ewc_state.hpp"
#include "new_plugin/plugin_templates.hpp"
#include "report/compare.hpp"
#include "report/report.hpp"
#include "report/sweep.hpp"
#include "serve.hpp"

namespace po = boost::program_options;

namespace {

constexpr int kExitRunFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitPlugin = 3;

const char* const kTopHelp = R"(clhost — memory-efficient continual learning with plug-ins

usage: clhost <command> [options]

commands:
  run        train over a task sequence described by a TOML config
  validate   check a config (and its plug-ins' settings) without running
  plugins    list the plug-ins found, or show one: clhost plugins list | show ID
  fisher     inspect a Fisher store: clhost fisher inspect FILE.h5
  memory-plan  a run's memory before it runs: clhost memory-plan --config FILE [--params 7e9];
               EWC state per mode: clhost memory-plan --params 7e9 --tasks 5
  compare    A/B: two arms over paired seeds, with statistics:
             clhost compare --config C.toml --a 'plugins=' --b 'plugins=ewc' --seeds 5
  report     a self-contained HTML report of one run: clhost report RUN_DIR
  sweep      tune settings on validation samples held out of the training data:
             clhost sweep --config C.toml --grid 'pipeline.0.lambda=[1,10,100]' --seeds 3
  serve      the web UI to launch, watch, stop, resume and compare runs:
             clhost serve [--port 8080] [--runs runs] (docs/web-ui.md)
  new-plugin   write a plug-in project that builds against the installed SDK:
             clhost new-plugin --kind regularizer --name my_reg [--lang c|cxx] [--dir DIR]

options:
  --version  print the clhost and plug-in ABI versions
  --help     this text; `clhost <command> --help` for a command's options
)";

std::vector<std::string> split_commas(const std::vector<std::string>& items) {
  std::vector<std::string> out;
  for (const auto& item : items) {
    std::stringstream stream(item);
    for (std::string part; std::getline(stream, part, ',');) {
      if (!part.empty()) out.push_back(part);
    }
  }
  return out;
}

// Steps between checkpoints: a run option, accepted by validate too (it checks the value).
void add_checkpoint_option(po::options_description& options) {
  options.add_options()(
      "checkpoint-every", po::value<int64_t>(),
      "steps between checkpoints (sets run.checkpoint_every; 0: at task boundaries only)");
}

po::options_description config_options(bool config_required = true) {
  po::options_description options("options");
  auto* config_value = po::value<std::string>();
  if (config_required) config_value->required();
  options.add_options()("help,h", "show this help")("config,c", config_value,
                                                    "TOML configuration file")(
      "plugins", po::value<std::vector<std::string>>()->composing(),
      "comma-separated plug-in ids; replaces the config's [[pipeline]] list (settings of "
      "listed ids are kept; --set pipeline.N.KEY counts in this order, --set ID.KEY names one)")(
      "plugin-path", po::value<std::vector<std::string>>()->composing(),
      "directory searched for clhost_<id>.so before $CLHOST_PLUGIN_PATH and run.plugin_path")(
      "set", po::value<std::vector<std::string>>()->composing(),
      "override a config key: --set train.lr=0.01 (value in TOML syntax; repeatable)")(
      "use-memory-efficient", po::bool_switch(),
      "set fisher_computation.use_memory_efficient = true; adds the ewc plug-in unless ewc or "
      "lowrank_fisher is in the pipeline")("profile-memory", po::bool_switch(),
                                           "add the memory_profiler plug-in to the pipeline")(
      "dynamic-batch-size", po::bool_switch(), "add the dynamic batch-policy plug-in")(
      "memory-budget", po::value<std::string>(),
      "budget for LibTorch CPU tensor memory, e.g. 1.5GiB (sets run.memory_budget)");
  return options;
}

clhost::ConfigOverrides overrides_from(const po::variables_map& vm) {
  clhost::ConfigOverrides overrides;
  if (vm.count("set")) overrides.set = vm["set"].as<std::vector<std::string>>();
  if (vm.count("plugins"))
    overrides.plugins = split_commas(vm["plugins"].as<std::vector<std::string>>());
  if (vm.count("plugin-path"))
    overrides.plugin_path = vm["plugin-path"].as<std::vector<std::string>>();
  overrides.use_memory_efficient = vm["use-memory-efficient"].as<bool>();
  overrides.profile_memory = vm["profile-memory"].as<bool>();
  overrides.dynamic_batch_size = vm["dynamic-batch-size"].as<bool>();
  if (vm.count("memory-budget")) overrides.memory_budget = vm["memory-budget"].as<std::string>();
  if (vm.count("checkpoint-every")) {
    overrides.set.push_back("run.checkpoint_every=" +
                            std::to_string(vm["checkpoint-every"].as<int64_t>()));
  }
  return overrides;
}

// `args` without `option VALUE` / `option=VALUE`.
std::vector<std::string> without_option(const std::vector<std::string>& args,
                                        const std::string& option) {
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == option) {
      ++i;
      continue;
    }
    if (args[i].rfind(option + "=", 0) == 0) continue;
    out.push_back(args[i]);
  }
  return out;
}

// Parses a subcommand's options; returns false when help was printed.
bool parse(const std::vector<std::string>& args, const po::options_description& options,
           const char* usage, po::variables_map& vm) {
  po::store(po::command_line_parser(args).options(options).run(), vm);
  if (vm.count("help")) {
    std::cout << usage << "\n\n" << options << '\n';
    return false;
  }
  po::notify(vm);
  return true;
}

// What `clhost run` prints at the end: the evaluation matrix and the continual-learning metrics.
void print_run_summary(const clhost::RunSummary& summary) {
  const char* metric = summary.metric.label;
  std::printf("\n%s matrix (row: after training task i; column: task j; %s is better)\n", metric,
              summary.metric.higher_is_better ? "higher" : "lower");
  for (const auto& row : summary.accuracy) {
    for (double value : row) std::printf(" %.4f", value);
    std::printf("\n");
  }
  const auto& metrics = summary.metrics;
  std::string average = std::string("average ") + metric;
  average.resize(std::max<size_t>(average.size() + 1, 19), ' ');
  std::printf("%s%.4f\n", average.c_str(), metrics.average_accuracy);
  if (summary.validation) {
    std::printf("  on validation    %.4f (data.validation, held out of the training data)\n",
                summary.validation->average_accuracy);
  }
  if (metrics.forgetting) std::printf("forgetting         %.4f\n", *metrics.forgetting);
  if (metrics.backward_transfer)
    std::printf("backward transfer  %+.4f\n", *metrics.backward_transfer);
  if (metrics.forward_transfer)
    std::printf("forward transfer   %+.4f\n", *metrics.forward_transfer);
  std::printf("wall time          %.1f s (%lld optimizer steps, %.1f steps/s)\n",
              summary.wall_seconds, static_cast<long long>(summary.optimizer_steps),
              static_cast<double>(summary.optimizer_steps) / summary.wall_seconds);
  std::printf("results            %s/results.json\n", summary.run_dir.c_str());
}

int command_run(const std::vector<std::string>& args) {
  po::options_description options = config_options(false);
  add_checkpoint_option(options);
  options.add_options()("output,o", po::value<std::string>(),
                        "exact run directory (must be new or empty)")("quiet,q", po::bool_switch(),
                                                                      "no progress output")(
      "resume", po::value<std::string>(),
      "continue RUN_DIR from its latest checkpoint (config: RUN_DIR/config.toml unless --config)")(
      "allow-config-change", po::bool_switch(),
      "with --resume: accept changes to keys that are safe to change (docs/cli.md)")(
      "resume-anyway", po::bool_switch(),
      "with --resume: continue even if a plug-in's state was not saved (it restarts fresh)")(
      "nproc", po::value<int>(),
      "data-parallel: run N processes on this machine (docs/distributed.md)")(
      "stop-after-task", po::value<int64_t>(),
      "stop once task K (1-based) has ended and its checkpoint is written; continue with "
      "--resume (exit 0)");
  po::variables_map vm;
  if (!parse(args, options,
             "usage: clhost run --config FILE [options]\n       clhost run --resume RUN_DIR "
             "[--config FILE] [options]",
             vm)) {
    return 0;
  }
  clhost::RunOptions run_options;
  run_options.quiet = vm["quiet"].as<bool>();
  if (vm.count("stop-after-task")) {
    run_options.stop_after_task = vm["stop-after-task"].as<int64_t>();
    if (run_options.stop_after_task < 1) throw po::error("--stop-after-task: a task, 1 or more");
  }
  clhost::RunConfig config;
  if (vm.count("resume")) {
    if (vm.count("output")) throw po::error("--output cannot be combined with --resume");
    run_options.resume = true;
    run_options.run_dir = vm["resume"].as<std::string>();
    run_options.allow_config_change = vm["allow-config-change"].as<bool>();
    run_options.resume_anyway = vm["resume-anyway"].as<bool>();
    config = clhost::load_resume_config(run_options.run_dir,
                                        vm.count("config") ? vm["config"].as<std::string>() : "",
                                        overrides_from(vm));
  } else {
    if (!vm.count("config")) throw po::error("the option '--config' is required (or --resume)");
    if (vm["allow-config-change"].as<bool>() || vm["resume-anyway"].as<bool>()) {
      throw po::error("--allow-config-change and --resume-anyway go with --resume");
    }
    config = clhost::load_config(vm["config"].as<std::string>(), overrides_from(vm));
    if (vm.count("output")) {
      run_options.run_dir = vm["output"].as<std::string>();
      clhost::check_new_run_dir(run_options.run_dir);
    }
  }
  if (vm.count("nproc")) {
    const int nproc = vm["nproc"].as<int>();
    if (nproc < 1 || nproc > 256) throw po::error("--nproc must be between 1 and 256");
    if (std::getenv("WORLD_SIZE") != nullptr) {
      throw po::error(
          "--nproc inside a launched rank (WORLD_SIZE is set, e.g. by torchrun): use "
          "one launcher");
    }
    if (nproc > 1) {
      return clhost::tools::run_local_ranks(nproc, without_option(args, "--nproc"),
                                            std::min(config.distributed.timeout_seconds, 30.0));
    }
  }
  const clhost::RunSummary summary = clhost::run_pipeline(config, run_options);
  if (summary.rank != 0) return 0;  // rank 0 reports for the run

  print_run_summary(summary);
  return 0;
}

int command_validate(const std::vector<std::string>& args) {
  po::options_description options = config_options();
  add_checkpoint_option(options);
  po::variables_map vm;
  if (!parse(args, options, "usage: clhost validate --config FILE [options]", vm)) return 0;
  const clhost::RunConfig config =
      clhost::load_config(vm["config"].as<std::string>(), overrides_from(vm));
  clhost::check_input_files(config);
  clhost::PluginLoader loader(
      clhost::PluginLoader::search_path_for(config.cli_plugin_path, config.run.plugin_path));
  const clhost::LoadedPipeline pipeline = clhost::load_pipeline(loader, config);
  for (const auto& warning : pipeline.warnings)
    std::fprintf(stderr, "warning: %s\n", warning.c_str());
  // The run would refuse a plan that does not fit; so does its check.
  clhost::check_memory_plan(clhost::plan_memory_for_config(config, pipeline),
                            clhost::memory_limit(config));
  std::printf("%s: valid (%zu plug-in%s in the pipeline; its memory plan fits)\n",
              config.source.c_str(), config.pipeline.size(),
              config.pipeline.size() == 1 ? "" : "s");
  return 0;
}

// `clhost plugins show ID`: the descriptor, whether it resumes, its config keys.
void show_plugin(const clhost::LoadedPlugin& plugin) {
  const auto* descriptor = plugin.descriptor;
  std::printf(
      "id           %s\nkind         %s\nversion      %s\nvendor       %s\n"
      "abi          %u.%u\npath         %s\nuses LibTorch %s\ndescription  %s\n",
      descriptor->id, clhost::kind_name(descriptor->kind), descriptor->version,
      descriptor->vendor ? descriptor->vendor : "-", plugin.entry->abi_version.major,
      plugin.entry->abi_version.minor, plugin.path.c_str(),
      plugin.entry->fingerprint ? "yes" : "no",
      descriptor->description ? descriptor->description : "");
  const bool resumable = plugin.entry->abi_version.minor >= 3 &&
                         plugin.entry->get_interface(CLHOST_INTERFACE_STATE_V1) != nullptr;
  std::printf("resumable    %s\n",
              resumable ? "yes (clhost.state/1: --resume continues its state)"
                        : "no (no clhost.state/1: --resume refuses unless --resume-anyway, "
                          "which restarts it fresh)");
  std::printf("\nconfig keys (in its [[pipeline]] table):\n");
  if (descriptor->config_schema_count == 0) std::printf("  (none)\n");
  for (uint32_t i = 0; i < descriptor->config_schema_count; ++i) {
    const auto& key = descriptor->config_schema[i];
    std::printf("  %-18s %-7s default %-12s %s", key.key, clhost::config_type_name(key.type),
                key.default_value ? key.default_value : "-", key.doc ? key.doc : "");
    if (key.has_range) std::printf(" [range %g .. %g]", key.min_value, key.max_value);
    if (key.choices) std::printf(" [one of %s]", key.choices);
    std::printf("\n");
  }
}

int command_plugins(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("help,h", "show this help")(
      "plugin-path", po::value<std::vector<std::string>>()->composing(), "extra plug-in directory")(
      "action", po::value<std::string>(), "list | show")("id", po::value<std::string>(),
                                                         "plug-in id for show");
  po::positional_options_description positional;
  positional.add("action", 1).add("id", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(options).positional(positional).run(), vm);
  if (vm.count("help") || !vm.count("action")) {
    std::cout << "usage: clhost plugins list | show ID [--plugin-path DIR]\n\n" << options << '\n';
    return vm.count("help") ? 0 : kExitUsage;
  }
  po::notify(vm);
  std::vector<std::string> cli_path;
  if (vm.count("plugin-path")) cli_path = vm["plugin-path"].as<std::vector<std::string>>();
  clhost::PluginLoader loader(clhost::PluginLoader::search_path_for(cli_path, {}));
  const std::string action = vm["action"].as<std::string>();
  if (action == "list") {
    const auto candidates = loader.discover();
    std::printf("%-18s %-13s %-9s %s\n", "ID", "KIND", "VERSION", "PATH");
    for (const auto& candidate : candidates) {
      if (candidate.plugin != nullptr) {
        std::printf("%-18s %-13s %-9s %s%s\n", candidate.id.c_str(),
                    clhost::kind_name(candidate.plugin->descriptor->kind),
                    candidate.plugin->descriptor->version, candidate.path.c_str(),
                    candidate.shadowed ? "  (shadowed by an earlier directory)" : "");
      } else {
        std::printf("%-18s %-13s %-9s %s\n    error: %s\n", candidate.id.c_str(), "-", "-",
                    candidate.path.c_str(), candidate.error.c_str());
      }
    }
    std::printf("\nsearched:");
    for (const auto& dir : loader.search_path()) std::printf(" %s", dir.c_str());
    std::printf("\n");
    return 0;
  }
  if (action == "show") {
    if (!vm.count("id")) {
      std::fprintf(stderr, "clhost plugins show: missing plug-in id\n");
      return kExitUsage;
    }
    show_plugin(loader.load(vm["id"].as<std::string>()));
    return 0;
  }
  std::fprintf(stderr, "clhost plugins: unknown action '%s' (list | show ID)\n", action.c_str());
  return kExitUsage;
}

std::string human_bytes(double bytes, bool count = false) {
  const char* byte_units[] = {"B", "KB", "MB", "GB", "TB", "PB"};
  const char* count_units[] = {"", "thousand", "million", "billion", "trillion", "quadrillion"};
  const char* const* units = count ? count_units : byte_units;
  int unit = 0;
  while (bytes >= 1000.0 && unit < 5) {
    bytes /= 1000.0;
    ++unit;
  }
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), unit == 0 ? "%.0f %s" : "%.2f %s", bytes, units[unit]);
  return buffer;
}

int command_fisher(const std::vector<std::string>& args) {
  if (args.size() != 2 || args[0] != "inspect") {
    if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
      std::printf("usage: clhost fisher inspect FILE.h5\n");
      return 0;
    }
    std::fprintf(stderr, "usage: clhost fisher inspect FILE.h5\n");
    return kExitUsage;
  }
  const clhost::StoreSummary summary = clhost::FisherStore::inspect(args[1]);
  int64_t parameters = 0;
  for (const auto& parameter : summary.model) parameters += parameter.numel();
  std::printf(
      "%s\n  format %s, written by clhost %s, %s on disk\n  model: %zu tensors, %lld parameters\n",
      summary.path.c_str(), summary.format.c_str(), summary.clhost_version.c_str(),
      human_bytes(static_cast<double>(summary.file_bytes)).c_str(), summary.model.size(),
      static_cast<long long>(parameters));
  for (const auto& group : summary.groups) {
    int64_t raw = 0;
    int64_t stored = 0;
    for (const auto& dataset : group.datasets) {
      raw += dataset.raw_bytes;
      stored += dataset.stored_bytes;
    }
    std::printf("\ngroup %s: %s\n  %-22s %-14s %-6s %-10s %12s %12s %7s\n", group.name.c_str(),
                group.description.c_str(), "dataset", "shape", "dtype", "codec", "raw", "stored",
                "ratio");
    for (const auto& dataset : group.datasets) {
      std::string shape = "[";
      for (size_t i = 0; i < dataset.shape.size(); ++i)
        shape += (i ? "," : "") + std::to_string(dataset.shape[i]);
      shape += "]";
      if (dataset.vectors > 1) shape = std::to_string(dataset.vectors) + "x" + shape;
      std::printf("  %-22s %-14s %-6s %-10s %12s %12s %6.2fx\n", dataset.name.c_str(),
                  shape.c_str(), dataset.dtype.c_str(), dataset.codec.c_str(),
                  human_bytes(static_cast<double>(dataset.raw_bytes)).c_str(),
                  human_bytes(static_cast<double>(dataset.stored_bytes)).c_str(),
                  dataset.stored_bytes > 0 ? static_cast<double>(dataset.raw_bytes) /
                                                 static_cast<double>(dataset.stored_bytes)
                                           : 0.0);
    }
    std::printf("  %-22s %-14s %-6s %-10s %12s %12s %6.2fx\n", "total", "", "", "",
                human_bytes(static_cast<double>(raw)).c_str(),
                human_bytes(static_cast<double>(stored)).c_str(),
                stored > 0 ? static_cast<double>(raw) / static_cast<double>(stored) : 0.0);
  }
  return 0;
}

// The EWC state per layout for a model given only by its parameter count.
void print_ewc_layouts(double params_value, int64_t tasks) {
  const auto params = static_cast<int64_t>(params_value);
  using clhost::ewc::StateLayout;
  std::printf("EWC state held in memory for %s parameters after %lld task%s\n\n",
              human_bytes(params_value, true).c_str(), static_cast<long long>(tasks),
              tasks == 1 ? "" : "s");
  std::printf("%-50s %14s %12s\n", "mode (ewc mode / use_memory_efficient)", "bytes",
              "bytes/param");
  const std::pair<const char*, StateLayout> rows[] = {
      {"separate, fp32 (use_memory_efficient=false)", StateLayout::kSeparate},
      {"online, fp32 (the seed's 'normal')", StateLayout::kOnline},
      {"efficient, fp32 merged (state_dtype=fp32)", StateLayout::kMergedFp32},
      {"efficient, int8 Fisher + fp16 anchor (int8_fp16)", StateLayout::kMergedInt8Fp16},
      {"efficient, int8 merged (state_dtype=int8)", StateLayout::kMergedInt8},
      {"efficient, 4-bit Fisher + int8 anchor (default)", StateLayout::kMergedInt4Int8}};
  for (const auto& [label, layout] : rows) {
    const auto bytes = static_cast<double>(clhost::ewc::state_bytes(params, tasks, layout));
    std::printf("%-50s %14s %12.3f\n", label, human_bytes(bytes).c_str(), bytes / params_value);
  }
  std::printf(
      "\n(decimal units; the Fisher pass adds one block of fisher_computation.block_size "
      "floats)\n");
}

int command_memory_plan(const std::vector<std::string>& args) {
  po::options_description options = config_options(false);
  options.add_options()("params", po::value<double>(),
                        "number of model parameters (e.g. 7e9); with --config, the plan's "
                        "parts that grow with the model extrapolated to this size")(
      "tasks", po::value<int64_t>()->default_value(5),
      "number of tasks consolidated (without --config)");
  po::variables_map vm;
  if (!parse(args, options,
             "usage: clhost memory-plan --config FILE [--params N] [options]\n"
             "       clhost memory-plan --params N [--tasks T]",
             vm)) {
    return 0;
  }
  const double params_value = vm.count("params") ? vm["params"].as<double>() : 0.0;
  const int64_t tasks = vm["tasks"].as<int64_t>();
  if ((vm.count("params") && (!(params_value >= 1.0) || params_value > 1e15)) || tasks < 1 ||
      tasks > 100000 || (!vm.count("params") && !vm.count("config"))) {
    std::fprintf(stderr,
                 "clhost memory-plan: give --config FILE or --params N; --params must be in "
                 "[1, 1e15] and --tasks in [1, 100000]\n");
    return kExitUsage;
  }
  if (!vm.count("config")) {
    print_ewc_layouts(params_value, tasks);
    return 0;
  }
  if (!vm["tasks"].defaulted()) {
    std::fprintf(stderr,
                 "clhost memory-plan: --tasks applies without --config only (a config's tasks "
                 "come from its data)\n");
    return kExitUsage;
  }
  const clhost::RunConfig config =
      clhost::load_config(vm["config"].as<std::string>(), overrides_from(vm));
  clhost::check_input_files(config);
  clhost::PluginLoader loader(
      clhost::PluginLoader::search_path_for(config.cli_plugin_path, config.run.plugin_path));
  const clhost::MemoryPlan plan =
      clhost::plan_memory_for_config(config, clhost::load_pipeline(loader, config));
  std::printf("%s", clhost::format_memory_plan(plan, params_value).c_str());
  const clhost::MemoryLimit limit = clhost::memory_limit(config);
  if (limit.bytes >= 0) {
    std::printf("%s: %s; %s\n", limit.name.c_str(),
                human_bytes(static_cast<double>(limit.bytes)).c_str(),
                clhost::needed_bytes(plan, limit) <= limit.bytes
                    ? "the plan fits"
                    : "the plan does not fit: clhost run refuses it");
  }
  return 0;
}

// The prefix this clhost is installed under (PREFIX/bin/clhost next to
// PREFIX/lib[/<arch>]/cmake/clhost), or empty when it runs from a build tree.
std::string installed_prefix() {
  std::error_code error;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return "";
  const std::filesystem::path prefix = exe.parent_path().parent_path();
  const auto has_package = [&](const std::filesystem::path& lib) {
    return std::filesystem::exists(lib / "cmake" / "clhost" / "clhostConfig.cmake", error);
  };
  if (has_package(prefix / "lib") || has_package(prefix / "lib64")) return prefix.string();
  for (const auto& item : std::filesystem::directory_iterator(prefix / "lib", error)) {
    if (has_package(item.path())) return prefix.string();  // lib/<multiarch triplet>
  }
  return "";
}

int command_new_plugin(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("help,h", "show this help")("kind", po::value<std::string>()->required(),
                                                    "regularizer | batch_policy | profiler")(
      "name", po::value<std::string>()->required(),
      "the plug-in id, [a-z0-9_]+ (the library becomes clhost_<name>.so)")(
      "lang", po::value<std::string>()->default_value("cxx"),
      "c (C11, the raw ABI) | cxx (C++17, the SDK's helper classes)")(
      "dir", po::value<std::string>()->default_value(""),
      "directory to create (default: ./<name>); must not exist or be empty");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(options).run(), vm);
  if (vm.count("help")) {
    std::cout << "usage: clhost new-plugin --kind KIND --name ID [--lang c|cxx] [--dir DIR]\n\n"
              << options << '\n';
    return 0;
  }
  po::notify(vm);
  const std::string prefix = installed_prefix();
  const clhost::tools::NewPluginRequest request{
      vm["kind"].as<std::string>(), vm["name"].as<std::string>(), vm["lang"].as<std::string>(),
      vm["dir"].as<std::string>(), prefix};
  const auto files = clhost::tools::write_plugin_project(request);
  for (const auto& file : files) std::printf("wrote %s\n", file.c_str());
  const std::string directory = files.front().substr(0, files.front().rfind('/'));
  std::printf(
      "\nbuild and test it against this clhost (installed under its prefix):\n"
      "  cmake -S %s -B %s/build -DCMAKE_PREFIX_PATH=%s\n"
      "  cmake --build %s/build && ctest --test-dir %s/build\n"
      "then: clhost run --config <your.toml> --plugin-path %s/build --plugins %s\n",
      directory.c_str(), directory.c_str(),
      prefix.empty() ? "<where clhost is installed>" : prefix.c_str(), directory.c_str(),
      directory.c_str(), directory.c_str(), request.name.c_str());
  if (prefix.empty()) {
    std::printf(
        "(this clhost runs from its build tree: install it first, cmake --install BUILD "
        "--prefix DIR, and use DIR)\n");
  }
  return 0;
}

// The options of the commands that run child clhost runs (compare, sweep), after --seeds:
// explicit seeds, jobs, the output directory (holding `outputs`), plug-in path, quiet, force.
void add_child_run_options(po::options_description& options, const std::string& outputs,
                           const std::string& command) {
  options.add_options()("seed-list", po::value<std::vector<int64_t>>()->multitoken(),
                        "explicit seeds instead of --seeds")(
      "jobs,j", po::value<int>()->default_value(1), "runs in parallel (processes)")(
      "output,o", po::value<std::string>()->default_value(""),
      ("directory for " + outputs + " (default runs/" + command +
       "_<time>); rerunning with the same directory reuses finished runs that ran the same "
       "settings")
          .c_str())("plugin-path", po::value<std::vector<std::string>>()->composing(),
                    "extra plug-in directory for every run")("quiet,q", po::bool_switch(),
                                                             "no progress lines")(
      "force", po::bool_switch(),
      "rerun finished runs in --output whose settings differ (default: refuse)");
}

// A directory under runs/ named after the command and the time, for --output's default.
std::string timestamped_dir(const std::string& command) {
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  std::strftime(stamp, sizeof(stamp), "%Y%m%d_%H%M%S", &local);
  return "runs/" + command + "_" + stamp;
}

// --seeds N (0..N-1) or --seed-list.
std::vector<int64_t> seeds_of(const po::variables_map& vm) {
  if (vm.count("seed-list")) return vm["seed-list"].as<std::vector<int64_t>>();
  const int64_t count = vm["seeds"].as<int64_t>();
  if (count < 1 || count > 1000) throw clhost::ConfigError("--seeds: between 1 and 1000");
  std::vector<int64_t> seeds;
  for (int64_t seed = 0; seed < count; ++seed) seeds.push_back(seed);
  return seeds;
}

// --jobs, checked against the machine.
int jobs_of(const po::variables_map& vm) {
  const int jobs = vm["jobs"].as<int>();
  if (jobs < 1) throw clhost::ConfigError("--jobs: at least 1");
  const unsigned cores = std::thread::hardware_concurrency();
  if (cores > 0 && static_cast<unsigned>(jobs) > cores) {
    std::fprintf(stderr,
                 "warning: --jobs %d is more than the %u hardware threads: the runs compete for "
                 "cores, so the wall-time and samples/s rows measure that contention\n",
                 jobs, cores);
  }
  return jobs;
}

int command_compare(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("help,h", "show this help")(
      "config,c", po::value<std::string>()->default_value(""),
      "base TOML config the arms' overrides apply to")(
      "a", po::value<std::string>()->required(),
      "arm A: a TOML file, or ';'-separated overrides of --config: 'plugins=ewc' "
      "(replaces the pipeline; 'plugins=' for none), 'train.lr=5e-4' (as --set)")(
      "b", po::value<std::string>()->required(), "arm B, the same way")(
      "a-name", po::value<std::string>()->default_value(""), "label of arm A (default: its spec)")(
      "b-name", po::value<std::string>()->default_value(""), "label of arm B")(
      "seeds", po::value<int64_t>()->default_value(5),
      "number of paired seeds (run.seed = 0..N-1 in both arms)");
  add_child_run_options(options, "the arms' runs, compare.json and compare.html", "compare");
  po::variables_map vm;
  if (!parse(args, options,
             "usage: clhost compare --config BASE.toml --a SPEC --b SPEC [--seeds N] [--jobs J]",
             vm)) {
    return 0;
  }
  clhost::tools::CompareOptions compare;
  const std::string base = vm["config"].as<std::string>();
  if (!base.empty()) (void)clhost::load_config(base);  // a broken base fails here, once
  compare.arms.push_back(clhost::tools::parse_arm_spec(vm["a"].as<std::string>(), base,
                                                       vm["a-name"].as<std::string>()));
  compare.arms.push_back(clhost::tools::parse_arm_spec(vm["b"].as<std::string>(), base,
                                                       vm["b-name"].as<std::string>()));
  compare.seeds = seeds_of(vm);
  compare.output_dir = vm["output"].as<std::string>();
  if (compare.output_dir.empty()) compare.output_dir = timestamped_dir("compare");
  if (vm.count("plugin-path"))
    compare.plugin_path = vm["plugin-path"].as<std::vector<std::string>>();
  compare.quiet = vm["quiet"].as<bool>();
  // Every arm validates as `clhost validate` would (config, data files, plug-ins found and
  // loadable, their settings) before hours of runs start.
  clhost::tools::validate_arm(compare.arms[0], "A", compare.plugin_path);
  clhost::tools::validate_arm(compare.arms[1], "B", compare.plugin_path);
  compare.force = vm["force"].as<bool>();
  compare.jobs = jobs_of(vm);
  if (compare.seeds.size() == 1) {
    std::fprintf(stderr, "note: one seed gives no interval: the table shows means only\n");
  }
  return clhost::tools::run_compare(compare);
}

int command_sweep(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("help,h", "show this help")(
      "config,c", po::value<std::string>()->required(), "the base TOML config")(
      "grid,g", po::value<std::vector<std::string>>()->required()->composing(),
      "a swept key: KEY=[v1,v2,...], KEY=logspace(LOW,HIGH,N) or KEY=linspace(LOW,HIGH,N); "
      "several --grid: every combination")("set,s",
                                           po::value<std::vector<std::string>>()->composing(),
                                           "KEY=VALUE for every run, as clhost run --set")(
      "seeds", po::value<int64_t>()->default_value(3),
      "seeds per combination (run.seed = 0..N-1, the same for every combination)")(
      "samples", po::value<int64_t>()->default_value(0),
      "random search: this many combinations drawn from the --grid ranges and lists instead of "
      "every combination")("sample-seed", po::value<uint64_t>()->default_value(0),
                           "the seed of the random search's draws")(
      "halving", po::value<int>()->default_value(0),
      "successive halving with this ETA (2, 3, ...): all combinations train a few tasks, the best "
      "1/ETA on the validation samples of the tasks seen continue, ... (default 0: off)")(
      "validation", po::value<std::string>()->default_value("0.1"),
      "data.validation for every run when the config holds nothing out (a fraction or a count)");
  add_child_run_options(options, "the runs, sweep.json, sweep.html and best.toml", "sweep");
  po::variables_map vm;
  if (!parse(args, options,
             "usage: clhost sweep --config C.toml --grid 'KEY=[v1,v2,...]' [--grid ...] "
             "[--seeds N] [--jobs J]",
             vm)) {
    return 0;
  }
  clhost::tools::SweepOptions sweep;
  sweep.config = vm["config"].as<std::string>();
  if (vm.count("set")) sweep.set = vm["set"].as<std::vector<std::string>>();
  for (const auto& spec : vm["grid"].as<std::vector<std::string>>()) {
    sweep.axes.push_back(clhost::tools::parse_grid(spec));
  }
  sweep.seeds = seeds_of(vm);
  sweep.samples = vm["samples"].as<int64_t>();
  if (sweep.samples < 0 || sweep.samples > 100000) {
    throw clhost::ConfigError("--samples: between 0 (every combination) and 100000");
  }
  sweep.sample_seed = vm["sample-seed"].as<uint64_t>();
  sweep.halving = vm["halving"].as<int>();
  if (sweep.halving == 1 || sweep.halving < 0 || sweep.halving > 100) {
    throw clhost::ConfigError("--halving: 0 (off) or an ETA from 2 to 100");
  }
  sweep.validation = vm["validation"].as<std::string>();
  sweep.output_dir = vm["output"].as<std::string>();
  if (sweep.output_dir.empty()) sweep.output_dir = timestamped_dir("sweep");
  if (vm.count("plugin-path")) sweep.plugin_path = vm["plugin-path"].as<std::vector<std::string>>();
  sweep.quiet = vm["quiet"].as<bool>();
  sweep.force = vm["force"].as<bool>();
  sweep.jobs = jobs_of(vm);
  return clhost::tools::run_sweep(sweep);
}

int command_report(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("help,h", "show this help");
  po::options_description hidden;
  hidden.add_options()("run-dir", po::value<std::string>(), "a finished run directory");
  po::options_description all;
  all.add(options).add(hidden);
  po::positional_options_description positional;
  positional.add("run-dir", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(all).positional(positional).run(), vm);
  if (vm.count("help")) {
    std::cout << "usage: clhost report RUN_DIR\n\n" << options << '\n';
    return 0;
  }
  if (!vm.count("run-dir")) throw po::error("missing RUN_DIR, the run directory to report on");
  std::printf("wrote %s\n",
              clhost::tools::write_run_report(vm["run-dir"].as<std::string>()).c_str());
  return 0;
}

int command_serve(const std::vector<std::string>& args) {
  clhost::serve::ServeOptions serve;
  po::options_description options("options");
  options.add_options()("help,h", "show this help")(
      "host", po::value<std::string>(&serve.host)->default_value(serve.host),
      "address to listen on; off loopback every request needs the token (--token, or one is "
      "generated and printed)")("port", po::value<int>(&serve.port)->default_value(serve.port),
                                "port; 0: any free port (printed)")(
      "token", po::value<std::string>(&serve.token),
      "access token (at least 16 letters, digits, '-' or '_'); required off loopback")(
      "runs", po::value<std::string>(&serve.runs_dir)->default_value(serve.runs_dir),
      "directory of the run directories to show; launched runs go there")(
      "configs", po::value<std::string>(&serve.configs_dir),
      "directory of the configs the launch form offers (default: ./configs when it exists)")(
      "plugin-path", po::value<std::vector<std::string>>(&serve.plugin_path)->composing(),
      "plug-in directory the runs it launches may use (repeatable); a config naming another "
      "run.plugin_path is refused")(
      "max-streams", po::value<size_t>(&serve.max_streams)->default_value(serve.max_streams),
      "live run pages at once")(
      "max-request-bytes",
      po::value<size_t>(&serve.max_request_bytes)->default_value(serve.max_request_bytes),
      "largest request body (a pasted config)")("quiet,q", po::bool_switch(&serve.quiet),
                                                "no request log");
  po::variables_map vm;
  if (!parse(args, options, "usage: clhost serve [options]", vm)) return 0;
  if (serve.port < 0 || serve.port > 65535) throw po::error("--port must be 0..65535");
  if (serve.max_streams < 1 || serve.max_streams > 1024)
    throw po::error("--max-streams must be 1..1024");
  if (!serve.token.empty() &&
      (serve.token.size() < 16 ||
       serve.token.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                     "0123456789-_") != std::string::npos)) {
    throw po::error("--token must be at least 16 letters, digits, '-' or '_'");
  }
  return clhost::serve::run_server(serve);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kTopHelp;
    return args.empty() ? kExitUsage : 0;
  }
  if (args[0] == "--version") {
    std::printf("clhost %s (plug-in ABI %d.%d)\n", clhost::version(), CLHOST_ABI_VERSION_MAJOR,
                CLHOST_ABI_VERSION_MINOR);
    return 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  // A rank of a data-parallel run says which it is when it fails.
  const char* world_size = std::getenv("WORLD_SIZE");
  const char* rank = std::getenv("RANK");
  const std::string who = world_size != nullptr && std::string(world_size) != "1" && rank != nullptr
                              ? "rank " + std::string(rank) + ": "
                              : "";
  try {
    if (command == "run") return command_run(args);
    if (command == "validate") return command_validate(args);
    if (command == "plugins") return command_plugins(args);
    if (command == "fisher") return command_fisher(args);
    if (command == "memory-plan") return command_memory_plan(args);
    if (command == "new-plugin") return command_new_plugin(args);
    if (command == "compare") return command_compare(args);
    if (command == "sweep") return command_sweep(args);
    if (command == "report") return command_report(args);
    if (command == "serve") return command_serve(args);
    std::fprintf(stderr, "clhost: unknown command '%s'\n\n%s", command.c_str(), kTopHelp);
    return kExitUsage;
  } catch (const po::error& e) {
    std::fprintf(stderr, "clhost %s: %s (see clhost %s --help)\n", command.c_str(), e.what(),
                 command.c_str());
    return kExitUsage;
  } catch (const clhost::ConfigError& e) {
    std::fprintf(stderr, "%sconfig error: %s\n", who.c_str(), e.what());
    return kExitUsage;
  } catch (const clhost::PluginError& e) {
    std::fprintf(stderr, "%splug-in error: %s\n", who.c_str(), e.what());
    return kExitPlugin;
  } catch (const clhost::Interrupted& e) {
    const bool planned = e.signal_number() == 0;  // --stop-after-task: done as asked
    if (who.empty() || std::string(rank) == "0")
      std::fprintf(stderr, "\n%s: %s\n", planned ? "stopped" : "interrupted", e.what());
    return planned ? 0 : 128 + e.signal_number();
  } catch (const std::exception& e) {
    // RunError and anything else: "run failed" for a run, the command's name for the others.
    const std::string prefix = command == "run" ? "run failed" : "clhost " + command;
    std::fprintf(stderr, "%s%s: %s\n", who.c_str(), prefix.c_str(), e.what());
    return kExitRunFailed;
  }
}
