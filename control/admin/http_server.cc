#include "control/admin/http_server.hh"

#include "dataplane/base/log.hh"

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <exception>
#include <microhttpd.h>
#include <netinet/in.h>
#include <optional>
#include <poll.h>
#include <string_view>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <system_error>
#include <unistd.h>
#include <utility>

namespace apprelay::control {

namespace {

// Admin clients are people and scripts: a handful at a time. The cap keeps a misbehaving
// script from exhausting the control thread's file descriptors.
constexpr unsigned k_max_connections = 64;
constexpr int k_listen_backlog = 64;

std::string errno_text(int e) {
    // std::generic_category is thread-safe, unlike strerror().
    return std::error_code(e, std::generic_category()).message();
}

class unique_fd {
public:
    explicit unique_fd(int fd = -1) noexcept : _fd(fd) {}
    ~unique_fd() {
        if (_fd >= 0) {
            ::close(_fd);
        }
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    int get() const noexcept { return _fd; }
    void reset(int fd) noexcept {
        if (_fd >= 0) {
            ::close(_fd);
        }
        _fd = fd;
    }
    int release() noexcept { return std::exchange(_fd, -1); }

private:
    int _fd;
};

std::optional<int> hex_value(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return std::nullopt;
}

// RFC 3986 section 2.1 percent-decoding. Query strings (form encoding) also turn '+' into a
// space. A malformed escape or an encoded NUL (which would cut names short in C APIs) fails.
std::optional<std::string> percent_decode(std::string_view in, bool plus_is_space) {
    std::string out;
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
        char c = in[i];
        if (c == '%') {
            if (i + 2 >= in.size()) {
                return std::nullopt;
            }
            auto hi = hex_value(in[i + 1]);
            auto lo = hex_value(in[i + 2]);
            if (!hi || !lo || (*hi == 0 && *lo == 0)) {
                return std::nullopt;
            }
            out.push_back(static_cast<char>(*hi * 16 + *lo));
            i += 2;
        } else if (c == '+' && plus_is_space) {
            out.push_back(' ');
        } else {
            out.push_back(c);
        }
    }
    return out;
}

// Compares over the whole expected token whatever the candidate is, so the time taken reveals
// neither how long a matching prefix is nor where the first difference lies.
bool constant_time_equal(std::string_view expected, std::string_view given) {
    unsigned diff = expected.size() == given.size() ? 0u : 1u;
    for (std::size_t i = 0; i < expected.size(); ++i) {
        unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
        diff |= static_cast<unsigned char>(expected[i]) ^ g;
    }
    return diff == 0;
}

bool iequals_prefix(std::string_view s, std::string_view prefix) {
    if (s.size() < prefix.size()) {
        return false;
    }
    for (std::size_t i = 0; i < prefix.size(); ++i) {
        char a = s[i];
        char b = prefix[i];
        if (a >= 'A' && a <= 'Z') {
            a = static_cast<char>(a - 'A' + 'a');
        }
        if (b >= 'A' && b <= 'Z') {
            b = static_cast<char>(b - 'A' + 'a');
        }
        if (a != b) {
            return false;
        }
    }
    return true;
}

struct request_state {
    std::string body;
    bool too_large = false;
    bool answered = false; // a response was queued before the body (401, 413)
};

MHD_Result send_response(MHD_Connection* c, const http_response& r) {
    MHD_Response* resp = MHD_create_response_from_buffer(
        r.body.size(), const_cast<char*>(r.body.data()), MHD_RESPMEM_MUST_COPY);
    if (resp == nullptr) {
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r.content_type.c_str());
    for (const auto& [name, value] : r.headers) {
        MHD_add_response_header(resp, name.c_str(), value.c_str());
    }
    if (r.status == MHD_HTTP_UNAUTHORIZED) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    }
    MHD_Result ret = MHD_queue_response(c, static_cast<unsigned>(r.status), resp);
    MHD_destroy_response(resp);
    return ret;
}

MHD_Result send_error(MHD_Connection* c, int status, std::string_view message) {
    http_response r;
    r.status = status;
    // Messages here are literals without quotes or backslashes, so no JSON escaping is needed.
    r.body = "{\"error\":\"" + std::string(message) + "\"}";
    return send_response(c, r);
}

struct query_sink {
    std::vector<std::pair<std::string, std::string>>* pairs;
    bool ok = true;
};

MHD_Result collect_query(void* cls, MHD_ValueKind, const char* key, const char* value) {
    auto* sink = static_cast<query_sink*>(cls);
    auto k = percent_decode(key == nullptr ? "" : key, true);
    auto v = percent_decode(value == nullptr ? "" : value, true);
    if (!k || !v) {
        sink->ok = false;
        return MHD_NO;
    }
    sink->pairs->emplace_back(std::move(*k), std::move(*v));
    return MHD_YES;
}

// MHD would decode the path and the query with one routine; returning the raw text lets us
// decode paths and form-encoded queries differently and refuse malformed escapes.
size_t keep_raw(void*, MHD_Connection*, char* s) {
    return std::strlen(s);
}

void mhd_log(void*, const char* fmt, va_list ap) {
    char buf[512];
    int n = std::vsnprintf(buf, sizeof(buf), fmt, ap);
    if (n <= 0) {
        return;
    }
    std::string_view text(buf, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof(buf) - 1));
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) {
        text.remove_suffix(1);
    }
    log::warn("admin_http", {{"detail", text}});
}

