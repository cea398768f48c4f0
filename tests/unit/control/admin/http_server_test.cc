// The admin HTTP transport over a real UNIX socket and loopback TCP, driven by the ctl client
// (libcurl) and, where curl would be too polite (chunked oversize bodies), by raw sockets.
#include "control/admin/http_server.hh"
#include "control/ctl/client.hh"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <gtest/gtest.h>
#include <mutex>
#include <stdexcept>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>

namespace apprelay::control {
namespace {

using ctl::admin_client;
using ctl::api_call;
using ctl::endpoint;

std::string temp_dir() {
    char tmpl[] = "/tmp/apprelay_admin_XXXXXX";
    const char* d = ::mkdtemp(tmpl);
    EXPECT_NE(d, nullptr);
    return d == nullptr ? std::string("/tmp") : std::string(d);
}

// A server polled on its own thread (the relay's control thread in production) with a stub
// handler that records what it saw and answers 201 with the method and path.
class served {
public:
    explicit served(http_server_options opts,
                    std::function<http_response(const http_request&)> handler = nullptr) {
        if (!handler) {
            handler = [this](const http_request& r) {
                std::lock_guard lock(_mu);
                _seen.push_back(r);
                return http_response{201, "application/json",
                                     "{\"method\":\"" + r.method + "\",\"path\":\"" + r.path +
                                         "\"}"};
            };
        }
        auto s = http_server::create(opts, std::move(handler));
        error = s.error;
        server = std::move(s.server);
        if (server) {
            _thread = std::thread([this] {
                while (!_stop.load()) {
                    server->poll(20);
                }
            });
        }
    }
    ~served() {
        _stop = true;
        if (_thread.joinable()) {
            _thread.join();
        }
    }
    std::vector<http_request> seen() {
        std::lock_guard lock(_mu);
        return _seen;
    }

    std::unique_ptr<http_server> server;
    std::string error;

private:
    std::mutex _mu;
    std::vector<http_request> _seen;
    std::atomic<bool> _stop{false};
    std::thread _thread;
};

endpoint unix_ep(const std::string& path) {
    endpoint ep;
    ep.socket_path = path;
    return ep;
}

endpoint tcp_ep(uint16_t port, std::string token) {
    endpoint ep;
    ep.url = "http://127.0.0.1:" + std::to_string(port);
    ep.token = std::move(token);
    return ep;
}

// Writes raw bytes to the UNIX socket and reads until the server closes (bounded by a receive
// timeout), returning the whole response.
std::string raw_exchange(const std::string& path, const std::string& bytes) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path.c_str());
    timeval tv{2, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0) {
        ::close(fd);
        return {};
    }
    std::size_t off = 0;
    while (off < bytes.size()) {
        ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
        if (n <= 0) {
            break; // the server may answer and close before reading everything
        }
        off += static_cast<std::size_t>(n);
    }
    std::string out;
    char buf[4096];
    for (int i = 0; i < 1000; ++i) {
        ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            break;
        }
        out.append(buf, static_cast<std::size_t>(n));
        if (out.find("\r\n\r\n") != std::string::npos && out.find("}") != std::string::npos) {
            break;
        }
    }
    ::close(fd);
    return out;
}

class admin_http : public ::testing::Test {
protected:
    void SetUp() override {
        dir = temp_dir();
        opts.socket_path = dir + "/admin.sock";
    }
    void TearDown() override {
        std::remove(opts.socket_path.c_str());
        ::rmdir(dir.c_str());
    }
    std::string dir;
    http_server_options opts;
};

