// clhost report over a run directory someone handed over: results.json, then (after a NUL byte)
// metrics.csv. The command prints what() of any error and exits 1, so any std::exception is a
// clean failure; a crash, a hang or an out-of-bounds read is not.
#include <filesystem>

#include "../../tools/report/report.hpp"
#include "fuzz_target.hpp"

CLHOST_FUZZ_TARGET(report) {
  using namespace clhost;
  const std::vector<std::string> parts = fuzz::split_at_nul(data, size);
  const std::string results = parts[0];
  const std::string metrics = parts.size() > 1 ? parts[1] : std::string();
  fuzz::expect_clean_failure(
      [&] {
        const std::string dir = fuzz::scratch_dir() + "/run";
        std::filesystem::remove_all(dir);
        fuzz::write_scratch("run/results.json", results.data(), results.size());
        fuzz::write_scratch("run/metrics.csv", metrics.data(), metrics.size());
        (void)tools::write_run_report(dir);
      },
      fuzz::Errors::kAnyStd);
  return 0;
}
