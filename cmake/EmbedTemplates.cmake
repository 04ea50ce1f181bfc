# Writes OUTPUT: a C++ source defining clhost::tools::kPluginTemplates, the files of
# sdk/templates/ (listed in FILES, under DIR) as raw string literals, so `clhost new-plugin` needs
# nothing installed beside the binary. FILES is comma-separated.
string(REPLACE "," ";" FILES "${FILES}")
set(body "// Generated from sdk/templates/ by cmake/EmbedTemplates.cmake. Do not edit.\n")
string(APPEND body "#include \"plugin_templates.hpp\"\n\nnamespace clhost::tools {\n\n")
string(APPEND body "const std::vector<PluginTemplate> kPluginTemplates = {\n")
foreach(file IN LISTS FILES)
  file(READ ${DIR}/${file} content)
  string(FIND "${content}" ")clhost_template\"" clash)
  if(NOT clash EQUAL -1)
    message(FATAL_ERROR "${file} contains the raw-string delimiter )clhost_template\"")
  endif()
  string(APPEND body "    {\"${file}\", R\"clhost_template(${content})clhost_template\"},\n")
endforeach()
string(APPEND body "};\n\n}  // namespace clhost::tools\n")
file(WRITE ${OUTPUT}.tmp "${body}")
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different ${OUTPUT}.tmp ${OUTPUT})
