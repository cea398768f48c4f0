#pragma once
// One ethdev port of the dpdk backend: configured with one RX/TX queue pair per worker, an
// mbuf pool on the port's NUMA socket, the MTU, promiscuous mode off, and flow spreading by
// RSS (symmetric Toeplitz key) when the NIC offers it, else software steering between the
// workers' queues (see queue.hh). The control thread opens, starts, reads stats and closes it;
// each worker thread uses only its own queue.
//
//   port_settings ps; ps.name = "net_tap0"; ps.workers = 2;
//   auto p = port::open(ps, &why);   // after init_eal()
//   p.value()->start(&why);
//   queue& q = p.value()->worker_queue(w);  // hand to worker w
#include "dataplane/base/result.hh"
#include "dataplane/io/dpdk/queue.hh"
#include "dataplane/net/stack.hh"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct rte_mempool;
struct rte_ring;

namespace apprelay::io::dpdk {

struct port_settings {
    // ethdev name: a vdev ("net_tap0", "net_af_packet0") or a PCI address ("0000:03:00.0").
    std::string name;
    uint16_t workers = 1;           // one RX/TX queue pair each
    uint16_t rx_descriptors = 1024; // per queue; the driver may round (adjust_nb_rx_tx_desc)
    uint16_t tx_descriptors = 1024;
    uint16_t mtu = 1500;             // must fit one mbuf (no scatter): <= 2048 - 18
    uint32_t steer_ring_size = 1024; // per worker pair (software steering and ARP copies)
    // false: software steering even when the NIC has RSS. net_tap, for one, reports RSS but its
    // queues are chosen by the kernel's own flow hash, not by our key.
    bool allow_rss = true;
    // Loss mode, for tests and demonstrations of recovery on a clean virtual link: every Nth
    // frame each queue receives, and every Nth it sends, is dropped and counted (0 = off).
    uint32_t loss_every = 0;
};

struct port_caps {
    std::string driver;
    uint64_t rss_offloads = 0; // dev_info.flow_type_rss_offloads (RTE_ETH_RSS_*)
    uint16_t hash_key_size = 0;
    uint16_t max_rx_queues = 0;
    uint16_t max_tx_queues = 0;
    uint16_t min_mtu = 0;
    uint16_t max_mtu = 0;
    // Checksum offloads the NIC has. They are reported, not enabled: net::link carries no
    // per-frame offload metadata yet, so the stack computes and checks checksums in software.
    bool rx_ipv4_cksum = false;
    bool rx_tcp_cksum = false;
    bool tx_ipv4_cksum = false;
    bool tx_tcp_cksum = false;
};

struct link_status {
    bool up = false;
    uint32_t speed_mbps = 0; // 0 = unknown
    bool full_duplex = false;
};

struct named_value {
    std::string name; // [a-z0-9_], no prefix: the control thread adds "apprelay_dpdk_" etc.
    uint64_t value = 0;
};

class port {
public:
    // Finds the ethdev by name, configures it and its queues (not started). Needs EAL running.
    static result<std::unique_ptr<port>> open(const port_settings& s, std::string* why);
    // Stops and closes the ethdev, then frees rings and the pool. Workers must have stopped
    // using their queues (and flushed) before.
    ~port();
    port(const port&) = delete;
    port& operator=(const port&) = delete;

    // rte_eth_dev_start, then promiscuous off and the RSS redirection table read back.
    result<void> start(std::string* why);
    void stop() noexcept;

    uint16_t port_id() const noexcept { return _port_id; }
    const std::string& name() const noexcept { return _settings.name; }
    uint16_t workers() const noexcept { return _settings.workers; }
    steering steering_mode() const noexcept { return _mode; }
    const port_caps& caps() const noexcept { return _caps; }
    net::mac_addr mac() const noexcept { return _mac; }
    link_status link() const noexcept; // does not wait for autonegotiation
    // Mbufs in the pool, and how that number was chosen (see port.cc).
    uint32_t pool_size() const noexcept { return _pool_size; }

    queue& worker_queue(uint16_t worker) noexcept { return *_queues[worker]; }

    // Which worker receives the TCP flow's frames, so an active open can choose a local port
    // that comes back to its own worker. Host byte order. single/software: exact. rss: the
    // NIC's Toeplitz hash over our key and its redirection table, when the driver reports a
    // table (not_supported otherwise, e.g. net_tap).
    result<uint16_t> worker_for_flow(uint32_t local_ip, uint16_t local_port, uint32_t remote_ip,
                                     uint16_t remote_port) const noexcept;

    // Control thread: the driver's xstats (name prefixed "xstat_") and each queue's counters
    // ("q<N>_<counter>"), for Prometheus lines.
    std::vector<named_value> stats() const;

private:
    port() = default;
    result<void> configure(std::string* why);

    port_settings _settings;
    uint16_t _port_id = 0;
    bool _configured = false;
    bool _started = false;
    steering _mode = steering::single;
    port_caps _caps;
    net::mac_addr _mac{};
    uint32_t _pool_size = 0;
    rte_mempool* _pool = nullptr;
    std::vector<uint8_t> _rss_key;
    std::vector<uint16_t> _reta;   // queue per redirection-table entry; empty if not reported
    std::vector<rte_ring*> _rings; // [from * workers + to], nullptr on the diagonal
    std::vector<std::unique_ptr<queue>> _queues;
};

} // namespace apprelay::io::dpdk
