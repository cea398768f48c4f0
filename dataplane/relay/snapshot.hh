#pragma once
// The relay's configuration as the workers see it: immutable once published. Built by the
// control thread (today from the static config file, control/static_config.cc) and read by
// workers without locks.
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace apprelay::relay {

struct tenant_entry {
    std::string name;
    std::string ca_path; // verifies this tenant's connector certificates
};

struct group_entry {
    uint32_t tenant = 0; // index into tenants
    std::string name;
};

struct connector_entry {
    uint32_t tenant = 0;
    uint32_t group = 0; // index into groups; same tenant by construction
    std::string id;
    std::string fingerprint; // SHA-256 of the certificate DER, lowercase hex
};

struct app_entry {
    uint32_t tenant = 0;
    uint32_t group = 0;
    std::string name;
    std::string hostname; // SNI
    std::string cert_path;
    std::string key_path;
    std::string backend; // host:port, opened by the connector
};

struct relay_limits {
    uint32_t max_frame = 16 * 1024;
    uint32_t initial_window = 256 * 1024;
    uint32_t max_streams_per_tunnel = 4096;
    uint32_t ping_interval_ms = 1000;
    uint32_t ping_timeout_ms = 3000; // no bytes from a connector for this long: tunnel dead
    uint32_t handshake_timeout_ms = 10'000;
    uint32_t drain_deadline_ms = 30'000;
};

struct snapshot {
    uint64_t version = 1;
    std::vector<tenant_entry> tenants;
    std::vector<group_entry> groups;
    std::vector<connector_entry> connectors;
    std::vector<app_entry> apps;
    std::unordered_map<std::string, uint32_t> connector_by_fingerprint;
    relay_limits limits;
    std::string latest_connector_version = "0.1.0";
    std::string min_connector_version = "0.1.0";
};

} // namespace apprelay::relay
