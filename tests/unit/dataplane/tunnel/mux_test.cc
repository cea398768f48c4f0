#include "dataplane/tunnel/mux.hh"
#include "tests/unit/dataplane/tunnel/wire.hh"

#include <algorithm>
#include <cstring>
#include <gtest/gtest.h>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace apprelay::tunnel {
namespace {

// These tests count the open/reset budget at 200/s, burst 400 and a 256 KiB window (the
// defaults are larger: the tunnel budget is only a backstop, users are charged at the relay's
// edge, and the default window is sized for WAN paths).
mux_limits small_budget() {
    mux_limits l;
    l.open_reset_rate = 200;
    l.open_reset_burst = 400;
    l.initial_window = 256 * 1024; // the windows these tests count in
    return l;
}

constexpr uint64_t k_now = 1'000'000'000;

// Records callbacks and serves pull() from per-stream byte strings.
struct test_handler : mux_handler {
    mux* m = nullptr;
    bool auto_ack = true;                // connector: open_ack() from inside on_open
    bool auto_consume = true;            // consumed() from inside on_data
    std::set<uint32_t> no_consume;       // streams whose reader is stuck
    std::map<uint32_t, std::string> out; // bytes still to send
    std::map<uint32_t, std::size_t> out_pos;
    std::set<uint32_t> finish_when_drained;
    std::map<uint32_t, std::string> in; // bytes received
    std::set<uint32_t> opened, acked, fins, closed;
    std::vector<std::pair<uint32_t, reason>> resets, open_fails;
    std::vector<uint64_t> pongs;
    int goaways = 0;

    void on_open(uint32_t sid, std::string_view, std::string_view) override {
        opened.insert(sid);
        if (auto_ack) {
            m->open_ack(sid);
        }
    }
    void on_open_ack(uint32_t sid) override { acked.insert(sid); }
    void on_open_fail(uint32_t sid, reason r, std::string_view) override {
        open_fails.emplace_back(sid, r);
    }
    void on_data(uint32_t sid, std::span<const std::byte> b) override {
        in[sid].append(reinterpret_cast<const char*>(b.data()), b.size());
        if (auto_consume && !no_consume.contains(sid)) {
            m->consumed(sid, b.size());
        }
    }
    void on_fin(uint32_t sid) override { fins.insert(sid); }
    void on_reset(uint32_t sid, reason r, std::string_view) override {
        resets.emplace_back(sid, r);
    }
    void on_stream_closed(uint32_t sid) override { closed.insert(sid); }
    void on_goaway(uint32_t, reason, std::string_view) override { ++goaways; }
    void on_pong(uint64_t v) override { pongs.push_back(v); }
    std::size_t pull(uint32_t sid, std::span<std::byte> dst) override {
        auto& s = out[sid];
        auto& p = out_pos[sid];
        std::size_t n = std::min(dst.size(), s.size() - p);
        std::memcpy(dst.data(), s.data() + p, n);
        p += n;
        if (n == 0 && finish_when_drained.contains(sid)) {
            m->finish(sid); // re-entrant from pull: allowed
        }
        return n;
    }
    void send(uint32_t sid, std::string bytes, bool fin) {
        out[sid] += std::move(bytes);
        if (fin) {
            finish_when_drained.insert(sid);
            m->finish(sid);
        }
        m->mark_readable(sid);
    }
};

std::string pattern(uint32_t sid, std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) {
        s[i] = char((i * 131 + sid * 7) & 0xff);
    }
    return s;
}

struct pair_fixture {
    mux_limits rl, cl;
    test_handler rh, ch;
    std::unique_ptr<mux> relay, conn;
    std::vector<std::byte> buf = std::vector<std::byte>(64 * 1024);

    explicit pair_fixture(mux_limits r = small_budget(), mux_limits c = small_budget()) : rl(r), cl(c) {
        relay = std::make_unique<mux>(role::relay, rl, rh);
        conn = std::make_unique<mux>(role::connector, cl, ch);
        rh.m = relay.get();
        ch.m = conn.get();
    }
    // Moves frames both ways until neither side has anything to send.
    void pump() {
        for (int i = 0; i < 1'000'000; ++i) {
            std::size_t a = relay->produce(buf);
            if (a > 0) {
                ASSERT_TRUE(conn->receive(std::span(buf.data(), a), k_now).ok());
            }
            std::size_t b = conn->produce(buf);
            if (b > 0) {
                ASSERT_TRUE(relay->receive(std::span(buf.data(), b), k_now).ok());
            }
            if (a == 0 && b == 0) {
                return;
            }
        }
        FAIL() << "pump did not settle";
    }
};

