// The "clhost.settings/1" host service over a resolved configuration (RunConfig::resolved_json).
// The runner serves it to running plug-ins; the plug-in loader serves it to clhost.config_use/1
// before any instance exists. `Document(host)` finds the configuration of a host.
#pragma once

#include <clhost/clhost_plugin.h>

#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>

namespace clhost {

// The node at a dotted key path ("fisher_computation.block_size"), or null.
inline const nlohmann::json* find_setting(const nlohmann::json& settings, const char* key_path) {
  const nlohmann::json* node = &settings;
  const std::string path(key_path);
  size_t start = 0;
  while (start <= path.size()) {
    const size_t dot = path.find('.', start);
    const std::string key =
        path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!node->is_object() || !node->contains(key)) return nullptr;
    node = &(*node)[key];
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return node;
}

template <const nlohmann::json& (*Document)(const clhost_host_t*)>
struct SettingsService {
  template <class T>
  static int32_t get(const clhost_host_t* host, const char* key_path, T* out) {
    if (key_path == nullptr || out == nullptr) return 1;
    const nlohmann::json* node = find_setting(Document(host), key_path);
    if (node == nullptr) return 1;
    if constexpr (std::is_same_v<T, int32_t>) {
      if (!node->is_boolean()) return 1;
      *out = node->get<bool>() ? 1 : 0;
    } else if constexpr (std::is_same_v<T, int64_t>) {
      if (!node->is_number_integer()) return 1;
      *out = node->get<int64_t>();
    } else if constexpr (std::is_same_v<T, double>) {
      if (!node->is_number()) return 1;
      *out = node->get<double>();
    } else {
      if (!node->is_string()) return 1;
      *out = node->get_ref<const std::string&>().c_str();
    }
    return 0;
  }
  static constexpr clhost_settings_service_v1_t table{sizeof(clhost_settings_service_v1_t),
                                                      &get<int32_t>, &get<int64_t>, &get<double>,
                                                      &get<const char*>};
};

}  // namespace clhost
