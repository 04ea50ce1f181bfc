// Text tasks for continual language modelling: each task's files are read (gzip or plain) into a
// store, cut into documents, a seeded share of the documents held out, and both sides cut into
// windows of context + 1 bytes (input and next-byte target). A task whose text passes
// data.max_resident keeps it in a temporary file and reads each batch's windows from there; the
// windows are the same either way.
#include <glob.h>
#include <hdf5.h>
#include <torch/torch.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>

#include "clhost/errors.hpp"
#include "clhost/memory_budget.hpp"
#include "data.hpp"

namespace clhost {
namespace {

namespace fs = std::filesystem;

struct TextSource {
  std::string name;
  std::vector<std::string> files;
  std::string tokens;  // a dataset of byte ids in the one HDF5 file, instead of text files
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
      source.tokens = tasks[k].tokens;
      if (!source.tokens.empty()) {
        source.files = tasks[k].text_paths;  // the HDF5 file, as given
        if (!fs::is_regular_file(source.files.front())) {
          throw RunError("task " + source.name + ": " + source.files.front() +
                         ": no such file (the HDF5 file of tokens = \"" + source.tokens + "\")");
        }
      } else {
        for (const auto& path : tasks[k].text_paths) expand_path(source.name, path, source.files);
      }
    }
    if (source.files.empty()) throw RunError("task " + source.name + ": no text files");
    sources.push_back(std::move(source));
  }
  return sources;
}

// The bytes of one task's files, in order: in memory, or in an unlinked temporary file once they
// pass data.max_resident (the file disappears with the process, however it ends). Reads are
// positional, so a reader never moves a shared offset.
class TextStore {
 public:
  TextStore(std::string task, int64_t max_resident)
      : task_(std::move(task)), max_resident_(max_resident) {}
  ~TextStore() {
    if (fd_ >= 0) ::close(fd_);
  }
  TextStore(const TextStore&) = delete;
  TextStore& operator=(const TextStore&) = delete;
  TextStore(TextStore&&) = delete;
  TextStore& operator=(TextStore&&) = delete;

  void append(const char* bytes, size_t count) {
    if (fd_ < 0 && size_ + static_cast<int64_t>(count) > max_resident_) spill();
    if (fd_ >= 0) {
      write_all(bytes, count);
    } else {
      memory_.append(bytes, count);
    }
    size_ += static_cast<int64_t>(count);
  }

  void read(int64_t offset, int64_t count, uint8_t* out) const {
    if (fd_ < 0) {
      std::memcpy(out, memory_.data() + offset, static_cast<size_t>(count));
      return;
    }
    while (count > 0) {
      const ssize_t got = ::pread(fd_, out, static_cast<size_t>(count), offset);
      if (got <= 0) {
        throw RunError("task " + task_ + ": reading its text back from " + directory_ +
                       " failed: " + (got < 0 ? std::strerror(errno) : "the file is shorter"));
      }
      out += got;
      offset += got;
      count -= got;
    }
  }

  [[nodiscard]] int64_t size() const { return size_; }
  [[nodiscard]] bool spilled() const { return fd_ >= 0; }

 private:
  void spill() {
    const char* tmpdir = std::getenv("TMPDIR");
    directory_ = tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/tmp";
    std::string pattern = directory_ + "/clhost-text-XXXXXX";
    fd_ = ::mkstemp(pattern.data());
    if (fd_ < 0) {
      throw RunError("task " + task_ + ": its text passes data.max_resident = " +
                     memory::format_bytes(max_resident_) + " and cannot be spilled to " +
                     directory_ + " ($TMPDIR): " + std::strerror(errno));
    }
    ::unlink(pattern.c_str());
    write_all(memory_.data(), memory_.size());
    std::string().swap(memory_);
  }

  void write_all(const char* bytes, size_t count) {
    while (count > 0) {
      const ssize_t put = ::write(fd_, bytes, count);
      if (put < 0 && errno == EINTR) continue;
      if (put <= 0) {
        throw RunError("task " + task_ + ": spilling its text to " + directory_ +
                       " ($TMPDIR) failed: " + std::strerror(errno) +
                       "; free space there or raise data.max_resident");
      }
      bytes += put;
      count -= static_cast<size_t>(put);
    }
  }

