// The HDF5 openers: the first byte picks the reader, the rest is the file — a dataset file read
// as data.kind = "hdf5" (split into two tasks), or a Fisher store opened as `clhost fisher
// inspect` and a resumed run open it. HDF5 itself is not instrumented: a fault inside it is
// HDF5's (the stack says so); every size and shape clhost reads from it must be checked here.
#include <torch/torch.h>

#include "../../core/src/data.hpp"
#include "clhost/fisher_store.hpp"
#include "fuzz_target.hpp"

namespace {

using namespace clhost;

void read_dataset_file(const std::string& path) {
  DataSection data;
  data.kind = DataKind::kHdf5;
  data.path = path;
  data.num_classes = 4;
  data.num_tasks = 2;
  data.max_resident_bytes = 1 << 20;  // larger sample sets are streamed: that path too
  (void)build_task_sequence(data, {}, 1);
}

void open_fisher_store(const std::string& path) {
  (void)FisherStore::inspect(path);
  // The model of make_corpus.sh's runs (784-8-10), as a resumed run opens its store.
  const FisherStore store(
      path, StoreOptions{},
      {{"fc1.weight", {8, 784}}, {"fc1.bias", {8}}, {"out.weight", {10, 8}}, {"out.bias", {10}}},
      "fuzz");
  std::vector<float> values(16);
  for (const auto& group : store.committed_groups()) {
    store.read_block(group, 1, 0, values.data(), 8);
  }
}

}  // namespace

CLHOST_FUZZ_TARGET(hdf5) {
  if (size == 0) return 0;
  const std::string path = fuzz::write_scratch("file.h5", data + 1, size - 1);
  fuzz::expect_clean_failure([&] {
    if (data[0] % 2 == 0) {
      read_dataset_file(path);
    } else {
      open_fisher_store(path);
    }
  });
  return 0;
}
