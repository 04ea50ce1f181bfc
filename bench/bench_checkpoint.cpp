// Peak tensor memory of one forward+backward with and without activation checkpointing, on deep
// MLPs, measured by clhost's counting allocator; prints JSON (and writes it to argv[1]).
//
//   build/bin/bench_checkpoint bench/results/bench_checkpoint.json
#include <torch/torch.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "activation_checkpoint.hpp"
#include "bench_args.hpp"
#include "clhost/memory_budget.hpp"
#include "model.hpp"

int main(int argc, char** argv) {
  clhost::bench::check_arguments(argc, argv, "usage: bench_checkpoint [OUT.json]");
  at::set_num_threads(1);
  clhost::memory::install_counting_allocator();
  nlohmann::json report = nlohmann::json::array();
  for (const int64_t width : {256, 1024}) {
    clhost::ModelSection section;
    section.hidden = std::vector<int64_t>(8, width);
    auto model = clhost::make_model(section, 784, 28, 10);
    const torch::Tensor x = torch::rand({4096, 784});
    for (const int64_t segments : {0, 2, 4, 6, 9}) {
      auto measure = [&] {
        model->zero_grad();
        clhost::memory::reset_peak();
        const int64_t before = clhost::memory::current_bytes();
        const auto start = std::chrono::steady_clock::now();
        clhost::checkpointed_forward(model, x, segments).sum().backward();
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        return std::make_pair(clhost::memory::peak_bytes() - before, seconds);
      };
      (void)measure();  // gradients allocated once
      const auto [peak, seconds] = measure();
      report.push_back({{"model", "MLP 784-8x" + std::to_string(width) + "-10, batch 4096"},
                        {"segments", segments},
                        {"peak_bytes_above_resident", peak},
                        {"seconds", seconds}});
    }
  }
  const std::string text = report.dump(2);
  std::cout << text << '\n';
  if (argc > 1) clhost::bench::write_json(argv[1], text);
  return 0;
}
