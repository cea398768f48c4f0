// The io_uring loop against real loopback sockets: accept, connect, multishot receive into the
// provided buffer ring, ordered sends, pause/resume, abortive close, completion coalescing.
#include "dataplane/io/uring/loop.hh"

#include <arpa/inet.h>
#include <chrono>
#include <cstring>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace apprelay;
using namespace apprelay::io;

namespace {

int listen_loopback(uint16_t* port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd, 64), 0);
    socklen_t l = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &l);
    *port = ntohs(a.sin_port);
    return fd;
}

struct recorder : sink {
    uring_loop* loop = nullptr;
    std::vector<conn_id> accepted;
    std::vector<sockaddr_storage> peers;
    std::vector<conn_id> connected;
    int connect_res = 1;
    std::string received;
    int recv_end = 1;
    std::vector<int> sent;
    void on_accept(conn_id, conn_id c, const sockaddr_storage& peer) override {
        accepted.push_back(c);
        peers.push_back(peer);
    }
    void on_connect(conn_id id, int res) override {
        connect_res = res;
        connected.push_back(id);
    }
    void on_recv(conn_id, std::span<const std::byte> d) override {
        received.append(reinterpret_cast<const char*>(d.data()), d.size());
    }
    void on_recv_end(conn_id, int res) override { recv_end = res; }
    void on_sent(conn_id, int res) override { sent.push_back(res); }
};

template <class Pred> bool run_until(uring_loop& l, Pred p, int max_iters = 400) {
    for (int i = 0; i < max_iters && !p(); ++i) {
        l.run_once(5'000'000);
    }
    return p();
}

std::unique_ptr<uring_loop> make_loop() {
    std::string why;
    auto l =
        uring_loop::create(loop_options{.entries = 256, .buf_count = 64, .buf_size = 4096}, &why);
    EXPECT_TRUE(l.ok()) << why;
    return std::move(*l);
}

} // namespace

TEST(uring_loop, accepts_connects_and_moves_bytes_in_order) {
    auto loop = make_loop();
    uint16_t port = 0;
    int lfd = listen_loopback(&port);
    recorder server, client;
    ASSERT_TRUE(loop->listen(listen_spec{.fd = lfd}, &server).ok());
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    auto cid = loop->connect(reinterpret_cast<sockaddr*>(&a), sizeof a, &client);
    ASSERT_TRUE(cid.ok());
    ASSERT_TRUE(
        run_until(*loop, [&] { return client.connect_res == 0 && !server.accepted.empty(); }));
    // The accepted connection arrives in the loop with its peer's address and no owner.
    result<conn_id> sid = server.accepted[0];
    ASSERT_EQ(server.peers[0].ss_family, AF_INET);
    const auto* peer = reinterpret_cast<const sockaddr_in*>(&server.peers[0]);
    EXPECT_EQ(ntohl(peer->sin_addr.s_addr), INADDR_LOOPBACK);
    EXPECT_NE(peer->sin_port, htons(port)) << "the peer is the client's port, not ours";
    loop->set_owner(*sid, &server);
    loop->start_recv(*sid);

    // 1 MiB in 64 KiB sends, one in flight at a time: more data than the 64 x 4 KiB buffer ring
    // holds, so buffers must be recycled as they are consumed.
    std::vector<std::byte> payload(1 << 20);
    for (std::size_t i = 0; i < payload.size(); ++i) {
        payload[i] = std::byte((i * 131 + 7) & 0xff);
    }
    std::size_t off = 0;
    const std::size_t chunk = 64 * 1024;
    ASSERT_TRUE(loop->send(*cid, std::span<const std::byte>(payload.data(), chunk)));
    EXPECT_FALSE(loop->send(*cid, std::span<const std::byte>(payload.data(), 1)))
        << "a second send while one is in flight must be refused";
    while (off < payload.size()) {
        std::size_t before = client.sent.size();
        ASSERT_TRUE(run_until(*loop, [&] { return client.sent.size() > before; }));
        ASSERT_EQ(client.sent.back(), int(chunk));
        off += chunk;
        if (off < payload.size()) {
            ASSERT_TRUE(loop->send(*cid, std::span<const std::byte>(payload.data() + off, chunk)));
        }
    }
    ASSERT_TRUE(run_until(*loop, [&] { return server.received.size() == payload.size(); }));
    EXPECT_EQ(0, std::memcmp(server.received.data(), payload.data(), payload.size()));

    loop->shutdown_write(*cid);
    ASSERT_TRUE(run_until(*loop, [&] { return server.recv_end == 0; }));
    loop->close(*cid);
    loop->close(*sid);
    ASSERT_TRUE(run_until(*loop, [&] { return loop->open_sockets() == 1; })); // the listener
}

