#include "run_jobs.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "report.hpp"

namespace clhost::tools {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string self_executable() {
  std::error_code error;
  const fs::path self = fs::read_symlink("/proc/self/exe", error);
  if (error) throw RunError("cannot find the clhost executable (/proc/self/exe)");
  return self.string();
}

bool finished(const std::string& dir) {
  std::ifstream status(fs::path(dir) / "status.json");
  std::string text{std::istreambuf_iterator<char>(status), std::istreambuf_iterator<char>()};
  return text.find("\"complete\"") != std::string::npos &&
         fs::exists(fs::path(dir) / "results.json");
}

// The task a run stopped after as asked (--stop-after-task), with its checkpoint; 0 for any
// other state.
int64_t stopped_after(const std::string& dir) {
  std::ifstream in(fs::path(dir) / "status.json");
  const json status = json::parse(in, nullptr, false);
  if (!status.is_object() || status.value("status", "") != "interrupted") return 0;
  const json& task = status.value("stopped_after_task", json());
  return task.is_number_integer() ? task.get<int64_t>() : 0;
}

// Whether the run has done what the job asks: finished, or stopped at the job's task or later.
bool job_done(const RunJob& job) {
  return finished(job.dir) ||
         (job.stop_after_task > 0 && stopped_after(job.dir) >= job.stop_after_task);
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

// A child running `args`, its output in DIR.log (appended to when it continues a run).
pid_t launch(const std::string& dir, const std::vector<std::string>& args, bool append) {
  const std::string log = dir + ".log";
  std::fflush(nullptr);
  const pid_t child = fork();
  if (child != 0) return child;
  const int fd =
      ::open(log.c_str(), O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC) | O_CLOEXEC, 0644);
  if (fd >= 0) {
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
  }
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  execv(argv[0], argv.data());
  std::perror("execv");
  _exit(127);
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

// Why the run stopped in `dir` (its config.toml) cannot be continued for this arm and seed.
std::string continue_mismatch(const std::string& dir, const json& expected) {
  std::string why;
  try {
    const std::string saved = (fs::path(dir) / "config.toml").string();
    const json ran = json::parse(load_config(saved).resolved_json);
    for (const auto& change : config_changes(ran.dump(), expected.dump())) {
      why += "\n      " + change.key + ": ran with " + change.before + ", the arm asks " +
             change.after;
    }
  } catch (const std::exception& e) {
    why = std::string("\n      its config.toml: ") + e.what();
  }
  return why;
}

// A run in the job's directory with other settings than the job's is refused (ConfigError
// naming the differences), or with --force run again.
void refuse_unless_forced(const RunJob& job, const std::string& why,
                          const RunJobsOptions& options) {
  if (!options.force) {
    const std::string spec = job.arm->spec == job.label ? "" : " ('" + job.arm->spec + "')";
    throw ConfigError(job.label + spec + " seed " + std::to_string(job.seed) + ": " + job.dir +
                      " holds a run with other settings:" + why +
                      "\n  Use another --output, or pass --force to rerun it.");
  }
  std::fprintf(stderr, "[%s] %s seed %lld: ran earlier with other settings, rerun (--force)\n",
               options.tool.c_str(), job.label.c_str(), static_cast<long long>(job.seed));
}

// A finished run (or one stopped at or after the job's task) is reused when it ran `expected`.
bool reuse_finished(const RunJob& job, const json& expected, const RunJobsOptions& options) {
  const bool complete = finished(job.dir);
  if (!complete && !job_done(job)) return false;
  const std::string why =
      complete ? reuse_mismatch(job.dir, expected, *job.arm) : continue_mismatch(job.dir, expected);
  if (!why.empty()) {
    refuse_unless_forced(job, why, options);
    return false;
  }
  if (!options.quiet) {
    std::fprintf(
        stderr, "[%s] %s seed %lld: finished earlier with the same settings, reused (%s)\n",
        options.tool.c_str(), job.label.c_str(), static_cast<long long>(job.seed), job.dir.c_str());
  }
  return true;
}

// The command line of a job's run: a new one, or --resume of one it stopped earlier.
std::vector<std::string> run_arguments(const RunJob& job, const std::string& exe,
                                       const std::vector<std::string>& plugin_path, bool resume) {
  const ArmSpec& arm = *job.arm;
  std::vector<std::string> args = {exe, "run", "--quiet"};
  if (resume) {
    args.insert(args.end(), {"--resume", job.dir});
  } else {
    args.insert(args.end(), {"--config", arm.config, "--output", job.dir, "--set",
                             "run.seed=" + std::to_string(job.seed)});
    if (arm.plugins) {
      std::string joined;
      for (const auto& id : *arm.plugins) joined += (joined.empty() ? "" : ",") + id;
      args.insert(args.end(), {"--plugins", joined});
    }
    for (const auto& item : arm.set) args.insert(args.end(), {"--set", item});
  }
  if (job.stop_after_task > 0) {
    args.insert(args.end(), {"--stop-after-task", std::to_string(job.stop_after_task)});
  }
  for (const auto& dir : plugin_path) args.insert(args.end(), {"--plugin-path", dir});
  return args;
}

// A job to run: resumed when its run stopped earlier as asked with the same settings.
struct PendingJob {
  const RunJob* job;
  bool resume;
};

// The jobs that need a run (the others finished earlier with the same settings).
std::vector<PendingJob> jobs_to_run(const std::vector<RunJob>& jobs,
                                    const RunJobsOptions& options) {
  std::vector<PendingJob> pending;
  for (const RunJob& job : jobs) {
    if (fs::exists(job.dir)) {
      const json expected = expected_config(*job.arm, job.seed, options.plugin_path);
      if (reuse_finished(job, expected, options)) continue;
      if (stopped_after(job.dir) > 0 && !job_done(job)) {
        const std::string why = continue_mismatch(job.dir, expected);
        if (why.empty()) {
          pending.push_back({&job, true});
          continue;
        }
        refuse_unless_forced(job, why, options);
      }
    }
    fs::remove_all(job.dir);  // an interrupted run starts again
    fs::create_directories(fs::path(job.dir).parent_path());
    pending.push_back({&job, false});
  }
  return pending;
}
}  // namespace

std::vector<std::string> run_jobs(const std::vector<RunJob>& jobs, const RunJobsOptions& options) {
  const std::vector<PendingJob> pending = jobs_to_run(jobs, options);
  const std::string exe = self_executable();
  const char* tool = options.tool.c_str();
  std::map<pid_t, const RunJob*> running;
  std::vector<std::string> failures;
  size_t next = 0;
  size_t done = 0;
  while (next < pending.size() || !running.empty()) {
    while (next < pending.size() &&
           running.size() < static_cast<size_t>(std::max(1, options.jobs))) {
      const auto [job_to_run, resume] = pending[next++];
      const RunJob& job = *job_to_run;
      if (!options.quiet) {
        std::fprintf(stderr, "[%s] %s %s seed %lld -> %s\n", tool, resume ? "continue" : "start",
                     job.label.c_str(), static_cast<long long>(job.seed), job.dir.c_str());
      }
      const pid_t pid =
          launch(job.dir, run_arguments(job, exe, options.plugin_path, resume), resume);
      if (pid < 0) throw RunError(options.tool + ": fork failed");
      running.emplace(pid, &job);
    }
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) continue;
    const auto found = running.find(pid);
    if (found == running.end()) continue;
    const RunJob& job = *found->second;
    running.erase(found);
    ++done;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && job_done(job);
    if (!options.quiet || !ok) {
      std::fprintf(stderr, "[%s] %zu/%zu %s seed %lld %s\n", tool, done, pending.size(),
                   job.label.c_str(), static_cast<long long>(job.seed), ok ? "done" : "FAILED");
    }
    if (!ok) {
      failures.push_back(job.label + " seed " + std::to_string(job.seed) + " (" + job.dir +
                         ".log):\n" + tail_of(job.dir + ".log", 6));
    }
  }
  return failures;
}

int report_failures(const std::vector<std::string>& failures, const std::string& tool) {
  if (failures.empty()) return 0;
  std::fprintf(stderr,
               "%s: %zu run(s) failed; fix the cause and rerun the same command (finished runs "
               "are reused):\n",
               tool.c_str(), failures.size());
  for (const auto& failure : failures) std::fprintf(stderr, "  %s", failure.c_str());
  return 1;
}

}  // namespace clhost::tools
