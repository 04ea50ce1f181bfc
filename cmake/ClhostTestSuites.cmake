# clhost_add_test_suites(TARGET [TIMEOUT seconds] [FIXTURES fixture...]): one CTest test per
# GoogleTest suite of TARGET (`--gtest_filter=Suite.*`), listed after each build of TARGET.
#
# One process per suite rather than per case (as gtest_discover_tests does): every process of a
# clhost test links LibTorch, whose static initialisers take about 0.6 s of CPU, and 320 cases
# paid that 320 times. A case stays runnable alone: TARGET --gtest_filter=Suite.Case.
set(CLHOST_TEST_SUITES_SCRIPT ${CMAKE_CURRENT_LIST_DIR}/ClhostTestSuitesList.cmake)

function(clhost_add_test_suites target)
  cmake_parse_arguments(ARG "" "TIMEOUT" "FIXTURES" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 900)
  endif()
  set(ctest_file ${CMAKE_CURRENT_BINARY_DIR}/${target}_suites.cmake)
  add_custom_command(TARGET ${target} POST_BUILD
    COMMAND ${CMAKE_COMMAND} -D TEST_EXECUTABLE=$<TARGET_FILE:${target}>
            -D CTEST_FILE=${ctest_file} -D TIMEOUT=${ARG_TIMEOUT}
            -D "FIXTURES=${ARG_FIXTURES}" -P ${CLHOST_TEST_SUITES_SCRIPT}
    BYPRODUCTS ${ctest_file}
    VERBATIM)
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${ctest_file})
endfunction()
