#include "trainer_state.hpp"

namespace clhost {

void TrainerState::write(nlohmann::json& out) const {
  fields(*this, [&](const char* name, const auto& value) { out[name] = value; });
}

void TrainerState::read(const nlohmann::json& in) {
  fields(*this, [&](const char* name, auto& value) {
    value = in.at(name).get<std::remove_reference_t<decltype(value)>>();
  });
}

}  // namespace clhost
