// replay — experience replay: a buffer of `capacity` samples of earlier tasks (held by the host,
// clhost.replay/1), of which `batch_size` drawn without replacement join every training step.
//   policy = "reservoir":      every training sample seen so far has the same chance to be held
//                              (Vitter's algorithm R over the tasks' samples in index order);
//   policy = "class_balanced": the same number of samples of every class seen so far (the
//                              remainder to the lowest classes), each class's drawn uniformly from
//                              what it had and what the task brought.
// Seeded from run.seed: the same choices on every rank of a data-parallel run and after --resume.
#include <clhost/plugin.hpp>

#include <algorithm>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

const clhost_config_key_t kSchema[] = {
    {"capacity", CLHOST_CONFIG_TYPE_INT, "1000",
     "samples the buffer holds (inputs and labels, held by the host in tensor memory)", 1, 1,
     1LL << 32, nullptr},
    {"batch_size", CLHOST_CONFIG_TYPE_INT, "0",
     "stored samples added to every training step (0: as many as train.batch_size)", 1, 0, 1 << 24,
     nullptr},
    {"policy", CLHOST_CONFIG_TYPE_STRING, "\"reservoir\"",
     "which samples the buffer keeps at each task's end", 0, 0, 0, "reservoir|class_balanced"},
};
const clhost_plugin_descriptor_t kDescriptor{sizeof(clhost_plugin_descriptor_t),
                                             "replay",
                                             CLHOST_PLUGIN_KIND_REPLAY,
                                             "1.0.0",
                                             "experience replay: a buffer of earlier tasks' "
                                             "samples mixed into every batch",
                                             "clhost",
                                             kSchema,
                                             sizeof(kSchema) / sizeof(kSchema[0])};

const int64_t* int64s(const DLTensor& tensor) {
  return reinterpret_cast<const int64_t*>(static_cast<const char*>(tensor.data) +
                                          tensor.byte_offset);
}

class Replay : public clhost::sdk::Replay {
 public:
  Replay(const clhost_host_t* host, const clhost::sdk::Config& config)
      : clhost::sdk::Replay(host),
        capacity_(config.get_int("capacity")),
        draw_size_(config.get_int("batch_size")),
        class_balanced_(config.get_string("policy") == "class_balanced") {
    const clhost::sdk::Settings settings = this->host().settings();
    if (draw_size_ == 0) {
      draw_size_ = static_cast<int64_t>(settings.get_float("train.batch_size", 128.0));
    }
    if (class_balanced_ && settings.get_string("data.kind", "") == "text") {
      throw clhost::sdk::Error(
          "policy = \"class_balanced\" needs class labels; text tasks (data.kind = \"text\") "
          "have none: use policy = \"reservoir\"",
          CLHOST_STATUS_INVALID_ARGUMENT);
    }
    rng_.seed(static_cast<uint64_t>(settings.get_float("run.seed", 0.0)) * 7919ULL + 0x5e1ecULL);
  }

  // clhost.memory_plan/1: the host holds the buffer and plans it from the capacity; the draw adds
  // up to batch_size stored samples to every step.
  static clhost::sdk::MemoryPlan plan_memory(const clhost::sdk::Config& config,
                                             const clhost::sdk::Settings& settings,
                                             const clhost::sdk::MemoryPlanRequest& /*request*/) {
    clhost::sdk::MemoryPlan plan;
    plan.fisher_samples_per_pass = 0;
    plan.replay_capacity = config.get_int("capacity");
    const int64_t draw = config.get_int("batch_size");
    const auto batch = static_cast<int64_t>(settings.get_float("train.batch_size", 128.0));
    plan.replay_samples_per_step = std::min(draw == 0 ? batch : draw, plan.replay_capacity);
    return plan;
  }

  std::vector<int64_t> select(const clhost_replay_candidates_t& offer) override {
    if (class_balanced_) return select_balanced(offer);
    return select_reservoir(offer);
  }

