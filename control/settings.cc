#include "control/settings.hh"

#include <arpa/inet.h>
#include <filesystem>
#include <fmt/format.h>
#include <toml++/toml.h>

namespace apprelay::control {
namespace {

std::string resolve(const std::filesystem::path& base, const std::string& p) {
    if (p.empty()) {
        return p;
    }
    std::filesystem::path pp(p);
    return pp.is_absolute() ? p : (base / pp).string();
}

bool valid_host_port(const std::string& s) {
    auto c = s.rfind(':');
    if (c == std::string::npos || c == 0 || c + 1 >= s.size() || s.size() - c > 6) {
        return false;
    }
    for (std::size_t i = c + 1; i < s.size(); ++i) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
    }
    return std::stol(s.substr(c + 1)) <= 65535;
}

// Every key of a section must be known: a typo is an error, not a silently ignored setting.
bool known_keys(const toml::table& t, const char* section, std::initializer_list<const char*> keys,
                std::string* why) {
    for (const auto& [k, v] : t) {
        bool found = false;
        for (const char* key : keys) {
            found = found || k.str() == key;
        }
        if (!found) {
            *why = fmt::format("{}.{}: unknown key", section, k.str());
            return false;
        }
    }
    return true;
}

template <class T>
bool get_u32(const toml::table& t, const char* section, const char* key, T* out, uint64_t lo,
             uint64_t hi, std::string* why) {
    auto node = t[key];
    if (!node) {
        return true;
    }
    // value_exact: only a TOML integer. value<int64_t>() would also take `true` as 1 and cast a
    // float to an integer, which is undefined behaviour when it is out of range (7e21).
    auto v = node.value_exact<int64_t>();
    if (!v || *v < int64_t(lo) || uint64_t(*v) > hi) {
        *why = fmt::format("{}.{}: expected an integer in {}..{}", section, key, lo, hi);
        return false;
    }
    *out = T(*v);
    return true;
}

bool get_str(const toml::table& t, const char* section, const char* key, std::string* out,
             std::string* why) {
    auto node = t[key];
    if (!node) {
        return true;
    }
    auto v = node.value<std::string>();
    if (!v) {
        *why = fmt::format("{}.{}: expected a string", section, key);
        return false;
    }
    *out = *v;
    return true;
}

bool get_bool(const toml::table& t, const char* section, const char* key, bool* out,
              std::string* why) {
    auto node = t[key];
    if (!node) {
        return true;
    }
    auto v = node.value<bool>();
    if (!v || !node.is_boolean()) {
        *why = fmt::format("{}.{}: expected true or false", section, key);
        return false;
    }
    *out = *v;
    return true;
}

bool get_str_list(const toml::table& t, const char* section, const char* key,
                  std::vector<std::string>* out, std::string* why) {
    auto node = t[key];
    if (!node) {
        return true;
    }
    const toml::array* a = node.as_array();
    if (a == nullptr) {
        *why = fmt::format("{}.{}: expected an array of strings", section, key);
        return false;
    }
    out->clear();
    for (const auto& e : *a) {
        auto v = e.value<std::string>();
        if (!v || !e.is_string()) {
            *why = fmt::format("{}.{}: expected an array of strings", section, key);
            return false;
        }
        out->push_back(*v);
    }
    return true;
}

std::string host_of(const std::string& host_port) {
    return host_port.substr(0, host_port.rfind(':'));
}

bool load_store(const toml::table& t, const toml::table& f, const std::filesystem::path& base,
                relay_settings& s, std::string* why) {
    auto& st = s.store;
    if (!known_keys(t, "store",
                    {"kind", "endpoints", "prefix", "ca_file", "cert_file", "key_file",
                     "timeout_ms"},
                    why) ||
        !get_str(t, "store", "kind", &st.kind, why) ||
        !get_str_list(t, "store", "endpoints", &st.endpoints, why) ||
        !get_str(t, "store", "prefix", &st.prefix, why) ||
        !get_str(t, "store", "ca_file", &st.ca_file, why) ||
        !get_str(t, "store", "cert_file", &st.cert_file, why) ||
        !get_str(t, "store", "key_file", &st.key_file, why) ||
        !get_u32(t, "store", "timeout_ms", &st.timeout_ms, 100, 60'000, why)) {
        return false;
    }
    auto& fl = s.fleet;
    if (!known_keys(f, "fleet", {"node", "region", "address", "lease_ttl_s"}, why) ||
        !get_str(f, "fleet", "node", &fl.node, why) ||
        !get_str(f, "fleet", "region", &fl.region, why) ||
        !get_str(f, "fleet", "address", &fl.address, why) ||
        !get_u32(f, "fleet", "lease_ttl_s", &fl.lease_ttl_s, 2, 600, why)) {
        return false;
    }
    if (st.kind != "sqlite" && st.kind != "etcd") {
        *why = fmt::format("store.kind: '{}' is not \"sqlite\" or \"etcd\"", st.kind);
        return false;
    }
    if (st.kind == "etcd" && st.endpoints.empty()) {
        *why = "store.endpoints: required with store.kind = \"etcd\" (host:port of each member)";
        return false;
    }
    for (const auto& e : st.endpoints) {
        auto colon = e.rfind(':');
        if (colon == std::string::npos || colon == 0 || colon + 1 == e.size() ||
            e.find_first_not_of("0123456789", colon + 1) != std::string::npos) {
            *why = fmt::format("store.endpoints: '{}' is not host:port", e);
            return false;
        }
    }
    if (st.prefix.empty() || st.prefix.back() != '/') {
        *why = fmt::format("store.prefix: '{}' must end with '/'", st.prefix);
        return false;
    }
    if (st.cert_file.empty() != st.key_file.empty()) {
        *why = "store.cert_file and store.key_file go together";
        return false;
    }
    for (auto* file : {&st.ca_file, &st.cert_file, &st.key_file}) {
        if (!file->empty()) {
            *file = resolve(base, *file);
        }
    }
    return true;
}

bool load_dpdk(const toml::table& t, relay_settings& s, std::string* why) {
    auto& d = s.dpdk;
    if (!known_keys(t, "dpdk",
                    {"lcores", "allow", "vdev", "file_prefix", "no_huge", "memory_mb", "no_pci",
                     "port", "address", "gateway", "mtu", "loss_every"},
                    why) ||
        !get_str(t, "dpdk", "lcores", &d.lcores, why) ||
        !get_str_list(t, "dpdk", "allow", &d.allow, why) ||
        !get_str_list(t, "dpdk", "vdev", &d.vdev, why) ||
        !get_str(t, "dpdk", "file_prefix", &d.file_prefix, why) ||
        !get_bool(t, "dpdk", "no_huge", &d.no_huge, why) ||
        !get_u32(t, "dpdk", "memory_mb", &d.memory_mb, 64, 1u << 20, why) ||
        !get_bool(t, "dpdk", "no_pci", &d.no_pci, why) ||
        !get_str(t, "dpdk", "port", &d.port, why) ||
        !get_str(t, "dpdk", "address", &d.address, why) ||
        !get_str(t, "dpdk", "gateway", &d.gateway, why) ||
        !get_u32(t, "dpdk", "mtu", &d.mtu, 576, 9000, why) ||
        !get_u32(t, "dpdk", "loss_every", &d.loss_every, 0, 1u << 30, why)) {
        return false;
    }
    if (s.io != "dpdk") {
        return true;
    }
    auto slash = d.address.find('/');
    if (d.address.empty() || slash == std::string::npos ||
        !parse_ipv4(d.address.substr(0, slash), &d.ipv4)) {
        *why = fmt::format("dpdk.address: '{}' is not A.B.C.D/PREFIX (required with relay.io = "
                           "\"dpdk\")",
                           d.address);
        return false;
    }
    const std::string len = d.address.substr(slash + 1);
    if (len.empty() || len.size() > 2 || len.find_first_not_of("0123456789") != std::string::npos ||
        std::stoi(len) < 1 || std::stoi(len) > 32) {
        *why = fmt::format("dpdk.address: prefix '/{}' outside 1..32", len);
        return false;
    }
    d.prefix_len = uint8_t(std::stoi(len));
    if (!d.gateway.empty() && !parse_ipv4(d.gateway, &d.gateway_ipv4)) {
        *why = fmt::format("dpdk.gateway: '{}' is not A.B.C.D", d.gateway);
        return false;
    }
    if (d.no_huge && d.memory_mb == 0) {
        *why = "dpdk.memory_mb: required with dpdk.no_huge (EAL -m), e.g. 256";
        return false;
    }
    if (d.file_prefix.empty() || d.file_prefix.find('/') != std::string::npos) {
        *why = "dpdk.file_prefix: a non-empty name without '/'";
        return false;
    }
    const std::string own = d.address.substr(0, slash);
    for (auto [key, value] : {std::pair{"user_listen", &s.user_listen},
                              std::pair{"tunnel_listen", &s.tunnel_listen}}) {
        const std::string host = host_of(*value);
        if (value->substr(value->rfind(':') + 1) == "0") {
            *why = fmt::format("relay.{}: '{}' needs a fixed port on the DPDK port (relay.io = "
                               "\"dpdk\")",
                               key, *value);
            return false;
        }
        if (host != "0.0.0.0" && host != own) {
            *why = fmt::format("relay.{}: '{}' is on the DPDK port (relay.io = \"dpdk\"): its "
                               "host must be 0.0.0.0 or dpdk.address {}",
                               key, *value, own);
            return false;
        }
    }
    return true;
}

bool load_tls(const toml::table& t, relay_settings& s, std::string* why) {
    if (!known_keys(t, "tls",
                    {"user_ciphersuites", "user_groups", "tunnel_ciphersuites", "tunnel_groups",
                     "user_session_tickets", "ticket_key_rotation_s"},
                    why) ||
        !get_str(t, "tls", "user_ciphersuites", &s.user_tls.ciphersuites, why) ||
        !get_str(t, "tls", "user_groups", &s.user_tls.groups, why) ||
        !get_str(t, "tls", "tunnel_ciphersuites", &s.tunnel_tls.ciphersuites, why) ||
        !get_str(t, "tls", "tunnel_groups", &s.tunnel_tls.groups, why) ||
        !get_bool(t, "tls", "user_session_tickets", &s.user_session_tickets, why) ||
        !get_u32(t, "tls", "ticket_key_rotation_s", &s.ticket_key_rotation_s, 60, 7 * 86400,
                 why)) {
        return false;
    }
    std::string w;
    if (!tls::check_policy(s.user_tls, &w)) {
        *why = "tls.user_" + w;
        return false;
    }
    if (!tls::check_policy(s.tunnel_tls, &w)) {
        *why = "tls.tunnel_" + w;
        return false;
    }
    if (s.user_session_tickets) {
        s.user_ticket_keys = tls::ticket_keys::create(s.ticket_key_rotation_s);
        if (s.user_ticket_keys == nullptr) {
            *why = "tls.user_session_tickets: cannot create ticket keys (random source)";
            return false;
        }
    }
    return true;
}

} // namespace

bool parse_ipv4(const std::string& text, uint32_t* out) {
    in_addr a{};
    if (::inet_pton(AF_INET, text.c_str(), &a) != 1) {
        return false;
    }
    *out = ntohl(a.s_addr);
    return true;
}

namespace {

// The sections of a parsed file; `path` names the file, relative paths resolve against its folder.
bool load_table(const toml::table& root, const std::string& path, relay_settings* out,
                std::string* why) {
    const auto base = std::filesystem::path(path).parent_path();
    relay_settings s;
    for (const auto& [k, v] : root) {
        if (k.str() != "relay" && k.str() != "admin" && k.str() != "connectors" &&
            k.str() != "limits" && k.str() != "tls" && k.str() != "dpdk" && k.str() != "store" &&
            k.str() != "fleet") {
            *why = fmt::format("[{}]: unknown section (tenants, groups, connectors and apps live "
                               "in the store: use apprelayctl)",
                               k.str());
            return false;
        }
    }
    static const toml::table empty;
    const toml::table* r = root["relay"].as_table();
    if (r == nullptr) {
        *why = "[relay]: missing section";
        return false;
    }
    if (!known_keys(*r, "relay",
                    {"user_listen", "tunnel_listen", "enroll_listen", "state_dir", "server_name",
                     "core_map", "io"},
                    why) ||
        !get_str(*r, "relay", "user_listen", &s.user_listen, why) ||
        !get_str(*r, "relay", "tunnel_listen", &s.tunnel_listen, why) ||
        !get_str(*r, "relay", "enroll_listen", &s.enroll_listen, why) ||
        !get_str(*r, "relay", "state_dir", &s.state_dir, why) ||
        !get_str(*r, "relay", "server_name", &s.server_name, why) ||
        !get_str(*r, "relay", "core_map", &s.core_map, why) ||
        !get_str(*r, "relay", "io", &s.io, why)) {
        return false;
    }
    if (s.io != "uring" && s.io != "dpdk") {
        *why = fmt::format("relay.io: '{}' is not \"uring\" or \"dpdk\"", s.io);
        return false;
    }
    for (auto [key, value] :
         {std::pair{"user_listen", &s.user_listen}, std::pair{"tunnel_listen", &s.tunnel_listen},
          std::pair{"enroll_listen", &s.enroll_listen}}) {
        if (!valid_host_port(*value)) {
            *why = fmt::format("relay.{}: '{}' is not HOST:PORT", key, *value);
            return false;
        }
    }
    if (s.server_name.empty() || s.server_name.size() > 253) {
        *why = "relay.server_name: must be a DNS name";
        return false;
    }
    s.state_dir = resolve(base, s.state_dir);

    const toml::table* a = root["admin"].as_table();
    a = a != nullptr ? a : &empty;
    if (!known_keys(*a, "admin", {"socket", "listen", "token"}, why) ||
        !get_str(*a, "admin", "socket", &s.admin_socket, why) ||
        !get_str(*a, "admin", "listen", &s.admin_listen, why) ||
        !get_str(*a, "admin", "token", &s.admin_token, why)) {
        return false;
    }
    s.admin_socket = s.admin_socket.empty()
                         ? (std::filesystem::path(s.state_dir) / "admin.sock").string()
                         : resolve(base, s.admin_socket);
    if (!s.admin_listen.empty()) {
        if (!valid_host_port(s.admin_listen)) {
            *why = fmt::format("admin.listen: '{}' is not HOST:PORT", s.admin_listen);
            return false;
        }
        if (s.admin_listen.rfind("127.", 0) != 0 && s.admin_listen.rfind("[::1]", 0) != 0) {
            *why = "admin.listen: only loopback addresses (127.0.0.0/8, [::1])";
            return false;
        }
        if (s.admin_token.size() < 16) {
            *why = "admin.token: required with admin.listen, at least 16 characters";
            return false;
        }
    }

    const toml::table* c = root["connectors"].as_table();
    c = c != nullptr ? c : &empty;
    if (!known_keys(*c, "connectors",
                    {"min_version", "latest_version", "inactive_purge_s", "update_package",
                     "update_lease_s"},
                    why) ||
        !get_str(*c, "connectors", "min_version", &s.min_connector_version, why) ||
        !get_str(*c, "connectors", "latest_version", &s.latest_connector_version, why) ||
        !get_u32(*c, "connectors", "inactive_purge_s", &s.inactive_purge_s, 1,
                 10ull * 365 * 24 * 3600, why) ||
        !get_str(*c, "connectors", "update_package", &s.update_package, why) ||
        !get_u32(*c, "connectors", "update_lease_s", &s.update_lease_s, 5, 24 * 3600, why)) {
        return false;
    }
    s.latest_version_set = c->contains("latest_version");
    if (relay::compare_versions(s.latest_connector_version, s.min_connector_version) < 0) {
        *why = "connectors.latest_version: older than connectors.min_version";
        return false;
    }

    const toml::table* l = root["limits"].as_table();
    l = l != nullptr ? l : &empty;
    auto& lim = s.limits;
    if (!known_keys(*l, "limits",
                    {"max_frame", "initial_window", "max_streams_per_tunnel", "ping_interval_ms",
                     "ping_timeout_ms", "handshake_timeout_ms", "drain_deadline_ms",
                     "config_refresh_ms", "open_retries", "io_coalesce_us", "source_open_rate",
                     "source_open_burst", "source_abort_rate", "source_abort_burst",
                     "max_user_connections", "source_max_connections", "idle_timeout_ms",
                     "max_pending_opens", "max_tunnels_per_connector",
                     "user_buffer_budget_mb"},
                    why) ||
        !get_u32(*l, "limits", "max_frame", &lim.max_frame, 1024, 1u << 20, why) ||
        !get_u32(*l, "limits", "initial_window", &lim.initial_window, 1024, 0x7fffffff, why) ||
        !get_u32(*l, "limits", "max_streams_per_tunnel", &lim.max_streams_per_tunnel, 1, 1u << 20,
                 why) ||
        !get_u32(*l, "limits", "ping_interval_ms", &lim.ping_interval_ms, 10, 600'000, why) ||
        !get_u32(*l, "limits", "ping_timeout_ms", &lim.ping_timeout_ms, 20, 3'600'000, why) ||
        !get_u32(*l, "limits", "handshake_timeout_ms", &lim.handshake_timeout_ms, 1, 600'000,
                 why) ||
        !get_u32(*l, "limits", "drain_deadline_ms", &lim.drain_deadline_ms, 0, 3'600'000, why) ||
        !get_u32(*l, "limits", "config_refresh_ms", &lim.config_refresh_ms, 100, 86'400'000, why) ||
        !get_u32(*l, "limits", "open_retries", &lim.open_retries, 0, 8, why) ||
        !get_u32(*l, "limits", "io_coalesce_us", &lim.io_coalesce_us, 0, 1000, why) ||
        !get_u32(*l, "limits", "source_open_rate", &lim.source_open_rate, 0, 10'000'000, why) ||
        !get_u32(*l, "limits", "source_open_burst", &lim.source_open_burst, 1, 10'000'000, why) ||
        !get_u32(*l, "limits", "source_abort_rate", &lim.source_abort_rate, 0, 10'000'000, why) ||
        !get_u32(*l, "limits", "max_user_connections", &lim.max_user_connections, 0,
                 10'000'000, why) ||
        !get_u32(*l, "limits", "source_max_connections", &lim.source_max_connections, 0,
                 10'000'000, why) ||
        !get_u32(*l, "limits", "idle_timeout_ms", &lim.idle_timeout_ms, 100, 86'400'000, why) ||
        !get_u32(*l, "limits", "max_pending_opens", &lim.max_pending_opens, 1, 1u << 20, why) ||
        !get_u32(*l, "limits", "max_tunnels_per_connector", &lim.max_tunnels_per_connector, 0,
                 1u << 16, why) ||
        !get_u32(*l, "limits", "source_abort_burst", &lim.source_abort_burst, 1, 10'000'000,
                 why)) {
        return false;
    }
    uint32_t budget_mb = uint32_t(lim.user_buffer_budget >> 20);
    if (!get_u32(*l, "limits", "user_buffer_budget_mb", &budget_mb, 0, 1u << 20, why)) {
        return false;
    }
    lim.user_buffer_budget = uint64_t(budget_mb) << 20;
    const toml::table* tt = root["tls"].as_table();
    if (!load_tls(tt != nullptr ? *tt : empty, s, why)) {
        return false;
    }
    const toml::table* stt = root["store"].as_table();
    const toml::table* ft = root["fleet"].as_table();
    if (!load_store(stt != nullptr ? *stt : empty, ft != nullptr ? *ft : empty, base, s, why)) {
        return false;
    }
    const toml::table* dt = root["dpdk"].as_table();
    if (!load_dpdk(dt != nullptr ? *dt : empty, s, why)) {
        return false;
    }
    if (lim.ping_timeout_ms <= lim.ping_interval_ms) {
        *why = "limits.ping_timeout_ms: must be greater than limits.ping_interval_ms";
        return false;
    }
    if (lim.initial_window < lim.max_frame) {
        *why = "limits.initial_window: must be >= limits.max_frame";
        return false;
    }
    *out = std::move(s);
    return true;
}

} // namespace

bool load_settings(const std::string& path, relay_settings* out, std::string* why) {
    toml::table root;
    try {
        root = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
        *why = fmt::format("{}: {} (line {})", path, e.description(), e.source().begin.line);
        return false;
    }
    return load_table(root, path, out, why);
}

bool parse_settings(std::string_view text, const std::string& path, relay_settings* out,
                    std::string* why) {
    toml::table root;
    try {
        root = toml::parse(text, path);
    } catch (const toml::parse_error& e) {
        *why = fmt::format("{}: {} (line {})", path, e.description(), e.source().begin.line);
        return false;
    }
    return load_table(root, path, out, why);
}

} // namespace apprelay::control
