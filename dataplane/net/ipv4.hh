#pragma once
// IPv4 (RFC 791) for a host that neither forwards nor reassembles: validation of received
// datagrams and the 20-byte header we send (no options, DF set: TCP sizes segments by MSS).
#include <cstddef>
#include <cstdint>
#include <span>

namespace apprelay::net {

inline constexpr std::size_t k_ipv4_header = 20;
inline constexpr uint8_t k_proto_icmp = 1;
inline constexpr uint8_t k_proto_tcp = 6;
inline constexpr uint8_t k_default_ttl = 64; // RFC 1700 / IANA recommended default

struct ipv4_packet {
    uint32_t src = 0;
    uint32_t dst = 0;
    uint8_t proto = 0;
    std::span<const std::byte> payload; // exactly total length minus header, padding removed
};

enum class ipv4_status : uint8_t { ok, bad_header, bad_checksum, fragment };

ipv4_status parse_ipv4(std::span<const std::byte> b, ipv4_packet& p) noexcept;

// Writes a 20-byte header with its checksum for payload_len bytes of payload.
void write_ipv4(std::byte* out, uint32_t src, uint32_t dst, uint8_t proto, uint16_t payload_len,
                uint16_t id) noexcept;

} // namespace apprelay::net
