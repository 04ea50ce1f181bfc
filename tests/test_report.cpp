// clhost compare and clhost report: statistics on fixed inputs, arm specs, pairing by seed,
// reuse of finished runs, reports from stored run directories, and the pages in a real browser.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "report/compare.hpp"
#include "report/report.hpp"
#include "report/stats.hpp"
#include "report/sweep.hpp"
#include "run_helpers.hpp"
#include "test_helpers.hpp"

namespace {

namespace fs = std::filesystem;
using clhost::tools::mean_interval;
using clhost::tools::paired_difference;
using nlohmann::json;

const std::string kQuick = std::string(CLHOST_SOURCE_DIR) + "/configs/quick.toml";

using Output = clhost::test::CommandResult;

Output shell(const std::string& command) {
  return clhost::test::run_command(command);
}

Output clhost(const std::string& args) {
  return shell(std::string(CLHOST_BINARY) + " " + args);
}

size_t count_of(const std::string& text, const std::string& part) {
  size_t count = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++count;
  return count;
}

TEST(CompareStats, MeanAndStudentTIntervalOnKnownValues) {
  // sd = sqrt(2.5), se = sd/sqrt(5), t(0.975, 4) = 2.776
  const auto interval = mean_interval({1, 2, 3, 4, 5});
  EXPECT_DOUBLE_EQ(interval.mean, 3.0);
  EXPECT_NEAR(interval.high - interval.mean, 2.776 * std::sqrt(2.5 / 5.0), 1e-9);
  EXPECT_NEAR(interval.mean - interval.low, 2.776 * std::sqrt(2.5 / 5.0), 1e-9);
  EXPECT_EQ(interval.count, 5U);
  EXPECT_TRUE(std::isnan(mean_interval({7}).low));
  EXPECT_DOUBLE_EQ(clhost::tools::student_t_975(1), 12.706);
  EXPECT_NEAR(clhost::tools::student_t_975(40), 2.021, 0.002);
  EXPECT_NEAR(clhost::tools::student_t_975(120), 1.980, 0.002);
}

TEST(CompareStats, PairedDifferenceAndItsVerdict) {
  // Differences 1.0, 1.1, 0.9: mean 1, sd 0.1, t(2) = 4.303.
  const auto clear = paired_difference({1, 2, 3}, {2, 3.1, 3.9});
  EXPECT_NEAR(clear.difference.mean, 1.0, 1e-12);
  EXPECT_NEAR(clear.difference.high - 1.0, 4.303 * 0.1 / std::sqrt(3.0), 1e-9);
  EXPECT_TRUE(clear.significant);
  // Differences 1, -1, 0.5: the interval straddles 0.
  EXPECT_FALSE(paired_difference({0, 0, 0}, {1, -1, 0.5}).significant);
  // Pairing matters: the same values unpaired would not be significant.
  EXPECT_TRUE(paired_difference({10, 20, 30}, {10.5, 20.4, 30.6}).significant);
  EXPECT_THROW((void)paired_difference({1, 2}, {1}), std::invalid_argument);
}

TEST(CompareArms, SpecsAreOverridesOrConfigFiles) {
  const auto arm = clhost::tools::parse_arm_spec("plugins=ewc,l2;train.lr=0.01", kQuick, "");
  ASSERT_TRUE(arm.plugins.has_value());
  EXPECT_EQ(*arm.plugins, (std::vector<std::string>{"ewc", "l2"}));
  EXPECT_EQ(arm.set, (std::vector<std::string>{"train.lr=0.01"}));
  EXPECT_EQ(arm.config, kQuick);
  const auto none = clhost::tools::parse_arm_spec("plugins=", kQuick, "fine-tuning");
  ASSERT_TRUE(none.plugins.has_value());
  EXPECT_TRUE(none.plugins->empty());
  EXPECT_EQ(none.name, "fine-tuning");
  const auto file = clhost::tools::parse_arm_spec(kQuick, "", "");
  EXPECT_EQ(file.config, kQuick);
  EXPECT_EQ(file.name, "quick");
  EXPECT_THROW(clhost::tools::parse_arm_spec("oops", kQuick, ""), clhost::ConfigError);
  EXPECT_THROW(clhost::tools::parse_arm_spec("missing.toml", kQuick, ""), clhost::ConfigError);
  EXPECT_THROW(clhost::tools::parse_arm_spec("plugins=l2", "", ""), clhost::ConfigError);
}

TEST(CompareArms, AnArmThatCannotRunIsRefusedBeforeAnyRunStarts) {
  clhost::test::TempDir dir;
  const Output missing =
      clhost("compare --config " + kQuick +
             " --a 'plugins=no_such_plugin' --b 'plugins=' --output " + dir.path("cmp"));
  EXPECT_EQ(missing.exit_code, 3) << missing.output;
  EXPECT_NE(missing.output.find("plug-in 'no_such_plugin' not found"), std::string::npos)
      << missing.output;
  const Output range = clhost("compare --config " + kQuick +
                              " --a 'train.lr=99' --b 'plugins=' --output " + dir.path("cmp"));
  EXPECT_EQ(range.exit_code, 2) << range.output;
  EXPECT_NE(range.output.find("train.lr"), std::string::npos) << range.output;
  EXPECT_FALSE(fs::exists(dir.path("cmp"))) << "nothing may be written";
}

// One quick comparison, shared by the tests below (each arm x seed is a real clhost run).
class CompareRun : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new clhost::test::TempDir();
    first_ = new Output(compare());
  }
  static void TearDownTestSuite() {
    delete first_;
    delete dir_;
  }
  static Output compare() {
    return clhost("compare --config " + kQuick +
                  " --a 'plugins=' --a-name fine-tuning --b 'plugins=l2' --b-name L2"
                  " --seed-list 3 7 --jobs 2 --output " +
                  dir_->path("cmp"));
  }
  static clhost::test::TempDir* dir_;
  static Output* first_;
};
clhost::test::TempDir* CompareRun::dir_ = nullptr;
Output* CompareRun::first_ = nullptr;

