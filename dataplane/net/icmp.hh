#pragma once
// ICMP (RFC 792): only echo. Anything else is accepted silently (RFC 1122 3.2.2: unknown types
// are ignored); an ICMP message with a bad checksum is discarded.
#include <cstddef>
#include <cstdint>
#include <span>

namespace apprelay::net {

inline constexpr std::size_t k_icmp_header = 8;
inline constexpr uint8_t k_icmp_echo_reply = 0;
inline constexpr uint8_t k_icmp_echo_request = 8;

enum class icmp_status : uint8_t { echo_request, other, bad };

icmp_status classify_icmp(std::span<const std::byte> msg) noexcept;

// Writes the echo reply for `request` (same identifier, sequence and data, RFC 792) to out,
// which has room for request.size() bytes.
void write_echo_reply(std::byte* out, std::span<const std::byte> request) noexcept;

} // namespace apprelay::net
