#include "report.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "charts.hpp"
#include "io.hpp"
#include "stats.hpp"

namespace clhost::tools {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path.string() + ": cannot read");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

double number_or_nan(const std::string& text) {
  if (text.empty()) return kNaN;
  try {
    return std::stod(text);
  } catch (const std::exception&) {
    return kNaN;
  }
}

std::string format(double value, int digits) {
  if (!std::isfinite(value)) return "–";
  char text[64];
  std::snprintf(text, sizeof(text), "%.*f", digits, value);
  return text;
}

std::string format_metric(const std::string& key, double value) {
  if (key == "peak_rss_bytes") return format(value / 1048576.0, 1) + " MiB";
  if (key == "wall_seconds") return format(value, 1) + " s";
  if (key == "samples_per_second") return format(value, 0) + " /s";
  return format(value, 4);
}

std::vector<std::vector<double>> matrix_of(const json& results) {
  std::vector<std::vector<double>> matrix;
  for (const auto& row : results.at(evaluation_of(results).name + "_matrix")) {
    matrix.emplace_back();
    for (const auto& value : row)
      matrix.back().push_back(value.is_number() ? value.get<double>() : kNaN);
  }
  return matrix;
}

std::vector<std::string> task_names(const json& results, const char* prefix) {
  std::vector<std::string> names;
  for (const auto& task : results.at("tasks"))
    names.push_back(prefix + task.at("name").get<std::string>());
  return names;
}

const char* const kStyle = R"(<style>
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:24px auto;max-width:1200px;color:#1e1e1e}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 9px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}.note{color:#555;font-size:13px}
.yes{color:#1a7f37;font-weight:bold}.no{color:#777}.row{display:flex;flex-wrap:wrap;gap:12px}
svg{max-width:100%;height:auto}.row svg{width:49%}
</style>)";

std::string page(const std::string& title, const std::string& body) {
  return "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" +
         html_escape(title) + "</title>" + kStyle + "</head><body>\n<h1>" + html_escape(title) +
         "</h1>\n" + body + "</body></html>\n";
}

std::string section(const std::string& id, const std::string& title, const std::string& content) {
  return "<section id=\"" + id + "\"><h2>" + html_escape(title) + "</h2>\n" + content +
         "</section>\n";
}

// Average evaluation over the tasks seen so far, after each task.
std::vector<double> seen_average(const std::vector<std::vector<double>>& matrix) {
  std::vector<double> out;
  for (size_t i = 0; i < matrix.size(); ++i) {
    double sum = 0;
    for (size_t j = 0; j <= i && j < matrix[i].size(); ++j) sum += matrix[i][j];
    out.push_back(sum / static_cast<double>(i + 1));
  }
  return out;
}

std::vector<double> one_to(size_t n) {
  std::vector<double> out;
  for (size_t i = 1; i <= n; ++i) out.push_back(static_cast<double>(i));
  return out;
}

// Accuracy is coloured on [0, 1]; other metrics on the matrix's range. Darker is better.
ChartOptions heat_options(const Evaluation& evaluation,
                          const std::vector<std::vector<double>>& matrix, std::string title,
                          int width) {
  ChartOptions options{std::move(title), "evaluated task", "trained through", width,
                       60 + 56 * static_cast<int>(matrix.size()) + 90};
  options.fixed_y = true;
  options.higher_is_better = evaluation.higher_is_better;
  if (evaluation.name == "accuracy") return options;
  options.y_min = INFINITY;
  options.y_max = -INFINITY;
  for (const auto& row : matrix) {
    for (double value : row) {
      if (!std::isfinite(value)) continue;
      options.y_min = std::min(options.y_min, value);
      options.y_max = std::max(options.y_max, value);
    }
  }
  if (!(options.y_max > options.y_min)) options.y_max = options.y_min + 1.0;
  return options;
}

// The per-task line charts: accuracy on [0, 1], other metrics on their data's range.
ChartOptions line_options(const Evaluation& evaluation, std::string title, std::string x_label,
                          int height) {
  const bool accuracy = evaluation.name == "accuracy";
  return ChartOptions{
      std::move(title), std::move(x_label), evaluation.label, 760, height, accuracy, 0.0, 1.0};
}

}  // namespace

