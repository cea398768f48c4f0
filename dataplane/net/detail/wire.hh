#pragma once
// Big-endian loads and stores on byte buffers. Every caller has already checked the length, so
// these never bounds-check; memcpy-free shifts keep them alignment-safe and UBSan-clean.
#include <cstddef>
#include <cstdint>

namespace apprelay::net::detail {

inline uint8_t load8(const std::byte* p) noexcept {
    return static_cast<uint8_t>(p[0]);
}
inline uint16_t load16(const std::byte* p) noexcept {
    return static_cast<uint16_t>((static_cast<unsigned>(p[0]) << 8) | static_cast<unsigned>(p[1]));
}
inline uint32_t load32(const std::byte* p) noexcept {
    return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) |
           (static_cast<uint32_t>(p[2]) << 8) | static_cast<uint32_t>(p[3]);
}
inline void store8(std::byte* p, uint8_t v) noexcept {
    p[0] = std::byte{v};
}
inline void store16(std::byte* p, uint16_t v) noexcept {
    p[0] = std::byte(v >> 8);
    p[1] = std::byte(v & 0xff);
}
inline void store32(std::byte* p, uint32_t v) noexcept {
    p[0] = std::byte(v >> 24);
    p[1] = std::byte((v >> 16) & 0xff);
    p[2] = std::byte((v >> 8) & 0xff);
    p[3] = std::byte(v & 0xff);
}

} // namespace apprelay::net::detail