  std::string task_;
  int64_t max_resident_;
  std::string memory_;
  std::string directory_;
  int fd_ = -1;
  int64_t size_ = 0;
};

// A document: bytes [offset, offset + length) of the store, without its separator.
struct Document {
  int64_t offset = 0;
  int64_t length = 0;
};

// Cuts one file's bytes into documents as they arrive, at each `separator` (leftmost, never
// overlapping, as repeated std::string::find would); a document of only whitespace and % is
// dropped. The matcher falls back to "first character matched" on a mismatch, which is exact for
// separators with no longer border, as "\n\n" and "\n%\n".
class DocumentSplitter {
 public:
  explicit DocumentSplitter(std::string separator) : separator_(std::move(separator)) {}

  void start(int64_t offset) {
    documents_.clear();
    begin_ = offset;
    matched_ = 0;
    substantive_ = false;
  }

  void feed(const char* bytes, size_t count, int64_t offset) {
    for (size_t i = 0; i < count; ++i) {
      const char c = bytes[i];
      if (std::strchr(" \t\r\n%", c) == nullptr) substantive_ = true;
      if (c == separator_[matched_]) {
        if (++matched_ < separator_.size()) continue;
        const int64_t end = offset + static_cast<int64_t>(i) + 1;
        close(end - static_cast<int64_t>(separator_.size()));
        begin_ = end;
        matched_ = 0;
        substantive_ = false;
      } else {
        matched_ = c == separator_[0] ? 1 : 0;
      }
    }
  }

  std::vector<Document> finish(int64_t end) {
    if (begin_ < end) close(end);
    return std::move(documents_);
  }

 private:
  void close(int64_t end) {
    if (substantive_) documents_.push_back({begin_, end - begin_});
  }

  std::string separator_;
  std::vector<Document> documents_;
  int64_t begin_ = 0;
  size_t matched_ = 0;
  bool substantive_ = false;
};

// Appends a stream of text to the store in pieces and cuts it into documents: fortune files
// separate their entries by lines holding only "%" (and may begin with one), other text by blank
// lines — decided at the end, by whether "\n%\n" occurs anywhere in it.
class TextAppender {
 public:
  explicit TextAppender(TextStore& store) : store_(store), begin_(store.size()) {}

  void append(const char* bytes, size_t count) {
    const int64_t offset = store_.size();
    size_t skip = 0;
    if (offset == begin_) {
      skip = count >= 2 && bytes[0] == '%' && bytes[1] == '\n' ? 2 : 0;
      fortunes_.start(offset + static_cast<int64_t>(skip));
      paragraphs_.start(offset + static_cast<int64_t>(skip));
    }
    for (size_t i = 0; i < count && !fortune_text_; ++i) {
      last_ = {last_[1], last_[2], bytes[i]};
      fortune_text_ = last_[0] == '\n' && last_[1] == '%' && last_[2] == '\n';
    }
    fortunes_.feed(bytes + skip, count - skip, offset + static_cast<int64_t>(skip));
    paragraphs_.feed(bytes + skip, count - skip, offset + static_cast<int64_t>(skip));
    store_.append(bytes, count);
  }

  [[nodiscard]] bool empty() const { return store_.size() == begin_; }

  std::vector<Document> finish() {
    std::vector<Document> from_fortunes = fortunes_.finish(store_.size());
    std::vector<Document> from_paragraphs = paragraphs_.finish(store_.size());
    return fortune_text_ ? from_fortunes : from_paragraphs;
  }

 private:
  TextStore& store_;
  int64_t begin_;
  DocumentSplitter fortunes_{"\n%\n"};
  DocumentSplitter paragraphs_{"\n\n"};
  bool fortune_text_ = false;
  std::array<char, 3> last_{};  // the last three bytes, for "\n%\n" across pieces
};

