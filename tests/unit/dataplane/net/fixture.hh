#pragma once
// A stack under test plus a hand-driven peer at 10.0.0.2 on the same link.
#include "harness.hh"

#include <gtest/gtest.h>
#include <memory>

namespace apprelay::net::testing {

inline constexpr mac_addr k_our_mac{0x02, 0, 0, 0, 0, 0x01};
inline constexpr mac_addr k_peer_mac{0x02, 0, 0, 0, 0, 0x02};
inline const uint32_t k_our_ip = ip4(10, 0, 0, 1);
inline const uint32_t k_peer_ip = ip4(10, 0, 0, 2);
inline constexpr uint16_t k_port = 443;
inline constexpr uint64_t k_ms = 1'000'000;

// The peer's view of one connection.
struct client {
    uint16_t port = 40000;
    uint32_t seq = 0; // next sequence the peer sends
    uint32_t ack = 0; // next sequence the peer expects from the stack
    sock_id id;       // stack-side id
};

class net_test : public ::testing::Test {
protected:
    net_test() {
        cfg.mac = k_our_mac;
        cfg.ipv4 = k_our_ip;
        cfg.tcp.rcv_buf = 64 * 1024;
    }

    void start() {
        st = std::make_unique<stack>(cfg, &lk, &ev);
        ev.st = st.get();
    }

    void input(const bytes& f) { st->input(std::span<const std::byte>(f.data(), f.size()), now); }

    static bytes frame_to_us(const bytes& ip_packet) {
        return eth({k_peer_mac, k_our_mac}, 0x0800, ip_packet);
    }
    static bytes tcp_frame(const tcp_spec& s) {
        return frame_to_us(ipv4({k_peer_ip, k_our_ip}, tcp(s, k_peer_ip, k_our_ip)));
    }

    std::vector<out_frame> out() {
        std::vector<out_frame> o;
        for (const auto& f : lk.take()) {
            o.push_back(decode(f));
            EXPECT_TRUE(o.back().type != 0x0800 || o.back().ip_csum_ok);
            EXPECT_TRUE(o.back().type != 0x0800 || o.back().l4_csum_ok);
        }
        return o;
    }
    // Exactly one frame expected.
    out_frame one() {
        auto o = out();
        EXPECT_EQ(o.size(), 1u);
        if (o.size() != 1) {
            for (const auto& f : o) {
                ADD_FAILURE() << "frame: flags " << int(f.flags) << " seq " << f.seq << " ack "
                              << f.ack << " len " << f.payload.size() << " win " << f.window;
            }
        }
        return o.empty() ? out_frame{} : o.front();
    }

    void advance_ms(uint64_t ms) {
        now += ms * k_ms;
        st->run_timers(now);
    }
    // Runs every timer due up to `now + ms`, in deadline order.
    void run_until(uint64_t t) {
        for (;;) {
            const uint64_t next = st->next_timer_ns();
            if (next > t) {
                break;
            }
            now = std::max(now, next);
            st->run_timers(now);
        }
        now = t;
        st->run_timers(now);
    }

    void seg(client& c, uint8_t flags, const bytes& payload = {}, uint16_t window = 65535) {
        tcp_spec s;
        s.sport = c.port;
        s.dport = k_port;
        s.seq = c.seq;
        s.ack = c.ack;
        s.flags = flags;
        s.window = window;
        s.payload = payload;
        input(tcp_frame(s));
        c.seq += static_cast<uint32_t>(payload.size()) + ((flags & (k_syn | k_fin)) ? 1 : 0);
    }

    static bytes default_syn_opts() { return cat({opt_mss(1460), opt_ws(7), opt_sackok()}); }

    client handshake(uint16_t cport = 40000, const bytes& opts = default_syn_opts(),
                     uint16_t window = 65535) {
        if (!listener.valid()) {
            auto l = st->listen(k_port);
            EXPECT_TRUE(l.ok());
            listener = *l;
        }
        client c;
        c.port = cport;
        c.seq = 1000 + cport;
        tcp_spec syn;
        syn.sport = cport;
        syn.dport = k_port;
        syn.seq = c.seq;
        syn.flags = k_syn;
        syn.options = opts;
        syn.window = window;
        input(tcp_frame(syn));
        c.seq += 1;
        auto sa = one();
        EXPECT_EQ(sa.flags, k_syn | k_ack);
        EXPECT_EQ(sa.ack, c.seq);
        c.ack = sa.seq + 1;
        const std::size_t before = ev.accepted.size();
        seg(c, k_ack, {}, window);
        EXPECT_EQ(ev.accepted.size(), before + 1);
        if (ev.accepted.size() > before) {
            c.id = ev.accepted.back();
        }
        return c;
    }

    // Send buffers must outlive the send (until on_sent): tests keep them here.
    const bytes& keep(bytes b) {
        held.push_back(std::make_unique<bytes>(std::move(b)));
        return *held.back();
    }

    std::vector<std::unique_ptr<bytes>> held;
    stack_config cfg;
    frame_link lk;
    recorder ev;
    std::unique_ptr<stack> st;
    sock_id listener;
    uint64_t now = 1'000'000 * k_ms;
};

} // namespace apprelay::net::testing
