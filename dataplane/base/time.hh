#pragma once
#include <cstdint>
#include <ctime>

namespace apprelay {

// Monotonic clock in nanoseconds; CLOCK_MONOTONIC is a vDSO call (~20 ns), fine once per loop.
inline uint64_t mono_ns() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}
inline uint64_t mono_ms() noexcept {
    return mono_ns() / 1'000'000ull;
}

} // namespace apprelay
