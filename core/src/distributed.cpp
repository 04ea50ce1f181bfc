#include "distributed.hpp"

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>
#include <stdexcept>

#include "clhost/errors.hpp"

namespace clhost {
namespace {

using Clock = std::chrono::steady_clock;

const char* environment(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : nullptr;
}

int integer_variable(const char* name, int minimum, int maximum, int fallback, bool required) {
  const char* value = environment(name);
  if (value == nullptr) {
    if (required) {
      throw ConfigError(std::string(name) +
                        " is not set: a distributed run (WORLD_SIZE > 1) needs RANK, WORLD_SIZE, "
                        "MASTER_ADDR and MASTER_PORT (clhost run --nproc N or torchrun set them)");
    }
    return fallback;
  }
  char* end = nullptr;
  const long parsed = std::strtol(value, &end, 10);
  if (*end != '\0' || parsed < minimum || parsed > maximum) {
    throw ConfigError(std::string(name) + "=" + value + ": expected an integer in [" +
                      std::to_string(minimum) + ", " + std::to_string(maximum) + "]");
  }
  return static_cast<int>(parsed);
}

// The first line of a c10d/Gloo error: the rest is a C++ backtrace.
std::string first_line(const std::exception& e) {
  const std::string text = e.what();
  return text.substr(0, text.find('\n'));
}

bool is_loopback(const std::string& address) {
  return address == "localhost" || address.rfind("127.", 0) == 0 || address == "::1";
}

}  // namespace

LaunchEnvironment launch_environment() {
  LaunchEnvironment env;
  env.world_size = integer_variable("WORLD_SIZE", 1, 65536, 1, false);
  if (env.world_size == 1) return env;
  env.rank = integer_variable("RANK", 0, env.world_size - 1, 0, true);
  env.local_rank = integer_variable("LOCAL_RANK", 0, env.world_size - 1, env.rank, false);
  env.local_world_size =
      integer_variable("LOCAL_WORLD_SIZE", 1, env.world_size, env.world_size, false);
  env.master_port = integer_variable("MASTER_PORT", 1, 65535, 0, true);
  const char* address = environment("MASTER_ADDR");
  if (address == nullptr) {
    throw ConfigError(
        "MASTER_ADDR is not set: a distributed run (WORLD_SIZE > 1) needs the "
        "address of rank 0's machine");
  }
  env.master_addr = address;
  const char* agent = environment("TORCHELASTIC_USE_AGENT_STORE");
  env.agent_store = agent != nullptr && std::string(agent) == "True";
  if (const char* restarts = environment("TORCHELASTIC_RESTART_COUNT"))
    env.restart_count = restarts;
  return env;
}

struct Collective::Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
};

Collective::Collective() = default;
Collective::~Collective() = default;

Collective& single_process() {
  static Collective single;
  return single;
}

namespace {

c10::intrusive_ptr<c10d::Store> connect_store(const LaunchEnvironment& env,
                                              std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<uint16_t>(env.master_port);
  options.timeout = timeout;
  // Under torchrun's agent the store exists already; otherwise rank 0 hosts it.
  options.isServer = !env.agent_store && env.rank == 0;
  options.numWorkers = env.agent_store ? c10::nullopt : c10::optional<size_t>(env.world_size);
  options.waitWorkers = !env.agent_store;
  auto store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
  if (!env.agent_store) return store;
  return c10::make_intrusive<c10d::PrefixStore>("/worker/attempt_" + env.restart_count, store);
}

std::shared_ptr<gloo::transport::Device> gloo_device(const LaunchEnvironment& env) {
  if (const char* interface = environment("GLOO_SOCKET_IFNAME")) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(interface);
  }
  // One machine: loopback, whatever this host's name resolves to.
  if (is_loopback(env.master_addr) || env.local_world_size == env.world_size) {
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace

Collective::Collective(const LaunchEnvironment& env, const DistributedSection& settings)
    : rank_(env.rank),
      world_size_(env.world_size),
      bucket_bytes_(settings.bucket_bytes),
      timeout_seconds_(settings.timeout_seconds) {
  if (world_size_ == 1) return;
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds_ * 1000.0));
  group_ = std::make_unique<Group>();
  const auto start = Clock::now();
  try {
    group_->store = connect_store(env, timeout);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(gloo_device(env));
    group_->group =
        c10::make_intrusive<c10d::ProcessGroupGloo>(group_->store, rank_, world_size_, options);
  } catch (const std::exception& e) {
    throw RunError("rank " + std::to_string(rank_) + " of " + std::to_string(world_size_) +
                   ": could not join the process group at " + env.master_addr + ":" +
                   std::to_string(env.master_port) + " within distributed.timeout = " +
                   std::to_string(static_cast<int64_t>(timeout_seconds_)) + " s: " + first_line(e) +
                   " (is MASTER_ADDR/MASTER_PORT right, and did every rank start?)");
  }
  seconds_ += std::chrono::duration<double>(Clock::now() - start).count();
}

template <class Operation>
void Collective::timed(const char* what, Operation&& operation) {
  const auto start = Clock::now();
  try {
    operation();
  } catch (const std::exception& e) {
    throw RunError("rank " + std::to_string(rank_) + " of " + std::to_string(world_size_) + ": " +
                   what + " failed: " + first_line(e) +
                   ". Another rank stopped (its error says why) or did not answer within "
                   "distributed.timeout = " +
                   std::to_string(static_cast<int64_t>(timeout_seconds_)) + " s");
  }
  seconds_ += std::chrono::duration<double>(Clock::now() - start).count();
}

