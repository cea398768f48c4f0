// Ethernet, ARP, IPv4 and ICMP behaviour of the stack.
#include "fixture.hh"

#include <cerrno>

namespace apprelay::net::testing {
namespace {

using l3 = net_test;

bytes echo_request(std::size_t data_len, bool bad_checksum = false) {
    bytes m(8 + data_len, std::byte{0});
    m[0] = std::byte{8};
    put16(m, 4, 0x4242);
    put16(m, 6, 7);
    for (std::size_t i = 0; i < data_len; ++i) {
        m[8 + i] = std::byte(i);
    }
    uint16_t c = csum(m);
    if (bad_checksum) {
        c ^= 1;
    }
    put16(m, 2, c);
    return m;
}

TEST_F(l3, arp_request_for_our_address_is_answered_and_sender_learned) {
    start();
    input(eth({k_peer_mac, k_mac_broadcast}, 0x0806,
              arp(1, k_peer_mac, k_peer_ip, mac_addr{}, k_our_ip)));
    auto r = one();
    ASSERT_EQ(r.type, 0x0806);
    EXPECT_EQ(r.dst, k_peer_mac);
    EXPECT_EQ(get16(r.payload, 6), 2) << "reply";
    EXPECT_EQ(get32(r.payload, 14), k_our_ip);
    EXPECT_EQ(get32(r.payload, 24), k_peer_ip);
    EXPECT_EQ(st->count(counter::arp_requests_answered), 1u);
    // Learned: an active open needs no ARP round trip.
    ASSERT_TRUE(st->connect(k_peer_ip, 80, now).ok());
    auto syn = one();
    EXPECT_EQ(syn.type, 0x0800);
    EXPECT_EQ(syn.flags, k_syn);
    EXPECT_EQ(syn.dst, k_peer_mac);
}

TEST_F(l3, arp_for_another_address_or_malformed_is_not_answered) {
    start();
    input(eth({k_peer_mac, k_mac_broadcast}, 0x0806,
              arp(1, k_peer_mac, k_peer_ip, mac_addr{}, ip4(10, 0, 0, 9))));
    EXPECT_TRUE(out().empty());
    bytes bad = arp(1, k_peer_mac, k_peer_ip, mac_addr{}, k_our_ip);
    bad[4] = std::byte{8}; // hardware length
    input(eth({k_peer_mac, k_mac_broadcast}, 0x0806, bad));
    input(eth({k_peer_mac, k_mac_broadcast}, 0x0806, bytes(10))); // truncated
    // Sender MAC broadcast: would poison the cache.
    input(eth({k_peer_mac, k_mac_broadcast}, 0x0806,
              arp(1, k_mac_broadcast, k_peer_ip, mac_addr{}, k_our_ip)));
    EXPECT_TRUE(out().empty());
    EXPECT_EQ(st->count(counter::arp_bad), 3u);
}

TEST_F(l3, connect_resolves_by_arp_then_sends_the_queued_syn) {
    start();
    ASSERT_TRUE(st->connect(k_peer_ip, 80, now).ok());
    auto req = one();
    ASSERT_EQ(req.type, 0x0806);
    EXPECT_EQ(req.dst, k_mac_broadcast);
    EXPECT_EQ(get16(req.payload, 6), 1);
    EXPECT_EQ(get32(req.payload, 24), k_peer_ip);
    input(eth({k_peer_mac, k_our_mac}, 0x0806, arp(2, k_peer_mac, k_peer_ip, k_our_mac, k_our_ip)));
    auto syn = one();
    EXPECT_EQ(syn.flags, k_syn);
    EXPECT_EQ(syn.dst, k_peer_mac);
    EXPECT_EQ(syn.mss, 1460);
    EXPECT_EQ(syn.wscale, 7);
    EXPECT_EQ(st->count(counter::arp_replies), 1u);
}

TEST_F(l3, arp_entry_expires_and_is_asked_again) {
    cfg.arp_timeout_ms = 1000;
    start();
    input(eth({k_peer_mac, k_our_mac}, 0x0806, arp(2, k_peer_mac, k_peer_ip, k_our_mac, k_our_ip)));
    ASSERT_TRUE(st->connect(k_peer_ip, 80, now).ok());
    EXPECT_EQ(one().flags, k_syn);
    now += 1001 * k_ms; // past arp_timeout
    ASSERT_TRUE(st->connect(k_peer_ip, 81, now).ok());
    auto req = one();
    EXPECT_EQ(req.type, 0x0806) << "expired entry: a new request, not a SYN";
}

TEST_F(l3, connect_fails_with_ehostunreach_when_arp_is_never_answered) {
    start();
    auto id = st->connect(k_peer_ip, 80, now);
    ASSERT_TRUE(id.ok());
    run_until(now + 10'000 * k_ms);
    auto o = out();
    int requests = 0;
    for (const auto& f : o) {
        requests += f.type == 0x0806;
    }
    EXPECT_EQ(requests, 3) << "k_arp_tries requests, one per second";
    EXPECT_EQ(ev.of(*id).connect, -EHOSTUNREACH);
    EXPECT_EQ(st->connections(), 0u);
}

TEST_F(l3, arp_cache_is_bounded_by_arp_max_entries) {
    cfg.arp_max_entries = 4;
    start();
    for (uint8_t i = 0; i < 10; ++i) {
        const mac_addr m{0x02, 0, 0, 0, 1, i};
        input(eth({m, k_mac_broadcast}, 0x0806,
                  arp(1, m, ip4(10, 0, 0, uint8_t(100 + i)), mac_addr{}, k_our_ip)));
    }
    EXPECT_EQ(out().size(), 10u) << "every request is answered";
    EXPECT_EQ(st->count(counter::arp_cache_full), 6u) << "only 4 senders are remembered";
    // A remembered neighbour needs no request, a forgotten one does.
    ASSERT_TRUE(st->connect(ip4(10, 0, 0, 100), 80, now).ok());
    EXPECT_EQ(one().type, 0x0800);
    ASSERT_TRUE(st->connect(ip4(10, 0, 0, 109), 80, now).ok());
    EXPECT_EQ(one().type, 0x0806);
}

TEST_F(l3, icmp_echo_request_is_answered_with_a_valid_reply) {
    start();
    input(frame_to_us(ipv4({k_peer_ip, k_our_ip, 1}, echo_request(56))));
    auto r = one();
    EXPECT_EQ(r.proto, 1);
    EXPECT_EQ(r.dst, k_peer_mac);
    EXPECT_EQ(r.dst_ip, k_peer_ip);
    EXPECT_TRUE(r.l4_csum_ok);
    ASSERT_EQ(r.payload.size(), 64u);
    EXPECT_EQ(int(r.payload[0]), 0) << "echo reply";
    EXPECT_EQ(get16(r.payload, 4), 0x4242);
    EXPECT_EQ(get16(r.payload, 6), 7);
    EXPECT_EQ(int(r.payload[63]), 55);
    EXPECT_EQ(st->count(counter::icmp_echo_answered), 1u);
}

TEST_F(l3, icmp_with_bad_checksum_is_dropped) {
    start();
    input(frame_to_us(ipv4({k_peer_ip, k_our_ip, 1}, echo_request(8, true))));
    EXPECT_TRUE(out().empty());
    EXPECT_EQ(st->count(counter::icmp_bad), 1u);
}

TEST_F(l3, malformed_ipv4_headers_are_dropped_and_counted) {
    start();
    const bytes payload = echo_request(8);
    ip_spec good{k_peer_ip, k_our_ip, 1};
    auto send = [&](ip_spec s) { input(frame_to_us(ipv4(s, payload))); };
    ip_spec s = good;
    s.bad_checksum = true;
    send(s);
    EXPECT_EQ(st->count(counter::ip_bad_checksum), 1u);
    s = good;
    s.version_ihl = 0x65; // version 6
    send(s);
    s = good;
    s.version_ihl = 0x44; // IHL 4 < 5
    send(s);
    s = good;
    s.total_len = 200; // beyond the frame
    send(s);
    s = good;
    s.total_len = 19; // below the header
    send(s);
    s = good;
    s.ttl = 0;
    send(s);
    s = good;
    s.src = ip4(127, 0, 0, 1); // martian source
    send(s);
    EXPECT_EQ(st->count(counter::ip_bad_header), 6u);
    input(frame_to_us(bytes(12))); // truncated header
    EXPECT_EQ(st->count(counter::ip_bad_header), 7u);
    EXPECT_TRUE(out().empty());
}

TEST_F(l3, fragments_are_dropped_and_counted) {
    start();
    ip_spec s{k_peer_ip, k_our_ip, 1};
    s.frag = 0x2000; // MF
    input(frame_to_us(ipv4(s, echo_request(8))));
    s.frag = 0x0010; // offset 128
    input(frame_to_us(ipv4(s, echo_request(8))));
    EXPECT_TRUE(out().empty());
    EXPECT_EQ(st->count(counter::ip_fragments_dropped), 2u);
}

TEST_F(l3, frames_not_for_us_are_ignored) {
    start();
    input(frame_to_us(ipv4({k_peer_ip, ip4(10, 0, 0, 77), 1}, echo_request(8))));
    input(eth({k_peer_mac, mac_addr{0x02, 9, 9, 9, 9, 9}}, 0x0800,
              ipv4({k_peer_ip, k_our_ip, 1}, echo_request(8))));
    input(eth({k_peer_mac, k_our_mac}, 0x86dd, bytes(40))); // IPv6
    EXPECT_TRUE(out().empty());
    EXPECT_EQ(st->count(counter::rx_not_for_us), 3u);
    input(bytes(10));
    EXPECT_EQ(st->count(counter::rx_bad_eth), 1u);
    input(frame_to_us(ipv4({k_peer_ip, k_our_ip, 17}, bytes(8)))); // UDP
    EXPECT_EQ(st->count(counter::ip_unknown_proto), 1u);
}

TEST_F(l3, ethernet_padding_after_the_datagram_is_ignored) {
    start();
    bytes f = frame_to_us(ipv4({k_peer_ip, k_our_ip, 1}, echo_request(0)));
    f.resize(60 + 4, std::byte{0xee}); // padded beyond the IPv4 total length
    input(f);
    auto r = one();
    EXPECT_EQ(r.payload.size(), 8u) << "reply sized by total length, not by the frame";
}

} // namespace
} // namespace apprelay::net::testing
