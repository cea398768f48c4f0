#include "dataplane/relay/source_budget.hh"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <gtest/gtest.h>

namespace apprelay::relay {
namespace {

constexpr uint64_t k_s = 1'000'000'000ull;
constexpr uint64_t k_t0 = 100 * k_s;

source_key v4(const char* a) {
    sockaddr_storage ss{};
    auto& s = reinterpret_cast<sockaddr_in&>(ss);
    s.sin_family = AF_INET;
    inet_pton(AF_INET, a, &s.sin_addr);
    return source_key_of(ss);
}

source_key v6(const char* a) {
    sockaddr_storage ss{};
    auto& s = reinterpret_cast<sockaddr_in6&>(ss);
    s.sin6_family = AF_INET6;
    inet_pton(AF_INET6, a, &s.sin6_addr);
    return source_key_of(ss);
}

source_limits limits(uint32_t open_rate, uint32_t open_burst, uint32_t abort_rate,
                     uint32_t abort_burst) {
    source_limits l;
    l.open_rate = open_rate;
    l.open_burst = open_burst;
    l.abort_rate = abort_rate;
    l.abort_burst = abort_burst;
    return l;
}

using verdict = source_budget::verdict;

TEST(source_budget, keys_are_ipv4_addresses_and_ipv6_slash_64) {
    EXPECT_EQ(v4("192.0.2.7"), v4("192.0.2.7"));
    EXPECT_NE(v4("192.0.2.7"), v4("192.0.2.8"));
    EXPECT_EQ(v6("::ffff:192.0.2.7"), v4("192.0.2.7")); // v4-mapped is the IPv4 source
    EXPECT_EQ(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::9")); // one /64
    EXPECT_NE(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
    EXPECT_EQ(source_key_text(v4("192.0.2.7")), "192.0.2.7");
    EXPECT_EQ(source_key_text(v6("2001:db8:1:2::1")), "2001:db8:1:2::/64");
}

TEST(source_budget, opens_past_the_burst_are_refused_until_the_rate_refills) {
    source_budget b(limits(10, 20, 0, 1));
    auto k = v4("192.0.2.1");
    for (int i = 0; i < 20; ++i) {
        ASSERT_EQ(b.admit(k, k_t0), verdict::admit) << i;
    }
    EXPECT_EQ(b.admit(k, k_t0), verdict::opens_exhausted);
    EXPECT_EQ(b.admit(v4("192.0.2.2"), k_t0), verdict::admit); // another source is untouched
    // 10/s: after 0.5 s five more are admitted, the sixth is not.
    for (int i = 0; i < 5; ++i) {
        ASSERT_EQ(b.admit(k, k_t0 + k_s / 2), verdict::admit) << i;
    }
    EXPECT_EQ(b.admit(k, k_t0 + k_s / 2), verdict::opens_exhausted);
}

TEST(source_budget, open_connections_are_capped_per_source_until_they_close) {
    source_limits l = limits(0, 1, 0, 1);
    l.max_conns = 3;
    source_budget b(l);
    auto k = v4("192.0.2.1");
    bool counted = false;
    for (int i = 0; i < 3; ++i) {
        ASSERT_EQ(b.admit(k, k_t0, &counted), verdict::admit) << i;
        EXPECT_TRUE(counted);
    }
    EXPECT_EQ(b.admit(k, k_t0, &counted), verdict::conns_exhausted);
    EXPECT_FALSE(counted);
    EXPECT_EQ(b.admit(v4("192.0.2.2"), k_t0, &counted), verdict::admit); // others untouched
    b.sweep(k_t0 + 100 * k_s); // an entry with open connections is kept
    EXPECT_EQ(b.admit(k, k_t0 + 100 * k_s), verdict::conns_exhausted);
    b.release(k);
    EXPECT_EQ(b.admit(k, k_t0 + 100 * k_s, &counted), verdict::admit);
    EXPECT_EQ(b.admit(k, k_t0 + 100 * k_s), verdict::conns_exhausted);
    for (int i = 0; i < 3; ++i) {
        b.release(k);
    }
    b.release(k); // more releases than connections: saturates at 0
    b.release(v4("192.0.2.9")); // unknown source: nothing
    b.sweep(k_t0 + 200 * k_s);
    EXPECT_EQ(b.tracked(), 1u); // 192.0.2.2 still holds its connection
}

TEST(source_budget, aborts_refuse_new_connections_and_debt_is_repaid) {
    source_budget b(limits(0, 1, 10, 5));
    auto k = v4("198.51.100.9");
    ASSERT_EQ(b.admit(k, k_t0), verdict::admit);
    // 5 aborts empty the bucket, 5 more (connections admitted before it emptied) are debt.
    for (int i = 0; i < 10; ++i) {
        b.charge_abort(k, k_t0);
    }
    EXPECT_EQ(b.admit(k, k_t0), verdict::aborts_exhausted);
    // 10/s: 0.5 s repays the debt of 5 but leaves no token; 0.1 s more gives one.
    EXPECT_EQ(b.admit(k, k_t0 + k_s / 2), verdict::aborts_exhausted);
    EXPECT_EQ(b.admit(k, k_t0 + k_s / 2 + k_s / 10 + 1), verdict::admit);
    // Debt is bounded by the burst: 1,000 aborts cost at most 2 x burst / rate = 1 s.
    for (int i = 0; i < 1000; ++i) {
        b.charge_abort(k, k_t0 + k_s);
    }
    EXPECT_EQ(b.admit(k, k_t0 + k_s + k_s / 2), verdict::aborts_exhausted);
    EXPECT_EQ(b.admit(k, k_t0 + 2 * k_s + k_s / 10 + 1), verdict::admit);
}

TEST(source_budget, off_when_rates_are_zero) {
    source_budget b(limits(0, 1, 0, 1));
    auto k = v4("192.0.2.1");
    for (int i = 0; i < 10'000; ++i) {
        b.charge_abort(k, k_t0);
        ASSERT_EQ(b.admit(k, k_t0), verdict::admit);
    }
    EXPECT_EQ(b.tracked(), 0u);
}

TEST(source_budget, table_is_bounded_and_idle_sources_are_swept) {
    auto l = limits(100, 100, 10, 10);
    l.max_sources = 64;
    source_budget b(l);
    for (uint32_t i = 0; i < 64; ++i) {
        sockaddr_storage ss{};
        auto& s = reinterpret_cast<sockaddr_in&>(ss);
        s.sin_family = AF_INET;
        s.sin_addr.s_addr = htonl(0x0a000000u + i);
        ASSERT_EQ(b.admit(source_key_of(ss), k_t0), verdict::admit);
    }
    EXPECT_EQ(b.tracked(), 64u);
    // Full of busy sources: a new one is admitted untracked, never refused for the bound.
    EXPECT_EQ(b.admit(v4("192.0.2.99"), k_t0), verdict::admit);
    EXPECT_EQ(b.table_full(), 1u);
    EXPECT_EQ(b.tracked(), 64u);
    // A second later every bucket is full again: the sources carry no state and are dropped.
    b.sweep(k_t0 + k_s + 1);
    EXPECT_EQ(b.tracked(), 0u);
    EXPECT_EQ(b.admit(v4("192.0.2.99"), k_t0 + k_s + 2), verdict::admit);
    EXPECT_EQ(b.tracked(), 1u);
}

} // namespace
} // namespace apprelay::relay
