// Text tasks for continual language modelling: each task's files are read whole (gzip or plain),
// cut into documents, a seeded share of the documents held out, and both sides cut into windows
// of context + 1 bytes (input and next-byte target).
#include <glob.h>
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <random>

#include "clhost/errors.hpp"
#include "data.hpp"

namespace clhost {
namespace {

namespace fs = std::filesystem;

struct TextSource {
  std::string name;
  std::vector<std::string> files;
};

bool fortune_index_file(const fs::path& path) {
  const std::string extension = path.extension().string();
  return extension == ".dat" || extension == ".u8";
}

// The text files of one fortunes language: English is the top folder's own files (other
// languages' packages link theirs there too), the others their sub-folder's.
std::vector<std::string> fortune_files(const std::string& root, const std::string& language) {
  const fs::path folder = language == "en" ? fs::path(root) : fs::path(root) / language;
  std::error_code error;
  if (!fs::is_directory(folder, error)) {
    throw RunError("data.languages: \"" + language + "\": " + folder.string() +
                   " is not a folder; install the Debian package fortunes" +
                   (language == "en" ? std::string() : "-" + language) +
                   " (tools/debian-packages.txt lists it)");
  }
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (entry.is_symlink() || !entry.is_regular_file() || fortune_index_file(entry.path()))
      continue;
    files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// A path of a [[tasks]] entry: a file, every file under a folder, or the files a glob matches.
void expand_path(const std::string& task, const std::string& path,
                 std::vector<std::string>& files) {
  std::error_code error;
  std::vector<std::string> found;
  if (fs::is_directory(path, error)) {
    for (const auto& entry : fs::recursive_directory_iterator(path)) {
      if (entry.is_regular_file()) found.push_back(entry.path().string());
    }
    std::sort(found.begin(), found.end());
  } else if (path.find_first_of("*?[") != std::string::npos) {
    glob_t matches{};
    if (::glob(path.c_str(), 0, nullptr, &matches) == 0) {
      for (size_t i = 0; i < matches.gl_pathc; ++i) {
        if (fs::is_regular_file(matches.gl_pathv[i], error))
          found.emplace_back(matches.gl_pathv[i]);
      }
    }
    ::globfree(&matches);
  } else if (fs::is_regular_file(path, error)) {
    found.push_back(path);
  } else {
    throw RunError("task " + task + ": " + path + ": no such file or folder");
  }
  if (found.empty()) throw RunError("task " + task + ": " + path + ": matches no file");
  files.insert(files.end(), found.begin(), found.end());
}

std::vector<TextSource> text_sources(const DataSection& data,
                                     const std::vector<TaskOverride>& tasks) {
  std::vector<TextSource> sources;
  for (size_t k = 0; k < static_cast<size_t>(data.num_tasks); ++k) {
    TextSource source;
    const bool named = k < tasks.size() && !tasks[k].name.empty();
    if (!data.languages.empty()) {
      source.name = named ? tasks[k].name : data.languages[k];
      source.files = fortune_files(data.fortunes_dir, data.languages[k]);
    } else {
      source.name = named ? tasks[k].name : "task" + std::to_string(k);
      for (const auto& path : tasks[k].text_paths) expand_path(source.name, path, source.files);
    }
    if (source.files.empty()) throw RunError("task " + source.name + ": no text files");
    sources.push_back(std::move(source));
  }
  return sources;
}

std::string read_text_file(const std::string& task, const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");  // plain files are read as they are
  if (file == nullptr) throw RunError("task " + task + ": " + path + ": cannot open");
  std::string text;
  char buffer[1 << 16];
  int got = 0;
  while ((got = gzread(file, buffer, sizeof(buffer))) > 0)
    text.append(buffer, static_cast<size_t>(got));
  const bool failed = got < 0;
  gzclose(file);
  if (failed) throw RunError("task " + task + ": " + path + ": corrupt gzip data");
  if (text.empty()) throw RunError("task " + task + ": " + path + ": is empty");
  const size_t zero = text.find('\0');
  if (zero != std::string::npos) {
    throw RunError("task " + task + ": " + path + ": is not text (a NUL byte at offset " +
                   std::to_string(zero) + "); give text files only");
  }
  return text;
}

// Fortune files separate their entries by lines holding only "%"; other text by blank lines.
void split_documents(const std::string& text, std::vector<std::string>& documents) {
  const std::string separator = text.find("\n%\n") != std::string::npos ? "\n%\n" : "\n\n";
  size_t begin = text.rfind("%\n", 0) == 0 ? 2 : 0;
  while (begin < text.size()) {
    size_t end = text.find(separator, begin);
    if (end == std::string::npos) end = text.size();
    std::string document = text.substr(begin, end - begin);
    if (document.find_first_not_of(" \t\r\n%") != std::string::npos) {
      documents.push_back(std::move(document));
    }
    begin = end + separator.size();
  }
}

std::string joined(const std::vector<std::string>& documents, size_t begin, size_t end) {
  std::string text;
  for (size_t i = begin; i < end; ++i) text.append(documents[i]).push_back('\n');
  return text;
}

// `count` windows of `width` bytes at uniformly drawn offsets.
torch::Tensor random_windows(const std::string& text, int64_t width, int64_t count,
                             std::mt19937_64& rng) {
  torch::Tensor out = torch::empty({count, width}, torch::kUInt8);
  std::uniform_int_distribution<int64_t> offset(0, static_cast<int64_t>(text.size()) - width);
  auto* rows = out.data_ptr<uint8_t>();
  for (int64_t i = 0; i < count; ++i) {
    std::memcpy(rows + i * width, text.data() + offset(rng), static_cast<size_t>(width));
  }
  return out;
}

// Consecutive windows overlapping by one byte (every byte but the first is predicted once), or
// `limit` of them evenly spaced when limit > 0 is smaller.
torch::Tensor tiled_windows(const std::string& text, int64_t width, int64_t limit) {
  const int64_t available = (static_cast<int64_t>(text.size()) - 1) / (width - 1);
  const int64_t count = limit > 0 ? std::min(limit, available) : available;
  torch::Tensor out = torch::empty({count, width}, torch::kUInt8);
  auto* rows = out.data_ptr<uint8_t>();
  for (int64_t i = 0; i < count; ++i) {
    const int64_t window = count == available ? i : i * available / count;
    std::memcpy(rows + i * width, text.data() + window * (width - 1), static_cast<size_t>(width));
  }
  return out;
}

TaskData text_task(const DataSection& data, const TextSource& source, int64_t context,
                   uint64_t seed) {
  std::vector<std::string> documents;
  for (const auto& file : source.files)
    split_documents(read_text_file(source.name, file), documents);
  const std::string where =
      "task " + source.name + " (" + source.files.front() +
      (source.files.size() > 1 ? " and " + std::to_string(source.files.size() - 1) + " more" : "") +
      ")";
  if (documents.size() < 2) {
    throw RunError(where + ": " + std::to_string(documents.size()) +
                   " document(s); a held-out split needs at least 2 (documents are separated by "
                   "lines holding only %, or by blank lines)");
  }
  std::mt19937_64 rng(seed);
  std::shuffle(documents.begin(), documents.end(), rng);
  const auto held_out = std::clamp<size_t>(
      static_cast<size_t>(std::ceil(data.test_fraction * static_cast<double>(documents.size()))), 1,
      documents.size() - 1);
  const std::string test_text = joined(documents, 0, held_out);
  const std::string train_text = joined(documents, held_out, documents.size());
  const int64_t width = context + 1;
  for (const auto& [side, text] :
       {std::pair<const char*, const std::string&>{"training", train_text},
        {"held-out", test_text}}) {
    if (static_cast<int64_t>(text.size()) < width) {
      throw RunError(
          where + ": the " + std::string(side) + " text has " + std::to_string(text.size()) +
          " bytes, less than one window of model.context + 1 = " + std::to_string(width) +
          "; give more text or a smaller model.context");
    }
  }
  const int64_t train_count =
      data.train_samples_per_task > 0
          ? data.train_samples_per_task
          : std::max<int64_t>(1, static_cast<int64_t>(train_text.size()) / context);
  const torch::Tensor train = random_windows(train_text, width, train_count, rng);
  const torch::Tensor test = tiled_windows(test_text, width, data.test_samples_per_task);
  TaskData task;
  task.name = source.name;
  task.train_x = train.narrow(1, 0, context);
  task.train_y = train.narrow(1, 1, context);
  task.test_x = test.narrow(1, 0, context);
  task.test_y = test.narrow(1, 1, context);
  return task;
}

}  // namespace

std::vector<std::vector<std::string>> text_task_files(const DataSection& data,
                                                      const std::vector<TaskOverride>& tasks) {
  std::vector<std::vector<std::string>> files;
  for (auto& source : text_sources(data, tasks)) files.push_back(std::move(source.files));
  return files;
}

TaskSequence build_text_tasks(const DataSection& data, int64_t context,
                              const std::vector<TaskOverride>& tasks, uint64_t seed) {
  TaskSequence sequence;
  sequence.next_byte = true;
  sequence.num_classes = 256;
  sequence.input_size = context;
  sequence.image_side = 0;
  const std::vector<TextSource> sources = text_sources(data, tasks);
  for (size_t k = 0; k < sources.size(); ++k) {
    sequence.tasks.push_back(text_task(data, sources[k], context, seed * 1000003ULL + k));
  }
  return sequence;
}

}  // namespace clhost
