# Precompiled <torch/torch.h> for the executables that include it: each such file took 35-110 s
# to compile on two cores without it. The host library has its own (core/CMakeLists.txt:
# position-independent code, which GCC's PCH check tells apart).
#
# Test code (tests, fuzz targets) is compiled at -O1 in the optimised build types: it is glue
# around clhost and LibTorch, whose own code keeps its -O2/-O3, and -O1 compiles a torch-heavy
# test file in about 3/4 of the time (test_sequence.cpp: 29.9 s -> 22.5 s). Benchmarks measure the
# product and keep -O2, with their own header (bench/CMakeLists.txt). A PCH is only used by files
# compiled with its optimisation level, hence one per level.
set(CLHOST_TEST_OPTIMIZATION $<$<CONFIG:RelWithDebInfo,Release,MinSizeRel>:-O1>)

# clhost_torch_pch(NAME [OPTIONS...]): a precompiled <torch/torch.h> built with OPTIONS.
function(clhost_torch_pch name)
  add_library(${name} OBJECT ${PROJECT_SOURCE_DIR}/cmake/torch_pch.cpp)
  target_link_libraries(${name} PRIVATE torch)
  target_precompile_headers(${name} PRIVATE <torch/torch.h>)
  target_compile_options(${name} PRIVATE ${ARGN})
  # The same flags as its users: -Wpedantic, for one, changes the predefined macros GCC checks.
  clhost_warnings(${name})
endfunction()

clhost_torch_pch(clhost_torch_pch ${CLHOST_TEST_OPTIMIZATION})

# clhost_test_code(TARGET...): TARGET is test code: -O1 (above).
function(clhost_test_code)
  foreach(target ${ARGN})
    target_compile_options(${target} PRIVATE ${CLHOST_TEST_OPTIMIZATION})
  endforeach()
endfunction()

# clhost_use_torch_pch(TARGET...): TARGET, test code, starts from the shared precompiled header.
function(clhost_use_torch_pch)
  foreach(target ${ARGN})
    target_precompile_headers(${target} REUSE_FROM clhost_torch_pch)
  endforeach()
endfunction()
