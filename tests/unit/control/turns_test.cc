// Update turns (control/turns.hh): one connector per group at a time, only while the rest of
// the group serves; how a turn ends, and when it is stuck.
#include "control/turns.hh"

#include <gtest/gtest.h>

namespace apprelay::control {
namespace {

const std::vector<turn_peer> k_both_up = {{"c2", "site-b", true}};

TEST(Turns, OneConnectorPerGroupAtATime) {
    update_turns t(60);
    auto a = t.request("contoso/G", "c1", "0.2.0", k_both_up, 100);
    ASSERT_TRUE(a.granted);
    EXPECT_EQ(a.lease_s, 60u);
    auto b = t.request("contoso/G", "c2", "0.2.0", {{"c1", "site-a", true}}, 101);
    EXPECT_FALSE(b.granted);
    EXPECT_EQ(b.holder, "c1");
    EXPECT_EQ(b.reason, "connector c1 is updating");
    EXPECT_GT(b.retry_after_ms, 0u);
    // Another group, or the same group name in another tenant, is independent.
    EXPECT_TRUE(t.request("contoso/H", "c3", "0.2.0", {}, 101).granted);
    EXPECT_TRUE(t.request("fabrikam/G", "c4", "0.2.0", {}, 101).granted);
    EXPECT_EQ(t.list().size(), 3u);
}

TEST(Turns, RefusedWhileAnotherConnectorOfTheGroupHasNoTunnel) {
    update_turns t(60);
    auto d = t.request("contoso/G", "c1", "0.2.0", {{"c2", "site-b", false}}, 100);
    EXPECT_FALSE(d.granted);
    EXPECT_EQ(d.reason, "connector c2 (site-b) of the group has no tunnel");
    EXPECT_TRUE(d.holder.empty());
    EXPECT_TRUE(t.list().empty());
    // A group of one has nobody else to wait for.
    EXPECT_TRUE(t.request("contoso/Solo", "c9", "0.2.0", {}, 100).granted);
}

TEST(Turns, HolderAskingAgainRenewsItsLease) {
    update_turns t(60);
    ASSERT_TRUE(t.request("contoso/G", "c1", "0.2.0", k_both_up, 100).granted);
    // Even with c2 down meanwhile: the turn is already c1's.
    ASSERT_TRUE(t.request("contoso/G", "c1", "0.2.0", {{"c2", "", false}}, 150).granted);
    ASSERT_EQ(t.list().size(), 1u);
    EXPECT_EQ(t.list()[0].lease_end, 210);
}

TEST(Turns, EndsWhenTheConnectorComesBackWithTheNewVersion) {
    update_turns t(60);
    ASSERT_TRUE(t.request("contoso/G", "c1", "0.2.0", k_both_up, 100).granted);
    t.connector_down("c1", 101);
    t.connector_up("c1", "0.2.0", 105);
    EXPECT_TRUE(t.list().empty());
    EXPECT_TRUE(t.request("contoso/G", "c2", "0.2.0", {{"c1", "", true}}, 106).granted);
}

TEST(Turns, EndsWhenTheConnectorComesBackAtAnotherVersionAfterGoingDown) {
    update_turns t(60);
    ASSERT_TRUE(t.request("contoso/G", "c1", "0.2.0", k_both_up, 100).granted);
    // Up at the old version before it ever went down: a second tunnel, not a rollback.
    t.connector_up("c1", "0.1.0", 100);
    EXPECT_EQ(t.list().size(), 1u);
    t.connector_down("c1", 101);
    t.connector_up("c1", "0.1.0", 110); // rolled back
    EXPECT_TRUE(t.list().empty());
}

TEST(Turns, UnusedLeaseEndsAndADownConnectorsLeaseIsStuck) {
    update_turns t(60);
    auto exists = [](const std::string&) { return true; };
    ASSERT_TRUE(t.request("contoso/G", "c1", "0.2.0", k_both_up, 100).granted);
    t.expire(159, exists);
    EXPECT_EQ(t.list().size(), 1u);
    t.expire(160, exists); // never went down: the updater gave up before draining
    EXPECT_TRUE(t.list().empty());

    ASSERT_TRUE(t.request("contoso/G", "c1", "0.2.0", k_both_up, 200).granted);
    t.connector_down("c1", 201);
    t.expire(260, exists);
    ASSERT_EQ(t.list().size(), 1u);
    EXPECT_TRUE(t.list()[0].stuck);
    auto d = t.request("contoso/G", "c2", "0.2.0", {{"c1", "", false}}, 261);
    EXPECT_FALSE(d.granted);
    EXPECT_EQ(d.reason, "connector c1's update is stuck (no tunnel since it drained)");
    t.connector_up("c1", "0.1.0", 300); // brought back by hand
    EXPECT_TRUE(t.list().empty());
}

TEST(Turns, EndsWhenTheConnectorIsRemoved) {
    update_turns t(60);
    ASSERT_TRUE(t.request("contoso/G", "c1", "0.2.0", k_both_up, 100).granted);
    t.connector_down("c1", 101);
    t.expire(102, [](const std::string& id) { return id != "c1"; });
    EXPECT_TRUE(t.list().empty());
}

} // namespace
} // namespace apprelay::control
