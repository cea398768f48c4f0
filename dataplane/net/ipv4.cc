#include "dataplane/net/ipv4.hh"

#include "dataplane/net/checksum.hh"
#include "dataplane/net/detail/wire.hh"

namespace apprelay::net {

using detail::load16;
using detail::load32;
using detail::load8;

ipv4_status parse_ipv4(std::span<const std::byte> b, ipv4_packet& p) noexcept {
    if (b.size() < k_ipv4_header) {
        return ipv4_status::bad_header;
    }
    const std::byte* d = b.data();
    const uint8_t vihl = load8(d);
    const std::size_t ihl = std::size_t(vihl & 0x0f) * 4;
    // RFC 791 3.1: version 4, IHL >= 5 words; RFC 1122 3.2.1.1-3.2.1.2 silently discard others.
    if ((vihl >> 4) != 4 || ihl < k_ipv4_header || ihl > b.size()) {
        return ipv4_status::bad_header;
    }
    const std::size_t total = load16(d + 2);
    // Total length covers header and data; the frame may be longer (Ethernet padding), never
    // shorter.
    if (total < ihl || total > b.size()) {
        return ipv4_status::bad_header;
    }
    if (csum(b.first(ihl)) != 0) {
        return ipv4_status::bad_checksum;
    }
    // RFC 1122 3.2.1.7: a host must not send a datagram with TTL 0; treat one as malformed.
    if (load8(d + 8) == 0) {
        return ipv4_status::bad_header;
    }
    const uint16_t frag = load16(d + 6);
    // MF set or a non-zero offset: a fragment. We do not reassemble (RFC 791 3.2 reassembly is
    // a memory-exhaustion target and our peers use PMTU-sized segments with DF).
    if ((frag & 0x2000) != 0 || (frag & 0x1fff) != 0) {
        return ipv4_status::fragment;
    }
    p.proto = load8(d + 9);
    p.src = load32(d + 12);
    p.dst = load32(d + 16);
    p.payload = b.subspan(ihl, total - ihl);
    return ipv4_status::ok;
}

void write_ipv4(std::byte* d, uint32_t src, uint32_t dst, uint8_t proto, uint16_t payload_len,
                uint16_t id) noexcept {
    detail::store8(d, 0x45);
    detail::store8(d + 1, 0);
    detail::store16(d + 2, static_cast<uint16_t>(k_ipv4_header + payload_len));
    detail::store16(d + 4, id);
    detail::store16(d + 6, 0x4000); // DF
    detail::store8(d + 8, k_default_ttl);
    detail::store8(d + 9, proto);
    detail::store16(d + 10, 0);
    detail::store32(d + 12, src);
    detail::store32(d + 16, dst);
    detail::store16(d + 10, csum(std::span<const std::byte>(d, k_ipv4_header)));
}

} // namespace apprelay::net
