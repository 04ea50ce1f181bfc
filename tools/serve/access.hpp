// Who may do what: the checks every request passes before a handler sees it.
//  - bound to loopback: the Host header must name the loopback address (a web page elsewhere
//    cannot reach the server through DNS rebinding);
//  - with a token (required off loopback): every request carries it (X-Clhost-Token header,
//    the clhost_token cookie the page gets when opened with ?token=, or ?token=);
//  - state-changing requests (POST) also carry X-Clhost-Request (a header no cross-site form
//    can send without a CORS preflight, which the server never grants) and, when the browser
//    sends an Origin, the server's own.
#pragma once

#include <optional>
#include <string>

namespace httplib {
struct Request;
}

namespace clhost::serve {

struct Refusal {
  int status;
  std::string message;
};

class AccessPolicy {
 public:
  AccessPolicy(std::string host, int port, std::string token);

  [[nodiscard]] std::optional<Refusal> check(const httplib::Request& request) const;
  [[nodiscard]] bool loopback() const { return loopback_; }
  [[nodiscard]] const std::string& token() const { return token_; }
  void set_port(int port) { port_ = port; }

 private:
  [[nodiscard]] bool host_header_allowed(const std::string& host_header) const;
  [[nodiscard]] bool token_presented(const httplib::Request& request) const;

  std::string host_;
  int port_;
  std::string token_;
  bool loopback_;
};

// True for 127.0.0.0/8, ::1 and "localhost".
bool is_loopback_host(const std::string& host);
// 128 random bits as 32 hex digits, from /dev/urandom.
std::string random_token();
// Run names a request may use: [A-Za-z0-9][A-Za-z0-9._-]{0,127}. Nothing else reaches a path.
bool valid_run_name(const std::string& name);

}  // namespace clhost::serve