TEST_F(CompareRun, PairsSeedsAcrossArmsAndWritesTableJsonAndPage) {
  ASSERT_EQ(first_->exit_code, 0) << first_->output;
  EXPECT_NE(first_->output.find("average accuracy"), std::string::npos) << first_->output;
  EXPECT_NE(first_->output.find("B - A (paired)"), std::string::npos);
  const json comparison = json::parse(clhost::test::read_file(dir_->path("cmp/compare.json")));
  EXPECT_EQ(comparison["seeds"], json({3, 7}));
  for (size_t i = 0; i < 2; ++i) {
    const auto a = clhost::tools::load_run(comparison["arms"][0]["runs"][i]);
    const auto b = clhost::tools::load_run(comparison["arms"][1]["runs"][i]);
    const int64_t seed = comparison["seeds"][i];
    EXPECT_EQ(a.results["config"]["run"]["seed"], seed);
    EXPECT_EQ(b.results["config"]["run"]["seed"], seed);
    // Same seed: same initial model and data in both arms.
    EXPECT_EQ(a.results["random_init_accuracy"], b.results["random_init_accuracy"]);
    EXPECT_TRUE(b.results["plugins"][0]["id"] == "l2");
    EXPECT_TRUE(a.results["plugins"].empty());
  }
  const json& accuracy = comparison["metrics"]["average_accuracy"];
  EXPECT_EQ(accuracy["a_values"].size(), 2U);
  const double difference = accuracy["difference_b_minus_a"]["mean"];
  EXPECT_NEAR(difference,
              (accuracy["b_values"][0].get<double>() - accuracy["a_values"][0].get<double>() +
               accuracy["b_values"][1].get<double>() - accuracy["a_values"][1].get<double>()) /
                  2.0,
              1e-12);
  const std::string html = clhost::test::read_file(dir_->path("cmp/compare.html"));
  for (const char* id : {"id=\"comparison\"", "id=\"sequence\"", "id=\"matrices\"", "<svg"}) {
    EXPECT_NE(html.find(id), std::string::npos) << id;
  }
  EXPECT_EQ(html.find("<script"), std::string::npos) << "self-contained, no scripts";
}

TEST_F(CompareRun, RerunningReusesFinishedRuns) {
  ASSERT_EQ(first_->exit_code, 0) << first_->output;
  const std::string results = dir_->path("cmp/a/seed_3/results.json");
  const auto written = fs::last_write_time(results);
  const Output again = compare();
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(count_of(again.output, "with the same settings, reused"), 4U) << again.output;
  EXPECT_EQ(fs::last_write_time(results), written);
  // An interrupted run (no status.json) is run again, the others reused.
  fs::remove(dir_->path("cmp/b/seed_7/status.json"));
  const Output repaired = compare();
  ASSERT_EQ(repaired.exit_code, 0) << repaired.output;
  EXPECT_EQ(count_of(repaired.output, "with the same settings, reused"), 3U) << repaired.output;
  EXPECT_TRUE(fs::exists(dir_->path("cmp/b/seed_7/status.json")));
}

