#include "control/relay_host.hh"

#include "control/admin/http_server.hh"
#include "control/admin/metrics.hh"
#include "control/api/api.hh"
#include "control/dpdk_backend.hh"
#include "control/enroll/server.hh"
#include "control/notify.hh"
#include "control/reload.hh"
#include "control/settings.hh"
#include "control/snapshot_build.hh"
#include "control/store/etcd/etcd_store.hh"
#include "control/store/sqlite.hh"
#include "control/turns.hh"
#include "control/update_service.hh"
#include "dataplane/base/log.hh"
#include "dataplane/core/core_map.hh"
#include "dataplane/relay/worker.hh"
#include "tls/context.hh"
#include "tls/csr.hh"

#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <netdb.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>

namespace apprelay::control {
namespace {

// The etcd store's options from [store] and [fleet]; the fleet member follows the prefix.
etcd::etcd_options etcd_options_of(const relay_settings& s) {
    etcd::etcd_options o;
    o.client.endpoints = s.store.endpoints;
    o.client.ca_file = s.store.ca_file;
    o.client.cert_file = s.store.cert_file;
    o.client.key_file = s.store.key_file;
    o.client.timeout_ms = static_cast<int>(s.store.timeout_ms);
    o.prefix = s.store.prefix;
    o.fleet.follow = true;
    o.fleet.node = s.fleet.node;
    if (o.fleet.node.empty()) {
        // Stable across restarts: the server name and the tunnel port.
        o.fleet.node = s.server_name + "-" + s.tunnel_listen.substr(s.tunnel_listen.rfind(':') + 1);
    }
    o.fleet.region = s.fleet.region;
    o.fleet.address = s.fleet.address.empty() ? s.tunnel_listen : s.fleet.address;
    o.fleet.lease_ttl_s = s.fleet.lease_ttl_s;
    return o;
}

bool parse_addr(const std::string& hp, sockaddr_storage* ss, socklen_t* len, std::string* why) {
    auto c = hp.rfind(':');
    std::string host = hp.substr(0, c);
    std::string port = hp.substr(c + 1);
    if (!host.empty() && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0 || res == nullptr) {
        *why = hp + ": not a numeric HOST:PORT (" + gai_strerror(rc) + ")";
        return false;
    }
    std::memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return true;
}

uint16_t port_of(const sockaddr_storage& ss) {
    if (ss.ss_family == AF_INET6) {
        return ntohs(reinterpret_cast<const sockaddr_in6&>(ss).sin6_port);
    }
    return ntohs(reinterpret_cast<const sockaddr_in&>(ss).sin_port);
}

// The PORT of a HOST:PORT the settings already checked.
uint16_t port_of_host_port(const std::string& hp) {
    return uint16_t(std::stoul(hp.substr(hp.rfind(':') + 1)));
}

void set_port(sockaddr_storage* ss, uint16_t port) {
    if (ss->ss_family == AF_INET6) {
        reinterpret_cast<sockaddr_in6*>(ss)->sin6_port = htons(port);
    } else {
        reinterpret_cast<sockaddr_in*>(ss)->sin_port = htons(port);
    }
}

// One SO_REUSEPORT listener per worker on the same address; port 0 picks a free port once and
// the other workers bind that one.
bool make_listeners(const std::string& hp, std::size_t n, std::vector<int>* fds, uint16_t* port,
                    std::string* why) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (!parse_addr(hp, &ss, &len, why)) {
        return false;
    }
    for (std::size_t i = 0; i < n; ++i) {
        int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, 4096) != 0) {
            *why = hp + ": cannot listen: " + std::strerror(errno);
            ::close(fd);
            return false;
        }
        if (i == 0) {
            sockaddr_storage bound{};
            socklen_t bl = sizeof bound;
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bl);
            *port = port_of(bound);
            set_port(&ss, *port);
        }
        fds->push_back(fd);
    }
    return true;
}

bool write_atomically(const std::string& path, const std::string& text) {
    std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::trunc);
        if (!f) {
            return false;
        }
        f << text;
    }
    return std::rename(tmp.c_str(), path.c_str()) == 0;
}

// Default: control on the first cpu, one worker on each other cpu.
std::string fmt_default_core_map(const std::vector<int>& cpus) {
    std::string s = "control=" + std::to_string(cpus[0]) + ",workers=";
    for (std::size_t i = 1; i < cpus.size(); ++i) {
        s += (i > 1 ? "," : "") + std::to_string(cpus[i]);
    }
    return s;
}