// Raw frame builder for injecting what a well-behaved mux would never send.
using testing::wire;

struct parsed {
    frame_header h;
    std::vector<std::byte> payload;
};

std::vector<parsed> parse(std::span<const std::byte> bytes) {
    frame_decoder d(k_hard_max_frame);
    d.feed(bytes);
    std::vector<parsed> v;
    for (;;) {
        auto f = d.next();
        if (!f) {
            EXPECT_EQ(f.code(), errc::again);
            return v;
        }
        v.push_back({f->header, {f->payload.begin(), f->payload.end()}});
    }
}

std::vector<parsed> drain(mux& m) {
    std::vector<std::byte> out(64 * 1024);
    std::size_t n = m.produce(out);
    return parse(std::span(out.data(), n));
}

TEST(stream_mux, open_data_fin_both_ways_100_streams_byte_exact) {
    pair_fixture p;
    std::vector<uint32_t> sids;
    for (int i = 0; i < 100; ++i) {
        auto sid = p.relay->open("app", "host:80", k_now);
        ASSERT_TRUE(sid.ok());
        EXPECT_EQ(*sid, uint32_t(1 + 2 * i)); // odd ids from 1, +2 each
        sids.push_back(*sid);
        // Relay pipelines DATA right after OPEN; sizes span several frames and windows.
        p.rh.send(*sid, pattern(*sid, 1000 + std::size_t(i) * 7919), true);
    }
    p.pump();
    // Connector writes only after it acked (auto_ack did so inside on_open).
    for (uint32_t sid : sids) {
        p.ch.send(sid, pattern(sid + 1, 3000 + std::size_t(sid) * 5003), true);
    }
    p.pump();
    for (uint32_t sid : sids) {
        EXPECT_EQ(p.ch.in[sid], p.rh.out[sid]) << sid;
        EXPECT_EQ(p.rh.in[sid], p.ch.out[sid]) << sid;
        EXPECT_TRUE(p.ch.fins.contains(sid));
        EXPECT_TRUE(p.rh.fins.contains(sid));
        EXPECT_TRUE(p.rh.closed.contains(sid));
        EXPECT_TRUE(p.ch.closed.contains(sid));
        EXPECT_TRUE(p.rh.acked.contains(sid));
    }
    EXPECT_EQ(p.relay->stream_count(), 0u);
    EXPECT_EQ(p.conn->stream_count(), 0u);
    EXPECT_TRUE(p.rh.resets.empty());
    EXPECT_TRUE(p.ch.resets.empty());
}

TEST(stream_mux, each_direction_uses_the_window_its_receiver_announced) {
    // The relay grants 1 MiB (its HELLO_ACK), the connector 64 KiB (its HELLO): a reader that
    // never returns credit gets exactly what it granted, in each direction.
    mux_limits rl = small_budget(), cl = small_budget();
    rl.initial_window = 1 << 20;
    cl.initial_window = 64 << 10;
    pair_fixture p(rl, cl);
    hello h;
    h.initial_window = cl.initial_window;
    h.connector_id = "c";
    h.connector_version = "0.1.0";
    p.conn->send_hello(h);
    p.pump();
    hello_ack a;
    a.initial_window = rl.initial_window;
    p.relay->send_hello_ack(a);
    p.pump();
    uint32_t sid = *p.relay->open("app", "a:1", k_now);
    p.ch.no_consume.insert(sid);
    p.rh.no_consume.insert(sid);
    p.rh.send(sid, pattern(sid, 4 << 20), false);
    p.pump();
    p.ch.send(sid, pattern(sid + 1, 4 << 20), false);
    p.pump();
    EXPECT_EQ(p.ch.in[sid].size(), std::size_t(64 << 10)); // relay -> connector: 64 KiB
    EXPECT_EQ(p.rh.in[sid].size(), std::size_t(1 << 20));  // connector -> relay: 1 MiB
    EXPECT_EQ(p.relay->send_window(sid), 0u);
    EXPECT_EQ(p.conn->send_window(sid), 0u);
    EXPECT_TRUE(p.rh.resets.empty());
    EXPECT_TRUE(p.ch.resets.empty());
}

