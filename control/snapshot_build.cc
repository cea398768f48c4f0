#include "control/snapshot_build.hh"

#include "control/store/pem_util.hh"
#include "dataplane/base/log.hh"
#include "dataplane/io/address.hh"
#include "tls/ca.hh"

#include <algorithm>
#include <filesystem>
#include <map>
#include <fmt/format.h>
#include <unordered_map>

namespace apprelay::control {
namespace {

std::string hex(std::string_view raw) {
    static constexpr char k_digits[] = "0123456789abcdef";
    std::string out;
    for (unsigned char c : raw) {
        out += k_digits[c >> 4];
        out += k_digits[c & 15];
    }
    return out;
}


} // namespace

result<std::string> pem_file(const std::string& dir, const std::string& pem, bool secret,
                             std::string* why) {
    std::string path = (std::filesystem::path(dir) / (hex(sha256(pem)) + ".pem")).string();
    std::error_code ec;
    if (std::filesystem::exists(path, ec)) {
        return path;
    }
    auto w = tls::write_pem_file(path, pem, secret, why);
    if (!w) {
        return w.err();
    }
    return path;
}

result<std::unique_ptr<relay::relay_config>> build_relay_config(const store_view& view,
                                                                const relay_settings& settings,
                                                                const std::string& pem_dir,
                                                                std::string* why) {
    auto snap = std::make_shared<relay::snapshot>();
    snap->version = view.config_version;
    for (const auto& r : view.relays) {
        // One CONFIG line per relay, fields split by spaces: a region's spaces become '_'.
        std::string region = r.region;
        std::replace(region.begin(), region.end(), ' ', '_');
        snap->fleet.push_back({r.node, r.address, region, r.draining});
    }
    snap->limits = settings.limits;
    snap->min_connector_version = settings.min_connector_version;
    snap->latest_connector_version = settings.latest_connector_version;

    std::unordered_map<std::string, uint32_t> tenant_index;
    std::unordered_map<std::string, uint32_t> group_index; // "tenant/group"
    std::vector<std::string> tenant_ca_paths;
    for (const auto& t : view.tenants) {
        auto ca = pem_file(pem_dir, t.ca_cert_pem, false, why);
        if (!ca) {
            return ca.err();
        }
        tenant_index.emplace(t.name, uint32_t(snap->tenants.size()));
        snap->tenants.push_back({t.name, *ca, t.ca_fingerprint});
        tenant_ca_paths.push_back(*ca);
    }
    for (const auto& g : view.groups) {
        auto ti = tenant_index.find(g.tenant);
        if (ti == tenant_index.end()) {
            continue; // the view is read in one transaction: cannot happen, skip defensively
        }
        group_index.emplace(g.tenant + "/" + g.name, uint32_t(snap->groups.size()));
        snap->groups.push_back({ti->second, g.name, uint64_t(g.id), g.region, {}});
    }
    for (const auto& c : view.connectors) {
        auto gi = group_index.find(c.tenant + "/" + c.group);
        if (gi == group_index.end()) {
            continue;
        }
        relay::connector_entry e;
        e.tenant = snap->groups[gi->second].tenant;
        e.group = gi->second;
        e.id = c.id;
        e.fingerprint = c.fingerprint;
        e.name = c.name;
        snap->connectors.push_back(std::move(e));
    }
    if (settings.peer_client_tls != nullptr) {
        // Forwarding hop: which other relays hold a tunnel of each group (presence), and where
        // they listen. A draining relay takes no forwarded streams.
        snap->relay_ca_fingerprint = view.relay.ca_fingerprint;
        std::map<std::string, uint32_t> peer_index;
        for (const auto& r : view.relays) {
            relay::peer_relay p;
            p.node = r.node;
            if (r.node == settings.fleet.node || r.draining || !io::resolve_host_port(r.address, &p.addr, &p.addr_len)) {
                continue;
            }
            peer_index.emplace(r.node, uint32_t(snap->peers.size()));
            snap->peers.push_back(std::move(p));
        }
        for (const auto& c : view.connectors) {
            auto gi = group_index.find(c.tenant + "/" + c.group);
            if (gi == group_index.end()) {
                continue;
            }
            auto& peers = snap->groups[gi->second].peers;
            for (const auto& node : c.relays) {
                auto pi = peer_index.find(node);
                if (pi != peer_index.end() &&
                    std::find(peers.begin(), peers.end(), pi->second) == peers.end()) {
                    peers.push_back(pi->second);
                }
            }
        }
    }

    // Relay identity: the server certificate chain (leaf + relay CA) for both listeners.
    auto chain = pem_file(pem_dir, view.relay.server_cert_pem + view.relay.ca_cert_pem, false, why);
    auto key = pem_file(pem_dir, view.relay.server_key_pem, true, why);
    if (!chain || !key) {
        return error(errc::io_error, "cannot write the relay certificate");
    }

    tls::server_options uo;
    uo.default_cert = {*chain, *key};
    uo.unknown_sni_fails = true;
    uo.policy = settings.user_tls;
    uo.tickets = settings.user_ticket_keys;
    for (const auto& a : view.apps) {
        if (a.access == access_mode::user_cert) {
            // Some app checks user certificates: ask every user for one (optional), verified
            // against the tenant CAs; each app's rule decides after the handshake.
            uo.client_cert_optional = true;
            uo.client_ca_pem_paths = tenant_ca_paths;
            break;
        }
    }
    for (const auto& a : view.apps) {
        auto gi = group_index.find(a.tenant + "/" + a.group);
        if (gi == group_index.end()) {
            continue;
        }
        relay::app_entry e;
        e.tenant = snap->groups[gi->second].tenant;
        e.group = gi->second;
        e.name = a.name;
        e.hostname = a.hostname;
        e.listen_port = a.listen_port;
        e.idle_timeout_ms = a.idle_timeout_ms;
        e.backend = a.backend_host.find(':') != std::string::npos
                        ? fmt::format("[{}]:{}", a.backend_host, a.backend_port)
                        : fmt::format("{}:{}", a.backend_host, a.backend_port);
        e.user_cert_required = a.access == access_mode::user_cert;
        e.allowed_user_groups = a.allowed_user_groups;
        if (!a.hostname.empty()) {
            auto cert = pem_file(pem_dir, a.cert_pem, false, why);
            auto k = pem_file(pem_dir, a.key_pem, true, why);
            if (!cert || !k) {
                return error(errc::io_error, "cannot write an app certificate");
            }
            e.cert_path = *cert;
            e.key_path = *k;
            tls::sni_entry se{a.hostname, {*cert, *k}, uint32_t(snap->apps.size())};
            // Only users of a user-cert app are asked for a certificate, naming only the CA of
            // the app's tenant (others' names stay private; a passthrough app never prompts).
            se.request_client_cert = e.user_cert_required;
            if (e.user_cert_required) {
                se.client_ca_names_pem_paths = {tenant_ca_paths[e.tenant]};
            }
            uo.sni.push_back(std::move(se));
        }
        snap->apps.push_back(std::move(e));
    }
    relay::finalize(*snap);

    auto user_tls = tls::server_context::create(uo, why);
    if (!user_tls) {
        *why = "user listener TLS: " + *why;
        return user_tls.err();
    }
    tls::server_options to;
    to.default_cert = {*chain, *key};
    to.client_ca_pem_paths = tenant_ca_paths;
    to.policy = settings.tunnel_tls;
    if (settings.peer_client_tls != nullptr) {
        // Peer relays of the fleet present certificates from the relay CA (forwarding hop).
        auto ca = pem_file(pem_dir, view.relay.ca_cert_pem, false, why);
        if (!ca) {
            return ca.err();
        }
        to.client_ca_pem_paths.push_back(*ca);
    }
    if (to.client_ca_pem_paths.empty()) {
        // No tenant yet: no connector can be verified; the relay's own CA stands in so the
        // listener still runs (and refuses every connector).
        auto ca = pem_file(pem_dir, view.relay.ca_cert_pem, false, why);
        if (!ca) {
            return ca.err();
        }
        to.client_ca_pem_paths.push_back(*ca);
    }
    auto tunnel_tls = tls::server_context::create(to, why);
    if (!tunnel_tls) {
        *why = "tunnel listener TLS: " + *why;
        return tunnel_tls.err();
    }
    tls::server_options so;
    so.default_cert = {*chain, *key};
    so.client_ca_pem_paths = to.client_ca_pem_paths;
    so.client_cert_optional = true;
    auto service_tls = tls::server_context::create(so, why);
    if (!service_tls) {
        *why = "enrollment listener TLS: " + *why;
        return service_tls.err();
    }
    auto cfg = std::make_unique<relay::relay_config>();
    cfg->service_tls = *service_tls;
    cfg->snap = std::move(snap);
    cfg->user_tls = *user_tls;
    cfg->tunnel_tls = *tunnel_tls;
    cfg->peer_tls = settings.peer_client_tls;
    return cfg;
}

} // namespace apprelay::control
