#include "control/reload.hh"

#include <fmt/format.h>

namespace apprelay::control {
namespace {

// One [limits] key: where it lives in relay_limits and whether a snapshot carries it live.
struct limit_key {
    const char* name;
    uint32_t relay::relay_limits::*field;
    bool live;
};

constexpr limit_key k_limit_keys[] = {
    {"max_frame", &relay::relay_limits::max_frame, false},
    {"initial_window", &relay::relay_limits::initial_window, false},
    {"max_streams_per_tunnel", &relay::relay_limits::max_streams_per_tunnel, false},
    {"ping_interval_ms", &relay::relay_limits::ping_interval_ms, false},
    {"ping_timeout_ms", &relay::relay_limits::ping_timeout_ms, false},
    {"handshake_timeout_ms", &relay::relay_limits::handshake_timeout_ms, true},
    {"drain_deadline_ms", &relay::relay_limits::drain_deadline_ms, true},
    {"config_refresh_ms", &relay::relay_limits::config_refresh_ms, true},
    {"open_retries", &relay::relay_limits::open_retries, true},
    {"max_pending_opens", &relay::relay_limits::max_pending_opens, true},
    {"max_tunnels_per_connector", &relay::relay_limits::max_tunnels_per_connector, true},
    {"source_open_rate", &relay::relay_limits::source_open_rate, true},
    {"source_open_burst", &relay::relay_limits::source_open_burst, true},
    {"source_abort_rate", &relay::relay_limits::source_abort_rate, true},
    {"source_abort_burst", &relay::relay_limits::source_abort_burst, true},
    {"max_user_connections", &relay::relay_limits::max_user_connections, true},
    {"source_max_connections", &relay::relay_limits::source_max_connections, true},
    {"idle_timeout_ms", &relay::relay_limits::idle_timeout_ms, true},
    {"io_coalesce_us", &relay::relay_limits::io_coalesce_us, true},
};

// The keys bound at start, as text for comparison and the log.
struct start_key {
    const char* name;
    std::string (*get)(const relay_settings&);
    bool secret;
};

std::string join(const std::vector<std::string>& v) {
    return fmt::format("[{}]", fmt::join(v, ","));
}

const start_key k_start_keys[] = {
    {"relay.user_listen", [](const relay_settings& s) { return s.user_listen; }, false},
    {"relay.tunnel_listen", [](const relay_settings& s) { return s.tunnel_listen; }, false},
    {"relay.enroll_listen", [](const relay_settings& s) { return s.enroll_listen; }, false},
    {"relay.state_dir", [](const relay_settings& s) { return s.state_dir; }, false},
    {"relay.server_name", [](const relay_settings& s) { return s.server_name; }, false},
    {"relay.core_map", [](const relay_settings& s) { return s.core_map; }, false},
    {"relay.io", [](const relay_settings& s) { return s.io; }, false},
    {"admin.socket", [](const relay_settings& s) { return s.admin_socket; }, false},
    {"admin.listen", [](const relay_settings& s) { return s.admin_listen; }, false},
    {"admin.token", [](const relay_settings& s) { return s.admin_token; }, true},
    {"connectors.min_version", [](const relay_settings& s) { return s.min_connector_version; },
     false},
    {"connectors.latest_version",
     [](const relay_settings& s) { return s.latest_connector_version; }, false},
    {"connectors.inactive_purge_s",
     [](const relay_settings& s) { return std::to_string(s.inactive_purge_s); }, false},
    {"connectors.update_package", [](const relay_settings& s) { return s.update_package; },
     false},
    {"connectors.update_lease_s",
     [](const relay_settings& s) { return std::to_string(s.update_lease_s); }, false},
    {"tls.user_ciphersuites", [](const relay_settings& s) { return s.user_tls.ciphersuites; },
     false},
    {"tls.user_groups", [](const relay_settings& s) { return s.user_tls.groups; }, false},
    {"tls.tunnel_ciphersuites", [](const relay_settings& s) { return s.tunnel_tls.ciphersuites; },
     false},
    {"tls.tunnel_groups", [](const relay_settings& s) { return s.tunnel_tls.groups; }, false},
    {"tls.user_session_tickets",
     [](const relay_settings& s) { return std::string(s.user_session_tickets ? "true" : "false"); },
     false},
    {"tls.ticket_key_rotation_s",
     [](const relay_settings& s) { return std::to_string(s.ticket_key_rotation_s); }, false},
    {"store.kind", [](const relay_settings& s) { return s.store.kind; }, false},
    {"store.endpoints", [](const relay_settings& s) { return join(s.store.endpoints); }, false},
    {"store.prefix", [](const relay_settings& s) { return s.store.prefix; }, false},
    {"store.ca_file", [](const relay_settings& s) { return s.store.ca_file; }, false},
    {"store.cert_file", [](const relay_settings& s) { return s.store.cert_file; }, false},
    {"store.key_file", [](const relay_settings& s) { return s.store.key_file; }, false},
    {"store.timeout_ms", [](const relay_settings& s) { return std::to_string(s.store.timeout_ms); },
     false},
    {"fleet.node", [](const relay_settings& s) { return s.fleet.node; }, false},
    {"fleet.region", [](const relay_settings& s) { return s.fleet.region; }, false},
    {"fleet.address", [](const relay_settings& s) { return s.fleet.address; }, false},
    {"fleet.lease_ttl_s",
     [](const relay_settings& s) { return std::to_string(s.fleet.lease_ttl_s); }, false},
    {"dpdk.lcores", [](const relay_settings& s) { return s.dpdk.lcores; }, false},
    {"dpdk.allow", [](const relay_settings& s) { return join(s.dpdk.allow); }, false},
    {"dpdk.vdev", [](const relay_settings& s) { return join(s.dpdk.vdev); }, false},
    {"dpdk.file_prefix", [](const relay_settings& s) { return s.dpdk.file_prefix; }, false},
    {"dpdk.no_huge",
     [](const relay_settings& s) { return std::string(s.dpdk.no_huge ? "true" : "false"); }, false},
    {"dpdk.memory_mb", [](const relay_settings& s) { return std::to_string(s.dpdk.memory_mb); },
     false},
    {"dpdk.no_pci",
     [](const relay_settings& s) { return std::string(s.dpdk.no_pci ? "true" : "false"); }, false},
    {"dpdk.port", [](const relay_settings& s) { return s.dpdk.port; }, false},
    {"dpdk.address", [](const relay_settings& s) { return s.dpdk.address; }, false},
    {"dpdk.gateway", [](const relay_settings& s) { return s.dpdk.gateway; }, false},
    {"dpdk.mtu", [](const relay_settings& s) { return std::to_string(s.dpdk.mtu); }, false},
    {"dpdk.loss_every", [](const relay_settings& s) { return std::to_string(s.dpdk.loss_every); },
     false},
};

} // namespace

reload_plan plan_reload(const relay_settings& running, const relay_settings& next) {
    reload_plan plan;
    plan.limits = running.limits;
    for (const auto& k : k_limit_keys) {
        const uint32_t from = running.limits.*k.field;
        const uint32_t to = next.limits.*k.field;
        if (from == to) {
            continue;
        }
        setting_change c{std::string("limits.") + k.name, std::to_string(from), std::to_string(to)};
        if (k.live) {
            plan.limits.*k.field = to;
            plan.live.push_back(std::move(c));
        } else {
            plan.restart.push_back(std::move(c));
        }
    }
    if (running.limits.user_buffer_budget != next.limits.user_buffer_budget) {
        plan.limits.user_buffer_budget = next.limits.user_buffer_budget;
        plan.live.push_back({"limits.user_buffer_budget_mb",
                             std::to_string(running.limits.user_buffer_budget >> 20),
                             std::to_string(next.limits.user_buffer_budget >> 20)});
    }
    for (const auto& k : k_start_keys) {
        std::string from = k.get(running);
        std::string to = k.get(next);
        if (from == to) {
            continue;
        }
        if (k.secret) {
            from = to = "(changed)";
        }
        plan.restart.push_back({k.name, std::move(from), std::move(to)});
    }
    return plan;
}

std::string describe(const std::vector<setting_change>& changes) {
    std::string out;
    for (const auto& c : changes) {
        if (!out.empty()) {
            out += ' ';
        }
        out += c.from == c.to ? fmt::format("{}={}", c.key, c.to)
                              : fmt::format("{}={}->{}", c.key, c.from, c.to);
    }
    return out;
}

} // namespace apprelay::control
