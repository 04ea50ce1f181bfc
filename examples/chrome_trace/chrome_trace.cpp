// chrome_trace: a clhost profiler in C++ — the run as a Chrome trace (the Trace Event Format
// that chrome://tracing, Perfetto (ui.perfetto.dev) and speedscope open). Tasks, consolidations
// and evaluations become nested spans, out-of-memory retries, batch-size changes, checkpoints and
// named events become instant markers, and every event adds a memory counter track (RSS and
// LibTorch tensor bytes, from clhost.memory/1).
//
// Key: file (the trace's path; relative paths are inside the run directory).
#include <clhost/plugin.hpp>

#include <cstdio>
#include <fstream>
#include <string>

namespace {

const clhost_config_key_t kSchema[] = {
    {"file", CLHOST_CONFIG_TYPE_STRING, "\"trace.json\"",
     "where the trace goes; relative paths are inside the run directory", 0, 0, 0, nullptr},
};

const clhost_plugin_descriptor_t kDescriptor{sizeof(clhost_plugin_descriptor_t),
                                             "chrome_trace",
                                             CLHOST_PLUGIN_KIND_PROFILER,
                                             "1.0.0",
                                             "the run as a Chrome/Perfetto trace (trace.json)",
                                             "clhost examples",
                                             kSchema,
                                             sizeof(kSchema) / sizeof(kSchema[0])};

std::string escaped(const char* text) {
  std::string out;
  for (const char* c = text; c != nullptr && *c != '\0'; ++c) {
    if (*c == '"' || *c == '\\') out += '\\';
    if (static_cast<unsigned char>(*c) >= 0x20) out += *c;
  }
  return out;
}

class ChromeTrace : public clhost::sdk::Profiler {
 public:
  ChromeTrace(const clhost_host_t* host, const clhost::sdk::Config& config)
      : Profiler(host), file_(config.get_string("file")) {}

  void on_event(const clhost_event_t& event) override {
    if (event.kind == CLHOST_EVENT_RUN_BEGIN) {
      path_ = !file_.empty() && file_[0] == '/' ? file_ : std::string(event.run_dir) + "/" + file_;
    }
    const long long micros = static_cast<long long>(event.time_seconds * 1e6);
    const char* phase = "i";  // instant
    std::string name = escaped(event.label);
    switch (event.kind) {
      case CLHOST_EVENT_RUN_BEGIN:
      case CLHOST_EVENT_TASK_BEGIN:
      case CLHOST_EVENT_EVAL_BEGIN:
      case CLHOST_EVENT_CONSOLIDATE_BEGIN: phase = "B"; break;
      case CLHOST_EVENT_RUN_END:
      case CLHOST_EVENT_TASK_END:
      case CLHOST_EVENT_EVAL_END:
      case CLHOST_EVENT_CONSOLIDATE_END: phase = "E"; break;
      default: break;
    }
    append("{\"name\":\"" + name + "\",\"cat\":\"" + escaped(source_of(event)) + "\",\"ph\":\"" +
           phase + "\",\"ts\":" + std::to_string(micros) + ",\"pid\":1,\"tid\":1" +
           (phase[0] == 'i' ? ",\"s\":\"t\"" : "") + "}");
    const clhost_memory_info_t memory = host().memory_info();
    append("{\"name\":\"memory (MiB)\",\"ph\":\"C\",\"ts\":" + std::to_string(micros) +
           ",\"pid\":1,\"args\":{\"rss\":" + mib(memory.rss_bytes) +
           ",\"tensors\":" + mib(memory.tensor_bytes) + "}}");
    if (event.kind == CLHOST_EVENT_RUN_END) write();
  }

  [[nodiscard]] std::string report_json() const override {
    return "{\"file\": \"" + escaped(path_.c_str()) + "\", \"events\": " + std::to_string(count_) +
           "}";
  }

 private:
  static std::string mib(int64_t bytes) {
    char text[32];
    std::snprintf(text, sizeof(text), "%.2f",
                  static_cast<double>(bytes < 0 ? 0 : bytes) / 1048576.0);
    return text;
  }

  void append(const std::string& record) {
    events_ += (count_ == 0 ? "\n  " : ",\n  ") + record;
    ++count_;
  }

  void write() {
    const std::string partial = path_ + ".partial";
    {
      std::ofstream out(partial);
      out << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[" << events_ << "\n]}\n";
      if (!out) throw clhost::sdk::Error(partial + ": write failed", CLHOST_STATUS_IO);
    }
    if (std::rename(partial.c_str(), path_.c_str()) != 0) {
      throw clhost::sdk::Error(path_ + ": rename failed", CLHOST_STATUS_IO);
    }
    host().log(CLHOST_LOG_INFO, "wrote " + path_ + " (" + std::to_string(count_) + " events)");
  }

  std::string file_;
  std::string path_;
  std::string events_;
  long count_ = 0;
};

}  // namespace

CLHOST_DEFINE_PLUGIN(ChromeTrace, kDescriptor, nullptr);
