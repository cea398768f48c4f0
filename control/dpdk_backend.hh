#pragma once
// The relay's kernel-bypass data path ([relay] io = "dpdk"), set up by the control thread:
// EAL from [dpdk] checked against the core map, one port with an RX/TX queue pair per worker,
// and the loop factory that gives each worker its io::stack_loop (apprelay's TCP/IP on its
// queue). The control thread also reads the port's xstats, the queues' and the stacks'
// counters for /metrics and the stats file. Enrollment and the admin API stay on kernel
// sockets (the management network).
#include "control/settings.hh"
#include "dataplane/core/core_map.hh"
#include "dataplane/relay/worker.hh"

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace apprelay::control {

class dpdk_backend {
public:
    // nullptr with *why when EAL or the port cannot start, or when this build has no DPDK.
    static std::unique_ptr<dpdk_backend> start(const relay_settings& s, const core::core_map& map,
                                               std::string* why);
    ~dpdk_backend(); // after the workers have stopped: stops the port, then EAL
    dpdk_backend(const dpdk_backend&) = delete;
    dpdk_backend& operator=(const dpdk_backend&) = delete;

    relay::worker::loop_factory factory();
    // Prometheus text: apprelay_dpdk_port{stat=...}, apprelay_dpdk_<loop counter>{worker},
    // apprelay_net_<stack counter>_total{worker}.
    std::string metrics() const;
    nlohmann::json stats() const;
    // For logs: driver, MAC, steering mode.
    nlohmann::json describe() const;

    struct impl;

private:
    explicit dpdk_backend(std::unique_ptr<impl> i);
    std::unique_ptr<impl> _impl;
};

} // namespace apprelay::control
