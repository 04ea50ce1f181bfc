#include "sweep.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <random>
#include <regex>
#include <sstream>

#include "charts.hpp"
#include "clhost/errors.hpp"
#include "io.hpp"
#include "report.hpp"
#include "run_jobs.hpp"
#include "stats.hpp"

namespace clhost::tools {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// --- the grid --------------------------------------------------------------------------------

// `text` as a TOML float: with a '.' or an exponent, so that it does not read back as an integer.
std::string as_toml_float(std::string text) {
  if (text.find_first_of(".e") == std::string::npos) text += ".0";
  return text;
}

// A generated value (a range's point) to 6 significant digits.
std::string toml_float(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.6g", value);
  return as_toml_float(text);
}

// The shortest text that reads back as exactly `value` (0.1, not toml++'s 0.10000000000000001).
std::string exact_toml_float(double value) {
  char text[400];  // fixed notation of the largest double has 309 digits
  const double size = std::fabs(value);
  const bool fixed = size == 0.0 || (size >= 1e-5 && size < 1e15);
  const auto written =
      fixed ? std::to_chars(std::begin(text), std::end(text), value, std::chars_format::fixed)
            : std::to_chars(std::begin(text), std::end(text), value);
  return as_toml_float(std::string(text, written.ptr));
}

std::vector<std::string> listed_values(const std::string& text, const std::string& spec) {
  toml::table parsed;
  try {
    parsed = toml::parse("values = " + text);
  } catch (const toml::parse_error& e) {
    throw ConfigError("--grid '" + spec + "': " + std::string(e.description()) +
                      " (expected KEY=[v1, v2, ...], KEY=logspace(LOW, HIGH, N) or "
                      "KEY=linspace(LOW, HIGH, N))");
  }
  const toml::array* array = parsed["values"].as_array();
  if (array == nullptr || array->empty()) {
    throw ConfigError("--grid '" + spec + "': give at least one value, e.g. KEY=[1, 10, 100]");
  }
  std::vector<std::string> values;
  for (const toml::node& node : *array) {
    if (const auto* real = node.as_floating_point();
        real != nullptr && std::isfinite(real->get())) {
      values.push_back(exact_toml_float(real->get()));
      continue;
    }
    std::ostringstream value;
    node.visit([&](const auto& item) { value << item; });
    values.push_back(value.str());
  }
  return values;
}

bool is_integer_text(const std::string& text) {
  static const std::regex kInteger(R"([+-]?[0-9]+)");
  return std::regex_match(text, kInteger);
}

double range_end(const std::string& text, const std::string& spec) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || !std::isfinite(value)) {
    throw ConfigError("--grid '" + spec + "': '" + text + "' is not a number");
  }
  return value;
}

// A value of a range axis as --set takes it.
std::string range_value(const SweepAxis& axis, double value) {
  return axis.integers ? std::to_string(std::llround(value)) : toml_float(value);
}

// logspace(LOW, HIGH, N) or linspace(LOW, HIGH, N): N values, LOW and HIGH included; fills the
// axis's range. No values when TEXT is not a range.
std::vector<std::string> range_values(const std::string& text, const std::string& spec,
                                      SweepAxis& axis) {
  static const std::regex kRange(
      R"(\s*(logspace|linspace)\(\s*([^,\s]+)\s*,\s*([^,\s]+)\s*,\s*([0-9]+)\s*\)\s*)");
  std::smatch match;
  if (!std::regex_match(text, match, kRange)) return {};
  const bool log = match[1] == "logspace";
  const double low = range_end(match[2], spec);
  const double high = range_end(match[3], spec);
  const long count = std::strtol(match[4].str().c_str(), nullptr, 10);
  if (count < 2 || count > 1000) {
    throw ConfigError("--grid '" + spec + "': between 2 and 1000 values");
  }
  if (log && (low <= 0.0 || high <= 0.0)) {
    throw ConfigError("--grid '" + spec + "': logspace needs positive ends");
  }
  axis.range = log ? SweepAxis::Range::kLog : SweepAxis::Range::kLinear;
  axis.low = low;
  axis.high = high;
  axis.integers = is_integer_text(match[2]) && is_integer_text(match[3]);
  std::vector<std::string> values;
  for (long i = 0; i < count; ++i) {
    const double t = static_cast<double>(i) / static_cast<double>(count - 1);
    const double value =
        log ? std::pow(10.0, std::log10(low) + t * (std::log10(high) - std::log10(low)))
            : low + t * (high - low);
    const std::string text_value = range_value(axis, value);
    if (values.empty() || values.back() != text_value) values.push_back(text_value);
  }
  return values;
}

