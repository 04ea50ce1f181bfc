// The processes of a data-parallel run and what they say to each other: LibTorch's c10d process
// group (Gloo on CPU tensors) behind a small interface, so nothing else includes c10d or Gloo.
// A single-process run has a Collective too, whose every operation is the identity: the trainer,
// evaluation and Fisher pass call the same functions whatever the world size.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "clhost/config.hpp"

namespace clhost {

// Where this process stands, from torchrun's environment variables (docs/distributed.md).
struct LaunchEnvironment {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr;
  int master_port = 0;
  // TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent already hosts the store; every rank is a
  // client, under the prefix "/worker/attempt_<TORCHELASTIC_RESTART_COUNT>".
  bool agent_store = false;
  std::string restart_count = "0";
};

// World size 1 when WORLD_SIZE is unset. Throws ConfigError naming the variable that is missing
// or malformed.
LaunchEnvironment launch_environment();

class Collective {
 public:
  // The single process.
  Collective();
  // Joins the process group of `env` (rendezvous bounded by settings.timeout_seconds). Throws
  // RunError saying which rank could not reach whom.
  Collective(const LaunchEnvironment& env, const DistributedSection& settings);
  ~Collective();
  Collective(const Collective&) = delete;
  Collective& operator=(const Collective&) = delete;
  Collective(Collective&&) = delete;
  Collective& operator=(Collective&&) = delete;

  [[nodiscard]] int rank() const { return rank_; }
  [[nodiscard]] int world_size() const { return world_size_; }
  [[nodiscard]] bool distributed() const { return world_size_ > 1; }
  // The rank that writes the run directory, checkpoints and the Fisher store.
  [[nodiscard]] bool writes_outputs() const { return rank_ == 0; }
  [[nodiscard]] const char* backend_name() const { return distributed() ? "gloo" : "none"; }

  // In place, the sum over ranks of every tensor (contiguous CPU tensors), all-reduced in
  // coalesced buckets of about distributed.bucket_size bytes of one dtype.
  void sum(const std::vector<at::Tensor>& tensors);
  [[nodiscard]] double sum(double value);
  [[nodiscard]] std::vector<double> sum(const std::vector<double>& values);
  [[nodiscard]] int64_t max(int64_t value);
  [[nodiscard]] int64_t min(int64_t value);
  // In place: rank `root`'s values of `tensors` on every rank.
  void broadcast(const std::vector<at::Tensor>& tensors, int root = 0);
  // Every rank's `tensor`, in rank order. Same dtype and trailing shape on every rank; the first
  // dimension may differ (0 included).
  [[nodiscard]] std::vector<at::Tensor> gather(const at::Tensor& tensor);
  // Rank 0's `value` on every rank (through the rendezvous store; for start-up facts).
  [[nodiscard]] std::string share(const std::string& key, const std::string& value);
  // Every rank's `value`, in rank order (through the store).
  [[nodiscard]] std::vector<std::string> exchange(const std::string& key, const std::string& value);

  // Seconds this process spent in collectives since it joined.
  [[nodiscard]] double seconds() const { return seconds_; }

 private:
  struct Group;
  template <class Operation>
  void timed(const char* what, Operation&& operation);
  void sum_bucket(std::vector<at::Tensor>& bucket);

  std::unique_ptr<Group> group_;
  int rank_ = 0;
  int world_size_ = 1;
  int64_t bucket_bytes_ = int64_t{1} << 20;
  double timeout_seconds_ = 300.0;
  double seconds_ = 0.0;
};

// The Collective of a process that is not part of a data-parallel run (for tests and tools).
Collective& single_process();

}  // namespace clhost
