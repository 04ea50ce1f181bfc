// lwf, mas and replay through the ABI (1.7), driven by a small host whose outputs, snapshots,
// importance and buffers are chosen by the test, so that every term is checked by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>

#include "clhost/config.hpp"
#include "clhost/plugin_loader.hpp"

namespace {

struct TestHost {
  std::vector<std::vector<float>> values;
  std::vector<std::vector<float>> grads;
  std::vector<std::vector<int64_t>> shapes;
  std::string data_kind = "images";
  double seed = 1.0;
  int snapshots_taken = 0;
  // What the host's output-gradient pass hands the plug-in, and what it then delivers.
  std::vector<float> scores;
  std::vector<float> seen_gradient;  // the plug-in's df/dscores for `scores`
  std::vector<std::vector<float>> next_importance;
  clhost_host_t host{};
};

TestHost& self(const clhost_host_t* host) {
  return *static_cast<TestHost*>(host->host_data);
}

DLTensor view(void* data, std::vector<int64_t>& shape, DLDataType dtype) {
  DLTensor out{};
  out.data = data;
  out.device = {kDLCPU, 0};
  out.ndim = static_cast<int32_t>(shape.size());
  out.dtype = dtype;
  out.shape = shape.data();
  return out;
}
constexpr DLDataType kFloat32{kDLFloat, 32, 1};
constexpr DLDataType kInt64{kDLInt, 64, 1};
constexpr DLDataType kUInt8{kDLUInt, 8, 1};
constexpr DLDataType kInt32{kDLInt, 32, 1};

uint32_t count(const clhost_host_t* host) {
  return static_cast<uint32_t>(self(host).values.size());
}
clhost_status_t get(const clhost_host_t* host, uint32_t index, clhost_parameter_t* out,
                    clhost_error_t*) {
  TestHost& test = self(host);
  *out = clhost_parameter_t{};
  out->name = "p";
  out->value = view(test.values[index].data(), test.shapes[index], kFloat32);
  out->grad = view(test.grads[index].data(), test.shapes[index], kFloat32);
  out->numel = static_cast<int64_t>(test.values[index].size());
  return CLHOST_STATUS_OK;
}
int32_t no_bool(const clhost_host_t*, const char*, int32_t*) {
  return 1;
}
int32_t no_int(const clhost_host_t*, const char*, int64_t*) {
  return 1;
}
int32_t get_float(const clhost_host_t* host, const char* key, double* out) {
  if (std::strcmp(key, "run.seed") == 0) *out = self(host).seed;
  if (std::strcmp(key, "train.batch_size") == 0) *out = 32.0;
  return 0;
}
int32_t get_string(const clhost_host_t* host, const char* key, const char** out) {
  if (std::strcmp(key, "data.kind") != 0) return 1;
  *out = self(host).data_kind.c_str();
  return 0;
}
clhost_status_t take(const clhost_host_t* host, clhost_error_t*) {
  ++self(host).snapshots_taken;
  return CLHOST_STATUS_OK;
}
void release(const clhost_host_t*) {}
clhost_status_t accumulate(const clhost_host_t* host, const clhost_output_grads_request_t* request,
                           clhost_fisher_sink_fn sink, void* data, clhost_error_t* error) {
  TestHost& test = self(host);
  EXPECT_EQ(request->reduction, CLHOST_GRADIENTS_ABSOLUTE);
  std::vector<int64_t> score_shape{1, static_cast<int64_t>(test.scores.size())};
  std::vector<int64_t> target_shape{1};
  int64_t target = 0;
  test.seen_gradient.assign(test.scores.size(), 0.0F);
  const DLTensor scores = view(test.scores.data(), score_shape, kFloat32);
  const DLTensor targets = view(&target, target_shape, kInt64);
  DLTensor gradient = view(test.seen_gradient.data(), score_shape, kFloat32);
  clhost_status_t status =
      request->output_gradient(request->function_data, &scores, &targets, &gradient, error);
  for (uint32_t p = 0; status == CLHOST_STATUS_OK && p < test.next_importance.size(); ++p) {
    std::vector<int64_t> shape{static_cast<int64_t>(test.next_importance[p].size())};
    const DLTensor block = view(test.next_importance[p].data(), shape, kFloat32);
    status = sink(data, p, 0, &block, error);
  }
  return status;
}

const clhost_params_service_v1_t kParams{sizeof(clhost_params_service_v1_t), &count, &get};
const clhost_settings_service_v1_t kSettings{sizeof(clhost_settings_service_v1_t), &no_bool,
                                             &no_int, &get_float, &get_string};
const clhost_snapshot_service_v1_t kSnapshot{sizeof(clhost_snapshot_service_v1_t), &take, &release};
const clhost_output_grads_service_v1_t kOutputGrads{sizeof(clhost_output_grads_service_v1_t),
                                                    &accumulate};
const void* service(const clhost_host_t*, const char* id) {
  if (std::strcmp(id, CLHOST_SERVICE_PARAMS_V1) == 0) return &kParams;
  if (std::strcmp(id, CLHOST_SERVICE_SETTINGS_V1) == 0) return &kSettings;
  if (std::strcmp(id, CLHOST_SERVICE_SNAPSHOT_V1) == 0) return &kSnapshot;
  if (std::strcmp(id, CLHOST_SERVICE_OUTPUT_GRADS_V1) == 0) return &kOutputGrads;
  return nullptr;
}

// One instance of a shipped plug-in on the test host.
class Harness {
 public:
  Harness(const std::string& id, std::vector<clhost::PluginSetting> settings,
          const std::string& data_kind = "images")
      : loader_({CLHOST_PLUGIN_DIR}) {
    test_.values = {{1.0F, 2.0F, 3.0F}, {0.5F}};
    test_.grads = {{0, 0, 0}, {0}};
    test_.shapes = {{3}, {1}};
    test_.data_kind = data_kind;
    test_.host = clhost_host_t{sizeof(clhost_host_t), {1, 7}, "test", &service, &test_};
    plugin_ = &loader_.load(id);
    config_ = clhost::resolve_plugin_config(*plugin_,
                                            clhost::PluginSpec{id, std::move(settings), "t"}, 0);
    clhost_error_t error{};
    status_ = plugin_->entry->create(&test_.host, config_.abi(), &instance_, &error);
    message_ = error.message;
  }
  ~Harness() {
    if (instance_ != nullptr) plugin_->entry->destroy(instance_);
  }
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;
  Harness(Harness&&) = delete;
  Harness& operator=(Harness&&) = delete;

