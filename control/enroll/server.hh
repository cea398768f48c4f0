#pragma once
// The relay's enrollment listener (control/enroll/PROTOCOL.md): one thread, one connection at a
// time. Per connection: TLS 1.3 handshake with the relay certificate chain (leaf + relay CA, so a
// connector can match the CA fingerprint of its token), one JSON request line, the handler's
// verdict as one JSON reply line, close. The handler does the store work (token, CSR, signing);
// this file only moves bytes, bounds them, paces them and logs the outcome (never the token).
#include "dataplane/base/result.hh"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>
#include <thread>

namespace apprelay::tls {
class server_context;
class session;
} // namespace apprelay::tls

namespace apprelay::enroll {

// PROTOCOL.md step 4: one request line of at most 64 KiB, newline included.
constexpr std::size_t k_max_request_line = 64 * 1024;

struct enroll_request {
    std::string token;
    std::string csr_pem;
    std::string name;    // requested connector name (untrusted, informative)
    std::string version; // connector version
    std::string peer;    // "address:port" of the connection, for the handler's own logs
};

// PROTOCOL.md step 6. When ok is false only `error` is sent.
struct enroll_reply {
    bool ok = false;
    std::string error;
    std::string connector_id;
    std::string tenant;
    std::string group;
    std::string cert_pem;
    std::string ca_pem;
    uint16_t tunnel_port = 0;
    std::string server_name;
    std::vector<std::string> relays; // a fleet's relays (tunnel HOST:PORT); empty when alone
};

// Runs on the server's thread, one request at a time; must not throw (an exception is answered
// with "internal error").
using enroll_handler = std::function<enroll_reply(const enroll_request&)>;

// PROTOCOL.md "Connector requests": a request line with an "op" other than "enroll", from a
// registered connector. The listener asks every client for a certificate (optional, so that
// enrollment needs none) and verifies it against the tenant CAs of its current context; the
// handler decides who the connector is from the verified fingerprints.
struct service_request {
    std::string op;      // update_info | update_turn | update_fetch
    std::string version; // update_turn: the version the connector is about to install
    std::string file;    // update_fetch: manifest.json | manifest.sig | apprelay-connector
    uint64_t offset = 0; // update_fetch: first byte wanted
    std::string peer;
    std::string peer_fingerprint;      // SHA-256 of the verified client certificate; empty: none
    std::string peer_root_fingerprint; // the CA it verified against
    std::string cert_problem;          // why there is no verified certificate ("" if there is)
};

struct service_reply {
    bool ok = false;
    std::string error;
    // Sent with "ok" in the reply line (an object; other types are ignored).
    nlohmann::json fields = nlohmann::json::object();
    // Raw bytes after the reply line; the line then carries "length": body.size().
    std::string body;
};
using service_handler = std::function<service_reply(const service_request&)>;

// PROTOCOL.md "Connector requests": decodes a request line with an "op" field. Returns false
// when the line has no string "op" (or op is "enroll": an enrollment request); *bad is set when
// it has one but the rest is malformed.
bool parse_service_request(const std::string& line, service_request* out, bool* bad);
std::string service_reply_line(const service_reply& reply);
// At most this many body bytes per update_fetch reply.
constexpr std::size_t k_max_fetch_chunk = 1024 * 1024;

struct server_options {
    int listen_fd = -1;              // bound TCP socket; the server listens on it and closes it
    std::string cert_chain_pem_path; // relay server certificate, then the relay CA
    std::string key_pem_path;
    // Handshake, request and reply of one connection must fit in this; a silent client holds the
    // single connection slot at most this long.
    uint32_t io_deadline_ms = 5000;
    // Handler calls per second (token bucket, burst of the same size); connections beyond it are
    // answered {"ok":false,"error":"busy"} without calling the handler.
    uint32_t max_enrollments_per_s = 20;
    // Connector requests: their handler (none: refused "unknown op") and their own rate, so that
    // updates never starve enrollment.
    service_handler service;
    uint32_t max_service_requests_per_s = 200;
};

// PROTOCOL.md step 4: decodes a request line (without its '\n'); false when it is not a JSON
// object with string fields token and csr_pem (name and version optional, strings if present).
// Leaves out->peer alone.
bool parse_request(const std::string& line, enroll_request* out);

// The JSON reply line (with its '\n') for a reply, as sent on the wire.
std::string reply_line(const enroll_reply& reply);

class conn; // server.cc: one connection's blocking I/O

class server {
public:
    // Takes ownership of opts.listen_fd (closed on failure too).
    static result<std::unique_ptr<server>> start(const server_options& opts, enroll_handler handler,
                                                 std::string* why);
    ~server(); // stop()
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    // Ends the thread within 100 ms, also in the middle of a connection. Idempotent.
    void stop() noexcept;
    // The TLS context for connections accepted from now on (the control thread rebuilds it when
    // tenant CAs change, so that connector certificates verify). Thread-safe.
    void use_context(std::shared_ptr<tls::server_context> ctx);

private:
    server(const server_options& opts, enroll_handler handler,
           std::shared_ptr<tls::server_context> ctx, int wake_fd);
    void loop();
    void serve(int fd, const std::string& peer);
    bool take_rate_token();
    bool take_service_token();
    void serve_service(conn& c, tls::session& s, service_request& req, bool bad,
                       const std::string& peer);
    std::shared_ptr<tls::server_context> context();

    server_options _opts;
    enroll_handler _handler;
    std::mutex _ctx_mu;
    std::shared_ptr<tls::server_context> _ctx;
    int _wake_fd; // eventfd: stop() makes it readable, every poll() watches it
    double _tokens;
    std::chrono::steady_clock::time_point _refilled;
    double _svc_tokens;
    std::chrono::steady_clock::time_point _svc_refilled;
    std::atomic<bool> _stopped{false};
    std::thread _thread;
};

} // namespace apprelay::enroll
