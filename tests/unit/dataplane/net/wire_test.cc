// Checksum, TCP option parsing, SYN cookies and the probe table, in isolation.
#include "dataplane/net/checksum.hh"
#include "dataplane/net/detail/probe_table.hh"
#include "dataplane/net/syn_cookie.hh"
#include "dataplane/net/tcp_wire.hh"
#include "harness.hh"

#include <gtest/gtest.h>

namespace apprelay::net {
namespace {

using testing::bytes;

bytes b(std::initializer_list<int> v) {
    bytes out;
    for (int x : v) {
        out.push_back(std::byte(x));
    }
    return out;
}

TEST(checksum, matches_rfc1071_worked_example) {
    // RFC 1071 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (with end-around carry), so the
    // checksum field is its complement 220d.
    const bytes d = b({0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7});
    EXPECT_EQ(csum(d), 0x220d);
}

TEST(checksum, odd_length_pads_with_zero_and_partial_sums_add) {
    const bytes d = b({0x12, 0x34, 0x56});
    EXPECT_EQ(csum(d), uint16_t(~(0x1234 + 0x5600) & 0xffff));
    const bytes x = testing::pattern(1000);
    const uint64_t split = csum_add(std::span(x).subspan(400), csum_add(std::span(x).first(400)));
    EXPECT_EQ(csum_fold(split), csum(x));
}

TEST(tcp_options, parses_mss_wscale_sack_permitted_and_timestamps) {
    const bytes o = b({2, 4, 0x05, 0xb4, 1, 3, 3, 7, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0});
    tcp_options out;
    ASSERT_EQ(parse_tcp_options(o, out), tcp_status::ok);
    EXPECT_EQ(out.mss, 1460);
    EXPECT_EQ(out.wscale, 7);
    EXPECT_TRUE(out.sack_permitted);
    EXPECT_TRUE(out.has_timestamps);
    EXPECT_EQ(out.ts_val, 1u);
    EXPECT_EQ(out.ts_ecr, 2u);
}

TEST(tcp_options, window_scale_above_14_is_clamped) {
    tcp_options out;
    ASSERT_EQ(parse_tcp_options(b({3, 3, 20, 0}), out), tcp_status::ok);
    EXPECT_EQ(out.wscale, 14);
}

TEST(tcp_options, malformed_options_are_rejected_without_reading_past_the_header) {
    struct bad {
        const char* why;
        bytes o;
    };
    const bad cases[] = {
        {"length byte missing", b({1, 1, 1, 2})},
        {"length below 2", b({9, 1, 0, 0})},
        {"length past end", b({2, 4, 5})},
        {"unknown option past end", b({30, 8, 0, 0})},
        {"mss wrong length", b({2, 3, 5, 0})},
        {"wscale wrong length", b({3, 4, 1, 1})},
        {"sack-permitted wrong length", b({4, 3, 0, 0})},
        {"timestamps wrong length", b({8, 6, 0, 0, 0, 0, 0, 0})},
        {"sack block not 8n", b({5, 6, 0, 0, 0, 0, 0, 0})},
    };
    for (const auto& c : cases) {
        tcp_options out;
        // Copy into an exactly-sized heap buffer: ASan flags any read past it.
        std::vector<std::byte> exact(c.o.begin(), c.o.end());
        EXPECT_EQ(parse_tcp_options(exact, out), tcp_status::bad_options) << c.why;
    }
    tcp_options out;
    EXPECT_EQ(parse_tcp_options(b({0, 99, 99, 99}), out), tcp_status::ok) << "after EOL: ignored";
    EXPECT_EQ(parse_tcp_options(b({30, 4, 1, 1}), out), tcp_status::ok) << "unknown: skipped";
}

TEST(syn_cookie, round_trips_mss_and_rejects_other_tuples_and_old_cookies) {
    const siphash_key key{0x0123456789abcdefull, 0xfedcba9876543210ull};
    const four_tuple t{testing::ip4(10, 0, 0, 1), testing::ip4(10, 0, 0, 2), 443, 40000};
    const uint64_t now = 5 * k_cookie_tick_ns + 17;
    const uint32_t c = make_syn_cookie(key, t, 12345, 1460, now);
    EXPECT_EQ(check_syn_cookie(key, t, 12345, c, now), 1460);
    EXPECT_EQ(check_syn_cookie(key, t, 12345, c, now + k_cookie_tick_ns), 1460) << "one tick old";
    EXPECT_EQ(check_syn_cookie(key, t, 12345, c, now + 2 * k_cookie_tick_ns), 0) << "expired";
    EXPECT_EQ(check_syn_cookie(key, t, 12346, c, now), 0) << "other client ISN";
    four_tuple other = t;
    other.remote_port = 40001;
    EXPECT_EQ(check_syn_cookie(key, other, 12345, c, now), 0) << "other port";
    EXPECT_EQ(check_syn_cookie(key, t, 12345, c ^ 1, now), 0) << "forged hash bit";
    const siphash_key other_key{1, 2};
    EXPECT_EQ(check_syn_cookie(other_key, t, 12345, c, now), 0) << "other stack's key";
    // An MSS between table entries rounds down, never up.
    const uint32_t c2 = make_syn_cookie(key, t, 1, 1400, now);
    EXPECT_EQ(check_syn_cookie(key, t, 1, c2, now), 1360);
}

TEST(siphash, matches_reference_vector_for_eight_bytes) {
    // SipHash-2-4 reference (Aumasson & Bernstein, vectors.h): key 00..0f, message 00..07
    // -> 0x93f5f5799a932462.
    const siphash_key key{0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull};
    const uint64_t w = 0x0706050403020100ull;
    EXPECT_EQ(siphash24(key, &w, 1), 0x93f5f5799a932462ull);
}

struct slot {
    uint32_t key = 0;
    bool in = false;
    bool used() const { return in; }
    void clear() { *this = slot{}; }
};

TEST(probe_table, erase_keeps_colliding_keys_reachable_and_bounds_size) {
    detail::probe_table<slot> t(8);
    const auto h = [](uint32_t k) { return uint64_t(k % 3); }; // heavy collisions
    for (uint32_t k = 0; k < 8; ++k) {
        slot* s = t.insert(h(k));
        ASSERT_NE(s, nullptr);
        *s = {k, true};
    }
    EXPECT_EQ(t.insert(0), nullptr) << "bounded at max_entries";
    for (uint32_t k = 0; k < 8; k += 2) {
        slot* s = t.find(h(k), [k](const slot& x) { return x.key == k; });
        ASSERT_NE(s, nullptr);
        t.erase(s, [&](const slot& x) { return h(x.key); });
    }
    for (uint32_t k = 0; k < 8; ++k) {
        const slot* s = t.find(h(k), [k](const slot& x) { return x.key == k; });
        EXPECT_EQ(s != nullptr, k % 2 == 1) << k;
    }
}

} // namespace
} // namespace apprelay::net