  [[nodiscard]] clhost_status_t create_status() const { return status_; }
  [[nodiscard]] const std::string& create_message() const { return message_; }
  TestHost& host() { return test_; }
  template <class Table>
  const Table& table(const char* id) const {
    return *static_cast<const Table*>(plugin_->entry->get_interface(id));
  }
  void* instance() { return instance_; }

  void end_task(uint32_t index) {
    const clhost_task_info_t task{sizeof(clhost_task_info_t), index, 5, "t", 10, 10};
    clhost_error_t error{};
    ASSERT_EQ(table<clhost_regularizer_v1_t>(CLHOST_INTERFACE_REGULARIZER_V1)
                  .on_task_end(instance_, &task, &error),
              CLHOST_STATUS_OK)
        << error.message;
  }
  std::string save() {
    std::string bytes;
    clhost_error_t error{};
    auto write = [](void* data, const void* from, size_t size, clhost_error_t*) {
      static_cast<std::string*>(data)->append(static_cast<const char*>(from), size);
      return CLHOST_STATUS_OK;
    };
    EXPECT_EQ(
        table<clhost_state_v1_t>(CLHOST_INTERFACE_STATE_V1).save(instance_, write, &bytes, &error),
        CLHOST_STATUS_OK);
    return bytes;
  }
  clhost_status_t restore(const std::string& bytes) {
    clhost_error_t error{};
    return table<clhost_state_v1_t>(CLHOST_INTERFACE_STATE_V1)
        .restore(instance_, bytes.data(), bytes.size(), &error);
  }

