#pragma once
// Ethernet II (IEEE 802.3 with an EtherType >= 0x0600): 14-byte header, no VLAN tags (the NIC
// strips them, or the frame is not for this stack).
#include "dataplane/net/addr.hh"
#include "dataplane/net/detail/wire.hh"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace apprelay::net {

inline constexpr std::size_t k_eth_header = 14;
inline constexpr std::size_t k_eth_min_frame = 60; // without FCS; shorter frames are padded
inline constexpr uint16_t k_ethertype_ipv4 = 0x0800;
inline constexpr uint16_t k_ethertype_arp = 0x0806;

struct eth_header {
    mac_addr dst{};
    mac_addr src{};
    uint16_t type = 0;
};

// False if the frame cannot hold an Ethernet header.
inline bool parse_eth(std::span<const std::byte> frame, eth_header& h) noexcept {
    if (frame.size() < k_eth_header) {
        return false;
    }
    std::memcpy(h.dst.data(), frame.data(), 6);
    std::memcpy(h.src.data(), frame.data() + 6, 6);
    h.type = detail::load16(frame.data() + 12);
    return true;
}

inline void write_eth(std::byte* p, const mac_addr& dst, const mac_addr& src,
                      uint16_t type) noexcept {
    std::memcpy(p, dst.data(), 6);
    std::memcpy(p + 6, src.data(), 6);
    detail::store16(p + 12, type);
}

} // namespace apprelay::net
