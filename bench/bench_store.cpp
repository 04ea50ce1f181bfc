// Fisher store benchmarks; prints one JSON document (and writes it to the path given as the first
// argument, if any).
//
//   build/bin/bench_store bench/results/bench_store.json [GiB at scale, default 1]
//
// 1. Every codec and level on a real Fisher (the 784-400-400-10 MLP after 300 steps, 1.9 MB):
//    save and load MB/s (of fp32 data) and the file's size, medians of 3.
// 2. At scale: that Fisher tiled to >= 1 GiB, every copy jittered by +-0.5% per element so no
//    compressor sees repeats, saved and loaded once per candidate against the source's default
//    (gzip-9, fp32). Save includes the fsync and rename; load reads it back in 1M-element blocks.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "bench_args.hpp"
#include "bench_timing.hpp"
#include "mlp_fisher.hpp"

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;
using clhost::bench::median_seconds;

struct Candidate {
  std::string codec;
  int level;
  std::string dtype;
};

constexpr int64_t kBlock = 1 << 20;

// Saves `values` (one vector per parameter of `model`) as one group and reads it back.
json measure(const Candidate& candidate, const std::vector<clhost::ParameterInfo>& model,
             const std::vector<std::vector<float>>& values, int repetitions, const fs::path& dir) {
  clhost::StoreOptions options;
  options.codec = candidate.codec;
  options.level = std::max(candidate.level, 1);
  options.dtype = candidate.dtype;
  const std::string path = (dir / "store.h5").string();
  int64_t raw_bytes = 0;
  for (const auto& v : values) raw_bytes += static_cast<int64_t>(v.size() * sizeof(float));
  std::error_code ignored;
  auto clear = [&] {
    fs::remove(path, ignored);
    fs::remove_all(path + ".groups", ignored);
  };
  const double save = median_seconds(repetitions, [&] {
    clear();
    clhost::FisherStore store(path, options, model, "bench");
    store.begin_group("task_0", "bench");
    for (size_t p = 0; p < values.size(); ++p) {
      const auto size = static_cast<int64_t>(values[p].size());
      for (int64_t offset = 0; offset < size; offset += kBlock) {
        store.write_block(p, offset, values[p].data() + offset, std::min(kBlock, size - offset));
      }
    }
    store.commit_group();
  });
  clhost::FisherStore store(path, options, model, "bench");
  std::vector<float> buffer(static_cast<size_t>(kBlock));
  const double load = median_seconds(repetitions, [&] {
    for (size_t p = 0; p < values.size(); ++p) {
      const auto size = static_cast<int64_t>(values[p].size());
      for (int64_t offset = 0; offset < size; offset += kBlock) {
        store.read_block("task_0", p, offset, buffer.data(), std::min(kBlock, size - offset));
      }
    }
  });
  const int64_t file_bytes = clhost::FisherStore::inspect(path).file_bytes;
  clear();
  return {{"codec", candidate.codec},
          {"level", candidate.level},
          {"dtype", candidate.dtype},
          {"raw_bytes", raw_bytes},
          {"file_bytes", file_bytes},
          {"ratio", static_cast<double>(raw_bytes) / static_cast<double>(file_bytes)},
          {"save_seconds", save},
          {"load_seconds", load},
          {"save_mb_per_second", static_cast<double>(raw_bytes) / 1e6 / save},
          {"load_mb_per_second", static_cast<double>(raw_bytes) / 1e6 / load}};
}

json codec_table(const clhost::bench::RealFisher& fisher, const fs::path& dir) {
  int64_t raw_bytes = 0;
  int64_t zeros = 0;
  for (const auto& values : fisher.values) {
    raw_bytes += static_cast<int64_t>(values.size() * sizeof(float));
    zeros += std::count(values.begin(), values.end(), 0.0F);
  }
  json out = {{"raw_bytes", raw_bytes},
              {"exact_zero_fraction", static_cast<double>(zeros) / (raw_bytes / 4.0)},
              {"codecs", json::array()}};
  const std::vector<Candidate> candidates = {
      {"gzip", 1, "fp32"},      {"gzip", 6, "fp32"},       {"gzip", 9, "fp32"},
      {"gzip", 6, "bf16"},      {"none", 0, "fp32"},       {"lz4", 0, "fp32"},
      {"bzip2", 0, "fp32"},     {"blosc-lz4", 5, "fp32"},  {"blosc-zstd", 5, "fp32"},
      {"blosc-lz4", 5, "bf16"}, {"blosc-zstd", 1, "bf16"}, {"blosc-zstd", 5, "bf16"}};
  for (const auto& candidate : candidates) {
    out["codecs"].push_back(measure(candidate, fisher.model, fisher.values, 3, dir));
  }
  return out;
}

