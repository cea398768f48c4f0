// Connector enrollment over blocking, deadline-bounded sockets. Exchange state summary:
//   resolve -> connect -> TLS handshake (pinned) -> write request -> read reply line -> close.
// The token only leaves the process after the handshake accepted the pinned relay CA.
#include "dataplane/connector/enroll.hh"

#include "tls/ca.hh"
#include "tls/context.hh"
#include "tls/csr.hh"
#include "tls/session.hh"

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <functional>
#include <netdb.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <random>
#include <sstream>
#include <sys/socket.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

namespace apprelay::connector {

namespace {

using clock = std::chrono::steady_clock;

constexpr std::string_view k_token_prefix = "art1.";
constexpr std::size_t k_id_hex = 16;
constexpr std::size_t k_secret_hex = 32;
constexpr std::size_t k_fingerprint_hex = 64;
// The reply carries two certificates (~1-2 KiB each); the request limit bounds it generously.
constexpr std::size_t k_max_reply_line = 64 * 1024;
// A connector request's body (one update_fetch chunk of at most 1 MiB).
constexpr uint64_t k_max_request_body = 1024 * 1024;
constexpr std::size_t k_io_chunk = 16 * 1024 + 256;
// relay.json is a few hundred bytes; anything bigger is not ours.
constexpr std::size_t k_max_relay_json = 64 * 1024;

void set_why(std::string* why, std::string msg) {
    if (why != nullptr) {
        *why = std::move(msg);
    }
}

bool is_lower_hex(std::string_view s, std::size_t len) {
    return s.size() == len && s.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

// HOST:PORT with HOST possibly "[v6]"; returns false if the shape is wrong.
bool split_host_port(const std::string& hp, std::string* host, std::string* port) {
    std::size_t colon = hp.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == hp.size()) {
        return false;
    }
    *host = hp.substr(0, colon);
    *port = hp.substr(colon + 1);
    if (host->front() == '[') {
        if (host->size() < 3 || host->back() != ']') {
            return false;
        }
        *host = host->substr(1, host->size() - 2);
    }
    return port->find_first_not_of("0123456789") == std::string::npos && port->size() <= 5;
}

class fd_guard {
public:
    explicit fd_guard(int fd) : _fd(fd) {}
    ~fd_guard() {
        if (_fd >= 0) {
            ::close(_fd);
        }
    }
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    int get() const { return _fd; }

private:
    int _fd;
};

result<void> wait_fd(int fd, short events, clock::time_point deadline) {
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
        if (left.count() <= 0) {
            return error(errc::timed_out, "enrollment deadline passed");
        }
        pollfd p = {fd, events, 0};
        int n = ::poll(&p, 1, static_cast<int>(left.count()));
        if (n > 0) {
            return {};
        }
        if (n < 0 && errno != EINTR) {
            return error(errc::io_error, "poll failed");
        }
    }
}

// Non-blocking connect to the first address that answers before the deadline.
result<int> dial(const std::string& relay, clock::time_point deadline, std::string* why) {
    std::string host;
    std::string port;
    if (!split_host_port(relay, &host, &port)) {
        set_why(why, "relay address '" + relay + "' is not HOST:PORT");
        return error(errc::invalid_argument, "bad relay address");
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int gai = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
    if (gai != 0) {
        set_why(why, "cannot resolve " + host + ": " + ::gai_strerror(gai));
        return error(errc::unreachable, "cannot resolve relay");
    }
    std::string last = "no address";
    for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
        int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                          ai->ai_protocol);
        if (fd < 0) {
            last = std::strerror(errno);
            continue;
        }
        int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            if (wait_fd(fd, POLLOUT, deadline).ok()) {
                int err = 0;
                socklen_t len = sizeof err;
                ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                rc = err == 0 ? 0 : -1;
                errno = err != 0 ? err : ETIMEDOUT;
            } else {
                errno = ETIMEDOUT;
            }
        }
        if (rc == 0) {
            ::freeaddrinfo(res);
            return fd;
        }
        last = std::strerror(errno);
        ::close(fd);
    }
    ::freeaddrinfo(res);
    set_why(why, "cannot connect to " + relay + ": " + last);
    return error(errc::unreachable, "cannot connect to relay");
}

// Blocking I/O of one TLS session on a non-blocking socket, bounded by one deadline.
class tls_io {
public:
    tls_io(int fd, clock::time_point deadline, tls::session& s)
        : _fd(fd), _deadline(deadline), _s(s) {}

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

