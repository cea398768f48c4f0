#include "dataplane/connector/status_http.hh"

#include <arpa/inet.h>
#include <cstdio>
#include <cstring>
#include <curl/curl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <nlohmann/json.hpp>
#include <sys/socket.h>
#include <unistd.h>

namespace apprelay::connector {

struct status_http::impl {
    MHD_Daemon* daemon = nullptr;
    std::mutex mu;
    std::string metrics;
    std::string status = "{}";
};

namespace {

MHD_Result answer(void* cls, MHD_Connection* conn, const char* url, const char* method, const char*,
                  const char*, size_t*, void**) {
    auto* im = static_cast<status_http::impl*>(cls);
    std::string body;
    const char* type = "text/plain; version=0.0.4";
    unsigned code = MHD_HTTP_OK;
    if (std::strcmp(method, "GET") != 0) {
        code = MHD_HTTP_METHOD_NOT_ALLOWED;
        body = "only GET\n";
    } else if (std::strcmp(url, "/metrics") == 0) {
        std::lock_guard lock(im->mu);
        body = im->metrics;
    } else if (std::strcmp(url, "/status") == 0) {
        std::lock_guard lock(im->mu);
        body = im->status;
        type = "application/json";
    } else {
        code = MHD_HTTP_NOT_FOUND;
        body = "no such endpoint (GET /metrics, GET /status)\n";
    }
    MHD_Response* r =
        MHD_create_response_from_buffer(body.size(), body.data(), MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", type);
    MHD_Result rc = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return rc;
}

} // namespace

std::unique_ptr<status_http> status_http::start(const std::string& listen, std::string* why) {
    auto c = listen.rfind(':');
    if (c == std::string::npos) {
        *why = listen + ": not HOST:PORT";
        return nullptr;
    }
    std::string host = listen.substr(0, c);
    if (host.size() > 2 && host.front() == '[') {
        host = host.substr(1, host.size() - 2);
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    if (getaddrinfo(host.c_str(), listen.substr(c + 1).c_str(), &hints, &res) != 0) {
        *why = listen + ": not a numeric HOST:PORT";
        return nullptr;
    }
    int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || ::bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, 64) != 0) {
        *why = listen + ": cannot listen: " + std::strerror(errno);
        freeaddrinfo(res);
        if (fd >= 0) {
            ::close(fd);
        }
        return nullptr;
    }
    freeaddrinfo(res);
    sockaddr_storage bound{};
    socklen_t bl = sizeof bound;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bl);
    std::unique_ptr<status_http> s(new status_http());
    s->_impl = std::make_unique<impl>();
    s->_port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6&>(bound).sin6_port
                                                 : reinterpret_cast<sockaddr_in&>(bound).sin_port);
    s->_impl->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0,
                                        nullptr, nullptr, &answer, s->_impl.get(),
                                        MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_LIMIT,
                                        16u, MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    if (s->_impl->daemon == nullptr) {
        ::close(fd);
        *why = listen + ": cannot start the metrics server";
        return nullptr;
    }
    return s;
}

status_http::~status_http() {
    if (_impl && _impl->daemon != nullptr) {
        MHD_stop_daemon(_impl->daemon);
    }
}

void status_http::publish(std::string metrics_text, std::string status_json) {
    std::lock_guard lock(_impl->mu);
    _impl->metrics = std::move(metrics_text);
    _impl->status = std::move(status_json);
}

namespace {
size_t collect(char* p, size_t size, size_t n, void* out) {
    static_cast<std::string*>(out)->append(p, size * n);
    return size * n;
}
} // namespace

int print_status(const std::string& address, bool json) {
    CURL* curl = curl_easy_init();
    if (curl == nullptr) {
        std::fprintf(stderr, "error: cannot initialise libcurl\n");
        return 3;
    }
    std::string body;
    std::string url = "http://" + address + "/status";
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 5000L);
    CURLcode rc = curl_easy_perform(curl);
    long code = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(curl);
    if (rc != CURLE_OK || code != 200) {
        std::fprintf(stderr, "error: cannot reach the connector at %s: %s\n", address.c_str(),
                     rc != CURLE_OK ? curl_easy_strerror(rc) : "unexpected HTTP status");
        return 3;
    }
    if (json) {
        std::printf("%s\n", body.c_str());
        return 0;
    }
    auto j = nlohmann::json::parse(body, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
        std::fprintf(stderr, "error: malformed status from %s\n", address.c_str());
        return 3;
    }
    for (const char* k : {"id", "version", "relay", "tenant", "group", "tunnels_up",
                          "config_version", "latest_version"}) {
        std::string v = j.contains(k) ? (j[k].is_string() ? j[k].get<std::string>() : j[k].dump())
                                      : std::string("-");
        std::printf("%-16s %s\n", k, v.c_str());
    }
    return 0;
}

} // namespace apprelay::connector
