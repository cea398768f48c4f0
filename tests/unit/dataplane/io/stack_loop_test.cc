// io::stack_loop: the io::loop contract (loop.hh) over apprelay's user-space TCP/IP. Two loops
// with their own stacks are wired back to back through an in-memory Ethernet (frames written by
// one are read by the other in its next pass); the client dials with connect(), the server
// listens, exactly as relay workers and the connector use the interface.
#include "dataplane/io/stack/loop.hh"

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <deque>
#include <gtest/gtest.h>
#include <memory>
#include <netinet/in.h>
#include <string>
#include <vector>

using namespace apprelay;
using namespace apprelay::io;

namespace {

using frame = std::vector<std::byte>;

// One direction of the wire: what one port sends, the other receives.
struct wire {
    std::deque<frame> frames;
};

class mem_port final : public frame_port, private net::link {
public:
    mem_port(wire* in, wire* out) : _in(in), _out(out) {}
    unsigned rx_burst(receiver& r, unsigned max) override {
        unsigned n = 0;
        while (n < max && !_in->frames.empty()) {
            frame f = std::move(_in->frames.front());
            _in->frames.pop_front();
            r.on_frame(f);
            ++n;
        }
        return n;
    }
    net::link& tx() override { return *this; }
    void flush() override {
        for (auto& f : _pending) {
            _out->frames.push_back(std::move(f));
        }
        _pending.clear();
    }

private:
    std::span<std::byte> tx_alloc(std::size_t len) override {
        _buf.assign(len, std::byte{0});
        return _buf;
    }
    void tx_commit(std::size_t len) override {
        _buf.resize(len);
        _pending.push_back(std::move(_buf));
        _buf.clear();
    }
    wire* _in;
    wire* _out;
    frame _buf;
    std::vector<frame> _pending;
};

constexpr uint32_t k_server_ip = (198u << 24) | (18u << 16) | 1; // 198.18.0.1 (RFC 2544)
constexpr uint32_t k_client_ip = (198u << 24) | (18u << 16) | 2;
constexpr uint16_t k_port = 8443;

net::stack_config config(uint32_t ip, uint8_t last_mac_byte) {
    net::stack_config c;
    c.mac = {0x02, 0, 0, 0, 0, last_mac_byte};
    c.ipv4 = ip;
    c.prefix_len = 24;
    return c;
}

// A sink that records everything and checks the re-entrancy rule: no callback while the test
// is inside a call into the loop.
struct recorder : sink {
    loop* l = nullptr;
    bool in_call = false;
    bool reentered = false;
    std::vector<conn_id> accepted;
    std::vector<sockaddr_storage> peers;
    int connect_res = 1;
    std::string received;
    int recv_end = 1;
    std::vector<int> sent;
    void note() { reentered = reentered || in_call; }
    void on_accept(conn_id, conn_id c, const sockaddr_storage& peer) override {
        note();
        accepted.push_back(c);
        peers.push_back(peer);
    }
    void on_connect(conn_id, int res) override {
        note();
        connect_res = res;
    }
    void on_recv(conn_id, std::span<const std::byte> d) override {
        note();
        received.append(reinterpret_cast<const char*>(d.data()), d.size());
    }
    void on_recv_end(conn_id, int res) override {
        note();
        recv_end = res;
    }
    void on_sent(conn_id, int res) override {
        note();
        sent.push_back(res);
    }
};

struct pair_of_loops {
    wire a_to_b, b_to_a;
    std::unique_ptr<stack_loop> client =
        std::make_unique<stack_loop>(std::make_unique<mem_port>(&b_to_a, &a_to_b),
                                     config(k_client_ip, 2));
    std::unique_ptr<stack_loop> server =
        std::make_unique<stack_loop>(std::make_unique<mem_port>(&a_to_b, &b_to_a),
                                     config(k_server_ip, 1));

    template <class Pred> bool run_until(Pred p, int max_passes = 200000) {
        for (int i = 0; i < max_passes && !p(); ++i) {
            client->run_once(0);
            server->run_once(0);
        }
        return p();
    }
};

sockaddr_in server_addr() {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(k_port);
    a.sin_addr.s_addr = htonl(k_server_ip);
    return a;
}

// Listener + connect + accept; returns {client id, server id}.
std::pair<conn_id, conn_id> connect_pair(pair_of_loops& p, recorder& srv, recorder& cli) {
    auto l = p.server->listen(listen_spec{.port = k_port}, &srv);
    EXPECT_TRUE(l.ok());
    auto a = server_addr();
    auto c = p.client->connect(reinterpret_cast<sockaddr*>(&a), sizeof a, &cli);
    EXPECT_TRUE(c.ok());
    EXPECT_TRUE(p.run_until([&] { return cli.connect_res == 0 && !srv.accepted.empty(); }));
    conn_id s = srv.accepted.at(0);
    p.server->set_owner(s, &srv);
    p.server->start_recv(s);
    p.client->start_recv(*c);
    return {*c, s};
}

std::string pattern(std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) {
        s[i] = char((i * 131 + 7) & 0xff);
    }
    return s;
}

} // namespace