// One value of each axis, drawn: anywhere in a range (log-uniform for logspace), else one of
// the listed values.
std::vector<std::string> draw_combination(const std::vector<SweepAxis>& axes,
                                          std::mt19937_64& rng) {
  std::vector<std::string> values;
  for (const SweepAxis& axis : axes) {
    if (axis.range == SweepAxis::Range::kNone) {
      std::uniform_int_distribution<size_t> pick(0, axis.values.size() - 1);
      values.push_back(axis.values[pick(rng)]);
      continue;
    }
    const bool log = axis.range == SweepAxis::Range::kLog;
    std::uniform_real_distribution<double> uniform(log ? std::log10(axis.low) : axis.low,
                                                   log ? std::log10(axis.high) : axis.high);
    const double drawn = uniform(rng);
    values.push_back(range_value(axis, log ? std::pow(10.0, drawn) : drawn));
  }
  return values;
}

}  // namespace

std::vector<std::vector<std::string>> sweep_combinations(const SweepOptions& options) {
  if (options.samples > 0) {
    std::mt19937_64 rng(options.sample_seed);
    std::vector<std::vector<std::string>> drawn;
    for (int64_t i = 0; i < options.samples; ++i) {
      std::vector<std::string> values = draw_combination(options.axes, rng);
      if (std::find(drawn.begin(), drawn.end(), values) == drawn.end()) drawn.push_back(values);
    }
    return drawn;
  }
  std::vector<std::vector<std::string>> combinations = {{}};
  for (const SweepAxis& axis : options.axes) {
    std::vector<std::vector<std::string>> longer;
    for (const auto& combination : combinations) {
      for (const auto& value : axis.values) {
        longer.push_back(combination);
        longer.back().push_back(value);
      }
    }
    combinations = std::move(longer);
  }
  return combinations;
}

