// The IDX reader (Fashion-MNIST's format, plain or gzip): a header that lies about its sizes must
// be refused before anything that large is allocated.
#include "../../core/src/data.hpp"
#include "fuzz_target.hpp"

CLHOST_FUZZ_TARGET(idx) {
  clhost::fuzz::expect_clean_failure([&] {
    const std::string path = clhost::fuzz::write_scratch("data.idx", data, size);
    (void)clhost::read_idx(path);
  });
  return 0;
}