// Headless chromium's switches for loading a page from a file, with its profile in `profile`.
std::string chromium_flags(const std::string& profile) {
  return " --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking"
         " --disable-component-update --disable-sync --hide-scrollbars --enable-logging=stderr"
         " --v=0 --user-data-dir=" +
         profile;
}

TEST(SweepGrid, ListsAndRangesOfValues) {
  using clhost::tools::parse_grid;
  const auto listed = parse_grid("pipeline.0.lambda=[1, 10, 1e2]");
  EXPECT_EQ(listed.key, "pipeline.0.lambda");
  EXPECT_EQ(listed.values, (std::vector<std::string>{"1", "10", "100.0"}));
  // Listed floats exactly as given, in their shortest text (not 0.10000000000000001).
  EXPECT_EQ(parse_grid("l2.lambda=[0.1, 0.123456789, 1e-3]").values,
            (std::vector<std::string>{"0.1", "0.123456789", "0.001"}));
  EXPECT_EQ(parse_grid("ewc.mode=[\"separate\", \"online\"]").values,
            (std::vector<std::string>{"'separate'", "'online'"}));  // TOML literal strings
  EXPECT_EQ(parse_grid("ewc.lambda=logspace(1, 1000, 4)").values,
            (std::vector<std::string>{"1", "10", "100", "1000"}));
  EXPECT_EQ(parse_grid("train.lr=logspace(1e-4, 1e-2, 3)").values,
            (std::vector<std::string>{"0.0001", "0.001", "0.01"}));
  EXPECT_EQ(parse_grid("ewc.gamma=linspace(0.0, 1, 3)").values,
            (std::vector<std::string>{"0.0", "0.5", "1.0"}));
  EXPECT_EQ(parse_grid("lowrank_fisher.rank=linspace(0, 8, 5)").values,
            (std::vector<std::string>{"0", "2", "4", "6", "8"}));
  // Random search: drawn inside the ranges (log-uniform), from the lists, seeded.
  clhost::tools::SweepOptions random;
  random.axes = {parse_grid("ewc.lambda=logspace(1, 1e4, 2)"), parse_grid("train.lr=[1e-3, 1e-4]"),
                 parse_grid("ewc.gamma=linspace(0.5, 1.0, 2)")};
  random.samples = 40;
  const auto drawn = clhost::tools::sweep_combinations(random);
  EXPECT_GT(drawn.size(), 30U);
  size_t small = 0;
  for (const auto& values : drawn) {
    const double lambda = std::stod(values[0]);
    EXPECT_GE(lambda, 1.0);
    EXPECT_LE(lambda, 1e4);
    small += lambda < 100.0 ? 1 : 0;  // log-uniform: about half below the geometric middle
    EXPECT_TRUE(values[1] == "0.001" || values[1] == "0.0001") << values[1];
    EXPECT_GE(std::stod(values[2]), 0.5);
    EXPECT_LE(std::stod(values[2]), 1.0);
  }
  EXPECT_GT(small, drawn.size() / 4);
  EXPECT_LT(small, drawn.size() * 3 / 4);
  EXPECT_EQ(clhost::tools::sweep_combinations(random), drawn) << "seeded";
  random.samples = 0;
  EXPECT_EQ(clhost::tools::sweep_combinations(random).size(), 2U * 2U * 2U) << "the grid";
  for (const char* bad : {"lambda", "=[1]", "ewc.lambda=[]", "ewc.lambda=[1,",
                          "x=logspace(0, 10, 3)", "x=linspace(a, 1, 3)", "x=linspace(0, 1, 1)"}) {
    EXPECT_THROW((void)parse_grid(bad), clhost::ConfigError) << bad;
  }
}

// Below a round's cut, a combination the seeds cannot tell from the last one kept goes on: the
// permuted Fashion-MNIST sweep's first round had four values of lambda within 0.3 points.
TEST(SweepHalving, ACombinationTheSeedsCannotTellApartGoesOn) {
  using clhost::tools::goes_on_beside;
  const std::vector<double> kept{0.81, 0.82, 0.83};
  EXPECT_TRUE(goes_on_beside({0.80, 0.83, 0.82}, kept, true)) << "within the seeds' spread";
  EXPECT_FALSE(goes_on_beside({0.70, 0.71, 0.72}, kept, true)) << "worse on every seed";
  EXPECT_TRUE(goes_on_beside(kept, kept, true)) << "a tie";
  // Lower is better (bits per byte): the same scores read the other way.
  EXPECT_FALSE(goes_on_beside({0.91, 0.92, 0.93}, kept, false));
  EXPECT_TRUE(goes_on_beside({0.80, 0.83, 0.82}, kept, false));
  // One seed has no spread: only an exact tie goes on.
  EXPECT_TRUE(goes_on_beside({0.5}, {0.5}, true));
  EXPECT_FALSE(goes_on_beside({0.4999}, {0.5}, true));
}

