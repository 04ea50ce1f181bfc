#include "access.hpp"

#include <httplib.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <stdexcept>

namespace clhost::serve {
namespace {

// Compares without an early exit, so the time taken says nothing about the token.
bool same_secret(const std::string& given, const std::string& expected) {
  if (given.size() != expected.size()) return false;
  unsigned char difference = 0;
  for (size_t i = 0; i < given.size(); ++i) {
    difference |= static_cast<unsigned char>(given[i] ^ expected[i]);
  }
  return difference == 0;
}

std::string cookie_value(const std::string& cookies, const std::string& name) {
  size_t start = 0;
  while (start < cookies.size()) {
    size_t end = cookies.find(';', start);
    if (end == std::string::npos) end = cookies.size();
    std::string item = cookies.substr(start, end - start);
    const size_t first = item.find_first_not_of(' ');
    item = first == std::string::npos ? "" : item.substr(first);
    if (item.rfind(name + "=", 0) == 0) return item.substr(name.size() + 1);
    start = end + 1;
  }
  return "";
}

}  // namespace

bool is_loopback_host(const std::string& host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || host.rfind("127.", 0) == 0;
}

std::string random_token() {
  std::ifstream random("/dev/urandom", std::ios::binary);
  unsigned char bytes[16];
  if (!random.read(reinterpret_cast<char*>(bytes), sizeof(bytes)))
    throw std::runtime_error("cannot read /dev/urandom for a token");
  static const char* const kHex = "0123456789abcdef";
  std::string token;
  for (const unsigned char byte : bytes) {
    token.push_back(kHex[byte >> 4]);
    token.push_back(kHex[byte & 15]);
  }
  return token;
}

bool valid_run_name(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  if (std::isalnum(static_cast<unsigned char>(name[0])) == 0) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '.' || c == '_' || c == '-';
  });
}

AccessPolicy::AccessPolicy(std::string host, int port, std::string token)
    : host_(std::move(host)),
      port_(port),
      token_(std::move(token)),
      loopback_(is_loopback_host(host_)) {}

bool AccessPolicy::host_header_allowed(const std::string& host_header) const {
  const std::string port = ":" + std::to_string(port_);
  for (const char* name : {"127.0.0.1", "localhost", "[::1]"}) {
    if (host_header == name + port) return true;
  }
  return host_header == host_ + port;
}

bool AccessPolicy::token_presented(const httplib::Request& request) const {
  if (same_secret(request.get_header_value("X-Clhost-Token"), token_)) return true;
  if (same_secret(cookie_value(request.get_header_value("Cookie"), "clhost_token"), token_))
    return true;
  return request.has_param("token") && same_secret(request.get_param_value("token"), token_);
}

std::optional<Refusal> AccessPolicy::check(const httplib::Request& request) const {
  const std::string host_header = request.get_header_value("Host");
  if (loopback_ && !host_header_allowed(host_header)) {
    return Refusal{403, "Host '" + host_header + "' refused: this server answers to " + host_ +
                            ":" + std::to_string(port_) + " only"};
  }
  if (!token_.empty() && !token_presented(request)) {
    return Refusal{401, "a token is required: open the URL clhost serve printed (with ?token=)"};
  }
  if (request.method != "GET" && request.method != "HEAD") {
    if (request.get_header_value("X-Clhost-Request").empty()) {
      return Refusal{403,
                     "refused: a state-changing request must come from the clhost page "
                     "(header X-Clhost-Request missing)"};
    }
    const std::string origin = request.get_header_value("Origin");
    if (!origin.empty() && origin != "http://" + host_header) {
      return Refusal{403, "refused: cross-origin request from " + origin};
    }
  }
  return std::nullopt;
}

}  // namespace clhost::serve
