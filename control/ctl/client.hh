#pragma once
// apprelayctl's requests: how each command maps onto the admin API (control/API.md), the
// HTTP client (libcurl over the UNIX socket or loopback TCP), and the exit-code policy.
#include "control/ctl/output.hh"

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace apprelay::ctl {

// Exit codes scripts rely on, the same for every command (README.md, the man page).
enum exit_code : int {
    k_exit_ok = 0,
    k_exit_refused = 1,     // the relay refused the request: 4xx (invalid, not found, conflict)
    k_exit_usage = 2,       // bad arguments, unreadable input or unwritable output file
    k_exit_unreachable = 3, // no answer from the relay: socket, TCP, timeout
    k_exit_server = 4,      // the relay failed: 5xx (store unavailable), or a 2xx it garbled
};

struct exit_code_doc {
    int code;
    std::string_view meaning;
};
// The man page's EXIT STATUS, from the same place as the codes.
inline constexpr std::array<exit_code_doc, 5> k_exit_code_docs = {{
    {k_exit_ok, "success"},
    {k_exit_refused, "the relay refused the request (HTTP 4xx: invalid, not found, conflict)"},
    {k_exit_usage, "usage error: bad or missing arguments, an unreadable input or unwritable "
                   "output file"},
    {k_exit_unreachable, "the relay could not be reached (socket, TCP, timeout)"},
    {k_exit_server, "the relay failed to serve the request (HTTP 5xx, e.g. store unavailable)"},
}};

// 2xx -> k_exit_ok, 5xx -> k_exit_server, any other status -> k_exit_refused.
int exit_code_for_status(long status);

inline constexpr std::string_view k_default_socket = "/run/apprelay/admin.sock";
inline constexpr std::string_view k_default_tenant = "default";

// One admin API call. body empty = no request body.
struct api_call {
    std::string method;
    std::string path;
    std::string body;
};

// Percent-encodes everything but RFC 3986 unreserved characters, so a name can never add a
// path segment or a query.
std::string percent_encode(std::string_view s);

api_call status_call();
api_call metrics_call();
api_call tenants_list_call();
api_call relays_list_call();
api_call relay_drain_call(std::string_view node);
api_call tenant_ca_call(std::string_view tenant);
api_call groups_list_call(std::string_view tenant);
api_call group_create_call(std::string_view tenant, std::string_view name,
                           const std::optional<std::string>& region);
api_call group_rename_call(std::string_view tenant, std::string_view old_name,
                           std::string_view new_name);
api_call group_delete_call(std::string_view tenant, std::string_view name, bool force);
api_call connectors_list_call(std::string_view tenant);
api_call connector_move_call(std::string_view tenant, std::string_view id, std::string_view group);
api_call connector_delete_call(std::string_view tenant, std::string_view id);

// Fields of apps create/update; unset ones are left out of the body (update changes only what
// is given).
struct app_fields {
    std::optional<std::string> hostname;
    std::optional<uint16_t> listen_port;
    std::optional<std::string> backend;
    std::optional<std::string> group;
    std::optional<std::string> access;
    std::vector<std::string> allowed_user_groups; // sent when non-empty
    std::optional<std::string> cert_pem;
    std::optional<std::string> key_pem;
    std::optional<int64_t> idle_timeout_ms; // 0 = the relay's [limits] idle_timeout_ms
};
api_call apps_list_call(std::string_view tenant);
api_call app_create_call(std::string_view tenant, std::string_view name, const app_fields& f);
api_call app_update_call(std::string_view tenant, std::string_view name, const app_fields& f);
api_call app_assign_call(std::string_view tenant, std::string_view name, std::string_view group);
api_call app_delete_call(std::string_view tenant, std::string_view name);
api_call tokens_list_call(std::string_view tenant);
api_call token_create_call(std::string_view tenant, const std::optional<std::string>& group,
                           std::optional<uint64_t> ttl_s);
api_call token_revoke_call(std::string_view tenant, std::string_view id);
api_call user_issue_call(std::string_view tenant, std::string_view name,
                         const std::vector<std::string>& groups, std::optional<uint64_t> days);

// Where the relay's admin API is: a UNIX socket, or a loopback URL with a bearer token.
struct endpoint {
    std::string socket_path;
    std::string url; // "http://127.0.0.1:PORT"; set = TCP
    std::string token;

    // "/run/apprelay/admin.sock" or the URL, for messages.
    std::string where() const { return url.empty() ? socket_path : url; }
};

struct http_reply {
    long status = 0;
    std::string body;
};

// Outcome of one HTTP exchange: a reply, or why the relay could not be reached.
struct exchange {
    std::optional<http_reply> reply;
    std::string failure;
};

class admin_client {
public:
    explicit admin_client(endpoint ep) : _ep(std::move(ep)) {}
    exchange send(const api_call& call) const;
    const endpoint& target() const noexcept { return _ep; }

private:
    endpoint _ep;
};

using renderer = std::function<rendered(const std::string& body)>;
// A renderer for JSON responses (every endpoint but /metrics).
renderer json_renderer(std::function<rendered(const nlohmann::json&)> f);

// Sends the call and applies the exit-code policy: API errors print `error: <API message>`
// (exit 1 for 4xx, 4 for 5xx), an unreachable relay `error: cannot reach the relay at <where>:
// <why>` (exit 3). With json_output errors are format_error's JSON on err, and a success
// prints json_render's output, or without one the response body as returned (checked to be
// JSON).
int execute(const admin_client& client, const api_call& call, const renderer& render,
            bool json_output, std::string& out, std::string& err, const renderer& json_render = {});

// The endpoint from --socket/--url/--token and the environment (APPRELAY_ADMIN_SOCKET,
// APPRELAY_ADMIN_TOKEN). Returns a usage error message, empty when out is usable.
std::string resolve_endpoint(const std::string& socket_opt, const std::string& url_opt,
                             const std::string& token_opt, endpoint& out);

// Reads a whole (PEM) file for --cert/--key; nullopt with why set on failure.
std::optional<std::string> read_text_file(const std::string& path, std::string& why);

} // namespace apprelay::ctl
