// The EWC plug-in through the ABI, driven by a small host whose parameters and Fisher are chosen
// by the test, so that penalties and gradients can be checked against hand computation.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "clhost/config.hpp"
#include "clhost/plugin_loader.hpp"

namespace {

struct TestHost {
  std::vector<std::vector<float>> values;
  std::vector<std::vector<float>> grads;
  std::vector<std::vector<float>> next_fisher;  // what the next Fisher pass returns
  std::vector<std::vector<int64_t>> shapes;
  bool memory_efficient = false;
  bool in_task_end = false;
  clhost_host_t host{};
};

TestHost& self(const clhost_host_t* host) {
  return *static_cast<TestHost*>(host->host_data);
}

DLTensor view(std::vector<float>& data, std::vector<int64_t>& shape) {
  DLTensor out{};
  out.data = data.data();
  out.device = {kDLCPU, 0};
  out.ndim = 1;
  out.dtype = {kDLFloat, 32, 1};
  out.shape = shape.data();
  return out;
}

uint32_t count(const clhost_host_t* host) {
  return static_cast<uint32_t>(self(host).values.size());
}
clhost_status_t get(const clhost_host_t* host, uint32_t index, clhost_parameter_t* out,
                    clhost_error_t*) {
  TestHost& test = self(host);
  *out = clhost_parameter_t{};
  out->name = index == 0 ? "a" : "b";
  out->value = view(test.values[index], test.shapes[index]);
  out->grad = view(test.grads[index], test.shapes[index]);
  out->numel = static_cast<int64_t>(test.values[index].size());
  return CLHOST_STATUS_OK;
}
clhost_status_t fisher(const clhost_host_t* host, const clhost_fisher_request_t*,
                       clhost_fisher_sink_fn sink, void* data, clhost_error_t* error) {
  TestHost& test = self(host);
  if (!test.in_task_end) return CLHOST_STATUS_INVALID_ARGUMENT;
  for (uint32_t p = 0; p < test.next_fisher.size(); ++p) {
    // Two blocks per parameter, to exercise offsets.
    const int64_t n = static_cast<int64_t>(test.next_fisher[p].size());
    const int64_t half = n / 2;
    for (const auto& [begin, end] : {std::pair<int64_t, int64_t>{0, half}, {half, n}}) {
      std::vector<float> part(test.next_fisher[p].begin() + begin,
                              test.next_fisher[p].begin() + end);
      std::vector<int64_t> shape{end - begin};
      DLTensor block = view(part, shape);
      const clhost_status_t status = sink(data, p, begin, &block, error);
      if (status != CLHOST_STATUS_OK) return status;
    }
  }
  return CLHOST_STATUS_OK;
}
int32_t get_bool(const clhost_host_t* host, const char* key, int32_t* out) {
  if (std::strcmp(key, "fisher_computation.use_memory_efficient") != 0) return 1;
  *out = self(host).memory_efficient ? 1 : 0;
  return 0;
}
int32_t no_int(const clhost_host_t*, const char*, int64_t*) {
  return 1;
}
int32_t no_float(const clhost_host_t*, const char*, double*) {
  return 1;
}
int32_t no_string(const clhost_host_t*, const char*, const char**) {
  return 1;
}

const clhost_params_service_v1_t kParams{sizeof(clhost_params_service_v1_t), &count, &get};
const clhost_gradstats_service_v1_t kGradstats{sizeof(clhost_gradstats_service_v1_t), &fisher};
const clhost_settings_service_v1_t kSettings{sizeof(clhost_settings_service_v1_t), &get_bool,
                                             &no_int, &no_float, &no_string};
const void* service(const clhost_host_t*, const char* id) {
  if (std::strcmp(id, CLHOST_SERVICE_PARAMS_V1) == 0) return &kParams;
  if (std::strcmp(id, CLHOST_SERVICE_GRADSTATS_V1) == 0) return &kGradstats;
  if (std::strcmp(id, CLHOST_SERVICE_SETTINGS_V1) == 0) return &kSettings;
  return nullptr;
}

class EwcHarness {
 public:
  EwcHarness(const std::string& mode, double gamma, bool efficient,
             const std::string& state_dtype = "fp32")
      : loader_({CLHOST_PLUGIN_DIR}) {
    test_.values = {{1.0F, 2.0F, 3.0F, 4.0F}, {0.5F, -0.5F}};
    test_.grads = {{0, 0, 0, 0}, {0, 0}};
    test_.shapes = {{4}, {2}};
    test_.memory_efficient = efficient;
    test_.host = clhost_host_t{sizeof(clhost_host_t), {1, 0}, "test", &service, &test_};
    plugin_ = &loader_.load("ewc");
    clhost::PluginSpec spec{"ewc",
                            {{"lambda", 2.0, "t"},
                             {"mode", mode, "t"},
                             {"gamma", gamma, "t"},
                             {"store", false, "t"},
                             {"state_dtype", state_dtype, "t"}},
                            "t"};
    config_ = clhost::resolve_plugin_config(*plugin_, spec, 0);
    clhost_error_t error{};
    EXPECT_EQ(plugin_->entry->create(&test_.host, config_.abi(), &instance_, &error),
              CLHOST_STATUS_OK)
        << error.message;
    table_ = static_cast<const clhost_regularizer_v1_t*>(plugin_->interface);
  }
  ~EwcHarness() { plugin_->entry->destroy(instance_); }
  EwcHarness(const EwcHarness&) = delete;
  EwcHarness& operator=(const EwcHarness&) = delete;
  EwcHarness(EwcHarness&&) = delete;
  EwcHarness& operator=(EwcHarness&&) = delete;