void on_completed(void*, MHD_Connection*, void** con_cls, MHD_RequestTerminationCode) {
    delete static_cast<request_state*>(*con_cls);
    *con_cls = nullptr;
}

struct parsed_listen {
    sockaddr_storage addr{};
    socklen_t len = 0;
};

std::optional<parsed_listen> parse_loopback(const std::string& spec, std::string& why) {
    std::string host;
    std::string_view port_text;
    if (!spec.empty() && spec.front() == '[') {
        auto close = spec.find(']');
        if (close == std::string::npos || close + 1 >= spec.size() || spec[close + 1] != ':') {
            why = "expected [ADDRESS]:PORT";
            return std::nullopt;
        }
        host = spec.substr(1, close - 1);
        port_text = std::string_view(spec).substr(close + 2);
    } else {
        auto colon = spec.rfind(':');
        if (colon == std::string::npos) {
            why = "expected ADDRESS:PORT";
            return std::nullopt;
        }
        host = spec.substr(0, colon);
        port_text = std::string_view(spec).substr(colon + 1);
    }
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535) {
        why = "invalid port";
        return std::nullopt;
    }
    parsed_listen out;
    auto* v4 = reinterpret_cast<sockaddr_in*>(&out.addr);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&out.addr);
    if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(static_cast<uint16_t>(port));
        out.len = sizeof(sockaddr_in);
        // 127.0.0.0/8 (RFC 1122 section 3.2.1.3).
        if ((ntohl(v4->sin_addr.s_addr) >> 24) != 127) {
            why = "not a loopback address (the admin API is plain HTTP)";
            return std::nullopt;
        }
    } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(static_cast<uint16_t>(port));
        out.len = sizeof(sockaddr_in6);
        if (!IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr)) {
            why = "not a loopback address (the admin API is plain HTTP)";
            return std::nullopt;
        }
    } else {
        why = "not a numeric IP address";
        return std::nullopt;
    }
    return out;
}

} // namespace

struct http_server::impl {
    struct listener {
        impl* owner = nullptr;
        bool needs_token = false;
        MHD_Daemon* daemon = nullptr;
    };

    http_server_options opts;
    handler on_request;
    listener unix_listener;
    listener tcp_listener;
    uint16_t port = 0;
    // The socket file we bound: the destructor unlinks the path only while it is still ours,
    // so a stopping relay never removes the socket of the relay that replaced it.
    bool socket_bound = false;
    dev_t socket_dev = 0;
    ino_t socket_ino = 0;

    ~impl() {
        for (listener* l : {&unix_listener, &tcp_listener}) {
            if (l->daemon != nullptr) {
                MHD_stop_daemon(l->daemon); // also closes the listening socket
            }
        }
        struct stat st {};
        if (socket_bound && ::lstat(opts.socket_path.c_str(), &st) == 0 &&
            st.st_dev == socket_dev && st.st_ino == socket_ino) {
            ::unlink(opts.socket_path.c_str());
        }
    }

    std::string bind_unix(unique_fd& fd);
    std::string bind_tcp(unique_fd& fd);
    std::string start(listener& l, unique_fd& fd);

    static MHD_Result on_access(void* cls, MHD_Connection* c, const char* url, const char* method,
                                const char* version, const char* upload_data,
                                size_t* upload_data_size, void** con_cls);
    MHD_Result serve(MHD_Connection* c, const char* url, const char* method, std::string body);
};