 private:
  clhost::PluginLoader loader_;
  const clhost::LoadedPlugin* plugin_ = nullptr;
  clhost::ResolvedPluginConfig config_;
  TestHost test_;
  void* instance_ = nullptr;
  clhost_status_t status_ = CLHOST_STATUS_INTERNAL;
  std::string message_;
};

// --- lwf ----------------------------------------------------------------------------------------

// One micro-batch for lwf: logits [n, 4], the current task's columns, optionally a snapshot's.
struct Batch {
  std::vector<float> logits;
  std::vector<float> snapshot;
  std::vector<uint8_t> active;
  std::vector<float> gradient;
};

double lwf_term(Harness& lwf, Batch& batch, uint32_t task) {
  const int64_t n = static_cast<int64_t>(batch.logits.size()) / 4;
  std::vector<int64_t> shape{n, 4};
  std::vector<int64_t> column_shape{4};
  std::vector<int64_t> sample_shape{n};
  std::vector<int64_t> targets(static_cast<size_t>(n), 0);
  std::vector<int32_t> tasks(static_cast<size_t>(n), static_cast<int32_t>(task));
  batch.gradient.assign(batch.logits.size(), 0.0F);
  clhost_output_batch_t in{};
  in.struct_size = sizeof(in);
  in.task_index = task;
  in.samples = n;
  in.logits = view(batch.logits.data(), shape, kFloat32);
  in.targets = view(targets.data(), sample_shape, kInt64);
  in.sample_tasks = view(tasks.data(), sample_shape, kInt32);
  in.active = view(batch.active.data(), column_shape, kUInt8);
  in.snapshot_logits =
      view(batch.snapshot.empty() ? nullptr : batch.snapshot.data(), shape, kFloat32);
  DLTensor gradient = view(batch.gradient.data(), shape, kFloat32);
  double value = -1.0;
  clhost_error_t error{};
  EXPECT_EQ(lwf.table<clhost_output_loss_v1_t>(CLHOST_INTERFACE_OUTPUT_LOSS_V1)
                .output_loss(lwf.instance(), &in, &value, &gradient, &error),
            CLHOST_STATUS_OK)
      << error.message;
  return value;
}

double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}

TEST(Lwf, DistilsThePreviousTasksHeadByHand) {
  Harness lwf("lwf", {{"alpha", 1.0, "t"}, {"temperature", 2.0, "t"}});
  ASSERT_EQ(lwf.create_status(), CLHOST_STATUS_OK) << lwf.create_message();
  Batch first{{1, 2, 0.5F, 0}, {}, {1, 1, 0, 0}, {}};
  EXPECT_EQ(lwf_term(lwf, first, 0), 0.0) << "no snapshot yet: no term";
  lwf.end_task(0);
  EXPECT_EQ(lwf.host().snapshots_taken, 1);
  // Task 2 trains columns 2, 3; the snapshot's head is columns 0, 1. At T = 2 the scaled logits
  // differ by 0.5 in either order: q = (s, 1 - s), p = (1 - s), s) with s = sigmoid(0.5), so
  // KL(q || p) = (2s - 1) * 0.5, the term T^2 KL = 2 (2s - 1) and its gradient T (p - q).
  Batch second{{1, 2, 0.5F, 0}, {2, 1, 0, 0}, {0, 0, 1, 1}, {}};
  const double s = sigmoid(0.5);
  EXPECT_NEAR(lwf_term(lwf, second, 1), 2.0 * (2.0 * s - 1.0), 1e-6);
  EXPECT_NEAR(second.gradient[0], 2.0 * ((1 - s) - s), 1e-6);
  EXPECT_NEAR(second.gradient[1], 2.0 * (s - (1 - s)), 1e-6);
  EXPECT_EQ(second.gradient[2], 0.0F) << "the current head is the data loss's";
  EXPECT_EQ(second.gradient[3], 0.0F);
  // Two samples: the term is their mean, each gradient row carries 1/n.
  Batch two{{1, 2, 0.5F, 0, 1, 2, 0.5F, 0}, {2, 1, 0, 0, 1, 2, 0, 0}, {0, 0, 1, 1}, {}};
  EXPECT_NEAR(lwf_term(lwf, two, 1), 0.5 * 2.0 * (2.0 * s - 1.0), 1e-6);
  EXPECT_NEAR(two.gradient[0], 0.5 * 2.0 * ((1 - s) - s), 1e-6);
  EXPECT_NEAR(two.gradient[4], 0.0, 1e-7) << "identical logits: nothing to distil";
}