TEST_F(admin_http, unix_socket_routes_method_decoded_path_query_and_body) {
    served s(opts);
    ASSERT_TRUE(s.server) << s.error;
    admin_client c(unix_ep(opts.socket_path));
    api_call call{"POST", "/v1/tenants/a%20b/groups%2Fx?force=1&q=a+b%26c&flag", R"({"k":1})"};
    auto x = c.send(call);
    ASSERT_TRUE(x.reply) << x.failure;
    EXPECT_EQ(x.reply->status, 201);
    EXPECT_EQ(x.reply->body, R"({"method":"POST","path":"/v1/tenants/a b/groups/x"})");
    auto seen = s.seen();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].method, "POST");
    EXPECT_EQ(seen[0].path, "/v1/tenants/a b/groups/x");
    ASSERT_EQ(seen[0].query.size(), 3u);
    EXPECT_EQ(seen[0].query[0], (std::pair<std::string, std::string>{"force", "1"}));
    EXPECT_EQ(seen[0].query[1], (std::pair<std::string, std::string>{"q", "a b&c"}));
    EXPECT_EQ(seen[0].query[2], (std::pair<std::string, std::string>{"flag", ""}));
    EXPECT_EQ(seen[0].body, R"({"k":1})");

    for (const char* method : {"GET", "PATCH", "DELETE"}) {
        auto y = c.send(api_call{method, "/v1/status", ""});
        ASSERT_TRUE(y.reply) << y.failure;
        EXPECT_EQ(y.reply->status, 201);
    }
    seen = s.seen();
    ASSERT_EQ(seen.size(), 4u);
    EXPECT_EQ(seen[2].method, "PATCH");
    EXPECT_EQ(seen[3].method, "DELETE");
    EXPECT_TRUE(seen[3].body.empty());
}

TEST_F(admin_http, socket_file_is_0600_and_removed_on_stop) {
    {
        served s(opts);
        ASSERT_TRUE(s.server) << s.error;
        struct stat st {};
        ASSERT_EQ(::stat(opts.socket_path.c_str(), &st), 0);
        EXPECT_TRUE(S_ISSOCK(st.st_mode));
        EXPECT_EQ(st.st_mode & 0777, 0600u);
    }
    struct stat st {};
    EXPECT_NE(::stat(opts.socket_path.c_str(), &st), 0);
}

TEST_F(admin_http, stale_socket_file_is_replaced_but_a_live_one_is_refused) {
    {
        int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un sun{};
        sun.sun_family = AF_UNIX;
        std::snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", opts.socket_path.c_str());
        ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)), 0);
        ::close(fd); // the file stays behind, nobody listens: stale
    }
    served first(opts);
    ASSERT_TRUE(first.server) << first.error;
    auto second = http_server::create(opts, [](const http_request&) { return http_response{}; });
    EXPECT_FALSE(second);
    EXPECT_EQ(second.error,
              "admin socket " + opts.socket_path + ": another process is serving this socket");
    // The refused server must not have unlinked the live one's socket.
    auto x = admin_client(unix_ep(opts.socket_path)).send(api_call{"GET", "/v1/status", ""});
    EXPECT_TRUE(x.reply) << x.failure;
}

TEST_F(admin_http, create_errors_name_the_socket_and_the_reason) {
    http_server_options bad = opts;
    bad.socket_path = dir + "/missing/admin.sock";
    auto h = [](const http_request&) { return http_response{}; };
    auto s = http_server::create(bad, h);
    EXPECT_FALSE(s);
    EXPECT_EQ(s.error, "admin socket " + bad.socket_path + ": No such file or directory");

    bad.socket_path = dir + "/regular";
    std::ofstream(bad.socket_path) << "x";
    s = http_server::create(bad, h);
    EXPECT_EQ(s.error, "admin socket " + bad.socket_path + ": exists and is not a socket");
    std::remove(bad.socket_path.c_str());

    bad = opts;
    bad.tcp_listen = "10.1.2.3:0";
    bad.tcp_token = "t";
    s = http_server::create(bad, h);
    EXPECT_EQ(s.error,
              "admin listen 10.1.2.3:0: not a loopback address (the admin API is plain HTTP)");

    bad.tcp_listen = "127.0.0.1:0";
    bad.tcp_token = "";
    s = http_server::create(bad, h);
    EXPECT_EQ(s.error, "admin listen 127.0.0.1:0: a bearer token is required for TCP");
}

