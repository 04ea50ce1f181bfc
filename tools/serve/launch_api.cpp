// Starting and stopping runs: the configs and plug-ins to choose from, validation as the user
// types (the same errors as `clhost validate`), launch, stop (SIGINT) and resume.
#include <httplib.h>
#include <signal.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <mutex>
#include <regex>
#include <sstream>

#include "access.hpp"
#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "clhost/plugin_loader.hpp"
#include "comparison.hpp"
#include "event_journal.hpp"
#include "files.hpp"
#include "io.hpp"
#include "processes.hpp"
#include "serve_context.hpp"

namespace clhost::serve {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// `clhost validate` loads the plug-ins and checks the data files; it gets this long.
constexpr double kValidateSeconds = 60.0;

// What the page sends to validate or launch.
struct LaunchForm {
  std::string name;
  std::string config;  // TOML text
  std::vector<std::string> set;
  std::optional<std::vector<std::string>> plugins;  // replaces the pipeline when given
};

// Throws std::invalid_argument naming the field when the body is not the form.
LaunchForm parse_form(const std::string& body) {
  const json form = json::parse(body, nullptr, false);
  if (!form.is_object()) throw std::invalid_argument("the request body is not a JSON object");
  LaunchForm parsed;
  try {
    parsed.name = form.value("name", "");
    parsed.config = form.at("config").get<std::string>();
    parsed.set = form.value("set", std::vector<std::string>{});
    if (form.contains("plugins") && !form["plugins"].is_null())
      parsed.plugins = form["plugins"].get<std::vector<std::string>>();
  } catch (const json::exception& e) {
    throw std::invalid_argument(std::string("the form's fields: ") + e.what());
  }
  for (const std::string& item : parsed.set) {
    if (item.find('=') == std::string::npos)
      throw std::invalid_argument("override '" + item + "' is not KEY=VALUE");
  }
  return parsed;
}

// "FILE:LINE:COLUMN: message" (a ConfigError) → its parts, the file named "config".
json located_error(const std::string& message, const std::string& config_path) {
  std::string text = message;
  for (size_t at = text.find(config_path); at != std::string::npos;
       at = text.find(config_path, at)) {
    text.replace(at, config_path.size(), "config");
  }
  static const std::regex kLocated(R"(config:(\d+):(\d+):\s*(.*))");
  std::smatch match;
  json error{{"message", text}};
  if (std::regex_search(text, match, kLocated)) {
    error["line"] = std::stoi(match[1]);
    error["column"] = std::stoi(match[2]);
    error["message"] = match[3].str();
    const std::string rest = match[3].str();
    const size_t colon = rest.find(':');
    if (colon != std::string::npos && rest.find(' ') > colon) error["key"] = rest.substr(0, colon);
  }
  return error;
}

class Launcher {
 public:
  explicit Launcher(ServeContext& context) : context_(context) {}

  // The form's config in a file of its own (removed with the Launcher unless kept).
  fs::path write_config(const LaunchForm& form, const std::string& stem) {
    const fs::path dir = context_.runs_dir / ".serve";
    fs::create_directories(dir);
    config_path_ = dir / (stem + ".toml");
    write_file_atomic(config_path_.string(), form.config);
    return config_path_;
  }
  void keep_config() { keep_ = true; }
  ~Launcher() {
    std::error_code error;
    if (!keep_ && !config_path_.empty()) fs::remove(config_path_, error);
  }
  Launcher(const Launcher&) = delete;
  Launcher& operator=(const Launcher&) = delete;
  Launcher(Launcher&&) = delete;
  Launcher& operator=(Launcher&&) = delete;

  // The options every command started from the form gets.
  std::vector<std::string> form_options(const LaunchForm& form) const {
    std::vector<std::string> args{"--config", config_path_.string()};
    for (const auto& item : form.set) args.insert(args.end(), {"--set", item});
    if (form.plugins) {
      std::string list;
      for (const auto& id : *form.plugins) list += (list.empty() ? "" : ",") + id;
      args.insert(args.end(), {"--plugins", list});
    }
    for (const auto& dir : context_.plugin_path) args.insert(args.end(), {"--plugin-path", dir});
    return args;
  }

