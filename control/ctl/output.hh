#pragma once
// apprelayctl's human output: aligned tables and one-line confirmations built from the admin
// API's JSON. Fields the relay leaves out print as "-" so a newer or older relay still renders.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace apprelay::ctl {

// What a command prints on success: stdout and (e.g. the token expiry) stderr. error set: the
// call succeeded but the command's own step after it failed (an unwritable --out file).
struct rendered {
    std::string out;
    std::string err;
    std::string error;
};

// Columns left-aligned, separated by two spaces, no trailing spaces; one line per row.
std::string render_table(const std::vector<std::string>& headers,
                         const std::vector<std::vector<std::string>>& rows);

// "12s ago", "5m ago", "3h ago", "4d ago"; "-" when then is 0 (never); "now" for the future.
std::string format_age(int64_t then_s, int64_t now_s);
// UTC "2024-05-01 12:00:00Z"; "-" for 0.
std::string format_time(int64_t unix_s);

std::string format_status(const nlohmann::json& j);
std::string format_tenants(const nlohmann::json& j);
std::string format_relays(const nlohmann::json& j);
std::string format_ca(const nlohmann::json& j);
std::string format_groups(const nlohmann::json& j);
std::string format_connectors(const nlohmann::json& j, int64_t now_s);
std::string format_apps(const nlohmann::json& j);
std::string format_tokens(const nlohmann::json& j);
// The token alone on stdout (scripts capture it), its id/group/expiry on stderr.
rendered format_token_created(const nlohmann::json& j);
// "<action> (config version N)" when the response carries config_version.
std::string format_confirmation(std::string_view action, const nlohmann::json& j);
// "deleted group G" plus the connectors that moved out of it.
std::string format_group_deleted(std::string_view name, const nlohmann::json& j);

// The string `field` of each object listed under `key` (a list response such as {"groups":
// [{"name": ...}]}), in order: objects without it, or with `state` set and another "state",
// left out. What `apprelayctl __names` prints for the completion script.
std::vector<std::string> listed_names(const nlohmann::json& j, std::string_view key,
                                      std::string_view field, std::string_view state);

// An error line for stderr: "error: <message>", or with json {"error": "<message>",
// "status": <HTTP status>} (status 0 when the relay did not answer or the error is local).
std::string format_error(std::string_view message, long status, bool json);

// The API's {"error": "..."} message, or "HTTP <status>" with the start of a non-JSON body.
std::string api_error_message(long status, std::string_view body);

} // namespace apprelay::ctl