TEST_F(admin_http, tcp_requires_the_bearer_token) {
    opts.tcp_listen = "127.0.0.1:0";
    opts.tcp_token = "s3cret-token";
    served s(opts);
    ASSERT_TRUE(s.server) << s.error;
    ASSERT_NE(s.server->tcp_port(), 0);
    const api_call call{"GET", "/v1/status", ""};

    for (const char* wrong : {"", "s3cret-tokeN", "s3cret-token-and-more", "s3cret"}) {
        auto x = admin_client(tcp_ep(s.server->tcp_port(), wrong)).send(call);
        ASSERT_TRUE(x.reply) << x.failure;
        EXPECT_EQ(x.reply->status, 401) << "token '" << wrong << "'";
        EXPECT_EQ(x.reply->body, R"({"error":"missing or invalid bearer token"})");
    }
    EXPECT_TRUE(s.seen().empty());

    auto ok = admin_client(tcp_ep(s.server->tcp_port(), "s3cret-token")).send(call);
    ASSERT_TRUE(ok.reply) << ok.failure;
    EXPECT_EQ(ok.reply->status, 201);
    ASSERT_EQ(s.seen().size(), 1u);

    // The UNIX socket (file permissions are its access control) needs no token.
    auto local = admin_client(unix_ep(opts.socket_path)).send(call);
    ASSERT_TRUE(local.reply) << local.failure;
    EXPECT_EQ(local.reply->status, 201);
}

TEST_F(admin_http, open_get_paths_skip_the_token_for_get_only) {
    opts.tcp_listen = "127.0.0.1:0";
    opts.tcp_token = "s3cret-token";
    opts.open_get_paths = {"/"};
    served s(opts);
    ASSERT_TRUE(s.server) << s.error;
    admin_client anonymous(tcp_ep(s.server->tcp_port(), ""));
    for (const char* path : {"/", "/?refresh=5"}) {
        auto page = anonymous.send(api_call{"GET", path, ""});
        ASSERT_TRUE(page.reply) << page.failure;
        EXPECT_EQ(page.reply->status, 201) << path;
    }
    // Only the exact path and only GET: the data stays behind the token.
    for (const api_call& c : {api_call{"POST", "/", ""}, api_call{"GET", "/v1/overview", ""},
                              api_call{"GET", "//", ""}, api_call{"GET", "/index.html", ""}}) {
        auto x = anonymous.send(c);
        ASSERT_TRUE(x.reply) << x.failure;
        EXPECT_EQ(x.reply->status, 401) << c.method << " " << c.path;
    }
    EXPECT_EQ(s.seen().size(), 2u);
}

TEST_F(admin_http, body_over_one_mebibyte_is_refused_with_413) {
    served s(opts);
    ASSERT_TRUE(s.server) << s.error;
    admin_client c(unix_ep(opts.socket_path));
    const std::size_t cap = std::size_t{1} << 20;

    auto at_cap = c.send(api_call{"POST", "/v1/x", std::string(cap, 'a')});
    ASSERT_TRUE(at_cap.reply) << at_cap.failure;
    EXPECT_EQ(at_cap.reply->status, 201);
    ASSERT_EQ(s.seen().size(), 1u);
    EXPECT_EQ(s.seen()[0].body.size(), cap);

    auto over = c.send(api_call{"POST", "/v1/x", std::string(cap + 1, 'a')});
    ASSERT_TRUE(over.reply) << over.failure;
    EXPECT_EQ(over.reply->status, 413);
    EXPECT_EQ(over.reply->body, R"({"error":"request body too large"})");
    EXPECT_EQ(s.seen().size(), 1u);
}

TEST_F(admin_http, chunked_body_over_the_cap_is_refused_with_413) {
    opts.max_body = 1000;
    served s(opts);
    ASSERT_TRUE(s.server) << s.error;
    // Two 600-byte chunks: no Content-Length, so the cap trips while the body streams in.
    std::string chunk(600, 'b');
    std::string req = "POST /v1/x HTTP/1.1\r\nHost: l\r\nTransfer-Encoding: chunked\r\n"
                      "Connection: close\r\n\r\n258\r\n" +
                      chunk + "\r\n258\r\n" + chunk + "\r\n0\r\n\r\n";
    std::string resp = raw_exchange(opts.socket_path, req);
    EXPECT_EQ(resp.rfind("HTTP/1.1 413", 0), 0u) << resp;
    EXPECT_TRUE(s.seen().empty());
}