namespace {

// --- the combinations ------------------------------------------------------------------------

struct Point {
  std::vector<std::string> values;  // one per axis
  ArmSpec arm;
};

std::string point_name(const std::vector<SweepAxis>& axes, const std::vector<std::string>& values) {
  std::string name;
  for (size_t a = 0; a < axes.size(); ++a) {
    name += (name.empty() ? "" : ", ") + axes[a].key + "=" + values[a];
  }
  return name;
}

// A directory name for the combination: its index, then its values in safe characters.
std::string point_dir(size_t index, const std::vector<std::string>& values) {
  std::string name = std::to_string(index);
  for (const auto& value : values) {
    name += "_";
    for (char c : value)
      name += std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' ? c : '_';
  }
  return name.substr(0, 80);
}

std::vector<Point> sweep_points(const SweepOptions& options, const std::vector<std::string>& set) {
  std::vector<Point> points;
  for (const auto& values : sweep_combinations(options)) {
    Point point;
    point.values = values;
    point.arm.config = options.config;
    point.arm.set = set;
    for (size_t a = 0; a < options.axes.size(); ++a) {
      point.arm.set.push_back(options.axes[a].key + "=" + values[a]);
    }
    point.arm.name = point_name(options.axes, values);
    point.arm.spec = point.arm.name;
    points.push_back(std::move(point));
  }
  return points;
}

// The overrides of every run: the user's, then data.validation when the config holds none out.
std::vector<std::string> run_overrides(const SweepOptions& options) {
  ConfigOverrides overrides;
  overrides.set = options.set;
  overrides.plugin_path = options.plugin_path;
  const RunConfig base = load_config(options.config, overrides);
  std::vector<std::string> set = options.set;
  if (!base.data.validation.enabled()) {
    set.push_back("data.validation=" + options.validation);
    if (!options.quiet) {
      std::fprintf(stderr,
                   "[sweep] %s holds no validation samples out: every run uses "
                   "data.validation = %s (--validation)\n",
                   options.config.c_str(), options.validation.c_str());
    }
  }
  return set;
}

// Every combination loads and finds its plug-ins, and holds validation samples out.
void validate_points(std::vector<Point>& points, const std::vector<std::string>& plugin_path) {
  for (Point& point : points) {
    const std::string label = "combination " + point.arm.name;
    validate_arm(point.arm, label.c_str(), plugin_path);
    if (!load_config(point.arm.config, arm_overrides(point.arm, plugin_path))
             .data.validation.enabled()) {
      throw ConfigError("combination " + point.arm.name +
                        ": data.validation holds nothing out, so it cannot be scored without "
                        "the test set");
    }
  }
}

// --- scores ----------------------------------------------------------------------------------

std::string interval_text(const json& interval) {
  char text[96];
  if (interval["low"].is_null()) {
    std::snprintf(text, sizeof(text), "%.4f", interval["mean"].get<double>());
  } else {
    std::snprintf(text, sizeof(text), "%.4f [%.4f, %.4f]", interval["mean"].get<double>(),
                  interval["low"].get<double>(), interval["high"].get<double>());
  }
  return text;
}

struct Scores {
  Evaluation evaluation;
  std::vector<std::vector<double>> validation;  // [point][seed]; empty for a point stopped early
  std::vector<std::vector<double>> test;
  std::vector<json> rungs;  // [point]: successive halving's scores, {"tasks", "score"} each
  std::vector<int64_t> stopped_after;  // [point]: the task it was stopped after (0: it ran all)
  int64_t tasks_trained = 0;           // over every run: what the sweep cost
  int64_t tasks_without_halving = 0;   // every combination x seed x task
};

double average_of(const json& results, const std::string& section, const std::string& name,
                  const std::string& dir) {
  const json* metrics = &results;
  if (!section.empty()) metrics = &results.at(section);
  const json& value = metrics->at("metrics").at("average_" + name);
  if (!value.is_number()) throw RunError(dir + "/results.json: no average_" + name);
  return value.get<double>();
}

// The final scores of the points that ran every task (the others keep empty ones).
void read_scores(const std::vector<std::vector<std::string>>& dirs, Scores& scores) {
  scores.validation.assign(dirs.size(), {});
  scores.test.assign(dirs.size(), {});
  for (size_t p = 0; p < dirs.size(); ++p) {
    if (scores.stopped_after[p] > 0) continue;
    for (const auto& dir : dirs[p]) {
      const RunRecord run = load_run(dir);
      scores.evaluation = evaluation_of(run.results);
      if (!run.results.contains("validation")) {
        throw RunError(dir + "/results.json: no validation section (data.validation)");
      }
      const std::string& name = scores.evaluation.name;
      scores.validation[p].push_back(average_of(run.results, "validation", name, dir));
      scores.test[p].push_back(average_of(run.results, "", name, dir));
    }
  }
}

// The best of the points that ran every task (count > 0).
size_t best_point(const std::vector<Interval>& validation, bool higher_is_better) {
  size_t best = validation.size();
  for (size_t p = 0; p < validation.size(); ++p) {
    if (validation[p].count == 0) continue;
    const bool better = best == validation.size() ||
                        (higher_is_better ? validation[p].mean > validation[best].mean
                                          : validation[p].mean < validation[best].mean);
    if (better) best = p;
  }
  return best;
}

// --- outputs ---------------------------------------------------------------------------------

json sweep_json(const SweepOptions& options, const std::vector<Point>& points,
                const std::vector<std::vector<std::string>>& dirs, const Scores& scores,
                const std::vector<std::string>& set) {
  json axes = json::array();
  for (const auto& axis : options.axes)
    axes.push_back({{"key", axis.key}, {"values", axis.values}});
  std::vector<Interval> validation;
  json point_list = json::array();
  for (size_t p = 0; p < points.size(); ++p) {
    const bool stopped = scores.stopped_after[p] > 0;
    validation.push_back(stopped ? Interval{} : mean_interval(scores.validation[p]));
    json values = json::object();
    for (size_t a = 0; a < options.axes.size(); ++a)
      values[options.axes[a].key] = points[p].values[a];
    point_list.push_back(
        {{"index", p},
         {"values", values},
         {"runs", dirs[p]},
         {"validation_scores", scores.validation[p]},
         {"validation", stopped ? json(nullptr) : interval_json(validation.back())},
         {"rungs", scores.rungs[p]},
         {"stopped_after_task", scores.stopped_after[p]}});
  }
  const size_t best = best_point(validation, scores.evaluation.higher_is_better);
  return json{{"config", options.config},
              {"set", set},
              {"axes", axes},
              {"seeds", options.seeds},
              {"metric", "average_" + scores.evaluation.name},
              {"better", scores.evaluation.higher_is_better ? "higher" : "lower"},
              {"points", point_list},
              {"halving", options.halving},
              {"tasks_trained", scores.tasks_trained},
              {"tasks_without_halving", scores.tasks_without_halving},
              {"best",
               {{"index", best},
                {"values", point_list[best]["values"]},
                {"validation", point_list[best]["validation"]},
                {"test_scores", scores.test[best]},
                {"test", interval_json(mean_interval(scores.test[best]))},
                {"toml", "best.toml"}}}};
}

// "key=value, key=value" of a point's values.
std::string values_text(const json& values) {
  std::string text;
  for (const auto& [key, value] : values.items()) {
    text += (text.empty() ? "" : ", ") + key + "=" + value.get<std::string>();
  }
  return text;
}

std::string sweep_table(const json& sweep) {
  std::ostringstream out;
  const std::string metric = sweep["metric"].get<std::string>();
  out << "sweep: " << sweep["points"].size() << " combinations x " << sweep["seeds"].size()
      << " seeds, scored on the validation samples' " << metric << " ("
      << sweep["better"].get<std::string>() << " is better; mean [95% interval])\n";
  const size_t best = sweep["best"]["index"].get<size_t>();
  for (const auto& point : sweep["points"]) {
    std::string score;
    if (point["validation"].is_null()) {
      const json& last = point["rungs"].back();
      char text[96];
      std::snprintf(text, sizeof(text), "stopped after task %lld (%.4f on the tasks seen)",
                    static_cast<long long>(last["tasks"].get<int64_t>()),
                    last["score"].get<double>());
      score = text;
    } else {
      score = interval_text(point["validation"]);
    }
    char line[512];
    std::snprintf(line, sizeof(line), "%s %-44s %s\n",
                  point["index"].get<size_t>() == best ? "*" : " ",
                  values_text(point["values"]).c_str(), score.c_str());
    out << line;
  }
  if (sweep["halving"].get<int>() > 0) {
    out << "successive halving (eta " << sweep["halving"].get<int>()
        << "): " << sweep["tasks_trained"].get<int64_t>() << " tasks trained instead of "
        << sweep["tasks_without_halving"].get<int64_t>() << "\n";
  }
  out << "best: " << values_text(sweep["points"][best]["values"]) << ": validation "
      << interval_text(sweep["best"]["validation"]) << "; test-set " << metric << " "
      << interval_text(sweep["best"]["test"]) << " (the test set was not used to choose)\n";
  return out.str();
}

// Chart coordinates of the first key's values (one per point): the numbers (log10 when they
// span more than a factor 100 and are positive), else their positions among the distinct values.
std::vector<double> axis_positions(const std::vector<std::string>& values, const std::string& key,
                                   std::string& label) {
  std::vector<double> numbers;
  for (const auto& value : values) {
    char* end = nullptr;
    const double number = std::strtod(value.c_str(), &end);
    if (end == value.c_str() || *end != '\0') {
      numbers.clear();
      break;
    }
    numbers.push_back(number);
  }
  if (numbers.empty()) {
    label = key + " (position in the grid)";
    std::vector<std::string> distinct;
    for (const auto& value : values) {
      auto at = std::find(distinct.begin(), distinct.end(), value);
      if (at == distinct.end()) at = distinct.insert(distinct.end(), value);
      numbers.push_back(static_cast<double>(at - distinct.begin()));
    }
    return numbers;
  }
  const auto [low, high] = std::minmax_element(numbers.begin(), numbers.end());
  label = key;
  if (*low > 0.0 && *high / *low > 100.0) {
    label = "log10(" + key + ")";
    for (double& number : numbers) number = std::log10(number);
  }
  return numbers;
}

// The metric against the first key's values, one line per combination of the other keys.
std::string sweep_chart(const SweepOptions& options, const json& sweep) {
  const std::string& key = options.axes.front().key;
  ChartOptions chart;
  chart.title = "validation " + sweep["metric"].get<std::string>() + " (mean over seeds)";
  chart.y_label = sweep["metric"].get<std::string>();
  std::vector<std::string> first_values;
  for (const auto& point : sweep["points"]) {
    first_values.push_back(point["values"][key].get<std::string>());
  }
  const std::vector<double> x = axis_positions(first_values, key, chart.x_label);
  std::map<std::string, std::vector<std::pair<double, double>>> lines;
  for (size_t p = 0; p < sweep["points"].size(); ++p) {
    const json& point = sweep["points"][p];
    if (point["validation"].is_null()) continue;  // stopped early: no final score
    std::string rest;
    for (size_t a = 1; a < options.axes.size(); ++a) {
      rest += (rest.empty() ? "" : ", ") + options.axes[a].key + "=" +
              point["values"][options.axes[a].key].get<std::string>();
    }
    lines[rest].emplace_back(x[p], point["validation"]["mean"].get<double>());
  }
  std::vector<Series> series;
  for (auto& [rest, line] : lines) {
    std::sort(line.begin(), line.end());  // random search draws in any order
    Series drawn;
    drawn.label = rest.empty() ? "validation" : rest;
    for (const auto& [at, value] : line) {
      drawn.x.push_back(at);
      drawn.y.push_back(value);
    }
    series.push_back(std::move(drawn));
  }
  return line_chart_svg(series, chart);
}

std::string sweep_html(const SweepOptions& options, const json& sweep) {
  std::string body = "<p class=\"note\">Base config " + html_escape(options.config) + "; " +
                     std::to_string(sweep["seeds"].size()) +
                     " seeds per combination; every score is the average over the tasks of the "
                     "validation samples held out of their training data (data.validation) after "
                     "the last task. The test set was not used to choose.</p>\n";
  try {
    body += sweep_chart(options, sweep);
  } catch (const std::exception& e) {
    body += "<p class=\"note\">(no chart: " + html_escape(e.what()) + ")</p>";
  }
  body +=
      "<table><tr><th class=\"l\">combination</th><th>validation mean</th><th>95% "
      "interval</th><th class=\"l\">runs</th></tr>\n";
  const size_t best = sweep["best"]["index"].get<size_t>();
  for (const auto& point : sweep["points"]) {
    const json interval = point["validation"].is_null()
                              ? json{{"mean", nullptr}, {"low", nullptr}, {"high", nullptr}}
                              : point["validation"];
    auto number = [](const json& value) {
      if (value.is_null()) return std::string("–");
      char text[32];
      std::snprintf(text, sizeof(text), "%.4f", value.get<double>());
      return std::string(text);
    };
    body += std::string("<tr><td class=\"l\">") + (point["index"] == best ? "<b>best</b> " : "") +
            html_escape(values_text(point["values"])) + "</td><td>" + number(interval["mean"]) +
            "</td><td>" + number(interval["low"]) + " – " + number(interval["high"]) +
            "</td><td class=\"l\">" + html_escape(point["runs"][0].get<std::string>()) +
            (point["runs"].size() > 1 ? " …" : "") + "</td></tr>\n";
  }
  body += "</table>\n<h2>Best</h2><p>" + html_escape(values_text(sweep["best"]["values"])) +
          ": validation " + html_escape(interval_text(sweep["best"]["validation"])) +
          "; test set " + html_escape(interval_text(sweep["best"]["test"])) +
          " — its configuration is best.toml.</p>\n";
  return html_page("clhost sweep", body);
}

void write_best_toml(const std::string& path, const Point& point, const json& sweep,
                     const std::vector<std::string>& plugin_path) {
  const RunConfig config = load_config(point.arm.config, arm_overrides(point.arm, plugin_path));
  const std::string header =
      "# clhost sweep: the best of " + std::to_string(sweep["points"].size()) + " combinations (" +
      point.arm.name + "), validation " + interval_text(sweep["best"]["validation"]) + " over " +
      std::to_string(sweep["seeds"].size()) + " seeds.\n";
  // The resolved TOML's own first line speaks of a run directory's copy: replaced.
  const std::string& toml = config.resolved_toml;
  const size_t first_line = toml.rfind('#', 0) == 0 ? toml.find('\n') + 1 : 0;
  write_file_atomic(path, header + toml.substr(first_line));
}

// --- successive halving -----------------------------------------------------------------------

// The tasks each round trains to (the last: every task) and which way the metric is better.
struct SweepPlan {
  int64_t tasks = 0;
  std::vector<int64_t> rungs;
  bool higher_is_better = true;
};

int64_t task_count(const RunConfig& config) {
  if (config.data.kind != DataKind::kText) return config.data.num_tasks;
  return static_cast<int64_t>(config.data.languages.empty() ? config.tasks.size()
                                                            : config.data.languages.size());
}

// Without --halving one round of every task. With ETA: rounds after ceil(T / ETA^k) tasks, as
// many as it takes to keep one of every ETA combinations each round down to one, but none
// before task 2: a regulariser acts from the second task on, so after the first every value of
// it has trained the same model and a ranking there would be chance.
SweepPlan plan_of(const SweepOptions& options, const std::vector<Point>& points) {
  const RunConfig config = load_config(points.front().arm.config,
                                       arm_overrides(points.front().arm, options.plugin_path));
  SweepPlan plan;
  plan.tasks = task_count(config);
  plan.higher_is_better = config.data.kind != DataKind::kText;  // text: bits per byte
  plan.rungs = {plan.tasks};
  if (options.halving < 2) return plan;
  const auto eta = static_cast<int64_t>(options.halving);
  while (plan.rungs.front() > 2) {
    plan.rungs.insert(plan.rungs.begin(), (plan.rungs.front() + eta - 1) / eta);
  }
  if (plan.rungs.size() > 1 && plan.rungs.front() < 2) plan.rungs.erase(plan.rungs.begin());
  size_t rounds = 1;
  for (size_t live = points.size(); live > 1;
       live = (live + options.halving - 1) / options.halving) {
    ++rounds;
  }
  if (plan.rungs.size() > rounds)
    plan.rungs.erase(plan.rungs.begin(), plan.rungs.end() - static_cast<std::ptrdiff_t>(rounds));
  return plan;
}

// A stopped run's validation metric after `tasks` tasks, averaged over those tasks (events.jsonl).
double score_after(const std::string& dir, int64_t tasks) {
  std::ifstream in(fs::path(dir) / "events.jsonl");
  double score = std::nan("");
  for (std::string line; std::getline(in, line);) {
    const json event = json::parse(line, nullptr, false);
    if (!event.is_object() || event.value("event", "") != "evaluation" ||
        event.value("after_task", int64_t{-2}) != tasks - 1 || !event.contains("validation_row")) {
      continue;
    }
    const std::vector<double> row = event["validation_row"].get<std::vector<double>>();
    if (static_cast<int64_t>(row.size()) < tasks) break;
    score = std::accumulate(row.begin(), row.begin() + tasks, 0.0) / static_cast<double>(tasks);
  }
  if (std::isnan(score)) {
    throw RunError(dir + "/events.jsonl: no validation evaluation after task " +
                   std::to_string(tasks));
  }
  return score;
}

// One round of successive halving: every live combination's mean score after `rung` tasks;
// the best 1/ETA go on, and those the seeds cannot tell from the last of them (goes_on_beside);
// the others are stopped there.
std::vector<size_t> keep_best(const std::vector<size_t>& live, int64_t rung,
                              const std::vector<std::vector<std::string>>& dirs,
                              const SweepPlan& plan, const SweepOptions& options, Scores& scores) {
  std::vector<std::pair<double, size_t>> ranked;
  std::map<size_t, std::vector<double>> per_seed;
  for (const size_t p : live) {
    for (const auto& dir : dirs[p]) per_seed[p].push_back(score_after(dir, rung));
    const double mean = std::accumulate(per_seed[p].begin(), per_seed[p].end(), 0.0) /
                        static_cast<double>(per_seed[p].size());
    scores.rungs[p].push_back({{"tasks", rung}, {"score", mean}});
    ranked.emplace_back(plan.higher_is_better ? -mean : mean, p);
  }
  std::stable_sort(ranked.begin(), ranked.end());
  const size_t keep = (live.size() + static_cast<size_t>(options.halving) - 1) /
                      static_cast<size_t>(options.halving);
  const std::vector<double>& last_kept = per_seed[ranked[keep - 1].second];
  std::vector<size_t> kept;
  size_t undecided = 0;
  for (size_t i = 0; i < ranked.size(); ++i) {
    const size_t p = ranked[i].second;
    if (i < keep) {
      kept.push_back(p);
    } else if (goes_on_beside(per_seed[p], last_kept, plan.higher_is_better)) {
      kept.push_back(p);
      ++undecided;
    } else {
      scores.stopped_after[p] = rung;
    }
  }
  std::sort(kept.begin(), kept.end());
  if (!options.quiet) {
    std::fprintf(stderr, "[sweep] after task %lld: %zu of %zu combinations go on%s\n",
                 static_cast<long long>(rung), kept.size(), live.size(),
                 undecided == 0 ? ""
                                : (" (" + std::to_string(undecided) +
                                   " not significantly worse than the last of the best)")
                                      .c_str());
  }
  return kept;
}

}  // namespace

