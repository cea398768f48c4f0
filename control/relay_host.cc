#include "control/relay_host.hh"

#include "control/static_config.hh"
#include "dataplane/base/log.hh"
#include "dataplane/core/core_map.hh"
#include "dataplane/relay/worker.hh"
#include "tls/context.hh"

#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <netdb.h>
#include <nlohmann/json.hpp>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>

namespace apprelay::control {
namespace {

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

// Live tunnels per connector id and the version each reported, from the workers' events.
struct connector_live {
    uint32_t tunnels = 0;
    std::string version;
};
using live_map = std::unordered_map<std::string, connector_live>;

void drain_events(const std::vector<std::unique_ptr<relay::worker>>& workers, live_map* live) {
    for (const auto& w : workers) {
        relay::tunnel_event e;
        while (w->events().try_pop(e)) {
            auto& c = (*live)[e.connector_id];
            if (e.what == relay::tunnel_event::kind::up) {
                ++c.tunnels;
                c.version = e.version;
            } else if (c.tunnels > 0) {
                --c.tunnels;
            }
        }
    }
}

std::string stats_json(const relay::snapshot& snap,
                       const std::vector<std::unique_ptr<relay::worker>>& workers,
                       const live_map& live) {
    nlohmann::json j;
    nlohmann::json counters = nlohmann::json::object();
    for (std::size_t i = 0; i < std::size_t(relay::relay_counter::count_); ++i) {
        uint64_t sum = 0;
        for (const auto& w : workers) {
            sum += w->counters().get(i);
        }
        counters[std::string(relay::relay_counter_names[i])] = sum;
    }
    j["counters"] = counters;
    j["tunnels_up"] = counters["tunnels_up"];
    nlohmann::json conns = nlohmann::json::object();
    for (std::size_t c = 0; c < snap.connectors.size(); ++c) {
        auto it = live.find(snap.connectors[c].id);
        uint32_t n = it == live.end() ? 0 : it->second.tunnels;
        conns[snap.connectors[c].id] = {{"tunnels", n},
                                        {"group", snap.groups[snap.connectors[c].group].name},
                                        {"status", n > 0 ? "active" : "inactive"}};
    }
    j["connectors"] = conns;
    j["config_version"] = snap.version;
    return j.dump();
}

// Default: control on the first cpu, one worker on each other cpu.
std::string fmt_default_core_map(const std::vector<int>& cpus) {
    std::string s = "control=" + std::to_string(cpus[0]) + ",workers=";
    for (std::size_t i = 1; i < cpus.size(); ++i) {
        s += (i > 1 ? "," : "") + std::to_string(cpus[i]);
    }
    return s;
}

} // namespace

int run_relay(const relay_options& opts, const std::atomic<bool>& stop) {
    log::set_component("relay");
    std::string why;
    loaded_config cfg;
    if (!load_static_config(opts.config_path, &cfg, &why)) {
        log::error("config_invalid", {{"file", opts.config_path}, {"reason", why}});
        return 2;
    }
    const auto cpus = core::available_cpus();
    std::string spec = !opts.core_map.empty() ? opts.core_map : cfg.relay.core_map;
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

    // TLS: user listener selects the app's certificate by SNI; tunnel listener is mutual TLS
    // against every tenant CA (the tenant is then checked through the connector's record).
    tls::server_options uo;
    uo.default_cert = {cfg.relay.cert_path, cfg.relay.key_path};
    uo.unknown_sni_fails = true;
    for (std::size_t i = 0; i < cfg.snap->apps.size(); ++i) {
        const auto& a = cfg.snap->apps[i];
        uo.sni.push_back({a.hostname, {a.cert_path, a.key_path}, uint32_t(i)});
    }
    auto user_tls = tls::server_context::create(uo, &why);
    if (!user_tls) {
        log::error("tls_invalid", {{"listener", "user"}, {"reason", why}});
        return 2;
    }
    tls::server_options to;
    to.default_cert = {cfg.relay.cert_path, cfg.relay.key_path};
    for (const auto& t : cfg.snap->tenants) {
        to.client_ca_pem_paths.push_back(t.ca_path);
    }
    auto tunnel_tls = tls::server_context::create(to, &why);
    if (!tunnel_tls) {
        log::error("tls_invalid", {{"listener", "tunnel"}, {"reason", why}});
        return 2;
    }

    std::vector<int> user_fds, tunnel_fds;
    uint16_t user_port = 0, tunnel_port = 0;
    if (!make_listeners(cfg.relay.user_listen, n, &user_fds, &user_port, &why) ||
        !make_listeners(cfg.relay.tunnel_listen, n, &tunnel_fds, &tunnel_port, &why)) {
        log::error("listen_failed", {{"reason", why}});
        return 2;
    }

    auto first = std::make_unique<relay::relay_config>();
    first->snap = cfg.snap;
    first->user_tls = *user_tls;
    first->tunnel_tls = *tunnel_tls;
    relay::config_cell cell(n, std::move(first));
    std::vector<std::unique_ptr<relay::worker>> workers;
    for (std::size_t i = 0; i < n; ++i) {
        workers.push_back(std::make_unique<relay::worker>(uint16_t(i), uint16_t(n), &cell));
        workers.back()->set_listeners(user_fds[i], tunnel_fds[i]);
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

    std::atomic<bool> worker_stop{false};
    std::atomic<int> failed{0};
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
        });
    }
    {
        std::string pwhy;
        (void)core::pin_current_thread(cm->control_cpu, &pwhy);
    }
    log::info("listening", {{"user_port", user_port},
                            {"tunnel_port", tunnel_port},
                            {"workers", n},
                            {"core_map", core::to_string(*cm)}});
    if (!opts.ready_file.empty()) {
        nlohmann::json r = {{"pid", getpid()},
                            {"user_port", user_port},
                            {"tunnel_port", tunnel_port},
                            {"workers", n}};
        write_atomically(opts.ready_file, r.dump());
    }
    live_map live;
    while (!stop.load() && failed.load() == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        drain_events(workers, &live);
        cell.reclaim();
        if (!opts.stats_file.empty()) {
            write_atomically(opts.stats_file, stats_json(*cfg.snap, workers, live));
        }
    }
    log::info("stopping", {{"reason", failed.load() ? "worker failed" : "signal"}});
    worker_stop.store(true);
    for (auto& w : workers) {
        w->wake();
    }
    for (auto& t : threads) {
        t.join();
    }
    drain_events(workers, &live);
    if (!opts.stats_file.empty()) {
        write_atomically(opts.stats_file, stats_json(*cfg.snap, workers, live));
    }
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
