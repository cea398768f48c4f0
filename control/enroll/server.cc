// Blocking enrollment server. Connection state summary:
//   accepted -> handshaking -> reading the request line -> (busy | malformed | handler) ->
//   writing the reply + close_notify -> lingering close (drain the peer's unread bytes so the
//   kernel does not answer them with a RST that could destroy the reply) -> closed.
// Every wait is one poll() on the connection and the stop eventfd, bounded by the connection's
// deadline, so a silent or slow client costs at most io_deadline_ms and stop() is immediate.
#include "control/enroll/server.hh"

#include "dataplane/base/log.hh"
#include "tls/context.hh"
#include "tls/session.hh"

#include <arpa/inet.h>
#include <array>
#include <cerrno>
#include <cstring>
#include <exception>
#include <fcntl.h>
#include <netinet/in.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

namespace apprelay::enroll {

namespace {

using clock = std::chrono::steady_clock;

constexpr int k_backlog = 64;
// A TLS record is at most 16 KiB of plaintext; reading that much at once keeps syscalls few.
constexpr std::size_t k_io_chunk = 16 * 1024 + 256;
// After the reply: how long to wait for the peer's EOF while discarding what it still sends.
constexpr auto k_linger = std::chrono::milliseconds(200);

void set_why(std::string* why, std::string msg) {
    if (why != nullptr) {
        *why = std::move(msg);
    }
}

std::string peer_of(const sockaddr_storage& ss) {
    char host[INET6_ADDRSTRLEN] = {};
    uint16_t port = 0;
    if (ss.ss_family == AF_INET) {
        const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
        port = ntohs(sin->sin_port);
        return std::string(host) + ":" + std::to_string(port);
    }
    if (ss.ss_family == AF_INET6) {
        const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
        port = ntohs(sin6->sin6_port);
        return "[" + std::string(host) + "]:" + std::to_string(port);
    }
    return "unknown";
}

} // namespace

// One connection's blocking I/O over a memory-BIO session.
class conn {
public:
    conn(int fd, int wake_fd, clock::time_point deadline, tls::session& s)
        : _fd(fd), _wake_fd(wake_fd), _deadline(deadline), _s(s) {}

    result<void> handshake() {
        for (;;) {
            auto r = _s.handshake();
            if (auto f = flush(); !f.ok() && r.ok()) {
                return f;
            }
            if (r.ok() || r.code() != errc::again) {
                return r;
            }
            if (auto f = fill(); !f.ok()) {
                return f;
            }
        }
    }

    // The request line without its '\n'. errc::frame_too_large: no '\n' within max bytes.
    result<std::string> read_line(std::size_t max) {
        std::string line;
        std::array<std::byte, k_io_chunk> buf;
        for (;;) {
            auto r = _s.read(buf);
            if (r.ok()) {
                line.append(reinterpret_cast<const char*>(buf.data()), *r);
                std::size_t nl = line.find('\n');
                if (nl != std::string::npos && nl < max) {
                    line.resize(nl);
                    return line;
                }
                if (line.size() >= max) {
                    return error(errc::frame_too_large, "request line too long");
                }
                continue;
            }
            if (r.code() != errc::again) {
                return r.err();
            }
            if (auto f = flush(); !f.ok()) {
                return f.err();
            }
            if (auto f = fill(); !f.ok()) {
                return f.err();
            }
        }
    }

    result<void> write_and_close(const std::string& text) {
        auto w = _s.write(std::as_bytes(std::span(text.data(), text.size())));
        if (!w.ok()) {
            return w.err();
        }
        _s.shutdown();
        return flush();
    }

