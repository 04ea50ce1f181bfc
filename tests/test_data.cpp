// Task sequences from IDX files: any MNIST-family file set (gzip or not), explicit or shuffled
// class splits, normalisation, and errors that name the file and the key.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <hdf5.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "clhost/runner.hpp"
#include "data.hpp"
#include "test_helpers.hpp"

namespace {

namespace fs = std::filesystem;

// Writes an unsigned-byte IDX file (gzip-compressed when the name ends in .gz).
void write_idx(const std::string& path, const std::vector<uint32_t>& shape,
               const std::vector<uint8_t>& values) {
  std::string bytes{'\0', '\0', '\x08', static_cast<char>(shape.size())};
  for (uint32_t dim : shape) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes += static_cast<char>((dim >> shift) & 0xFF);
  }
  bytes.append(values.begin(), values.end());
  if (path.size() > 3 && path.substr(path.size() - 3) == ".gz") {
    gzFile file = gzopen(path.c_str(), "wb");
    gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(file);
  } else {
    std::ofstream(path, std::ios::binary) << bytes;
  }
}

// A 6-class dataset of 5x5 images: sample i has label i % 6 and every pixel equal to 10 * label.
void write_dataset(const clhost::test::TempDir& dir, int train, int test) {
  for (const auto& [prefix, count] : {std::pair{"tr", train}, std::pair{"te", test}}) {
    std::vector<uint8_t> images;
    std::vector<uint8_t> labels;
    for (int i = 0; i < count; ++i) {
      labels.push_back(static_cast<uint8_t>(i % 6));
      for (int p = 0; p < 25; ++p) images.push_back(static_cast<uint8_t>(10 * (i % 6)));
    }
    write_idx(dir.path(std::string(prefix) + "-img.gz"), {static_cast<uint32_t>(count), 5, 5},
              images);
    write_idx(dir.path(std::string(prefix) + "-lbl"), {static_cast<uint32_t>(count)}, labels);
  }
}

// Every training (test) sample of a task as the model takes it.
torch::Tensor train_inputs(const clhost::TaskData& task) {
  return task.train_range(0, task.train_size()).x;
}

// The dataset's keys, each replaceable by a line in `data_keys` (one TOML key per line).
clhost::RunConfig config_for(const clhost::test::TempDir& dir, const std::string& data_keys) {
  std::map<std::string, std::string> keys{
      {"dir", "\"" + dir.path() + "\""}, {"train_images", "\"tr-img\""},
      {"train_labels", "\"tr-lbl\""},    {"test_images", "\"te-img\""},
      {"test_labels", "\"te-lbl\""},     {"num_classes", "6"}};
  std::istringstream lines(data_keys);
  for (std::string line; std::getline(lines, line);) {
    const size_t equals = line.find(" = ");
    if (equals != std::string::npos) keys[line.substr(0, equals)] = line.substr(equals + 3);
  }
  std::string text = "[data]\n";
  for (const auto& [key, value] : keys) text += key + " = " + value + "\n";
  return clhost::load_config(dir.file("data.toml", text));
}