    result<void> write(std::string_view text) {
        auto w = _s.write(std::as_bytes(std::span(text.data(), text.size())));
        if (!w.ok()) {
            return w.err();
        }
        return flush();
    }

    // The bytes after the line stay in _rest (read_exact takes them first).
    result<std::string> read_line(std::size_t max) {
        std::string line;
        std::array<std::byte, k_io_chunk> buf;
        for (;;) {
            auto r = _s.read(buf);
            if (r.ok()) {
                line.append(reinterpret_cast<const char*>(buf.data()), *r);
                std::size_t nl = line.find('\n');
                if (nl != std::string::npos) {
                    _rest = line.substr(nl + 1);
                    line.resize(nl);
                    return line;
                }
                if (line.size() >= max) {
                    return error(errc::frame_too_large, "reply line too long");
                }
                continue;
            }
            if (r.code() != errc::again) {
                return r.err();
            }
            if (auto f = fill(); !f.ok()) {
                return f.err();
            }
        }
    }

    // Exactly n more bytes after the line (errc::closed when the peer ends before).
    result<std::string> read_exact(std::size_t n) {
        std::string out = std::move(_rest);
        _rest.clear();
        std::array<std::byte, k_io_chunk> buf;
        while (out.size() < n) {
            auto r = _s.read(buf);
            if (r.ok()) {
                out.append(reinterpret_cast<const char*>(buf.data()), *r);
                continue;
            }
            if (r.code() != errc::again) {
                return r.err();
            }
            if (auto f = fill(); !f.ok()) {
                return f.err();
            }
        }
        if (out.size() > n) {
            return error(errc::protocol_error, "more bytes than announced");
        }
        return out;
    }

private:
    std::string _rest;

    result<void> fill() {
        std::array<std::byte, k_io_chunk> buf;
        for (;;) {
            ssize_t n = ::recv(_fd, buf.data(), buf.size(), 0);
            if (n > 0) {
                _s.feed(std::span(buf.data(), static_cast<std::size_t>(n)));
                return {};
            }
            if (n == 0) {
                return error(errc::closed, "relay closed the connection");
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN) {
                return error(errc::io_error, "recv failed");
            }
            if (auto w = wait_fd(_fd, POLLIN, _deadline); !w.ok()) {
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
            if (auto w = wait_fd(_fd, POLLOUT, _deadline); !w.ok()) {
                return w;
            }
        }
        return {};
    }

    int _fd;
    clock::time_point _deadline;
    tls::session& _s;
};

std::string default_name() {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') {
        return "connector";
    }
    return host;
}

result<void> make_private_dir(const std::string& dir, std::string* why) {
    // Missing parents are made 0755 (`register --state-dir /var/lib/apprelay-connector/site-a`
    // on a fresh host, before systemd ever made /var/lib/apprelay-connector); only DIR is private.
    for (std::size_t slash = dir.find('/', 1); slash != std::string::npos;
         slash = dir.find('/', slash + 1)) {
        const std::string parent = dir.substr(0, slash);
        if (::mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) {
            set_why(why, "cannot create " + parent + ": " + std::strerror(errno));
            return error(errc::io_error, "cannot create state directory");
        }
    }
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
        set_why(why, "cannot create " + dir + ": " + std::strerror(errno));
        return error(errc::io_error, "cannot create state directory");
    }
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        set_why(why, dir + " is not a directory");
        return error(errc::io_error, "state directory is not a directory");
    }
    // mkdir honours the umask and leaves an existing directory alone: set the mode explicitly.
    if (::chmod(dir.c_str(), 0700) != 0) {
        set_why(why, "cannot chmod " + dir + ": " + std::strerror(errno));
        return error(errc::io_error, "cannot chmod state directory");
    }
    return {};
}

// An optional "relays" array of HOST:PORT strings (at most 64, each at most 300 bytes).
bool read_relays(const nlohmann::json& doc, std::vector<std::string>* out) {
    auto it = doc.find("relays");
    if (it == doc.end()) {
        return true;
    }
    if (!it->is_array() || it->size() > 64) {
        return false;
    }
    for (const auto& r : *it) {
        if (!r.is_string() || r.get_ref<const std::string&>().empty() ||
            r.get_ref<const std::string&>().size() > 300 ||
            r.get_ref<const std::string&>().find(':') == std::string::npos) {
            return false;
        }
        out->push_back(r.get<std::string>());
    }
    return true;
}

