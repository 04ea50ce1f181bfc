// The SDK header seen by C11 and C++17 compilers must describe the same layout, and the C++
// helper must turn exceptions into status codes.
#include <gtest/gtest.h>
#include <clhost/plugin.hpp>

#include <cstddef>

extern "C" size_t clhost_test_c_layout(int which);

TEST(SdkHeader, CAndCxxAgreeOnLayout) {
  EXPECT_EQ(clhost_test_c_layout(0), sizeof(clhost_plugin_entry_t));
  EXPECT_EQ(clhost_test_c_layout(1), sizeof(clhost_plugin_descriptor_t));
  EXPECT_EQ(clhost_test_c_layout(2), sizeof(clhost_host_t));
  EXPECT_EQ(clhost_test_c_layout(3), sizeof(clhost_parameter_t));
  EXPECT_EQ(clhost_test_c_layout(4), sizeof(clhost_memory_info_t));
  EXPECT_EQ(clhost_test_c_layout(5), sizeof(clhost_event_t));
  EXPECT_EQ(clhost_test_c_layout(6), sizeof(clhost_batch_request_t));
  EXPECT_EQ(clhost_test_c_layout(7), sizeof(clhost_regularizer_v1_t));
  EXPECT_EQ(clhost_test_c_layout(8), offsetof(clhost_plugin_entry_t, get_interface));
  EXPECT_EQ(clhost_test_c_layout(9), sizeof(clhost_config_value_t));
  EXPECT_EQ(clhost_test_c_layout(10), sizeof(clhost_events_service_v1_t));
  EXPECT_EQ(clhost_test_c_layout(11), 1U) << "CLHOST_HAS_MEMBER in C";
}

TEST(SdkHelper, ProfilerSourceOfAnOlderHostsEventIsTheHost) {
  clhost_event_t event{};
  event.source = "my_plugin";
  event.struct_size = static_cast<uint32_t>(offsetof(clhost_event_t, source));
  EXPECT_STREQ(clhost::sdk::Profiler::source_of(event), "clhost");
  event.struct_size = sizeof(clhost_event_t);
  EXPECT_STREQ(clhost::sdk::Profiler::source_of(event), "my_plugin");
}

TEST(SdkHelper, ExceptionsBecomeStatusCodes) {
  clhost_error_t error{};
  EXPECT_EQ(
      clhost::sdk::guarded_call(
          &error, [] { throw clhost::sdk::Error("bad key", CLHOST_STATUS_INVALID_ARGUMENT); }),
      CLHOST_STATUS_INVALID_ARGUMENT);
  EXPECT_STREQ(error.message, "bad key");
  EXPECT_EQ(clhost::sdk::guarded_call(&error, [] { throw std::bad_alloc(); }),
            CLHOST_STATUS_OUT_OF_MEMORY);
  EXPECT_EQ(clhost::sdk::guarded_call(&error, [] { throw 7; }), CLHOST_STATUS_INTERNAL);
  EXPECT_EQ(clhost::sdk::guarded_call(&error, [] {}), CLHOST_STATUS_OK);
}

TEST(SdkHelper, ConfigFindReturnsNullForUnknownKeys) {
  clhost_config_value_t values[2] = {};
  values[0].key = "lambda";
  values[0].float_value = 2.5;
  values[1].key = "lambda_extra";
  const clhost_config_t config{sizeof(clhost_config_t), values, 2};
  ASSERT_NE(clhost_config_find(&config, "lambda"), nullptr);
  EXPECT_DOUBLE_EQ(clhost_config_find(&config, "lambda")->float_value, 2.5);
  EXPECT_EQ(clhost_config_find(&config, "lamb"), nullptr);
  EXPECT_EQ(clhost_config_find(&config, "gamma"), nullptr);
}