  // Loads the config as the run would; a launch loads plug-ins only from the server's
  // plug-in path, so a config naming other directories is refused. Returns the error, or null.
  json check_config(const LaunchForm& form, RunConfig* loaded) const {
    ConfigOverrides overrides;
    overrides.set = form.set;
    overrides.plugins = form.plugins;
    try {
      RunConfig config = load_config(config_path_.string(), overrides);
      for (const auto& dir : config.run.plugin_path) {
        std::error_code error;
        const std::string absolute = fs::weakly_canonical(dir, error).string();
        if (std::find(context_.plugin_path.begin(), context_.plugin_path.end(), absolute) ==
            context_.plugin_path.end()) {
          return json{{"message", "run.plugin_path = \"" + dir +
                                      "\": clhost serve starts runs with plug-ins from its own "
                                      "--plugin-path only"},
                      {"key", "run.plugin_path"}};
        }
      }
      if (loaded != nullptr) *loaded = std::move(config);
    } catch (const ConfigError& e) {
      return located_error(e.what(), config_path_.string());
    }
    return json();
  }

  // `clhost validate` on the form: {"valid", "errors": [...], "warnings": [...], "message"}.
  json validate(const LaunchForm& form) const {
    json reply{{"valid", false}, {"errors", json::array()}, {"warnings", json::array()}};
    const json error = check_config(form, nullptr);
    if (!error.is_null()) {
      reply["errors"].push_back(error);
      return reply;
    }
    std::vector<std::string> argv{context_.executable, "validate"};
    const auto options = form_options(form);
    argv.insert(argv.end(), options.begin(), options.end());
    const CapturedProcess result = run_captured(argv, kValidateSeconds);
    std::istringstream lines(result.output);
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("warning: ", 0) == 0) {
        reply["warnings"].push_back(line.substr(9));
      } else if (result.exit_code == 0 && !line.empty()) {
        reply["message"] = located_error(line, config_path_.string())["message"];
      } else if (!line.empty()) {
        // "config error: ...", "plug-in error: ...": the class, then where and what.
        const size_t colon = line.find(": ");
        const bool classed =
            line.find(" error: ") != std::string::npos && colon != std::string::npos;
        json item = located_error(classed ? line.substr(colon + 2) : line, config_path_.string());
        if (classed) item["class"] = line.substr(0, colon);
        reply["errors"].push_back(item);
      }
    }
    if (result.timed_out) {
      reply["errors"].push_back(
          json{{"message", "clhost validate took longer than " +
                               std::to_string(static_cast<int>(kValidateSeconds)) +
                               " s and was stopped"}});
    }
    reply["valid"] = result.exit_code == 0 && !result.timed_out;
    return reply;
  }

 private:
  ServeContext& context_;
  fs::path config_path_;
  bool keep_ = false;
};

std::string timestamp_now() {
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  std::strftime(stamp, sizeof(stamp), "%Y%m%d_%H%M%S", &local);
  return stamp;
}

// Starts `argv` for run `name` and records it (run_index.hpp: the launch record); `extra`
// keys (a comparison's kind, seeds, arms) go into the record too.
void start_and_record(ServeContext& context, const std::string& name,
                      const std::vector<std::string>& argv, const json& extra = json::object()) {
  const fs::path record = launch_record(context.runs_dir, name);
  fs::create_directories(record.parent_path());
  const pid_t pid = start_detached(argv, launch_log(context.runs_dir, name));
  json entry = extra;
  entry["pid"] = pid;
  entry["pid_start"] = process_start_ticks(pid);
  entry["command"] = argv;
  entry["time"] = static_cast<double>(std::time(nullptr));
  write_file_atomic(record.string(), entry.dump(1) + "\n");
}