bool read_small_file(const std::string& path, std::size_t max, std::string* out) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return false;
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    *out = ss.str();
    return out->size() <= max;
}

// The ok/error envelope of a relay reply line (enrollment and connector requests): the decoded
// object when "ok" is true; errc::refused with the relay's reason, or errc::protocol_error.
result<nlohmann::json> reply_envelope(const std::string& line, std::string_view what,
                                      std::string* why) {
    auto doc = nlohmann::json::parse(line, nullptr, false);
    if (doc.is_discarded() || !doc.is_object() || !doc.contains("ok") || !doc["ok"].is_boolean()) {
        set_why(why, "relay sent an invalid reply");
        return error(errc::protocol_error, "invalid " + std::string(what) + " reply");
    }
    if (!doc["ok"].get<bool>()) {
        auto it = doc.find("error");
        set_why(why, it != doc.end() && it->is_string() ? it->get<std::string>()
                                                        : "refused without a reason");
        return error(errc::refused, std::string(what) + " refused");
    }
    return doc;
}

} // namespace

result<relay_reply> parse_reply(const std::string& line, std::string* why) {
    auto env = reply_envelope(line, "enrollment", why);
    if (!env.ok()) {
        return env.err();
    }
    const nlohmann::json& doc = *env;
    relay_reply r;
    auto str = [&](const char* key, std::string* dst) {
        auto it = doc.find(key);
        if (it == doc.end() || !it->is_string() || it->get_ref<const std::string&>().empty()) {
            return false;
        }
        *dst = it->get<std::string>();
        return true;
    };
    auto port = doc.find("tunnel_port");
    bool ok = str("connector_id", &r.reg.connector_id) && str("tenant", &r.reg.tenant) &&
              str("group", &r.reg.group) && str("cert_pem", &r.cert_pem) &&
              str("ca_pem", &r.ca_pem) && str("server_name", &r.server_name) && port != doc.end() &&
              port->is_number_unsigned() && port->get<uint64_t>() > 0 &&
              port->get<uint64_t>() <= 65535;
    if (!ok) {
        set_why(why, "relay sent an incomplete enrollment reply");
        return error(errc::protocol_error, "incomplete enrollment reply");
    }
    r.tunnel_port = static_cast<uint16_t>(port->get<uint64_t>());
    if (!read_relays(doc, &r.relays)) {
        set_why(why, "relay sent an invalid relay list");
        return error(errc::protocol_error, "invalid relay list");
    }
    return r;
}

result<enroll_token> parse_token(std::string_view token) {
    if (token.substr(0, k_token_prefix.size()) != k_token_prefix) {
        return error(errc::invalid_argument, "token does not start with art1.");
    }
    std::string_view rest = token.substr(k_token_prefix.size());
    std::size_t a = rest.find('.');
    std::size_t b = a == std::string_view::npos ? a : rest.find('.', a + 1);
    if (b == std::string_view::npos) {
        return error(errc::invalid_argument, "token has fewer than four parts");
    }
    enroll_token t;
    t.id = rest.substr(0, a);
    t.secret = rest.substr(a + 1, b - a - 1);
    t.ca_fingerprint = rest.substr(b + 1);
    if (!is_lower_hex(t.id, k_id_hex) || !is_lower_hex(t.secret, k_secret_hex) ||
        !is_lower_hex(t.ca_fingerprint, k_fingerprint_hex)) {
        return error(errc::invalid_argument, "token parts are not lowercase hex of the right size");
    }
    return t;
}

