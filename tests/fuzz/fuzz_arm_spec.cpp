// clhost compare's arm specs ("plugins=ewc;ewc.lambda=100", a TOML path) over a base config,
// parsed and validated as `clhost compare` does before anything runs.
#include "../../tools/report/compare.hpp"
#include "fuzz_target.hpp"

CLHOST_FUZZ_TARGET(arm_spec) {
  using namespace clhost;
  static const std::string base = [] {
    const std::string text =
        "[data]\nscenario = \"split\"\nnum_tasks = 2\n[train]\niterations = 2\n"
        "[[pipeline]]\nplugin = \"l2\"\nlambda = 0.5\n";
    return fuzz::write_scratch("base.toml", text.data(), text.size());
  }();
  const std::vector<std::string> parts = fuzz::split_at_nul(data, size);
  fuzz::expect_clean_failure([&] {
    tools::ArmSpec arm =
        tools::parse_arm_spec(parts[0], base, parts.size() > 1 ? parts[1] : std::string());
    tools::validate_arm(arm, "A", {});
  });
  return 0;
}
