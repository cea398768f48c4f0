// A real dpdk port: EAL without hugepages, net_tap vdevs, two worker queues, and the kernel
// on the other side of the tap inside a private network namespace. Needs root and
// /dev/net/tun; skips (never fails) when the machine cannot provide them or EAL memory.
//
// All EAL-using tests live in this executable: rte_eal_init runs once per process.
// Traffic stays on the tap: the namespace holds only the tap, addressed in 198.18.<n>.0/24
// (RFC 2544 benchmarking range), and the kernel only talks to our address on it.
#include "dataplane/core/core_map.hh"
#include "dataplane/io/dpdk/eal.hh"
#include "dataplane/io/dpdk/port.hh"
#include "dataplane/io/dpdk/steer.hh"
#include "dataplane/net/stack.hh"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <gtest/gtest.h>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <time.h>
#include <unistd.h>
#include <vector>

namespace apprelay::io::dpdk {
namespace {

constexpr uint16_t k_workers = 2;
constexpr int k_flows = 16; // TCP connects from the namespace, one flow each

std::string tap_iface(char which) {
    return "art" + std::to_string(::getpid()) + which; // <= 15 chars (IFNAMSIZ - 1)
}

int run(const std::string& cmd) {
    const int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

// Deleted at scope exit even when an assertion ends the test early.
struct netns {
    std::string name;
    bool created = false;
    explicit netns(std::string n) : name(std::move(n)) {
        created = run("ip netns add " + name) == 0;
    }
    ~netns() {
        if (created) {
            run("ip netns del " + name);
        }
    }
    int exec(const std::string& cmd) const { return run("ip netns exec " + name + " " + cmd); }
};

// Empty when the machine can run these tests, else why not (the test then skips).
std::string environment_gap() {
    if (::geteuid() != 0) {
        return "needs root (tap interfaces and network namespaces)";
    }
    if (::access("/dev/net/tun", R_OK | W_OK) != 0) {
        return "no usable /dev/net/tun";
    }
    if (run("ip -V") != 0) {
        return "no `ip` command (iproute2)";
    }
    netns probe("arprobe" + std::to_string(::getpid()));
    if (!probe.created) {
        return "cannot create a network namespace";
    }
    return {};
}

// EAL once for the whole executable; both tap vdevs are created here.
const std::string& eal_gap() {
    static const std::string gap = [] {
        std::string g = environment_gap();
        if (!g.empty()) {
            return g;
        }
        eal_settings s;
        const auto cpus = core::available_cpus();
        s.lcores = std::to_string(cpus.empty() ? 0 : cpus.front());
        s.no_huge = true;
        s.memory_mb = 256;
        s.no_pci = true;
        s.file_prefix = "apprelay-test-" + std::to_string(::getpid());
        s.vdevs = {"net_tap0,iface=" + tap_iface('a'), "net_tap1,iface=" + tap_iface('b'),
                   "net_tap2,iface=" + tap_iface('c')};
        // Nothing left in /var/run/dpdk: no shared config, no telemetry socket.
        s.extra = {"--no-shconf", "--no-telemetry"};
        std::string why;
        auto r = init_eal(s, &why);
        if (r.code() == errc::no_memory) {
            return "EAL cannot get memory: " + why;
        }
        EXPECT_TRUE(r.ok()) << why;
        return r.ok() ? std::string{} : "EAL failed: " + why;
    }();
    return gap;
}

// rte_eal_cleanup after the last test (ports are closed by then: each test owns its port).
class eal_cleanup_env : public ::testing::Environment {
public:
    void TearDown() override { cleanup_eal(); }
};
const auto* const g_eal_cleanup = ::testing::AddGlobalTestEnvironment(new eal_cleanup_env);

struct seen_frame {
    std::vector<std::byte> bytes;
};

constexpr uint32_t ip4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
    return uint32_t(a) << 24 | uint32_t(b) << 16 | uint32_t(c) << 8 | d;
}

uint16_t rd16(const std::vector<std::byte>& f, std::size_t at) {
    return uint16_t(uint16_t(f[at]) << 8 | uint16_t(f[at + 1]));
}
uint32_t rd32(const std::vector<std::byte>& f, std::size_t at) {
    return uint32_t(rd16(f, at)) << 16 | rd16(f, at + 2);
}

// An ARP request (RFC 826) for `our_ip`: answered from our MAC on the worker's tx_link, which
// is how this test proves the TX path (the kernel sends its SYNs only after this reply).
void answer_arp(const std::vector<std::byte>& req, uint32_t our_ip, const net::mac_addr& mac,
                tx_link& tx) {
    if (req.size() < 42 || rd16(req, 12) != 0x0806 || rd16(req, 20) != 1 ||
        rd32(req, 38) != our_ip) {
        return;
    }
    std::span<std::byte> f = tx.tx_alloc(60); // minimum Ethernet payload, zero padded
    if (f.empty()) {
        return;
    }
    std::memset(f.data(), 0, f.size());
    std::memcpy(&f[0], &req[6], 6); // to the asker
    std::memcpy(&f[6], mac.data(), 6);
    f[12] = std::byte(0x08);
    f[13] = std::byte(0x06);
    std::memcpy(&f[14], &req[14], 6); // htype, ptype, hlen, plen as asked
    f[20] = std::byte(0);
    f[21] = std::byte(2); // reply
    std::memcpy(&f[22], mac.data(), 6);
    std::memcpy(&f[28], &req[38], 4);  // sender ip = the address asked for
    std::memcpy(&f[32], &req[22], 10); // target = the asker's mac + ip
    tx.tx_commit(60);
}

struct scenario_result {
    std::vector<std::vector<seen_frame>> per_worker{k_workers};
    int connect_rc = -1;
};

// Starts the port, moves its tap into a fresh namespace (after start: see PLATFORM.md), runs
// two worker threads on the queues and lets the kernel open k_flows TCP connections to us.
void run_scenario(port& p, char which, uint8_t subnet, scenario_result& out) {
    std::string why;
    ASSERT_TRUE(p.start(&why).ok()) << why;
    netns ns("arns" + std::to_string(::getpid()) + which);
    ASSERT_TRUE(ns.created) << "ip netns add " << ns.name;
    const std::string iface = tap_iface(which);
    const std::string peer = "198.18." + std::to_string(subnet) + ".1";
    const std::string ours = "198.18." + std::to_string(subnet) + ".2";
    const uint32_t our_ip = ip4(198, 18, subnet, 2);
    ASSERT_EQ(run("ip link set " + iface + " netns " + ns.name), 0);
    ASSERT_EQ(ns.exec("ip addr add " + peer + "/24 dev " + iface), 0);
    ASSERT_EQ(ns.exec("ip link set " + iface + " up"), 0);

    std::atomic<bool> stop{false};
    std::vector<std::thread> workers;
    std::vector<std::string> thread_errors(k_workers);
    for (uint16_t w = 0; w < k_workers; ++w) {
        workers.emplace_back([&, w] {
            std::string err;
            if (!register_worker_thread(&err).ok()) {
                thread_errors[w] = err;
                return;
            }
            queue& q = p.worker_queue(w);
            while (!stop.load(std::memory_order_relaxed)) {
                rx_batch batch;
                const std::size_t n = q.rx_burst(batch);
                for (std::size_t i = 0; i < n; ++i) {
                    auto f = batch.frame(i);
                    out.per_worker[w].push_back({{f.begin(), f.end()}});
                    answer_arp(out.per_worker[w].back().bytes, our_ip, p.mac(), q.tx());
                }
                batch.release();
                q.flush();
                if (n == 0) {
                    // Test only: two cores are shared with the kernel and python.
                    std::this_thread::sleep_for(std::chrono::microseconds(200));
                }
            }
            unregister_worker_thread();
        });
    }
    // Non-blocking connects: each SYN is sent once, then again after the 1 s initial RTO.
    const std::string py = "python3 -c \"import socket,time\n"
                           "ss=[]\n"
                           "for i in range(" +
                           std::to_string(k_flows) +
                           "):\n"
                           "  s=socket.socket(); s.setblocking(False)\n"
                           "  try: s.connect(('" +
                           ours +
                           "', 7000+i))\n"
                           "  except BlockingIOError: pass\n"
                           "  ss.append(s)\n"
                           "time.sleep(1.5)\n\"";
    out.connect_rc = ns.exec(py);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    stop = true;
    for (auto& t : workers) {
        t.join();
    }
    for (uint16_t w = 0; w < k_workers; ++w) {
        EXPECT_TRUE(thread_errors[w].empty()) << "worker " << w << ": " << thread_errors[w];
    }
}

struct tcp_seen {
    uint16_t dst_port;
    uint32_t hash;
};

// TCP frames to our address, by worker.
std::vector<std::vector<tcp_seen>> tcp_frames(const scenario_result& r) {
    std::vector<std::vector<tcp_seen>> out(k_workers);
    for (uint16_t w = 0; w < k_workers; ++w) {
        for (const auto& f : r.per_worker[w]) {
            const frame_class c = classify_frame(f.bytes);
            if (c.kind == frame_kind::tcp_ipv4) {
                out[w].push_back({rd16(f.bytes, 14 + 22), c.hash});
            }
        }
    }
    return out;
}

int arp_frames(const std::vector<seen_frame>& frames) {
    int n = 0;
    for (const auto& f : frames) {
        n += classify_frame(f.bytes).kind == frame_kind::arp ? 1 : 0;
    }
    return n;
}

uint64_t stat(const std::vector<named_value>& stats, const std::string& name) {
    for (const auto& s : stats) {
        if (s.name == name) {
            return s.value;
        }
    }
    ADD_FAILURE() << "no stat " << name;
    return 0;
}

TEST(dpdk_port_tap, software_steering_gives_each_tcp_flow_to_its_owner_worker) {
    if (!eal_gap().empty()) {
        GTEST_SKIP() << eal_gap();
    }
    port_settings ps;
    ps.name = "net_tap1";
    ps.workers = k_workers;
    ps.rx_descriptors = 256;
    ps.tx_descriptors = 256;
    ps.steer_ring_size = 256;
    ps.allow_rss = false;
    std::string why;
    auto opened = port::open(ps, &why);
    ASSERT_TRUE(opened.ok()) << why;
    port& p = *opened.value();
    EXPECT_EQ(p.steering_mode(), steering::software);
    EXPECT_EQ(p.caps().driver, "net_tap");
    EXPECT_NE(p.mac(), net::mac_addr{});

    scenario_result r;
    run_scenario(p, 'b', 61, r);
    if (HasFatalFailure()) {
        return;
    }
    EXPECT_EQ(r.connect_rc, 0);
    // ARP is broadcast: whichever queue the kernel used, the other worker got a copy.
    for (uint16_t w = 0; w < k_workers; ++w) {
        EXPECT_GE(arp_frames(r.per_worker[w]), 1) << "worker " << w;
    }
    // Every TCP frame was delivered by the worker owning its flow, and every flow arrived
    // (which also shows our ARP reply went out: the kernel sends SYNs only after it).
    const auto tcp = tcp_frames(r);
    std::set<uint16_t> ports;
    std::array<int, k_workers> flows_per_worker{};
    for (uint16_t w = 0; w < k_workers; ++w) {
        std::set<uint16_t> mine;
        for (const auto& t : tcp[w]) {
            EXPECT_EQ(owner_of(t.hash, k_workers), w) << "port " << t.dst_port;
            ports.insert(t.dst_port);
            mine.insert(t.dst_port);
        }
        flows_per_worker[w] = int(mine.size());
    }
    EXPECT_EQ(int(ports.size()), k_flows);
    // 16 flows over 2 workers: all on one worker has probability 2^-15.
    EXPECT_GT(flows_per_worker[0], 0);
    EXPECT_GT(flows_per_worker[1], 0);

    const auto stats = p.stats();
    const uint64_t out = stat(stats, "q0_steered_out") + stat(stats, "q1_steered_out");
    const uint64_t in = stat(stats, "q0_steered_in") + stat(stats, "q1_steered_in");
    const uint64_t copies = stat(stats, "q0_arp_copies") + stat(stats, "q1_arp_copies");
    EXPECT_EQ(in, out + copies); // everything put on a ring was taken off by its owner
    EXPECT_EQ(stat(stats, "q0_steer_ring_full") + stat(stats, "q1_steer_ring_full"), 0u);
    EXPECT_GE(stat(stats, "q0_tx_frames") + stat(stats, "q1_tx_frames"), 1u);
    EXPECT_GT(stat(stats, "xstat_rx_good_packets"), 0u);
    std::printf("flows per worker %d/%d, steered %llu, arp copies %llu\n", flows_per_worker[0],
                flows_per_worker[1], (unsigned long long)out, (unsigned long long)copies);

    // tx_link edges, on the main lcore now that the workers are gone.
    tx_link& tx = p.worker_queue(0).tx();
    const uint64_t too_large = p.worker_queue(0).counters().get(queue_counter::tx_too_large);
    EXPECT_TRUE(tx.tx_alloc(4000).empty()); // one mbuf holds 2048 bytes
    EXPECT_EQ(p.worker_queue(0).counters().get(queue_counter::tx_too_large), too_large + 1);
    auto a = tx.tx_alloc(60);
    auto b = tx.tx_alloc(60); // not committed: the same mbuf is reused, nothing leaks
    ASSERT_FALSE(b.empty());
    EXPECT_EQ(a.data(), b.data());
}

TEST(dpdk_port_tap, default_settings_keep_each_flow_on_one_queue) {
    if (!eal_gap().empty()) {
        GTEST_SKIP() << eal_gap();
    }
    port_settings ps;
    ps.name = "net_tap0";
    ps.workers = k_workers;
    ps.rx_descriptors = 256;
    ps.tx_descriptors = 256;
    ps.steer_ring_size = 256;
    std::string why;
    auto opened = port::open(ps, &why);
    ASSERT_TRUE(opened.ok()) << why;
    port& p = *opened.value();
    // net_tap advertises IPv4/TCP RSS, so the port takes the RSS path (symmetric key).
    const bool rss = (p.caps().rss_offloads != 0);
    std::printf("net_tap rss_offloads 0x%llx key %u, tx cksum ipv4 %d tcp %d\n",
                (unsigned long long)p.caps().rss_offloads, unsigned(p.caps().hash_key_size),
                int(p.caps().tx_ipv4_cksum), int(p.caps().tx_tcp_cksum));
    EXPECT_EQ(p.steering_mode(), rss ? steering::rss : steering::software);

    scenario_result r;
    run_scenario(p, 'a', 62, r);
    if (HasFatalFailure()) {
        return;
    }
    EXPECT_EQ(r.connect_rc, 0);
    for (uint16_t w = 0; w < k_workers; ++w) {
        EXPECT_GE(arp_frames(r.per_worker[w]), 1) << "worker " << w;
    }
    // Whoever chooses the queue (the NIC's RSS, here the kernel's tap queue selection, or our
    // software steering), a flow's frames all reach one worker.
    const auto tcp = tcp_frames(r);
    std::map<uint16_t, std::set<uint16_t>> workers_of_flow;
    for (uint16_t w = 0; w < k_workers; ++w) {
        for (const auto& t : tcp[w]) {
            workers_of_flow[t.dst_port].insert(w);
        }
    }
    EXPECT_EQ(int(workers_of_flow.size()), k_flows);
    for (const auto& [dport, ws] : workers_of_flow) {
        EXPECT_EQ(ws.size(), 1u) << "flow to port " << dport << " reached several workers";
    }
}

#ifdef APPRELAY_TEST_NET_STACK
struct accept_counter final : net::tcp_events {
    std::atomic<int>* accepted;
    explicit accept_counter(std::atomic<int>* a) : accepted(a) {}
    void on_accept(net::sock_id, net::sock_id, uint32_t, uint16_t) override { ++*accepted; }
    void on_connect(net::sock_id, int) override {}
    void on_recv(net::sock_id, std::span<const std::byte>) override {}
    void on_recv_end(net::sock_id, int) override {}
    void on_sent(net::sock_id, int) override {}
};

uint64_t now_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

// The whole receive/transmit path with the user-space stack: one net::stack per worker on its
// queue (rx_burst -> input, tx_link as the stack's link, flush per pass). The kernel in the
// namespace resolves us by ARP and completes TCP handshakes with whichever worker owns each
// flow, which only works if both directions of every flow stay on that worker.
TEST(dpdk_port_tap, kernel_connects_to_the_user_space_stack_on_each_worker) {
    if (!eal_gap().empty()) {
        GTEST_SKIP() << eal_gap();
    }
    port_settings ps;
    ps.name = "net_tap2";
    ps.workers = k_workers;
    ps.rx_descriptors = 256;
    ps.tx_descriptors = 256;
    ps.steer_ring_size = 256;
    ps.allow_rss = false;
    std::string why;
    auto opened = port::open(ps, &why);
    ASSERT_TRUE(opened.ok()) << why;
    port& p = *opened.value();
    ASSERT_TRUE(p.start(&why).ok()) << why;
    netns ns("arns" + std::to_string(::getpid()) + "c");
    ASSERT_TRUE(ns.created);
    const std::string iface = tap_iface('c');
    ASSERT_EQ(run("ip link set " + iface + " netns " + ns.name), 0);
    ASSERT_EQ(ns.exec("ip addr add 198.18.63.1/24 dev " + iface), 0);
    ASSERT_EQ(ns.exec("ip link set " + iface + " up"), 0);

    constexpr int k_conns = 8;
    std::atomic<bool> stop{false};
    std::atomic<int> accepted{0};
    std::array<std::atomic<int>, k_workers> accepted_by{};
    std::vector<std::thread> workers;
    for (uint16_t w = 0; w < k_workers; ++w) {
        workers.emplace_back([&, w] {
            std::string err;
            ASSERT_TRUE(register_worker_thread(&err).ok()) << err;
            queue& q = p.worker_queue(w);
            net::stack_config cfg;
            cfg.mac = p.mac();
            cfg.ipv4 = ip4(198, 18, 63, 2);
            cfg.prefix_len = 24;
            accept_counter ev(&accepted_by[w]);
            net::stack st(cfg, &q.tx(), &ev);
            ASSERT_TRUE(st.listen(7000).ok());
            while (!stop.load(std::memory_order_relaxed)) {
                const uint64_t now = now_ns();
                const std::size_t n =
                    q.poll([&](std::span<const std::byte> f) { st.input(f, now); });
                st.run_timers(now);
                q.flush();
                if (n == 0) {
                    std::this_thread::sleep_for(std::chrono::microseconds(200));
                }
            }
            unregister_worker_thread();
        });
    }
    const std::string py = "python3 -c \"import socket\n"
                           "for i in range(" +
                           std::to_string(k_conns) +
                           "):\n"
                           "  s=socket.create_connection(('198.18.63.2', 7000), timeout=3)\n"
                           "  s.close()\n\"";
    const int rc = ns.exec(py);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    stop = true;
    for (auto& t : workers) {
        t.join();
    }
    accepted = accepted_by[0] + accepted_by[1];
    EXPECT_EQ(rc, 0) << "a connect from the namespace failed";
    EXPECT_EQ(accepted.load(), k_conns);
    std::printf("accepted per worker %d/%d\n", accepted_by[0].load(), accepted_by[1].load());
}
#endif

} // namespace
} // namespace apprelay::io::dpdk
