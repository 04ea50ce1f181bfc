#include "compare.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "clhost/plugin_loader.hpp"
#include "io.hpp"
#include "report.hpp"

namespace clhost::tools {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Job {
  size_t arm;
  int64_t seed;
  std::string dir;
  std::vector<std::string> argv;
};

std::string self_executable() {
  std::error_code error;
  const fs::path self = fs::read_symlink("/proc/self/exe", error);
  if (error) throw RunError("compare: cannot find the clhost executable (/proc/self/exe)");
  return self.string();
}

bool finished(const std::string& dir) {
  std::ifstream status(fs::path(dir) / "status.json");
  std::string text{std::istreambuf_iterator<char>(status), std::istreambuf_iterator<char>()};
  return text.find("\"complete\"") != std::string::npos &&
         fs::exists(fs::path(dir) / "results.json");
}

std::string tail_of(const std::string& path, size_t lines) {
  std::ifstream in(path);
  std::vector<std::string> all;
  for (std::string line; std::getline(in, line);) all.push_back(line);
  std::string out;
  for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) {
    out += "    " + all[i] + "\n";
  }
  return out;
}

pid_t launch(const Job& job) {
  const std::string log = job.dir + ".log";
  std::fflush(nullptr);
  const pid_t child = fork();
  if (child != 0) return child;
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0) {
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
  }
  std::vector<char*> argv;
  for (const auto& arg : job.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  execv(argv[0], argv.data());
  std::perror("execv");
  _exit(127);
}

ConfigOverrides arm_overrides(const ArmSpec& arm, const std::vector<std::string>& plugin_path) {
  ConfigOverrides overrides;
  overrides.set = arm.set;
  overrides.plugins = arm.plugins;
  overrides.plugin_path = plugin_path;
  return overrides;
}

// The resolved configuration a run of this arm with this seed uses (as in its results.json).
json expected_config(const ArmSpec& arm, int64_t seed,
                     const std::vector<std::string>& plugin_path) {
  ConfigOverrides overrides = arm_overrides(arm, plugin_path);
  overrides.set.push_back("run.seed=" + std::to_string(seed));
  return json::parse(load_config(arm.config, overrides).resolved_json);
}

// Why the finished run in `dir` cannot stand for this arm and seed; empty when it can.
std::string reuse_mismatch(const std::string& dir, const json& expected, const ArmSpec& arm) {
  std::ifstream in(fs::path(dir) / "results.json");
  const json results = json::parse(in, nullptr, false);
  if (!results.is_object() || !results.contains("config") || !results.contains("plugins")) {
    return "its results.json is unreadable";
  }
  std::string why;
  size_t listed = 0;
  const auto changes = config_changes(results["config"].dump(), expected.dump());
  for (const auto& change : changes) {
    if (listed++ == 4) {
      why += "\n      ... and " + std::to_string(changes.size() - 4) + " more";
      break;
    }
    why +=
        "\n      " + change.key + ": ran with " + change.before + ", the arm asks " + change.after;
  }
  std::vector<std::string> ran;
  for (const auto& plugin : results["plugins"]) {
    ran.push_back(plugin.value("id", "?") + " " + plugin.value("version", "?"));
  }
  if (ran != arm.plugin_versions) {
    auto joined = [](const std::vector<std::string>& items) {
      std::string out;
      for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
      return out.empty() ? std::string("none") : out;
    };
    why += "\n      plug-ins: ran " + joined(ran) + ", the arm has " + joined(arm.plugin_versions);
  }
  return why;
}

// A finished run is reused when it matches; a mismatch is refused, or with --force rerun.
bool reuse_finished(const Job& job, const ArmSpec& arm, const CompareOptions& options) {
  if (!finished(job.dir)) return false;
  const std::string why =
      reuse_mismatch(job.dir, expected_config(arm, job.seed, options.plugin_path), arm);
  const char* label = job.arm == 0 ? "A" : "B";
  if (why.empty()) {
    if (!options.quiet) {
      std::fprintf(stderr,
                   "[compare] %s seed %lld: finished earlier with the same settings, "
                   "reused (%s)\n",
                   label, static_cast<long long>(job.seed), job.dir.c_str());
    }
    return true;
  }
  if (!options.force) {
    throw ConfigError("arm " + std::string(label) + " ('" + arm.spec + "') seed " +
                      std::to_string(job.seed) + ": " + job.dir +
                      " holds a finished run with other settings:" + why +
                      "\n  Use another --output, or pass --force to rerun it.");
  }
  std::fprintf(stderr,
               "[compare] %s seed %lld: finished earlier with other settings, rerun "
               "(--force)\n",
               label, static_cast<long long>(job.seed));
  return false;
}

