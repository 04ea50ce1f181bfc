// Config loading: the input is a TOML file, then (after each NUL byte) one --set override.
// A config that loads must load again, unchanged, from the TOML it resolves to (the file a run
// directory keeps and a resume reads).
#include <cstdio>
#include <cstdlib>

#include "clhost/config.hpp"
#include "fuzz_target.hpp"

CLHOST_FUZZ_TARGET(config) {
  using namespace clhost;
  const std::vector<std::string> parts = fuzz::split_at_nul(data, size);
  fuzz::expect_clean_failure([&] {
    const std::string path = fuzz::write_scratch("config.toml", parts[0].data(), parts[0].size());
    ConfigOverrides overrides;
    overrides.set.assign(parts.begin() + 1, parts.end());
    const RunConfig config = load_config(path, overrides);
    const std::string resolved = fuzz::write_scratch("resolved.toml", config.resolved_toml.data(),
                                                     config.resolved_toml.size());
    const RunConfig again = load_config(resolved);
    if (again.resolved_json != config.resolved_json) {
      std::fprintf(stderr, "fuzz finding: the resolved TOML reads back differently\n%s\n---\n%s\n",
                   config.resolved_json.c_str(), again.resolved_json.c_str());
      std::abort();
    }
  });
  return 0;
}
