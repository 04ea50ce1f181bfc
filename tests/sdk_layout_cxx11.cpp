// Compiled as C++11: the C header must also be valid for older C++ plug-in code.
#include <clhost/clhost_plugin.h>

static_assert(CLHOST_ABI_VERSION_MAJOR == 1, "this test knows ABI 1");