TEST_F(admin_http, malformed_percent_encoding_is_a_400) {
    served s(opts);
    ASSERT_TRUE(s.server) << s.error;
    admin_client c(unix_ep(opts.socket_path));
    for (const char* path : {"/v1/tenants/%zz", "/v1/tenants/%4", "/v1/a%00b", "/v1/x?k=%g1"}) {
        auto x = c.send(api_call{"GET", path, ""});
        ASSERT_TRUE(x.reply) << x.failure;
        EXPECT_EQ(x.reply->status, 400) << path;
    }
    EXPECT_TRUE(s.seen().empty());
}

TEST_F(admin_http, handler_exception_becomes_500_and_server_keeps_serving) {
    int calls = 0;
    served s(opts, [&calls](const http_request&) -> http_response {
        if (++calls == 1) {
            throw std::runtime_error("boom");
        }
        return http_response{200, "text/plain; version=0.0.4", "ok"};
    });
    ASSERT_TRUE(s.server) << s.error;
    admin_client c(unix_ep(opts.socket_path));
    auto first = c.send(api_call{"GET", "/v1/status", ""});
    ASSERT_TRUE(first.reply) << first.failure;
    EXPECT_EQ(first.reply->status, 500);
    auto second = c.send(api_call{"GET", "/metrics", ""});
    ASSERT_TRUE(second.reply) << second.failure;
    EXPECT_EQ(second.reply->status, 200);
    EXPECT_EQ(second.reply->body, "ok");
}

TEST_F(admin_http, ctl_execute_maps_outcomes_to_exit_codes) {
    served s(opts, [](const http_request& r) {
        if (r.path == "/v1/tenants/default/groups/Default") {
            return http_response{422, "application/json",
                                 R"({"error":"group Default cannot be deleted"})"};
        }
        return http_response{200, "application/json", R"({"config_version":7})"};
    });
    ASSERT_TRUE(s.server) << s.error;
    admin_client c(unix_ep(opts.socket_path));
    auto render = ctl::json_renderer([](const nlohmann::json& j) {
        return ctl::rendered{ctl::format_confirmation("deleted group G", j), {}, {}};
    });

    std::string out;
    std::string err;
    EXPECT_EQ(
        ctl::execute(c, ctl::group_delete_call("default", "G", false), render, false, out, err),
        ctl::k_exit_ok);
    EXPECT_EQ(out, "deleted group G (config version 7)\n");
    EXPECT_EQ(err, "");

    out.clear();
    EXPECT_EQ(
        ctl::execute(c, ctl::group_delete_call("default", "G", false), render, true, out, err),
        ctl::k_exit_ok);
    EXPECT_EQ(out, "{\"config_version\":7}\n");

    out.clear();
    EXPECT_EQ(ctl::execute(c, ctl::group_delete_call("default", "Default", false), render, false,
                           out, err),
              ctl::k_exit_refused);
    EXPECT_EQ(out, "");
    EXPECT_EQ(err, "error: group Default cannot be deleted\n");

    // --json: the error as JSON on err, nothing on out, the same exit code.
    err.clear();
    EXPECT_EQ(ctl::execute(c, ctl::group_delete_call("default", "Default", false), render, true,
                           out, err),
              ctl::k_exit_refused);
    EXPECT_EQ(out, "");
    EXPECT_EQ(err, "{\"error\":\"group Default cannot be deleted\",\"status\":422}\n");

    err.clear();
    admin_client nowhere(unix_ep(dir + "/nope.sock"));
    EXPECT_EQ(ctl::execute(nowhere, ctl::status_call(), render, false, out, err),
              ctl::k_exit_unreachable);
    EXPECT_EQ(err, "error: cannot reach the relay at " + dir +
                       "/nope.sock: No such file or directory\n");
}

} // namespace
} // namespace apprelay::control