int64_t unix_now() {
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// The enrollment listener is a single socket (one thread serves it), not one per worker.
result<int> make_single_listener(const std::string& hp, uint16_t* port, std::string* why) {
    std::vector<int> fds;
    if (!make_listeners(hp, 1, &fds, port, why)) {
        return error(errc::io_error, "cannot listen");
    }
    return fds[0];
}

// How current the store's copy is, for status and the stats file.
nlohmann::json store_json(const store_health& h) {
    nlohmann::json j = {{"kind", h.fleet ? "etcd" : "sqlite"}, {"stale", h.stale}};
    if (h.fleet) {
        j["stale_s"] = h.stale_s;
        j["revision"] = h.revision;
        j["rereads"] = h.rereads;
        j["records_skipped"] = h.skipped_records;
        j["watch_restarts"] = h.watch_restarts;
        j["lease_held"] = h.lease_held;
        j["digest"] = h.digest;
    }
    return j;
}

std::string store_metrics(const store_health& h) {
    if (!h.fleet) {
        return {};
    }
    std::string t;
    t += "# HELP apprelay_store_stale 1 while etcd cannot prove the relay's copy current\n";
    t += "# TYPE apprelay_store_stale gauge\n";
    t += fmt::format("apprelay_store_stale {}\n", h.stale ? 1 : 0);
    t += "# HELP apprelay_store_stale_seconds How long the relay has served an unproven copy\n";
    t += "# TYPE apprelay_store_stale_seconds gauge\n";
    t += fmt::format("apprelay_store_stale_seconds {:.1f}\n", h.stale_s);
    t += "# HELP apprelay_store_revision etcd revision of the relay's copy\n";
    t += "# TYPE apprelay_store_revision gauge\n";
    t += fmt::format("apprelay_store_revision {}\n", h.revision);
    t += "# HELP apprelay_store_rereads_total Whole-prefix reads (start, compaction)\n";
    t += "# TYPE apprelay_store_rereads_total counter\n";
    t += fmt::format("apprelay_store_rereads_total {}\n", h.rereads);
    t += "# HELP apprelay_store_records_skipped_total Malformed or oversized etcd records\n";
    t += "# TYPE apprelay_store_records_skipped_total counter\n";
    t += fmt::format("apprelay_store_records_skipped_total {}\n", h.skipped_records);
    t += "# HELP apprelay_store_watch_restarts_total Watches lost and opened again\n";
    t += "# TYPE apprelay_store_watch_restarts_total counter\n";
    t += fmt::format("apprelay_store_watch_restarts_total {}\n", h.watch_restarts);
    t += "# HELP apprelay_store_lease_held 1 while the relay's presence lease is alive\n";
    t += "# TYPE apprelay_store_lease_held gauge\n";
    t += fmt::format("apprelay_store_lease_held {}\n", h.lease_held ? 1 : 0);
    return t;
}

// Live tunnels per connector id and the version each reported, from the workers' events.
struct connector_live {
    uint32_t tunnels = 0;
    uint32_t draining = 0; // tunnels open after the connector's GOAWAY, streams finishing
    std::string version;
};

// The control thread's state: store, admin API, snapshot publishing, connector status.
class control_plane {
public:
    control_plane(const relay_settings& settings, const relay_options& opts,
                  std::unique_ptr<store> store, relay::config_cell* cell,
                  const std::vector<std::unique_ptr<relay::worker>>* workers,
                  uint64_t published_version)
        : _settings(settings), _opts(opts), _store(std::move(store)), _api(*_store), _cell(cell),
          _workers(workers), _version(published_version), _started(unix_now()) {}

    void set_status(nlohmann::json status) { _status = std::move(status); }
    void set_admin(std::unique_ptr<http_server> admin) { _admin = std::move(admin); }
    void set_dpdk(const dpdk_backend* d) { _dpdk = d; }
    // The enrollment listener gets each new TLS context (tenant CAs for connector requests).
    void set_enroller(enroll::server* e) { _enroller = e; }
    void set_turns(update_turns* t) { _turns = t; }
    http_response handle(const http_request& r);
    void tick(); // one control loop iteration (admin requests, events, snapshot, status)
    bool drain_requested() { return _store->drain_requested(); }
    // The settings' limits changed (SIGHUP): publish a snapshot with them even though the store
    // did not change; until a publish succeeds, every sync tries again.
    void republish() {
        _republish = true;
        sync_snapshot();
    }
    void mark_draining() { _store->set_draining(true); }
    void finish();

private:
    void drain_events();
    void sync_snapshot();
    void upkeep(int64_t now);
    std::string metrics();
    nlohmann::json stats();

    const relay_settings& _settings;
    const relay_options& _opts;
    std::unique_ptr<store> _store;
    admin_api _api;
    relay::config_cell* _cell;
    const std::vector<std::unique_ptr<relay::worker>>* _workers;
    std::unique_ptr<http_server> _admin;
    const dpdk_backend* _dpdk = nullptr;
    enroll::server* _enroller = nullptr;
    update_turns* _turns = nullptr;
    int64_t _next_turn_check = 0;
    std::unordered_map<std::string, connector_live> _live;
    nlohmann::json _status;
    uint64_t _version;
    uint64_t _fleet_epoch = 0;
    bool _stale = false;
    bool _republish = false;
    int64_t _started;
    int64_t _next_seen = 0;
    int64_t _next_purge = 0;
    std::chrono::steady_clock::time_point _next_stats{};
    std::chrono::steady_clock::time_point _next_version_check{};
};

http_response control_plane::handle(const http_request& r) {
    live_view live;
    live.now = unix_now();
    live.tunnels_of = [this](const std::string& id) -> uint32_t {
        auto it = _live.find(id);
        return it == _live.end() ? 0 : it->second.tunnels;
    };
    live.draining_of = [this](const std::string& id) -> uint32_t {
        auto it = _live.find(id);
        return it == _live.end() ? 0 : it->second.draining;
    };
    if (_turns != nullptr) {
        std::unordered_map<std::string, nlohmann::json> updating;
        for (const auto& t : _turns->list()) {
            updating[t.connector] = {{"version", t.target_version},
                                     {"since", t.granted_at},
                                     {"lease_end", t.lease_end},
                                     {"stuck", t.stuck}};
        }
        live.update_of = [updating = std::move(updating)](const std::string& id) {
            auto it = updating.find(id);
            return it == updating.end() ? nlohmann::json() : it->second;
        };
    }
    nlohmann::json st = _status;
    st["config_version"] = _version;
    const auto h = _store->health();
    st["config_stale"] = _stale || h.stale;
    st["store"] = store_json(h);
    st["uptime_s"] = live.now - _started;
    uint64_t up = 0;
    for (const auto& w : *_workers) {
        up += w->counters().get(relay::relay_counter::tunnels_up);
    }
    st["tunnels_up"] = up;
    live.relay_status = std::move(st);
    live.render_metrics = [this] { return metrics(); };
    auto resp = _api.handle(r, live);
    if (r.method != "GET") {
        sync_snapshot(); // a change reaches new streams now, not at the next poll
    }
    return resp;
}

void control_plane::drain_events() {
    const int64_t now = unix_now();
    for (const auto& w : *_workers) {
        relay::tunnel_event e;
        while (w->events().try_pop(e)) {
            auto& c = _live[e.connector_id];
            if (e.what == relay::tunnel_event::kind::draining) {
                ++c.draining;
                continue;
            }
            if (e.what == relay::tunnel_event::kind::drained) {
                c.draining -= c.draining > 0 ? 1 : 0;
                continue;
            }
            if (e.what == relay::tunnel_event::kind::up) {
                if (c.tunnels++ == 0) {
                    // First tunnel: the connector answers PINGs end to end from now on.
                    (void)_store->set_connector_status(e.connector_id, connector_status::active,
                                                       now);
                    if (_turns != nullptr) {
                        _turns->connector_up(e.connector_id, e.version, now);
                    }
                    log::info("connector_active",
                              {{"connector", e.connector_id}, {"version", e.version}});
                }
                if (c.version != e.version) {
                    c.version = e.version;
                    (void)_store->connector_seen(e.connector_id, c.version, now);
                }
            } else if (c.tunnels > 0 && --c.tunnels == 0) {
                (void)_store->set_connector_status(e.connector_id, connector_status::inactive, now);
                if (_turns != nullptr) {
                    _turns->connector_down(e.connector_id, now);
                }
                (void)_store->connector_seen(e.connector_id, c.version, now);
                log::info("connector_inactive", {{"connector", e.connector_id}});
            }
        }
    }
}

void control_plane::sync_snapshot() {
    auto v = _store->config_version();
    if (!v) {
        if (!_stale) {
            log::error("config_stale", {{"reason", v.err().message}});
        }
        _stale = true; // keep serving on the last good snapshot (RELIABILITY.md Stale store)
        return;
    }
    const uint64_t epoch = _store->fleet_epoch();
    if (v.value() == _version && epoch == _fleet_epoch && !_republish) {
        return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto view = _store->load();
    std::string why;
    if (!view) {
        why = view.err().message;
    } else {
        for (const auto& w : view->warnings) {
            log::warn("store_entry_skipped", {{"reason", w}});
        }
        auto cfg =
            build_relay_config(view.value(), _settings,
                               (std::filesystem::path(_settings.state_dir) / "pem").string(), &why);
        if (cfg) {
            if (_enroller != nullptr) {
                _enroller->use_context((*cfg)->service_tls);
            }
            _cell->publish(std::move(*cfg));
            for (const auto& w : *_workers) {
                w->wake();
            }
            _version = view->config_version;
            _fleet_epoch = epoch;
            _stale = false;
            _republish = false;
            const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                                std::chrono::steady_clock::now() - t0)
                                .count();
            log::info("config_published", {{"version", _version},
                                           {"connectors", view->connectors.size()},
                                           {"apps", view->apps.size()},
                                           {"build_us", us}});
            return;
        }
    }
    if (!_stale) {
        log::error("config_stale", {{"reason", why}});
    }
    _stale = true;
}

void control_plane::upkeep(int64_t now) {
    if (_turns != nullptr && now >= _next_turn_check) {
        _next_turn_check = now + 1;
        if (!_turns->list().empty()) {
            auto view = _store->load();
            if (view) {
                _turns->expire(now, [&](const std::string& id) {
                    return std::any_of(view->connectors.begin(), view->connectors.end(),
                                       [&](const connector& c) { return c.id == id; });
                });
            }
        }
    }
    if (now >= _next_seen) {
        _next_seen = now + 30; // last_seen of active connectors, twice a minute
        for (const auto& [id, c] : _live) {
            if (c.tunnels > 0) {
                (void)_store->connector_seen(id, c.version, now);
            }
        }
    }
    if (now >= _next_purge) {
        _next_purge = now + std::clamp<int64_t>(_settings.inactive_purge_s / 4, 1, 60);
        auto p = _store->purge_inactive(_settings.inactive_purge_s, now);
        if (p && !p->value.empty()) {
            for (const auto& id : p->value) {
                log::info("connector_purged",
                          {{"connector", id}, {"inactive_s", _settings.inactive_purge_s}});
            }
        }
    }
}

std::string control_plane::metrics() {
    metrics_input in;
    in.counter_names = relay::relay_counter_names;
    in.counter_help = relay::relay_counter_help;
    static constexpr std::string_view k_gauges[] = {"tunnels_up", "user_conns_open",
                                                     "user_buffered_bytes"};
    in.gauge_names = k_gauges;
    for (const auto& w : *_workers) {
        std::vector<uint64_t> v(std::size_t(relay::relay_counter::count_));
        for (std::size_t i = 0; i < v.size(); ++i) {
            v[i] = w->counters().get(i);
        }
        in.workers.push_back(std::move(v));
    }
    auto view = _store->load();
    if (view) {
        std::map<std::tuple<std::string, std::string, std::string>, uint64_t> by;
        for (const auto& g : view->groups) {
            by[{g.tenant, g.name, "active"}] += 0;
            by[{g.tenant, g.name, "inactive"}] += 0;
        }
        for (const auto& c : view->connectors) {
            auto it = _live.find(c.id);
            bool active = it != _live.end() && it->second.tunnels > 0;
            by[{c.tenant, c.group, active ? "active" : "inactive"}] += 1;
        }
        for (const auto& [k, n] : by) {
            in.connectors.push_back({std::get<0>(k), std::get<1>(k), std::get<2>(k), n});
        }
        std::map<std::tuple<std::string, std::string, std::string>, uint64_t> versions;
        for (const auto& c : view->connectors) {
            versions[{c.tenant, c.group, c.version}] += 1;
        }
        for (const auto& [k, n] : versions) {
            in.connector_versions.push_back({std::get<0>(k), std::get<1>(k), std::get<2>(k), n});
        }
    }
    in.config_version = _version;
    in.uptime_s = uint64_t(unix_now() - _started);
    std::string text = render_prometheus(in);
    text += store_metrics(_store->health());
    if (_dpdk != nullptr) {
        text += _dpdk->metrics();
    }
    return text;
}

nlohmann::json control_plane::stats() {
    nlohmann::json j;
    nlohmann::json counters = nlohmann::json::object();
    for (std::size_t i = 0; i < std::size_t(relay::relay_counter::count_); ++i) {
        uint64_t sum = 0;
        for (const auto& w : *_workers) {
            sum += w->counters().get(i);
        }
        counters[std::string(relay::relay_counter_names[i])] = sum;
    }
    j["counters"] = counters;
    j["tunnels_up"] = counters["tunnels_up"];
    nlohmann::json conns = nlohmann::json::object();
    for (const auto& [id, c] : _live) {
        conns[id] = {{"tunnels", c.tunnels},
                     {"version", c.version},
                     {"status", c.tunnels > 0 ? "active" : "inactive"}};
    }
    j["connectors"] = conns;
    j["config_version"] = _version;
    const auto h = _store->health();
    j["config_stale"] = _stale || h.stale;
    j["store"] = store_json(h);
    if (_dpdk != nullptr) {
        j["dpdk"] = _dpdk->stats();
    }
    return j;
}

void control_plane::tick() {
    if (_admin) {
        _admin->poll(20);
    } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    drain_events();
    const auto now = std::chrono::steady_clock::now();
    if (now >= _next_version_check) {
        // Changes made outside the admin API (enrollment thread, another process) show up here.
        _next_version_check = now + std::chrono::milliseconds(50);
        sync_snapshot();
    }
    _cell->reclaim();
    upkeep(unix_now());
    if (!_opts.stats_file.empty() && now >= _next_stats) {
        _next_stats = now + std::chrono::milliseconds(200);
        write_atomically(_opts.stats_file, stats().dump());
    }
}

void control_plane::finish() {
    drain_events();
    if (!_opts.stats_file.empty()) {
        write_atomically(_opts.stats_file, stats().dump());
    }
}

// Enrollment (PROTOCOL.md step 5) on the enrollment thread with its own store connection.
enroll::enroll_reply enroll_one(store& st, const enroll::enroll_request& req,
                                uint16_t tunnel_port, const std::string& server_name,
                                const std::string& relay_ca_pem) {
    enroll::enroll_reply reply;
    cert_signer signer = [&](const tls::pem_pair& ca, const std::string& id,
                             const std::string& tenant) -> store_result<signed_cert> {
        std::string why;
        auto c = tls::sign_csr(ca, req.csr_pem, tls::identity{id, tenant, 365}, &why);
        if (!c) {
            return store_error{store_error::kind::refused, "invalid CSR: " + why};
        }
        return signed_cert{c->cert_pem, c->fingerprint};
    };
    auto r = st.enroll(req.token, req.name, req.version, signer, unix_now());
    if (!r) {
        reply.error = r.err().message;
        return reply;
    }
    reply.ok = true;
    reply.connector_id = r->value.id;
    reply.tenant = r->value.tenant;
    reply.group = r->value.group;
    reply.cert_pem = r->value.cert_pem;
    reply.ca_pem = relay_ca_pem;
    reply.tunnel_port = tunnel_port;
    reply.server_name = server_name;
    if (auto fleet = st.relays()) {
        // A fleet: the connector attaches to two of these (not to draining ones).
        for (const auto& f : fleet.value()) {
            if (!f.draining && !f.drain_requested && !f.address.empty()) {
                reply.relays.push_back(f.address);
            }
        }
    }
    log::info("connector_enrolled", {{"connector", reply.connector_id},
                                     {"tenant", reply.tenant},
                                     {"group", reply.group},
                                     {"name", req.name},
                                     {"version", req.version},
                                     {"peer", req.peer}});
    return reply;
}

// This relay's client context towards its fleet peers: a certificate "apprelay-peer <node>"
// (client and server use) from the relay CA, the chain the peer presents pinned to that CA.
result<std::shared_ptr<tls::client_context>> make_peer_tls(const relay_identity& id,
                                                          const relay_settings& settings,
                                                          const std::string& pem_dir,
                                                          std::string* why) {
    tls::leaf_options lo;
    lo.common_name = "apprelay-peer " + settings.fleet.node;
    lo.dns_names = {"apprelay-peer"};
    lo.server = true;
    lo.client = true;
    lo.days = 825;
    auto leaf = tls::issue_leaf({id.ca_cert_pem, id.ca_key_pem}, lo, why);
    if (!leaf) {
        return leaf.err();
    }
    auto chain = pem_file(pem_dir, leaf->cert_pem + id.ca_cert_pem, false, why);
    auto key = pem_file(pem_dir, leaf->key_pem, true, why);
    if (!chain || !key) {
        return error(errc::io_error, "cannot write the peer certificate");
    }
    tls::client_options co;
    co.pinned_ca_fingerprint = id.ca_fingerprint;
    co.client_cert = {*chain, *key};
    co.policy = settings.tunnel_tls;
    return tls::client_context::create(co, why);
}

// [limits] max_user_connections stays below the process's descriptor limit, so that users can
// never take the descriptors tunnels, peers, the store and the admin API need: the soft limit
// is raised to the hard one, a tenth of it (and 256) is kept in reserve, and the rest is the
// users' budget. 0 = that budget; a configured value above it is lowered to it, with a warning.
void apply_fd_budget(relay::relay_limits* lim) {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rlimit raised = rl;
        raised.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
            rl = raised;
        }
    }
    const uint64_t fds = std::min<uint64_t>(rl.rlim_cur, 100'000'000);
    const uint64_t reserve = 256 + fds / 10;
    const uint32_t budget = uint32_t(fds > reserve * 2 ? fds - reserve : fds / 2);
    if (lim->max_user_connections == 0) {
        lim->max_user_connections = budget;
    } else if (lim->max_user_connections > budget) {
        log::warn("limits_lowered", {{"key", "limits.max_user_connections"},
                                     {"configured", lim->max_user_connections},
                                     {"to", budget},
                                     {"reason", "above the descriptor limit less a reserve"},
                                     {"fd_limit", fds}});
        lim->max_user_connections = budget;
    }
    log::info("user_connection_budget",
              {{"max_user_connections", lim->max_user_connections}, {"fd_limit", fds}});
}