TEST(stack_loop, accepts_connects_and_moves_bytes_in_order) {
    pair_of_loops p;
    recorder srv, cli;
    auto [c, s] = connect_pair(p, srv, cli);
    ASSERT_EQ(srv.peers[0].ss_family, AF_INET);
    const auto* peer = reinterpret_cast<const sockaddr_in*>(&srv.peers[0]);
    EXPECT_EQ(ntohl(peer->sin_addr.s_addr), k_client_ip) << "the peer is the client's address";

    // 1 MiB, one send at a time; a short on_sent means: send the rest again, unchanged.
    const std::string payload = pattern(1 << 20);
    std::size_t off = 0;
    ASSERT_TRUE(p.client->send(c, std::as_bytes(std::span(payload.data() + off, 64 * 1024))));
    EXPECT_FALSE(p.client->send(c, std::as_bytes(std::span(payload.data(), 1))))
        << "a second send while one is in flight is refused";
    while (off < payload.size()) {
        const std::size_t before = cli.sent.size();
        ASSERT_TRUE(p.run_until([&] { return cli.sent.size() > before; }));
        ASSERT_GT(cli.sent.back(), 0);
        off += std::size_t(cli.sent.back());
        if (off < payload.size()) {
            const std::size_t n = std::min<std::size_t>(64 * 1024, payload.size() - off);
            ASSERT_TRUE(p.client->send(c, std::as_bytes(std::span(payload.data() + off, n))));
        }
    }
    ASSERT_TRUE(p.run_until([&] { return srv.received.size() == payload.size(); }));
    EXPECT_TRUE(srv.received == payload) << "byte-exact and in order";

    p.client->shutdown_write(c);
    ASSERT_TRUE(p.run_until([&] { return srv.recv_end == 0; })) << "FIN is an orderly EOF";
    EXPECT_FALSE(srv.reentered || cli.reentered);
    p.client->close(c);
    p.server->close(s);
    EXPECT_EQ(p.client->open_sockets(), 0u);
    EXPECT_EQ(p.server->open_sockets(), 1u) << "the listener";
}

TEST(stack_loop, paused_receive_delivers_nothing_until_resumed_and_then_not_inside_the_call) {
    pair_of_loops p;
    recorder srv, cli;
    auto [c, s] = connect_pair(p, srv, cli);
    p.server->pause_recv(s);
    EXPECT_FALSE(p.server->recv_wanted(s));
    const std::string msg = "hello through a paused receiver";
    ASSERT_TRUE(p.client->send(c, std::as_bytes(std::span(msg.data(), msg.size()))));
    ASSERT_TRUE(p.run_until([&] { return !cli.sent.empty(); })) << "ACKed while paused";
    EXPECT_EQ(srv.received, "") << "kept by the stack while paused";
    srv.in_call = true;
    p.server->start_recv(s);
    srv.in_call = false;
    EXPECT_EQ(srv.received, "") << "never delivered inside start_recv (loop.hh)";
    ASSERT_TRUE(p.run_until([&] { return srv.received == msg; }));
    EXPECT_FALSE(srv.reentered);
}

TEST(stack_loop, abortive_close_resets_the_peer_and_no_callback_follows_close) {
    pair_of_loops p;
    recorder srv, cli;
    auto [c, s] = connect_pair(p, srv, cli);
    p.client->close(c, true);
    ASSERT_TRUE(p.run_until([&] { return srv.recv_end != 1; }));
    EXPECT_LT(srv.recv_end, 0) << "a reset, never a clean end of stream";
    EXPECT_EQ(srv.recv_end, -ECONNRESET);
    EXPECT_FALSE(p.client->send(c, std::as_bytes(std::span("x", 1)))) << "the id is stale";
    const std::size_t cli_events = cli.sent.size() + cli.received.size();
    p.server->close(s);
    p.run_until([] { return false; }, 200);
    EXPECT_EQ(cli.sent.size() + cli.received.size(), cli_events);
}

TEST(stack_loop, connections_stay_on_the_worker_that_accepted_them) {
    pair_of_loops p;
    EXPECT_FALSE(p.server->can_hand_over());
    EXPECT_EQ(p.server->adopt(3, nullptr).code(), errc::not_supported);
    EXPECT_EQ(p.server->listen(listen_spec{.fd = 3}, nullptr).code(), errc::invalid_argument)
        << "a user-space listener needs a port";
    sockaddr_in6 v6{};
    v6.sin6_family = AF_INET6;
    recorder r;
    EXPECT_EQ(p.client->connect(reinterpret_cast<sockaddr*>(&v6), sizeof v6, &r).code(),
              errc::not_supported);
}

TEST(stack_loop, wake_from_another_thread_runs_the_handler_on_the_loop) {
    pair_of_loops p;
    int woken = 0;
    p.server->set_wake_handler([&] { ++woken; });
    p.server->wake();
    p.server->wake(); // coalesced
    p.server->run_once(0);
    EXPECT_EQ(woken, 1);
    p.server->run_once(0);
    EXPECT_EQ(woken, 1);
}
