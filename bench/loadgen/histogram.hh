#pragma once
// HDR-style latency histogram: log-bucketed with linear sub-buckets, so every recorded value
// lands in a bucket whose width is at most 1/k_sub_buckets of its lower bound (about 3% relative
// error with 32 sub-buckets) at a fixed memory cost, whatever the range. Values are integers
// (the loadgen records nanoseconds); values below k_sub_buckets are exact.
//
// Layout: bucket 0 holds [0, 2S) with unit width (S = k_sub_buckets); bucket b >= 1 holds
// [S << b, S << (b + 1)) in S slots of width 1 << b. Index = b * S + slot.
#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>

namespace apprelay::bench {

class latency_histogram {
public:
    static constexpr unsigned k_sub_bits = 5;
    static constexpr uint64_t k_sub_buckets = uint64_t(1) << k_sub_bits;
    // 64-bit values need buckets up to b = 64 - k_sub_bits - 1; one extra keeps indexing simple.
    static constexpr unsigned k_buckets = 64 - k_sub_bits;
    static constexpr std::size_t k_slots = std::size_t(k_buckets + 1) * k_sub_buckets;

    void record(uint64_t value) noexcept {
        ++_counts[index_of(value)];
        ++_total;
        _max = std::max(_max, value);
        _min = _total == 1 ? value : std::min(_min, value);
    }

    void merge(const latency_histogram& other) noexcept {
        for (std::size_t i = 0; i < k_slots; ++i) {
            _counts[i] += other._counts[i];
        }
        if (other._total > 0) {
            _min = _total == 0 ? other._min : std::min(_min, other._min);
            _max = std::max(_max, other._max);
        }
        _total += other._total;
    }

    uint64_t count() const noexcept { return _total; }
    uint64_t max() const noexcept { return _max; }
    uint64_t min() const noexcept { return _min; }

    // Smallest recorded bucket value v such that at least fraction q of the samples are <= v,
    // reported as the bucket's upper edge clamped to the exact max (never under-reports a tail).
    // q in [0, 1]; 0 when empty.
    uint64_t quantile(double q) const noexcept {
        if (_total == 0) {
            return 0;
        }
        q = std::clamp(q, 0.0, 1.0);
        auto rank = uint64_t(q * double(_total) + 0.5);
        rank = std::clamp<uint64_t>(rank, 1, _total);
        uint64_t seen = 0;
        for (std::size_t i = 0; i < k_slots; ++i) {
            seen += _counts[i];
            if (seen >= rank) {
                return std::min(upper_edge(i), _max);
            }
        }
        return _max;
    }

    static std::size_t index_of(uint64_t v) noexcept {
        if (v < 2 * k_sub_buckets) {
            return std::size_t(v);
        }
        // v has its top bit at position p >= k_sub_bits + 1; bucket b = p - k_sub_bits.
        unsigned p = 63 - unsigned(std::countl_zero(v));
        unsigned b = p - k_sub_bits;
        uint64_t slot = (v >> b) - k_sub_buckets; // in [0, S)
        return std::size_t(b + 1) * k_sub_buckets + std::size_t(slot);
    }

    // Largest value that maps to index i.
    static uint64_t upper_edge(std::size_t i) noexcept {
        if (i < 2 * k_sub_buckets) {
            return uint64_t(i);
        }
        unsigned b = unsigned(i / k_sub_buckets) - 1;
        uint64_t slot = i % k_sub_buckets;
        uint64_t lower = (k_sub_buckets + slot) << b;
        return lower + ((uint64_t(1) << b) - 1);
    }

private:
    std::array<uint64_t, k_slots> _counts{};
    uint64_t _total = 0;
    uint64_t _min = 0;
    uint64_t _max = 0;
};

} // namespace apprelay::bench