namespace {

// After the reply line: what else the exchange reads (nothing, or a connector request's body).
using after_line = std::function<result<void>(const std::string& line, tls_io& io)>;

// One request and its reply line over TLS 1.3 to `addr`, bounded by deadline_ms. A pinned
// client (enrollment) names a pin mismatch as such.
result<std::string> exchange(const std::string& addr, const tls::client_options& co,
                             std::string_view request_line, uint32_t deadline_ms,
                             const after_line& after, std::string* why) {
    auto deadline = clock::now() + std::chrono::milliseconds(deadline_ms);
    auto ctx = tls::client_context::create(co, why);
    if (!ctx.ok()) {
        return ctx.err();
    }
    auto session = (*ctx)->new_session();
    if (!session) {
        set_why(why, "cannot create TLS session");
        return error(errc::no_memory, "cannot create TLS session");
    }
    auto fd = dial(addr, deadline, why);
    if (!fd.ok()) {
        return fd.err();
    }
    fd_guard guard(*fd);
    tls_io io(guard.get(), deadline, *session);
    if (auto h = io.handshake(); !h.ok()) {
        if (h.code() == errc::cert_rejected && !co.pinned_ca_fingerprint.empty()) {
            set_why(why, std::string(k_pin_mismatch) + " (" + session->last_error() + ")");
        } else if (h.code() == errc::tls_error || h.code() == errc::cert_rejected) {
            set_why(why, "TLS handshake with " + addr + " failed: " + session->last_error());
        } else {
            set_why(why, "TLS handshake with " + addr + " failed: " + std::string(h.err().detail));
        }
        return h.err();
    }
    if (auto w = io.write(request_line); !w.ok()) {
        set_why(why, "cannot send the request to " + addr + ": " + std::string(w.err().detail));
        return w.err();
    }
    auto line = io.read_line(k_max_reply_line);
    if (!line.ok()) {
        set_why(why, "no reply from " + addr + ": " + std::string(line.err().detail));
        return line.err();
    }
    if (after) {
        if (auto a = after(*line, io); !a.ok()) {
            return a.err();
        }
    }
    return line;
}

} // namespace

result<std::string> exchange_line(const std::string& relay, const std::string& ca_fingerprint,
                                  std::string_view request_line, uint32_t deadline_ms,
                                  std::string* why) {
    tls::client_options co;
    co.pinned_ca_fingerprint = ca_fingerprint;
    return exchange(relay, co, request_line, deadline_ms, nullptr, why);
}

result<uint64_t> parse_service_reply(const std::string& line, std::string* why) {
    auto doc = reply_envelope(line, "connector request", why);
    if (!doc.ok()) {
        return doc.err();
    }
    uint64_t length = 0;
    if (auto it = doc->find("length"); it != doc->end()) {
        if (!it->is_number_unsigned() || it->get<uint64_t>() > k_max_request_body) {
            set_why(why, "relay announced an invalid body length");
            return error(errc::protocol_error, "invalid body length");
        }
        length = it->get<uint64_t>();
    }
    return length;
}

result<std::string> connector_request(const state& st, std::string_view request_line,
                                      uint32_t deadline_ms, std::string* body, std::string* why) {
    if (st.enroll.empty()) {
        set_why(why, "the state directory does not name the relay's enrollment listener (relay.json "
                     "has no \"enroll\"; registered before it was recorded): pass --relay-enroll "
                     "HOST:PORT");
        return error(errc::invalid_argument, "no enrollment address");
    }
    tls::client_options co;
    co.ca_pem_path = st.ca_path;
    co.server_name = st.server_name;
    co.client_cert = {st.cert_path, st.key_path};
    if (body != nullptr) {
        body->clear();
    }
    auto read_body = [&](const std::string& line, tls_io& io) -> result<void> {
        auto length = parse_service_reply(line, why);
        if (!length.ok()) {
            return length.err();
        }
        if (*length == 0) {
            return {};
        }
        auto b = io.read_exact(*length);
        if (!b.ok()) {
            set_why(why, "body from " + st.enroll + " cut short: " + std::string(b.err().detail));
            return b.err();
        }
        if (body != nullptr) {
            *body = std::move(*b);
        }
        return {};
    };
    return exchange(st.enroll, co, request_line, deadline_ms, read_body, why);
}