// SIGHUP (ExecReload): re-read the file and take what the running relay can take
// (control/reload.hh). `file` is the settings as last loaded from the file and becomes the new
// file with the live changes taken; `running` is what the control thread builds snapshots from.
// A file that does not load changes nothing: the relay keeps its settings and says why.
void reload_settings(const std::string& path, relay_settings* file, relay_settings* running,
                     control_plane* cp) {
    notify::reloading("reloading " + path);
    relay_settings next;
    std::string why;
    if (!load_settings(path, &next, &why) || !resolve_update_package(&next, &why)) {
        log::error("settings_reload_failed",
                   {{"file", path}, {"reason", why}, {"kept", "the running settings"}});
        notify::ready("reload failed, running on the previous settings: " + why);
        return;
    }
    const reload_plan plan = plan_reload(*file, next);
    if (!plan.live.empty()) {
        file->limits = plan.limits;
        running->limits = plan.limits;
        apply_fd_budget(&running->limits);
        cp->republish();
    }
    const std::string applied = describe(plan.live);
    const std::string restart = describe(plan.restart);
    log::info("settings_reloaded",
              {{"file", path}, {"applied", applied}, {"restart_needed", restart}});
    if (!plan.restart.empty()) {
        log::warn("settings_need_restart",
                  {{"file", path}, {"keys", restart}, {"reason", "bound at start"}});
    }
    notify::ready(
        plan.restart.empty()
            ? fmt::format("running; reloaded {} ({} change(s) applied)", path, plan.live.size())
            : fmt::format("running; reloaded {} ({} applied, {} need a restart: {})", path,
                          plan.live.size(), plan.restart.size(), restart));
}

} // namespace

