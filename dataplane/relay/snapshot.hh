#pragma once
// The relay's configuration as the workers see it: immutable once published. Built by the
// control thread from the store and read by workers without locks through an RCU cell
// (dataplane/core/rcu_cell.hh). Indices are only meaningful within one snapshot: anything a
// worker keeps across snapshots is keyed by connector fingerprint or app hostname.
#include "dataplane/base/version.hh"
#include "dataplane/tunnel/connector_config.hh"

#include <cstdint>
#include <functional>
#include <sys/socket.h>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace apprelay::relay {

struct tenant_entry {
    std::string name;
    std::string ca_path;        // verifies this tenant's connector certificates
    std::string ca_fingerprint; // user certificates for this tenant's apps chain to it
};

struct group_entry {
    uint32_t tenant = 0; // index into tenants
    std::string name;
    uint64_t id = 0; // the store's id: stable across renames, so a rename never drains
    std::string region;
    // Fleet: the other relays (indices into snapshot::peers) holding a tunnel of this group's
    // connectors, where a user of this relay is forwarded when this relay holds none.
    std::vector<uint32_t> peers;
};

// Another relay of the fleet, reached over mutual TLS on its tunnel listener (forwarding hop).
struct peer_relay {
    std::string node;
    sockaddr_storage addr{};
    socklen_t addr_len = 0;
};

struct connector_entry {
    uint32_t tenant = 0;
    uint32_t group = 0; // index into groups; same tenant by construction
    std::string id;
    std::string fingerprint; // SHA-256 of the certificate DER, lowercase hex
    std::string name;
    // CONFIG frame body for this connector (JSON: version, tenant, group, allowed backends),
    // encoded by the control thread; the worker only sends it.
    std::string config_body;
};

struct app_entry {
    uint32_t tenant = 0;
    uint32_t group = 0;
    std::string name;
    std::string hostname; // SNI
    std::string cert_path;
    std::string key_path;
    std::string backend; // host:port, opened by the connector
    uint16_t listen_port = 0;
    bool user_cert_required = false;              // access: user-cert (else passthrough)
    std::vector<std::string> allowed_user_groups; // subject OU values of the user certificate
    uint32_t idle_timeout_ms = 0; // the app's own idle-stream limit; 0 = limits.idle_timeout_ms
};

struct relay_limits {
    uint32_t max_frame = 16 * 1024;
    uint32_t initial_window = 4 * 1024 * 1024; // per stream, granted to connectors (tunnel mux)
    uint32_t max_streams_per_tunnel = 4096;
    uint32_t ping_interval_ms = 1000;
    uint32_t ping_timeout_ms = 3000; // no bytes from a connector for this long: tunnel dead
    uint32_t handshake_timeout_ms = 10'000;
    uint32_t drain_deadline_ms = 30'000;
    uint32_t config_refresh_ms = 120'000; // CONFIG re-sent to every tunnel this often
    uint32_t open_retries = 2; // an OPEN refused before any byte moved is retried this often
    // OPENs a tunnel may have unanswered (no OPEN_ACK/OPEN_FAIL yet); past it new streams go to
    // another tunnel of the group, or are refused (a stopped or malicious connector cannot
    // make users queue behind it).
    uint32_t max_pending_opens = 1024;
    // Tunnels one connector may hold on one relay worker (a connector normally holds one per
    // worker per loop); past it its HELLO is answered GOAWAY rate_limited. 0 = off.
    uint32_t max_tunnels_per_connector = 16;
    // Budgets per user source address (IPv4 /32, IPv6 /64), for the whole relay (each worker
    // enforces its share). Generous: many users share one address behind a NAT. Opens are user
    // connections accepted; aborts are resets mid-exchange and failed or abandoned handshakes.
    // A source past either budget has new connections closed at accept until it refills. 0 = off.
    uint32_t source_open_rate = 20'000;
    uint32_t source_open_burst = 40'000;
    uint32_t source_abort_rate = 2'000;
    uint32_t source_abort_burst = 4'000;
    // User connections open at once: on the whole relay (each worker takes its share; kept below
    // the fd limit: 0 in the settings = derived from it at start, control/relay_host.cc) and
    // from one source address. Past either, new connections are reset at accept, before any TLS
    // work; connections already open are untouched. source_max_connections 0 = off.
    uint32_t max_user_connections = 0;
    uint32_t source_max_connections = 10'000;
    // A stream on which no byte moved either way for this long is cut (RST both ways): idle
    // users and readers that stopped reading release their memory and descriptors.
    uint32_t idle_timeout_ms = 3'600'000;
    // Bytes one worker may hold on behalf of users: TLS output queued towards them plus their
    // input not yet carried to a tunnel or peer. Past it, new user connections are reset at
    // accept; streams already open keep their windows (a few slow readers cannot make the relay
    // grow without bound, and cannot starve the streams already flowing). 0 = off.
    uint64_t user_buffer_budget = uint64_t(1024) << 20;
    // Completion coalescing (io::uring_loop::set_coalescing): a worker that woke for one event
    // waits up to this long for more before working, so one pass (one tunnel send) serves many
    // streams. 0 = off. Read when a worker starts and on every snapshot. Off by default: with the
    // io_uring load generator, 50 us cost the relay more cpu per request than it saved
    // (bench/README.md, "Completion coalescing": 6 of 6 paired rr_64 runs, 11.2 vs 13.9 us);
    // it still cuts tunnel sends (less connector cpu) where that is the scarce side.
    uint32_t io_coalesce_us = 0;
};

// Hash for maps keyed by std::string that are searched with a string_view (no allocation).
struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
        return std::hash<std::string_view>{}(s);
    }
};

struct snapshot {
    uint64_t version = 1;
    std::vector<tenant_entry> tenants;
    std::vector<group_entry> groups;
    std::vector<connector_entry> connectors;
    std::vector<app_entry> apps;
    std::unordered_map<std::string, uint32_t> connector_by_fingerprint;
    // lowercase hostname -> app; search it with find_app (dataplane/relay/routing.hh)
    std::unordered_map<std::string, uint32_t, string_hash, std::equal_to<>> app_by_hostname;
    relay_limits limits;
    // The fleet's relays (etcd store), told to connectors in CONFIG; empty for a lone relay.
    std::vector<tunnel::fleet_relay_info> fleet;
    // Forwarding hop (etcd fleet): the peers groups point at, and the relay CA their
    // certificates chain to. A tunnel-listener client whose certificate verifies against this CA
    // is a peer relay forwarding a user stream, not a connector. Empty: no forwarding.
    std::vector<peer_relay> peers;
    std::string relay_ca_fingerprint;
    std::string latest_connector_version = "0.1.0";
    std::string min_connector_version = "0.1.0";
};

// Fills the derived tables of a snapshot whose tenants, groups, connectors and apps are set:
// connector_by_fingerprint, app_by_hostname (lowercase), and each connector's CONFIG body (its
// tenant, group and the backends of the group's apps). Control thread only.
void finalize(snapshot& s);

// ASCII lowercase: the key of app_by_hostname (SNI matching is case-insensitive, RFC 6066 s3).
constexpr char ascii_lower(char c) noexcept {
    return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c;
}
std::string lowercase_hostname(std::string_view host);

// dataplane/base/version.hh: -1, 0, 1 comparing dotted numeric versions.
using apprelay::compare_versions;

} // namespace apprelay::relay
