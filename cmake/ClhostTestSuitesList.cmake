# Run by clhost_add_test_suites after a test binary is built: lists its GoogleTest suites and
# writes CTEST_FILE, which CTest includes (one add_test per suite).
execute_process(COMMAND ${TEST_EXECUTABLE} --gtest_list_tests
                OUTPUT_VARIABLE listing RESULT_VARIABLE result TIMEOUT 60)
if(NOT result EQUAL 0)
  file(REMOVE ${CTEST_FILE})
  message(FATAL_ERROR "${TEST_EXECUTABLE} --gtest_list_tests failed (${result}):\n${listing}")
endif()
string(REPLACE "\n" ";" lines "${listing}")
set(content "")
foreach(line IN LISTS lines)
  # Suite lines start in column 0 and end with '.', perhaps followed by "  # TypeParam = ...".
  if(line MATCHES "^([^ #][^ ]*)\\.( .*)?$")
    set(suite ${CMAKE_MATCH_1})
    string(APPEND content
      "add_test([==[${suite}]==] [==[${TEST_EXECUTABLE}]==] [==[--gtest_filter=${suite}.*]==])\n"
      "set_tests_properties([==[${suite}]==] PROPERTIES TIMEOUT ${TIMEOUT}")
    if(FIXTURES)
      string(APPEND content " FIXTURES_REQUIRED [==[${FIXTURES}]==]")
    endif()
    string(APPEND content ")\n")
  endif()
endforeach()
file(WRITE ${CTEST_FILE} "${content}")