TEST(stream_mux, announced_window_out_of_range_is_a_tunnel_protocol_error) {
    for (uint32_t w : {0u, 1023u, 0x80000000u}) {
        pair_fixture p;
        hello h;
        h.initial_window = w;
        h.connector_id = "c";
        h.connector_version = "0.1.0";
        p.conn->send_hello(h);
        std::size_t n = p.conn->produce(p.buf);
        EXPECT_EQ(p.relay->receive(std::span(p.buf.data(), n), k_now).code(), errc::protocol_error)
            << w;
        hello_ack a;
        a.initial_window = w;
        pair_fixture q;
        q.relay->send_hello_ack(a);
        n = q.relay->produce(q.buf);
        EXPECT_EQ(q.conn->receive(std::span(q.buf.data(), n), k_now).code(), errc::protocol_error)
            << w;
    }
}

TEST(stream_mux, slow_reader_does_not_block_other_streams) {
    pair_fixture p;
    uint32_t a = *p.relay->open("app", "a:1", k_now);
    uint32_t b = *p.relay->open("app", "b:1", k_now);
    p.ch.no_consume.insert(a);
    p.rh.send(a, pattern(a, 1 << 20), false);
    p.rh.send(b, pattern(b, 8 << 20), true);
    p.pump();
    // A's reader never returns credit: exactly the initial window arrives, then A waits.
    EXPECT_EQ(p.ch.in[a].size(), small_budget().initial_window);
    EXPECT_EQ(p.relay->send_window(a), 0u);
    EXPECT_EQ(p.ch.in[b].size(), std::size_t(8 << 20));
    EXPECT_EQ(p.ch.in[b], p.rh.out[b]);
    EXPECT_TRUE(p.ch.fins.contains(b));
    EXPECT_FALSE(p.ch.fins.contains(a));
}

TEST(stream_mux, fairness_two_streams_get_equal_bytes_in_one_produce) {
    pair_fixture p;
    uint32_t a = *p.relay->open("app", "a:1", k_now);
    uint32_t b = *p.relay->open("app", "b:1", k_now);
    p.pump(); // OPEN / OPEN_ACK out of the way
    p.rh.send(a, pattern(a, 1 << 20), false);
    p.rh.send(b, pattern(b, 1 << 20), false);
    // Room for exactly four full DATA frames: round-robin gives each stream two.
    std::vector<std::byte> out(4 * (k_header_size + k_default_max_frame));
    std::size_t n = p.relay->produce(out);
    std::map<uint32_t, std::size_t> got;
    for (auto& f : parse(std::span(out.data(), n))) {
        ASSERT_EQ(f.h.type, frame_type::data);
        got[f.h.stream_id] += f.payload.size();
    }
    EXPECT_EQ(got[a], 2u * k_default_max_frame);
    EXPECT_EQ(got[b], 2u * k_default_max_frame);
}

// Connector mux fed by a hand-written relay.
struct conn_fixture {
    mux_limits l = small_budget();
    test_handler h;
    std::unique_ptr<mux> m;
    explicit conn_fixture(mux_limits lim = small_budget()) : l(lim) {
        m = std::make_unique<mux>(role::connector, l, h);
        h.m = m.get();
    }
    result<void> rx(const wire& w, uint64_t now = k_now) { return m->receive(w.span(), now); }
};

struct relay_fixture {
    mux_limits l = small_budget();
    test_handler h;
    std::unique_ptr<mux> m;
    explicit relay_fixture(mux_limits lim = small_budget()) : l(lim) {
        m = std::make_unique<mux>(role::relay, l, h);
        h.m = m.get();
    }
    result<void> rx(const wire& w, uint64_t now = k_now) { return m->receive(w.span(), now); }
};

