#pragma once
// The control-plane objects (shared/DESIGN.md, "The objects") as plain values. The store owns
// them; the relay builds its data-plane snapshot from a store_view; the admin API renders them.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace apprelay::control {

// The group every tenant has; it cannot be deleted or renamed and receives new connectors.
inline constexpr std::string_view k_default_group = "Default";

enum class connector_status : uint8_t { active, inactive };
enum class access_mode : uint8_t { passthrough, user_cert };
enum class token_state : uint8_t { valid, used, expired, revoked };

std::string_view to_string(connector_status s) noexcept;
std::string_view to_string(access_mode a) noexcept;
std::string_view to_string(token_state s) noexcept;

// One per store: the relay CA (trusted by connectors through the token's fingerprint) and the
// server certificate it issued for the relay's server name.
struct relay_identity {
    std::string ca_cert_pem;
    std::string ca_key_pem;
    std::string ca_fingerprint; // SHA-256 of the CA's DER, 64 lowercase hex
    std::string server_name;
    std::string server_cert_pem;
    std::string server_key_pem;
};

struct tenant {
    std::string name;
    std::string ca_cert_pem;
    std::string ca_key_pem;
    std::string ca_fingerprint;
    int64_t created_at = 0;
};

struct group {
    std::string tenant;
    std::string name;
    std::string region; // empty = none
    int64_t id = 0;     // stable across renames (load() only): a rename is not a move
};

struct connector {
    std::string id; // 16 lowercase hex, random; the CN of its certificate
    std::string name;
    std::string tenant;
    std::string group;
    std::string version;
    std::string fingerprint; // SHA-256 of its certificate's DER
    std::string cert_pem;
    int64_t first_seen = 0;
    int64_t last_seen = 0;
    connector_status status = connector_status::inactive;
    std::vector<std::string> relays; // fleet nodes holding a tunnel for it (etcd store only)
};

struct app {
    std::string tenant;
    std::string name;
    std::string hostname;     // SNI name, unique across all tenants; empty = none
    uint16_t listen_port = 0; // unique across all tenants; 0 = none
    std::string backend_host;
    uint16_t backend_port = 0;
    std::string group;
    access_mode access = access_mode::passthrough;
    std::vector<std::string> allowed_user_groups; // non-empty iff access == user_cert
    std::string cert_pem;
    std::string key_pem;
    bool cert_issued = false; // issued by the tenant CA (re-issued when the hostname changes)
    uint32_t idle_timeout_ms = 0; // the app's own idle-stream limit; 0 = [limits] idle_timeout_ms
};

struct token_info {
    std::string id;
    std::string tenant;
    std::string group;
    int64_t created_at = 0;
    int64_t expires_at = 0;
    int64_t used_at = 0; // 0 = never used
    bool revoked = false;
    token_state state = token_state::valid; // as of the `now` given to the query
};

// A complete, consistent copy of the store (read in one transaction) for the relay's snapshot.
struct store_view {
    uint64_t config_version = 0;
    relay_identity relay;
    std::vector<tenant> tenants;
    std::vector<group> groups;
    std::vector<connector> connectors;
    std::vector<app> apps;
    std::vector<std::string> revoked_fingerprints;
    // The fleet's relays (etcd store; empty for SQLite): node, tunnel address, region, draining.
    struct relay_host {
        std::string node;
        std::string address;
        std::string region;
        bool draining = false;
    };
    std::vector<relay_host> relays;
    // Rows that could not be used (e.g. an app whose certificate no longer parses): skipped, and
    // each named here so the relay can log them; the rest of the view is complete.
    std::vector<std::string> warnings;
};

} // namespace apprelay::control