void list_configs(ServeContext& context, const httplib::Request& /*request*/,
                  httplib::Response& response) {
  json configs = json::array();
  std::error_code error;
  std::vector<fs::path> files;
  if (context.configs_dir.empty()) {
    send_json(response, json{{"directory", nullptr}, {"configs", configs}});
    return;
  }
  for (const auto& item : fs::directory_iterator(context.configs_dir, error)) {
    if (item.path().extension() == ".toml") files.push_back(item.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& file : files) {
    configs.push_back(json{{"name", file.filename().string()}, {"text", read_text(file)}});
  }
  send_json(response, json{{"directory", context.configs_dir.string()}, {"configs", configs}});
}

void list_plugins(ServeContext& context, const httplib::Request& /*request*/,
                  httplib::Response& response) {
  PluginLoader loader(PluginLoader::search_path_for(context.plugin_path, {}));
  json plugins = json::array();
  for (const auto& candidate : loader.discover()) {
    if (candidate.plugin == nullptr || candidate.shadowed) continue;
    const auto* descriptor = candidate.plugin->descriptor;
    plugins.push_back(
        json{{"id", candidate.id},
             {"kind", kind_name(descriptor->kind)},
             {"version", descriptor->version},
             {"description", descriptor->description ? descriptor->description : ""}});
  }
  send_json(response, json{{"plugins", plugins}});
}

// The request's form, or a 400 naming what is wrong with it (false).
bool parse_or_refuse(const httplib::Request& request, httplib::Response& response,
                     LaunchForm& form) {
  try {
    form = parse_form(request.body);
    return true;
  } catch (const std::invalid_argument& e) {
    send_error(response, 400, e.what());
    return false;
  }
}

void validate_form(ServeContext& context, const httplib::Request& request,
                   httplib::Response& response) {
  LaunchForm form;
  if (!parse_or_refuse(request, response, form)) return;
  Launcher launcher(context);
  launcher.write_config(form, "validate_" + random_token());
  send_json(response, launcher.validate(form));
}

void launch_run(ServeContext& context, const httplib::Request& request,
                httplib::Response& response) {
  LaunchForm form;
  if (!parse_or_refuse(request, response, form)) return;
  Launcher launcher(context);
  launcher.write_config(form, "launch_" + random_token());
  RunConfig config;
  const json config_error = launcher.check_config(form, &config);
  if (!config_error.is_null()) {
    send_error(response, 400, "the config is not valid", json{{"errors", {config_error}}});
    return;
  }
  const std::string name = form.name.empty() ? config.run.name + "_" + timestamp_now() : form.name;
  if (!valid_run_name(name)) {
    send_error(response, 400, "'" + name + "' is not a run name (letters, digits, '.', '_', '-')");
    return;
  }
  const std::lock_guard lock(context.launch_mutex);
  std::error_code error;
  if (fs::exists(context.runs_dir / name, error) ||
      fs::exists(launch_record(context.runs_dir, name), error)) {
    send_error(response, 409, "a run named '" + name + "' exists; choose another name");
    return;
  }
  const json checked = launcher.validate(form);
  if (!checked["valid"].get<bool>()) {
    send_error(response, 400, "the config is not valid", checked);
    return;
  }
  // The config goes where the run's record is, under the run's name.
  Launcher kept(context);
  kept.write_config(form, name);
  kept.keep_config();
  std::vector<std::string> argv{context.executable, "run", "--output",
                                (context.runs_dir / name).string()};
  const auto options = kept.form_options(form);
  argv.insert(argv.end(), options.begin(), options.end());
  start_and_record(context, name, argv);
  send_json(response, json{{"name", name}, {"command", argv}}, 201);
}

void stop_run(ServeContext& context, const httplib::Request& request, httplib::Response& response) {
  const std::string name = run_name_of(request, response);
  if (name.empty()) return;
  pid_t pid = 0;
  bool comparison = false;
  std::string status;
  if (!context.index.with_view(name, [&](RunView& view) {
        status = view.status();
        pid = view.signal_target();
        comparison = view.comparison();
      })) {
    send_error(response, 404, "no run named '" + name + "'");
    return;
  }
  if (pid == 0) {
    send_error(response, 409, "'" + name + "' is not running (" + status + ")");
    return;
  }
  // A comparison's runs are its children, in its process group: each checkpoints and stops.
  const pid_t group = comparison ? ::getpgid(pid) : -1;
  if ((group > 0 ? ::kill(-group, SIGINT) : ::kill(pid, SIGINT)) != 0) {
    send_error(response, 409, "cannot signal process " + std::to_string(pid));
    return;
  }
  send_json(response,
            json{{"message", "SIGINT sent to process " + std::to_string(pid) +
                                 ": the run writes a checkpoint and stops (exit code 130)"}},
            202);
}

void resume_run(ServeContext& context, const httplib::Request& request,
                httplib::Response& response) {
  const std::string name = run_name_of(request, response);
  if (name.empty()) return;
  const std::lock_guard lock(context.launch_mutex);
  std::string status;
  json launch;
  if (!context.index.with_view(name, [&](RunView& view) {
        status = view.status();
        launch = view.launch();
      })) {
    send_error(response, 404, "no run named '" + name + "'");
    return;
  }
  if (status != "interrupted" && status != "failed") {
    send_error(response, 409, "'" + name + "' is " + status + ": only a stopped run resumes");
    return;
  }
  if (is_comparison(launch)) {
    // `clhost compare` again: it reuses the finished runs and reruns the others.
    start_and_record(context, name, launch.at("command").get<std::vector<std::string>>(),
                     json{{"kind", "compare"},
                          {"seeds", launch.value("seeds", 1)},
                          {"arms", launch.value("arms", json::array())}});
    send_json(response, json{{"name", name}, {"command", launch.at("command")}}, 202);
    return;
  }
  if (!fs::exists(context.runs_dir / name / "config.toml")) {
    send_error(response, 409, "'" + name + "' never began (no config.toml): launch it again");
    return;
  }
  std::vector<std::string> argv{context.executable, "run", "--resume",
                                (context.runs_dir / name).string()};
  for (const auto& dir : context.plugin_path) argv.insert(argv.end(), {"--plugin-path", dir});
  start_and_record(context, name, argv);
  send_json(response, json{{"name", name}, {"command", argv}}, 202);
}

// An arm is ';'-separated overrides of the base config (`plugins=ewc;train.lr=1e-3`), as for
// `clhost compare`; a file of its own (any path) is not accepted from the page.
std::string check_arm(const json& form, const char* key) {
  std::string spec = form.value(key, "");
  if (spec.find(".toml") != std::string::npos || spec.find('/') != std::string::npos)
    throw std::invalid_argument(std::string("arm ") + key + ": overrides of the config only");
  if (spec.find("plugin_path") != std::string::npos)
    throw std::invalid_argument(std::string("arm ") + key + ": run.plugin_path cannot be set");
  return spec;
}

// What POST /api/compare asks beyond the launch form.
struct ComparisonForm {
  std::string arm_a, arm_b, name_a, name_b;
  int64_t seeds = 3;
  int64_t jobs = 1;
};

ComparisonForm parse_comparison(const std::string& body) {
  const json form = json::parse(body, nullptr, false);
  ComparisonForm parsed;
  try {
    parsed.arm_a = check_arm(form, "a");
    parsed.arm_b = check_arm(form, "b");
    parsed.name_a = form.value("a_name", "");
    parsed.name_b = form.value("b_name", "");
    parsed.seeds = form.value("seeds", int64_t{3});
    parsed.jobs = form.value("jobs", int64_t{1});
  } catch (const json::exception& e) {
    throw std::invalid_argument(std::string("the comparison's fields: ") + e.what());
  }
  if (parsed.seeds < 1 || parsed.seeds > 100 || parsed.jobs < 1 || parsed.jobs > 64)
    throw std::invalid_argument("seeds must be 1..100 and jobs 1..64");
  return parsed;
}

// `clhost compare` with the arms over the base config, its runs in RUNS/NAME.
std::vector<std::string> comparison_command(const ServeContext& context, const fs::path& base,
                                            const std::string& name,
                                            const ComparisonForm& comparison) {
  std::vector<std::string> argv{context.executable,
                                "compare",
                                "--config",
                                base.string(),
                                "--a",
                                comparison.arm_a,
                                "--b",
                                comparison.arm_b,
                                "--seeds",
                                std::to_string(comparison.seeds),
                                "--jobs",
                                std::to_string(comparison.jobs),
                                "--output",
                                (context.runs_dir / name).string(),
                                "--quiet"};
  if (!comparison.name_a.empty()) argv.insert(argv.end(), {"--a-name", comparison.name_a});
  if (!comparison.name_b.empty()) argv.insert(argv.end(), {"--b-name", comparison.name_b});
  for (const auto& dir : context.plugin_path) argv.insert(argv.end(), {"--plugin-path", dir});
  return argv;
}

// POST /api/compare: `clhost compare` over paired seeds, in the background (RUNS/NAME holds
// the arms' runs, compare.json and compare.html).
void launch_comparison(ServeContext& context, const httplib::Request& request,
                       httplib::Response& response) {
  LaunchForm form;
  ComparisonForm comparison;
  try {
    form = parse_form(request.body);
    comparison = parse_comparison(request.body);
  } catch (const std::invalid_argument& e) {
    send_error(response, 400, e.what());
    return;
  }
  if (form.plugins) {
    send_error(response, 400,
               "a comparison chooses its plug-ins per arm (plugins=... in A and in B), not with "
               "the pipeline replacement");
    return;
  }
  // The form's overrides hold for both arms.
  for (const std::string& item : form.set) {
    comparison.arm_a += (comparison.arm_a.empty() ? "" : ";") + item;
    comparison.arm_b += (comparison.arm_b.empty() ? "" : ";") + item;
  }
  form.set.clear();
  Launcher launcher(context);
  launcher.write_config(form, "compare_" + random_token());
  RunConfig config;
  const json config_error = launcher.check_config(form, &config);
  if (!config_error.is_null()) {
    send_error(response, 400, "the base config is not valid", json{{"errors", {config_error}}});
    return;
  }
  const std::string name =
      form.name.empty() ? "compare_" + config.run.name + "_" + timestamp_now() : form.name;
  if (!valid_run_name(name)) {
    send_error(response, 400, "'" + name + "' is not a name (letters, digits, '.', '_', '-')");
    return;
  }
  const std::lock_guard lock(context.launch_mutex);
  std::error_code error;
  if (fs::exists(context.runs_dir / name, error) ||
      fs::exists(launch_record(context.runs_dir, name), error)) {
    send_error(response, 409, "'" + name + "' exists; choose another name");
    return;
  }
  Launcher kept(context);
  const fs::path base = kept.write_config(form, name);
  kept.keep_config();
  const std::vector<std::string> argv = comparison_command(context, base, name, comparison);
  start_and_record(context, name, argv,
                   json{{"kind", "compare"},
                        {"seeds", comparison.seeds},
                        {"arms", {comparison.arm_a, comparison.arm_b}}});
  send_json(response, json{{"name", name}, {"command", argv}}, 201);
}

}  // namespace

void add_launch_routes(httplib::Server& server, ServeContext& context) {
  using Handler = void (*)(ServeContext&, const httplib::Request&, httplib::Response&);
  const auto bind = [&context](Handler handler) {
    return [&context, handler](const httplib::Request& request, httplib::Response& response) {
      handler(context, request, response);
    };
  };
  server.Get("/api/configs", bind(list_configs));
  server.Get("/api/plugins", bind(list_plugins));
  server.Post("/api/validate", bind(validate_form));
  server.Post("/api/launch", bind(launch_run));
  server.Post("/api/compare", bind(launch_comparison));
  server.Post(R"(/api/runs/([^/]+)/stop)", bind(stop_run));
  server.Post(R"(/api/runs/([^/]+)/resume)", bind(resume_run));
}

}  // namespace clhost::serve
