#pragma once
// The store's rules that do not depend on where the objects live: name, hostname and backend
// checks, the token format, the app field rules and the certificates a store issues. SQLite and
// etcd apply the same rules through these, so the two stores refuse the same inputs the same way.
#include "control/store/store.hh"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace apprelay::control::rules {

using kind = store_error::kind;

inline constexpr int k_ca_days = 3650;
inline constexpr int k_leaf_days = 365;
// Random ids collide with probability ~n^2/2^65 at 8 bytes; a few retries make a clash a
// database problem rather than a refusal.
inline constexpr int k_id_attempts = 4;
inline constexpr std::size_t k_id_bytes = 8;      // 16 hex chars (API.md)
inline constexpr std::size_t k_secret_bytes = 16; // 32 hex chars, 128 bits (API.md)
inline constexpr std::size_t k_max_name = 64;
inline constexpr std::size_t k_max_version = 64;
inline constexpr std::size_t k_max_user_group = 256;


store_error err(kind k, std::string msg);
std::string quoted(std::string_view s);
std::string join(const std::vector<std::string>& v, std::string_view sep);
std::vector<std::string> split_lines(const std::string& s);
// API.md: names of tenants, groups and apps are 1-64 chars of [A-Za-z0-9._-].
bool valid_name(std::string_view s);
std::optional<store_error> check_name(std::string_view what, const std::string& s);
bool is_hex(std::string_view s, std::size_t n);
// RFC 1035 section 2.3.4 / RFC 1123 section 2.1.
bool valid_hostname(std::string_view s);
std::string lower(std::string s);
// "host:port" or "[v6]:port" with port 1-65535.
bool parse_backend(const std::string& s, std::string* host, uint16_t* port);
bool printable(std::string_view s);
token_state state_of(bool revoked, int64_t used_at, int64_t expires_at, int64_t now);

// The checks of a region name (create_group).
std::optional<store_error> check_region(const std::string& group, const std::string& region);

// An enrollment token split into its parts (art1.<id>.<secret>.<relay CA fp>, API.md), after the
// request's name and version are checked; the error is what the connector is told.
struct token_parts {
    std::string id;
    std::string secret;
};
store_result<token_parts> parse_enrollment(const std::string& token, const std::string& name,
                                           const std::string& version);

// Applies `f` to `a` (a fresh app with tenant, name and group Default on create) and checks every
// rule that concerns the app alone: hostname, port, backend, access and user groups, the
// cert/key pair. Uniqueness and the group's existence are the store's to check. Sets
// *reissue when the tenant CA must issue the certificate (create, or an issued certificate whose
// hostname changed).
std::optional<store_error> apply_app_fields(app& a, const app_fields& f, bool create,
                                            bool* reissue);
// The tenant CA issues the app's certificate (CN = app name, SAN = its hostname).
std::optional<store_error> issue_app_cert(app& a, const tls::pem_pair& tenant_ca);

// A tenant with a fresh CA.
store_result<tenant> make_tenant(const std::string& name, int64_t now);
// The relay's server certificate for `server_name` from the relay CA.
store_result<tls::pem_pair> issue_server_cert(const tls::pem_pair& relay_ca,
                                              const std::string& server_name);

} // namespace apprelay::control::rules
