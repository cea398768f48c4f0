#include "control/ctl/client.hh"

#include <cerrno>
#include <cstdlib>
#include <curl/curl.h>
#include <fmt/format.h>
#include <fstream>
#include <memory>
#include <sstream>
#include <sys/stat.h>
#include <system_error>
#include <unistd.h>

namespace apprelay::ctl {

using nlohmann::json;

namespace {

// The relay answers from its control thread; a slow answer means it is busy, not gone, but a
// script must not hang forever either.
constexpr long k_connect_timeout_ms = 5000;
constexpr long k_total_timeout_ms = 60000;

std::string tenant_base(std::string_view tenant) {
    return "/v1/tenants/" + percent_encode(tenant);
}

api_call call(std::string method, std::string path, const json& body = json()) {
    return api_call{std::move(method), std::move(path), body.is_null() ? "" : body.dump()};
}

json app_body(const app_fields& f) {
    json b = json::object();
    if (f.hostname) {
        b["hostname"] = *f.hostname;
    }
    if (f.listen_port) {
        b["listen_port"] = *f.listen_port;
    }
    if (f.backend) {
        b["backend"] = *f.backend;
    }
    if (f.group) {
        b["group"] = *f.group;
    }
    if (f.access) {
        b["access"] = *f.access;
    }
    if (!f.allowed_user_groups.empty()) {
        b["allowed_user_groups"] = f.allowed_user_groups;
    }
    if (f.cert_pem) {
        b["cert_pem"] = *f.cert_pem;
    }
    if (f.key_pem) {
        b["key_pem"] = *f.key_pem;
    }
    if (f.idle_timeout_ms) {
        b["idle_timeout_ms"] = *f.idle_timeout_ms;
    }
    return b;
}

size_t append_body(char* data, size_t size, size_t n, void* user) {
    static_cast<std::string*>(user)->append(data, size * n);
    return size * n;
}

// A precise reason for a socket curl cannot use ("No such file or directory", "Permission
// denied"): curl itself only says it could not connect.
std::string socket_problem(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        return std::error_code(errno, std::generic_category()).message();
    }
    if (!S_ISSOCK(st.st_mode)) {
        return "not a socket";
    }
    if (::access(path.c_str(), W_OK) != 0) {
        return std::error_code(errno, std::generic_category()).message();
    }
    return {};
}

struct curl_deleter {
    void operator()(CURL* h) const { curl_easy_cleanup(h); }
};
struct slist_deleter {
    void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

} // namespace

std::string percent_encode(std::string_view s) {
    static constexpr char k_hex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(s.size());
    for (char ch : s) {
        auto c = static_cast<unsigned char>(ch);
        bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                          (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
        if (unreserved) {
            out.push_back(ch);
        } else {
            out.push_back('%');
            out.push_back(k_hex[c >> 4]);
            out.push_back(k_hex[c & 0xF]);
        }
    }
    return out;
}

api_call status_call() {
    return call("GET", "/v1/status");
}
api_call metrics_call() {
    return call("GET", "/metrics");
}
api_call relays_list_call() {
    return call("GET", "/v1/relays");
}
api_call relay_drain_call(std::string_view node) {
    return call("POST", "/v1/relays/" + percent_encode(node) + "/drain");
}
api_call tenants_list_call() {
    return call("GET", "/v1/tenants");
}
api_call tenant_ca_call(std::string_view tenant) {
    return call("GET", tenant_base(tenant) + "/ca");
}
api_call groups_list_call(std::string_view tenant) {
    return call("GET", tenant_base(tenant) + "/groups");
}
api_call group_create_call(std::string_view tenant, std::string_view name,
                           const std::optional<std::string>& region) {
    json b = {{"name", name}};
    if (region) {
        b["region"] = *region;
    }
    return call("POST", tenant_base(tenant) + "/groups", b);
}
api_call group_rename_call(std::string_view tenant, std::string_view old_name,
                           std::string_view new_name) {
    return call("PATCH", tenant_base(tenant) + "/groups/" + percent_encode(old_name),
                json{{"name", new_name}});
}
api_call group_delete_call(std::string_view tenant, std::string_view name, bool force) {
    return call("DELETE", tenant_base(tenant) + "/groups/" + percent_encode(name) +
                              (force ? "?force=1" : ""));
}
api_call connectors_list_call(std::string_view tenant) {
    return call("GET", tenant_base(tenant) + "/connectors");
}
api_call connector_move_call(std::string_view tenant, std::string_view id, std::string_view group) {
    return call("PATCH", tenant_base(tenant) + "/connectors/" + percent_encode(id),
                json{{"group", group}});
}
api_call connector_delete_call(std::string_view tenant, std::string_view id) {
    return call("DELETE", tenant_base(tenant) + "/connectors/" + percent_encode(id));
}
api_call apps_list_call(std::string_view tenant) {
    return call("GET", tenant_base(tenant) + "/apps");
}
api_call app_create_call(std::string_view tenant, std::string_view name, const app_fields& f) {
    json b = app_body(f);
    b["name"] = name;
    return call("POST", tenant_base(tenant) + "/apps", b);
}
api_call app_update_call(std::string_view tenant, std::string_view name, const app_fields& f) {
    return call("PATCH", tenant_base(tenant) + "/apps/" + percent_encode(name), app_body(f));
}
api_call app_assign_call(std::string_view tenant, std::string_view name, std::string_view group) {
    return call("PATCH", tenant_base(tenant) + "/apps/" + percent_encode(name),
                json{{"group", group}});
}
api_call app_delete_call(std::string_view tenant, std::string_view name) {
    return call("DELETE", tenant_base(tenant) + "/apps/" + percent_encode(name));
}
api_call tokens_list_call(std::string_view tenant) {
    return call("GET", tenant_base(tenant) + "/tokens");
}
api_call token_create_call(std::string_view tenant, const std::optional<std::string>& group,
                           std::optional<uint64_t> ttl_s) {
    json b = json::object();
    if (group) {
        b["group"] = *group;
    }
    if (ttl_s) {
        b["ttl_s"] = *ttl_s;
    }
    return call("POST", tenant_base(tenant) + "/tokens", b);
}
api_call token_revoke_call(std::string_view tenant, std::string_view id) {
    return call("DELETE", tenant_base(tenant) + "/tokens/" + percent_encode(id));
}

api_call user_issue_call(std::string_view tenant, std::string_view name,
                         const std::vector<std::string>& groups, std::optional<uint64_t> days) {
    json b = {{"name", name}, {"groups", groups}};
    if (days) {
        b["days"] = *days;
    }
    return call("POST", tenant_base(tenant) + "/users", b);
}

exchange admin_client::send(const api_call& c) const {
    exchange x;
    if (_ep.url.empty()) {
        if (auto why = socket_problem(_ep.socket_path); !why.empty()) {
            x.failure = why;
            return x;
        }
    }
    std::unique_ptr<CURL, curl_deleter> h(curl_easy_init());
    if (!h) {
        x.failure = "cannot initialise libcurl";
        return x;
    }
    std::string url = _ep.url.empty() ? "http://localhost" : _ep.url;
    while (!url.empty() && url.back() == '/') {
        url.pop_back();
    }
    url += c.path;
    // curl keeps sending "Expect: 100-continue" on larger bodies: the relay can then refuse
    // (401, 413) before the body travels, and curl reads that answer instead of failing with
    // a broken pipe.
    curl_slist* raw = nullptr;
    raw = curl_slist_append(raw, "Accept: application/json");
    if (!c.body.empty()) {
        raw = curl_slist_append(raw, "Content-Type: application/json");
    }
    std::string auth;
    if (!_ep.url.empty() && !_ep.token.empty()) {
        auth = "Authorization: Bearer " + _ep.token;
        raw = curl_slist_append(raw, auth.c_str());
    }
    std::unique_ptr<curl_slist, slist_deleter> headers(raw);
    http_reply reply;
    char errbuf[CURL_ERROR_SIZE] = {};
    CURL* e = h.get();
    if (_ep.url.empty()) {
        curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, _ep.socket_path.c_str());
    }
    curl_easy_setopt(e, CURLOPT_URL, url.c_str());
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, c.method.c_str());
    if (!c.body.empty()) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, c.body.c_str());
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(c.body.size()));
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers.get());
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &append_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &reply.body);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, k_connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, k_total_timeout_ms);
    CURLcode rc = curl_easy_perform(e);
    if (rc != CURLE_OK) {
        if (_ep.url.empty() && rc == CURLE_COULDNT_CONNECT) {
            // curl would name "localhost port 80"; the socket exists (socket_problem) but
            // nothing accepts on it.
            x.failure = "connection refused (is the relay running?)";
        } else {
            x.failure = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc);
        }
        return x;
    }
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &reply.status);
    x.reply = std::move(reply);
    return x;
}