Evaluation evaluation_of(const json& results) {
  Evaluation evaluation;
  if (!results.contains("evaluation")) return evaluation;  // results of clhost before 0.5
  evaluation.name = results["evaluation"].value("metric", evaluation.name);
  evaluation.higher_is_better = results["evaluation"].value("better", "higher") == "higher";
  evaluation.label = evaluation.name;
  std::replace(evaluation.label.begin(), evaluation.label.end(), '_', ' ');
  return evaluation;
}

json interval_json(const Interval& interval) {
  auto finite = [](double value) { return std::isfinite(value) ? json(value) : json(nullptr); };
  return json{{"mean", finite(interval.mean)},
              {"low", finite(interval.low)},
              {"high", finite(interval.high)},
              {"n", interval.count}};
}

std::string html_page(const std::string& title, const std::string& body) {
  return page(title, body);
}

std::string html_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

RunRecord load_run(const std::string& dir) {
  RunRecord run;
  run.dir = dir;
  const fs::path results = fs::path(dir) / "results.json";
  if (!fs::exists(results)) {
    const fs::path status = fs::path(dir) / "status.json";
    std::string state = "not a clhost run directory (no status.json)";
    if (fs::exists(status)) {
      const json parsed = json::parse(read_text(status), nullptr, false);
      state = "the run's status is " +
              (parsed.is_object() ? parsed.value("status", std::string("unknown"))
                                  : std::string("unreadable")) +
              (parsed.is_object() && parsed.contains("error")
                   ? ": " + parsed["error"].get<std::string>()
                   : std::string());
    }
    throw std::runtime_error(results.string() + ": missing; " + state +
                             " (a report needs a finished run)");
  }
  run.results = json::parse(read_text(results), nullptr, false);
  if (run.results.is_discarded() ||
      !run.results.contains(evaluation_of(run.results).name + "_matrix")) {
    throw std::runtime_error(results.string() + ": not a clhost results file");
  }
  std::ifstream csv(fs::path(dir) / "metrics.csv");
  std::string line;
  std::getline(csv, line);  // header
  while (std::getline(csv, line)) {
    std::vector<std::string> fields;
    size_t start = 0;
    for (int column = 0; column < 9; ++column) {  // the 10th, the event, may hold commas
      const size_t comma = line.find(',', start);
      if (comma == std::string::npos) break;
      fields.push_back(line.substr(start, comma - start));
      start = comma + 1;
    }
    if (fields.size() < 9) continue;
    const double step = number_or_nan(fields[2]);
    const double micro = number_or_nan(fields[6]);
    if (std::isfinite(step) && std::isfinite(micro)) {
      run.batch_step.push_back(step);
      run.micro_batch.push_back(micro);
    }
    const double loss = number_or_nan(fields[3]);
    if (std::isfinite(step) && std::isfinite(loss)) {
      run.global_step.push_back(step);
      run.loss.push_back(loss);
      run.penalty.push_back(number_or_nan(fields[4]));
    }
  }
  const fs::path profiles = fs::path(dir) / "logs" / "memory_profile";
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(profiles, error)) {
    if (entry.path().extension() == ".svg") {
      const std::string svg = read_text(entry.path());
      run.memory_svg =
          scope_svg_ids(svg.substr(std::min(svg.find("<svg"), svg.size())),
                        "memory" + std::to_string(std::hash<std::string>{}(dir) % 100000));
    }
  }
  return run;
}

std::vector<MetricSpec> compared_metrics(const Evaluation& evaluation) {
  // Forgetting and backward transfer keep their direction for either metric (docs/outputs.md,
  // "Metrics").
  return {
      {"average_" + evaluation.name, "average " + evaluation.label, evaluation.higher_is_better},
      {"forgetting", "forgetting", false},
      {"backward_transfer", "backward transfer", true},
      {"peak_rss_bytes", "peak memory (RSS)", false},
      {"wall_seconds", "wall time", false},
      {"samples_per_second", "training samples/s", true},
  };
}

double metric_value(const RunRecord& run, const std::string& key) {
  const json& results = run.results;
  if (key == "peak_rss_bytes" || key == "wall_seconds") return results.at(key).get<double>();
  if (key == "samples_per_second") {
    double samples = 0;
    double seconds = 0;
    for (const auto& task : results.at("tasks")) {
      samples += task.at("steps").get<double>() * task.at("batch_size").get<double>();
      seconds += task.at("train_seconds").get<double>();
    }
    return seconds > 0 ? samples / seconds : kNaN;
  }
  const json& value = results.at("metrics").at(key);
  return value.is_number() ? value.get<double>() : kNaN;
}