std::string http_server::impl::bind_unix(unique_fd& fd) {
    const std::string& path = opts.socket_path;
    const std::string prefix = "admin socket " + path + ": ";
    if (path.empty()) {
        return "admin socket: no path configured";
    }
    sockaddr_un sun{};
    if (path.size() >= sizeof(sun.sun_path)) {
        return prefix + "path longer than " + std::to_string(sizeof(sun.sun_path) - 1) + " bytes";
    }
    sun.sun_family = AF_UNIX;
    std::memcpy(sun.sun_path, path.c_str(), path.size() + 1);
    auto* sa = reinterpret_cast<const sockaddr*>(&sun);

    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            return prefix + "exists and is not a socket";
        }
        // A socket file that still accepts belongs to a running relay: taking it over would
        // silently cut that relay's admin access.
        unique_fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (probe.get() >= 0 && ::connect(probe.get(), sa, sizeof(sun)) == 0) {
            return prefix + "another process is serving this socket";
        }
        if (::unlink(path.c_str()) != 0) {
            return prefix + errno_text(errno);
        }
    }
    fd.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (fd.get() < 0) {
        return prefix + errno_text(errno);
    }
    if (::bind(fd.get(), sa, sizeof(sun)) != 0) {
        return prefix + errno_text(errno);
    }
    // chmod before listen: until listen() nobody can connect, so there is no window in which
    // the socket is reachable with the umask's looser mode.
    if (::chmod(path.c_str(), 0600) != 0 || ::lstat(path.c_str(), &st) != 0) {
        int e = errno;
        ::unlink(path.c_str());
        return prefix + errno_text(e);
    }
    socket_bound = true;
    socket_dev = st.st_dev;
    socket_ino = st.st_ino;
    if (::listen(fd.get(), k_listen_backlog) != 0) {
        return prefix + errno_text(errno);
    }
    return {};
}

std::string http_server::impl::bind_tcp(unique_fd& fd) {
    const std::string prefix = "admin listen " + opts.tcp_listen + ": ";
    if (opts.tcp_token.empty()) {
        return prefix + "a bearer token is required for TCP";
    }
    std::string why;
    auto addr = parse_loopback(opts.tcp_listen, why);
    if (!addr) {
        return prefix + why;
    }
    fd.reset(::socket(addr->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (fd.get() < 0) {
        return prefix + errno_text(errno);
    }
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr->addr), addr->len) != 0 ||
        ::listen(fd.get(), k_listen_backlog) != 0) {
        return prefix + errno_text(errno);
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof(bound);
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
        return prefix + errno_text(errno);
    }
    port = bound.ss_family == AF_INET
               ? ntohs(reinterpret_cast<const sockaddr_in*>(&bound)->sin_port)
               : ntohs(reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port);
    return {};
}

std::string http_server::impl::start(listener& l, unique_fd& fd) {
    l.owner = this;
    // MHD_USE_EPOLL: one pollable fd per daemon, so poll() can wait on both listeners without
    // select()'s FD_SETSIZE limit (the relay holds thousands of sockets).
    l.daemon = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, nullptr, nullptr, &impl::on_access, &l,
        // The logger goes first so MHD routes every later message through it.
        MHD_OPTION_EXTERNAL_LOGGER, &mhd_log, nullptr, MHD_OPTION_LISTEN_SOCKET,
        static_cast<MHD_socket>(fd.get()), MHD_OPTION_NOTIFY_COMPLETED, &on_completed, nullptr,
        MHD_OPTION_UNESCAPE_CALLBACK, &keep_raw, nullptr, MHD_OPTION_CONNECTION_TIMEOUT,
        opts.idle_timeout_s, MHD_OPTION_CONNECTION_LIMIT, k_max_connections, MHD_OPTION_END);
    if (l.daemon == nullptr) {
        return "cannot start the HTTP server";
    }
    fd.release(); // MHD owns it now and closes it in MHD_stop_daemon
    return {};
}

MHD_Result http_server::impl::on_access(void* cls, MHD_Connection* c, const char* url,
                                        const char* method, const char*, const char* upload_data,
                                        size_t* upload_data_size, void** con_cls) {
    auto* l = static_cast<listener*>(cls);
    impl& self = *l->owner;
    auto* st = static_cast<request_state*>(*con_cls);
    if (st == nullptr) {
        // First call: headers only. Refuse here, before MHD reads any body.
        st = new request_state;
        *con_cls = st;
        // The URL is raw (keep_raw) and without the query, so "/" matches "/" and "/?x=1" only.
        const bool open_path =
            std::string_view(method) == MHD_HTTP_METHOD_GET &&
            std::find(self.opts.open_get_paths.begin(), self.opts.open_get_paths.end(), url) !=
                self.opts.open_get_paths.end();
        if (l->needs_token && !open_path) {
            const char* auth =
                MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
            std::string_view a = auth == nullptr ? std::string_view{} : std::string_view(auth);
            // The auth scheme is case-insensitive (RFC 7235 section 2.1).
            bool ok = iequals_prefix(a, "Bearer ") &&
                      constant_time_equal(self.opts.tcp_token, a.substr(7));
            if (!ok) {
                st->answered = true;
                return send_error(c, MHD_HTTP_UNAUTHORIZED, "missing or invalid bearer token");
            }
        }
        const char* cl =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl != nullptr) {
            std::string_view v(cl);
            unsigned long long n = 0;
            auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
            if (ec == std::errc::result_out_of_range ||
                (ec == std::errc() && n > self.opts.max_body)) {
                st->answered = true;
                return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "request body too large");
            }
        }
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        // Chunked bodies have no Content-Length: count as they come, drop the excess.
        if (!st->answered && !st->too_large) {
            if (st->body.size() + *upload_data_size > self.opts.max_body) {
                st->too_large = true;
                std::string().swap(st->body);
            } else {
                st->body.append(upload_data, *upload_data_size);
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (st->answered) {
        return MHD_YES;
    }
    if (st->too_large) {
        st->answered = true;
        return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "request body too large");
    }
    st->answered = true;
    return self.serve(c, url, method, std::move(st->body));
}