// What each arm ran, from its first run's results.json: the resolved settings and, per
// plug-in, its configuration and the keys it reported without effect.
json arm_settings(const RunRecord& run) {
  json config = run.results.value("config", json::object());
  if (config.contains("run")) config["run"].erase("seed");
  json plugins = json::array();
  for (const auto& plugin : run.results.value("plugins", json::array())) {
    plugins.push_back(json{{"id", plugin.value("id", "")},
                           {"version", plugin.value("version", "")},
                           {"config", plugin.value("config", json::object())},
                           {"not_in_effect", plugin.value("not_in_effect", json(nullptr))}});
  }
  return json{{"config", config}, {"plugins", plugins}};
}

}  // namespace

void validate_arm(ArmSpec& arm, const char* label, const std::vector<std::string>& plugin_path) {
  const std::string prefix = std::string("arm ") + label + " ('" + arm.spec + "'): ";
  try {
    const RunConfig config = load_config(arm.config, arm_overrides(arm, plugin_path));
    check_input_files(config);
    PluginLoader loader(
        PluginLoader::search_path_for(config.cli_plugin_path, config.run.plugin_path));
    const LoadedPipeline pipeline = load_pipeline(loader, config);
    arm.plugin_versions.clear();
    for (const auto* plugin : pipeline.plugins) {
      arm.plugin_versions.push_back(plugin->id + " " + plugin->descriptor->version);
    }
    for (const auto& warning : pipeline.warnings) {
      std::fprintf(stderr, "warning: %s%s\n", prefix.c_str(), warning.c_str());
    }
  } catch (const ConfigError& e) {
    throw ConfigError(prefix + e.what());
  } catch (const PluginError& e) {
    throw PluginError(prefix + e.what());
  }
}

ArmSpec parse_arm_spec(const std::string& spec, const std::string& base_config,
                       const std::string& name) {
  ArmSpec arm;
  arm.spec = spec;
  arm.config = base_config;
  arm.name = name.empty() ? spec : name;
  if (spec.size() > 5 && spec.substr(spec.size() - 5) == ".toml") {
    if (!fs::exists(spec)) throw ConfigError("arm '" + spec + "': no such config file");
    arm.config = spec;
    if (name.empty()) arm.name = fs::path(spec).stem().string();
    return arm;
  }
  if (base_config.empty()) {
    throw ConfigError("arm '" + spec + "': overrides need a base config (--config FILE)");
  }
  std::stringstream items(spec);
  for (std::string item; std::getline(items, item, ';');) {
    if (item.empty()) continue;
    const size_t equals = item.find('=');
    if (equals == std::string::npos || equals == 0) {
      std::string message = "arm '" + spec + "': item '";
      message += item;
      message += "' is neither plugins=ID,ID... nor KEY=VALUE";
      throw ConfigError(message);
    }
    const std::string key = item.substr(0, equals);
    const std::string value = item.substr(equals + 1);
    if (key == "plugins") {
      arm.plugins = std::vector<std::string>{};
      std::stringstream ids(value);
      for (std::string id; std::getline(ids, id, ',');) {
        if (!id.empty()) arm.plugins->push_back(id);
      }
    } else {
      arm.set.push_back(item);
    }
  }
  if (spec.empty()) arm.name = name.empty() ? "base config" : name;
  return arm;
}