TEST(Data, ExplicitClassListsBuildTheTasks) {
  clhost::test::TempDir dir;
  write_dataset(dir, 60, 30);
  const auto config = config_for(dir, "task_classes = [[0, 5], [1, 2, 3]]\n");
  EXPECT_EQ(config.data.num_tasks, 2);
  const auto sequence = clhost::build_task_sequence(config.data, config.tasks, 1);
  ASSERT_EQ(sequence.tasks.size(), 2U);
  EXPECT_EQ(sequence.num_classes, 6);
  EXPECT_EQ(sequence.input_size, 25);
  EXPECT_EQ(sequence.image_side, 5);
  EXPECT_EQ(sequence.tasks[0].classes, (std::vector<int64_t>{0, 5}));
  EXPECT_EQ(sequence.tasks[1].classes, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(sequence.tasks[0].train_size(), 20);  // 10 samples of each of 2 classes
  EXPECT_EQ(sequence.tasks[1].train_size(), 30);
  EXPECT_EQ(sequence.tasks[1].test_size(), 15);
  for (int64_t label : {0, 5}) {
    EXPECT_TRUE((sequence.tasks[0].train_y == label).any().item<bool>());
  }
  // Unit scaling: pixels of class 5 are 50/255.
  const auto fives = train_inputs(sequence.tasks[0]).index({sequence.tasks[0].train_y == 5});
  EXPECT_NEAR(fives.max().item<double>(), 50.0 / 255.0, 1e-6);
}

// Domain-incremental split (van de Ven et al.): one output per position within the task, the same
// problem in every task; resident and streamed samples carry the same relabelled targets.
TEST(Data, DomainIncrementalSplitLabelsEachSampleByItsPositionInTheTask) {
  clhost::test::TempDir dir;
  write_dataset(dir, 60, 30);
  const auto config =
      config_for(dir, "task_classes = [[0, 5], [3, 1]]\nincremental = \"domain\"\n");
  const auto sequence = clhost::build_task_sequence(config.data, config.tasks, 1);
  EXPECT_EQ(sequence.num_classes, 2);
  for (const auto& task : sequence.tasks) {
    EXPECT_EQ(task.classes, (std::vector<int64_t>{0, 1}));
    EXPECT_TRUE(task.train_y.ge(0).logical_and(task.train_y.le(1)).all().item<bool>());
    const torch::Tensor rows = torch::arange(task.train_size());
    EXPECT_TRUE(torch::equal(task.train_rows(rows).y, task.train_y));
    EXPECT_TRUE(torch::equal(task.test_range(0, task.test_size()).y, task.test_y));
  }
  // Class 5 is task 1's second class, class 3 task 2's first: pixels of class 5 are 50/255.
  const auto seconds = train_inputs(sequence.tasks[0]).index({sequence.tasks[0].train_y == 1});
  EXPECT_NEAR(seconds.max().item<double>(), 50.0 / 255.0, 1e-6);
  EXPECT_THROW((void)config_for(dir,
                                "task_classes = [[0, 5], [1, 2, 3]]\nincremental = "
                                "\"domain\"\n"),
               clhost::ConfigError);
}

TEST(Data, ShuffledClassOrderIsSeededAndCoversEveryClassOnce) {
  clhost::test::TempDir dir;
  write_dataset(dir, 60, 30);
  const auto natural = config_for(dir, "num_tasks = 3\n");
  const auto shuffled = config_for(dir, "num_tasks = 3\nclass_order = \"shuffled\"\n");
  auto classes_of = [](const clhost::RunConfig& config, uint64_t seed) {
    std::vector<int64_t> all;
    for (const auto& task : clhost::build_task_sequence(config.data, config.tasks, seed).tasks) {
      all.insert(all.end(), task.classes.begin(), task.classes.end());
    }
    return all;
  };
  EXPECT_EQ(classes_of(natural, 1), (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  const auto once = classes_of(shuffled, 1);
  EXPECT_EQ(once, classes_of(shuffled, 1));
  std::vector<int64_t> sorted = once;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  bool any_differs = false;
  for (uint64_t seed = 1; seed < 6; ++seed)
    any_differs = any_differs || classes_of(shuffled, seed) != once;
  EXPECT_TRUE(any_differs) << "the seed must change the order";
}

TEST(Data, StandardNormalisationUsesTrainingStatistics) {
  clhost::test::TempDir dir;
  write_dataset(dir, 60, 30);
  const auto config = config_for(dir, "num_tasks = 1\nnormalize = \"standard\"\n");
  const auto sequence = clhost::build_task_sequence(config.data, config.tasks, 1);
  EXPECT_NEAR(train_inputs(sequence.tasks[0]).mean().item<double>(), 0.0, 1e-5);
  EXPECT_NEAR(train_inputs(sequence.tasks[0]).std().item<double>(), 1.0, 1e-3);
}

TEST(Data, BadInputNamesTheFileAndTheKey) {
  clhost::test::TempDir dir;
  write_dataset(dir, 60, 30);
  auto error_of = [&](const std::string& keys) -> std::string {
    try {
      const auto config = config_for(dir, keys);
      (void)clhost::build_task_sequence(config.data, config.tasks, 1);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_NE(error_of("num_tasks = 2\nnum_classes = 4\n")
                .find("(data.train_labels): label 5 but data.num_classes = 4"),
            std::string::npos);
  EXPECT_NE(error_of("num_tasks = 4\n")
                .find("data.num_tasks: a split scenario needs a divisor of "
                      "the 6 classes (1, 2, 3, 6)"),
            std::string::npos);
  EXPECT_NE(error_of("task_classes = [[0, 6]]\n")
                .find("data.task_classes: element 6 is out of "
                      "range [0, 5]"),
            std::string::npos);
  EXPECT_NE(error_of("task_classes = [[0, 0]]\n").find("class 0 appears twice"), std::string::npos);
  EXPECT_NE(error_of("task_classes = [[0], []]\n").find("non-empty array"), std::string::npos);
  EXPECT_NE(error_of("task_classes = [[0, 1]]\nnum_tasks = 2\n")
                .find("2 tasks but data.task_classes lists 1"),
            std::string::npos);
  EXPECT_NE(error_of("num_tasks = 2\ntest_labels = \"missing\"\n")
                .find("data.test_labels = \"missing\": " + dir.path("missing") + "(.gz) not found"),
            std::string::npos);
  // Labels that do not match the images in number.
  write_idx(dir.path("short-lbl"), {10}, std::vector<uint8_t>(10, 0));
  EXPECT_NE(error_of("num_tasks = 2\ntrain_labels = \"short-lbl\"\n")
                .find("(data.train_labels): expected 60 labels, one per sample in"),
            std::string::npos);
  // A class with no samples at all.
  write_idx(dir.path("few-lbl"), {60}, std::vector<uint8_t>(60, 1));
  EXPECT_NE(error_of("task_classes = [[0], [1]]\ntrain_labels = \"few-lbl\"\n")
                .find("task 1 (task0) has no training samples"),
            std::string::npos);
}

TEST(Data, RotatedTasksTurnTheImages) {
  clhost::test::TempDir dir;
  // Two 5x5 images, one bright pixel at row 0, column 2 (top middle).
  std::vector<uint8_t> images(2 * 25, 0);
  images[2] = 200;
  images[25 + 2] = 200;
  for (const char* prefix : {"tr", "te"}) {
    write_idx(dir.path(std::string(prefix) + "-img.gz"), {2, 5, 5}, images);
    write_idx(dir.path(std::string(prefix) + "-lbl"), {2}, {0, 1});
  }
  const auto config = config_for(dir,
                                 "scenario = \"rotated\"\nnum_tasks = 3\nrotation_step = 90.0\n"
                                 "normalize = \"none\"\nnum_classes = 2\n");
  EXPECT_EQ(config.data.incremental, clhost::Incremental::kDomain);
  const auto sequence = clhost::build_task_sequence(config.data, config.tasks, 1);
  ASSERT_EQ(sequence.tasks.size(), 3U);
  auto image = [&](size_t task) { return train_inputs(sequence.tasks[task])[0].reshape({5, 5}); };
  EXPECT_FLOAT_EQ(image(0)[0][2].item<float>(), 200.0F);  // task 1: unturned
  // 90 degrees: the pixel lands in the middle row at one edge; 180: bottom middle.
  const float left = image(1)[2][0].item<float>();
  const float right = image(1)[2][4].item<float>();
  EXPECT_NEAR(std::max(left, right), 200.0F, 1e-3F);
  EXPECT_NEAR(std::min(left, right), 0.0F, 1e-3F);
  EXPECT_NEAR(image(2)[4][2].item<float>(), 200.0F, 1e-3F);
  EXPECT_NEAR(image(2).sum().item<float>(), 200.0F, 1e-3F);
  // The default step spreads the tasks over half a turn.
  const auto defaulted =
      config_for(dir, "scenario = \"rotated\"\nnum_tasks = 4\nnum_classes = 2\n");
  EXPECT_DOUBLE_EQ(defaulted.data.rotation_step_degrees, 45.0);
  EXPECT_THROW(config_for(dir, "rotation_step = 10.0\nnum_tasks = 2\n"), clhost::ConfigError);
}

// An HDF5 file with float64 samples [N, 1, 4, 4] whose pixels equal their label, int32 labels.
void write_hdf5(const std::string& path, int train, int test, bool float_labels = false) {
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  for (const auto& [group, count] : {std::pair{"/train", train}, std::pair{"/test", test}}) {
    const hid_t g = H5Gcreate2(file, group, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    std::vector<double> x;
    std::vector<int32_t> y;
    std::vector<double> y_float;
    for (int i = 0; i < count; ++i) {
      y.push_back(i % 3);
      y_float.push_back(i % 3);
      for (int p = 0; p < 16; ++p) x.push_back(i % 3);
    }
    const hsize_t x_dims[4] = {static_cast<hsize_t>(count), 1, 4, 4};
    const hsize_t y_dims[1] = {static_cast<hsize_t>(count)};
    const hid_t x_space = H5Screate_simple(4, x_dims, nullptr);
    const hid_t y_space = H5Screate_simple(1, y_dims, nullptr);
    const hid_t xs =
        H5Dcreate2(g, "x", H5T_IEEE_F64LE, x_space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(xs, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, x.data());
    const hid_t ys = H5Dcreate2(g, "y", float_labels ? H5T_IEEE_F64LE : H5T_STD_I32LE, y_space,
                                H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (float_labels) {
      H5Dwrite(ys, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, y_float.data());
    } else {
      H5Dwrite(ys, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, y.data());
    }
    H5Dclose(xs);
    H5Dclose(ys);
    H5Sclose(x_space);
    H5Sclose(y_space);
    H5Gclose(g);
  }
  H5Fclose(file);
}

clhost::RunConfig hdf5_config(const clhost::test::TempDir& dir, const std::string& extra) {
  return clhost::load_config(dir.file("h5.toml", "[data]\nkind = \"hdf5\"\npath = \"" +
                                                     dir.path("data.h5") + "\"\nnum_classes = 3\n" +
                                                     extra));
}

TEST(Data, Hdf5DatasetsOfAnyNumericType) {
  clhost::test::TempDir dir;
  write_hdf5(dir.path("data.h5"), 30, 12);
  const auto config = hdf5_config(dir, "task_classes = [[0, 1], [2]]\n");
  const auto sequence = clhost::build_task_sequence(config.data, config.tasks, 1);
  EXPECT_EQ(sequence.input_size, 16);
  EXPECT_EQ(sequence.image_side, 4);  // [N, 1, 4, 4] is an image
  ASSERT_EQ(sequence.tasks.size(), 2U);
  EXPECT_EQ(sequence.tasks[0].train_size(), 20);
  EXPECT_EQ(sequence.tasks[1].test_size(), 4);
  // Float samples are taken as stored ("unit" scales 8-bit pixels only): pixels equal labels.
  EXPECT_TRUE(
      torch::equal(train_inputs(sequence.tasks[1]), torch::full({10, 16}, 2.0F, torch::kFloat32)));
  EXPECT_EQ(sequence.tasks[1].train_y.dtype(), torch::kInt64);
}

TEST(Data, Hdf5ErrorsNameTheFileTheDatasetAndTheKey) {
  clhost::test::TempDir dir;
  write_hdf5(dir.path("data.h5"), 30, 12);
  auto error_of = [&](const std::string& extra) -> std::string {
    try {
      const auto config = hdf5_config(dir, extra);
      (void)clhost::build_task_sequence(config.data, config.tasks, 1);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_NE(error_of("num_tasks = 1\ntrain_x = \"/train/images\"\n")
                .find(dir.path("data.h5") + ":/train/images (data.train_x): no such dataset"),
            std::string::npos);
  EXPECT_NE(error_of("num_tasks = 1\ntest_y = \"/train/y\"\n")
                .find(":/train/y (data.test_y): expected 12 labels"),
            std::string::npos);
  write_hdf5(dir.path("data.h5"), 30, 12, /*float_labels=*/true);
  EXPECT_NE(error_of("num_tasks = 1\n").find("(data.train_y): labels must be integers"),
            std::string::npos);
  std::ofstream(dir.path("data.h5")) << "not hdf5";
  EXPECT_NE(error_of("num_tasks = 1\n").find("cannot open as an HDF5 file"), std::string::npos);
  EXPECT_THROW(clhost::load_config(dir.file("bad.toml", "[data]\nkind = \"hdf5\"\n")),
               clhost::ConfigError);
}

TEST(Data, ARunTrainsOnAnHdf5DatasetEndToEnd) {
  clhost::test::TempDir dir;
  write_hdf5(dir.path("data.h5"), 90, 30);
  const std::string config = dir.file(
      "run.toml", "[run]\nseed = 3\n[data]\nkind = \"hdf5\"\npath = \"" + dir.path("data.h5") +
                      "\"\nnum_classes = 3\nscenario = \"rotated\"\nnum_tasks = 2\n"
                      "[model]\nhidden = [8]\n[train]\nbatch_size = 16\niterations = 10\n");
  clhost::RunOptions options;
  options.run_dir = dir.path("run");
  options.quiet = true;
  const auto summary = clhost::run_pipeline(clhost::load_config(config), options);
  ASSERT_EQ(summary.accuracy.size(), 2U);
  EXPECT_TRUE(fs::exists(dir.path("run") + "/results.json"));
}

}  // namespace

namespace {

// uint8 samples [N, 6, 6] with distinct values per sample (row order matters), labels i % 3,
// chunked by 16 rows as a streamed dataset would be; under `group` (e.g. "" or "/task_a").
void write_distinct_hdf5(const std::string& path, const std::string& group, int train, int test,
                         const std::vector<int>& classes = {0, 1, 2}, bool truncate = true) {
  const hid_t file = truncate ? H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)
                              : H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  const hid_t links = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(links, 1);
  for (const auto& [split, count] : {std::pair{"/train", train}, std::pair{"/test", test}}) {
    std::vector<uint8_t> x;
    std::vector<int32_t> y;
    for (int i = 0; i < count; ++i) {
      y.push_back(classes[static_cast<size_t>(i) % classes.size()]);
      for (int p = 0; p < 36; ++p) x.push_back(static_cast<uint8_t>((i * 7 + p * 3) % 256));
    }
    const hsize_t x_dims[3] = {static_cast<hsize_t>(count), 6, 6};
    const hsize_t chunk[3] = {static_cast<hsize_t>(std::min(count, 16)), 6, 6};
    const hsize_t y_dims[1] = {static_cast<hsize_t>(count)};
    const hid_t x_space = H5Screate_simple(3, x_dims, nullptr);
    const hid_t y_space = H5Screate_simple(1, y_dims, nullptr);
    const hid_t chunked = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(chunked, 3, chunk);
    H5Pset_deflate(chunked, 4);
    const std::string base = group + split;
    const hid_t xs =
        H5Dcreate2(file, (base + "/x").c_str(), H5T_STD_U8LE, x_space, links, chunked, H5P_DEFAULT);
    H5Dwrite(xs, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, x.data());
    const hid_t ys = H5Dcreate2(file, (base + "/y").c_str(), H5T_STD_I32LE, y_space, links,
                                H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(ys, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, y.data());
    H5Dclose(xs);
    H5Dclose(ys);
    H5Pclose(chunked);
    H5Sclose(x_space);
    H5Sclose(y_space);
  }
  H5Pclose(links);
  H5Fclose(file);
}

TEST(DataStreaming, StreamedSamplesEqualResidentOnesInEveryScenario) {
  clhost::test::TempDir dir;
  write_distinct_hdf5(dir.path("data.h5"), "", 300, 90);
  for (const std::string scenario : {"split", "permuted", "rotated"}) {
    for (const std::string normalize : {"unit", "standard"}) {
      SCOPED_TRACE(scenario + " / " + normalize);
      const std::string keys = "scenario = \"" + scenario + "\"\nnormalize = \"" + normalize +
                               "\"\n" +
                               (scenario == "split" ? "num_tasks = 3\n" : "num_tasks = 2\n") +
                               "train_samples_per_task = 70\n";
      const auto resident_config = hdf5_config(dir, keys);
      const auto streamed_config = hdf5_config(dir, keys + "max_resident = \"1KiB\"\n");
      const auto resident = clhost::build_task_sequence(resident_config.data, {}, 4);
      const auto streamed = clhost::build_task_sequence(streamed_config.data, {}, 4);
      EXPECT_FALSE(resident.streamed);
      EXPECT_TRUE(streamed.streamed);
      ASSERT_EQ(resident.tasks.size(), streamed.tasks.size());
      for (size_t t = 0; t < resident.tasks.size(); ++t) {
        const auto& a = resident.tasks[t];
        const auto& b = streamed.tasks[t];
        EXPECT_FALSE(b.train_x.defined()) << "streamed samples are not resident";
        ASSERT_EQ(a.train_size(), b.train_size());
        EXPECT_EQ(a.test_size(), b.test_size());
        EXPECT_TRUE(torch::equal(a.train_y, b.train_y));
        // Out of order, with a repeat, as a shuffled batch that wraps an epoch can be.
        const torch::Tensor rows = torch::tensor({5L, 0L, 69L, 17L, 5L, 33L}, torch::kInt64);
        const double tolerance = normalize == "standard" ? 1e-5 : 0.0;
        EXPECT_TRUE(torch::allclose(a.train_rows(rows).x, b.train_rows(rows).x, 0.0, tolerance));
        EXPECT_TRUE(torch::allclose(a.test_range(3, a.test_size()).x,
                                    b.test_range(3, b.test_size()).x, 0.0, tolerance));
      }
    }
  }
}

// Which sample of write_distinct_hdf5 each row is (pixel 0 is 7 i mod 256; 183 = 7^-1 mod 256),
// read with normalize = "none".
std::vector<int64_t> sample_ids(const torch::Tensor& x) {
  std::vector<int64_t> ids;
  for (int64_t row = 0; row < x.size(0); ++row) {
    ids.push_back((x[row][0].item<int64_t>() * 183) % 256);
  }
  return ids;
}

TEST(DataValidation, HeldOutSamplesLeaveTheTrainingSetSeededPerTaskResidentOrStreamed) {
  clhost::test::TempDir dir;
  write_distinct_hdf5(dir.path("data.h5"), "", 200, 30);
  const std::string keys = "scenario = \"permuted\"\nnum_tasks = 2\nnormalize = \"none\"\n";
  for (const std::string cap : {"", "max_resident = \"1KiB\"\n"}) {
    SCOPED_TRACE(cap.empty() ? "resident" : "streamed");
    const auto plain = clhost::build_task_sequence(hdf5_config(dir, keys + cap).data, {}, 4);
    const auto config = hdf5_config(dir, keys + cap + "validation = 0.25\n");
    const auto held = clhost::build_task_sequence(config.data, {}, 4);
    std::vector<std::vector<int64_t>> validation_ids;
    for (size_t t = 0; t < held.tasks.size(); ++t) {
      const auto& task = held.tasks[t];
      EXPECT_EQ(plain.tasks[t].validation_size(), 0);
      ASSERT_EQ(task.validation_size(), 50);
      ASSERT_EQ(task.train_size(), 150);
      EXPECT_EQ(task.test_size(), plain.tasks[t].test_size());
      const auto train = task.train_range(0, task.train_size());
      const auto validation = task.validation_range(0, task.validation_size());
      if (t == 0) {
        std::vector<int64_t> train_ids = sample_ids(train.x);
        std::vector<int64_t> ids = sample_ids(validation.x);
        validation_ids.push_back(ids);
        EXPECT_TRUE(std::is_sorted(train_ids.begin(), train_ids.end())) << "original order kept";
        EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
        std::vector<int64_t> all = train_ids;
        all.insert(all.end(), ids.begin(), ids.end());
        std::sort(all.begin(), all.end());
        EXPECT_EQ(std::adjacent_find(all.begin(), all.end()), all.end()) << "disjoint";
        EXPECT_EQ(all.size(), 200U);
        // Labels travel with their samples (label = id % 3).
        for (size_t i = 0; i < ids.size(); ++i) {
          EXPECT_EQ(validation.y[static_cast<int64_t>(i)].item<int64_t>(), ids[i] % 3);
        }
      } else {
        // Task 1's pixels are permuted (pixel 0 is another pixel): its labels show its own draw.
        EXPECT_FALSE(torch::equal(validation.y, held.tasks[0].validation_range(0, 50).y));
      }
    }
    // The same seed draws the same split; another seed another.
    const auto again = clhost::build_task_sequence(config.data, {}, 4);
    EXPECT_EQ(sample_ids(again.tasks[0].validation_range(0, 50).x), validation_ids[0]);
    const auto other = clhost::build_task_sequence(config.data, {}, 5);
    EXPECT_NE(sample_ids(other.tasks[0].validation_range(0, 50).x), validation_ids[0]);
    // Without data.validation the training set is untouched.
    EXPECT_TRUE(torch::equal(plain.tasks[0].train_range(0, 200).x,
                             clhost::build_task_sequence(hdf5_config(dir, keys + cap).data, {}, 4)
                                 .tasks[0]
                                 .train_range(0, 200)
                                 .x));
  }
}

TEST(DataValidation, ACountPerTaskAndATaskLeftWithoutTrainingSamples) {
  clhost::test::TempDir dir;
  write_distinct_hdf5(dir.path("data.h5"), "", 60, 30);
  const auto counted = clhost::build_task_sequence(
      hdf5_config(dir, "task_classes = [[0, 1], [2]]\nvalidation = 7\n").data, {}, 1);
  ASSERT_EQ(counted.tasks.size(), 2U);
  EXPECT_EQ(counted.tasks[0].validation_size(), 7);
  EXPECT_EQ(counted.tasks[0].train_size(), 40 - 7);
  EXPECT_EQ(counted.tasks[1].validation_size(), 7);
  EXPECT_EQ(counted.tasks[1].train_size(), 20 - 7);
  const auto config = hdf5_config(dir, "task_classes = [[0, 1], [2]]\nvalidation = 20\n");
  try {
    (void)clhost::build_task_sequence(config.data, {}, 1);
    FAIL() << "a task without training samples was accepted";
  } catch (const clhost::RunError& e) {
    EXPECT_THAT(e.what(), testing::HasSubstr("data.validation: task 2 (task1) has 20 training "
                                             "samples; holding out 20 samples leaves none"));
  }
}

TEST(DataStreaming, ARunOnDataLargerThanTheCapStreamsAndMatchesTheResidentRun) {
  clhost::test::TempDir dir;
  write_distinct_hdf5(dir.path("data.h5"), "", 3000, 300);
  const std::string base = "[run]\nseed = 2\nlog_every = 1\n[data]\nkind = \"hdf5\"\npath = \"" +
                           dir.path("data.h5") +
                           "\"\nnum_classes = 3\nscenario = \"permuted\"\nnum_tasks = 2\n";
  const std::string rest =
      "[model]\nhidden = [16]\n[train]\nbatch_size = 32\niterations = 12\n"
      "[[pipeline]]\nplugin = \"ewc\"\n";
  clhost::RunOptions options;
  options.quiet = true;
  clhost::ConfigOverrides overrides;
  overrides.plugin_path = {CLHOST_PLUGIN_DIR};
  options.run_dir = dir.path("resident");
  const auto resident = clhost::run_pipeline(
      clhost::load_config(dir.file("resident.toml", base + rest), overrides), options);
  options.run_dir = dir.path("streamed");
  // 3000 samples of 36 bytes are 108 KB: over a 50 KiB cap.
  const auto streamed = clhost::run_pipeline(
      clhost::load_config(dir.file("streamed.toml", base + "max_resident = \"50KiB\"\n" + rest),
                          overrides),
      options);
  EXPECT_EQ(resident.accuracy, streamed.accuracy) << "same samples, same order: same run";
  const auto metrics = [&](const std::string& run) {
    std::string csv = clhost::test::read_file(dir.path(run) + "/metrics.csv");
    std::string out;
    std::istringstream in(csv);
    // task, step, global_step, loss, penalty: not the timing columns.
    for (std::string line; std::getline(in, line);) {
      size_t end = 0;
      for (int column = 0; column < 5 && end != std::string::npos; ++column) {
        end = line.find(',', end + (column > 0 ? 1 : 0));
      }
      out += line.substr(0, end) + "\n";
    }
    return out;
  };
  EXPECT_EQ(metrics("resident"), metrics("streamed"));
  const std::string results = clhost::test::read_file(dir.path("streamed") + "/results.json");
  EXPECT_NE(results.find("\"streamed\": true"), std::string::npos);
  const auto peak = [&](const std::string& run) {
    const std::string text = clhost::test::read_file(dir.path(run) + "/results.json");
    const size_t at = text.find("\"tensor_peak_bytes\": ") + 21;
    return std::stoll(text.substr(at));
  };
  // 3000 + 300 resident samples of 36 bytes, shared by both tasks, are not held while streaming.
  EXPECT_LT(peak("streamed") + 100000, peak("resident"))
      << "streamed " << peak("streamed") << " B, resident " << peak("resident") << " B";
}

TEST(DataStreaming, ExplicitPerTaskSourcesReadEachTasksOwnGroup) {
  clhost::test::TempDir dir;
  write_distinct_hdf5(dir.path("tasks.h5"), "/task_a", 40, 20, {0, 1});
  write_distinct_hdf5(dir.path("tasks.h5"), "/task_b", 30, 12, {2}, /*truncate=*/false);
  write_distinct_hdf5(dir.path("other.h5"), "/c", 24, 6, {1, 2});
  const std::string head = "[data]\nkind = \"hdf5\"\npath = \"" + dir.path("tasks.h5") +
                           "\"\nnum_classes = 3\nscenario = \"sources\"\n";
  const auto config = clhost::load_config(
      dir.file("sources.toml",
               head +
                   "[[tasks]]\nname = \"a\"\ngroup = \"/task_a\"\n[[tasks]]\ngroup = \"/task_b\"\n"
                   "[[tasks]]\nname = \"c\"\npath = \"" +
                   dir.path("other.h5") + "\"\ngroup = \"/c\"\nbatch_size = 8\n"));
  EXPECT_EQ(config.data.num_tasks, 3);
  EXPECT_EQ(config.data.incremental, clhost::Incremental::kTask);
  for (const std::string max_resident : {"4GiB", "1"}) {
    auto data = config.data;
    data.max_resident_bytes = max_resident == "1" ? 1 : data.max_resident_bytes;
    const auto sequence = clhost::build_task_sequence(data, config.tasks, 0);
    ASSERT_EQ(sequence.tasks.size(), 3U);
    EXPECT_EQ(sequence.tasks[0].name, "a");
    EXPECT_EQ(sequence.tasks[1].name, "task1");
    EXPECT_EQ(sequence.tasks[0].classes, (std::vector<int64_t>{0, 1}));
    EXPECT_EQ(sequence.tasks[1].classes, (std::vector<int64_t>{2}));
    EXPECT_EQ(sequence.tasks[2].classes, (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(sequence.tasks[0].train_size(), 40);
    EXPECT_EQ(sequence.tasks[2].test_size(), 6);
    EXPECT_EQ(sequence.streamed, max_resident == "1");
    // Sample 1 of task b: pixel p = (7 + 3p) / 255.
    EXPECT_NEAR(sequence.tasks[1].train_range(1, 2).x[0][2].item<double>(), 13.0 / 255.0, 1e-7);
  }
  auto error_of = [&](const std::string& body) -> std::string {
    try {
      const auto bad = clhost::load_config(dir.file("bad.toml", body));
      (void)clhost::build_task_sequence(bad.data, bad.tasks, 0);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_NE(
      error_of(head + "[[tasks]]\ngroup = \"/task_a\"\n[[tasks]]\ngroup = \"/nope\"\n")
          .find(dir.path("tasks.h5") + ":/nope/train/x (tasks[1] train samples): no such dataset"),
      std::string::npos)
      << error_of(head + "[[tasks]]\ngroup = \"/task_a\"\n[[tasks]]\ngroup = \"/nope\"\n");
  EXPECT_NE(error_of(head).find("data.scenario = \"sources\" needs one [[tasks]] entry per task"),
            std::string::npos);
  EXPECT_NE(error_of(head + "[[tasks]]\nname = \"x\"\n").find("tasks[0].group"), std::string::npos)
      << error_of(head + "[[tasks]]\nname = \"x\"\n");
  EXPECT_NE(error_of("[data]\n[[tasks]]\ngroup = \"/a\"\n")
                .find("tasks[0].group: names this task's own HDF5 datasets"),
            std::string::npos);
  EXPECT_NE(error_of("[data]\nscenario = \"sources\"\n[[tasks]]\ngroup = \"/a\"\n")
                .find("needs data.kind = \"hdf5\""),
            std::string::npos);
  EXPECT_NE(error_of("[data]\nmax_resident = \"lots\"\n").find("data.max_resident"),
            std::string::npos);
}

}  // namespace

// Pixels stay uint8 in memory, one copy for every task, and become float32 batch by batch with
// the values a whole-split conversion gives: scaled, then permuted or rotated.
TEST(DataResident, EightBitPixelsStayBytesSharedByEveryTask) {
  clhost::test::TempDir dir;
  std::vector<uint8_t> images(60 * 25);
  std::vector<uint8_t> labels(60);
  for (size_t i = 0; i < images.size(); ++i) images[i] = static_cast<uint8_t>((i * 37) % 256);
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<uint8_t>(i % 6);
  for (const char* prefix : {"tr", "te"}) {
    write_idx(dir.path(std::string(prefix) + "-img.gz"), {60, 5, 5}, images);
    write_idx(dir.path(std::string(prefix) + "-lbl"), {60}, labels);
  }
  const torch::Tensor stored =
      torch::tensor(std::vector<int64_t>(images.begin(), images.end())).reshape({60, 25});
  const torch::Tensor rows = torch::tensor({7L, 0L, 59L, 7L}, torch::kInt64);
  for (const std::string scenario : {"permuted", "rotated"}) {
    SCOPED_TRACE(scenario);
    const auto config = config_for(dir, "scenario = \"" + scenario + "\"\nnum_tasks = 4\n");
    const auto sequence = clhost::build_task_sequence(config.data, config.tasks, 3);
    // Images (2 x 60 x 25 bytes) and labels (2 x 60 int64, each task's own copy) only.
    EXPECT_EQ(clhost::resident_data_bytes(sequence), 2 * 60 * 25 + 4 * 2 * 60 * 8);
    for (const auto& task : sequence.tasks) {
      // What the model got before samples stayed bytes: the whole split as float32, scaled,
      // then the task's transform (a permutation or a rotation).
      const torch::Tensor whole = train_inputs(task);
      EXPECT_EQ(whole.dtype(), torch::kFloat32);
      EXPECT_TRUE(torch::equal(task.train_rows(rows).x, whole.index_select(0, rows)));
      const torch::Tensor scaled = stored.to(torch::kFloat32).div_(255.0);
      if (&task == &sequence.tasks[0]) {
        EXPECT_TRUE(torch::equal(whole, scaled));
      }
    }
  }
}
