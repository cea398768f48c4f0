#include "dataplane/net/syn_cookie.hh"

#include <bit>
#include <cstddef>

namespace apprelay::net {

namespace {

struct sip_state {
    uint64_t v0, v1, v2, v3;

    void round() noexcept {
        v0 += v1;
        v1 = std::rotl(v1, 13);
        v1 ^= v0;
        v0 = std::rotl(v0, 32);
        v2 += v3;
        v3 = std::rotl(v3, 16);
        v3 ^= v2;
        v0 += v3;
        v3 = std::rotl(v3, 21);
        v3 ^= v0;
        v2 += v1;
        v1 = std::rotl(v1, 17);
        v1 ^= v2;
        v2 = std::rotl(v2, 32);
    }
};

uint64_t tuple_word(const four_tuple& t) noexcept {
    return (uint64_t(t.local_port) << 48) | (uint64_t(t.remote_port) << 32) | t.remote_ip;
}

uint32_t cookie_hash(const siphash_key& key, const four_tuple& t, uint32_t client_isn,
                     uint64_t tick, uint8_t mss_idx) noexcept {
    const uint64_t w[3] = {tuple_word(t), (uint64_t(t.local_ip) << 32) | client_isn,
                           (tick << 8) | mss_idx};
    return static_cast<uint32_t>(siphash24(key, w, 3)) & 0x00ffffffu;
}

} // namespace

// SipHash-2-4 (Aumasson & Bernstein) over whole 64-bit words; the length byte of the final
// block is the byte count, as in the reference implementation.
uint64_t siphash24(const siphash_key& key, const uint64_t* words, std::size_t n) noexcept {
    sip_state s{key.k0 ^ 0x736f6d6570736575ull, key.k1 ^ 0x646f72616e646f6dull,
                key.k0 ^ 0x6c7967656e657261ull, key.k1 ^ 0x7465646279746573ull};
    for (std::size_t i = 0; i < n; ++i) {
        s.v3 ^= words[i];
        s.round();
        s.round();
        s.v0 ^= words[i];
    }
    const uint64_t last = uint64_t(n * 8) << 56;
    s.v3 ^= last;
    s.round();
    s.round();
    s.v0 ^= last;
    s.v2 ^= 0xff;
    s.round();
    s.round();
    s.round();
    s.round();
    return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

uint8_t cookie_mss_index(uint16_t mss) noexcept {
    uint8_t idx = 0;
    for (uint8_t i = 0; i < k_cookie_mss.size(); ++i) {
        if (k_cookie_mss[i] <= mss) {
            idx = i;
        }
    }
    return idx;
}

uint32_t make_syn_cookie(const siphash_key& key, const four_tuple& t, uint32_t client_isn,
                         uint16_t mss, uint64_t now_ns) noexcept {
    const uint64_t tick = now_ns / k_cookie_tick_ns;
    const uint8_t idx = cookie_mss_index(mss);
    return (uint32_t(tick & 31) << 27) | (uint32_t(idx) << 24) |
           cookie_hash(key, t, client_isn, tick, idx);
}

uint16_t check_syn_cookie(const siphash_key& key, const four_tuple& t, uint32_t client_isn,
                          uint32_t cookie, uint64_t now_ns) noexcept {
    const uint64_t now_tick = now_ns / k_cookie_tick_ns;
    const uint64_t t5 = cookie >> 27;
    const uint8_t idx = (cookie >> 24) & 7;
    for (uint64_t age = 0; age < 2 && age <= now_tick; ++age) {
        const uint64_t tick = now_tick - age;
        if ((tick & 31) == t5 &&
            cookie_hash(key, t, client_isn, tick, idx) == (cookie & 0xffffff)) {
            return k_cookie_mss[idx];
        }
    }
    return 0;
}

uint32_t make_isn(const siphash_key& key, const four_tuple& t, uint64_t now_ns) noexcept {
    const uint64_t w[2] = {tuple_word(t), t.local_ip};
    return static_cast<uint32_t>(now_ns / 4000) + static_cast<uint32_t>(siphash24(key, w, 2));
}

} // namespace apprelay::net