    // Half-close, then discard input until EOF, the linger time or the deadline.
    void linger() {
        ::shutdown(_fd, SHUT_WR);
        auto until = std::min(_deadline, clock::now() + k_linger);
        std::array<char, k_io_chunk> buf;
        for (;;) {
            ssize_t n = ::recv(_fd, buf.data(), buf.size(), 0);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                return;
            }
            if (n < 0 && !wait(POLLIN, until).ok()) {
                return;
            }
        }
    }

private:
    result<void> wait(short events, clock::time_point until) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clock::now());
        if (left.count() <= 0) {
            return error(errc::timed_out, "connection deadline passed");
        }
        pollfd fds[2] = {{_fd, events, 0}, {_wake_fd, POLLIN, 0}};
        int n = ::poll(fds, 2, static_cast<int>(left.count()));
        if (n < 0 && errno != EINTR) {
            return error(errc::io_error, "poll failed");
        }
        if (fds[1].revents != 0) {
            return error(errc::shutting_down, "enrollment server stopping");
        }
        if (n == 0) {
            return error(errc::timed_out, "connection deadline passed");
        }
        return {};
    }

    result<void> fill() {
        std::array<std::byte, k_io_chunk> buf;
        for (;;) {
            ssize_t n = ::recv(_fd, buf.data(), buf.size(), 0);
            if (n > 0) {
                _s.feed(std::span(buf.data(), static_cast<std::size_t>(n)));
                return {};
            }
            if (n == 0) {
                return error(errc::closed, "peer closed the connection");
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN) {
                return error(errc::io_error, "recv failed");
            }
            if (auto w = wait(POLLIN, _deadline); !w.ok()) {
                return w;
            }
        }
    }

    result<void> flush() {
        while (_s.pending_output_size() > 0) {
            auto out = _s.pending_output();
            ssize_t n = ::send(_fd, out.data(), out.size(), MSG_NOSIGNAL);
            if (n > 0) {
                _s.consume_output(static_cast<std::size_t>(n));
                continue;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0 && errno != EAGAIN) {
                return error(errc::io_error, "send failed");
            }
            if (auto w = wait(POLLOUT, _deadline); !w.ok()) {
                return w;
            }
        }
        return {};
    }

    int _fd;
    int _wake_fd;
    clock::time_point _deadline;
    tls::session& _s;
};

namespace {

enroll_reply refusal(const char* reason) {
    enroll_reply r;
    r.error = reason;
    return r;
}

} // namespace

bool parse_request(const std::string& line, enroll_request* out) {
    auto doc = nlohmann::json::parse(line, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) {
        return false;
    }
    auto field = [&](const char* key, std::string* dst, bool required) {
        auto it = doc.find(key);
        if (it == doc.end()) {
            return !required;
        }
        if (!it->is_string()) {
            return false;
        }
        *dst = it->get<std::string>();
        return true;
    };
    return field("token", &out->token, true) && field("csr_pem", &out->csr_pem, true) &&
           field("name", &out->name, false) && field("version", &out->version, false);
}

bool parse_service_request(const std::string& line, service_request* out, bool* bad) {
    *bad = false;
    auto doc = nlohmann::json::parse(line, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) {
        return false;
    }
    auto op = doc.find("op");
    if (op == doc.end() || !op->is_string() || op->get_ref<const std::string&>() == "enroll") {
        return false;
    }
    out->op = op->get<std::string>();
    auto str = [&](const char* key, std::string* dst) {
        auto it = doc.find(key);
        if (it == doc.end()) {
            return true;
        }
        if (!it->is_string() || it->get_ref<const std::string&>().size() > 255) {
            return false;
        }
        *dst = it->get<std::string>();
        return true;
    };
    auto off = doc.find("offset");
    if (off != doc.end()) {
        if (!off->is_number_unsigned()) {
            *bad = true;
            return true;
        }
        out->offset = off->get<uint64_t>();
    }
    *bad = out->op.size() > 32 || !str("version", &out->version) || !str("file", &out->file);
    return true;
}