// A real sweep on the quick config: two values, held-out validation samples added, the best
// chosen on them; bad grids are refused before anything runs.
TEST(SweepRun, ScoresEveryValueOnValidationSamplesAndWritesTheBest) {
  clhost::test::TempDir dir;
  const Output bad = clhost("sweep --config " + kQuick +
                            " --grid 'train.lrr=[1,2]' --seeds 1 --output " + dir.path("bad"));
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("train.lrr"), std::string::npos) << bad.output;
  EXPECT_FALSE(fs::exists(dir.path("bad")));
  const Output run = clhost("sweep --config " + kQuick +
                            " --grid 'pipeline.0.lambda=[0.0, 1e3]' --set train.iterations=30"
                            " --seed-list 4 --jobs 2 --output " +
                            dir.path("sw"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("data.validation = 0.1"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("best: "), std::string::npos) << run.output;
  const json sweep = json::parse(clhost::test::read_file(dir.path("sw/sweep.json")));
  ASSERT_EQ(sweep["points"].size(), 2U);
  EXPECT_EQ(sweep["metric"], "average_accuracy");
  std::vector<double> means;
  for (const auto& point : sweep["points"]) {
    ASSERT_EQ(point["runs"].size(), 1U);
    const auto results = clhost::tools::load_run(point["runs"][0]).results;
    EXPECT_EQ(results["config"]["run"]["seed"], 4);
    EXPECT_DOUBLE_EQ(results["config"]["data"]["validation"].get<double>(), 0.1);
    EXPECT_EQ(point["validation_scores"][0], results["validation"]["metrics"]["average_accuracy"]);
    means.push_back(point["validation"]["mean"].get<double>());
  }
  const size_t best = means[1] > means[0] ? 1 : 0;
  EXPECT_EQ(sweep["best"]["index"], best);
  const auto best_run = clhost::tools::load_run(sweep["points"][best]["runs"][0]).results;
  EXPECT_EQ(sweep["best"]["test_scores"][0], best_run["metrics"]["average_accuracy"]);
  const clhost::RunConfig chosen = clhost::load_config(dir.path("sw/best.toml"));
  ASSERT_EQ(chosen.pipeline.at(0).settings.at(0).key, "lambda");
  EXPECT_EQ(std::get<double>(chosen.pipeline.at(0).settings.at(0).value), best == 1 ? 1e3 : 0.0);
  const std::string html = clhost::test::read_file(dir.path("sw/sweep.html"));
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos) << "self-contained, no scripts";
  if (!fs::exists("/usr/bin/chromium")) {
    GTEST_SKIP() << "chromium is not installed (tools/setup.sh installs it): browser check "
                    "skipped";
  }
  const Output dom = shell("timeout 120 /usr/bin/chromium" + chromium_flags(dir.path("profile")) +
                           " --dump-dom file://" + dir.path("sw/sweep.html"));
  ASSERT_EQ(dom.exit_code, 0) << dom.output.substr(0, 2000);
  EXPECT_NE(dom.output.find("<svg"), std::string::npos);
  EXPECT_NE(dom.output.find("<b>best</b>"), std::string::npos);
  EXPECT_EQ(dom.output.find(":CONSOLE("), std::string::npos) << dom.output;
}

