// Two stacks back to back through an in-memory wire with a fake clock and a configurable fault
// pattern (drop every Nth frame, swap a frame with the next, duplicate every Mth). Each side
// sends 10 MiB to the other; both streams must arrive byte-exact, end with EOF, and every send
// must be reported by on_sent (the sender scribbles over its buffer right after each one).
#include "harness.hh"

#include <algorithm>
#include <deque>
#include <gtest/gtest.h>
#include <memory>

namespace apprelay::net::testing {
namespace {

constexpr uint64_t k_ms = 1'000'000;
constexpr uint64_t k_latency_ns = 1 * k_ms; // one way

struct faults {
    const char* name;
    uint32_t drop_every = 0;
    uint32_t swap_every = 0;
    uint32_t dup_every = 0;
    bool slow_reader = false; // receivers pause for 20 ms after each 256 KiB
};

struct wire {
    struct in_flight {
        uint64_t at;
        int to;
        bytes frame;
    };
    std::deque<in_flight> q;
    uint64_t* now = nullptr;
    faults f;
    uint64_t n = 0;

    void put(int to, bytes frame) {
        ++n;
        if (f.drop_every != 0 && n % f.drop_every == 0) {
            return;
        }
        if (f.dup_every != 0 && n % f.dup_every == 0) {
            q.push_back({*now + k_latency_ns, to, frame});
        }
        q.push_back({*now + k_latency_ns, to, std::move(frame)});
        if (f.swap_every != 0 && n % f.swap_every == 0 && q.size() >= 2) {
            // Deliver this frame after the one queued before it... by delaying the older one.
            std::swap(q[q.size() - 1].frame, q[q.size() - 2].frame);
            std::swap(q[q.size() - 1].to, q[q.size() - 2].to);
        }
    }
};

class wire_link final : public link {
public:
    wire_link(wire& w, int to) : _w(w), _to(to) {}
    std::span<std::byte> tx_alloc(std::size_t len) override {
        _buf.assign(len, std::byte{0});
        return _buf;
    }
    void tx_commit(std::size_t len) override {
        _buf.resize(len);
        _w.put(_to, std::move(_buf));
        _buf = bytes();
    }

private:
    wire& _w;
    int _to;
    bytes _buf;
};

// One endpoint's application: sends `out` in a loop of send/on_sent, collects what it receives.
struct app final : tcp_events {
    stack* st = nullptr;
    bytes out;
    std::size_t acked = 0;
    bool write_closed = false;
    bytes in;
    std::optional<int> end;
    sock_id conn;
    bool slow = false;
    uint64_t* now = nullptr;
    uint64_t resume_at = 0;
    std::size_t since_pause = 0;
    int errors = 0;

    // Sends go from a 64 KiB buffer (one TLS chunk) that is scribbled over right after each
    // on_sent and refilled: the stack must not read bytes it reported as sent.
    bytes buf = bytes(64 * 1024);
    uint32_t chunks = 0;