  TestHost& host() { return test_; }

  void end_task(std::vector<std::vector<float>> fisher_values) {
    test_.next_fisher = std::move(fisher_values);
    test_.in_task_end = true;
    const clhost_task_info_t task{sizeof(clhost_task_info_t), tasks_++, 5, "t", 10, 10};
    clhost_error_t error{};
    ASSERT_EQ(table_->on_task_end(instance_, &task, &error), CLHOST_STATUS_OK) << error.message;
    test_.in_task_end = false;
  }
  // Penalty and the gradient it added, for the current parameter values.
  double penalty(std::vector<std::vector<float>>* gradient = nullptr) {
    test_.grads = {{0, 0, 0, 0}, {0, 0}};
    const clhost_step_info_t step{sizeof(clhost_step_info_t), 0, 0, 0, 1, 0.0};
    double value = -1.0;
    clhost_error_t error{};
    EXPECT_EQ(table_->after_backward(instance_, &step, &value, &error), CLHOST_STATUS_OK)
        << error.message;
    if (gradient != nullptr) *gradient = test_.grads;
    return value;
  }
  nlohmann::json report() {
    const auto* reporter = static_cast<const clhost_report_v1_t*>(
        plugin_->entry->get_interface(CLHOST_INTERFACE_REPORT_V1));
    char buffer[4096];
    reporter->write_json(instance_, buffer, sizeof(buffer));
    return nlohmann::json::parse(buffer);
  }

