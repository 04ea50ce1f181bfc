# One precompiled <torch/torch.h> for the executables that include it (tests, benchmarks, fuzz
# targets): each such file took 35-110 s to compile on two cores without it. The host library has
# its own (core/CMakeLists.txt: position-independent code, which GCC's PCH check tells apart).
add_library(clhost_torch_pch OBJECT ${CMAKE_CURRENT_LIST_DIR}/torch_pch.cpp)
target_link_libraries(clhost_torch_pch PRIVATE torch)
target_precompile_headers(clhost_torch_pch PRIVATE <torch/torch.h>)
# The same flags as its users: -Wpedantic, for one, changes the predefined macros GCC checks.
clhost_warnings(clhost_torch_pch)

# clhost_use_torch_pch(TARGET...): TARGET's sources start from the shared precompiled header.
function(clhost_use_torch_pch)
  foreach(target ${ARGN})
    target_precompile_headers(${target} REUSE_FROM clhost_torch_pch)
  endforeach()
endfunction()