std::string service_reply_line(const service_reply& reply) {
    nlohmann::json j;
    if (reply.ok) {
        j = reply.fields.is_object() ? reply.fields : nlohmann::json::object();
        j["ok"] = true;
        if (!reply.body.empty()) {
            j["length"] = reply.body.size();
        }
    } else {
        j = {{"ok", false}, {"error", reply.error}};
    }
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string reply_line(const enroll_reply& reply) {
    nlohmann::json j;
    if (reply.ok) {
        j = {{"ok", true},
             {"connector_id", reply.connector_id},
             {"tenant", reply.tenant},
             {"group", reply.group},
             {"cert_pem", reply.cert_pem},
             {"ca_pem", reply.ca_pem},
             {"tunnel_port", reply.tunnel_port},
             {"server_name", reply.server_name}};
        if (!reply.relays.empty()) {
            j["relays"] = reply.relays;
        }
    } else {
        j = {{"ok", false}, {"error", reply.error}};
    }
    // Invalid UTF-8 (a handler echoing untrusted bytes) is replaced rather than thrown.
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

result<std::unique_ptr<server>> server::start(const server_options& opts, enroll_handler handler,
                                              std::string* why) {
    auto close_listen = [&] {
        if (opts.listen_fd >= 0) {
            ::close(opts.listen_fd);
        }
    };
    if (opts.listen_fd < 0 || !handler || opts.io_deadline_ms == 0 ||
        opts.max_enrollments_per_s == 0) {
        close_listen();
        set_why(why, "enrollment server needs a socket, a handler, a deadline and a rate");
        return error(errc::invalid_argument, "invalid enrollment server options");
    }
    int flags = ::fcntl(opts.listen_fd, F_GETFL);
    if (flags < 0 || ::fcntl(opts.listen_fd, F_SETFL, flags | O_NONBLOCK) != 0 ||
        ::listen(opts.listen_fd, k_backlog) != 0) {
        set_why(why,
                std::string("cannot listen on the enrollment socket: ") + std::strerror(errno));
        close_listen();
        return error(errc::io_error, "cannot listen");
    }
    tls::server_options so;
    so.default_cert = {opts.cert_chain_pem_path, opts.key_pem_path};
    auto ctx = tls::server_context::create(so, why);
    if (!ctx.ok()) {
        close_listen();
        return ctx.err();
    }
    int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0) {
        set_why(why, std::string("cannot create eventfd: ") + std::strerror(errno));
        close_listen();
        return error(errc::io_error, "cannot create eventfd");
    }
    std::unique_ptr<server> s(new server(opts, std::move(handler), std::move(*ctx), wake));
    s->_thread = std::thread([raw = s.get()] { raw->loop(); });
    return s;
}

server::server(const server_options& opts, enroll_handler handler,
               std::shared_ptr<tls::server_context> ctx, int wake_fd)
    : _opts(opts), _handler(std::move(handler)), _ctx(std::move(ctx)), _wake_fd(wake_fd),
      _tokens(opts.max_enrollments_per_s), _refilled(clock::now()),
      _svc_tokens(opts.max_service_requests_per_s), _svc_refilled(clock::now()) {}

void server::use_context(std::shared_ptr<tls::server_context> ctx) {
    if (ctx == nullptr) {
        return;
    }
    std::lock_guard lock(_ctx_mu);
    _ctx = std::move(ctx);
}

std::shared_ptr<tls::server_context> server::context() {
    std::lock_guard lock(_ctx_mu);
    return _ctx;
}

server::~server() {
    stop();
    ::close(_wake_fd);
    ::close(_opts.listen_fd);
}

void server::stop() noexcept {
    if (_stopped.exchange(true)) {
        return;
    }
    uint64_t one = 1;
    ssize_t n = ::write(_wake_fd, &one, sizeof one);
    (void)n; // an eventfd write only fails when the counter would overflow: it is already set
    if (_thread.joinable()) {
        _thread.join();
    }
}

void server::loop() {
    for (;;) {
        pollfd fds[2] = {{_opts.listen_fd, POLLIN, 0}, {_wake_fd, POLLIN, 0}};
        int n = ::poll(fds, 2, -1);
        if (n < 0 && errno != EINTR) {
            log::error("enroll_poll_failed", {{"errno", std::strerror(errno)}});
            return;
        }
        if (fds[1].revents != 0) {
            return;
        }
        if (n <= 0) {
            continue;
        }
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        int fd = ::accept4(_opts.listen_fd, reinterpret_cast<sockaddr*>(&ss), &len,
                           SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            // EMFILE/ENFILE leave the connection queued: back off instead of spinning on it.
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                log::warn("enroll_accept_failed", {{"errno", std::strerror(errno)}});
                pollfd wake = {_wake_fd, POLLIN, 0};
                ::poll(&wake, 1, 100);
            }
            continue;
        }
        serve(fd, peer_of(ss));
        ::close(fd);
    }
}

