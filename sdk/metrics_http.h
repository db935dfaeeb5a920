// A minimal HTTP/1.0 listener that serves GET /metrics for Metrics::StartExposer.
//
// Why not prometheus-cpp's Exposer: it runs on civetweb, whose Debian build creates its threads with a
// fixed small stack; in a process that also loads cuBLASLt (≈94 KB of static TLS, carved out of every
// thread's stack) civetweb cannot create a thread and the exposer fails to start
// ("null context when constructing CivetServer"). This listener uses one std::thread (default stack)
// and serves one request at a time, which is plenty for a scrape every few seconds.
//
//   IC_ASSIGN_OR_RETURN(auto server, MetricsHttpServer::Start("127.0.0.1", 9464, [] { return text; }));
//   server->port();  // the bound port (useful with port 0)
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace ic {

class MetricsHttpServer {
 public:
  // host: an IPv4/IPv6 literal, or "" for every interface; port 0 lets the kernel choose.
  // Unavailable (naming the address and errno text) when the socket cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& host, int port,
                                                                    std::function<std::string()> body);
  ~MetricsHttpServer();  // stops the thread and closes the socket

  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;
  void Serve();
  void Answer(int client);

  int fd_ = -1;
  int port_ = 0;
  std::function<std::string()> body_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace ic