bool goes_on_beside(const std::vector<double>& candidate, const std::vector<double>& last_kept,
                    bool higher_is_better) {
  if (candidate.size() < 2) return candidate == last_kept;
  const PairedDifference paired = paired_difference(last_kept, candidate);  // candidate - kept
  return higher_is_better ? paired.difference.high >= 0.0 : paired.difference.low <= 0.0;
}

SweepAxis parse_grid(const std::string& spec) {
  const size_t equals = spec.find('=');
  if (equals == std::string::npos || equals == 0 || equals + 1 == spec.size()) {
    throw ConfigError("--grid '" + spec +
                      "': expected KEY=[v1, v2, ...], KEY=logspace(LOW, HIGH, N) or "
                      "KEY=linspace(LOW, HIGH, N)");
  }
  SweepAxis axis;
  axis.key = spec.substr(0, equals);
  const std::string text = spec.substr(equals + 1);
  axis.values = range_values(text, spec, axis);
  if (axis.values.empty()) axis.values = listed_values(text, spec);
  return axis;
}

int run_sweep(const SweepOptions& options) {
  if (options.axes.empty()) throw ConfigError("sweep: give at least one --grid KEY=[...]");
  if (options.seeds.empty()) throw ConfigError("--seeds: at least one seed");
  const std::vector<std::string> set = run_overrides(options);
  std::vector<Point> points = sweep_points(options, set);
  validate_points(points, options.plugin_path);
  std::vector<std::vector<std::string>> dirs(points.size());
  for (size_t p = 0; p < points.size(); ++p) {
    for (const int64_t seed : options.seeds) {
      dirs[p].push_back((fs::path(options.output_dir) / "runs" / point_dir(p, points[p].values) /
                         ("seed_" + std::to_string(seed)))
                            .string());
    }
  }
  fs::create_directories(options.output_dir);
  const SweepPlan plan = plan_of(options, points);
  Scores scores;
  scores.rungs.assign(points.size(), json::array());
  scores.stopped_after.assign(points.size(), 0);
  scores.tasks_without_halving =
      static_cast<int64_t>(points.size() * options.seeds.size()) * plan.tasks;
  std::vector<size_t> live(points.size());
  std::iota(live.begin(), live.end(), size_t{0});
  for (const int64_t rung : plan.rungs) {
    const bool last = rung == plan.tasks;
    std::vector<RunJob> jobs;
    for (const size_t p : live) {
      for (size_t s = 0; s < options.seeds.size(); ++s) {
        jobs.push_back(
            {&points[p].arm, options.seeds[s], dirs[p][s], points[p].arm.name, last ? 0 : rung});
      }
    }
    const int failed = report_failures(
        run_jobs(jobs, {"sweep", options.jobs, options.plugin_path, options.quiet, options.force}),
        "sweep");
    if (failed != 0) return failed;
    if (!last) live = keep_best(live, rung, dirs, plan, options, scores);
  }
  for (size_t p = 0; p < points.size(); ++p) {
    scores.tasks_trained += static_cast<int64_t>(options.seeds.size()) *
                            (scores.stopped_after[p] > 0 ? scores.stopped_after[p] : plan.tasks);
  }
  read_scores(dirs, scores);
  const json sweep = sweep_json(options, points, dirs, scores, set);
  const fs::path out(options.output_dir);
  write_best_toml((out / "best.toml").string(), points[sweep["best"]["index"].get<size_t>()], sweep,
                  options.plugin_path);
  write_file_atomic((out / "sweep.json").string(), sweep.dump(2) + "\n");
  write_file_atomic((out / "sweep.html").string(), sweep_html(options, sweep));
  std::cout << sweep_table(sweep) << "wrote " << (out / "sweep.json").string() << "\n      "
            << (out / "sweep.html").string() << "\n      " << (out / "best.toml").string() << "\n";
  return 0;
}

}  // namespace clhost::tools