result<registration> register_connector(const register_options& opts, std::string* why) {
    auto token = parse_token(opts.token);
    if (!token.ok()) {
        set_why(why, "malformed token: " + std::string(token.err().detail));
        return token.err();
    }
    std::string relay_host;
    std::string relay_port;
    if (!split_host_port(opts.relay, &relay_host, &relay_port)) {
        set_why(why, "relay address '" + opts.relay + "' is not HOST:PORT");
        return error(errc::invalid_argument, "bad relay address");
    }
    std::string name = opts.name.empty() ? default_name() : opts.name;
    auto made = tls::make_key_and_csr(name, why);
    if (!made.ok()) {
        return made.err();
    }
    nlohmann::json req = {{"token", opts.token},
                          {"csr_pem", made->csr_pem},
                          {"name", name},
                          {"version", opts.version}};
    std::string line = req.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    // "busy" is the relay's enrollment rate limit: it passes, so a few tries with a growing,
    // jittered pause make a burst of registrations (a fleet's worth of connectors) succeed.
    std::mt19937 rng(std::random_device{}());
    result<relay_reply> reply = error(errc::refused, "enrollment refused");
    for (int attempt = 0;; ++attempt) {
        auto reply_line =
            exchange_line(opts.relay, token->ca_fingerprint, line, opts.deadline_ms, why);
        if (!reply_line.ok()) {
            return reply_line.err();
        }
        reply = parse_reply(*reply_line, why);
        if (reply.ok() || why == nullptr || *why != "busy" || attempt == 5) {
            break;
        }
        std::uniform_int_distribution<int> d(100 << attempt, 200 << attempt);
        std::this_thread::sleep_for(std::chrono::milliseconds(d(rng)));
    }
    if (!reply.ok()) {
        return reply.err();
    }
    // The CA the connector will trust on the tunnel must be the one the token pinned.
    auto ca_fp = tls::fingerprint_of_cert_pem(reply->ca_pem, why);
    if (!ca_fp.ok() || *ca_fp != token->ca_fingerprint) {
        set_why(why, "relay returned a CA that does not match the token's CA fingerprint");
        return error(errc::cert_rejected, "returned CA does not match the pin");
    }
    if (auto d = make_private_dir(opts.state_dir, why); !d.ok()) {
        return d.err();
    }
    const std::string dir = opts.state_dir + "/";
    // The host as given (brackets restored for IPv6) with the relay's tunnel port.
    std::string host =
        relay_host.find(':') != std::string::npos ? "[" + relay_host + "]" : relay_host;
    nlohmann::json relay_json = {{"relay", host + ":" + std::to_string(reply->tunnel_port)},
                                 {"server_name", reply->server_name},
                                 {"enroll", opts.relay}};
    if (!reply->relays.empty()) {
        relay_json["relays"] = reply->relays; // a fleet: `run` attaches to two of them
    }
    for (auto [file, text] : {std::pair<const char*, std::string>{"key.pem", made->key_pem},
                              {"cert.pem", reply->cert_pem},
                              {"ca.pem", reply->ca_pem},
                              {"relay.json", relay_json.dump(2) + "\n"}}) {
        if (auto w = tls::write_pem_file(dir + file, text, true, why); !w.ok()) {
            return w.err();
        }
    }
    // Loading the identity the way `run` will proves the certificate belongs to our key.
    tls::client_options check;
    check.ca_pem_path = dir + "ca.pem";
    check.client_cert = {dir + "cert.pem", dir + "key.pem"};
    if (auto ctx = tls::client_context::create(check, why); !ctx.ok()) {
        return ctx.err();
    }
    return reply->reg;
}

result<state> load_state(const std::string& dir, std::string* why) {
    state st;
    st.key_path = dir + "/key.pem";
    st.cert_path = dir + "/cert.pem";
    st.ca_path = dir + "/ca.pem";
    std::string text;
    const std::string json_path = dir + "/relay.json";
    if (!read_small_file(json_path, k_max_relay_json, &text)) {
        set_why(why, "cannot read " + json_path + " (run `apprelay-connector register` first)");
        return error(errc::io_error, "cannot read relay.json");
    }
    auto doc = nlohmann::json::parse(text, nullptr, false);
    if (doc.is_discarded() || !doc.is_object() || !doc.contains("relay") ||
        !doc["relay"].is_string() || !doc.contains("server_name") ||
        !doc["server_name"].is_string()) {
        set_why(why, json_path + " needs string fields relay and server_name");
        return error(errc::invalid_argument, "invalid relay.json");
    }
    st.relay = doc["relay"].get<std::string>();
    st.server_name = doc["server_name"].get<std::string>();
    if (auto it = doc.find("enroll"); it != doc.end()) {
        if (!it->is_string() || it->get_ref<const std::string&>().find(':') == std::string::npos) {
            set_why(why, json_path + ": enroll must be a HOST:PORT string");
            return error(errc::invalid_argument, "invalid relay.json");
        }
        st.enroll = it->get<std::string>();
    }
    if (!read_relays(doc, &st.relays)) {
        set_why(why, json_path + ": relays must be an array of HOST:PORT strings");
        return error(errc::invalid_argument, "invalid relay.json");
    }
    std::string cert_pem;
    if (!read_small_file(st.cert_path, k_max_relay_json, &cert_pem)) {
        set_why(why, "cannot read " + st.cert_path);
        return error(errc::io_error, "cannot read cert.pem");
    }
    auto cn = tls::common_name_of_cert_pem(cert_pem, why);
    if (!cn.ok()) {
        return cn.err();
    }
    st.connector_id = *cn;
    return st;
}

} // namespace apprelay::connector
