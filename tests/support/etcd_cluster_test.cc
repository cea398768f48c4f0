// Self-test of the etcd_cluster fixture: a 3-member cluster survives losing its leader, and the
// killed member comes back on its old data dir.
#include "tests/support/etcd_cluster.hh"

#include <chrono>
#include <gtest/gtest.h>
#include <string>

namespace apprelay::testing {
namespace {

using clock_type = std::chrono::steady_clock;

TEST(etcd_cluster, leader_failover_and_restart) {
    std::string why;
    auto c = etcd_cluster::start(3, &why);
    ASSERT_NE(c, nullptr) << why;
    ASSERT_EQ(c->size(), 3);
    EXPECT_EQ(c->endpoints(), c->endpoint(0) + "," + c->endpoint(1) + "," + c->endpoint(2));

    int old_leader = c->leader();
    ASSERT_GE(old_leader, 0) << c->log_tail(0);

    std::string out, err;
    ASSERT_TRUE(c->ctl(old_leader, {"put", "/selftest/key", "value-1"}, &out, &err)) << err;

    c->kill(old_leader);
    EXPECT_FALSE(c->running(old_leader));
    auto t0 = clock_type::now();
    int new_leader = c->leader(); // polls the survivors for up to 5 s
    auto took = clock_type::now() - t0;
    ASSERT_GE(new_leader, 0) << "no new leader within 5 s";
    EXPECT_NE(new_leader, old_leader);
    EXPECT_LT(took, std::chrono::seconds(5));

    int survivor = (old_leader + 1) % 3;
    ASSERT_TRUE(c->ctl(survivor, {"get", "/selftest/key", "--print-value-only"}, &out, &err))
        << err;
    EXPECT_EQ(out, "value-1\n");

    ASSERT_TRUE(c->restart(old_leader, &why)) << why;
    EXPECT_TRUE(c->healthy(old_leader)) << c->log_tail(old_leader);
    // The restarted member serves the data written before it died.
    ASSERT_TRUE(c->ctl(old_leader, {"get", "/selftest/key", "--print-value-only"}, &out, &err))
        << err;
    EXPECT_EQ(out, "value-1\n");
}

TEST(etcd_cluster, stop_cont_and_compact) {
    std::string why;
    auto c = etcd_cluster::start(3, &why);
    ASSERT_NE(c, nullptr) << why;

    std::string out, err;
    for (int k = 0; k < 3; ++k)
        ASSERT_TRUE(c->ctl(0, {"put", "/selftest/c", std::to_string(k)}, &out, &err)) << err;
    ASSERT_TRUE(c->compact(3, &why)) << why;
    EXPECT_FALSE(c->compact(3, &why)); // already compacted
    EXPECT_NE(why.find("compacted"), std::string::npos) << why;

    int l = c->leader();
    ASSERT_GE(l, 0);
    c->stop(l);
    EXPECT_TRUE(c->stopped(l));
    EXPECT_FALSE(c->healthy(l));
    int other = c->leader();
    ASSERT_GE(other, 0);
    EXPECT_NE(other, l);
    c->cont(l);
    EXPECT_FALSE(c->stopped(l));
    // Once it hears the new term it rejoins as a follower and answers again.
    auto deadline = clock_type::now() + std::chrono::seconds(10);
    bool back = false;
    while (!back && clock_type::now() < deadline)
        back = c->healthy(l);
    EXPECT_TRUE(back) << c->log_tail(l);
    // The destructor must cope with a stopped member.
    c->stop((l + 1) % 3);
}

} // namespace
} // namespace apprelay::testing
