#pragma once
// The admin API's HTTP/1.1 transport (libmicrohttpd): a UNIX socket (mode 0600, the default way
// in) and optionally a loopback TCP listener that requires `Authorization: Bearer <token>`.
// No MHD thread: the relay's control thread calls poll(), so the handler runs on the control
// thread and touches the store and snapshot without locks.
#include "control/api/http_types.hh"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace apprelay::control {

struct http_server_options {
    std::string socket_path; // required; a stale socket file there is replaced
    std::string tcp_listen;  // "127.0.0.1:PORT" / "[::1]:PORT" (PORT 0 = any); empty = no TCP
    std::string tcp_token;   // required when tcp_listen is set
    // Paths a GET may reach on TCP without the token: pages that carry no data themselves
    // (the status page, whose own requests then carry the token).
    std::vector<std::string> open_get_paths;
    // Admin bodies are small JSON objects (the largest carries a PEM chain and key).
    std::size_t max_body = std::size_t{1} << 20;
    // An idle or slow admin client is dropped after this long so it cannot pin a connection.
    unsigned idle_timeout_s = 30;
};

class http_server;

// create()'s outcome: the server or a message naming the object and the reason
// ("admin socket /run/x.sock: Permission denied"). result<T> carries only static details.
struct http_server_or_error {
    std::unique_ptr<http_server> server;
    std::string error;
    explicit operator bool() const noexcept { return server != nullptr; }
};

class http_server {
public:
    using handler = std::function<http_response(const http_request&)>;

    static http_server_or_error create(const http_server_options& opts, handler h);
    ~http_server();
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;

    // Waits up to timeout_ms (0 = just look, negative = until something happens) for admin
    // traffic and serves what is ready, calling the handler for each complete request.
    void poll(int timeout_ms);

    // The bound TCP port (useful with PORT 0), 0 when there is no TCP listener.
    uint16_t tcp_port() const noexcept;
    const std::string& socket_path() const noexcept;

private:
    struct impl;

    explicit http_server(std::unique_ptr<impl> i);
    std::unique_ptr<impl> _impl;
};

} // namespace apprelay::control
