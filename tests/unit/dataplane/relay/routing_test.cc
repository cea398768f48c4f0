// Routing a new stream (dataplane/relay/routing.hh): the app by SNI, then the least-loaded
// allowed tunnel of its group.
#include "dataplane/relay/routing.hh"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace apprelay::relay {
namespace {

struct fake_tunnel {
    std::string connector;
    std::size_t streams = 0;
    std::size_t stream_count() const { return streams; }
};

snapshot make_snapshot(const std::vector<std::string>& hostnames) {
    snapshot s;
    s.tenants.push_back(tenant_entry{"t", "", ""});
    s.groups.push_back(group_entry{0, "g", 1, "", {}});
    for (const auto& h : hostnames) {
        app_entry a;
        a.name = "app-" + h;
        a.hostname = h;
        a.backend = "127.0.0.1:1";
        s.apps.push_back(a);
    }
    finalize(s);
    return s;
}

TEST(FindApp, MatchesCaseInsensitively) {
    auto s = make_snapshot({"web.contoso.test", "Mail.Contoso.Test"});
    const app_route* r = find_app(s, "WEB.contoso.TEST");
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->first, "web.contoso.test");
    EXPECT_EQ(s.apps[r->second].name, "app-web.contoso.test");
    r = find_app(s, "mail.contoso.test");
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(s.apps[r->second].name, "app-Mail.Contoso.Test");
}

TEST(FindApp, RefusesUnknownEmptyAndOverlongNames) {
    auto s = make_snapshot({"web.contoso.test"});
    EXPECT_EQ(find_app(s, "web.contoso.test."), nullptr);
    EXPECT_EQ(find_app(s, "eb.contoso.test"), nullptr);
    EXPECT_EQ(find_app(s, ""), nullptr);
    EXPECT_EQ(find_app(s, std::string(256, 'a')), nullptr);
    // 255 bytes is still a valid length: looked up, not refused for size.
    auto s2 = make_snapshot({std::string(255, 'b')});
    EXPECT_NE(find_app(s2, std::string(255, 'B')), nullptr);
}

std::vector<fake_tunnel*> ptrs(std::vector<fake_tunnel>& v) {
    std::vector<fake_tunnel*> out;
    for (auto& t : v) {
        out.push_back(&t);
    }
    return out;
}

auto allow_all = [](const fake_tunnel*) { return true; };

TEST(PickLeastLoaded, EmptyOrAllExcludedGivesNothing) {
    uint64_t rng = 1;
    std::vector<fake_tunnel*> none;
    EXPECT_EQ(pick_least_loaded(std::span<fake_tunnel* const>(none), rng, allow_all), nullptr);
    for (std::size_t n : {3u, 40u}) {
        std::vector<fake_tunnel> v(n);
        auto p = ptrs(v);
        EXPECT_EQ(pick_least_loaded(std::span<fake_tunnel* const>(p), rng,
                                    [](const fake_tunnel*) { return false; }),
                  nullptr);
    }
}

TEST(PickLeastLoaded, SmallGroupTakesTheLeastLoaded) {
    std::vector<fake_tunnel> v{{"a", 5}, {"b", 2}, {"c", 9}, {"d", 3}};
    auto p = ptrs(v);
    uint64_t rng = 7;
    for (int i = 0; i < 100; ++i) {
        EXPECT_EQ(pick_least_loaded(std::span<fake_tunnel* const>(p), rng, allow_all)->connector,
                  "b");
    }
    // Excluding the least loaded gives the next one.
    auto not_b = [](const fake_tunnel* t) { return t->connector != "b"; };
    EXPECT_EQ(pick_least_loaded(std::span<fake_tunnel* const>(p), rng, not_b)->connector, "d");
}

TEST(PickLeastLoaded, TiesSpreadOverEveryTunnel) {
    std::vector<fake_tunnel> v{{"a"}, {"b"}, {"c"}, {"d"}};
    auto p = ptrs(v);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    std::map<std::string, int> hits;
    for (int i = 0; i < 4000; ++i) {
        ++hits[pick_least_loaded(std::span<fake_tunnel* const>(p), rng, allow_all)->connector];
    }
    ASSERT_EQ(hits.size(), 4u);
    for (auto& [name, n] : hits) {
        EXPECT_GT(n, 700) << name; // 1,000 expected each
    }
}

TEST(PickLeastLoaded, LargeGroupPrefersLightTunnelsAndHonoursExclusion) {
    // 64 tunnels, tunnel i carries i streams: power of two choices picks the lighter of two, so
    // the mean load picked is well under the group's mean (31.5); a random pick would match it.
    std::vector<fake_tunnel> v(64);
    for (std::size_t i = 0; i < v.size(); ++i) {
        v[i].connector = "c" + std::to_string(i);
        v[i].streams = i;
    }
    auto p = ptrs(v);
    uint64_t rng = 3;
    double sum = 0;
    constexpr int k_picks = 10000;
    auto not_c0 = [](const fake_tunnel* t) { return t->connector != "c0"; };
    for (int i = 0; i < k_picks; ++i) {
        fake_tunnel* t = pick_least_loaded(std::span<fake_tunnel* const>(p), rng, not_c0);
        ASSERT_NE(t, nullptr);
        ASSERT_NE(t->connector, "c0");
        sum += double(t->streams);
    }
    EXPECT_LT(sum / k_picks, 25.0);
    EXPECT_GT(sum / k_picks, 15.0); // still random: not always the lightest
    // Only one tunnel allowed: the random tries miss it, the full scan still finds it.
    auto only_c42 = [](const fake_tunnel* t) { return t->connector == "c42"; };
    for (int i = 0; i < 100; ++i) {
        fake_tunnel* t = pick_least_loaded(std::span<fake_tunnel* const>(p), rng, only_c42);
        ASSERT_NE(t, nullptr);
        EXPECT_EQ(t->connector, "c42");
    }
}

} // namespace
} // namespace apprelay::relay