int run_relay(const relay_options& opts, relay_signals& signals) {
    log::set_component("relay");
    std::string why;
    relay_settings settings;
    if (!load_settings(opts.config_path, &settings, &why) ||
        !resolve_update_package(&settings, &why)) {
        log::error("config_invalid", {{"file", opts.config_path}, {"reason", why}});
        return 2;
    }
    relay_settings file_settings = settings; // what SIGHUP compares a re-read file with
    apply_fd_budget(&settings.limits);
    const auto cpus = core::available_cpus();
    std::string spec = !opts.core_map.empty() ? opts.core_map : settings.core_map;
    if (spec.empty()) {
        spec = cpus.size() > 1 ? fmt_default_core_map(cpus) : "control=0,workers=0,shared=1";
    }
    auto cm = core::parse_core_map(spec, cpus, &why);
    if (!cm) {
        log::error("core_map_invalid", {{"core_map", spec}, {"reason", why}});
        return 2;
    }
    const std::size_t n = cm->worker_cpus.size();
    if (n > 0xFFFE) {
        log::error("core_map_invalid", {{"reason", "too many workers"}});
        return 2;
    }

    // State directory: the store and the PEM files OpenSSL loads (keys 0600, dir 0700).
    std::error_code ec;
    const auto state = std::filesystem::path(settings.state_dir);
    std::filesystem::create_directories(state / "pem", ec);
    if (ec) {
        log::error("state_dir_invalid", {{"dir", settings.state_dir}, {"reason", ec.message()}});
        return 2;
    }
    ::chmod(settings.state_dir.c_str(), 0700);
    const std::string db_path = (state / "apprelay.db").string();
    const std::string store_name =
        settings.store.kind == "etcd" ? "etcd " + settings.store.prefix : db_path;
    std::unique_ptr<store> main_store;
    std::unique_ptr<store> enroll_store;
    if (settings.store.kind == "etcd") {
        // The control thread's store follows the fleet's prefix and holds presence; the
        // enrollment thread's reads and writes etcd directly.
        auto eo = etcd_options_of(settings);
        settings.fleet.node = eo.fleet.node; // the snapshot leaves itself out of its peers
        auto st = etcd::etcd_store::open(eo, settings.server_name);
        if (!st) {
            log::error("store_failed", {{"store", store_name}, {"reason", st.err().message}});
            return 2;
        }
        eo.fleet.follow = false;
        auto es = etcd::etcd_store::open(eo, settings.server_name);
        if (!es) {
            log::error("store_failed", {{"store", store_name}, {"reason", es.err().message}});
            return 2;
        }
        main_store = std::move(st.value());
        enroll_store = std::move(es.value());
    } else {
        auto st = sqlite_store::open(db_path, settings.server_name);
        if (!st) {
            log::error("store_failed", {{"store", store_name}, {"reason", st.err().message}});
            return 2;
        }
        auto es = sqlite_store::open(db_path, settings.server_name);
        if (!es) {
            log::error("store_failed", {{"store", store_name}, {"reason", es.err().message}});
            return 2;
        }
        main_store = std::move(st.value());
        enroll_store = std::move(es.value());
        // After a restart nothing holds a tunnel yet: every connector starts inactive. (In a
        // fleet, status comes from the relays' leased presence, so there is nothing to reset.)
        auto view = main_store->load();
        if (view) {
            for (const auto& c : view->connectors) {
                if (c.status == connector_status::active) {
                    (void)main_store->set_connector_status(c.id, connector_status::inactive,
                                                           unix_now());
                }
            }
        }
    }
    std::unique_ptr<store>& store = main_store;
    auto view = store->load();
    if (!view) {
        log::error("store_failed", {{"store", store_name}, {"reason", view.err().message}});
        return 2;
    }
    for (const auto& w : view->warnings) {
        log::warn("store_entry_skipped", {{"reason", w}});
    }
    const relay_identity identity = view->relay;
    if (settings.store.kind == "etcd") {
        // The forwarding hop: a certificate of its own from the fleet's relay CA (client and
        // server use), and the peers' chains pinned to that CA (they present their server
        // certificate, whatever its name). Re-issued at every start.
        auto ctx = make_peer_tls(identity, settings, (state / "pem").string(), &why);
        if (!ctx) {
            log::error("tls_invalid", {{"reason", "peer certificate: " + why}});
            return 2;
        }
        settings.peer_client_tls = *ctx;
    }
    auto first = build_relay_config(view.value(), settings, (state / "pem").string(), &why);
    if (!first) {
        log::error("tls_invalid", {{"reason", why}});
        return 2;
    }

    std::vector<int> user_fds, tunnel_fds;
    uint16_t user_port = 0, tunnel_port = 0, enroll_port = 0;
    // Declared before the workers: their loops use its port's queues, so it goes after them.
    std::unique_ptr<dpdk_backend> dpdk;
    if (settings.io == "dpdk") {
        // User and tunnel listeners live in each worker's user-space stack, on the port's address.
        user_port = port_of_host_port(settings.user_listen);
        tunnel_port = port_of_host_port(settings.tunnel_listen);
        dpdk = dpdk_backend::start(settings, *cm, &why);
        if (!dpdk) {
            log::error("dpdk_failed", {{"reason", why}});
            return 2;
        }
        log::info("dpdk_port", {{"port", dpdk->describe().dump()}});
    } else if (!make_listeners(settings.user_listen, n, &user_fds, &user_port, &why) ||
               !make_listeners(settings.tunnel_listen, n, &tunnel_fds, &tunnel_port, &why)) {
        log::error("listen_failed", {{"reason", why}});
        return 2;
    }
    auto enroll_fd = make_single_listener(settings.enroll_listen, &enroll_port, &why);
    if (!enroll_fd) {
        log::error("listen_failed", {{"reason", why}});
        return 2;
    }
    auto chain = pem_file((state / "pem").string(), identity.server_cert_pem + identity.ca_cert_pem,
                          false, &why);
    auto key = pem_file((state / "pem").string(), identity.server_key_pem, true, &why);
    if (!chain || !key) {
        log::error("state_dir_invalid", {{"reason", why}});
        return 2;
    }
    enroll::server_options eo;
    eo.listen_fd = *enroll_fd;
    eo.cert_chain_pem_path = *chain;
    eo.key_pem_path = *key;
    control::store* es = enroll_store.get();
    update_turns turns(settings.update_lease_s);
    connector_service service(*es, settings, turns);
    eo.service = [&service](const enroll::service_request& req) {
        return service.handle(req, unix_now());
    };
    auto enroller = enroll::server::start(
        eo,
        [es, tunnel_port, &settings, &identity](const enroll::enroll_request& req) {
            return enroll_one(*es, req, tunnel_port, settings.server_name, identity.ca_cert_pem);
        },
        &why);
    if (!enroller) {
        log::error("enroll_failed", {{"reason", why}});
        return 2;
    }
    (*enroller)->use_context((*first)->service_tls);

    const uint64_t first_version = view->config_version;
    relay::config_cell cell(n, std::move(*first));
    std::vector<std::unique_ptr<relay::worker>> workers;
    for (std::size_t i = 0; i < n; ++i) {
        workers.push_back(std::make_unique<relay::worker>(uint16_t(i), uint16_t(n), &cell));
        if (dpdk) {
            workers.back()->set_listeners(io::listen_spec{.port = user_port},
                                          io::listen_spec{.port = tunnel_port});
            workers.back()->set_loop_factory(dpdk->factory());
        } else {
            workers.back()->set_listeners(io::listen_spec{.fd = user_fds[i]},
                                          io::listen_spec{.fd = tunnel_fds[i]});
        }
    }
    // Hand-over rings: one per ordered pair of workers.
    std::vector<std::unique_ptr<core::spsc_ring<relay::handoff_msg>>> rings(n * n);
    for (std::size_t from = 0; from < n; ++from) {
        for (std::size_t to2 = 0; to2 < n; ++to2) {
            if (from != to2) {
                rings[from * n + to2] = std::make_unique<core::spsc_ring<relay::handoff_msg>>(1024);
            }
        }
    }
    for (std::size_t i = 0; i < n; ++i) {
        std::vector<relay::worker*> peers;
        std::vector<core::spsc_ring<relay::handoff_msg>*> in(n, nullptr), out(n, nullptr);
        for (std::size_t j = 0; j < n; ++j) {
            peers.push_back(workers[j].get());
            if (i != j) {
                in[j] = rings[j * n + i].get();
                out[j] = rings[i * n + j].get();
            }
        }
        workers[i]->set_peers(std::move(peers), std::move(in), std::move(out));
    }

    if (settings.fleet.address.empty()) {
        // The bound tunnel listener (a configured port 0 is known only now).
        const auto& tl = settings.tunnel_listen;
        store->set_fleet_address(tl.substr(0, tl.rfind(':')) + ":" + std::to_string(tunnel_port));
    }
    control_plane cp(settings, opts, std::move(store), &cell, &workers, first_version);
    cp.set_dpdk(dpdk.get());
    cp.set_enroller(enroller->get());
    cp.set_turns(&turns);
    http_server_options ho;
    ho.socket_path = settings.admin_socket;
    ho.tcp_listen = settings.admin_listen;
    ho.tcp_token = settings.admin_token;
    ho.open_get_paths = {"/"}; // the status page: its data requests carry the token
    auto admin = http_server::create(ho, [&cp](const http_request& r) { return cp.handle(r); });
    if (!admin) {
        log::error("admin_failed", {{"reason", admin.error}});
        return 2;
    }
    const uint16_t admin_port = admin.server->tcp_port();
    cp.set_admin(std::move(admin.server));
    cp.set_status({{"version", APPRELAY_VERSION},
                   {"workers", n},
                   {"io", settings.io},
                   {"user_port", user_port},
                   {"tunnel_port", tunnel_port},
                   {"enroll_port", enroll_port},
                   {"latest_connector_version", settings.latest_connector_version},
                   {"min_connector_version", settings.min_connector_version}});

    std::atomic<bool> worker_stop{false};
    std::atomic<int> failed{0};
    std::atomic<std::size_t> finished{0};
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < n; ++i) {
        threads.emplace_back([&, i] {
            std::string pwhy;
            auto pr = core::pin_current_thread(cm->worker_cpus[i], &pwhy);
            if (!pr) {
                log::warn("pin_failed", {{"worker", i}, {"reason", pwhy}});
            }
            std::string rwhy;
            if (!workers[i]->run(worker_stop, &rwhy)) {
                log::error("worker_failed", {{"worker", i}, {"reason", rwhy}});
                failed.fetch_add(1);
            }
            finished.fetch_add(1);
        });
    }
    {
        std::string pwhy;
        (void)core::pin_current_thread(cm->control_cpu, &pwhy);
    }
    log::info("listening", {{"user_port", user_port},
                            {"tunnel_port", tunnel_port},
                            {"enroll_port", enroll_port},
                            {"admin_socket", settings.admin_socket},
                            {"admin_port", admin_port},
                            {"workers", n},
                            {"config_version", first_version},
                            {"core_map", core::to_string(*cm)}});
    if (!opts.ready_file.empty()) {
        nlohmann::json r = {{"pid", getpid()},
                            {"user_port", user_port},
                            {"tunnel_port", tunnel_port},
                            {"enroll_port", enroll_port},
                            {"admin_socket", settings.admin_socket},
                            {"admin_port", admin_port},
                            {"relay_ca_fingerprint", identity.ca_fingerprint},
                            {"workers", n}};
        write_atomically(opts.ready_file, r.dump());
    }
    notify::ready(fmt::format("running: user port {}, tunnel port {}, enroll port {}, {} worker(s)",
                              user_port, tunnel_port, enroll_port, n));
    bool drain_asked = false;
    while (!signals.stop.load() && failed.load() == 0) {
        cp.tick();
        if (signals.reload.exchange(false)) {
            reload_settings(opts.config_path, &file_settings, &settings, &cp);
        }
        if (cp.drain_requested()) {
            drain_asked = true; // `apprelayctl relays drain NODE`, taken by any relay
            break;
        }
    }
    const char* stop_reason = failed.load() ? "worker failed"
                              : drain_asked ? "drain requested"
                                            : "signal";
    log::info("stopping", {{"reason", stop_reason}});
    notify::stopping(fmt::format("draining ({}), at most {} ms", stop_reason,
                                 settings.limits.drain_deadline_ms));
    // Peers and connectors see this relay draining while its streams finish.
    cp.mark_draining();
    (*enroller)->stop();
    worker_stop.store(true);
    for (auto& w : workers) {
        w->wake();
    }
    // Keep answering the admin API and collecting events while the workers drain.
    while (finished.load() < n) {
        cp.tick();
    }
    for (auto& t : threads) {
        t.join();
    }
    cp.finish();
    for (int fd : user_fds) {
        ::close(fd);
    }
    for (int fd : tunnel_fds) {
        ::close(fd);
    }
    log::info("stopped");
    return failed.load() ? 1 : 0;
}

} // namespace apprelay::control
