// The page of `clhost serve` (tools/serve/web/), embedded in the binary at build time.
#pragma once

#include <vector>

namespace clhost::serve {

struct WebAsset {
  const char* file;  // name under tools/serve/web/; index.html is served at /
  const char* text;
};
extern const std::vector<WebAsset> kWebAssets;

}  // namespace clhost::serve