bool server::take_service_token() {
    auto now = clock::now();
    double rate = std::max<uint32_t>(_opts.max_service_requests_per_s, 1);
    double elapsed = std::chrono::duration<double>(now - _svc_refilled).count();
    _svc_refilled = now;
    _svc_tokens = std::min(rate, _svc_tokens + elapsed * rate);
    if (_svc_tokens < 1.0) {
        return false;
    }
    _svc_tokens -= 1.0;
    return true;
}

bool server::take_rate_token() {
    auto now = clock::now();
    double rate = _opts.max_enrollments_per_s;
    double elapsed = std::chrono::duration<double>(now - _refilled).count();
    _refilled = now;
    _tokens = std::min(rate, _tokens + elapsed * rate);
    if (_tokens < 1.0) {
        return false;
    }
    _tokens -= 1.0;
    return true;
}

void server::serve(int fd, const std::string& peer) {
    auto ctx = context();
    auto session = ctx->new_session();
    if (!session) {
        log::error("enroll_refused", {{"reason", "cannot create TLS session"}, {"peer", peer}});
        return;
    }
    conn c(fd, _wake_fd, clock::now() + std::chrono::milliseconds(_opts.io_deadline_ms), *session);
    if (auto h = c.handshake(); !h.ok()) {
        log::info("enroll_refused",
                  {{"reason", "TLS handshake failed"},
                   {"detail", h.code() == errc::tls_error || h.code() == errc::cert_rejected
                                  ? session->last_error()
                                  : std::string(h.err().detail)},
                   {"peer", peer}});
        return;
    }
    enroll_reply reply;
    enroll_request req;
    auto line = c.read_line(k_max_request_line);
    if (!line.ok() && line.code() != errc::frame_too_large) {
        log::info("enroll_refused",
                  {{"reason", "no request"}, {"detail", line.err().detail}, {"peer", peer}});
        return;
    }
    service_request sreq;
    bool bad = false;
    if (line.ok() && parse_service_request(*line, &sreq, &bad)) {
        serve_service(c, *session, sreq, bad, peer);
        return;
    }
    if (!line.ok() || !parse_request(*line, &req)) {
        reply = refusal("malformed request");
    } else if (!take_rate_token()) {
        reply = refusal("busy");
    } else {
        req.peer = peer;
        try {
            reply = _handler(req);
        } catch (const std::exception& e) {
            log::error("enroll_handler_failed", {{"what", e.what()}, {"peer", peer}});
            reply = refusal("internal error");
        }
    }
    auto w = c.write_and_close(reply_line(reply));
    if (reply.ok) {
        log::info("enroll_ok", {{"connector", reply.connector_id},
                                {"tenant", reply.tenant},
                                {"group", reply.group},
                                {"name", req.name},
                                {"version", req.version},
                                {"peer", peer},
                                {"reply_sent", w.ok()}});
    } else {
        log::info("enroll_refused",
                  {{"reason", reply.error}, {"peer", peer}, {"reply_sent", w.ok()}});
    }
    if (w.ok()) {
        c.linger();
    }
}

void server::serve_service(conn& c, tls::session& s, service_request& req, bool bad,
                           const std::string& peer) {
    service_reply reply;
    if (bad) {
        reply.error = "malformed request";
    } else if (!_opts.service) {
        reply.error = "unknown op " + req.op;
    } else if (!take_service_token()) {
        reply.error = "busy";
    } else {
        req.peer = peer;
        req.peer_fingerprint = s.peer_root_fingerprint().empty() ? "" : s.peer_fingerprint();
        req.peer_root_fingerprint = s.peer_root_fingerprint();
        req.cert_problem = s.peer_certificate_problem();
        try {
            reply = _opts.service(req);
        } catch (const std::exception& e) {
            log::error("enroll_handler_failed", {{"what", e.what()}, {"peer", peer}});
            reply = {};
            reply.error = "internal error";
        }
    }
    std::string out = service_reply_line(reply);
    if (reply.ok) {
        out += reply.body;
    }
    auto w = c.write_and_close(out);
    if (!reply.ok) {
        log::info("connector_request_refused", {{"op", req.op},
                                                {"reason", reply.error},
                                                {"peer", peer},
                                                {"reply_sent", w.ok()}});
    }
    if (w.ok()) {
        c.linger();
    }
}

} // namespace apprelay::enroll
