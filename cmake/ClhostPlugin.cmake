# clhost_add_plugin(NAME SOURCES src... [TORCH])
# Builds a plug-in as the MODULE library clhost_<NAME>.so: hidden visibility, a version script
# exporting only clhost_plugin_entry, and -Wl,-z,defs so a missing symbol fails at link time,
# not at load time. TORCH links LibTorch (and the SDK's LibTorch helpers).
function(clhost_add_plugin name)
  cmake_parse_arguments(ARG "TORCH" "" "SOURCES" ${ARGN})
  set(target clhost_plugin_${name})
  add_library(${target} MODULE ${ARG_SOURCES})
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    OUTPUT_NAME clhost_${name}
    LIBRARY_OUTPUT_DIRECTORY ${CLHOST_PLUGIN_OUTPUT_DIR}
    C_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(ARG_TORCH)
    target_link_libraries(${target} PRIVATE clhost::sdk_torch)
  else()
    target_link_libraries(${target} PRIVATE clhost::sdk)
  endif()
  target_link_options(${target} PRIVATE
    -Wl,--version-script=${CLHOST_PLUGIN_MAP} -Wl,-z,defs)
  set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS ${CLHOST_PLUGIN_MAP})
  clhost_warnings(${target})
  install(TARGETS ${target} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/clhost/plugins)
endfunction()
set(CLHOST_PLUGIN_MAP ${CMAKE_CURRENT_LIST_DIR}/clhost_plugin.map)