// Appends one file (gzip or plain) to the store and returns its documents.
std::vector<Document> append_text_file(const std::string& task, const std::string& path,
                                       TextStore& store) {
  gzFile file = gzopen(path.c_str(), "rb");  // plain files are read as they are
  if (file == nullptr) throw RunError("task " + task + ": " + path + ": cannot open");
  TextAppender appender(store);
  int64_t read = 0;
  std::vector<char> buffer(size_t{1} << 16);
  int got = 0;
  while ((got = gzread(file, buffer.data(), static_cast<unsigned>(buffer.size()))) > 0) {
    const auto count = static_cast<size_t>(got);
    if (const void* zero = std::memchr(buffer.data(), '\0', count)) {
      gzclose(file);
      std::string message = "task " + task;
      message.append(": ").append(path).append(": is not text (a NUL byte at offset ");
      message.append(std::to_string(read + (static_cast<const char*>(zero) - buffer.data())));
      throw RunError(message.append("); give text files only"));
    }
    appender.append(buffer.data(), count);
    read += got;
  }
  const bool failed = got < 0;
  gzclose(file);
  if (failed) throw RunError("task " + task + ": " + path + ": corrupt gzip data");
  if (appender.empty()) throw RunError("task " + task + ": " + path + ": is empty");
  return appender.finish();
}

