#include "dataplane/io/dpdk/port.hh"

#include "dataplane/base/log.hh"
#include "dataplane/io/dpdk/eal.hh"
#include "dataplane/io/dpdk/steer.hh"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_thash.h>

namespace apprelay::io::dpdk {
namespace {

// Per-lcore mempool cache. Large enough that a burst of 32 allocations or frees rarely touches
// the shared pool ring; a cache may grow to 1.5x this before flushing, counted in the pool size.
constexpr unsigned k_mbuf_cache = 256;
// Mbufs beyond the computed in-flight bound: ARP copies, frames being handed over between the
// NIC and a worker, and rounding slack for drivers that hold a few extra per queue.
constexpr unsigned k_pool_margin = 1024;
// Ethernet header + FCS + one VLAN tag must fit next to the MTU in one mbuf: no scatter RX.
constexpr unsigned k_l2_overhead = RTE_ETHER_HDR_LEN + RTE_ETHER_CRC_LEN + RTE_VLAN_HLEN;
// Symmetric Toeplitz: repeating 0x6d5a makes hash(src,dst) == hash(dst,src) for IPv4 TCP
// (Woo & Park, "Scalable TCP Session Monitoring with Symmetric RSS", 2012), so both directions
// of a flow reach one queue.
constexpr uint8_t k_sym_key_hi = 0x6d;
constexpr uint8_t k_sym_key_lo = 0x5a;
constexpr uint16_t k_default_key_size = 40;

bool fail(std::string* why, std::string msg) {
    if (why != nullptr) {
        *why = std::move(msg);
    }
    log::error("dpdk_port_error", {{"reason", why != nullptr ? *why : std::string{}}});
    return false;
}

std::string rte_reason(int rc) {
    const int e = rc < 0 ? -rc : rc;
    return std::string(rte_strerror(e)) + " (" + std::to_string(e) + ")";
}

std::string available_ports() {
    std::string out;
    uint16_t id = 0;
    RTE_ETH_FOREACH_DEV(id) {
        char name[RTE_ETH_NAME_MAX_LEN];
        if (rte_eth_dev_get_name_by_port(id, name) == 0) {
            out += out.empty() ? "" : ", ";
            out += name;
        }
    }
    return out.empty() ? "none" : out;
}

std::string metric_name(const char* s) {
    std::string out;
    for (const char* p = s; *p != '\0'; ++p) {
        const char c = *p;
        const bool keep = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
        out += keep ? c : (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : '_';
    }
    return out;
}

} // namespace

result<std::unique_ptr<port>> port::open(const port_settings& s, std::string* why) {
    if (!eal_running()) {
        fail(why, "cannot open dpdk port " + s.name + ": EAL is not running");
        return error(errc::not_allowed, "EAL not running");
    }
    if (s.workers == 0 || s.workers > RTE_MAX_LCORE) {
        fail(why, "dpdk port " + s.name + ": workers must be 1.." + std::to_string(RTE_MAX_LCORE));
        return error(errc::invalid_argument, "bad worker count");
    }
    if (!std::has_single_bit(s.steer_ring_size)) {
        fail(why, "dpdk port " + s.name + ": steer_ring_size " + std::to_string(s.steer_ring_size) +
                      " is not a power of two");
        return error(errc::invalid_argument, "steer ring size not a power of two");
    }
    std::unique_ptr<port> p(new port());
    p->_settings = s;
    if (rte_eth_dev_get_port_by_name(s.name.c_str(), &p->_port_id) != 0) {
        fail(why, "no dpdk port named " + s.name + " (ports: " + available_ports() + ")");
        return error(errc::not_found, "no such dpdk port");
    }
    auto r = p->configure(why);
    if (!r) {
        return r.err();
    }
    return p;
}

result<void> port::configure(std::string* why) {
    const std::string& name = _settings.name;
    const uint16_t workers = _settings.workers;
    rte_eth_dev_info info{};
    int rc = rte_eth_dev_info_get(_port_id, &info);
    if (rc != 0) {
        fail(why, "dpdk port " + name + ": rte_eth_dev_info_get: " + rte_reason(rc));
        return error(errc::io_error, "rte_eth_dev_info_get failed");
    }
    _caps.driver = info.driver_name != nullptr ? info.driver_name : "";
    _caps.rss_offloads = info.flow_type_rss_offloads;
    _caps.hash_key_size = info.hash_key_size;
    _caps.max_rx_queues = info.max_rx_queues;
    _caps.max_tx_queues = info.max_tx_queues;
    _caps.min_mtu = info.min_mtu;
    _caps.max_mtu = info.max_mtu;
    _caps.rx_ipv4_cksum = (info.rx_offload_capa & RTE_ETH_RX_OFFLOAD_IPV4_CKSUM) != 0;
    _caps.rx_tcp_cksum = (info.rx_offload_capa & RTE_ETH_RX_OFFLOAD_TCP_CKSUM) != 0;
    _caps.tx_ipv4_cksum = (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_IPV4_CKSUM) != 0;
    _caps.tx_tcp_cksum = (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_TCP_CKSUM) != 0;

    if (workers > info.max_rx_queues || workers > info.max_tx_queues) {
        fail(why, "dpdk port " + name + " (" + _caps.driver + ") has " +
                      std::to_string(info.max_rx_queues) + " rx / " +
                      std::to_string(info.max_tx_queues) + " tx queues, " +
                      std::to_string(workers) + " workers need one pair each");
        return error(errc::invalid_argument, "too few queues for the workers");
    }
    const unsigned mtu = _settings.mtu;
    if (mtu < info.min_mtu || mtu > info.max_mtu ||
        mtu + k_l2_overhead > RTE_MBUF_DEFAULT_DATAROOM) {
        fail(why, "dpdk port " + name + ": mtu " + std::to_string(mtu) + " outside " +
                      std::to_string(info.min_mtu) + ".." +
                      std::to_string(std::min<unsigned>(info.max_mtu, RTE_MBUF_DEFAULT_DATAROOM -
                                                                          k_l2_overhead)) +
                      " (device limits and one " + std::to_string(RTE_MBUF_DEFAULT_DATAROOM) +
                      "-byte mbuf per frame)");
        return error(errc::invalid_argument, "mtu out of range");
    }

    constexpr uint64_t k_rss_wanted = RTE_ETH_RSS_NONFRAG_IPV4_TCP | RTE_ETH_RSS_IPV4;
    if (workers == 1) {
        _mode = steering::single;
    } else if (_settings.allow_rss &&
               (info.flow_type_rss_offloads & RTE_ETH_RSS_NONFRAG_IPV4_TCP)) {
        _mode = steering::rss;
    } else {
        _mode = steering::software;
    }

    uint16_t nb_rxd = _settings.rx_descriptors;
    uint16_t nb_txd = _settings.tx_descriptors;
    rte_eth_conf conf{};
    conf.rxmode.mtu = mtu;
    if (_mode == steering::rss) {
        const uint16_t key_size = info.hash_key_size != 0 ? info.hash_key_size : k_default_key_size;
        _rss_key.resize(key_size);
        for (std::size_t i = 0; i < _rss_key.size(); ++i) {
            _rss_key[i] = (i % 2 == 0) ? k_sym_key_hi : k_sym_key_lo;
        }
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_key = _rss_key.data();
        conf.rx_adv_conf.rss_conf.rss_key_len = uint8_t(_rss_key.size());
        conf.rx_adv_conf.rss_conf.rss_hf = info.flow_type_rss_offloads & k_rss_wanted;
    }
    rc = rte_eth_dev_configure(_port_id, workers, workers, &conf);
    if (rc != 0) {
        fail(why, "dpdk port " + name + ": rte_eth_dev_configure (" + std::to_string(workers) +
                      " queues, mtu " + std::to_string(mtu) + "): " + rte_reason(rc));
        return error(errc::io_error, "rte_eth_dev_configure failed");
    }
    _configured = true;
    rc = rte_eth_dev_adjust_nb_rx_tx_desc(_port_id, &nb_rxd, &nb_txd);
    if (rc != 0) {
        fail(why, "dpdk port " + name + ": rte_eth_dev_adjust_nb_rx_tx_desc: " + rte_reason(rc));
        return error(errc::io_error, "descriptor adjust failed");
    }

    int socket = rte_eth_dev_socket_id(_port_id);
    if (socket < 0) {
        socket = int(rte_socket_id()); // virtual device: no NUMA home, use the control thread's
    }
    // Pool size: the most mbufs that can be out of the pool at once, so an empty pool means a
    // leak or a misconfiguration, not ordinary load. Per worker: a full RX ring, a full TX ring
    // (freed lazily by the driver), one RX burst in hand, one TX burst buffered plus the mbuf
    // between tx_alloc and tx_commit, and the steering rings towards it full. Then every
    // lcore's cache at its 1.5x flush threshold (workers + the control thread) and a margin.
    // Rounded up to 2^n - 1, the size the pool's ring holds without waste.
    const uint64_t per_worker = uint64_t(nb_rxd) + nb_txd + k_rx_burst + k_tx_burst + 1 +
                                uint64_t(workers - 1) * _settings.steer_ring_size;
    const uint64_t caches = uint64_t(workers + 1) * k_mbuf_cache * 3 / 2;
    const uint64_t need = per_worker * workers + caches + k_pool_margin;
    _pool_size = uint32_t(std::bit_ceil(need + 1) - 1);
    char pool_name[RTE_MEMPOOL_NAMESIZE];
    std::snprintf(pool_name, sizeof pool_name, "ar_mb_p%u_s%d", unsigned(_port_id), socket);
    _pool = rte_pktmbuf_pool_create(pool_name, _pool_size, k_mbuf_cache, 0,
                                    RTE_MBUF_DEFAULT_BUF_SIZE, socket);
    if (_pool == nullptr) {
        const int e = rte_errno;
        fail(why, "dpdk port " + name + ": mbuf pool of " + std::to_string(_pool_size) + " x " +
                      std::to_string(RTE_MBUF_DEFAULT_BUF_SIZE) + " B on socket " +
                      std::to_string(socket) + ": " + rte_reason(e) +
                      (e == ENOMEM ? " (raise EAL -m or reserve hugepages)" : ""));
        return error(e == ENOMEM ? errc::no_memory : errc::io_error, "mbuf pool creation failed");
    }

    for (uint16_t q = 0; q < workers; ++q) {
        rc = rte_eth_rx_queue_setup(_port_id, q, nb_rxd, unsigned(socket), nullptr, _pool);
        if (rc == 0) {
            rc = rte_eth_tx_queue_setup(_port_id, q, nb_txd, unsigned(socket), nullptr);
        }
        if (rc != 0) {
            fail(why, "dpdk port " + name + ": queue " + std::to_string(q) + " setup (" +
                          std::to_string(nb_rxd) + " rx / " + std::to_string(nb_txd) +
                          " tx descriptors): " + rte_reason(rc));
            return error(errc::io_error, "queue setup failed");
        }
    }

    rte_ether_addr addr{};
    rc = rte_eth_macaddr_get(_port_id, &addr);
    if (rc != 0) {
        fail(why, "dpdk port " + name + ": rte_eth_macaddr_get: " + rte_reason(rc));
        return error(errc::io_error, "rte_eth_macaddr_get failed");
    }
    std::copy(std::begin(addr.addr_bytes), std::end(addr.addr_bytes), _mac.begin());

    // Rings between every ordered pair of workers, even in rss mode: ARP copies use them.
    _rings.assign(std::size_t(workers) * workers, nullptr);
    for (uint16_t from = 0; from < workers; ++from) {
        for (uint16_t to = 0; to < workers; ++to) {
            if (from == to) {
                continue;
            }
            char ring_name[RTE_RING_NAMESIZE];
            std::snprintf(ring_name, sizeof ring_name, "ar_st_p%u_%u_%u", unsigned(_port_id),
                          unsigned(from), unsigned(to));
            rte_ring* r = rte_ring_create(ring_name, _settings.steer_ring_size, socket,
                                          RING_F_SP_ENQ | RING_F_SC_DEQ);
            if (r == nullptr) {
                fail(why, "dpdk port " + name + ": steering ring " + ring_name + ": " +
                              rte_reason(rte_errno));
                return error(errc::no_memory, "steering ring creation failed");
            }
            _rings[std::size_t(from) * workers + to] = r;
        }
    }
    for (uint16_t w = 0; w < workers; ++w) {
        queue::wiring wr;
        wr.port_id = _port_id;
        wr.worker = w;
        wr.workers = workers;
        wr.mode = _mode;
        wr.pool = _pool;
        wr.loss_every = _settings.loss_every;
        for (uint16_t o = 0; o < workers; ++o) {
            wr.to.push_back(_rings[std::size_t(w) * workers + o]);
            if (o != w) {
                wr.from.push_back(_rings[std::size_t(o) * workers + w]);
            }
        }
        _queues.push_back(std::make_unique<queue>(std::move(wr)));
    }
    log::info("dpdk_port_configured", {{"port", name},
                                       {"driver", _caps.driver},
                                       {"workers", unsigned(workers)},
                                       {"steering", _mode == steering::rss        ? "rss"
                                                    : _mode == steering::software ? "software"
                                                                                  : "single"},
                                       {"rx_desc", unsigned(nb_rxd)},
                                       {"tx_desc", unsigned(nb_txd)},
                                       {"mbufs", _pool_size},
                                       {"socket", socket}});
    return ok_result();
}

result<void> port::start(std::string* why) {
    if (_started) {
        return ok_result();
    }
    int rc = rte_eth_dev_start(_port_id);
    if (rc != 0) {
        fail(why, "dpdk port " + _settings.name + ": rte_eth_dev_start: " + rte_reason(rc));
        return error(errc::io_error, "rte_eth_dev_start failed");
    }
    _started = true;
    // Promiscuous off: the stacks only want frames for our MAC and broadcast. Drivers that
    // have no such switch (-ENOTSUP) are fine as they are; the stack drops others' frames.
    rc = rte_eth_promiscuous_disable(_port_id);
    if (rc != 0 && rc != -ENOTSUP) {
        log::warn("dpdk_promiscuous_off_failed",
                  {{"port", _settings.name}, {"reason", rte_reason(rc)}});
    }
    _reta.clear();
    if (_mode == steering::rss) {
        rte_eth_dev_info info{};
        if (rte_eth_dev_info_get(_port_id, &info) == 0 && info.reta_size != 0) {
            std::vector<rte_eth_rss_reta_entry64> conf(
                (info.reta_size + RTE_ETH_RETA_GROUP_SIZE - 1) / RTE_ETH_RETA_GROUP_SIZE);
            for (auto& c : conf) {
                c.mask = ~uint64_t(0);
            }
            if (rte_eth_dev_rss_reta_query(_port_id, conf.data(), info.reta_size) == 0) {
                _reta.resize(info.reta_size);
                for (uint16_t i = 0; i < info.reta_size; ++i) {
                    _reta[i] = conf[i / RTE_ETH_RETA_GROUP_SIZE].reta[i % RTE_ETH_RETA_GROUP_SIZE];
                }
            }
        }
    }
    const link_status l = link();
    log::info("dpdk_port_started", {{"port", _settings.name},
                                    {"link_up", l.up},
                                    {"speed_mbps", l.speed_mbps},
                                    {"reta_entries", _reta.size()}});
    return ok_result();
}

void port::stop() noexcept {
    if (_started) {
        rte_eth_dev_stop(_port_id);
        _started = false;
    }
}

port::~port() {
    // Queues first: their tx_link returns buffered mbufs to the pool.
    _queues.clear();
    stop();
    if (_configured) {
        rte_eth_dev_close(_port_id); // returns the RX rings' mbufs to the pool
    }
    for (rte_ring* r : _rings) {
        if (r == nullptr) {
            continue;
        }
        void* m = nullptr;
        while (rte_ring_sc_dequeue(r, &m) == 0) {
            rte_pktmbuf_free(static_cast<rte_mbuf*>(m));
        }
        rte_ring_free(r);
    }
    if (_pool != nullptr) {
        rte_mempool_free(_pool);
    }
}

link_status port::link() const noexcept {
    rte_eth_link l{};
    link_status out;
    if (rte_eth_link_get_nowait(_port_id, &l) == 0) {
        out.up = l.link_status == RTE_ETH_LINK_UP;
        out.speed_mbps = l.link_speed == RTE_ETH_SPEED_NUM_UNKNOWN ? 0 : l.link_speed;
        out.full_duplex = l.link_duplex == RTE_ETH_LINK_FULL_DUPLEX;
    }
    return out;
}

result<uint16_t> port::worker_for_flow(uint32_t local_ip, uint16_t local_port, uint32_t remote_ip,
                                       uint16_t remote_port) const noexcept {
    switch (_mode) {
    case steering::single:
        return uint16_t(0);
    case steering::software:
        return owner_of(symmetric_flow_hash(local_ip, remote_ip, local_port, remote_port),
                        _settings.workers);
    case steering::rss:
        break;
    }
    if (_reta.empty()) {
        return error(errc::not_supported, "driver reports no RSS redirection table");
    }
    // The tuple as the NIC hashes an incoming frame (RTE_ETH_RSS_NONFRAG_IPV4_TCP): source
    // address, destination address, source port << 16 | destination port. The key is
    // symmetric, so our side's order does not matter.
    uint32_t tuple[3] = {remote_ip, local_ip, uint32_t(remote_port) << 16 | local_port};
    const uint32_t h = rte_softrss(tuple, 3, _rss_key.data());
    return _reta[h % _reta.size()];
}

std::vector<named_value> port::stats() const {
    std::vector<named_value> out;
    const int n = rte_eth_xstats_get_names(_port_id, nullptr, 0);
    if (n > 0) {
        std::vector<rte_eth_xstat_name> names(static_cast<std::size_t>(n));
        std::vector<rte_eth_xstat> values(static_cast<std::size_t>(n));
        const int got_names = rte_eth_xstats_get_names(_port_id, names.data(), unsigned(n));
        const int got = rte_eth_xstats_get(_port_id, values.data(), unsigned(n));
        if (got_names == n && got == n) {
            for (const auto& v : values) {
                if (v.id < names.size()) {
                    out.push_back({"xstat_" + metric_name(names[v.id].name), v.value});
                }
            }
        }
    }
    for (const auto& q : _queues) {
        const std::string prefix = "q" + std::to_string(q->worker()) + "_";
        for (std::size_t i = 0; i < queue_counter_block::size(); ++i) {
            out.push_back({prefix + std::string(queue_counter_names[i]), q->counters().get(i)});
        }
    }
    return out;
}

} // namespace apprelay::io::dpdk
