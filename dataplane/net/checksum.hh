#pragma once
// Internet checksum (RFC 1071): one's-complement sum of 16-bit big-endian words. Sums are kept
// unfolded in 64 bits so partial sums over several buffers (pseudo-header, header, payload)
// simply add; fold() turns the total into the 16-bit field value.
#include <cstddef>
#include <cstdint>
#include <span>

namespace apprelay::net {

// Adds the bytes to `sum`. A buffer of odd length is padded with a zero byte (RFC 1071 4.1), so
// only the last buffer of a checksummed message may have odd length.
uint64_t csum_add(std::span<const std::byte> data, uint64_t sum = 0) noexcept;

// Folds to 16 bits and complements: the value to store in a checksum field. Verifying a message
// that includes its checksum field yields 0.
uint16_t csum_fold(uint64_t sum) noexcept;

// Pseudo-header of TCP/UDP over IPv4 (RFC 9293 3.1): addresses, protocol, segment length.
uint64_t csum_pseudo_ipv4(uint32_t src, uint32_t dst, uint8_t proto, uint16_t len) noexcept;

inline uint16_t csum(std::span<const std::byte> data) noexcept {
    return csum_fold(csum_add(data));
}

} // namespace apprelay::net