// Closes what an HDF5 call opened when it goes out of scope.
class Hdf5Handle {
 public:
  Hdf5Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Hdf5Handle() {
    if (id_ >= 0) close_(id_);
  }
  Hdf5Handle(const Hdf5Handle&) = delete;
  Hdf5Handle& operator=(const Hdf5Handle&) = delete;
  Hdf5Handle(Hdf5Handle&&) = delete;
  Hdf5Handle& operator=(Hdf5Handle&&) = delete;
  [[nodiscard]] hid_t get() const { return id_; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// Appends a 1-D HDF5 integer dataset of byte ids (0..255) to the store, read in pieces, and
// returns its documents as for a text file.
std::vector<Document> append_token_dataset(const std::string& task, const std::string& path,
                                           const std::string& dataset, TextStore& store) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // errors are reported below, with context
  const std::string where = "task " + task + ": " + path + ":" + dataset + " (tokens)";
  const Hdf5Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (file.get() < 0) throw RunError(where + ": cannot open the file as HDF5");
  if (H5Lexists(file.get(), dataset.c_str(), H5P_DEFAULT) <= 0) {
    throw RunError(where + ": no such dataset in the file");
  }
  const Hdf5Handle set(H5Dopen2(file.get(), dataset.c_str(), H5P_DEFAULT), H5Dclose);
  if (set.get() < 0) throw RunError(where + ": not a dataset");
  const Hdf5Handle type(H5Dget_type(set.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    throw RunError(where + ": token ids must be integers");
  const Hdf5Handle space(H5Dget_space(set.get()), H5Sclose);
  if (H5Sget_simple_extent_ndims(space.get()) != 1) {
    throw RunError(where + ": token ids must be a 1-D array (rank " +
                   std::to_string(H5Sget_simple_extent_ndims(space.get())) + ")");
  }
  hsize_t total = 0;
  H5Sget_simple_extent_dims(space.get(), &total, nullptr);
  if (total == 0) throw RunError(where + ": is empty");
  TextAppender appender(store);
  constexpr hsize_t kPiece = hsize_t{1} << 20;
  std::vector<int64_t> ids(static_cast<size_t>(std::min(total, kPiece)));
  std::vector<char> bytes(ids.size());
  for (hsize_t start = 0; start < total; start += kPiece) {
    hsize_t count = std::min(kPiece, total - start);
    const Hdf5Handle memory(H5Screate_simple(1, &count, nullptr), H5Sclose);
    H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr);
    if (H5Dread(set.get(), H5T_NATIVE_INT64, memory.get(), space.get(), H5P_DEFAULT, ids.data()) <
        0) {
      throw RunError(where + ": read failed (corrupt file or I/O error)");
    }
    for (size_t i = 0; i < count; ++i) {
      if (ids[i] < 0 || ids[i] > 255) {
        throw RunError(where + ": token id " + std::to_string(ids[i]) + " at index " +
                       std::to_string(start + i) +
                       " is outside the transformer's byte vocabulary 0..255");
      }
      bytes[i] = static_cast<char>(static_cast<uint8_t>(ids[i]));
    }
    appender.append(bytes.data(), static_cast<size_t>(count));
  }
  return appender.finish();
}

// One side (training or held-out) of a task: its documents in the shuffled order, each followed
// by a newline, read as one text.
class SideText {
 public:
  SideText(std::shared_ptr<const TextStore> store, std::vector<Document> documents)
      : store_(std::move(store)), documents_(std::move(documents)) {
    int64_t end = 0;
    for (const auto& document : documents_) ends_.push_back(end += document.length + 1);
  }

  [[nodiscard]] int64_t size() const { return ends_.empty() ? 0 : ends_.back(); }
  [[nodiscard]] const TextStore& store() const { return *store_; }

  void read(int64_t offset, int64_t count, uint8_t* out) const {
    auto piece =
        static_cast<size_t>(std::upper_bound(ends_.begin(), ends_.end(), offset) - ends_.begin());
    while (count > 0) {
      const Document& document = documents_[piece];
      const int64_t within = offset - (ends_[piece] - document.length - 1);
      const int64_t take = std::min(count, document.length - within);
      if (take > 0) {
        store_->read(document.offset + within, take, out);
        out += take;
        offset += take;
        count -= take;
      }
      if (count > 0 && offset == ends_[piece] - 1) {  // the newline after the document
        *out++ = '\n';
        ++offset;
        --count;
      }
      if (offset == ends_[piece]) ++piece;
    }
  }

 private:
  std::shared_ptr<const TextStore> store_;
  std::vector<Document> documents_;
  std::vector<int64_t> ends_;  // where each document's newline ends, in this text
};

// `count` windows of `width` bytes at uniformly drawn offsets.
std::vector<int64_t> random_offsets(const SideText& text, int64_t width, int64_t count,
                                    std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> offset(0, text.size() - width);
  std::vector<int64_t> out(static_cast<size_t>(count));
  for (auto& value : out) value = offset(rng);
  return out;
}

// Consecutive windows overlapping by one byte (every byte but the first is predicted once), or
// `limit` of them evenly spaced when limit > 0 is smaller.
std::vector<int64_t> tiled_offsets(const SideText& text, int64_t width, int64_t limit) {
  const int64_t available = (text.size() - 1) / (width - 1);
  const int64_t count = limit > 0 ? std::min(limit, available) : available;
  std::vector<int64_t> out(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const int64_t window = count == available ? i : i * available / count;
    out[static_cast<size_t>(i)] = window * (width - 1);
  }
  return out;
}

torch::Tensor read_windows(const SideText& text, const std::vector<int64_t>& offsets,
                           const torch::Tensor& indices, int64_t width) {
  const torch::Tensor wanted = indices.to(torch::kInt64).contiguous();
  torch::Tensor out = torch::empty({wanted.numel(), width}, torch::kUInt8);
  auto* rows = out.data_ptr<uint8_t>();
  const int64_t* positions = wanted.data_ptr<int64_t>();
  for (int64_t i = 0; i < wanted.numel(); ++i) {
    if (positions[i] < 0 || positions[i] >= static_cast<int64_t>(offsets.size())) {
      throw RunError("text window " + std::to_string(positions[i]) + " out of range (" +
                     std::to_string(offsets.size()) + " windows)");
    }
    text.read(offsets[static_cast<size_t>(positions[i])], width, rows + i * width);
  }
  return out;
}

// Windows of a text that stays on disk, read when a batch asks for them.
class TextWindows final : public SampleSource {
 public:
  TextWindows(SideText text, std::vector<int64_t> offsets, int64_t width)
      : text_(std::move(text)), offsets_(std::move(offsets)), width_(width) {}
  [[nodiscard]] int64_t size() const override { return static_cast<int64_t>(offsets_.size()); }
  [[nodiscard]] Samples gather(const torch::Tensor& indices) const override {
    const torch::Tensor windows = read_windows(text_, offsets_, indices, width_);
    bytes_read_ += windows.numel();
    return {windows.narrow(1, 0, width_ - 1), windows.narrow(1, 1, width_ - 1)};
  }
  [[nodiscard]] int64_t bytes_read() const override { return bytes_read_; }

 private:
  SideText text_;
  std::vector<int64_t> offsets_;
  int64_t width_;
  mutable int64_t bytes_read_ = 0;
};

// x and y of a side's windows: read now, or by the returned source when the text was spilled.
void take_windows(const SideText& text, std::vector<int64_t> offsets, int64_t width,
                  torch::Tensor& x, torch::Tensor& y, std::shared_ptr<const SampleSource>& stream) {
  if (text.store().spilled()) {
    stream = std::make_shared<TextWindows>(text, std::move(offsets), width);
    return;
  }
  const torch::Tensor all = read_windows(
      text, offsets, torch::arange(static_cast<int64_t>(offsets.size()), torch::kInt64), width);
  x = all.narrow(1, 0, width - 1);
  y = all.narrow(1, 1, width - 1);
}

// data.validation for text: whole documents of the training side (windows cut from the same text
// would overlap the training windows); a count is a number of documents.
int64_t validation_documents(const DataSection& data, int64_t training_documents,
                             const std::string& where) {
  const int64_t held_out = data.validation.samples_of(training_documents);
  if (held_out >= training_documents) {
    throw RunError(where + ": data.validation holds out " + std::to_string(held_out) + " of the " +
                   std::to_string(training_documents) +
                   " training documents, leaving none to train on; give a smaller "
                   "data.validation");
  }
  return held_out;
}

TaskData text_task(const DataSection& data, const TextSource& source, int64_t context,
                   uint64_t seed) {
  auto store = std::make_shared<TextStore>(source.name, data.max_resident_bytes);
  std::vector<Document> documents;
  for (const auto& file : source.files) {
    const std::vector<Document> found =
        source.tokens.empty() ? append_text_file(source.name, file, *store)
                              : append_token_dataset(source.name, file, source.tokens, *store);
    documents.insert(documents.end(), found.begin(), found.end());
  }
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
  const auto split = documents.begin() + static_cast<std::ptrdiff_t>(held_out);
  const auto train_begin = split + static_cast<std::ptrdiff_t>(
                                       validation_documents(data, documents.end() - split, where));
  const SideText test_text(store, std::vector<Document>(documents.begin(), split));
  const SideText validation_text(store, std::vector<Document>(split, train_begin));
  const SideText train_text(store, std::vector<Document>(train_begin, documents.end()));
  const int64_t width = context + 1;
  std::vector<std::pair<const char*, const SideText*>> sides = {{"training", &train_text},
                                                                {"held-out", &test_text}};
  if (split != train_begin) sides.emplace_back("validation", &validation_text);
  for (const auto& [side, text] : sides) {
    if (text->size() < width) {
      throw RunError(
          where + ": the " + std::string(side) + " text has " + std::to_string(text->size()) +
          " bytes, less than one window of model.context + 1 = " + std::to_string(width) +
          "; give more text or a smaller model.context");
    }
  }
  const int64_t train_count = data.train_samples_per_task > 0
                                  ? data.train_samples_per_task
                                  : std::max<int64_t>(1, train_text.size() / context);
  TaskData task;
  task.name = source.name;
  task.next_byte = true;
  take_windows(train_text, random_offsets(train_text, width, train_count, rng), width, task.train_x,
               task.train_y, task.train_source);
  take_windows(test_text, tiled_offsets(test_text, width, data.test_samples_per_task), width,
               task.test_x, task.test_y, task.test_source);
  if (split != train_begin) {
    take_windows(validation_text, tiled_offsets(validation_text, width, data.test_samples_per_task),
                 width, task.validation_x, task.validation_y, task.validation_source);
  }
  return task;
}

}  // namespace

std::vector<std::vector<std::string>> text_task_files(const DataSection& data,
                                                      const std::vector<TaskOverride>& tasks) {
  std::vector<std::vector<std::string>> files;
  for (auto& source : text_sources(data, tasks)) files.push_back(std::move(source.files));
  return files;
}

std::vector<std::string> text_file_documents(const std::string& path, int64_t max_resident) {
  TextStore store("documents", max_resident);
  std::vector<std::string> out;
  for (const Document& document : append_text_file("documents", path, store)) {
    std::string text(static_cast<size_t>(document.length), '\0');
    store.read(document.offset, document.length, reinterpret_cast<uint8_t*>(text.data()));
    out.push_back(std::move(text));
  }
  return out;
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
    sequence.streamed = sequence.streamed || sequence.tasks.back().train_source != nullptr ||
                        sequence.tasks.back().test_source != nullptr;
  }
  return sequence;
}

}  // namespace clhost