TEST(stream_mux, data_beyond_credit_resets_stream_with_flow_control) {
    mux_limits l = small_budget();
    l.initial_window = 1024;
    conn_fixture c(l);
    c.h.auto_consume = false; // credit comes back only when read
    ASSERT_TRUE(c.rx(wire{}.open(1).data(1, 1024).data(1, 1)).ok()); // stream-level: ok
    ASSERT_EQ(c.h.resets.size(), 1u);
    EXPECT_EQ(c.h.resets[0], std::make_pair(1u, reason::flow_control));
    EXPECT_EQ(c.h.in[1].size(), 1024u);
    auto frames = drain(*c.m);
    ASSERT_FALSE(frames.empty());
    EXPECT_EQ(frames.back().h.type, frame_type::rst);
    auto r = decode_reason(frames.back().payload);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->code, reason::flow_control);
    EXPECT_EQ(c.m->stream_count(), 0u);
    EXPECT_EQ(c.m->counters().get(mux_counter::flow_control_errors), 1u);
}

TEST(stream_mux, consumed_returns_credit_in_quarter_batches) {
    mux_limits l = small_budget();
    l.initial_window = 4096;
    conn_fixture c(l);
    c.h.auto_consume = false;
    ASSERT_TRUE(c.rx(wire{}.open(1).data(1, 2000)).ok());
    EXPECT_EQ(c.m->recv_window(1), 2096u);
    c.m->consumed(1, 1000); // below a quarter (1024): no WINDOW yet
    c.m->consumed(1, 1000);
    EXPECT_EQ(c.m->recv_window(1), 4096u);
    int windows = 0;
    for (auto& f : drain(*c.m)) {
        if (f.h.type == frame_type::window) {
            ++windows;
            EXPECT_EQ(*decode_window(f.payload), 2000u);
        }
    }
    EXPECT_EQ(windows, 1);
}

TEST(stream_mux, window_overflow_resets_stream) {
    relay_fixture r;
    uint32_t sid = *r.m->open("app", "a:1", k_now);
    ASSERT_TRUE(r.rx(wire{}.open_ack(sid).window(sid, k_max_window)).ok());
    ASSERT_EQ(r.h.resets.size(), 1u);
    EXPECT_EQ(r.h.resets[0], std::make_pair(sid, reason::flow_control));
    auto frames = drain(*r.m);
    EXPECT_EQ(frames.back().h.type, frame_type::rst);
    EXPECT_EQ(decode_reason(frames.back().payload)->code, reason::flow_control);
}

TEST(stream_mux, zero_window_resets_stream_with_protocol_error) {
    relay_fixture r;
    uint32_t sid = *r.m->open("app", "a:1", k_now);
    ASSERT_TRUE(r.rx(wire{}.open_ack(sid).window(sid, 0)).ok());
    ASSERT_EQ(r.h.resets.size(), 1u);
    EXPECT_EQ(r.h.resets[0], std::make_pair(sid, reason::protocol_error));
}

TEST(stream_mux, even_stream_id_is_tunnel_protocol_error) {
    conn_fixture c;
    auto res = c.rx(wire{}.open(2));
    ASSERT_FALSE(res.ok());
    EXPECT_EQ(res.code(), errc::protocol_error);
}

TEST(stream_mux, decreasing_stream_id_is_tunnel_protocol_error) {
    conn_fixture c;
    ASSERT_TRUE(c.rx(wire{}.open(5)).ok());
    auto res = c.rx(wire{}.open(3));
    ASSERT_FALSE(res.ok());
    EXPECT_EQ(res.code(), errc::protocol_error);
    EXPECT_EQ(res.err().detail, "stream id not increasing");
    EXPECT_FALSE(c.rx(wire{}.ping(1)).ok()); // sticky: the tunnel is dead
}

TEST(stream_mux, open_from_connector_is_tunnel_protocol_error) {
    relay_fixture r;
    EXPECT_EQ(r.rx(wire{}.open(1)).code(), errc::protocol_error);
}

TEST(stream_mux, connector_data_before_open_ack_is_tunnel_protocol_error) {
    relay_fixture r;
    uint32_t sid = *r.m->open("app", "a:1", k_now);
    auto res = r.rx(wire{}.data(sid, 10));
    EXPECT_EQ(res.code(), errc::protocol_error);
}

