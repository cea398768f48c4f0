#include "control/static_config.hh"

#include "tls/context.hh"

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

bool need_str(const toml::table& t, const char* key, const std::string& where, std::string* out,
              std::string* why) {
    auto v = t[key].value<std::string>();
    if (!v || v->empty()) {
        *why = fmt::format("{}.{}: missing or not a string", where, key);
        return false;
    }
    *out = *v;
    return true;
}

bool valid_host_port(const std::string& s) {
    auto c = s.rfind(':');
    if (c == std::string::npos || c == 0 || c + 1 >= s.size()) {
        return false;
    }
    for (std::size_t i = c + 1; i < s.size(); ++i) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
    }
    long port = std::stol(s.substr(c + 1));
    return port >= 0 && port <= 65535;
}

} // namespace

bool load_static_config(const std::string& path, loaded_config* out, std::string* why) {
    toml::table root;
    try {
        root = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
        *why = fmt::format("{}: {} (line {})", path, e.description(), e.source().begin.line);
        return false;
    }
    const auto base = std::filesystem::path(path).parent_path();
    auto snap = std::make_shared<relay::snapshot>();
    relay_settings rs;

    if (auto* r = root["relay"].as_table()) {
        rs.user_listen = (*r)["user_listen"].value_or(rs.user_listen);
        rs.tunnel_listen = (*r)["tunnel_listen"].value_or(rs.tunnel_listen);
        rs.cert_path = resolve(base, (*r)["cert"].value_or(std::string()));
        rs.key_path = resolve(base, (*r)["key"].value_or(std::string()));
        rs.core_map = (*r)["core_map"].value_or(std::string());
    } else {
        *why = "[relay]: missing section";
        return false;
    }
    if (rs.cert_path.empty() || rs.key_path.empty()) {
        *why = "relay.cert and relay.key: the tunnel listener needs a certificate and key";
        return false;
    }
    if (!valid_host_port(rs.user_listen) || !valid_host_port(rs.tunnel_listen)) {
        *why = "relay.user_listen / relay.tunnel_listen: expected HOST:PORT";
        return false;
    }
    if (auto* l = root["limits"].as_table()) {
        auto& lim = snap->limits;
        lim.max_frame = uint32_t((*l)["max_frame"].value_or(int64_t(lim.max_frame)));
        lim.initial_window = uint32_t((*l)["initial_window"].value_or(int64_t(lim.initial_window)));
        lim.max_streams_per_tunnel =
            uint32_t((*l)["max_streams_per_tunnel"].value_or(int64_t(lim.max_streams_per_tunnel)));
        lim.ping_interval_ms =
            uint32_t((*l)["ping_interval_ms"].value_or(int64_t(lim.ping_interval_ms)));
        lim.handshake_timeout_ms =
            uint32_t((*l)["handshake_timeout_ms"].value_or(int64_t(lim.handshake_timeout_ms)));
        lim.ping_timeout_ms =
            uint32_t((*l)["ping_timeout_ms"].value_or(int64_t(lim.ping_timeout_ms)));
        if (lim.ping_interval_ms == 0 || lim.ping_timeout_ms <= lim.ping_interval_ms) {
            *why = "limits.ping_interval_ms / ping_timeout_ms: need 0 < interval < timeout";
            return false;
        }
        lim.drain_deadline_ms =
            uint32_t((*l)["drain_deadline_ms"].value_or(int64_t(lim.drain_deadline_ms)));
        if (lim.max_frame < 1024 || lim.max_frame > (1u << 20)) {
            *why = fmt::format("limits.max_frame: {} outside 1024..1048576", lim.max_frame);
            return false;
        }
        if (lim.initial_window < lim.max_frame || lim.initial_window > 0x7fffffffu) {
            *why = "limits.initial_window: must be >= max_frame and < 2^31";
            return false;
        }
        if (lim.handshake_timeout_ms == 0) {
            *why = "limits.handshake_timeout_ms: must not be 0";
            return false;
        }
    }

    auto tenant_index = [&](const std::string& name) -> int {
        for (std::size_t i = 0; i < snap->tenants.size(); ++i) {
            if (snap->tenants[i].name == name) {
                return int(i);
            }
        }
        return -1;
    };
    auto group_index = [&](uint32_t tenant, const std::string& name) -> int {
        for (std::size_t i = 0; i < snap->groups.size(); ++i) {
            if (snap->groups[i].tenant == tenant && snap->groups[i].name == name) {
                return int(i);
            }
        }
        return -1;
    };

    if (auto* arr = root["tenants"].as_array()) {
        for (std::size_t i = 0; i < arr->size(); ++i) {
            auto* t = (*arr)[i].as_table();
            std::string where = fmt::format("tenants[{}]", i);
            relay::tenant_entry te;
            if (!t || !need_str(*t, "name", where, &te.name, why) ||
                !need_str(*t, "ca", where, &te.ca_path, why)) {
                if (!t) {
                    *why = where + ": not a table";
                }
                return false;
            }
            if (tenant_index(te.name) >= 0) {
                *why = fmt::format("{}: duplicate tenant '{}'", where, te.name);
                return false;
            }
            te.ca_path = resolve(base, te.ca_path);
            snap->tenants.push_back(std::move(te));
            // Every tenant has a Default group.
            snap->groups.push_back({uint32_t(snap->tenants.size() - 1), "Default"});
        }
    }
    if (snap->tenants.empty()) {
        *why = "tenants: at least one tenant is required";
        return false;
    }
    if (auto* arr = root["groups"].as_array()) {
        for (std::size_t i = 0; i < arr->size(); ++i) {
            auto* g = (*arr)[i].as_table();
            std::string where = fmt::format("groups[{}]", i);
            std::string tenant, name;
            if (!g || !need_str(*g, "tenant", where, &tenant, why) ||
                !need_str(*g, "name", where, &name, why)) {
                return false;
            }
            int ti = tenant_index(tenant);
            if (ti < 0) {
                *why = fmt::format("{}.tenant: no tenant '{}'", where, tenant);
                return false;
            }
            if (group_index(uint32_t(ti), name) < 0) {
                snap->groups.push_back({uint32_t(ti), name});
            }
        }
    }
    if (auto* arr = root["connectors"].as_array()) {
        for (std::size_t i = 0; i < arr->size(); ++i) {
            auto* c = (*arr)[i].as_table();
            std::string where = fmt::format("connectors[{}]", i);
            std::string tenant, group, cert;
            relay::connector_entry ce;
            if (!c || !need_str(*c, "tenant", where, &tenant, why) ||
                !need_str(*c, "id", where, &ce.id, why) ||
                !need_str(*c, "cert", where, &cert, why)) {
                return false;
            }
            group = (*c)["group"].value_or(std::string("Default"));
            int ti = tenant_index(tenant);
            if (ti < 0) {
                *why = fmt::format("{}.tenant: no tenant '{}'", where, tenant);
                return false;
            }
            int gi = group_index(uint32_t(ti), group);
            if (gi < 0) {
                *why = fmt::format("{}.group: no group '{}' in tenant '{}'", where, group, tenant);
                return false;
            }
            ce.tenant = uint32_t(ti);
            ce.group = uint32_t(gi);
            std::string fwhy;
            auto fp = tls::fingerprint_of_pem_file(resolve(base, cert), &fwhy);
            if (!fp) {
                *why = fmt::format("{}.cert: {}", where, fwhy);
                return false;
            }
            ce.fingerprint = *fp;
            if (snap->connector_by_fingerprint.count(ce.fingerprint) != 0) {
                *why = fmt::format("{}: certificate already used by another connector", where);
                return false;
            }
            for (const auto& other : snap->connectors) {
                if (other.id == ce.id) {
                    *why = fmt::format("{}: duplicate connector id '{}'", where, ce.id);
                    return false;
                }
            }
            snap->connector_by_fingerprint.emplace(ce.fingerprint,
                                                   uint32_t(snap->connectors.size()));
            snap->connectors.push_back(std::move(ce));
        }
    }
    if (auto* arr = root["apps"].as_array()) {
        for (std::size_t i = 0; i < arr->size(); ++i) {
            auto* a = (*arr)[i].as_table();
            std::string where = fmt::format("apps[{}]", i);
            std::string tenant, group;
            relay::app_entry ae;
            if (!a || !need_str(*a, "tenant", where, &tenant, why) ||
                !need_str(*a, "name", where, &ae.name, why) ||
                !need_str(*a, "hostname", where, &ae.hostname, why) ||
                !need_str(*a, "cert", where, &ae.cert_path, why) ||
                !need_str(*a, "key", where, &ae.key_path, why) ||
                !need_str(*a, "backend", where, &ae.backend, why)) {
                return false;
            }
            group = (*a)["group"].value_or(std::string("Default"));
            int ti = tenant_index(tenant);
            if (ti < 0) {
                *why = fmt::format("{}.tenant: no tenant '{}'", where, tenant);
                return false;
            }
            int gi = group_index(uint32_t(ti), group);
            if (gi < 0) {
                *why = fmt::format("{}.group: no group '{}' in tenant '{}'", where, group, tenant);
                return false;
            }
            if (!valid_host_port(ae.backend)) {
                *why = fmt::format("{}.backend: '{}' is not HOST:PORT", where, ae.backend);
                return false;
            }
            for (const auto& other : snap->apps) {
                if (other.hostname == ae.hostname) {
                    *why = fmt::format("{}.hostname: '{}' already used by app '{}'", where,
                                       ae.hostname, other.name);
                    return false;
                }
            }
            ae.tenant = uint32_t(ti);
            ae.group = uint32_t(gi);
            ae.cert_path = resolve(base, ae.cert_path);
            ae.key_path = resolve(base, ae.key_path);
            snap->apps.push_back(std::move(ae));
        }
    }
    relay::finalize(*snap);
    out->relay = std::move(rs);
    out->snap = std::move(snap);
    return true;
}

} // namespace apprelay::control
