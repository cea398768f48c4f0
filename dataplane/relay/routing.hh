#pragma once
// Routing a new user stream, the two steps a worker takes once a user's TLS handshake is done:
//   1. find_app: the application the user named (SNI) in the current snapshot, case-insensitive,
//      without allocating;
//   2. pick_least_loaded: a tunnel of the app's connector group, the one with the fewest open
//      streams (whole scan up to k_full_scan tunnels, power of two choices above), skipping
//      connectors the caller excludes (a retried OPEN avoids the connector that refused it).
// Header-only so the worker and bench/micro/relay run the same code.
#include "dataplane/relay/snapshot.hh"

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace apprelay::relay {

// RFC 6066 section 3: a DNS host name is at most 255 bytes; longer names match no app.
inline constexpr std::size_t k_max_hostname = 255;
// Groups up to this size are scanned whole for the least-loaded tunnel; larger ones use
// power-of-two choices (O(1) per new stream).
inline constexpr std::size_t k_full_scan = 8;

// The app_by_hostname entry (lowercase hostname, app index) whose hostname is sni (ASCII
// case-insensitive), or nullptr.
using app_route = decltype(snapshot::app_by_hostname)::value_type;
inline const app_route* find_app(const snapshot& s, std::string_view sni) noexcept {
    if (sni.empty() || sni.size() > k_max_hostname) {
        return nullptr;
    }
    std::array<char, k_max_hostname> buf;
    for (std::size_t i = 0; i < sni.size(); ++i) {
        buf[i] = ascii_lower(sni[i]);
    }
    auto it = s.app_by_hostname.find(std::string_view(buf.data(), sni.size()));
    return it == s.app_by_hostname.end() ? nullptr : &*it;
}

// xorshift64: a cheap per-worker random source (no shared state). state must not be 0.
inline uint64_t next_random(uint64_t& state) noexcept {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

// The allowed tunnel with the fewest open streams (Tunnel::stream_count()), or nullptr if none
// is allowed. Ties are broken at random (the scan starts at a random place) so that short streams
// that finish before the next arrives spread instead of all landing on the first tunnel.
template <class Tunnel, class Allowed>
Tunnel* pick_least_loaded(std::span<Tunnel* const> v, uint64_t& rng, Allowed&& allowed) {
    const std::size_t n = v.size();
    if (n == 0) {
        return nullptr;
    }
    if (n > k_full_scan) {
        // Power of two choices: the less loaded of two random tunnels; a few tries around
        // excluded connectors, then the full scan below.
        for (int i = 0; i < 4; ++i) {
            Tunnel* a = v[next_random(rng) % n];
            Tunnel* b = v[next_random(rng) % n];
            if (!allowed(a)) {
                a = b;
            }
            if (allowed(a) && allowed(b)) {
                return b->stream_count() < a->stream_count() ? b : a;
            }
            if (allowed(a)) {
                return a;
            }
        }
    }
    const std::size_t start = next_random(rng) % n;
    Tunnel* best = nullptr;
    for (std::size_t i = 0; i < n; ++i) {
        Tunnel* t = v[(start + i) % n];
        if (allowed(t) && (best == nullptr || t->stream_count() < best->stream_count())) {
            best = t;
        }
    }
    return best;
}

} // namespace apprelay::relay