void Collective::sum_bucket(std::vector<at::Tensor>& bucket) {
  if (bucket.empty()) return;
  timed("all-reduce", [&] {
    auto work = bucket.size() == 1 ? group_->group->allreduce(bucket)
                                   : group_->group->allreduce_coalesced(bucket);
    work->wait();
  });
  bucket.clear();
}

void Collective::sum(const std::vector<at::Tensor>& tensors) {
  if (!distributed()) return;
  std::vector<at::Tensor> bucket;
  int64_t bucket_bytes = 0;
  for (const auto& tensor : tensors) {
    if (!tensor.defined()) continue;
    if (!tensor.is_contiguous()) throw std::logic_error("Collective::sum: non-contiguous tensor");
    if (!bucket.empty() && bucket.front().scalar_type() != tensor.scalar_type()) {
      sum_bucket(bucket);
      bucket_bytes = 0;
    }
    bucket.push_back(tensor);
    bucket_bytes += static_cast<int64_t>(tensor.nbytes());
    if (bucket_bytes >= bucket_bytes_) {
      sum_bucket(bucket);
      bucket_bytes = 0;
    }
  }
  sum_bucket(bucket);
}

std::vector<double> Collective::sum(const std::vector<double>& values) {
  if (!distributed() || values.empty()) return values;
  at::Tensor tensor = torch::tensor(values, torch::kFloat64);
  sum({tensor});
  return {tensor.data_ptr<double>(), tensor.data_ptr<double>() + tensor.numel()};
}

double Collective::sum(double value) {
  return sum(std::vector<double>{value}).front();
}

namespace {

int64_t reduce_int(c10d::ProcessGroupGloo& group, int64_t value, const c10d::ReduceOp& op) {
  std::vector<at::Tensor> tensors{torch::tensor({value}, torch::kInt64)};
  c10d::AllreduceOptions options;
  options.reduceOp = op;
  group.allreduce(tensors, options)->wait();
  return tensors.front().item<int64_t>();
}

}  // namespace

int64_t Collective::max(int64_t value) {
  if (!distributed()) return value;
  int64_t out = value;
  timed("all-reduce (max)", [&] { out = reduce_int(*group_->group, value, c10d::ReduceOp::MAX); });
  return out;
}

int64_t Collective::min(int64_t value) {
  if (!distributed()) return value;
  int64_t out = value;
  timed("all-reduce (min)", [&] { out = reduce_int(*group_->group, value, c10d::ReduceOp::MIN); });
  return out;
}

void Collective::broadcast(const std::vector<at::Tensor>& tensors, int root) {
  if (!distributed()) return;
  c10d::BroadcastOptions options;
  options.rootRank = root;
  for (const auto& tensor : tensors) {
    std::vector<at::Tensor> one{tensor};
    timed("broadcast", [&] { group_->group->broadcast(one, options)->wait(); });
  }
}

std::vector<at::Tensor> Collective::gather(const at::Tensor& tensor) {
  if (!distributed()) return {tensor};
  // Gloo gathers equal shapes: the rows are padded to the longest, then cut back.
  std::vector<int64_t> rows(static_cast<size_t>(world_size_));
  {
    at::Tensor mine = torch::zeros({world_size_}, torch::kInt64);
    mine[rank_] = tensor.size(0);
    sum({mine});
    for (int r = 0; r < world_size_; ++r) rows[static_cast<size_t>(r)] = mine[r].item<int64_t>();
  }
  const int64_t longest = *std::max_element(rows.begin(), rows.end());
  std::vector<int64_t> shape = tensor.sizes().vec();
  shape[0] = longest;
  at::Tensor padded = torch::zeros(shape, tensor.options());
  if (tensor.size(0) > 0) padded.narrow(0, 0, tensor.size(0)).copy_(tensor);
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < world_size_; ++r) outputs[0].push_back(torch::empty_like(padded));
  std::vector<at::Tensor> inputs{padded};
  timed("all-gather", [&] { group_->group->allgather(outputs, inputs)->wait(); });
  std::vector<at::Tensor> out;
  out.reserve(static_cast<size_t>(world_size_));
  for (int r = 0; r < world_size_; ++r) {
    out.push_back(outputs[0][static_cast<size_t>(r)].narrow(0, 0, rows[static_cast<size_t>(r)]));
  }
  return out;
}

std::string Collective::share(const std::string& key, const std::string& value) {
  if (!distributed()) return value;
  std::string out = value;
  timed("sharing a start-up value", [&] {
    const std::string full_key = "clhost/share/" + key;
    if (rank_ == 0) {
      group_->store->set(full_key, std::vector<uint8_t>(value.begin(), value.end()));
      return;
    }
    const std::vector<uint8_t> bytes = group_->store->get(full_key);
    out.assign(bytes.begin(), bytes.end());
  });
  return out;
}

std::vector<std::string> Collective::exchange(const std::string& key, const std::string& value) {
  if (!distributed()) return {value};
  std::vector<std::string> out;
  timed("exchanging a start-up value", [&] {
    const std::string prefix = "clhost/exchange/" + key + "/";
    group_->store->set(prefix + std::to_string(rank_),
                       std::vector<uint8_t>(value.begin(), value.end()));
    for (int r = 0; r < world_size_; ++r) {
      const std::vector<uint8_t> bytes = group_->store->get(prefix + std::to_string(r));
      out.emplace_back(bytes.begin(), bytes.end());
    }
  });
  return out;
}

}  // namespace clhost