TEST(stream_mux, connector_does_not_send_data_before_open_ack) {
    conn_fixture c;
    c.h.auto_ack = false;
    ASSERT_TRUE(c.rx(wire{}.open(1)).ok());
    c.h.send(1, "hello", false);
    EXPECT_TRUE(drain(*c.m).empty());
    c.m->open_ack(1);
    auto frames = drain(*c.m);
    ASSERT_EQ(frames.size(), 2u);
    EXPECT_EQ(frames[0].h.type, frame_type::open_ack);
    EXPECT_EQ(frames[1].h.type, frame_type::data);
}

TEST(stream_mux, open_rst_flood_refuses_new_opens_and_keeps_the_tunnel) {
    conn_fixture c;
    // Each RST received costs a token (OPENs are free: max_streams bounds them); the burst of
    // 400 lasts 400 pairs at a frozen clock. Then OPENs are refused (RST rate_limited), the
    // tunnel stays.
    for (uint32_t sid = 1, pairs = 0; pairs < 1000; sid += 2, ++pairs) {
        auto res = c.rx(wire{}.open(sid).rst(sid));
        ASSERT_TRUE(res.ok()) << pairs << " " << res.err().detail;
        drain(*c.m);
    }
    EXPECT_EQ(c.h.opened.size(), 400u); // OPENs 401.. found the bucket empty
    EXPECT_EQ(c.m->counters().get(mux_counter::rate_limited), 600u);
    // One second later the bucket holds 200 tokens: new streams open again.
    ASSERT_TRUE(c.rx(wire{}.open(2001), k_now + 1'000'000'000ull).ok());
    EXPECT_EQ(c.h.opened.size(), 401u);
}

TEST(stream_mux, relay_stops_opening_when_the_connector_resets_spent_the_budget) {
    relay_fixture r;
    uint64_t now = k_now;
    std::vector<uint32_t> sids;
    for (int i = 0; i < 400; ++i) {
        auto sid = r.m->open("app", "h:1", now);
        ASSERT_TRUE(sid.ok());
        sids.push_back(*sid);
    }
    drain(*r.m);
    wire w;
    for (uint32_t sid : sids) {
        w.rst(sid);
    }
    ASSERT_TRUE(r.rx(w, now).ok()); // resets never close the tunnel
    auto refused = r.m->open("app", "h:1", now);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.code(), errc::overloaded);
    EXPECT_TRUE(r.m->open("app", "h:1", now + 10'000'000ull).ok()); // 2 tokens back after 10 ms
}

TEST(stream_mux, open_rst_at_the_refill_rate_is_not_limited) {
    conn_fixture c;
    uint64_t now = k_now;
    for (uint32_t sid = 1; sid < 4001; sid += 2) {
        now += 5'000'000; // 200 pairs/s = 200 tokens/s, exactly the refill rate
        auto res = c.rx(wire{}.open(sid).rst(sid), now);
        ASSERT_TRUE(res.ok()) << sid << " " << res.err().detail;
        drain(*c.m); // the owner flushes the OPEN_ACKs (else the control queue limit trips)
    }
}

TEST(stream_mux, late_frames_are_ignored_and_not_charged) {
    conn_fixture c;
    ASSERT_TRUE(c.rx(wire{}.open(1).rst(1)).ok());
    for (int n = 0; n < 1000; ++n) {
        ASSERT_TRUE(c.rx(wire{}.data(1, 1)).ok()) << n;
    }
    EXPECT_EQ(c.m->counters().get(mux_counter::closed_stream_frames), 1000u);
    ASSERT_TRUE(c.rx(wire{}.open(3)).ok()); // accepted: late frames spend no budget
    EXPECT_EQ(c.h.opened.size(), 2u);
    // A frame on an id never opened is forged, not late.
    conn_fixture d;
    EXPECT_EQ(d.rx(wire{}.window(7, 1)).code(), errc::protocol_error);
}

TEST(stream_mux, ping_flood_without_produce_hits_control_queue_limit) {
    conn_fixture c;
    wire w;
    for (int i = 0; i < 1000; ++i) {
        w.ping(uint64_t(i));
    }
    ASSERT_TRUE(c.rx(w).ok()); // 1000 PONGs queued: at the limit
    auto res = c.rx(wire{}.ping(1000));
    ASSERT_FALSE(res.ok());
    EXPECT_EQ(res.code(), errc::overloaded);
}

TEST(stream_mux, ping_answered_with_pong) {
    pair_fixture p;
    p.relay->ping(42);
    p.pump();
    EXPECT_EQ(p.rh.pongs, std::vector<uint64_t>{42});
}

TEST(stream_mux, counters_count_frames_by_type) {
    pair_fixture p;
    p.relay->ping(1);
    uint32_t sid = *p.relay->open("app", "a:1", k_now);
    p.rh.send(sid, pattern(sid, 100), true);
    p.pump();
    const auto& rc = p.relay->counters();
    const auto& cc = p.conn->counters();
    EXPECT_EQ(rc.get(mux_counter::out_ping), 1u);
    EXPECT_EQ(cc.get(mux_counter::in_ping), 1u);
    EXPECT_EQ(cc.get(mux_counter::out_pong), 1u);
    EXPECT_EQ(rc.get(mux_counter::in_pong), 1u);
    EXPECT_EQ(rc.get(mux_counter::out_open), 1u);
    EXPECT_EQ(cc.get(mux_counter::out_open_ack), 1u);
    EXPECT_EQ(rc.get(mux_counter::out_data), 1u);
    EXPECT_EQ(cc.get(mux_counter::in_data), 1u);
    EXPECT_EQ(rc.get(mux_counter::out_fin), 1u);
    EXPECT_EQ(cc.get(mux_counter::in_fin), 1u);
    // frames_out = PING + OPEN + DATA + FIN; frames_in on the connector sees the same four.
    EXPECT_EQ(rc.get(mux_counter::frames_out), 4u);
    EXPECT_EQ(cc.get(mux_counter::frames_in), 4u);
}

TEST(stream_mux, empty_data_flood_is_tunnel_protocol_error) {
    conn_fixture c;
    ASSERT_TRUE(c.rx(wire{}.open(1).data(1, 0)).ok());    // one is tolerated
    ASSERT_TRUE(c.rx(wire{}.data(1, 5).data(1, 0)).ok()); // non-empty DATA resets the count
    auto res = c.rx(wire{}.data(1, 0));
    EXPECT_EQ(res.code(), errc::protocol_error);
}

TEST(stream_mux, window_flood_is_tunnel_protocol_error) {
    relay_fixture r;
    uint32_t sid = *r.m->open("app", "a:1", k_now);
    ASSERT_TRUE(r.rx(wire{}.open_ack(sid)).ok());
    // No DATA sent yet: 10 * (0 + 10) = 100 WINDOW frames allowed, the 101st trips.
    wire w;
    for (int i = 0; i < 100; ++i) {
        w.window(sid, 1);
    }
    ASSERT_TRUE(r.rx(w).ok());
    EXPECT_EQ(r.rx(wire{}.window(sid, 1)).code(), errc::protocol_error);
}

TEST(stream_mux, open_after_goaway_is_refused) {
    relay_fixture r;
    ASSERT_TRUE(r.rx(wire{}.goaway()).ok());
    EXPECT_TRUE(r.m->going_away());
    EXPECT_EQ(r.h.goaways, 1);
    EXPECT_EQ(r.m->open("app", "a:1", k_now).code(), errc::shutting_down);

    conn_fixture c;
    c.m->goaway(reason::shutting_down, "bye");
    ASSERT_TRUE(c.rx(wire{}.open(1)).ok());
    EXPECT_TRUE(c.h.opened.empty());
    auto frames = drain(*c.m);
    ASSERT_EQ(frames.size(), 2u);
    EXPECT_EQ(frames[0].h.type, frame_type::goaway);
    EXPECT_EQ(frames[1].h.type, frame_type::rst);
    EXPECT_EQ(decode_reason(frames[1].payload)->code, reason::shutting_down);
}

TEST(stream_mux, max_streams_enforced_both_sides) {
    mux_limits l = small_budget();
    l.max_streams = 4;
    conn_fixture c(l);
    ASSERT_TRUE(c.rx(wire{}.open(1).open(3).open(5).open(7).open(9)).ok());
    EXPECT_EQ(c.m->stream_count(), 4u);
    EXPECT_FALSE(c.h.opened.contains(9));
    auto frames = drain(*c.m);
    ASSERT_FALSE(frames.empty());
    EXPECT_EQ(frames.back().h.type, frame_type::rst);
    EXPECT_EQ(frames.back().h.stream_id, 9u);
    EXPECT_EQ(decode_reason(frames.back().payload)->code, reason::stream_limit);

    relay_fixture r(l);
    for (int i = 0; i < 4; ++i) {
        ASSERT_TRUE(r.m->open("app", "a:1", k_now).ok());
    }
    EXPECT_EQ(r.m->open("app", "a:1", k_now).code(), errc::stream_limit);
    r.m->reset(1, reason::cancelled, "user left");
    EXPECT_TRUE(r.m->open("app", "a:1", k_now).ok()); // a slot freed
}

TEST(stream_mux, open_fail_removes_stream_and_late_frames_are_ignored) {
    pair_fixture p;
    p.ch.auto_ack = false;
    uint32_t sid = *p.relay->open("app", "a:1", k_now);
    p.pump();
    p.conn->open_fail(sid, reason::refused, "backend refused");
    p.pump();
    ASSERT_EQ(p.rh.open_fails.size(), 1u);
    EXPECT_EQ(p.rh.open_fails[0], std::make_pair(sid, reason::refused));
    EXPECT_EQ(p.relay->stream_count(), 0u);
    EXPECT_EQ(p.conn->stream_count(), 0u);
}

TEST(stream_mux, reset_from_inside_on_data_is_safe) {
    struct resetting : test_handler {
        void on_data(uint32_t sid, std::span<const std::byte> b) override {
            test_handler::on_data(sid, b);
            m->reset(sid, reason::cancelled, "app closed");
        }
    };
    mux_limits l = small_budget();
    resetting h;
    mux c(role::connector, l, h);
    h.m = &c;
    // Second DATA arrives for a stream the owner just reset inside the same receive(): ignored.
    ASSERT_TRUE(c.receive(wire{}.open(1).data(1, 10).data(1, 10).span(), k_now).ok());
    EXPECT_EQ(h.in[1].size(), 10u);
    EXPECT_TRUE(h.resets.empty()); // no on_reset for owner-requested resets
    EXPECT_EQ(c.stream_count(), 0u);
    EXPECT_EQ(c.counters().get(mux_counter::closed_stream_frames), 1u);
}

TEST(stream_mux, stream_records_survive_churn_and_are_reused) {
    // 20 rounds of: open up to max_streams, then reset every other live stream (oldest first).
    // Each round costs at most max_streams opens + resets of budget, so the clock advances 10 s
    // per round to refill the bucket (200/s * 10 s > 400 burst). Stream lookups must keep
    // finding exactly the live ids while the index shifts entries on every erase.
    mux_limits l = small_budget();
    l.max_streams = 300;
    test_handler h;
    mux r(role::relay, l, h);
    h.m = &r;
    std::set<uint32_t> live;
    uint64_t now = k_now;
    std::vector<std::byte> buf(64 * 1024);
    for (int round = 0; round < 20; ++round) {
        now += 10'000'000'000ull;
        while (live.size() < l.max_streams) {
            auto sid = r.open("app", "a:1", now);
            ASSERT_TRUE(sid.ok()) << name_of(sid.code());
            live.insert(*sid);
        }
        while (r.produce(buf) > 0) {
        }
        bool drop = true;
        for (auto it = live.begin(); it != live.end();) {
            if (drop) {
                r.reset(*it, reason::cancelled, "churn");
                it = live.erase(it);
            } else {
                ++it;
            }
            drop = !drop;
        }
        ASSERT_EQ(r.stream_count(), live.size());
        for (uint32_t sid : live) {
            ASSERT_EQ(r.send_window(sid), l.initial_window) << sid;
        }
        ASSERT_EQ(r.send_window(*live.begin() - 2), 0u);
    }
}

} // namespace
} // namespace apprelay::tunnel