TEST(uring_loop, connect_to_closed_port_reports_refused) {
    auto loop = make_loop();
    uint16_t port = 0;
    int lfd = listen_loopback(&port);
    ::close(lfd); // nothing listens there now
    recorder client;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    auto cid = loop->connect(reinterpret_cast<sockaddr*>(&a), sizeof a, &client);
    ASSERT_TRUE(cid.ok());
    ASSERT_TRUE(run_until(*loop, [&] { return client.connect_res != 1; }));
    EXPECT_EQ(client.connect_res, -ECONNREFUSED);
    loop->close(*cid);
}

TEST(uring_loop, paused_receive_delivers_nothing_until_resumed) {
    auto loop = make_loop();
    uint16_t port = 0;
    int lfd = listen_loopback(&port);
    recorder server, client;
    ASSERT_TRUE(loop->listen(listen_spec{.fd = lfd}, &server).ok());
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    auto cid = loop->connect(reinterpret_cast<sockaddr*>(&a), sizeof a, &client);
    ASSERT_TRUE(
        run_until(*loop, [&] { return client.connect_res == 0 && !server.accepted.empty(); }));
    result<conn_id> sid = server.accepted[0];
    loop->set_owner(*sid, &server);
    loop->start_recv(*sid);
    loop->pause_recv(*sid);
    loop->run_once(0);
    const char msg[] = "hello";
    ASSERT_TRUE(loop->send(*cid, std::as_bytes(std::span(msg, 5))));
    run_until(
        *loop, [&] { return false; }, 20); // 100 ms of loop time
    EXPECT_EQ(server.received, "");
    loop->start_recv(*sid);
    ASSERT_TRUE(run_until(*loop, [&] { return server.received == "hello"; }));
}

TEST(uring_loop, abortive_close_resets_the_peer) {
    auto loop = make_loop();
    uint16_t port = 0;
    int lfd = listen_loopback(&port);
    recorder server, client;
    ASSERT_TRUE(loop->listen(listen_spec{.fd = lfd}, &server).ok());
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    auto cid = loop->connect(reinterpret_cast<sockaddr*>(&a), sizeof a, &client);
    ASSERT_TRUE(
        run_until(*loop, [&] { return client.connect_res == 0 && !server.accepted.empty(); }));
    result<conn_id> sid = server.accepted[0];
    loop->set_owner(*sid, &server);
    loop->start_recv(*cid);
    loop->close(*sid, /*abort=*/true);
    ASSERT_TRUE(run_until(*loop, [&] { return client.recv_end != 1; }));
    EXPECT_EQ(client.recv_end, -ECONNRESET) << "an aborted stream must never look like a clean end";
}

namespace {

struct counting_sink : sink {
    int recvs = 0;
    void on_recv(conn_id, std::span<const std::byte>) override { ++recvs; }
};

// n socketpairs whose first ends are in the loop, receiving.
struct pairs {
    std::vector<int> peer; // write here
    std::vector<counting_sink> sinks;
    explicit pairs(uring_loop& loop, int n) : sinks(std::size_t(n)) {
        for (int i = 0; i < n; ++i) {
            int sv[2];
            EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
            auto id = loop.adopt(sv[0], &sinks[std::size_t(i)]);
            EXPECT_TRUE(id.ok());
            loop.start_recv(*id);
            peer.push_back(sv[1]);
        }
        loop.run_once(0);
    }
    ~pairs() {
        for (int fd : peer) {
            ::close(fd);
        }
    }
    int total() const {
        int t = 0;
        for (const auto& s : sinks) {
            t += s.recvs;
        }
        return t;
    }
    void poke(int i) { ASSERT_EQ(::write(peer[std::size_t(i)], "x", 1), 1); }
};

// Makes `flows` sockets receive, then lets more than a flow period pass: the next blocking
// run_once ends the period and counts them as recently active.
void make_flows_active(uring_loop& loop, pairs& p, int flows) {
    for (int attempt = 0; attempt < 20; ++attempt) {
        int before = p.total();
        for (int i = 0; i < flows; ++i) {
            p.poke(i);
        }
        for (int i = 0; i < 50 && p.total() < before + flows; ++i) {
            loop.run_once(0);
        }
        std::this_thread::sleep_for(std::chrono::microseconds(1500));
        if (p.total() == before + flows) {
            return;
        }
    }
}

} // namespace

