#include "dataplane/io/dpdk/steer.hh"

#include <array>
#include <gtest/gtest.h>
#include <vector>

namespace apprelay::io::dpdk {
namespace {

struct tuple4 {
    uint32_t src_ip, dst_ip;
    uint16_t src_port, dst_port;
};

void put16(std::vector<std::byte>& f, std::size_t at, uint16_t v) {
    f[at] = std::byte(v >> 8);
    f[at + 1] = std::byte(v & 0xff);
}
void put32(std::vector<std::byte>& f, std::size_t at, uint32_t v) {
    put16(f, at, uint16_t(v >> 16));
    put16(f, at + 2, uint16_t(v & 0xffff));
}

// Ethernet + IPv4 (no options) + 20-byte TCP header; only the fields steering reads are set.
std::vector<std::byte> ipv4_frame(const tuple4& t, uint8_t proto = 6, uint16_t frag = 0,
                                  bool vlan = false) {
    const std::size_t l3 = vlan ? 18 : 14;
    std::vector<std::byte> f(l3 + 40);
    if (vlan) {
        put16(f, 12, 0x8100);
        put16(f, 14, 7); // VLAN id 7
        put16(f, 16, 0x0800);
    } else {
        put16(f, 12, 0x0800);
    }
    f[l3] = std::byte(0x45);
    put16(f, l3 + 6, frag);
    f[l3 + 9] = std::byte(proto);
    put32(f, l3 + 12, t.src_ip);
    put32(f, l3 + 16, t.dst_ip);
    put16(f, l3 + 20, t.src_port);
    put16(f, l3 + 22, t.dst_port);
    return f;
}

TEST(dpdk_steer, both_directions_of_a_tcp_flow_have_one_owner) {
    // 198.18.0.1:40000 <-> 198.18.0.2:443 and many more flows: the reply frame (addresses and
    // ports swapped) must reach the worker that owns the request, for every worker count.
    for (uint16_t workers : {2, 3, 4, 8}) {
        for (uint32_t i = 0; i < 1000; ++i) {
            const tuple4 out{0xc6120001, 0xc6120002 + (i % 7), uint16_t(40000 + i), 443};
            const tuple4 back{out.dst_ip, out.src_ip, out.dst_port, out.src_port};
            const frame_class a = classify_frame(ipv4_frame(out));
            const frame_class b = classify_frame(ipv4_frame(back));
            ASSERT_EQ(a.kind, frame_kind::tcp_ipv4);
            ASSERT_EQ(b.kind, frame_kind::tcp_ipv4);
            ASSERT_EQ(a.hash, b.hash) << "flow " << i;
            ASSERT_EQ(owner_of(a.hash, workers), owner_of(b.hash, workers));
            ASSERT_LT(owner_of(a.hash, workers), workers);
        }
    }
}

TEST(dpdk_steer, vlan_tagged_tcp_hashes_like_untagged) {
    const tuple4 t{0xc6120001, 0xc6120002, 12345, 80};
    const frame_class plain = classify_frame(ipv4_frame(t));
    const frame_class tagged = classify_frame(ipv4_frame(t, 6, 0, true));
    EXPECT_EQ(tagged.kind, frame_kind::tcp_ipv4);
    EXPECT_EQ(tagged.hash, plain.hash);
}

TEST(dpdk_steer, flows_spread_over_workers) {
    // 4096 flows (one client, ephemeral ports) over 4 workers: 1024 each on average. A binomial
    // count has sd ~ sqrt(4096 * 1/4 * 3/4) ~ 28; +-150 (> 5 sd) flags a bad hash, not noise.
    std::array<int, 4> per{};
    for (uint32_t i = 0; i < 4096; ++i) {
        const auto c =
            classify_frame(ipv4_frame({0xc6120001, 0xc6120002, uint16_t(32768 + i), 443}));
        ++per[owner_of(c.hash, 4)];
    }
    for (int n : per) {
        EXPECT_NEAR(n, 1024, 150);
    }
}

TEST(dpdk_steer, arp_goes_everywhere_and_others_stay) {
    std::vector<std::byte> arp(42);
    put16(arp, 12, 0x0806);
    EXPECT_EQ(classify_frame(arp).kind, frame_kind::arp);

    const tuple4 t{0xc6120001, 0xc6120002, 1, 2};
    EXPECT_EQ(classify_frame(ipv4_frame(t, 1)).kind, frame_kind::other);  // ICMP
    EXPECT_EQ(classify_frame(ipv4_frame(t, 17)).kind, frame_kind::other); // UDP
    // Fragments: the first (MF set) and a later one (offset != 0) would hash differently, so
    // neither is steered; the receiving worker's stack drops them (no reassembly).
    EXPECT_EQ(classify_frame(ipv4_frame(t, 6, 0x2000)).kind, frame_kind::other);
    EXPECT_EQ(classify_frame(ipv4_frame(t, 6, 0x0010)).kind, frame_kind::other);
    // Don't-fragment alone is an ordinary unfragmented packet.
    EXPECT_EQ(classify_frame(ipv4_frame(t, 6, 0x4000)).kind, frame_kind::tcp_ipv4);
}

TEST(dpdk_steer, truncated_frames_are_not_steered) {
    const auto full = ipv4_frame({0xc6120001, 0xc6120002, 1, 2});
    for (std::size_t len = 0; len < 14 + 20 + 4; ++len) {
        std::span<const std::byte> cut(full.data(), len);
        EXPECT_EQ(classify_frame(cut).kind, frame_kind::other) << "length " << len;
    }
    auto bad_ihl = full;
    bad_ihl[14] = std::byte(0x44); // IHL 4 words < 20 bytes minimum
    EXPECT_EQ(classify_frame(bad_ihl).kind, frame_kind::other);
}

} // namespace
} // namespace apprelay::io::dpdk
