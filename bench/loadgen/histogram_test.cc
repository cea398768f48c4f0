#include "bench/loadgen/histogram.hh"

#include <cstdint>
#include <gtest/gtest.h>
#include <random>

namespace apprelay::bench {
namespace {

TEST(latency_histogram, small_values_are_exact) {
    latency_histogram h;
    for (uint64_t v = 0; v < 64; ++v) {
        h.record(v);
    }
    // 64 samples 0..63: the median (rank 32) is 31, the max is 63.
    EXPECT_EQ(h.quantile(0.5), 31U);
    EXPECT_EQ(h.quantile(1.0), 63U);
    EXPECT_EQ(h.min(), 0U);
    EXPECT_EQ(h.count(), 64U);
}

TEST(latency_histogram, every_index_round_trips_within_relative_error) {
    // Each value's bucket contains it, and the bucket is narrower than value / 32.
    std::mt19937_64 rng(7);
    for (int i = 0; i < 100000; ++i) {
        uint64_t v = rng() >> (rng() % 64);
        std::size_t idx = latency_histogram::index_of(v);
        ASSERT_LT(idx, latency_histogram::k_slots);
        uint64_t hi = latency_histogram::upper_edge(idx);
        ASSERT_GE(hi, v);
        ASSERT_LE(hi - v, v / latency_histogram::k_sub_buckets) << v;
        if (idx > 0) {
            ASSERT_LT(latency_histogram::upper_edge(idx - 1), v) << v;
        }
    }
    EXPECT_LT(latency_histogram::index_of(UINT64_MAX), latency_histogram::k_slots);
}

TEST(latency_histogram, tail_quantiles_of_a_known_distribution) {
    // 999 samples of 100 us and 1 of 50 ms: p99 is 100 us (to bucket precision), p99.9 and the
    // max are the outlier, which is reported exactly (clamped to the max).
    latency_histogram h;
    for (int i = 0; i < 999; ++i) {
        h.record(100'000);
    }
    h.record(50'000'000);
    EXPECT_GE(h.quantile(0.99), 100'000U);
    EXPECT_LE(h.quantile(0.99), 100'000U + 100'000U / 32);
    EXPECT_EQ(h.quantile(0.9995), 50'000'000U);
    EXPECT_EQ(h.max(), 50'000'000U);
}

TEST(latency_histogram, merge_adds_counts_and_keeps_extremes) {
    latency_histogram a;
    latency_histogram b;
    a.record(10);
    b.record(1'000'000);
    b.record(5);
    a.merge(b);
    EXPECT_EQ(a.count(), 3U);
    EXPECT_EQ(a.min(), 5U);
    EXPECT_EQ(a.max(), 1'000'000U);
    EXPECT_EQ(a.quantile(0.5), 10U);
}

TEST(latency_histogram, empty_reports_zero) {
    latency_histogram h;
    EXPECT_EQ(h.quantile(0.99), 0U);
    EXPECT_EQ(h.count(), 0U);
}

} // namespace
} // namespace apprelay::bench
