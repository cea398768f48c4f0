#pragma once
// Keyed hashing for initial sequence numbers (RFC 6528) and SYN cookies (RFC 4987 3.6).
//
// Cookie layout (our ISN when the listener's half-open queue is full):
//   bits 31..27  time counter mod 32 (one tick = 64 s)
//   bits 26..24  MSS table index
//   bits 23..0   SipHash-2-4(key; 4-tuple, client ISN, full time counter, MSS index)
// The final ACK carries cookie + 1. A cookie is valid for the current and the previous tick
// (64..128 s); forging one means guessing 24 keyed bits per try. Options beyond MSS are not
// encoded, so a cookie connection runs without window scaling and SACK.
#include <array>
#include <cstddef>
#include <cstdint>

namespace apprelay::net {

struct siphash_key {
    uint64_t k0 = 0;
    uint64_t k1 = 0;
};

uint64_t siphash24(const siphash_key& key, const uint64_t* words, std::size_t n) noexcept;

struct four_tuple {
    uint32_t local_ip = 0;
    uint32_t remote_ip = 0;
    uint16_t local_port = 0;
    uint16_t remote_port = 0;
};

inline constexpr std::array<uint16_t, 8> k_cookie_mss{536,  1024, 1220, 1300,
                                                      1360, 1440, 1452, 1460};
inline constexpr uint64_t k_cookie_tick_ns = 64ull * 1'000'000'000ull;

// Largest table MSS not above mss (index 0 if mss is below every entry).
uint8_t cookie_mss_index(uint16_t mss) noexcept;

uint32_t make_syn_cookie(const siphash_key& key, const four_tuple& t, uint32_t client_isn,
                         uint16_t mss, uint64_t now_ns) noexcept;

// The MSS encoded in `cookie` (= SEG.ACK - 1), or 0 if it is not a valid recent cookie for this
// tuple and client ISN (= SEG.SEQ - 1).
uint16_t check_syn_cookie(const siphash_key& key, const four_tuple& t, uint32_t client_isn,
                          uint32_t cookie, uint64_t now_ns) noexcept;

// RFC 6528: ISN = M + F(4-tuple, secret key), M a 4-microsecond timer.
uint32_t make_isn(const siphash_key& key, const four_tuple& t, uint64_t now_ns) noexcept;

} // namespace apprelay::net