TEST(Lwf, ClassIncrementalDistilsTheClassesSeenTaskIncrementalEveryEarlierHead) {
  const double s = sigmoid(0.5);
  const double one_head = 2.0 * (2.0 * s - 1.0);  // the term on the head (0, 1) above
  {
    // Task-incremental: heads {0,1} then {2,3}; on the third task both are distilled, averaged.
    Harness lwf("lwf", {});
    Batch a{{0, 0, 0, 0}, {}, {1, 1, 0, 0}, {}};
    lwf_term(lwf, a, 0);
    lwf.end_task(0);
    Batch b{{0, 0, 0, 0}, {}, {0, 0, 1, 1}, {}};
    lwf_term(lwf, b, 1);
    lwf.end_task(1);
    Batch c{{1, 2, 0, 0}, {2, 1, 0, 0}, {0, 0, 0, 0}, {}};
    EXPECT_NEAR(lwf_term(lwf, c, 2), one_head / 2.0, 1e-6) << "head {2,3} agrees, {0,1} not";
  }
  {
    // Class-incremental: {0,1} is inside {0,1,2,3}: one softmax over the four classes.
    Harness lwf("lwf", {});
    Batch a{{0, 0, 0, 0}, {}, {1, 1, 0, 0}, {}};
    lwf_term(lwf, a, 0);
    lwf.end_task(0);
    Batch b{{0, 0, 0, 0}, {}, {1, 1, 1, 1}, {}};
    lwf_term(lwf, b, 1);
    lwf.end_task(1);
    Batch c{{1, 2, 5, 5}, {1, 2, 5, 5}, {1, 1, 1, 1}, {}};
    EXPECT_NEAR(lwf_term(lwf, c, 2), 0.0, 1e-9) << "one group over every class seen";
  }
}