// Successive halving: four values, half stopped after each round; every run continues from where
// it stopped; a rerun reuses everything.
TEST(SweepRun, SuccessiveHalvingStopsTheWeakerHalfEachRound) {
  clhost::test::TempDir dir;
  const std::string command = "sweep --config " + kQuick +
                              " --grid 'pipeline.0.lambda=[0.0, 0.1, 10.0, 1e3]'"
                              " --set train.iterations=30 --seed-list 5 --jobs 2 --halving 2"
                              " --output " +
                              dir.path("sh");
  const Output run = clhost(command);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const json sweep = json::parse(clhost::test::read_file(dir.path("sh/sweep.json")));
  // Five tasks, ETA 2: rounds after tasks 2 and 3, then all five; two go on after task 2, one
  // after task 3 (both if they tie there).
  std::map<int64_t, int> stopped;
  for (const auto& point : sweep["points"]) ++stopped[point["stopped_after_task"].get<int64_t>()];
  EXPECT_EQ(stopped[2], 2);
  EXPECT_EQ(stopped[3] + stopped[0], 2);
  EXPECT_GE(stopped[0], 1);
  EXPECT_EQ(sweep["tasks_trained"], 2 * 2 + stopped[3] * 3 + stopped[0] * 5);
  EXPECT_EQ(sweep["tasks_without_halving"], 4 * 5);
  const size_t best = sweep["best"]["index"];
  EXPECT_EQ(sweep["points"][best]["stopped_after_task"], 0);
  ASSERT_EQ(sweep["points"][best]["rungs"].size(), 2U);
  // The survivor ran in three pieces and says so; every combination stopped after the first
  // round scored no better there than every one that went on.
  const auto survivor = clhost::tools::load_run(sweep["points"][best]["runs"][0]).results;
  EXPECT_EQ(survivor["resumes"].size(), 2U);
  double worst_kept = 1.0;
  double best_stopped = 0.0;
  for (const auto& point : sweep["points"]) {
    const double score = point["rungs"][0]["score"];
    if (point["stopped_after_task"] == 2) {
      best_stopped = std::max(best_stopped, score);
    } else {
      worst_kept = std::min(worst_kept, score);
    }
  }
  EXPECT_LE(best_stopped, worst_kept);
  const Output again = clhost(command);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(again.output.find("] start "), std::string::npos) << again.output;
  EXPECT_EQ(again.output.find("] continue "), std::string::npos) << again.output;
}

TEST(Report, FromAStoredRunDirectoryWithoutRerunning) {
  clhost::test::TempDir dir;
  clhost::test::run_quietly(kQuick, dir.path("run"));
  const auto before = fs::last_write_time(dir.path("run") + "/results.json");
  const Output report = clhost("report " + dir.path("run"));
  ASSERT_EQ(report.exit_code, 0) << report.output;
  EXPECT_EQ(fs::last_write_time(dir.path("run") + "/results.json"), before);
  const std::string html = clhost::test::read_file(dir.path("run") + "/report.html");
  for (const char* id : {"id=\"summary\"", "id=\"accuracy-matrix\"", "id=\"per-task\"",
                         "id=\"loss\"", "id=\"batch-size\"", "id=\"memory\"", "Not profiled"}) {
    EXPECT_NE(html.find(id), std::string::npos) << id;
  }
  // Every inlined SVG has its own ids: none of cairo's glyph ids collide.
  EXPECT_EQ(html.find("id=\"glyph"), std::string::npos);
  const Output missing = clhost("report " + dir.path("nothing_here"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("results.json: missing"), std::string::npos) << missing.output;
}

// The pages in Debian's chromium, headless: the sections render and the console stays clean.
TEST(Report, PagesRenderInAHeadlessBrowser) {
  if (!fs::exists("/usr/bin/chromium")) {
    GTEST_SKIP() << "chromium is not installed (tools/setup.sh installs it): browser test "
                    "skipped";
  }
  clhost::test::TempDir dir;
  clhost::test::run_quietly(kQuick, dir.path("run"), {"pipeline.0.lambda=1.0"});
  ASSERT_EQ(clhost("report " + dir.path("run")).exit_code, 0);
  const std::string flags = chromium_flags(dir.path("profile"));
  const std::string url = "file://" + dir.path("run") + "/report.html";
  const Output dom = shell("timeout 120 /usr/bin/chromium" + flags + " --dump-dom " + url);
  ASSERT_EQ(dom.exit_code, 0) << dom.output.substr(0, 2000);
  for (const char* id : {"id=\"summary\"", "id=\"accuracy-matrix\"", "id=\"per-task\"",
                         "id=\"loss\"", "id=\"batch-size\"", "id=\"memory\""}) {
    EXPECT_NE(dom.output.find(id), std::string::npos) << id;
  }
  const std::string screenshot = dir.path("report.png");
  const Output shot = shell("timeout 120 /usr/bin/chromium" + flags +
                            " --window-size=1280,2400 --screenshot=" + screenshot + " " + url);
  ASSERT_EQ(shot.exit_code, 0) << shot.output.substr(0, 2000);
  ASSERT_TRUE(fs::exists(screenshot));
  EXPECT_GT(fs::file_size(screenshot), 20000U);
  for (const Output* output : {&dom, &shot}) {
    EXPECT_EQ(output->output.find(":CONSOLE("), std::string::npos) << "console message:\n"
                                                                   << output->output;
    EXPECT_EQ(output->output.find("net::ERR_"), std::string::npos) << output->output;
  }
}

}  // namespace