std::string write_run_report(const std::string& run_dir) {
  const RunRecord run = load_run(run_dir);
  const json& results = run.results;
  const auto matrix = matrix_of(results);
  const auto rows = task_names(results, "after ");
  const auto columns = task_names(results, "");
  std::string body;

  const Evaluation evaluation = evaluation_of(results);
  std::string summary = "<table><tr><th class=\"l\">metric</th><th>value</th></tr>";
  for (const MetricSpec& metric : compared_metrics(evaluation)) {
    summary += "<tr><td class=\"l\">" + std::string(metric.label) + "</td><td>" +
               format_metric(metric.key, metric_value(run, metric.key)) + "</td></tr>";
  }
  summary += "</table><p class=\"note\">config " + html_escape(results.value("config_file", "")) +
             "; plug-ins:";
  for (const auto& plugin : results.at("plugins")) {
    summary += " " + html_escape(plugin.at("id").get<std::string>()) + " " +
               html_escape(plugin.value("version", ""));
    if (plugin.contains("variant"))
      summary += " (" + html_escape(plugin["variant"].get<std::string>()) + ")";
  }
  if (results.at("plugins").empty()) summary += " none (fine-tuning)";
  summary += "; clhost " + html_escape(results.value("clhost_version", "")) + "</p>";
  body += section("summary", "Summary", summary);

  const ChartOptions heat =
      heat_options(evaluation, matrix, evaluation.label + " after each task", 760);
  std::string title = evaluation.label + " matrix";
  title[0] = static_cast<char>(std::toupper(title[0]));
  body += section(evaluation.name == "accuracy" ? "accuracy-matrix" : "evaluation-matrix", title,
                  heatmap_svg(matrix, rows, columns, heat));

  std::vector<Series> per_task;
  for (size_t j = 0; j < columns.size(); ++j) {
    Series line{columns[j], one_to(matrix.size()), {}};
    for (const auto& row : matrix) line.y.push_back(j < row.size() ? row[j] : kNaN);
    per_task.push_back(line);
  }
  per_task.push_back(
      {"average over tasks seen", one_to(matrix.size()), seen_average(matrix), true});
  const ChartOptions per_task_chart =
      line_options(evaluation, evaluation.label + " on each task across the sequence",
                   "after training task", 380);
  body +=
      section("per-task", "Per-task " + evaluation.label, line_chart_svg(per_task, per_task_chart));

  ChartOptions loss_chart{"training loss and penalty", "optimizer step", "value"};
  std::vector<Series> loss_series{{"data loss", run.global_step, run.loss}};
  bool has_penalty = false;
  for (double value : run.penalty)
    has_penalty = has_penalty || (std::isfinite(value) && value != 0);
  if (has_penalty) loss_series.push_back({"penalty", run.global_step, run.penalty, true});
  body += section("loss", "Loss and penalty",
                  run.loss.empty() ? "<p class=\"note\">metrics.csv has no step rows.</p>"
                                   : line_chart_svg(loss_series, loss_chart));

  ChartOptions batch_chart{"micro-batch (samples per forward/backward)", "optimizer step",
                           "samples"};
  std::string batch =
      run.micro_batch.empty()
          ? "<p class=\"note\">no batch-size data.</p>"
          : line_chart_svg({{"micro-batch", run.batch_step, run.micro_batch}}, batch_chart);
  const json& changes = results.at("memory").at("batch_size_changes");
  batch += "<p class=\"note\">" + std::to_string(changes.size()) + " batch-size changes, " +
           std::to_string(results.at("memory").value("out_of_memory_retries", 0)) +
           " out-of-memory retries.</p>";
  body += section("batch-size", "Batch size", batch);

  body += section("memory", "Memory timeline",
                  run.memory_svg.empty()
                      ? "<p class=\"note\">Not profiled: run with --profile-memory for a "
                        "timeline.</p>"
                      : run.memory_svg);

  const fs::path path = fs::path(run_dir) / "report.html";
  write_file_atomic(path.string(),
                    page("clhost run " + fs::path(run_dir).filename().string(), body));
  return path.string();
}