    void pump() {
        if (acked < out.size()) {
            // Vary the size so sends end mid-segment and completions land anywhere.
            const std::size_t len = std::min<std::size_t>(buf.size() - (chunks++ % 7) * 1000,
                                                          out.size() - acked);
            std::copy_n(out.begin() + std::ptrdiff_t(acked), len, buf.begin());
            st->send(conn, std::span<const std::byte>(buf).first(len));
        } else if (!write_closed) {
            write_closed = true;
            st->shutdown_write(conn);
        }
    }
    void on_accept(sock_id, sock_id c, uint32_t, uint16_t) override {
        conn = c;
        st->start_recv(c);
        pump();
    }
    void on_connect(sock_id c, int res) override {
        if (res != 0) {
            ++errors;
            return;
        }
        conn = c;
        st->start_recv(c);
        pump();
    }
    void on_recv(sock_id c, std::span<const std::byte> d) override {
        in.insert(in.end(), d.begin(), d.end());
        since_pause += d.size();
        if (slow && since_pause >= 256 * 1024) {
            since_pause = 0;
            st->pause_recv(c);
            resume_at = *now + 20 * k_ms;
        }
    }
    void on_recv_end(sock_id, int res) override { end = res; }
    void on_sent(sock_id, int res) override {
        if (res < 0) {
            ++errors;
            return;
        }
        acked += std::size_t(res);
        std::fill(buf.begin(), buf.end(), std::byte{0xa5});
        pump();
    }
};

class loopback : public ::testing::TestWithParam<faults> {};

TEST_P(loopback, ten_mib_each_way_arrive_byte_exact) {
    const faults f = GetParam();
    constexpr std::size_t k_size = 10u << 20;
    uint64_t now = 1000 * k_ms;
    wire w;
    w.now = &now;
    w.f = f;
    stack_config ca, cb;
    ca.mac = {0x02, 0, 0, 0, 0, 0xa};
    ca.ipv4 = ip4(10, 1, 0, 1);
    cb.mac = {0x02, 0, 0, 0, 0, 0xb};
    cb.ipv4 = ip4(10, 1, 0, 2);
    ca.tcp.rcv_buf = cb.tcp.rcv_buf = 512 * 1024;
    wire_link la(w, 1), lb(w, 0);
    app a, b;
    stack sa(ca, &la, &a), sb(cb, &lb, &b);
    stack* stacks[2] = {&sa, &sb};
    a.st = &sa;
    b.st = &sb;
    a.out = pattern(k_size, 1);
    b.out = pattern(k_size, 2);
    a.now = b.now = &now;
    a.slow = b.slow = f.slow_reader;
    ASSERT_TRUE(sa.listen(8080).ok());
    auto c = sb.connect(ca.ipv4, 8080, now);
    ASSERT_TRUE(c.ok());

    const uint64_t deadline = now + 3600'000 * k_ms;
    while (now < deadline) {
        if (a.end && b.end && a.acked == k_size && b.acked == k_size) {
            break;
        }
        for (app* x : {&a, &b}) {
            if (x->resume_at != 0 && x->resume_at <= now) {
                x->resume_at = 0;
                x->st->start_recv(x->conn);
            }
        }
        // Deliver everything due, then timers; then jump to the next event.
        while (!w.q.empty() && w.q.front().at <= now) {
            auto fr = std::move(w.q.front());
            w.q.pop_front();
            stacks[fr.to]->input(fr.frame, now);
        }
        sa.run_timers(now);
        sb.run_timers(now);
        uint64_t next = std::min(sa.next_timer_ns(), sb.next_timer_ns());
        if (!w.q.empty()) {
            next = std::min(next, w.q.front().at);
        }
        for (app* x : {&a, &b}) {
            if (x->resume_at != 0) {
                next = std::min(next, x->resume_at);
            }
        }
        if (next == UINT64_MAX) {
            break;
        }
        now = std::max(now, next);
    }
    EXPECT_EQ(a.errors + b.errors, 0);
    std::printf("end: now %.3f s, acked %zu/%zu, in %zu/%zu, eof %d/%d, timers %llu/%llu q %zu\n",
                double(now) / 1e9, a.acked, b.acked, a.in.size(), b.in.size(), a.end.has_value(),
                b.end.has_value(), (unsigned long long)sa.next_timer_ns(),
                (unsigned long long)sb.next_timer_ns(), w.q.size());
    EXPECT_EQ(a.acked, k_size);
    EXPECT_EQ(b.acked, k_size);
    ASSERT_EQ(a.in.size(), k_size);
    ASSERT_EQ(b.in.size(), k_size);
    EXPECT_TRUE(a.in == b.out) << "B -> A stream differs";
    EXPECT_TRUE(b.in == a.out) << "A -> B stream differs";
    EXPECT_EQ(a.end, 0);
    EXPECT_EQ(b.end, 0);
    if (f.drop_every != 0) {
        EXPECT_GT(sa.count(counter::tcp_retransmits) + sb.count(counter::tcp_retransmits), 0u);
    }
    std::printf("[%s] simulated %.3f s, retransmits %llu/%llu (fast %llu/%llu, rto %llu/%llu)\n",
                f.name, double(now - 1000 * k_ms) / 1e9,
                (unsigned long long)sa.count(counter::tcp_retransmits),
                (unsigned long long)sb.count(counter::tcp_retransmits),
                (unsigned long long)sa.count(counter::tcp_fast_retransmits),
                (unsigned long long)sb.count(counter::tcp_fast_retransmits),
                (unsigned long long)sa.count(counter::tcp_rto_expired),
                (unsigned long long)sb.count(counter::tcp_rto_expired));
}

INSTANTIATE_TEST_SUITE_P(faults, loopback,
                         ::testing::Values(faults{"clean"}, faults{"drop_every_50", 50},
                                           faults{"drop_every_7", 7}, faults{"swap_every_5", 0, 5},
                                           faults{"dup_every_11", 0, 0, 11},
                                           faults{"mixed", 13, 7, 17},
                                           faults{"slow_reader", 0, 0, 0, true},
                                           faults{"slow_reader_lossy", 29, 0, 0, true}),
                         [](const auto& info) { return std::string(info.param.name); });

} // namespace
} // namespace apprelay::net::testing