TEST(Lwf, StateRoundTripsAndRefusesForeignBytesAndTextTasks) {
  Harness lwf("lwf", {});
  Batch a{{0, 0, 0, 0}, {}, {1, 1, 0, 0}, {}};
  lwf_term(lwf, a, 0);
  lwf.end_task(0);
  const std::string bytes = lwf.save();
  Harness resumed("lwf", {});
  ASSERT_EQ(resumed.restore(bytes), CLHOST_STATUS_OK);
  Batch probe{{1, 2, 0.5F, 0}, {2, 1, 0, 0}, {0, 0, 1, 1}, {}};
  Batch again = probe;
  EXPECT_DOUBLE_EQ(lwf_term(resumed, probe, 1), lwf_term(lwf, again, 1));
  Harness other("lwf", {});
  EXPECT_EQ(other.restore(bytes.substr(0, bytes.size() - 1)), CLHOST_STATUS_INVALID_ARGUMENT);
  Harness text("lwf", {}, "text");
  EXPECT_EQ(text.create_status(), CLHOST_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(text.create_message().find("text"), std::string::npos) << text.create_message();
}

// --- mas ----------------------------------------------------------------------------------------

double mas_penalty(Harness& mas, std::vector<std::vector<float>>* gradient) {
  mas.host().grads = {{0, 0, 0}, {0}};
  const clhost_step_info_t step{sizeof(clhost_step_info_t), 1, 0, 0, 1, 0.0};
  double value = -1.0;
  clhost_error_t error{};
  EXPECT_EQ(mas.table<clhost_regularizer_v1_t>(CLHOST_INTERFACE_REGULARIZER_V1)
                .after_backward(mas.instance(), &step, &value, &error),
            CLHOST_STATUS_OK)
      << error.message;
  *gradient = mas.host().grads;
  return value;
}

TEST(Mas, ImportanceFromTheOutputsSquaredNormAndThePenaltyByHand) {
  Harness mas("mas", {{"lambda", 2.0, "t"}, {"alpha", 0.25, "t"}});
  ASSERT_EQ(mas.create_status(), CLHOST_STATUS_OK) << mas.create_message();
  std::vector<std::vector<float>> gradient;
  EXPECT_EQ(mas_penalty(mas, &gradient), 0.0) << "no anchor before the first task ends";
  mas.host().scores = {1.5F, -2.0F};
  mas.host().next_importance = {{1.0F, 0.0F, 2.0F}, {4.0F}};
  mas.end_task(0);
  // f = ||scores||^2: the plug-in hands the host df/dscores = 2 * scores.
  EXPECT_EQ(mas.host().seen_gradient, (std::vector<float>{3.0F, -4.0F}));
  mas.host().values = {{2.0F, 2.0F, 2.0F}, {0.0F}};  // moved from (1, 2, 3), (0.5)
  // lambda * sum Omega * delta^2 = 2 * (1*1 + 0 + 2*1 + 4*0.25) = 8; gradient 2*lambda*Omega*delta.
  EXPECT_DOUBLE_EQ(mas_penalty(mas, &gradient), 8.0);
  EXPECT_EQ(gradient[0], (std::vector<float>{4.0F, 0.0F, -8.0F}));
  EXPECT_EQ(gradient[1], (std::vector<float>{-8.0F}));
  // The second task blends: Omega = 0.25 * Omega_1 + 0.75 * Omega_2; anchors move to now.
  mas.host().next_importance = {{0.0F, 4.0F, 2.0F}, {0.0F}};
  mas.end_task(1);
  mas.host().values = {{3.0F, 3.0F, 3.0F}, {1.0F}};
  // Omega = (0.25, 3, 2), (1); delta = 1 everywhere: 2 * (0.25 + 3 + 2 + 1) = 12.5.
  EXPECT_DOUBLE_EQ(mas_penalty(mas, &gradient), 12.5);
  const std::string bytes = mas.save();
  Harness resumed("mas", {{"lambda", 2.0, "t"}, {"alpha", 0.25, "t"}});
  ASSERT_EQ(resumed.restore(bytes), CLHOST_STATUS_OK);
  resumed.host().values = mas.host().values;
  EXPECT_DOUBLE_EQ(mas_penalty(resumed, &gradient), 12.5);
  Harness text("mas", {}, "text");
  EXPECT_EQ(text.create_status(), CLHOST_STATUS_INVALID_ARGUMENT);
}

// --- replay -------------------------------------------------------------------------------------

std::vector<int64_t> replay_select(Harness& replay, const std::vector<int64_t>& stored_labels,
                                   const std::vector<int64_t>& candidate_labels) {
  std::vector<int64_t> stored = stored_labels;
  std::vector<int64_t> candidates = candidate_labels;
  std::vector<int32_t> stored_tasks(stored.size(), 0);
  std::vector<int64_t> stored_shape{static_cast<int64_t>(stored.size())};
  std::vector<int64_t> candidate_shape{static_cast<int64_t>(candidates.size())};
  clhost_replay_candidates_t offer{};
  offer.struct_size = sizeof(offer);
  offer.stored = static_cast<int64_t>(stored.size());
  offer.stored_labels = view(stored.data(), stored_shape, kInt64);
  offer.stored_tasks = view(stored_tasks.data(), stored_shape, kInt32);
  offer.candidates = static_cast<int64_t>(candidates.size());
  offer.candidate_labels = view(candidates.data(), candidate_shape, kInt64);
  offer.candidate_inputs = view(nullptr, candidate_shape, kFloat32);
  std::vector<int64_t> keep(stored.size() + candidates.size());
  int64_t kept = -1;
  clhost_error_t error{};
  EXPECT_EQ(replay.table<clhost_replay_v1_t>(CLHOST_INTERFACE_REPLAY_V1)
                .select(replay.instance(), &offer, keep.data(), &kept, &error),
            CLHOST_STATUS_OK)
      << error.message;
  keep.resize(static_cast<size_t>(std::max<int64_t>(kept, 0)));
  return keep;
}

TEST(Replay, ReservoirHoldsCapacityEachSampleOnceAndIsSeeded) {
  Harness replay("replay", {{"capacity", int64_t{5}, "t"}});
  ASSERT_EQ(replay.create_status(), CLHOST_STATUS_OK) << replay.create_message();
  const std::vector<int64_t> first = replay_select(replay, {}, {0, 0, 1, 1});
  EXPECT_EQ(first, (std::vector<int64_t>{-1, -2, -3, -4})) << "below capacity: all kept";
  const std::vector<int64_t> second =
      replay_select(replay, {0, 0, 1, 1}, std::vector<int64_t>(20, 2));
  ASSERT_EQ(second.size(), 5U);
  EXPECT_EQ(std::set<int64_t>(second.begin(), second.end()).size(), 5U) << "no sample twice";
  for (const int64_t entry : second) EXPECT_TRUE(entry < 4 && entry >= -20) << entry;
  Harness same("replay", {{"capacity", int64_t{5}, "t"}});
  replay_select(same, {}, {0, 0, 1, 1});
  EXPECT_EQ(replay_select(same, {0, 0, 1, 1}, std::vector<int64_t>(20, 2)), second)
      << "the same seed makes the same choices (every rank, every resume)";
}

TEST(Replay, ClassBalancedGivesEveryClassSeenTheSameShare) {
  Harness replay("replay",
                 {{"capacity", int64_t{6}, "t"}, {"policy", std::string("class_balanced"), "t"}});
  const std::vector<int64_t> first = replay_select(replay, {}, {0, 0, 0, 0, 1, 1, 1, 1});
  ASSERT_EQ(first.size(), 6U);
  std::vector<int64_t> stored_labels;
  for (const int64_t entry : first) stored_labels.push_back(-entry - 1 < 4 ? 0 : 1);
  EXPECT_EQ(std::count(stored_labels.begin(), stored_labels.end(), 0), 3) << "3 of each class";
  // Classes 0..2 seen, capacity 6: two each, 0's and 1's from the buffer, 2's from the task.
  const std::vector<int64_t> second = replay_select(replay, stored_labels, {2, 2, 2, 2, 2});
  std::map<int64_t, int> per_class;
  for (const int64_t entry : second) {
    per_class[entry >= 0 ? stored_labels[static_cast<size_t>(entry)] : 2] += 1;
  }
  EXPECT_EQ(per_class, (std::map<int64_t, int>{{0, 2}, {1, 2}, {2, 2}}));
}

TEST(Replay, DrawsDistinctStoredSamplesUpToItsBatchSize) {
  Harness replay("replay", {{"batch_size", int64_t{3}, "t"}});
  std::vector<int64_t> labels(10, 0);
  std::vector<int32_t> tasks(10, 0);
  std::vector<int64_t> shape{10};
  clhost_replay_draw_t draw{};
  draw.struct_size = sizeof(draw);
  draw.stored = 10;
  draw.stored_labels = view(labels.data(), shape, kInt64);
  draw.stored_tasks = view(tasks.data(), shape, kInt32);
  std::vector<int64_t> slots(10, -1);
  int64_t drawn = -1;
  clhost_error_t error{};
  const auto& table = replay.table<clhost_replay_v1_t>(CLHOST_INTERFACE_REPLAY_V1);
  ASSERT_EQ(table.draw(replay.instance(), &draw, slots.data(), 10, &drawn, &error),
            CLHOST_STATUS_OK);
  ASSERT_EQ(drawn, 3);
  EXPECT_EQ(std::set<int64_t>(slots.begin(), slots.begin() + 3).size(), 3U);
  draw.stored = 2;
  ASSERT_EQ(table.draw(replay.instance(), &draw, slots.data(), 2, &drawn, &error),
            CLHOST_STATUS_OK);
  EXPECT_EQ(drawn, 2) << "never more than the buffer holds";
}

}  // namespace
