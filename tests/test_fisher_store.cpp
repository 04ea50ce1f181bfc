// The HDF5 Fisher store: round trips per codec and dtype, checksums, atomicity, model checks.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "clhost/errors.hpp"
#include "clhost/fisher_store.hpp"
#include "test_helpers.hpp"

namespace {

using clhost::FisherStore;
using clhost::RunError;
using clhost::StoreOptions;

const std::vector<clhost::ParameterInfo> kModel = {{"fc1.weight", {64, 64}}, {"fc1.bias", {30}}};

std::vector<float> values_for(int64_t count, float scale) {
  std::vector<float> values(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    // Fisher-like: non-negative, many exact zeros, a wide dynamic range.
    values[static_cast<size_t>(i)] =
        i % 3 == 0 ? 0.0F : scale * std::exp(-0.05F * static_cast<float>(i));
  }
  return values;
}

void save(FisherStore& store, const std::string& group, float scale, int64_t block = 100) {
  store.begin_group(group, "test state");
  for (size_t p = 0; p < kModel.size(); ++p) {
    const auto values = values_for(kModel[p].numel(), scale);
    for (int64_t offset = 0; offset < kModel[p].numel(); offset += block) {
      const int64_t count = std::min(block, kModel[p].numel() - offset);
      store.write_block(p, offset, values.data() + offset, count);
    }
  }
  store.commit_group();
}

std::vector<float> load(const FisherStore& store, const std::string& group, size_t parameter) {
  std::vector<float> out(static_cast<size_t>(kModel[parameter].numel()));
  store.read_block(group, parameter, 0, out.data(), static_cast<int64_t>(out.size()));
  return out;
}

class StoreRoundTrip : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(StoreRoundTrip, ReadsBackWhatWasWritten) {
  const auto& [codec, dtype] = GetParam();
  clhost::test::TempDir dir;
  StoreOptions options;
  options.codec = codec;
  options.dtype = dtype;
  options.level = codec == "gzip" ? 6 : 5;
  options.chunk_elements = 2048;
  FisherStore store(dir.path("f.h5"), options, kModel, "test");
  save(store, "task_0", 3.0F, 1000);
  save(store, "task_1", 70000.0F, 1000);  // beyond fp16's range: clamped, never inf
  for (size_t p = 0; p < kModel.size(); ++p) {
    const auto expected0 = values_for(kModel[p].numel(), 3.0F);
    const auto got0 = load(store, "task_0", p);
    const auto got1 = load(store, "task_1", p);
    // Half a unit in the last place: 2^-11 (fp16), 2^-8 (bf16); fp16 subnormals step by 2^-24.
    const double tolerance = dtype == "fp32" ? 0.0 : dtype == "fp16" ? 4.9e-4 : 3.9e-3;
    const double absolute = dtype == "fp16" ? 3.0e-8 : dtype == "bf16" ? 1e-39 : 0.0;  // subnormals
    for (size_t i = 0; i < got0.size(); ++i) {
      EXPECT_NEAR(got0[i], expected0[i], tolerance * expected0[i] + absolute) << i;
      EXPECT_TRUE(std::isfinite(got1[i]));
    }
  }
  const auto summary = FisherStore::inspect(dir.path("f.h5"));
  ASSERT_EQ(summary.groups.size(), 2U);
  EXPECT_EQ(summary.groups[0].datasets[0].dtype, dtype);
  EXPECT_EQ(summary.groups[0].datasets[0].codec, codec);
  EXPECT_EQ(summary.groups[0].datasets[0].shape, (std::vector<int64_t>{64, 64}));
}

INSTANTIATE_TEST_SUITE_P(Codecs, StoreRoundTrip,
                         ::testing::Combine(::testing::Values("gzip", "none", "lz4", "blosc-lz4",
                                                              "blosc-zstd", "bzip2"),
                                            ::testing::Values("fp32", "fp16", "bf16")),
                         [](const auto& param_info) {
                           std::string name =
                               std::get<0>(param_info.param) + "_" + std::get<1>(param_info.param);
                           for (auto& c : name) c = c == '-' ? '_' : c;
                           return name;
                         });

TEST(Store, AChangedByteIsDetectedByTheChecksum) {
  clhost::test::TempDir dir;
  StoreOptions options;
  options.codec = "none";  // so the test can find the data bytes
  const std::string path = dir.path("f.h5");
  {
    FisherStore store(path, options, kModel, "test");
    save(store, "task_0", 3.0F);
  }
  // Locate the stored bytes of fc1.weight (value index 1) in the group's file and flip one bit.
  const std::string group_path = path + ".groups/task_0.h5";
  std::string bytes = clhost::test::read_file(group_path);
  const auto values = values_for(4096, 3.0F);
  const std::string needle(reinterpret_cast<const char*>(&values[1]), 8);
  const size_t position = bytes.find(needle);
  ASSERT_NE(position, std::string::npos);
  bytes[position] = static_cast<char>(bytes[position] ^ 0x10);
  std::ofstream(group_path, std::ios::binary | std::ios::trunc) << bytes;
  FisherStore reader(path, options, kModel, "test");
  try {
    (void)load(reader, "task_0", 0);
    FAIL() << "corruption not detected";
  } catch (const RunError& e) {
    EXPECT_NE(std::string(e.what()).find("task_0/fc1.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
  }
}

TEST(Store, AnInterruptedSaveLeavesThePreviousFileIntact) {
  clhost::test::TempDir dir;
  const std::string path = dir.path("f.h5");
  {
    FisherStore store(path, StoreOptions{}, kModel, "test");
    save(store, "task_0", 3.0F);
    const std::string before = clhost::test::read_file(path);
    store.begin_group("task_1", "interrupted");
    const auto values = values_for(4096, 1.0F);
    store.write_block(0, 0, values.data(), 300);
    // A crash here: the new group lives only in its temporary file, outside the index.
    EXPECT_EQ(clhost::test::read_file(path), before);
    EXPECT_TRUE(std::filesystem::exists(path + ".groups/task_1.h5.tmp"));
    EXPECT_THROW(store.commit_group(), RunError) << "an incomplete group must not be committed";
    EXPECT_FALSE(std::filesystem::exists(path + ".groups/task_1.h5.tmp"));
    EXPECT_EQ(clhost::test::read_file(path), before);
  }
  const auto summary = FisherStore::inspect(path);
  ASSERT_EQ(summary.groups.size(), 1U);
  EXPECT_EQ(summary.groups[0].name, "task_0");
}

// Adding a task writes that task's file and a new index of a few KB: earlier groups' files are
// not rewritten, whatever their size.
TEST(Store, AddingAGroupLeavesTheEarlierGroupsFilesUntouched) {
  clhost::test::TempDir dir;
  const std::string path = dir.path("f.h5");
  FisherStore store(path, StoreOptions{}, kModel, "test");
  save(store, "task_0", 3.0F);
  const std::string first = path + ".groups/task_0.h5";
  const auto written = std::filesystem::last_write_time(first);
  const std::string first_bytes = clhost::test::read_file(first);
  save(store, "task_1", 2.0F);
  save(store, "task_2", 1.0F);
  EXPECT_EQ(std::filesystem::last_write_time(first), written);
  EXPECT_EQ(clhost::test::read_file(first), first_bytes);
  EXPECT_LT(std::filesystem::file_size(path), 16384U) << "the index holds links, not data";
  EXPECT_EQ(store.committed_groups(), (std::vector<std::string>{"task_0", "task_1", "task_2"}));
  EXPECT_EQ(load(store, "task_2", 0), values_for(4096, 1.0F));
  const auto summary = FisherStore::inspect(path);
  EXPECT_EQ(summary.groups.size(), 3U);
  EXPECT_GT(summary.file_bytes, static_cast<int64_t>(3 * first_bytes.size()))
      << "file_bytes counts the group files";
}

// The links are relative to the index: a run directory moved elsewhere still reads.
TEST(Store, AMovedStoreStillReads) {
  clhost::test::TempDir dir;
  std::filesystem::create_directories(dir.path("old"));
  {
    FisherStore store(dir.path("old/f.h5"), StoreOptions{}, kModel, "test");
    save(store, "task_0", 3.0F);
  }
  std::filesystem::rename(dir.path("old"), dir.path("new"));
  FisherStore moved(dir.path("new/f.h5"), StoreOptions{}, kModel, "test");
  EXPECT_EQ(load(moved, "task_0", 0), values_for(4096, 3.0F));
}

// A crash between a group file's rename and its link leaves a file the index does not name: it
// is not a group, the group can be saved again, and keep_only clears it away.
TEST(Store, AGroupFileWithoutALinkIsNotAGroup) {
  clhost::test::TempDir dir;
  const std::string path = dir.path("f.h5");
  FisherStore store(path, StoreOptions{}, kModel, "test");
  save(store, "task_0", 3.0F);
  std::filesystem::copy_file(path + ".groups/task_0.h5", path + ".groups/task_1.h5");
  EXPECT_EQ(store.committed_groups(), (std::vector<std::string>{"task_0"}));
  save(store, "task_1", 2.0F);
  EXPECT_EQ(load(store, "task_1", 0), values_for(4096, 2.0F));
  std::ofstream(path + ".groups/task_7.h5") << "stray";
  store.keep_only({"task_0"});
  EXPECT_EQ(store.committed_groups(), (std::vector<std::string>{"task_0"}));
  EXPECT_FALSE(std::filesystem::exists(path + ".groups/task_1.h5"));
  EXPECT_FALSE(std::filesystem::exists(path + ".groups/task_7.h5"));
  EXPECT_EQ(load(store, "task_0", 0), values_for(4096, 3.0F));
}

TEST(Store, RefusesAFileWrittenForAnotherModel) {
  clhost::test::TempDir dir;
  const std::string path = dir.path("f.h5");
  {
    FisherStore store(path, StoreOptions{}, kModel, "test");
    save(store, "task_0", 3.0F);
  }
  const std::vector<clhost::ParameterInfo> other = {{"fc1.weight", {64, 64}}, {"fc1.bias", {31}}};
  FisherStore reader(path, StoreOptions{}, other, "test");
  std::vector<float> out(10);
  try {
    reader.read_block("task_0", 0, 0, out.data(), 10);
    FAIL();
  } catch (const RunError& e) {
    EXPECT_NE(
        std::string(e.what()).find("parameter 1 is fc1.bias [30] in the file but fc1.bias [31]"),
        std::string::npos)
        << e.what();
  }
  EXPECT_THROW(reader.begin_group("task_1", ""), RunError);
}

float column_scale(int64_t column, size_t parameter) {
  return 1.0F + static_cast<float>(column + 10 * static_cast<int64_t>(parameter));
}

// Column k of every parameter, then column k + 1, as lowrank_fisher writes U.
void write_columns(FisherStore& store, int64_t columns) {
  for (int64_t k = 0; k < columns; ++k) {
    for (size_t p = 0; p < kModel.size(); ++p) {
      const int64_t numel = kModel[p].numel();
      const auto values = values_for(numel, column_scale(k, p));
      store.write_block(p, k * numel, values.data(), numel);
    }
  }
}

// A low-rank factor's columns: many writes smaller than a chunk, interleaved across parameters
// (column k of every parameter, then column k + 1). Each chunk fills in the dataset's cache and
// is compressed once; what comes back is what went in, and a finished parameter takes no more.
TEST(Store, InterleavedWritesSmallerThanAChunkReadBack) {
  clhost::test::TempDir dir;
  StoreOptions options;
  options.chunk_elements = 10000;  // 2.4 columns of fc1.weight per chunk
  const std::string path = dir.path("columns.h5");
  FisherStore store(path, options, kModel, "test");
  const int64_t columns = 7;
  store.begin_group("lowrank_u", "columns", columns);
  write_columns(store, columns);
  const std::vector<float> more(30, 1.0F);
  EXPECT_THROW(store.write_block(1, 0, more.data(), 30), RunError)
      << "fc1.bias was written completely";
  store.abort_group();
  store.begin_group("lowrank_u", "columns", columns);
  write_columns(store, columns);
  store.commit_group();
  for (int64_t k = 0; k < columns; ++k) {
    for (size_t p = 0; p < kModel.size(); ++p) {
      const int64_t numel = kModel[p].numel();
      const auto expected = values_for(numel, column_scale(k, p));
      std::vector<float> back(static_cast<size_t>(numel));
      store.read_block("lowrank_u", p, k * numel, back.data(), numel);
      ASSERT_EQ(back, expected) << kModel[p].name << " column " << k;
    }
  }
}

TEST(Store, RejectsBadInput) {
  clhost::test::TempDir dir;
  StoreOptions options;
  options.codec = "snappy";
  EXPECT_THROW(FisherStore(dir.path("a.h5"), options, kModel, "test"), RunError);
  options.codec = "gzip";
  options.dtype = "fp8";
  EXPECT_THROW(FisherStore(dir.path("a.h5"), options, kModel, "test"), RunError);
  FisherStore store(dir.path("b.h5"), StoreOptions{}, kModel, "test");
  EXPECT_THROW(store.begin_group("bad/name", ""), RunError);
  store.begin_group("task_0", "");
  const std::vector<float> values(700, 1.0F);
  EXPECT_THROW(store.write_block(0, 4000, values.data(), 200), RunError)
      << "past the end of fc1.weight";
  EXPECT_THROW(FisherStore::inspect(dir.path("missing.h5")), RunError);
}

}  // namespace