json compare_json(const std::vector<std::string>& arm_names,
                  const std::vector<std::string>& arm_specs,
                  const std::vector<std::vector<RunRecord>>& runs,
                  const std::vector<int64_t>& seeds) {
  json arms = json::array();
  for (size_t a = 0; a < arm_names.size(); ++a) {
    json dirs = json::array();
    for (const RunRecord& run : runs[a]) dirs.push_back(run.dir);
    arms.push_back({{"name", arm_names[a]}, {"spec", arm_specs[a]}, {"runs", dirs}});
  }
  json metrics = json::object();
  const Evaluation evaluation = evaluation_of(runs[0].front().results);
  for (const auto& arm : runs) {
    for (const RunRecord& run : arm) {
      if (evaluation_of(run.results).name != evaluation.name) {
        throw std::runtime_error(run.dir + ": reports " + evaluation_of(run.results).label +
                                 ", the other runs " + evaluation.label +
                                 "; compare runs of one kind of task");
      }
    }
  }
  for (const MetricSpec& metric : compared_metrics(evaluation)) {
    std::vector<std::vector<double>> values(runs.size());
    for (size_t a = 0; a < runs.size(); ++a) {
      for (const RunRecord& run : runs[a]) values[a].push_back(metric_value(run, metric.key));
    }
    const PairedDifference difference = paired_difference(values[0], values[1]);
    std::string verdict = "no significant difference";
    if (values[0].size() < 2) {
      verdict = "one seed: no interval";
    } else if (difference.significant) {
      const bool b_higher = difference.difference.mean > 0;
      verdict = std::string(b_higher == metric.higher_is_better ? "B" : "A") + " better";
    }
    metrics[metric.key] = {{"label", metric.label},
                           {"higher_is_better", metric.higher_is_better},
                           {"a", interval_json(mean_interval(values[0]))},
                           {"b", interval_json(mean_interval(values[1]))},
                           {"a_values", values[0]},
                           {"b_values", values[1]},
                           {"difference_b_minus_a", interval_json(difference.difference)},
                           {"significant", difference.significant},
                           {"verdict", verdict}};
  }
  return json{
      {"schema", "clhost.compare/1"},
      {"method",
       "per metric: mean and 95% Student-t interval per arm; paired difference B - A "
       "over seeds (same seed = same data order and initialisation in both arms) with "
       "its 95% paired t-interval; significant when that interval excludes 0"},
      {"seeds", seeds},
      {"evaluation",
       {{"metric", evaluation.name}, {"better", evaluation.higher_is_better ? "higher" : "lower"}}},
      {"arms", arms},
      {"metrics", metrics}};
}

std::string compare_table(const json& comparison) {
  std::ostringstream out;
  auto cell = [&](const std::string& key, const json& interval) {
    const double mean = interval["mean"].is_number() ? interval["mean"].get<double>() : kNaN;
    std::string text = format_metric(key, mean);
    if (interval["low"].is_number()) {
      const double half = (interval["high"].get<double>() - interval["low"].get<double>()) / 2;
      text += " ± " + format_metric(key, half);
    }
    return text;
  };
  char line[512];
  std::snprintf(line, sizeof(line), "%-22s %-24s %-24s %-26s %s\n", "metric",
                ("A: " + comparison["arms"][0]["name"].get<std::string>()).substr(0, 24).c_str(),
                ("B: " + comparison["arms"][1]["name"].get<std::string>()).substr(0, 24).c_str(),
                "B - A (paired)", "verdict");
  out << line;
  for (const MetricSpec& metric : compared_metrics(evaluation_of(comparison))) {
    const json& entry = comparison["metrics"][metric.key];
    std::snprintf(line, sizeof(line), "%-22s %-24s %-24s %-26s %s\n", metric.label.c_str(),
                  cell(metric.key, entry["a"]).c_str(), cell(metric.key, entry["b"]).c_str(),
                  cell(metric.key, entry["difference_b_minus_a"]).c_str(),
                  entry["verdict"].get<std::string>().c_str());
    out << line;
  }
  out << "(mean ± half-width of the 95% t-interval over " << comparison["seeds"].size()
      << " paired seeds)\n";
  return out.str();
}

