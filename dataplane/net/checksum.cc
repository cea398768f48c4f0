#include "dataplane/net/checksum.hh"

#include "dataplane/net/detail/wire.hh"

namespace apprelay::net {

uint64_t csum_add(std::span<const std::byte> data, uint64_t sum) noexcept {
    const std::byte* p = data.data();
    std::size_t n = data.size();
    // Four 16-bit words per step; a 64-bit accumulator cannot overflow below 2^48 words.
    while (n >= 8) {
        sum += detail::load16(p) + detail::load16(p + 2) + detail::load16(p + 4) +
               detail::load16(p + 6);
        p += 8;
        n -= 8;
    }
    while (n >= 2) {
        sum += detail::load16(p);
        p += 2;
        n -= 2;
    }
    if (n == 1) {
        sum += static_cast<uint64_t>(detail::load8(p)) << 8;
    }
    return sum;
}

uint16_t csum_fold(uint64_t sum) noexcept {
    while (sum >> 16) {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    return static_cast<uint16_t>(~sum & 0xffff);
}

uint64_t csum_pseudo_ipv4(uint32_t src, uint32_t dst, uint8_t proto, uint16_t len) noexcept {
    return uint64_t(src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + proto + len;
}

} // namespace apprelay::net
