# clhost_add_plugin(NAME SOURCES src... [TORCH] [OUTPUT_DIRECTORY dir])
#
# Builds a plug-in as the MODULE library clhost_<NAME>.so, the file name the host looks for, from
# the target clhost_plugin_<NAME> (add your own compile options, definitions or libraries to it:
# target_compile_options(clhost_plugin_my_reg PRIVATE -O3)):
#   - hidden visibility and a version script exporting only clhost_plugin_entry, so Boost,
#     LibTorch or your own inline code never clash with the host's copies;
#   - -Wl,-z,defs, so a missing symbol fails at link time, not when clhost loads the file;
#   - TORCH links LibTorch and the SDK's LibTorch helpers (plugin_torch.hpp); the plug-in then
#     carries the LibTorch build fingerprint (CLHOST_TORCH_FINGERPRINT), which the host checks;
#   - an install rule into <prefix>/lib/clhost/plugins, where an installed clhost finds it.
# The library lands in OUTPUT_DIRECTORY (default: the top of the build tree), so
# `clhost run --plugin-path <build dir>` loads it.
#
# Shared by clhost's own tree and the installed package (find_package(clhost)).
set(CLHOST_PLUGIN_MAP ${CMAKE_CURRENT_LIST_DIR}/clhost_plugin.map)

function(clhost_add_plugin name)
  cmake_parse_arguments(ARG "TORCH" "OUTPUT_DIRECTORY" "SOURCES" ${ARGN})
  if(NOT name MATCHES "^[a-z0-9_]+$")
    message(FATAL_ERROR "clhost_add_plugin: '${name}' is not a plug-in id ([a-z0-9_]+)")
  endif()
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "clhost_add_plugin(${name}): SOURCES is empty")
  endif()
  if(NOT ARG_OUTPUT_DIRECTORY)
    if(DEFINED CLHOST_PLUGIN_OUTPUT_DIR)
      set(ARG_OUTPUT_DIRECTORY ${CLHOST_PLUGIN_OUTPUT_DIR})
    else()
      set(ARG_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
    endif()
  endif()
  set(target clhost_plugin_${name})
  add_library(${target} MODULE ${ARG_SOURCES})
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    OUTPUT_NAME clhost_${name}
    LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIRECTORY}
    C_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(ARG_TORCH)
    if(NOT TARGET clhost::sdk_torch AND COMMAND clhost_find_torch)
      clhost_find_torch()  # the installed package looks for LibTorch only now
    endif()
    if(NOT TARGET clhost::sdk_torch)
      message(FATAL_ERROR "clhost_add_plugin(${name} TORCH): LibTorch was not found "
                          "(install libtorch-dev, or set Torch_DIR)")
    endif()
    target_link_libraries(${target} PRIVATE clhost::sdk_torch)
  else()
    target_link_libraries(${target} PRIVATE clhost::sdk)
  endif()
  if(COMMAND clhost_warnings)  # clhost's own tree: its full warning set
    clhost_warnings(${target})
  else()
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
  endif()
  target_link_options(${target} PRIVATE -Wl,--version-script=${CLHOST_PLUGIN_MAP})
  # clang links its sanitizer runtimes into the executable only, so a sanitized plug-in has
  # undefined __asan_* symbols until clhost loads it.
  if(NOT (CLHOST_SANITIZE AND CMAKE_CXX_COMPILER_ID STREQUAL "Clang"))
    target_link_options(${target} PRIVATE -Wl,-z,defs)
  endif()
  set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS ${CLHOST_PLUGIN_MAP})
  include(GNUInstallDirs)
  install(TARGETS ${target} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/clhost/plugins)
endfunction()
