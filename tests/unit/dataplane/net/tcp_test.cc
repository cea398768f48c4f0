// TCP behaviour of the stack against a hand-driven peer.
#include "fixture.hh"

#include <algorithm>
#include <cerrno>

namespace apprelay::net::testing {
namespace {

using tcp_conn = net_test;

bytes str(const char* s) {
    bytes b;
    for (; *s != 0; ++s) {
        b.push_back(std::byte(*s));
    }
    return b;
}

TEST_F(tcp_conn, three_way_handshake_negotiates_mss_window_scale_and_sack) {
    start();
    auto l = st->listen(k_port);
    ASSERT_TRUE(l.ok());
    listener = *l;
    tcp_spec syn;
    syn.sport = 40000;
    syn.dport = k_port;
    syn.seq = 5000;
    syn.flags = k_syn;
    syn.options = cat({opt_mss(1200), opt_ws(3), opt_sackok()});
    input(tcp_frame(syn));
    auto sa = one();
    EXPECT_EQ(sa.flags, k_syn | k_ack);
    EXPECT_EQ(sa.ack, 5001u);
    EXPECT_EQ(sa.mss, 1460);
    EXPECT_EQ(sa.wscale, 7);
    EXPECT_TRUE(sa.sack_ok);
    EXPECT_EQ(sa.window, 65535) << "SYN-ACK window is unscaled (RFC 7323 2.2)";
    EXPECT_EQ(sa.dst, k_peer_mac) << "answered at the SYN's MAC without ARP";
    EXPECT_TRUE(ev.accepted.empty()) << "no accept before the handshake completes";
    EXPECT_EQ(st->connections(), 1u);
    client c{40000, 5001, sa.seq + 1, {}};
    seg(c, k_ack);
    ASSERT_EQ(ev.accepted.size(), 1u);
    EXPECT_EQ(ev.peer_ip, k_peer_ip);
    EXPECT_EQ(ev.peer_port, 40000);
    EXPECT_EQ(ev.listener, listener);
    EXPECT_EQ(st->count(counter::tcp_accepted), 1u);
    // The peer's MSS (1200) bounds our segments.
    const bytes data = pattern(3000);
    ASSERT_TRUE(st->send(ev.accepted[0], data));
    auto o = out();
    ASSERT_EQ(o.size(), 3u);
    EXPECT_EQ(o[0].payload.size(), 1200u);
    EXPECT_EQ(o[1].payload.size(), 1200u);
    EXPECT_EQ(o[2].payload.size(), 600u);
    EXPECT_EQ(o[0].seq, c.ack);
    // Our window is scaled by 7 now: 64 KiB buffer -> field 512.
    EXPECT_EQ(o[0].window, (64 * 1024) >> 7);
}

TEST_F(tcp_conn, syn_without_options_gets_default_mss_and_no_scaling) {
    start();
    ASSERT_TRUE(st->listen(k_port).ok());
    tcp_spec syn;
    syn.sport = 40000;
    syn.dport = k_port;
    syn.seq = 1;
    syn.flags = k_syn;
    input(tcp_frame(syn));
    auto sa = one();
    EXPECT_EQ(sa.wscale, -1) << "no window scale unless the peer offers it";
    EXPECT_FALSE(sa.sack_ok);
    client c{40000, 2, sa.seq + 1, {}};
    seg(c, k_ack);
    ASSERT_EQ(ev.accepted.size(), 1u);
    ASSERT_TRUE(st->send(ev.accepted[0], keep(pattern(2000))));
    auto o = out();
    ASSERT_FALSE(o.empty());
    EXPECT_EQ(o[0].payload.size(), 536u) << "RFC 9293 3.7.1 default MSS";
    EXPECT_EQ(o[0].window, 65535) << "unscaled, capped at 16 bits";
}

TEST_F(tcp_conn, in_order_data_is_delivered_and_acked_every_second_segment) {
    start();
    client c = handshake();
    const bytes a = pattern(1000, 1), b = pattern(1000, 2), d = pattern(10, 3);
    const bytes e = pattern(20, 4);
    seg(c, k_ack, a);
    EXPECT_TRUE(out().empty()) << "first segment: delayed ACK";
    seg(c, k_ack, b);
    auto ack = one();
    EXPECT_EQ(ack.flags, k_ack);
    EXPECT_EQ(ack.ack, c.seq) << "every second segment is ACKed at once";
    seg(c, k_ack, d);
    EXPECT_TRUE(out().empty());
    advance_ms(cfg.tcp.delayed_ack_ms);
    EXPECT_EQ(one().ack, c.seq) << "delayed ACK fires after delayed_ack_ms";
    seg(c, k_ack | k_psh, e);
    EXPECT_EQ(one().ack, c.seq) << "PSH ends a write: ACKed at once";
    bytes all = a;
    all.insert(all.end(), b.begin(), b.end());
    all.insert(all.end(), d.begin(), d.end());
    all.insert(all.end(), e.begin(), e.end());
    EXPECT_EQ(ev.of(c.id).data, all);
}

TEST_F(tcp_conn, corrupt_and_malformed_segments_are_dropped_and_counted) {
    start();
    client c = handshake();
    tcp_spec s;
    s.sport = c.port;
    s.dport = k_port;
    s.seq = c.seq;
    s.ack = c.ack;
    s.flags = k_ack;
    s.payload = str("x");
    s.bad_checksum = true;
    input(tcp_frame(s));
    EXPECT_EQ(st->count(counter::tcp_bad_checksum), 1u);
    s.bad_checksum = false;
    s.options = {std::byte{2}, std::byte{4}, std::byte{5}}; // MSS cut short by the header end
    s.payload.clear();
    s.doff_words = 6;
    s.options = {std::byte{1}, std::byte{1}, std::byte{2}, std::byte{8}};
    input(tcp_frame(s)); // option length 8 runs past the 24-byte header
    EXPECT_EQ(st->count(counter::tcp_bad_options), 1u);
    s.options.clear();
    s.doff_words = 15; // header longer than the segment
    input(tcp_frame(s));
    s.doff_words = 4; // below 5 words
    input(tcp_frame(s));
    EXPECT_EQ(st->count(counter::tcp_bad_header), 2u);
    // Truncated TCP header inside a valid IP datagram.
    input(frame_to_us(ipv4({k_peer_ip, k_our_ip, 6}, bytes(12))));
    EXPECT_EQ(st->count(counter::tcp_bad_header), 3u);
    EXPECT_TRUE(out().empty());
    EXPECT_TRUE(ev.of(c.id).data.empty());
}

TEST_F(tcp_conn, out_of_window_data_is_dropped_and_answered_with_an_ack) {
    start();
    client c = handshake();
    client far = c;
    far.seq = c.seq + 10 * 64 * 1024; // far beyond the 64 KiB window
    seg(far, k_ack, str("nope"));
    auto ack = one();
    EXPECT_EQ(ack.ack, c.seq);
    EXPECT_EQ(st->count(counter::tcp_out_of_window), 1u);
    EXPECT_TRUE(ev.of(c.id).data.empty());
}

TEST_F(tcp_conn, duplicate_segment_is_reacked_and_not_delivered_twice) {
    start();
    client c = handshake();
    client dup = c;
    seg(c, k_ack | k_psh, str("hello"));
    seg(dup, k_ack | k_psh, str("hello"));
    auto o = out();
    ASSERT_FALSE(o.empty());
    EXPECT_EQ(o.back().ack, c.seq);
    EXPECT_EQ(ev.of(c.id).data, str("hello"));
    // A retransmission overlapping old and new bytes delivers only the new ones.
    client overlap = c;
    overlap.seq -= 2;
    seg(overlap, k_ack, str("lo world"));
    EXPECT_EQ(ev.of(c.id).data, str("hello world"));
}

TEST_F(tcp_conn, out_of_order_segments_are_kept_and_reassembled) {
    start();
    client c = handshake();
    const bytes d = pattern(3000);
    auto part = [&](std::size_t from, std::size_t n) {
        return bytes(d.begin() + std::ptrdiff_t(from), d.begin() + std::ptrdiff_t(from + n));
    };
    const uint32_t base = c.seq;
    client x = c;
    x.seq = base + 2000;
    seg(x, k_ack, part(2000, 1000));
    auto dupack = one();
    EXPECT_EQ(dupack.ack, base) << "out of order: immediate duplicate ACK";
    x.seq = base + 1000;
    seg(x, k_ack, part(1000, 1000));
    EXPECT_EQ(one().ack, base);
    EXPECT_TRUE(ev.of(c.id).data.empty());
    EXPECT_EQ(st->count(counter::tcp_ooo_segments), 2u);
    x.seq = base;
    seg(x, k_ack, part(0, 1000)); // fills the hole
    EXPECT_EQ(one().ack, base + 3000) << "hole filled: cumulative ACK at once";
    st->run_timers(now); // buffered bytes are delivered from the pending list
    EXPECT_EQ(ev.of(c.id).data, d);
}

TEST_F(tcp_conn, out_of_order_holes_beyond_the_range_limit_are_dropped_not_stored) {
    start();
    client c = handshake();
    // Nine disjoint islands 100 bytes apart: the ninth exceeds k_max_ooo_ranges (8).
    for (uint32_t i = 1; i <= 9; ++i) {
        client x = c;
        x.seq = c.seq + i * 200;
        seg(x, k_ack, pattern(100, i));
    }
    out();
    EXPECT_EQ(st->count(counter::tcp_ooo_segments), 9u);
    EXPECT_EQ(st->count(counter::tcp_ooo_dropped), 1u);
    // Filling every gap before island 9 delivers gap, island, gap, ... island 8, gap: 1800
    // bytes; island 9 was never stored, so the stream stops where it begins.
    bytes expect;
    for (uint32_t i = 0; i <= 8; ++i) {
        client x = c;
        x.seq = c.seq + (i == 0 ? 0 : i * 200 + 100);
        const bytes gap = pattern(i == 0 ? 200 : 100, 50 + i);
        seg(x, k_ack, gap);
        if (i > 0) {
            const bytes island = pattern(100, i);
            expect.insert(expect.end(), island.begin(), island.end());
        }
        expect.insert(expect.end(), gap.begin(), gap.end());
    }
    EXPECT_EQ(ev.of(c.id).data, expect);
    advance_ms(cfg.tcp.delayed_ack_ms); // the last gap was plain in-order data: delayed ACK
    EXPECT_EQ(out().back().ack, c.seq + 1800);
}

TEST_F(tcp_conn, paused_receive_buffers_within_the_window_and_reopens_on_start_recv) {
    cfg.tcp.rcv_buf = 8 * 1024;
    start();
    ev.auto_recv = false;
    client c = handshake(40000, cat({opt_mss(1460)})); // no window scaling: windows in bytes
    // 8 KiB buffer; 1000-byte segments.
    uint16_t last_window = 0;
    for (int i = 0; i < 8; ++i) {
        seg(c, k_ack, pattern(1000, uint32_t(i)));
        for (auto& f : out()) {
            last_window = f.window;
        }
    }
    EXPECT_TRUE(ev.of(c.id).data.empty()) << "paused: nothing delivered";
    EXPECT_EQ(last_window, 8192 - 8000) << "window shrinks as the buffer fills";
    // Beyond the advertised window: dropped, never buffered.
    seg(c, k_ack, pattern(1000, 99));
    auto o = out();
    ASSERT_FALSE(o.empty());
    EXPECT_EQ(o.back().ack, c.seq - 1000 + 192) << "only the 192 bytes that fit are taken";
    c.seq = o.back().ack;
    EXPECT_LE(st->memory_bytes(), 64u * 1024 + 8192 + 16 * 1024 * 1024);
    st->start_recv(c.id);
    EXPECT_EQ(st->next_timer_ns(), 0u) << "owed callbacks make the loop call run_timers";
    st->run_timers(now);
    EXPECT_EQ(ev.of(c.id).data.size(), 8192u);
    auto upd = one();
    EXPECT_EQ(upd.window, 8192) << "window update after the reader drained the buffer";
}

TEST_F(tcp_conn, full_buffer_advertises_zero_window_and_answers_probes_without_taking_data) {
    cfg.tcp.rcv_buf = 4096;
    start();
    ev.auto_recv = false;
    client c = handshake(40000, cat({opt_mss(1460)}));
    seg(c, k_ack, pattern(2048, 1));
    seg(c, k_ack, pattern(2048, 2));
    auto o = out();
    ASSERT_FALSE(o.empty());
    EXPECT_EQ(o.back().window, 0) << "buffer full: zero window";
    client probe = c;
    seg(probe, k_ack, pattern(1, 3)); // window probe: one byte at RCV.NXT
    auto a = one();
    EXPECT_EQ(a.ack, c.seq) << "probe byte not taken";
    EXPECT_EQ(a.window, 0);
    st->start_recv(c.id);
    st->run_timers(now);
    EXPECT_EQ(ev.of(c.id).data.size(), 4096u);
    EXPECT_EQ(one().window, 4096) << "window update once the reader drained the buffer";
}

TEST_F(tcp_conn, slow_start_grows_the_window_by_one_segment_per_ack) {
    start();
    client c = handshake();
    const bytes& d = keep(pattern(40 * 1460));
    std::size_t acked = 0;
    // The owner re-sends the rest from inside on_sent, as the DPDK loop will.
    ev.on_sent_hook = [&](sock_id id, int res) {
        acked += std::size_t(res);
        EXPECT_TRUE(st->send(id, std::span<const std::byte>(d).subspan(acked)));
    };
    ASSERT_TRUE(st->send(c.id, d));
    EXPECT_EQ(out().size(), 10u) << "IW 10";
    // ACK all ten one by one: cwnd 10 -> 20 segments (RFC 5681 3.1), so 20 more go out.
    std::size_t sent = 0;
    for (int i = 0; i < 10; ++i) {
        c.ack += 1460;
        seg(c, k_ack);
        sent += out().size();
    }
    EXPECT_EQ(sent, 20u);
}

TEST_F(tcp_conn, partial_ack_in_fast_recovery_retransmits_the_next_hole) {
    start();
    client c = handshake();
    const bytes& d = keep(pattern(10 * 1460));
    ASSERT_TRUE(st->send(c.id, d));
    out();
    const uint32_t first = c.ack;
    for (int i = 0; i < 3; ++i) {
        seg(c, k_ack);
    }
    EXPECT_EQ(out().front().seq, first);
    c.ack += 2 * 1460; // segments 0 and 1 covered; segment 2 also lost
    seg(c, k_ack);
    auto r = out();
    ASSERT_FALSE(r.empty());
    EXPECT_EQ(r.front().seq, first + 2 * 1460) << "RFC 6582 partial ACK: next hole at once";
    EXPECT_EQ(st->count(counter::tcp_rto_expired), 0u);
}

TEST_F(tcp_conn, connect_refused_by_rst_reports_econnrefused) {
    start();
    input(eth({k_peer_mac, k_our_mac}, 0x0806, arp(2, k_peer_mac, k_peer_ip, k_our_mac, k_our_ip)));
    auto id = st->connect(k_peer_ip, 80, now);
    ASSERT_TRUE(id.ok());
    auto syn = one();
    ASSERT_EQ(syn.flags, k_syn);
    EXPECT_TRUE(syn.has_ts);
    tcp_spec r;
    r.sport = 80;
    r.dport = syn.sport;
    r.seq = 0;
    r.ack = syn.seq + 1;
    r.flags = k_rst | k_ack;
    input(tcp_frame(r));
    EXPECT_EQ(ev.of(*id).connect, -ECONNREFUSED);
    EXPECT_EQ(st->connections(), 0u);
}

TEST_F(tcp_conn, active_open_completes_and_carries_data) {
    start();
    input(eth({k_peer_mac, k_our_mac}, 0x0806, arp(2, k_peer_mac, k_peer_ip, k_our_mac, k_our_ip)));
    auto id = st->connect(k_peer_ip, 80, now);
    ASSERT_TRUE(id.ok());
    auto syn = one();
    tcp_spec sa;
    sa.sport = 80;
    sa.dport = syn.sport;
    sa.seq = 9000;
    sa.ack = syn.seq + 1;
    sa.flags = k_syn | k_ack;
    sa.options = cat({opt_mss(1000), opt_ws(1)});
    input(tcp_frame(sa));
    EXPECT_EQ(ev.of(*id).connect, 0);
    auto ack = one();
    EXPECT_EQ(ack.flags, k_ack);
    EXPECT_EQ(ack.ack, 9001u);
    EXPECT_EQ(ack.window, (64 * 1024) >> 7) << "we offered 7, the peer answered: scaled";
    ASSERT_TRUE(st->send(*id, keep(pattern(1500))));
    auto o = out();
    ASSERT_EQ(o.size(), 2u);
    EXPECT_EQ(o[0].payload.size(), 1000u) << "peer MSS";
}

TEST_F(tcp_conn, zero_window_from_peer_stops_sending_and_persist_probes_it) {
    start();
    client c = handshake(40000, cat({opt_mss(1460)}), 0); // peer window 0
    const bytes d = pattern(3000);
    ASSERT_TRUE(st->send(c.id, d));
    EXPECT_TRUE(out().empty()) << "nothing may be sent into a zero window";
    advance_ms(cfg.tcp.rto_initial_ms);
    auto probe = one();
    EXPECT_EQ(probe.payload.size(), 1u) << "persist probe carries one byte";
    EXPECT_EQ(probe.seq, c.ack);
    EXPECT_EQ(st->count(counter::tcp_zero_window_probes), 1u);
    seg(c, k_ack, {}, 0);                   // still closed, probe byte not taken
    advance_ms(cfg.tcp.rto_initial_ms * 2); // backed off
    EXPECT_EQ(one().payload.size(), 1u);
    EXPECT_EQ(st->count(counter::tcp_zero_window_probes), 2u);
    // Window opens (and takes the probe byte): the rest flows.
    c.ack += 1;
    seg(c, k_ack, {}, 65535);
    auto o = out();
    std::size_t sent = 0;
    for (auto& f : o) {
        sent += f.payload.size();
    }
    EXPECT_EQ(sent, 2999u);
    EXPECT_EQ(ev.of(c.id).sent, std::vector<int>{3000}) << "all transmitted: complete";
    c.ack += 2999;
    seg(c, k_ack);
    EXPECT_EQ(ev.of(c.id).sent, std::vector<int>{3000});
}

TEST_F(tcp_conn, peer_window_scale_multiplies_its_window_field) {
    start();
    client c = handshake(40000, cat({opt_mss(1460), opt_ws(2)}), 100); // 100 << 2 = 400 bytes
    ASSERT_TRUE(st->send(c.id, keep(pattern(1000))));
    auto o = out();
    ASSERT_EQ(o.size(), 1u);
    EXPECT_EQ(o[0].payload.size(), 400u);
}

TEST_F(tcp_conn, short_on_sent_then_send_of_the_rest_continues_the_stream) {
    start();
    // Peer window of two segments, no scaling: the send cannot go out whole.
    client c = handshake(40000, cat({opt_mss(1460)}), 2920);
    bytes d = pattern(4000);
    const bytes original = d;
    ASSERT_TRUE(st->send(c.id, d));
    auto o = out();
    ASSERT_EQ(o.size(), 2u);
    EXPECT_FALSE(st->send(c.id, d)) << "second send while one is outstanding";
    // The peer takes one segment but shrinks its window: the right edge stays, nothing more
    // goes out, so the send cannot complete: short on_sent of what was ACKed.
    c.ack += 1460;
    seg(c, k_ack, {}, 1460);
    EXPECT_TRUE(out().empty());
    ASSERT_EQ(ev.of(c.id).sent, std::vector<int>{1460}) << "short: only bytes ACKed";
    // Not yet re-sent: the next ACK arrives while no send is outstanding.
    c.ack += 1460;
    seg(c, k_ack, {}, 1460);
    EXPECT_EQ(ev.of(c.id).sent.size(), 1u);
    // The owner re-sends the rest from a new buffer; the old one is gone.
    std::fill(d.begin(), d.end(), std::byte{0xee});
    const bytes& rest = keep(bytes(original.begin() + 1460, original.end()));
    ASSERT_TRUE(st->send(c.id, rest));
    auto r = out();
    ASSERT_EQ(r.size(), 1u) << "bytes up to 2920 were sent by the first send";
    EXPECT_EQ(r[0].seq, c.ack);
    EXPECT_EQ(r[0].payload, bytes(original.begin() + 2920, original.end()));
    st->run_timers(now);
    EXPECT_EQ(ev.of(c.id).sent, (std::vector<int>{1460, 2540})) << "then complete at once";
}

TEST_F(tcp_conn, rto_before_the_owner_resends_the_rest_waits_for_its_send) {
    start();
    client c = handshake(40000, cat({opt_mss(1460)}), 2920);
    const bytes& d = keep(pattern(3000));
    ASSERT_TRUE(st->send(c.id, d));
    EXPECT_EQ(out().size(), 2u);
    c.ack += 1460;
    seg(c, k_ack, {}, 1460); // window shrinks: the send stays incomplete
    ASSERT_EQ(ev.of(c.id).sent, std::vector<int>{1460});
    // The owner has not re-sent the unACKed rest yet when the RTO fires: nothing to send from,
    // and the connection must survive.
    now = st->next_timer_ns();
    st->run_timers(now);
    EXPECT_TRUE(out().empty());
    EXPECT_EQ(st->connections(), 1u);
    ASSERT_TRUE(st->send(c.id, std::span<const std::byte>(d).subspan(1460)));
    auto r = out();
    ASSERT_EQ(r.size(), 1u) << "cwnd is one segment after the timeout";
    EXPECT_EQ(r[0].seq, c.ack);
    EXPECT_EQ(r[0].payload, bytes(d.begin() + 1460, d.begin() + 2920));
}

TEST_F(tcp_conn, rto_retransmits_with_exponential_backoff_then_fails_with_etimedout) {
    cfg.tcp.max_retransmits = 3;
    cfg.tcp.user_timeout_ms = 1'000'000;
    start();
    client c = handshake();
    ASSERT_TRUE(st->send(c.id, keep(pattern(100))));
    EXPECT_EQ(one().payload.size(), 100u);
    st->run_timers(now);
    EXPECT_EQ(ev.of(c.id).sent, std::vector<int>{100}) << "complete once transmitted";
    // RTT sample from the handshake is ~0, so RTO = rto_min (200 ms); then 400, 800.
    const uint64_t t0 = now;
    std::vector<uint64_t> at;
    for (int i = 0; i < 3; ++i) {
        const uint64_t next = st->next_timer_ns();
        ASSERT_NE(next, UINT64_MAX);
        now = next;
        st->run_timers(now);
        auto r = one();
        EXPECT_EQ(r.payload.size(), 100u);
        at.push_back((now - t0) / k_ms);
    }
    EXPECT_EQ(at, (std::vector<uint64_t>{200, 600, 1400}));
    EXPECT_EQ(st->count(counter::tcp_rto_expired), 3u);
    now = st->next_timer_ns();
    st->run_timers(now);
    auto rst = one();
    EXPECT_EQ(rst.flags & k_rst, k_rst);
    EXPECT_EQ(ev.of(c.id).sent, std::vector<int>{100}) << "no send outstanding to fail";
    EXPECT_EQ(ev.of(c.id).recv_end, -ETIMEDOUT) << "the owned bytes are dropped";
    EXPECT_EQ(st->connections(), 0u);
    EXPECT_EQ(st->count(counter::tcp_timeouts), 1u);
    EXPECT_FALSE(st->send(c.id, keep(pattern(1)))) << "stale id";
}

TEST_F(tcp_conn, user_timeout_ends_a_connection_before_max_retransmits) {
    cfg.tcp.user_timeout_ms = 1000;
    start();
    client c = handshake();
    ASSERT_TRUE(st->send(c.id, keep(pattern(100))));
    run_until(now + 5000 * k_ms);
    EXPECT_EQ(ev.of(c.id).recv_end, -ETIMEDOUT);
    EXPECT_LE(st->count(counter::tcp_rto_expired), 3u);
}

TEST_F(tcp_conn, three_duplicate_acks_trigger_fast_retransmit_and_recovery) {
    start();
    client c = handshake();
    const bytes d = pattern(10 * 1460);
    ASSERT_TRUE(st->send(c.id, d));
    auto o = out();
    ASSERT_EQ(o.size(), 10u) << "initial window of 10 segments (RFC 6928)";
    const uint32_t first = c.ack;
    // Segment 0 lost: three duplicate ACKs for it.
    for (int i = 0; i < 3; ++i) {
        seg(c, k_ack);
    }
    auto r = out();
    ASSERT_GE(r.size(), 1u);
    EXPECT_EQ(r[0].seq, first) << "fast retransmit of the first unACKed segment";
    EXPECT_EQ(r[0].payload.size(), 1460u);
    EXPECT_EQ(st->count(counter::tcp_fast_retransmits), 1u);
    EXPECT_EQ(st->count(counter::tcp_dup_acks), 3u);
    EXPECT_EQ(st->count(counter::tcp_rto_expired), 0u);
    c.ack += 10 * 1460;
    seg(c, k_ack);
    EXPECT_EQ(ev.of(c.id).sent, std::vector<int>{int(d.size())});
}

TEST_F(tcp_conn, graceful_close_keeps_unacked_bytes_after_the_caller_frees_them) {
    start();
    client c = handshake();
    bytes d = pattern(2000);
    const bytes original = d;
    ASSERT_TRUE(st->send(c.id, d));
    auto first = out();
    ASSERT_EQ(first.size(), 2u);
    st->close(c.id, false);
    std::fill(d.begin(), d.end(), std::byte{0}); // the caller reuses its buffer
    c.ack += 1460;
    seg(c, k_ack); // second segment lost
    out();
    run_until(st->next_timer_ns());
    auto r = out();
    ASSERT_FALSE(r.empty());
    EXPECT_EQ(r[0].seq, c.ack);
    EXPECT_EQ(r[0].payload, bytes(original.begin() + 1460, original.end()));
    EXPECT_TRUE(r[0].flags & k_fin) << "FIN rides on the last data";
    EXPECT_TRUE(ev.of(c.id).sent.empty()) << "no callbacks after close()";
}

TEST_F(tcp_conn, peer_close_then_our_close_goes_through_close_wait_and_last_ack) {
    start();
    client c = handshake();
    seg(c, k_ack | k_fin);
    EXPECT_EQ(one().ack, c.seq) << "FIN ACKed at once";
    EXPECT_EQ(ev.of(c.id).recv_end, 0);
    st->close(c.id, false);
    auto fin = one();
    EXPECT_EQ(fin.flags, k_fin | k_ack);
    EXPECT_EQ(st->connections(), 1u) << "LAST-ACK";
    c.ack += 1;
    seg(c, k_ack);
    EXPECT_EQ(st->connections(), 0u) << "closed on the ACK of our FIN";
}

TEST_F(tcp_conn, shutdown_write_with_data_sends_fin_after_it_and_reports_on_sent) {
    start();
    client c = handshake();
    ASSERT_TRUE(st->send(c.id, keep(pattern(500))));
    st->shutdown_write(c.id);
    auto o = out();
    ASSERT_FALSE(o.empty());
    EXPECT_EQ(o.back().flags & k_fin, k_fin);
    EXPECT_EQ(o.back().seq + o.back().payload.size(), c.ack + 500) << "FIN after the data";
    c.ack += 501;
    seg(c, k_ack);
    EXPECT_EQ(ev.of(c.id).sent, std::vector<int>{500});
    seg(c, k_ack | k_fin);
    EXPECT_EQ(ev.of(c.id).recv_end, 0);
}

TEST_F(tcp_conn, active_close_ends_in_time_wait_which_expires) {
    cfg.tcp.time_wait_ms = 1000;
    start();
    client c = handshake();
    st->close(c.id, false);
    auto fin = one();
    EXPECT_EQ(fin.flags, k_fin | k_ack);
    c.ack += 1;
    seg(c, k_ack); // FIN-WAIT-2
    seg(c, k_ack | k_fin);
    EXPECT_EQ(one().ack, c.seq);
    EXPECT_EQ(st->count(counter::tcp_time_wait), 1u);
    EXPECT_EQ(st->connections(), 1u);
    // A retransmitted FIN in TIME-WAIT is ACKed again.
    client again = c;
    again.seq -= 1;
    seg(again, k_ack | k_fin);
    EXPECT_EQ(one().ack, c.seq);
    advance_ms(999);
    EXPECT_EQ(st->connections(), 1u);
    advance_ms(1);
    EXPECT_EQ(st->connections(), 0u);
}

TEST_F(tcp_conn, simultaneous_close_goes_through_closing_to_time_wait) {
    start();
    client c = handshake();
    st->close(c.id, false);
    auto fin = one();
    EXPECT_EQ(fin.flags, k_fin | k_ack);
    // Peer's FIN crosses ours: it does not ACK our FIN.
    seg(c, k_ack | k_fin);
    auto ack = one();
    EXPECT_EQ(ack.ack, c.seq);
    EXPECT_EQ(st->count(counter::tcp_time_wait), 0u) << "CLOSING";
    c.ack += 1;
    seg(c, k_ack);
    EXPECT_EQ(st->count(counter::tcp_time_wait), 1u);
    EXPECT_EQ(st->connections(), 1u);
}

TEST_F(tcp_conn, segment_to_a_closed_port_gets_a_rst) {
    start();
    tcp_spec s;
    s.sport = 40000;
    s.dport = 81;
    s.seq = 77;
    s.flags = k_syn;
    input(tcp_frame(s));
    auto r = one();
    EXPECT_EQ(r.flags, k_rst | k_ack);
    EXPECT_EQ(r.ack, 78u);
    s.flags = k_ack;
    s.ack = 999;
    input(tcp_frame(s));
    auto r2 = one();
    EXPECT_EQ(r2.flags, k_rst);
    EXPECT_EQ(r2.seq, 999u);
    s.flags = k_rst;
    input(tcp_frame(s));
    EXPECT_TRUE(out().empty()) << "never a RST for a RST";
    EXPECT_EQ(st->count(counter::tcp_no_socket_rst), 2u);
}

TEST_F(tcp_conn, rsts_for_unknown_sockets_are_rate_limited_per_second) {
    cfg.tcp.ctl_replies_per_s = 100;
    start();
    tcp_spec s;
    s.dport = 81;
    s.flags = k_ack;
    for (uint16_t i = 0; i < 300; ++i) {
        s.sport = uint16_t(30000 + i);
        input(tcp_frame(s));
    }
    EXPECT_EQ(out().size(), 100u) << "one second's worth of burst";
    EXPECT_EQ(st->count(counter::tcp_ctl_ratelimited), 200u);
    now += 500 * k_ms; // half a second refills 50
    for (uint16_t i = 0; i < 300; ++i) {
        s.sport = uint16_t(30000 + i);
        input(tcp_frame(s));
    }
    EXPECT_EQ(out().size(), 50u);
}

TEST_F(tcp_conn, rst_with_exact_sequence_resets_in_window_is_challenged_outside_ignored) {
    start();
    client c = handshake();
    client in_window = c;
    in_window.seq += 100;
    seg(in_window, k_rst);
    auto ch = one();
    EXPECT_EQ(ch.flags, k_ack) << "RFC 5961 challenge ACK";
    EXPECT_EQ(ch.ack, c.seq);
    client outside = c;
    outside.seq += 1'000'000;
    seg(outside, k_rst);
    EXPECT_TRUE(out().empty());
    EXPECT_EQ(st->connections(), 1u);
    seg(c, k_rst);
    EXPECT_EQ(ev.of(c.id).recv_end, -ECONNRESET);
    EXPECT_EQ(st->connections(), 0u);
    EXPECT_EQ(st->count(counter::tcp_rst_received), 1u);
}

TEST_F(tcp_conn, syn_on_an_established_connection_gets_a_challenge_ack) {
    start();
    client c = handshake();
    client s = c;
    seg(s, k_syn);
    EXPECT_EQ(one().flags, k_ack);
    EXPECT_EQ(st->connections(), 1u);
}

// Brings a connection into `state` and returns the peer's view.
enum class target {
    syn_rcvd,
    established,
    fin_wait_1,
    fin_wait_2,
    close_wait,
    last_ack,
    closing,
    time_wait
};

class rst_in_state : public net_test, public ::testing::WithParamInterface<target> {};

TEST_P(rst_in_state, exact_rst_ends_the_connection) {
    start();
    client c;
    if (GetParam() == target::syn_rcvd) {
        ASSERT_TRUE(st->listen(k_port).ok());
        tcp_spec syn;
        syn.sport = 40000;
        syn.dport = k_port;
        syn.seq = 10;
        syn.flags = k_syn;
        input(tcp_frame(syn));
        c = client{40000, 11, one().seq + 1, {}};
    } else {
        c = handshake();
    }
    switch (GetParam()) {
    case target::fin_wait_1:
        st->close(c.id, false);
        break;
    case target::fin_wait_2:
        st->close(c.id, false);
        c.ack += 1;
        seg(c, k_ack);
        break;
    case target::close_wait:
        seg(c, k_ack | k_fin);
        break;
    case target::last_ack:
        seg(c, k_ack | k_fin);
        st->close(c.id, false);
        break;
    case target::closing:
        st->close(c.id, false);
        seg(c, k_ack | k_fin);
        break;
    case target::time_wait:
        st->close(c.id, false);
        c.ack += 1;
        seg(c, k_ack | k_fin);
        break;
    default:
        break;
    }
    out();
    ASSERT_EQ(st->connections(), 1u);
    seg(c, k_rst);
    EXPECT_EQ(st->connections(), 0u);
    EXPECT_TRUE(out().empty()) << "a RST is never answered";
    if (GetParam() == target::syn_rcvd) {
        EXPECT_TRUE(ev.accepted.empty());
    }
    if (GetParam() == target::established) {
        EXPECT_EQ(ev.of(c.id).recv_end, -ECONNRESET);
    }
}

INSTANTIATE_TEST_SUITE_P(all, rst_in_state,
                         ::testing::Values(target::syn_rcvd, target::established,
                                           target::fin_wait_1, target::fin_wait_2,
                                           target::close_wait, target::last_ack, target::closing,
                                           target::time_wait));

TEST_F(tcp_conn, timestamps_are_negotiated_echoed_and_shrink_the_payload) {
    start();
    client c = handshake(40000, cat({opt_mss(1460), opt_ws(7), opt_ts(777, 0)}));
    // The handshake's SYN-ACK is checked below through a fresh connection; here: data.
    tcp_spec s;
    s.sport = c.port;
    s.dport = k_port;
    s.seq = c.seq;
    s.ack = c.ack;
    s.flags = k_ack | k_psh;
    s.options = opt_ts(900, 0);
    s.payload = str("abc");
    input(tcp_frame(s));
    c.seq += 3;
    EXPECT_EQ(one().ts_ecr, 900u) << "PSH: ACKed at once, echoing the newest TSval";
    ASSERT_TRUE(st->send(c.id, keep(pattern(3000))));
    auto o = out();
    ASSERT_FALSE(o.empty());
    EXPECT_TRUE(o[0].has_ts);
    EXPECT_EQ(o[0].ts_ecr, 900u) << "TS.Recent follows the peer's newest in-order TSval";
    EXPECT_EQ(o[0].payload.size(), 1448u) << "MSS 1460 minus the 12-byte option";
    // Second connection: SYN-ACK echoes the SYN's TSval.
    tcp_spec syn;
    syn.sport = 40001;
    syn.dport = k_port;
    syn.seq = 1;
    syn.flags = k_syn;
    syn.options = cat({opt_mss(1460), opt_ts(4242, 0)});
    input(tcp_frame(syn));
    auto sa = one();
    EXPECT_TRUE(sa.has_ts);
    EXPECT_EQ(sa.ts_ecr, 4242u);
}

TEST_F(tcp_conn, paws_drops_a_segment_with_an_old_timestamp) {
    start();
    client c = handshake(40000, cat({opt_mss(1460), opt_ts(1000, 0)}));
    auto send_ts = [&](uint32_t ts, const bytes& payload) {
        tcp_spec s;
        s.sport = c.port;
        s.dport = k_port;
        s.seq = c.seq;
        s.ack = c.ack;
        s.flags = k_ack;
        s.options = opt_ts(ts, 0);
        s.payload = payload;
        input(tcp_frame(s));
    };
    send_ts(2000, str("new"));
    c.seq += 3;
    out();
    send_ts(1500, str("old")); // in window, but its timestamp predates TS.Recent
    auto a = one();
    EXPECT_EQ(a.ack, c.seq) << "answered with an ACK, data not taken";
    EXPECT_EQ(st->count(counter::tcp_paws_rejected), 1u);
    EXPECT_EQ(ev.of(c.id).data, str("new"));
}

TEST_F(tcp_conn, timestamps_off_in_config_are_not_negotiated) {
    cfg.tcp.timestamps = false;
    start();
    ASSERT_TRUE(st->listen(k_port).ok());
    tcp_spec syn;
    syn.sport = 40001;
    syn.dport = k_port;
    syn.seq = 1;
    syn.flags = k_syn;
    syn.options = cat({opt_mss(1460), opt_ts(4242, 0)});
    input(tcp_frame(syn));
    EXPECT_FALSE(one().has_ts);
}

TEST_F(tcp_conn, abort_sends_rst_and_frees_at_once) {
    start();
    client c = handshake();
    st->close(c.id, true);
    auto r = one();
    EXPECT_EQ(r.flags & k_rst, k_rst);
    EXPECT_EQ(r.seq, c.ack);
    EXPECT_EQ(st->connections(), 0u);
}

TEST_F(tcp_conn, syn_ack_is_retransmitted_then_half_open_connection_expires) {
    start();
    ASSERT_TRUE(st->listen(k_port).ok());
    tcp_spec syn;
    syn.sport = 40000;
    syn.dport = k_port;
    syn.seq = 10;
    syn.flags = k_syn;
    input(tcp_frame(syn));
    EXPECT_EQ(one().flags, k_syn | k_ack);
    input(tcp_frame(syn)); // retransmitted SYN: SYN-ACK again
    EXPECT_EQ(one().flags, k_syn | k_ack);
    run_until(now + 200'000 * k_ms);
    int synacks = 0;
    for (auto& f : out()) {
        synacks += f.flags == (k_syn | k_ack);
    }
    EXPECT_EQ(synacks, 5) << "k_synack_retries";
    EXPECT_EQ(st->connections(), 0u);
    EXPECT_TRUE(ev.accepted.empty());
}

TEST_F(tcp_conn, syn_flood_costs_bounded_memory_and_a_cookie_completes_a_handshake) {
    cfg.tcp.syn_backlog = 16;
    start();
    ASSERT_TRUE(st->listen(k_port).ok());
    const std::size_t base = st->memory_bytes();
    tcp_spec syn;
    syn.dport = k_port;
    syn.flags = k_syn;
    syn.options = opt_mss(1460);
    auto flood = [&](uint32_t from, uint32_t n) {
        for (uint32_t i = from; i < from + n; ++i) {
            syn.sport = uint16_t(1024 + i);
            syn.seq = i * 7919;
            input(tcp_frame(syn));
        }
        lk.take();
    };
    flood(0, 1000);
    const std::size_t after_1k = st->memory_bytes();
    flood(1000, 20000);
    EXPECT_EQ(st->memory_bytes(), after_1k) << "20000 more SYNs cost no memory at all";
    // 16 half-open TCBs: one chunk of slots and its bookkeeping.
    EXPECT_LT(after_1k - base, 256u * 1024);
    EXPECT_EQ(st->connections(), 16u) << "half-open TCBs bounded by the backlog";
    EXPECT_EQ(st->count(counter::tcp_syn_cookies_sent), 21000u - 16u);
    // A real client behind the flood completes with its cookie.
    syn.sport = 55555;
    syn.seq = 4242;
    syn.options = opt_mss(1300);
    input(tcp_frame(syn));
    auto sa = one();
    EXPECT_EQ(sa.flags, k_syn | k_ack);
    EXPECT_EQ(sa.mss, 1460);
    EXPECT_EQ(sa.wscale, -1) << "cookies carry no window scale";
    client c{55555, 4243, sa.seq + 1, {}};
    seg(c, k_ack | k_psh, str("GET /"));
    ASSERT_EQ(ev.accepted.size(), 1u);
    EXPECT_EQ(st->count(counter::tcp_syn_cookies_ok), 1u);
    EXPECT_EQ(ev.of(ev.accepted[0]).data, str("GET /"));
    // The cookie's MSS (1300, the peer's) bounds our segments.
    lk.take();
    ASSERT_TRUE(st->send(ev.accepted[0], keep(pattern(3000))));
    auto o = out();
    ASSERT_FALSE(o.empty());
    EXPECT_EQ(o[0].payload.size(), 1300u);
    // A forged cookie ACK is refused with a RST.
    client forged{55556, 1, 12345, {}};
    seg(forged, k_ack);
    EXPECT_EQ(one().flags, k_rst);
}

TEST_F(tcp_conn, max_connections_refuses_further_syns_with_rst) {
    cfg.tcp.max_connections = 2;
    start();
    handshake(40000);
    handshake(40001);
    tcp_spec syn;
    syn.sport = 40002;
    syn.dport = k_port;
    syn.seq = 1;
    syn.flags = k_syn;
    input(tcp_frame(syn));
    EXPECT_EQ(one().flags & k_rst, k_rst);
    EXPECT_EQ(st->count(counter::tcp_conn_limit), 1u);
    EXPECT_EQ(st->connections(), 2u);
}

TEST_F(tcp_conn, no_tx_buffer_is_counted_and_recovered_by_retransmission) {
    start();
    client c = handshake();
    lk.fail_alloc = true;
    ASSERT_TRUE(st->send(c.id, keep(pattern(100))));
    EXPECT_GE(st->count(counter::tx_nobufs), 1u);
    lk.fail_alloc = false;
    st->run_timers(now); // on_sent: the send counts as transmitted (and lost)
    EXPECT_EQ(ev.of(c.id).sent, std::vector<int>{100});
    now = st->next_timer_ns();
    st->run_timers(now);
    auto r = one();
    EXPECT_EQ(r.payload.size(), 100u);
}

TEST_F(tcp_conn, keepalive_probes_an_idle_peer_then_gives_up) {
    cfg.tcp.keepalive_idle_ms = 1000;
    cfg.tcp.keepalive_interval_ms = 100;
    cfg.tcp.keepalive_probes = 2;
    start();
    client c = handshake();
    advance_ms(1000);
    auto p = one();
    EXPECT_EQ(p.seq, c.ack - 1) << "probe sits one below SND.NXT";
    seg(c, k_ack); // the peer answers: idle again
    advance_ms(100);
    EXPECT_TRUE(out().empty());
    run_until(now + 2000 * k_ms);
    EXPECT_EQ(ev.of(c.id).recv_end, -ETIMEDOUT);
    EXPECT_EQ(st->count(counter::tcp_keepalive_probes), 3u);
}

// --- sends complete at transmission (the stack keeps the unACKed bytes) ---

TEST_F(tcp_conn, fully_transmitted_send_completes_without_an_ack_and_the_next_goes_out_at_once) {
    start();
    client c = handshake();
    const std::size_t base = st->memory_bytes();
    bytes a = pattern(4000, 3);
    const bytes a0 = a;
    ASSERT_TRUE(st->send(c.id, a));
    EXPECT_EQ(out().size(), 3u);
    EXPECT_TRUE(ev.of(c.id).sent.empty()) << "never from inside send()";
    st->run_timers(now); // no ACK from the peer at all
    ASSERT_EQ(ev.of(c.id).sent, std::vector<int>{4000});
    EXPECT_EQ(st->memory_bytes() - base, 4000u) << "exactly the unACKed bytes are kept";
    std::fill(a.begin(), a.end(), std::byte{0xee}); // the owner reuses its buffer
    const bytes& b = keep(pattern(2000, 4));
    ASSERT_TRUE(st->send(c.id, b));
    auto o = out();
    ASSERT_EQ(o.size(), 2u) << "the second send goes out at once, still without an ACK";
    EXPECT_EQ(o[0].seq, c.ack + 4000);
    EXPECT_EQ(o[0].payload, bytes(b.begin(), b.begin() + 1460));
    EXPECT_EQ(o[1].payload, bytes(b.begin() + 1460, b.end()));
    st->run_timers(now);
    EXPECT_EQ(ev.of(c.id).sent, (std::vector<int>{4000, 2000}));
    const std::size_t held = st->memory_bytes() - base;
    EXPECT_GE(held, 6000u);
    // The peer ACKs 2000 bytes; the rest of `a` is lost: it comes back from our copy.
    c.ack += 2000;
    seg(c, k_ack);
    EXPECT_TRUE(out().empty());
    now = st->next_timer_ns();
    st->run_timers(now);
    auto r = out();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].seq, c.ack);
    EXPECT_EQ(r[0].payload, bytes(a0.begin() + 2000, a0.begin() + 3460));
    c.ack += 4000;
    seg(c, k_ack);
    // Storage is reused for the next send, not reallocated.
    ASSERT_TRUE(st->send(c.id, b));
    out();
    st->run_timers(now);
    EXPECT_EQ(ev.of(c.id).sent, (std::vector<int>{4000, 2000, 2000}));
    EXPECT_EQ(st->memory_bytes() - base, held);
}

TEST_F(tcp_conn, graceful_close_after_completed_sends_delivers_owned_bytes_then_fin) {
    start();
    client c = handshake();
    bytes a = pattern(2000, 9);
    const bytes a0 = a;
    ASSERT_TRUE(st->send(c.id, a));
    EXPECT_EQ(out().size(), 2u);
    st->run_timers(now);
    ASSERT_EQ(ev.of(c.id).sent, std::vector<int>{2000});
    std::fill(a.begin(), a.end(), std::byte{0xee});
    // A second send, not ACKed either, then close while it is still outstanding.
    bytes b = pattern(1000, 10);
    const bytes b0 = b;
    ASSERT_TRUE(st->send(c.id, b));
    EXPECT_EQ(out().size(), 1u);
    st->close(c.id, false);
    std::fill(b.begin(), b.end(), std::byte{0xee});
    // Everything was lost: the RTO resends from our copies, then the FIN.
    bytes got;
    bool fin = false;
    for (int i = 0; i < 20 && !fin; ++i) {
        now = st->next_timer_ns();
        st->run_timers(now);
        for (const auto& f : out()) {
            if (f.seq == c.ack) {
                got.insert(got.end(), f.payload.begin(), f.payload.end());
                c.ack += uint32_t(f.payload.size());
                fin = (f.flags & k_fin) != 0;
                c.ack += fin ? 1 : 0;
            }
        }
        seg(c, k_ack);
    }
    bytes want = a0;
    want.insert(want.end(), b0.begin(), b0.end());
    EXPECT_EQ(got, want);
    EXPECT_TRUE(fin) << "FIN after everything owned";
    EXPECT_EQ(ev.of(c.id).sent, std::vector<int>{2000}) << "no callbacks after close()";
}

// Checks every data frame against the stream it must carry; returns the highest byte seen.
struct stream_check {
    uint32_t base = 0;
    bytes expect;
    std::vector<bool> got;
    void frames(const std::vector<out_frame>& o) {
        for (const auto& f : o) {
            if (f.payload.empty()) {
                continue;
            }
            const uint32_t off = f.seq - base;
            ASSERT_LE(off + f.payload.size(), expect.size());
            EXPECT_EQ(f.payload, bytes(expect.begin() + off,
                                       expect.begin() + off + std::ptrdiff_t(f.payload.size())))
                << "frame at stream offset " << off;
            if (got.size() < expect.size()) {
                got.resize(expect.size());
            }
            std::fill(got.begin() + off, got.begin() + off + std::ptrdiff_t(f.payload.size()),
                      true);
        }
    }
    uint32_t contiguous() const {
        uint32_t n = 0;
        while (n < got.size() && got[n]) {
            ++n;
        }
        return n;
    }
};

TEST_F(tcp_conn, lost_owned_bytes_are_retransmitted_after_the_caller_scribbled_its_buffer) {
    start();
    client c = handshake();
    stream_check sc;
    sc.base = c.ack;
    bytes a = pattern(4 * 1460, 5);
    bytes b = pattern(20000, 6);
    sc.expect = a;
    sc.expect.insert(sc.expect.end(), b.begin(), b.end());
    std::size_t b_done = 0;
    ev.on_sent_hook = [&](sock_id id, int res) {
        ASSERT_GT(res, 0);
        // Scribble over whatever the stack released: it must never read it again.
        if (ev.of(c.id).sent.size() == 1) {
            ASSERT_EQ(std::size_t(res), a.size());
            std::fill(a.begin(), a.end(), std::byte{0xee});
            return;
        }
        ASSERT_LE(b_done + std::size_t(res), b.size());
        std::fill(b.begin() + std::ptrdiff_t(b_done), b.begin() + std::ptrdiff_t(b_done) + res,
                  std::byte{0xee});
        b_done += std::size_t(res);
        if (b_done < b.size()) { // short: the next send begins with the rest, unchanged
            EXPECT_TRUE(st->send(id, std::span<const std::byte>(b).subspan(b_done)));
        }
    };
    ASSERT_TRUE(st->send(c.id, a));
    sc.frames(out());
    st->run_timers(now);
    ASSERT_EQ(ev.of(c.id).sent, std::vector<int>{4 * 1460});
    ASSERT_TRUE(st->send(c.id, b));
    sc.frames(out()); // the rest of the initial window: 6 segments of b
    EXPECT_TRUE(ev.of(c.id).sent.size() == 1) << "b is not all transmitted yet";
    // The peer got the first segment only; the second is lost: three duplicate ACKs.
    c.ack += 1460;
    seg(c, k_ack);
    for (int i = 0; i < 3; ++i) {
        seg(c, k_ack);
    }
    auto fr = out();
    const bool rexmit = std::any_of(fr.begin(), fr.end(), [&](const out_frame& f) {
        return f.seq == c.ack && f.payload.size() == 1460;
    });
    EXPECT_TRUE(rexmit) << "fast retransmit from the owned copy";
    EXPECT_EQ(st->count(counter::tcp_fast_retransmits), 1u);
    sc.frames(fr);
    // Nothing more is ACKed: the RTO goes back to snd_una. Then the peer ACKs up to 500 bytes
    // short of a's end: the next segment spans our copy and b's buffer.
    now = st->next_timer_ns();
    st->run_timers(now);
    sc.frames(out());
    c.ack = sc.base + uint32_t(a.size()) - 500;
    seg(c, k_ack);
    auto span_frames = out();
    ASSERT_GE(span_frames.size(), 1u);
    EXPECT_EQ(span_frames[0].seq, c.ack);
    EXPECT_EQ(span_frames[0].payload.size(), 1460u) << "500 owned + 960 from b";
    sc.frames(span_frames);
    // From here the peer receives everything in order and ACKs it.
    for (int i = 0; i < 1000 && sc.contiguous() < sc.expect.size(); ++i) {
        c.ack = sc.base + sc.contiguous();
        seg(c, k_ack);
        auto o = out();
        if (o.empty()) {
            now = st->next_timer_ns(); // a hole the sender has not repaired yet: its RTO
            st->run_timers(now);
            o = out();
        }
        sc.frames(o);
    }
    ASSERT_EQ(sc.contiguous(), sc.expect.size());
    seg(c, k_ack);
    st->run_timers(now);
    EXPECT_EQ(ev.of(c.id).sent.front(), 4 * 1460);
    EXPECT_EQ(b_done, b.size()) << "b completed (maybe in short steps)";
    EXPECT_EQ(st->connections(), 1u);
}

TEST_F(tcp_conn, owned_bytes_never_exceed_the_bytes_in_flight) {
    start();
    constexpr uint16_t k_wnd = 8192; // peer window, no scaling: bounds the flight
    client c = handshake(40000, cat({opt_mss(1460)}), k_wnd);
    const std::size_t base = st->memory_bytes();
    stream_check sc;
    sc.base = c.ack;
    sc.expect = pattern(1 << 20, 8);
    sc.got.assign(sc.expect.size(), false);
    bytes buf(3000);
    std::size_t done = 0;
    std::size_t max_owned = 0;
    bool outstanding = false;
    auto pump = [&] {
        if (!outstanding && done < sc.expect.size()) {
            const std::size_t n = std::min(buf.size(), sc.expect.size() - done);
            std::copy_n(sc.expect.begin() + std::ptrdiff_t(done), n, buf.begin());
            ASSERT_TRUE(st->send(c.id, std::span<const std::byte>(buf).first(n)));
            outstanding = true;
        }
    };
    ev.on_sent_hook = [&](sock_id, int res) {
        ASSERT_GT(res, 0);
        done += std::size_t(res);
        outstanding = false;
        std::fill(buf.begin(), buf.end(), std::byte{0xee});
    };
    uint32_t sent_hi = 0;
    for (int i = 0; i < 100000 && sc.contiguous() < sc.expect.size(); ++i) {
        pump();
        auto o = out();
        sc.frames(o);
        for (const auto& f : o) {
            sent_hi = std::max<uint32_t>(sent_hi, f.seq + uint32_t(f.payload.size()) - sc.base);
        }
        st->run_timers(now); // on_sent for a transmitted send, no ACK needed
        const std::size_t owned = st->memory_bytes() - base;
        max_owned = std::max(max_owned, owned);
        // The ring holds only transmitted, unACKed bytes, and its storage never exceeds the
        // largest flight the peer's window allows.
        EXPECT_LE(owned, std::size_t(k_wnd));
        if (!outstanding && done < sc.expect.size()) {
            continue; // the owner sends more before any ACK
        }
        c.ack = sc.base + std::min<uint32_t>(sent_hi, sc.contiguous());
        seg(c, k_ack, {}, k_wnd);
        now += k_ms;
    }
    ASSERT_EQ(sc.contiguous(), sc.expect.size());
    EXPECT_EQ(done, sc.expect.size());
    EXPECT_GT(max_owned, 0u) << "sends completed before their ACK";
}

TEST_F(tcp_conn, bytes_per_connection_covers_at_least_the_tcb) {
    start();
    EXPECT_GE(st->bytes_per_connection(), 200u);
    EXPECT_LE(st->bytes_per_connection(), 512u);
}

} // namespace
} // namespace apprelay::net::testing