MHD_Result http_server::impl::serve(MHD_Connection* c, const char* url, const char* method,
                                    std::string body) {
    http_request req;
    req.method = method;
    auto path = percent_decode(url, false);
    if (!path) {
        return send_error(c, MHD_HTTP_BAD_REQUEST, "malformed percent-encoding in the path");
    }
    req.path = std::move(*path);
    query_sink sink{&req.query};
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, &collect_query, &sink);
    if (!sink.ok) {
        return send_error(c, MHD_HTTP_BAD_REQUEST, "malformed percent-encoding in the query");
    }
    req.body = std::move(body);
    try {
        return send_response(c, on_request(req));
    } catch (const std::exception& e) {
        // The handler runs inside a C callback: nothing may unwind through libmicrohttpd.
        log::error("admin_handler_failed",
                   {{"method", req.method}, {"path", req.path}, {"what", e.what()}});
        return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal error");
    }
}

http_server_or_error http_server::create(const http_server_options& opts, handler h) {
    if (MHD_is_feature_supported(MHD_FEATURE_EPOLL) != MHD_YES) {
        return {nullptr, "admin API: libmicrohttpd was built without epoll"};
    }
    auto i = std::make_unique<impl>();
    i->opts = opts;
    i->on_request = std::move(h);
    {
        unique_fd fd;
        if (auto e = i->bind_unix(fd); !e.empty()) {
            return {nullptr, e};
        }
        if (auto e = i->start(i->unix_listener, fd); !e.empty()) {
            return {nullptr, "admin socket " + opts.socket_path + ": " + e};
        }
    }
    if (!opts.tcp_listen.empty()) {
        unique_fd fd;
        i->tcp_listener.needs_token = true;
        if (auto e = i->bind_tcp(fd); !e.empty()) {
            return {nullptr, e};
        }
        if (auto e = i->start(i->tcp_listener, fd); !e.empty()) {
            return {nullptr, "admin listen " + opts.tcp_listen + ": " + e};
        }
    }
    log::info("admin_listening", {{"socket", opts.socket_path}, {"tcp_port", unsigned(i->port)}});
    return {std::unique_ptr<http_server>(new http_server(std::move(i))), {}};
}

http_server::http_server(std::unique_ptr<impl> i) : _impl(std::move(i)) {}

http_server::~http_server() = default;

void http_server::poll(int timeout_ms) {
    pollfd fds[2];
    MHD_Daemon* daemons[2];
    nfds_t n = 0;
    int wait_ms = timeout_ms;
    for (auto* l : {&_impl->unix_listener, &_impl->tcp_listener}) {
        if (l->daemon == nullptr) {
            continue;
        }
        const MHD_DaemonInfo* info = MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_EPOLL_FD);
        fds[n] = pollfd{info->epoll_fd, POLLIN, 0};
        daemons[n] = l->daemon;
        ++n;
        // MHD's own deadline (idle connections, data it already buffered) bounds the wait.
        MHD_UNSIGNED_LONG_LONG mhd_ms = 0;
        if (MHD_get_timeout(l->daemon, &mhd_ms) == MHD_YES &&
            (wait_ms < 0 || mhd_ms < static_cast<MHD_UNSIGNED_LONG_LONG>(wait_ms))) {
            wait_ms = static_cast<int>(std::min<MHD_UNSIGNED_LONG_LONG>(mhd_ms, INT_MAX));
        }
    }
    // EINTR or an error: fall through and let MHD look, the caller polls again.
    ::poll(fds, n, wait_ms);
    for (nfds_t k = 0; k < n; ++k) {
        MHD_run(daemons[k]);
    }
}

uint16_t http_server::tcp_port() const noexcept {
    return _impl->port;
}

const std::string& http_server::socket_path() const noexcept {
    return _impl->opts.socket_path;
}

} // namespace apprelay::control