// Many connects queued in one pass (a connector opening a burst of backend connections): the
// slot table grows meanwhile, and every SQE must still point at a valid address.
struct connect_tally : sink {
    int ok = 0;
    int failed = 0;
    int last_error = 0;
    std::vector<conn_id> accepted;
    void on_accept(conn_id, conn_id c, const sockaddr_storage&) override { accepted.push_back(c); }
    void on_connect(conn_id, int res) override {
        if (res == 0) {
            ++ok;
        } else {
            ++failed;
            last_error = res;
        }
    }
};

TEST(uring_loop, many_connects_queued_in_one_pass_all_connect) {
    auto loop = make_loop();
    uint16_t port = 0;
    int lfd = listen_loopback(&port);
    ASSERT_EQ(::listen(lfd, 4096), 0);
    connect_tally t;
    ASSERT_TRUE(loop->listen(listen_spec{.fd = lfd}, &t).ok());
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    constexpr int k_conns = 1500; // the table grows past 1,024 slots with all of them queued
    for (int i = 0; i < k_conns; ++i) {
        ASSERT_TRUE(loop->connect(reinterpret_cast<sockaddr*>(&a), sizeof a, &t).ok());
    }
    run_until(*loop, [&] { return t.ok + t.failed == k_conns; }, 2000);
    EXPECT_EQ(t.ok, k_conns) << t.failed << " failed, last: " << std::strerror(-t.last_error);
    for (conn_id c : t.accepted) {
        loop->close(c);
    }
    run_until(*loop, [&] { return loop->open_sockets() <= 1u + k_conns; });
}

TEST(uring_loop, coalescing_waits_for_more_completions_while_many_flows_are_active) {
    auto loop = make_loop();
    loop->set_coalescing(8, 300'000'000); // 300 ms window, far longer than the writer's delay
    pairs p(*loop, 8);
    make_flows_active(*loop, p, 6);
    int before = p.total();
    p.poke(0);
    std::thread later([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        for (int i = 1; i < 8; ++i) {
            p.poke(i);
        }
    });
    loop->run_once(1'000'000'000); // wakes for the first byte, then waits for 8 completions
    later.join();
    EXPECT_EQ(p.total() - before, 8);
}

TEST(uring_loop, coalescing_never_delays_a_lone_flow) {
    auto loop = make_loop();
    loop->set_coalescing(8, 300'000'000);
    pairs p(*loop, 2);
    make_flows_active(*loop, p, 1);
    int before = p.total();
    p.poke(0);
    std::thread later([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        p.poke(1);
    });
    loop->run_once(1'000'000'000); // one flow: returns with the first completion
    int got = p.total() - before;
    later.join();
    EXPECT_EQ(got, 1);
    loop->run_once(1'000'000'000);
    EXPECT_EQ(p.total() - before, 2);
}

TEST(uring_loop, without_coalescing_run_once_returns_with_the_first_completion) {
    auto loop = make_loop();
    pairs p(*loop, 8);
    make_flows_active(*loop, p, 6);
    int before = p.total();
    p.poke(0);
    std::thread later([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        for (int i = 1; i < 8; ++i) {
            p.poke(i);
        }
    });
    loop->run_once(1'000'000'000);
    int got = p.total() - before;
    later.join();
    EXPECT_EQ(got, 1);
}
