#pragma once
// Address types shared by every layer of the stack (kept apart so layer headers need not pull in
// the whole stack API).
#include <array>
#include <cstdint>

namespace apprelay::net {

using mac_addr = std::array<uint8_t, 6>;

inline constexpr mac_addr k_mac_broadcast{0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

// Group bit (IEEE 802-2014 8.2): broadcast and multicast; never a valid sender address.
constexpr bool is_group_mac(const mac_addr& m) noexcept {
    return (m[0] & 1) != 0;
}
constexpr bool is_zero_mac(const mac_addr& m) noexcept {
    return (m[0] | m[1] | m[2] | m[3] | m[4] | m[5]) == 0;
}

// Addresses that never appear as the source of a unicast datagram we answer (RFC 1122
// 3.2.1.3, 3.2.2.3 silently discards them): 0/8, 127/8, multicast and class E/broadcast.
constexpr bool is_martian_src(uint32_t ip) noexcept {
    const uint32_t top = ip >> 24;
    return top == 0 || top == 127 || top >= 224;
}

} // namespace apprelay::net
