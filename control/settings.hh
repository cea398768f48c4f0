#pragma once
// The relay's configuration file (TOML): how this relay host runs — listeners, state directory,
// admin API, connector versions, limits. The objects (tenants, groups, connectors, apps, tokens)
// live in the store (control/store/) and are managed with apprelayctl, never in this file.
// Start-up code: errors are messages naming the key ("limits.max_frame: 70000 outside ...").
#include "dataplane/relay/snapshot.hh"
#include "tls/context.hh"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace apprelay::control {

// [dpdk]: the kernel-bypass data path (used when [relay] io = "dpdk"). The user and tunnel
// listeners move onto the DPDK port (their HOST must be 0.0.0.0 or `address`); enrollment and
// the admin API stay on kernel sockets (the management network).
struct dpdk_settings {
    std::string lcores;            // EAL -l; empty: the control cpu plus the core map's workers
    std::vector<std::string> allow; // EAL -a: PCI addresses of ports to use
    std::vector<std::string> vdev;  // EAL --vdev: virtual ports (net_tap0,iface=..., net_af_packet0,iface=...)
    std::string file_prefix = "apprelay"; // EAL --file-prefix: one per DPDK process on a host
    bool no_huge = false;          // EAL --no-huge (needs memory_mb): machines without hugepages
    uint32_t memory_mb = 0;        // EAL -m
    bool no_pci = false;           // EAL --no-pci: virtual ports only
    std::string port;              // ethdev name or PCI address; empty: the first port
    std::string address;           // the relay's IPv4 on the port, A.B.C.D/prefix
    std::string gateway;           // next hop for off-link peers (empty: on-link only)
    uint32_t mtu = 1500;
    // Loss mode (tests, demonstrations): drop every Nth frame each way on each queue; 0 = off.
    uint32_t loss_every = 0;
    uint32_t ipv4 = 0;             // parsed from address (host order)
    uint8_t prefix_len = 0;
    uint32_t gateway_ipv4 = 0;
};

// "A.B.C.D" -> host-order address; false if it is not a dotted quad.
bool parse_ipv4(const std::string& text, uint32_t* out);

// [store]: where the control-plane objects live. "sqlite" (one host, <state_dir>/apprelay.db)
// or "etcd" (a fleet of relays sharing one prefix, control/store/etcd).
struct store_settings {
    std::string kind = "sqlite";
    std::vector<std::string> endpoints; // etcd members, host:port
    std::string prefix = "/apprelay/";
    std::string ca_file;   // TLS to etcd: CA of the members' certificates (empty: plaintext)
    std::string cert_file; // client certificate and key for etcd (optional)
    std::string key_file;
    uint32_t timeout_ms = 2000; // every etcd call; past it an admin write is a 503
};

// [fleet]: this relay's presence among the fleet's relays (etcd store only).
struct fleet_settings {
    std::string node;      // unique name in the fleet; default: server_name + tunnel port
    std::string region;    // groups of this region prefer this relay
    std::string address;   // host:port connectors and peer relays reach its tunnel listener
    uint32_t lease_ttl_s = 10;
};

struct relay_settings {
    std::string user_listen = "127.0.0.1:8443";
    std::string tunnel_listen = "127.0.0.1:8444";
    std::string enroll_listen = "127.0.0.1:8445";
    std::string state_dir = "/var/lib/apprelay"; // apprelay.db, rendered PEMs
    std::string server_name = "apprelay-relay";  // SAN of the relay's server certificate
    std::string core_map;                        // empty: control=0 + a worker per other cpu
    std::string io = "uring"; // data-plane I/O backend: "uring" (kernel sockets) or "dpdk"
    dpdk_settings dpdk;

    std::string admin_socket; // default <state_dir>/admin.sock
    std::string admin_listen; // optional loopback TCP HOST:PORT (bearer token required)
    std::string admin_token;

    std::string min_connector_version = APPRELAY_VERSION;
    std::string latest_connector_version = APPRELAY_VERSION;
    int64_t inactive_purge_s = 10 * 24 * 3600; // inactive connectors are removed after this
    // A signed connector update package (dataplane/connector/UPDATE.md) the relay serves to its
    // connectors on the enrollment listener; empty: none. Its manifest's version is the latest
    // version advertised (latest_version, when set, must be the same).
    std::string update_package;
    bool latest_version_set = false; // [connectors] latest_version was given
    // Update turns: how long one connector of a group may take to update before its turn ends
    // (or, if it is down by then, is reported stuck).
    uint32_t update_lease_s = 600;
    uint32_t store_poll_ms = 1000; // changes made by another process/thread are picked up

    relay::relay_limits limits;
    store_settings store;
    fleet_settings fleet;

    // [tls]: suites and groups of each listener, session tickets for users. TLS 1.3 only.
    tls::tls_policy user_tls;
    tls::tls_policy tunnel_tls;
    bool user_session_tickets = false;
    uint32_t ticket_key_rotation_s = 3600;
    // Created by load_settings when user_session_tickets is on; every snapshot's user context
    // shares it, so tickets outlive configuration changes.
    std::shared_ptr<tls::ticket_keys> user_ticket_keys;
    // Fleet (etcd store): this relay's client context towards its peers (forwarding hop), made
    // by the relay at start from the relay CA; null: no forwarding.
    std::shared_ptr<tls::client_context> peer_client_tls;
};

bool load_settings(const std::string& path, relay_settings* out, std::string* why);
// The same from TOML text already in memory: `path` only names the file in messages and is the
// base of relative paths (state_dir, admin.socket, store.*_file); nothing is read or written.
bool parse_settings(std::string_view text, const std::string& path, relay_settings* out,
                    std::string* why);

} // namespace apprelay::control
