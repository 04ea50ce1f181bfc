// Command line shared by the benchmarks: `bench_X [OUT.json] [more...]`. A mistyped option is
// refused before minutes of measuring (it would otherwise be taken for the output path), and the
// JSON is written whole or not at all.
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <system_error>

namespace clhost::bench {

// -h/--help prints `usage` and exits 0; any other argument starting with '-' that is not one of
// `options` prints it and exits 2.
inline void check_arguments(int argc, char** argv, const char* usage,
                            std::initializer_list<const char*> options = {}) {
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    if (argument.empty() || argument[0] != '-') continue;
    if (argument == "-h" || argument == "--help") {
      std::printf("%s\n", usage);
      std::exit(0);
    }
    bool known = false;
    for (const char* option : options) known = known || argument == option;
    if (!known) {
      std::fprintf(stderr, "%s: unknown option %s\n%s\n", argv[0], argument.c_str(), usage);
      std::exit(2);
    }
  }
}

// argv[index] as a positive number (a whole one when `whole`; `what` names it in the error), or
// `fallback` when absent; anything else prints `usage` and exits 2 rather than measuring with a
// misread argument.
inline double positive_number_argument(int argc, char** argv, int index, const char* what,
                                       double fallback, const char* usage, bool whole = false) {
  if (argc <= index) return fallback;
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(argv[index], &end);
  if (end == argv[index] || *end != '\0' || errno != 0 || !(value > 0.0) ||
      (whole && (value != std::floor(value) || value > 1e9))) {
    std::fprintf(stderr, "%s: %s must be a positive %s, got '%s'\n%s\n", argv[0], what,
                 whole ? "integer" : "number", argv[index], usage);
    std::exit(2);
  }
  return value;
}

// Writes `text` and a newline to `path` through a temporary beside it; exits 1 naming the path
// when it cannot.
inline void write_json(const std::string& path, const std::string& text) {
  const std::string partial = path + ".partial";
  {
    std::ofstream out(partial, std::ios::binary | std::ios::trunc);
    out << text << '\n';
    out.close();
    if (!out) {
      std::fprintf(stderr, "cannot write %s: %s\n", partial.c_str(), std::strerror(errno));
      std::exit(1);
    }
  }
  std::error_code error;
  std::filesystem::rename(partial, path, error);
  if (error) {
    std::fprintf(stderr, "cannot rename %s to %s: %s\n", partial.c_str(), path.c_str(),
                 error.message().c_str());
    std::exit(1);
  }
}

}  // namespace clhost::bench
