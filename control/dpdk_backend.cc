#include "control/dpdk_backend.hh"

#include <fmt/format.h>

#ifdef APPRELAY_HAVE_DPDK
#include "dataplane/io/dpdk/eal.hh"
#include "dataplane/io/dpdk/loop.hh"
#include "dataplane/io/dpdk/port.hh"

#include <atomic>
#include <vector>
#endif

namespace apprelay::control {

#ifdef APPRELAY_HAVE_DPDK

namespace {

std::string default_lcores(const core::core_map& map) {
    // The main lcore first: EAL pins the calling (control) thread there.
    std::string s = std::to_string(map.control_cpu);
    for (int c : map.worker_cpus) {
        if (c != map.control_cpu) {
            s += "," + std::to_string(c);
        }
    }
    return s;
}

std::string port_name(const dpdk_settings& d) {
    if (!d.port.empty()) {
        return d.port;
    }
    if (!d.vdev.empty()) {
        return d.vdev[0].substr(0, d.vdev[0].find(','));
    }
    if (!d.allow.empty()) {
        return d.allow[0].substr(0, d.allow[0].find(','));
    }
    return {};
}

} // namespace

struct dpdk_backend::impl {
    std::unique_ptr<io::dpdk::port> port;
    net::stack_config stack;
    // Each worker's loop, published by the worker thread once made; read by the control thread.
    std::vector<std::atomic<io::stack_loop*>> loops;
    explicit impl(std::size_t n) : loops(n) {}
};

dpdk_backend::dpdk_backend(std::unique_ptr<impl> i) : _impl(std::move(i)) {}

dpdk_backend::~dpdk_backend() {
    if (_impl->port) {
        _impl->port->stop();
        _impl->port.reset();
    }
    io::dpdk::cleanup_eal();
}

std::unique_ptr<dpdk_backend> dpdk_backend::start(const relay_settings& s,
                                                  const core::core_map& map, std::string* why) {
    const auto& d = s.dpdk;
    io::dpdk::eal_settings e;
    e.program_name = "apprelay";
    e.lcores = d.lcores.empty() ? default_lcores(map) : d.lcores;
    e.allow = d.allow;
    e.vdevs = d.vdev;
    e.file_prefix = d.file_prefix;
    e.no_huge = d.no_huge;
    e.memory_mb = d.memory_mb;
    e.no_pci = d.no_pci;
    // No multi-process runtime files or telemetry socket: the relay is the port's only user,
    // and a crashed relay leaves nothing under /var/run/dpdk that blocks the next start.
    e.extra = {"--no-shconf", "--no-telemetry"};
    if (auto r = io::dpdk::check_against_core_map(e, map, why); !r) {
        *why = "dpdk.lcores: " + *why;
        return nullptr;
    }
    if (auto r = io::dpdk::init_eal(e, why); !r) {
        *why = "EAL: " + *why;
        return nullptr;
    }
    auto i = std::make_unique<impl>(map.worker_cpus.size());
    io::dpdk::port_settings ps;
    ps.name = port_name(d);
    if (ps.name.empty()) {
        *why = "dpdk.port: no port named (and no dpdk.vdev or dpdk.allow to take it from)";
        io::dpdk::cleanup_eal();
        return nullptr;
    }
    ps.workers = uint16_t(map.worker_cpus.size());
    ps.mtu = uint16_t(d.mtu);
    ps.loss_every = d.loss_every;
    auto p = io::dpdk::port::open(ps, why);
    if (!p) {
        *why = "dpdk port " + ps.name + ": " + *why;
        io::dpdk::cleanup_eal();
        return nullptr;
    }
    i->port = std::move(*p);
    if (auto r = i->port->start(why); !r) {
        *why = "dpdk port " + ps.name + ": " + *why;
        i->port.reset();
        io::dpdk::cleanup_eal();
        return nullptr;
    }
    i->stack.mac = i->port->mac();
    i->stack.ipv4 = d.ipv4;
    i->stack.prefix_len = d.prefix_len;
    i->stack.gateway = d.gateway_ipv4;
    i->stack.mtu = uint16_t(d.mtu);
    i->stack.tcp.rcv_buf = std::max<uint32_t>(s.limits.initial_window, 256 * 1024);
    i->stack.tcp.user_timeout_ms = 20'000; // RELIABILITY.md: TCP_USER_TIMEOUT 20 s
    return std::unique_ptr<dpdk_backend>(new dpdk_backend(std::move(i)));
}

relay::worker::loop_factory dpdk_backend::factory() {
    impl* i = _impl.get();
    return [i](uint16_t w, std::string* why) -> result<std::unique_ptr<io::loop>> {
        auto l = io::dpdk::make_worker_loop(*i->port, w, i->stack, why);
        if (!l) {
            return l.err();
        }
        i->loops[w].store(l->get(), std::memory_order_release);
        return std::unique_ptr<io::loop>(std::move(*l));
    };
}

std::string dpdk_backend::metrics() const {
    std::string out;
    out += "# HELP apprelay_dpdk_port DPDK port statistics: the driver's xstats and each worker "
           "queue's counters\n# TYPE apprelay_dpdk_port gauge\n";
    for (const auto& v : _impl->port->stats()) {
        out += fmt::format("apprelay_dpdk_port{{port=\"{}\",stat=\"{}\"}} {}\n",
                           _impl->port->name(), v.name, v.value);
    }
    for (std::size_t c = 0; c < std::size_t(io::stack_loop_counter::count_); ++c) {
        const auto name = io::stack_loop_counter_names[c];
        const bool level = name == "tcp_connections";
        out += fmt::format("# HELP apprelay_dpdk_{}{} {}\n# TYPE apprelay_dpdk_{}{} {}\n", name,
                           level ? "" : "_total", io::stack_loop_counter_help[c], name,
                           level ? "" : "_total", level ? "gauge" : "counter");
        for (std::size_t w = 0; w < _impl->loops.size(); ++w) {
            if (auto* l = _impl->loops[w].load(std::memory_order_acquire)) {
                out += fmt::format("apprelay_dpdk_{}{}{{worker=\"{}\"}} {}\n", name,
                                   level ? "" : "_total", w, l->counters().get(c));
            }
        }
    }
    for (std::size_t c = 0; c < std::size_t(net::counter::count_); ++c) {
        const char* name = net::counter_name(net::counter(c));
        out += fmt::format("# TYPE apprelay_net_{}_total counter\n", name);
        for (std::size_t w = 0; w < _impl->loops.size(); ++w) {
            if (auto* l = _impl->loops[w].load(std::memory_order_acquire)) {
                out += fmt::format("apprelay_net_{}_total{{worker=\"{}\"}} {}\n", name, w,
                                   l->published(net::counter(c)));
            }
        }
    }
    return out;
}

nlohmann::json dpdk_backend::stats() const {
    nlohmann::json j = nlohmann::json::object();
    nlohmann::json port = nlohmann::json::object();
    for (const auto& v : _impl->port->stats()) {
        port[v.name] = v.value;
    }
    j["port"] = port;
    nlohmann::json loops = nlohmann::json::array();
    for (std::size_t w = 0; w < _impl->loops.size(); ++w) {
        nlohmann::json lj = nlohmann::json::object();
        if (auto* l = _impl->loops[w].load(std::memory_order_acquire)) {
            for (std::size_t c = 0; c < std::size_t(io::stack_loop_counter::count_); ++c) {
                lj[std::string(io::stack_loop_counter_names[c])] = l->counters().get(c);
            }
            nlohmann::json net = nlohmann::json::object();
            for (std::size_t c = 0; c < std::size_t(net::counter::count_); ++c) {
                net[net::counter_name(net::counter(c))] = l->published(net::counter(c));
            }
            lj["net"] = net;
        }
        loops.push_back(lj);
    }
    j["workers"] = loops;
    return j;
}

nlohmann::json dpdk_backend::describe() const {
    const auto& p = *_impl->port;
    const auto m = p.mac();
    const char* mode = p.steering_mode() == io::dpdk::steering::rss        ? "rss"
                       : p.steering_mode() == io::dpdk::steering::software ? "software"
                                                                           : "single";
    return {{"port", p.name()},
            {"driver", p.caps().driver},
            {"mac", fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2],
                                m[3], m[4], m[5])},
            {"queues", p.workers()},
            {"steering", mode},
            {"mbufs", p.pool_size()}};
}

#else // no DPDK in this build

struct dpdk_backend::impl {};
dpdk_backend::dpdk_backend(std::unique_ptr<impl> i) : _impl(std::move(i)) {}
dpdk_backend::~dpdk_backend() = default;

std::unique_ptr<dpdk_backend> dpdk_backend::start(const relay_settings&, const core::core_map&,
                                                  std::string* why) {
    *why = "relay.io = \"dpdk\": this apprelay was built without DPDK (install libdpdk-dev and "
           "rebuild)";
    return nullptr;
}

relay::worker::loop_factory dpdk_backend::factory() {
    return {};
}
std::string dpdk_backend::metrics() const {
    return {};
}
nlohmann::json dpdk_backend::stats() const {
    return nlohmann::json::object();
}
nlohmann::json dpdk_backend::describe() const {
    return nlohmann::json::object();
}

#endif

} // namespace apprelay::control