int run_compare(const CompareOptions& options) {
  if (options.arms.size() != 2) throw ConfigError("compare needs two arms (--a and --b)");
  if (options.seeds.empty()) throw ConfigError("--seeds: at least one seed");
  const std::string exe = self_executable();
  fs::create_directories(options.output_dir);
  std::vector<Job> pending;
  std::vector<std::vector<std::string>> dirs(2);
  for (const int64_t seed : options.seeds) {
    for (size_t a = 0; a < 2; ++a) {
      const ArmSpec& arm = options.arms[a];
      Job job{
          a,
          seed,
          (fs::path(options.output_dir) / (a == 0 ? "a" : "b") / ("seed_" + std::to_string(seed)))
              .string(),
          {}};
      dirs[a].push_back(job.dir);
      if (reuse_finished(job, arm, options)) continue;
      fs::remove_all(job.dir);  // an interrupted run starts again
      fs::create_directories(fs::path(job.dir).parent_path());
      job.argv = {exe,        "run",      "--config",
                  arm.config, "--output", job.dir,
                  "--quiet",  "--set",    "run.seed=" + std::to_string(seed)};
      if (arm.plugins) {
        std::string joined;
        for (const auto& id : *arm.plugins) joined += (joined.empty() ? "" : ",") + id;
        job.argv.push_back("--plugins");
        job.argv.push_back(joined);
      }
      for (const auto& item : arm.set) {
        job.argv.push_back("--set");
        job.argv.push_back(item);
      }
      for (const auto& dir : options.plugin_path) {
        job.argv.push_back("--plugin-path");
        job.argv.push_back(dir);
      }
      pending.push_back(std::move(job));
    }
  }

  std::map<pid_t, Job> running;
  std::vector<std::string> failures;
  size_t next = 0;
  const size_t total = pending.size();
  size_t done = 0;
  while (next < pending.size() || !running.empty()) {
    while (next < pending.size() &&
           running.size() < static_cast<size_t>(std::max(1, options.jobs))) {
      const Job& job = pending[next++];
      if (!options.quiet) {
        std::fprintf(stderr, "[compare] start %s seed %lld -> %s\n", job.arm == 0 ? "A" : "B",
                     static_cast<long long>(job.seed), job.dir.c_str());
      }
      const pid_t pid = launch(job);
      if (pid < 0) throw RunError("compare: fork failed");
      running.emplace(pid, job);
    }
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) continue;
    const auto found = running.find(pid);
    if (found == running.end()) continue;
    const Job job = found->second;
    running.erase(found);
    ++done;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && finished(job.dir);
    if (!options.quiet || !ok) {
      std::fprintf(stderr, "[compare] %zu/%zu %s seed %lld %s\n", done, total,
                   job.arm == 0 ? "A" : "B", static_cast<long long>(job.seed),
                   ok ? "done" : "FAILED");
    }
    if (!ok) {
      failures.push_back(std::string(job.arm == 0 ? "A" : "B") + " seed " +
                         std::to_string(job.seed) + " (" + job.dir + ".log):\n" +
                         tail_of(job.dir + ".log", 6));
    }
  }
  if (!failures.empty()) {
    std::fprintf(stderr,
                 "compare: %zu run(s) failed; fix the cause and rerun the same command "
                 "(finished runs are reused):\n",
                 failures.size());
    for (const auto& failure : failures) std::fprintf(stderr, "  %s", failure.c_str());
    return 1;
  }

  std::vector<std::vector<RunRecord>> runs(2);
  for (size_t a = 0; a < 2; ++a) {
    for (const auto& dir : dirs[a]) runs[a].push_back(load_run(dir));
  }
  json comparison = compare_json({options.arms[0].name, options.arms[1].name},
                                 {options.arms[0].spec, options.arms[1].spec}, runs, options.seeds);
  for (size_t a = 0; a < 2; ++a) comparison["arms"][a]["ran"] = arm_settings(runs[a].front());
  const fs::path json_path = fs::path(options.output_dir) / "compare.json";
  const fs::path html_path = fs::path(options.output_dir) / "compare.html";
  write_file_atomic(json_path.string(), comparison.dump(2) + "\n");
  write_file_atomic(html_path.string(), compare_html(comparison, runs));
  std::cout << compare_table(comparison) << "\nwrote " << json_path.string() << "\n      "
            << html_path.string() << "\n";
  return 0;
}

}  // namespace clhost::tools