  std::vector<int64_t> draw(const clhost_replay_draw_t& draw) override {
    const int64_t count = std::min(draw_size_, draw.stored);
    // A partial Fisher-Yates shuffle: `count` distinct slots, uniformly.
    std::vector<int64_t> slots(static_cast<size_t>(draw.stored));
    for (size_t i = 0; i < slots.size(); ++i) slots[i] = static_cast<int64_t>(i);
    for (int64_t i = 0; i < count; ++i) {
      std::uniform_int_distribution<int64_t> pick(i, draw.stored - 1);
      std::swap(slots[static_cast<size_t>(i)], slots[static_cast<size_t>(pick(rng_))]);
    }
    slots.resize(static_cast<size_t>(count));
    return slots;
  }

  [[nodiscard]] std::string report_json() const override {
    return "{\"capacity\": " + std::to_string(capacity_) +
           ", \"samples_seen\": " + std::to_string(seen_) + ", \"policy\": \"" +
           (class_balanced_ ? "class_balanced" : "reservoir") + "\"}";
  }

  void save_state(clhost::sdk::StateWriter& out) const {
    out.value(seen_);
    std::ostringstream rng;
    rng << rng_;
    out.string(rng.str());
  }
  void restore_state(clhost::sdk::StateReader& in) {
    seen_ = in.value<int64_t>();
    std::istringstream rng(in.string());
    rng >> rng_;
    if (!rng || seen_ < 0) {
      throw clhost::sdk::Error("replay: the saved state is not a replay state",
                               CLHOST_STATUS_INVALID_ARGUMENT);
    }
  }

 private:
  // Algorithm R: the buffer fills up, then candidate number `seen` replaces a random slot with
  // probability capacity / seen.
  std::vector<int64_t> select_reservoir(const clhost_replay_candidates_t& offer) {
    std::vector<int64_t> slots;
    for (int64_t k = 0; k < offer.stored; ++k) slots.push_back(k);
    for (int64_t c = 0; c < offer.candidates; ++c) {
      ++seen_;
      if (static_cast<int64_t>(slots.size()) < capacity_) {
        slots.push_back(-c - 1);
        continue;
      }
      std::uniform_int_distribution<int64_t> pick(0, seen_ - 1);
      const int64_t j = pick(rng_);
      if (j < capacity_) slots[static_cast<size_t>(j)] = -c - 1;
    }
    return slots;
  }

  std::vector<int64_t> select_balanced(const clhost_replay_candidates_t& offer) {
    if (offer.candidate_labels.data == nullptr ||
        (offer.stored > 0 && offer.stored_labels.data == nullptr)) {
      throw clhost::sdk::Error("replay: class_balanced needs class labels",
                               CLHOST_STATUS_INVALID_ARGUMENT);
    }
    // Every class's pool: what the buffer held of it and the task's samples of it.
    std::map<int64_t, std::vector<int64_t>> pools;
    for (int64_t k = 0; k < offer.stored; ++k) pools[int64s(offer.stored_labels)[k]].push_back(k);
    for (int64_t c = 0; c < offer.candidates; ++c) {
      pools[int64s(offer.candidate_labels)[c]].push_back(-c - 1);
    }
    seen_ += offer.candidates;
    const auto classes = static_cast<int64_t>(pools.size());
    int64_t spare = capacity_ % classes;
    std::vector<int64_t> slots;
    for (auto& [label, pool] : pools) {
      int64_t quota = capacity_ / classes;
      if (spare > 0) {
        ++quota;
        --spare;
      }
      const int64_t take = std::min<int64_t>(quota, static_cast<int64_t>(pool.size()));
      for (int64_t i = 0; i < take; ++i) {
        std::uniform_int_distribution<int64_t> pick(i, static_cast<int64_t>(pool.size()) - 1);
        std::swap(pool[static_cast<size_t>(i)], pool[static_cast<size_t>(pick(rng_))]);
        slots.push_back(pool[static_cast<size_t>(i)]);
      }
    }
    return slots;
  }

  int64_t capacity_;
  int64_t draw_size_;
  bool class_balanced_;
  int64_t seen_ = 0;  // training samples offered so far, over every task
  std::mt19937_64 rng_;
};

}  // namespace

CLHOST_DEFINE_PLUGIN(Replay, kDescriptor, nullptr)