// The real Fisher repeated to `bytes`, as parameters of at most 256M elements.
clhost::bench::RealFisher tiled(const clhost::bench::RealFisher& fisher, int64_t bytes) {
  std::vector<float> source;
  for (const auto& values : fisher.values)
    source.insert(source.end(), values.begin(), values.end());
  const int64_t total = bytes / static_cast<int64_t>(sizeof(float));
  constexpr int64_t kParameter = int64_t{1} << 28;
  clhost::bench::RealFisher out;
  uint64_t state = 0x9e3779b97f4a7c15ULL;
  for (int64_t begin = 0; begin < total; begin += kParameter) {
    const int64_t count = std::min(kParameter, total - begin);
    out.model.push_back({"block_" + std::to_string(out.model.size()), {count}});
    std::vector<float> values(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      const float jitter = 1.0F + 0.01F * (static_cast<float>(state >> 40) / 16777216.0F - 0.5F);
      values[static_cast<size_t>(i)] =
          source[static_cast<size_t>((begin + i) % static_cast<int64_t>(source.size()))] * jitter;
    }
    out.values.push_back(std::move(values));
  }
  return out;
}

json at_scale(const clhost::bench::RealFisher& fisher, double gib, const fs::path& dir) {
  const auto big = tiled(fisher, static_cast<int64_t>(gib * 1073741824.0));
  const std::vector<Candidate> candidates = {
      {"gzip", 9, "fp32"},       {"gzip", 1, "fp32"},       {"lz4", 0, "fp32"},
      {"blosc-lz4", 5, "fp32"},  {"blosc-zstd", 1, "fp32"}, {"gzip", 1, "bf16"},
      {"blosc-lz4", 5, "bf16"},  {"blosc-lz4", 9, "bf16"},  {"blosc-zstd", 1, "bf16"},
      {"blosc-zstd", 3, "bf16"}, {"blosc-zstd", 5, "bf16"}};
  json rows = json::array();
  for (const auto& candidate : candidates) {
    rows.push_back(measure(candidate, big.model, big.values, 1, dir));
    const json& baseline = rows[0];
    json& row = rows.back();
    row["save_speedup_vs_gzip9_fp32"] =
        baseline["save_seconds"].get<double>() / row["save_seconds"].get<double>();
    row["load_speedup_vs_gzip9_fp32"] =
        baseline["load_seconds"].get<double>() / row["load_seconds"].get<double>();
    row["size_vs_gzip9_fp32"] =
        row["file_bytes"].get<double>() / baseline["file_bytes"].get<double>();
    std::cerr << candidate.codec << "-" << candidate.level << " " << candidate.dtype << ": "
              << row.dump() << '\n';
  }
  return {{"gib", gib}, {"candidates", rows}};
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage = "usage: bench_store [OUT.json [GIB]]";
  clhost::bench::check_arguments(argc, argv, usage);
  at::set_num_threads(1);
  const double gib = clhost::bench::positive_number_argument(argc, argv, 2, "GIB", 1.0, usage);
  clhost::bench::MlpSetup setup = clhost::bench::make_mlp_setup();
  const clhost::bench::RealFisher fisher = clhost::bench::trained_mlp_fisher(setup);
  const fs::path dir = fs::temp_directory_path() / "clhost_bench_store";
  fs::create_directories(dir);
  json report;
  report["machine"] = {{"cores", std::thread::hardware_concurrency()},
                       {"note", "codec table: medians of 3; at scale: one run each"}};
  report["codecs_on_the_mlp_fisher"] = codec_table(fisher, dir);
  std::cerr << "codec table done\n";
  report["at_scale"] = at_scale(fisher, gib, dir);
  fs::remove_all(dir);
  const std::string text = report.dump(2);
  std::cout << text << '\n';
  if (argc > 1) clhost::bench::write_json(argv[1], text);
  return 0;
}