 private:
  clhost::PluginLoader loader_;
  const clhost::LoadedPlugin* plugin_ = nullptr;
  clhost::ResolvedPluginConfig config_;
  TestHost test_;
  void* instance_ = nullptr;
  const clhost_regularizer_v1_t* table_ = nullptr;
  uint32_t tasks_ = 0;
};

const std::vector<std::vector<float>> kFisher1 = {{1.0F, 0.0F, 2.0F, 0.5F}, {4.0F, 1.0F}};
const std::vector<std::vector<float>> kFisher2 = {{0.5F, 1.0F, 0.0F, 0.5F}, {0.0F, 2.0F}};

TEST(Ewc, PenaltyIsZeroBeforeTheFirstTaskEndsAndMatchesTheFormulaAfter) {
  EwcHarness ewc("separate", 1.0, false);
  ewc.host().values[0][0] = 5.0F;
  EXPECT_EQ(ewc.penalty(), 0.0) << "no anchor yet";
  ewc.host().values = {{1.0F, 2.0F, 3.0F, 4.0F}, {0.5F, -0.5F}};
  ewc.end_task(kFisher1);
  EXPECT_EQ(ewc.penalty(), 0.0) << "at the anchor";
  ewc.host().values = {{2.0F, 2.0F, 2.0F, 4.0F}, {0.5F, 0.5F}};
  std::vector<std::vector<float>> gradient;
  // 0.5 * 2 * (1*1^2 + 0 + 2*(-1)^2 + 0 + 4*0 + 1*1^2) = 4
  EXPECT_DOUBLE_EQ(ewc.penalty(&gradient), 4.0);
  // lambda * F * delta
  EXPECT_EQ(gradient[0], (std::vector<float>{2.0F, 0.0F, -4.0F, 0.0F}));
  EXPECT_EQ(gradient[1], (std::vector<float>{0.0F, 2.0F}));
}

TEST(Ewc, SeparateKeepsOneQuadraticPerTask) {
  EwcHarness ewc("separate", 1.0, false);
  ewc.end_task(kFisher1);  // anchor a1 = initial values
  ewc.host().values = {{2.0F, 2.0F, 2.0F, 4.0F}, {0.5F, 0.5F}};
  ewc.end_task(kFisher2);  // anchor a2 = these values
  ewc.host().values = {{3.0F, 2.0F, 2.0F, 4.0F}, {0.5F, 0.5F}};
  // Task 1: 1*2^2 + 2*(-1)^2 + 1*1^2 = 7. Task 2: 0.5*1^2 = 0.5. Penalty 0.5*2*(7.5).
  EXPECT_DOUBLE_EQ(ewc.penalty(), 7.5);
  EXPECT_EQ(ewc.report()["state_bytes"].get<int64_t>(), 2 * 2 * 6 * 4);
}

TEST(Ewc, OnlineDecaysTheOldFisherAndMovesTheAnchor) {
  EwcHarness ewc("online", 0.5, false);
  ewc.end_task(kFisher1);
  ewc.host().values = {{2.0F, 2.0F, 2.0F, 4.0F}, {0.5F, 0.5F}};
  ewc.end_task(kFisher2);  // F = 0.5*F1 + F2, anchor = these values
  ewc.host().values = {{3.0F, 2.0F, 2.0F, 4.0F}, {0.5F, 1.5F}};
  // F[0][0] = 0.5*1 + 0.5 = 1 (delta 1); F[1][1] = 0.5*1 + 2 = 2.5 (delta 1). 0.5*2*(1 + 2.5).
  EXPECT_DOUBLE_EQ(ewc.penalty(), 3.5);
  EXPECT_EQ(ewc.report()["state_bytes"].get<int64_t>(), 2 * 6 * 4) << "does not grow with tasks";
}

// mode = "online" means the same in the memory-efficient layouts: gamma*F + F_new anchored at
// the latest parameters (not a decayed weighted mean of the old anchors), only stored compactly.
TEST(Ewc, OnlineInTheEfficientLayoutsIsTheOnlineState) {
  EwcHarness online("online", 0.5, false);
  EwcHarness merged("online", 0.5, true, "fp32");
  EwcHarness compact("online", 0.5, true, "int4_int8");
  for (EwcHarness* ewc : {&online, &merged, &compact}) {
    ewc->end_task(kFisher1);
    ewc->host().values = {{2.0F, 2.0F, 2.0F, 4.0F}, {0.5F, 0.5F}};
    ewc->end_task(kFisher2);
    ewc->host().values = {{3.0F, 2.0F, 2.0F, 4.0F}, {0.5F, 1.5F}};
  }
  std::vector<std::vector<float>> g_online;
  std::vector<std::vector<float>> g_merged;
  std::vector<std::vector<float>> g_compact;
  const double p_online = online.penalty(&g_online);
  EXPECT_DOUBLE_EQ(p_online, 3.5) << "as OnlineDecaysTheOldFisherAndMovesTheAnchor";
  EXPECT_DOUBLE_EQ(merged.penalty(&g_merged), p_online);
  EXPECT_NEAR(compact.penalty(&g_compact), p_online, 0.1 * p_online);
  for (size_t p = 0; p < g_online.size(); ++p) {
    for (size_t i = 0; i < g_online[p].size(); ++i) {
      EXPECT_FLOAT_EQ(g_merged[p][i], g_online[p][i]) << p << "," << i;
      // The int8 anchor is within half a step (4/127 here) of the parameter: lambda*F*(4/127).
      EXPECT_NEAR(g_compact[p][i], g_online[p][i], 0.1 * std::abs(g_online[p][i]) + 0.07)
          << p << "," << i;
    }
  }
}

TEST(Ewc, MergedStateHasTheSeparateGradientAndAConstantPenaltyOffset) {
  EwcHarness separate("separate", 1.0, false);
  EwcHarness merged("separate", 1.0, true, "fp32");
  for (EwcHarness* ewc : {&separate, &merged}) {
    ewc->end_task(kFisher1);
    ewc->host().values = {{2.0F, 2.5F, 2.0F, 3.0F}, {0.5F, 0.5F}};
    ewc->end_task(kFisher2);
  }
  const std::vector<std::vector<std::vector<float>>> probes = {
      {{0.0F, 1.0F, 2.0F, 3.0F}, {1.0F, 0.0F}}, {{4.0F, -1.0F, 0.5F, 2.0F}, {-1.0F, 2.0F}}};
  std::vector<double> offsets;
  for (const auto& probe : probes) {
    std::vector<std::vector<float>> g_separate;
    std::vector<std::vector<float>> g_merged;
    separate.host().values = probe;
    merged.host().values = probe;
    const double p_separate = separate.penalty(&g_separate);
    const double p_merged = merged.penalty(&g_merged);
    for (size_t p = 0; p < probe.size(); ++p) {
      for (size_t i = 0; i < probe[p].size(); ++i)
        EXPECT_NEAR(g_merged[p][i], g_separate[p][i], 1e-5);
    }
    offsets.push_back(p_separate - p_merged);
  }
  EXPECT_NEAR(offsets[0], offsets[1], 1e-5)
      << "the sum of quadratics is one quadratic plus a constant";
  EXPECT_EQ(merged.report()["state_bytes"].get<int64_t>(), 6 * 2 * 4);
}

TEST(Ewc, Int8StateTracksTheFp32State) {
  EwcHarness exact("separate", 1.0, true, "fp32");
  EwcHarness compact("separate", 1.0, true, "int8");
  EwcHarness mixed("separate", 1.0, true, "int8_fp16");
  for (EwcHarness* ewc : {&exact, &compact, &mixed}) {
    ewc->end_task(kFisher1);
    ewc->host().values = {{2.0F, 2.5F, 2.0F, 3.0F}, {0.5F, 0.5F}};
    ewc->end_task(kFisher2);
    ewc->host().values = {{0.0F, 1.0F, 2.0F, 3.0F}, {1.0F, 0.0F}};
  }
  std::vector<std::vector<float>> g_exact;
  std::vector<std::vector<float>> g_compact;
  const double p_exact = exact.penalty(&g_exact);
  const double p_compact = compact.penalty(&g_compact);
  EXPECT_NEAR(p_compact, p_exact, 0.05 * p_exact);
  for (size_t p = 0; p < g_exact.size(); ++p) {
    for (size_t i = 0; i < g_exact[p].size(); ++i)
      EXPECT_NEAR(g_compact[p][i], g_exact[p][i], 0.05 * std::abs(g_exact[p][i]) + 0.02);
  }
  // Codes (1 byte each for F and anchor) plus one scale record per tensor.
  EXPECT_EQ(compact.report()["state_bytes"].get<int64_t>(), 6 * 2 + 2 * 16);
  std::vector<std::vector<float>> g_mixed;
  EXPECT_NEAR(mixed.penalty(&g_mixed), p_exact, 0.05 * p_exact);
  EXPECT_EQ(mixed.report()["state_bytes"].get<int64_t>(), 6 * 3 + 2 * 16);
}

}  // namespace
