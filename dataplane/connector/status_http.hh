#pragma once
// The connector's local metrics address: GET /metrics (Prometheus text) and GET /status (JSON:
// tunnels up, relay, tenant, group, version, config version). Served by libmicrohttpd on its own
// thread from texts the agent loop republishes every 200 ms, so the data path never waits on a
// scraper. Loopback only by default (it is unauthenticated).
#include "dataplane/base/result.hh"

#include <memory>
#include <mutex>
#include <string>

namespace apprelay::connector {

class status_http {
public:
    // listen: "HOST:PORT" (numeric; port 0 picks one). Errors name the address and the reason.
    static std::unique_ptr<status_http> start(const std::string& listen, std::string* why);
    ~status_http();
    status_http(const status_http&) = delete;
    status_http& operator=(const status_http&) = delete;

    void publish(std::string metrics_text, std::string status_json);
    uint16_t port() const noexcept { return _port; }

    struct impl;

private:
    status_http() = default;
    std::unique_ptr<impl> _impl;
    uint16_t _port = 0;
};

// `apprelay-connector status`: GET /status from a running connector and print it for people
// (or as is with json). Returns the process exit code (0, or 3 when it cannot be reached).
int print_status(const std::string& address, bool json);

} // namespace apprelay::connector