std::string compare_html(const json& comparison, const std::vector<std::vector<RunRecord>>& runs) {
  const std::string a = comparison["arms"][0]["name"];
  const std::string b = comparison["arms"][1]["name"];
  std::string table = "<table><tr><th class=\"l\">metric</th><th>A: " + html_escape(a) +
                      "</th><th>B: " + html_escape(b) +
                      "</th><th>B − A (paired, 95% interval)</th><th class=\"l\">verdict</th></tr>";
  const Evaluation evaluation = evaluation_of(comparison);
  for (const MetricSpec& metric : compared_metrics(evaluation)) {
    const json& entry = comparison["metrics"][metric.key];
    auto cell = [&](const json& interval) {
      const double mean = interval["mean"].is_number() ? interval["mean"].get<double>() : kNaN;
      std::string text = format_metric(metric.key, mean);
      if (interval["low"].is_number()) {
        text += " [" + format_metric(metric.key, interval["low"].get<double>()) + ", " +
                format_metric(metric.key, interval["high"].get<double>()) + "]";
      }
      return text;
    };
    const bool significant = entry["significant"].get<bool>();
    table += "<tr><td class=\"l\">" + std::string(metric.label) + "</td><td>" + cell(entry["a"]) +
             "</td><td>" + cell(entry["b"]) + "</td><td>" + cell(entry["difference_b_minus_a"]) +
             "</td><td class=\"l " + (significant ? "yes" : "no") + "\">" +
             html_escape(entry["verdict"].get<std::string>()) + "</td></tr>";
  }
  table += "</table><p class=\"note\">" + html_escape(comparison["method"].get<std::string>()) +
           ". Seeds: " + comparison["seeds"].dump() + ".</p>";
  std::string body = section("comparison", "Comparison", table);

  // Mean over seeds of each arm's accuracy matrix and of its seen-task average.
  std::vector<std::vector<std::vector<double>>> means;
  for (const auto& arm : runs) {
    std::vector<std::vector<double>> sum = matrix_of(arm.front().results);
    for (auto& row : sum) std::fill(row.begin(), row.end(), 0.0);
    for (const RunRecord& run : arm) {
      const auto matrix = matrix_of(run.results);
      for (size_t i = 0; i < sum.size(); ++i) {
        for (size_t j = 0; j < sum[i].size(); ++j)
          sum[i][j] += matrix[i][j] / static_cast<double>(arm.size());
      }
    }
    means.push_back(sum);
  }
  const size_t tasks = means[0].size();
  std::vector<Series> curves{{"A: " + a, one_to(tasks), seen_average(means[0])},
                             {"B: " + b, one_to(tasks), seen_average(means[1]), true}};
  const ChartOptions curve = line_options(
      evaluation, "average " + evaluation.label + " over the tasks seen (mean over seeds)",
      "after training task", 360);
  std::vector<Series> finals{{"A: " + a, one_to(tasks), means[0].back()},
                             {"B: " + b, one_to(tasks), means[1].back(), true}};
  const ChartOptions final_chart = line_options(
      evaluation, evaluation.label + " on each task at the end (mean over seeds)", "task", 360);
  body += section("sequence", "Across the sequence",
                  line_chart_svg(curves, curve) + line_chart_svg(finals, final_chart));
  const auto rows = task_names(runs[0].front().results, "after ");
  const auto columns = task_names(runs[0].front().results, "");
  std::vector<std::vector<double>> both = means[0];
  both.insert(both.end(), means[1].begin(), means[1].end());
  ChartOptions heat_a = heat_options(evaluation, both, "A: " + a, 570);
  ChartOptions heat_b = heat_a;
  heat_b.title = "B: " + b;
  heat_a.height_px = heat_b.height_px = 60 + 56 * static_cast<int>(tasks) + 90;
  body += section("matrices", "Mean " + evaluation.label + " matrices",
                  "<div class=\"row\">" + heatmap_svg(means[0], rows, columns, heat_a) +
                      heatmap_svg(means[1], rows, columns, heat_b) + "</div>");
  std::string links = "<ul>";
  for (size_t arm = 0; arm < runs.size(); ++arm) {
    for (const RunRecord& run : runs[arm]) {
      links += "<li>" + std::string(arm == 0 ? "A" : "B") + ": " + html_escape(run.dir) + "</li>";
    }
  }
  body += section("runs", "Run directories", links + "</ul>");
  return page("clhost compare: " + a + " vs " + b, body);
}

}  // namespace clhost::tools
