# Writes OUTPUT: a C++ source defining `const std::vector<TYPE> SYMBOL` in clhost::tools (or
# NAMESPACE), each element {"file", R"(content)"} for the files listed in FILES (comma-separated,
# under DIR), so the binary needs nothing installed beside it: the plug-in templates of
# `clhost new-plugin`, the web page of `clhost serve`. HEADER declares TYPE and SYMBOL.
string(REPLACE "," ";" FILES "${FILES}")
if(NOT NAMESPACE)
  set(NAMESPACE clhost::tools)
endif()
set(delimiter "clhost_embed")
set(body "// Generated from ${DIR} by cmake/EmbedFiles.cmake. Do not edit.\n")
string(APPEND body "#include \"${HEADER}\"\n\nnamespace ${NAMESPACE} {\n\n")
string(APPEND body "const std::vector<${TYPE}> ${SYMBOL} = {\n")
foreach(file IN LISTS FILES)
  file(READ ${DIR}/${file} content)
  string(FIND "${content}" ")${delimiter}\"" clash)
  if(NOT clash EQUAL -1)
    message(FATAL_ERROR "${file} contains the raw-string delimiter )${delimiter}\"")
  endif()
  string(APPEND body "    {\"${file}\", R\"${delimiter}(${content})${delimiter}\"},\n")
endforeach()
string(APPEND body "};\n\n}  // namespace ${NAMESPACE}\n")
file(WRITE ${OUTPUT}.tmp "${body}")
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different ${OUTPUT}.tmp ${OUTPUT})
