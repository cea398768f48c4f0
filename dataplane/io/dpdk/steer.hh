#pragma once
// Software steering: which worker owns a received frame when the NIC cannot spread flows by
// itself (no RSS). Pure functions on frame bytes, no DPDK, so tests drive them with crafted
// frames and the connect path can pick a local port whose replies land on its own worker.
//
// The hash is symmetric: {a,b} and {b,a} give the same value, because each worker's TCP stack
// must see both directions of its connections (an active open's replies arrive with the
// addresses swapped). It hashes min/max of the addresses and of the ports separately, which is
// symmetric without knowing which side is "ours".
#include <cstddef>
#include <cstdint>
#include <span>

namespace apprelay::io::dpdk {

// Addresses and ports in host byte order.
constexpr uint32_t symmetric_flow_hash(uint32_t ip_a, uint32_t ip_b, uint16_t port_a,
                                       uint16_t port_b) noexcept {
    const uint64_t ip_lo = ip_a < ip_b ? ip_a : ip_b;
    const uint64_t ip_hi = ip_a < ip_b ? ip_b : ip_a;
    const uint64_t p_lo = port_a < port_b ? port_a : port_b;
    const uint64_t p_hi = port_a < port_b ? port_b : port_a;
    // splitmix64 finaliser over both words: every input bit reaches the high 32 bits, which
    // owner_of() uses; two multiplies, a few cycles per frame.
    uint64_t x = (ip_lo << 32 | ip_hi) ^ ((p_lo << 16 | p_hi) * 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    return uint32_t(x >> 32);
}

// Maps a hash onto [0, workers) by multiply-shift (no division on the per-frame path).
constexpr uint16_t owner_of(uint32_t hash, uint16_t workers) noexcept {
    return uint16_t((uint64_t(hash) * workers) >> 32);
}

enum class frame_kind : uint8_t {
    tcp_ipv4, // unfragmented IPv4 TCP: goes to owner
    arp,      // every worker's stack keeps its own ARP table: copy to all
    other,    // ICMP, UDP, fragments, other ethertypes, runts: the receiving worker handles it
};

struct frame_class {
    frame_kind kind = frame_kind::other;
    uint32_t hash = 0; // symmetric_flow_hash, only for tcp_ipv4
};

namespace detail {
inline uint16_t be16(const std::byte* p) noexcept {
    return uint16_t(uint16_t(p[0]) << 8 | uint16_t(p[1]));
}
inline uint32_t be32(const std::byte* p) noexcept {
    return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}
} // namespace detail

// Reads only what steering needs; malformed frames are `other` and the stack (which validates
// everything) drops and counts them on the receiving worker.
inline frame_class classify_frame(std::span<const std::byte> f) noexcept {
    constexpr std::size_t k_eth = 14;
    constexpr std::size_t k_vlan = 4;
    constexpr uint16_t k_type_ipv4 = 0x0800;
    constexpr uint16_t k_type_arp = 0x0806;
    constexpr uint16_t k_type_vlan = 0x8100;
    constexpr uint8_t k_proto_tcp = 6;
    if (f.size() < k_eth) {
        return {};
    }
    std::size_t l3 = k_eth;
    uint16_t type = detail::be16(&f[12]);
    if (type == k_type_vlan && f.size() >= k_eth + k_vlan) {
        type = detail::be16(&f[16]);
        l3 += k_vlan;
    }
    if (type == k_type_arp) {
        return {frame_kind::arp, 0};
    }
    if (type != k_type_ipv4 || f.size() < l3 + 20) {
        return {};
    }
    const std::byte* ip = &f[l3];
    const std::size_t ihl = std::size_t(uint8_t(ip[0]) & 0x0f) * 4;
    // RFC 791: MF flag or a non-zero fragment offset means no (or not our) TCP header here.
    const bool fragment = (detail::be16(ip + 6) & 0x3fff) != 0;
    if ((uint8_t(ip[0]) >> 4) != 4 || ihl < 20 || uint8_t(ip[9]) != k_proto_tcp || fragment ||
        f.size() < l3 + ihl + 4) {
        return {};
    }
    const std::byte* tcp = ip + ihl;
    return {frame_kind::tcp_ipv4, symmetric_flow_hash(detail::be32(ip + 12), detail::be32(ip + 16),
                                                      detail::be16(tcp), detail::be16(tcp + 2))};
}

} // namespace apprelay::io::dpdk