renderer json_renderer(std::function<rendered(const json&)> f) {
    return [f = std::move(f)](const std::string& body) { return f(json::parse(body)); };
}

int exit_code_for_status(long status) {
    if (status >= 200 && status < 300) {
        return k_exit_ok;
    }
    if (status >= 500 && status < 600) {
        return k_exit_server;
    }
    return k_exit_refused;
}

int execute(const admin_client& client, const api_call& c, const renderer& render, bool json_output,
            std::string& out, std::string& err, const renderer& json_render) {
    exchange x = client.send(c);
    if (!x.reply) {
        err += format_error(
            fmt::format("cannot reach the relay at {}: {}", client.target().where(), x.failure), 0,
            json_output);
        return k_exit_unreachable;
    }
    const http_reply& r = *x.reply;
    if (int rc = exit_code_for_status(r.status); rc != k_exit_ok) {
        err += format_error(api_error_message(r.status, r.body), r.status, json_output);
        return rc;
    }
    try {
        rendered text;
        if (!json_output) {
            text = render(r.body);
        } else if (json_render) {
            text = json_render(r.body);
        } else {
            // As returned, but only if it is what the API promises.
            json parsed = json::parse(r.body);
            text.out = r.body;
            if (!text.out.empty() && text.out.back() != '\n') {
                text.out += '\n';
            }
        }
        if (!text.error.empty()) {
            err += format_error(text.error, 0, json_output);
            return k_exit_usage;
        }
        out += text.out;
        err += text.err;
    } catch (const json::exception& e) {
        err += format_error(
            fmt::format("unexpected response from the relay ({}): {}", c.path, e.what()), r.status,
            json_output);
        return k_exit_server;
    }
    return k_exit_ok;
}

std::string resolve_endpoint(const std::string& socket_opt, const std::string& url_opt,
                             const std::string& token_opt, endpoint& out) {
    out = endpoint{};
    if (!url_opt.empty()) {
        if (!url_opt.starts_with("http://")) {
            return "--url must be http://HOST:PORT (the admin API is plain HTTP on loopback)";
        }
        out.url = url_opt;
        out.token = token_opt;
        if (out.token.empty()) {
            const char* env = std::getenv("APPRELAY_ADMIN_TOKEN");
            out.token = env == nullptr ? "" : env;
        }
        if (out.token.empty()) {
            return "--url needs --token or APPRELAY_ADMIN_TOKEN";
        }
        return {};
    }
    out.socket_path = socket_opt;
    if (out.socket_path.empty()) {
        const char* env = std::getenv("APPRELAY_ADMIN_SOCKET");
        out.socket_path = env != nullptr && *env != '\0' ? env : std::string(k_default_socket);
    }
    return {};
}

std::optional<std::string> read_text_file(const std::string& path, std::string& why) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        why = fmt::format("cannot read {}: {}", path,
                          std::error_code(errno, std::generic_category()).message());
        return std::nullopt;
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

} // namespace apprelay::ctl
