#include "dataplane/tunnel/connector_config.hh"

#include <gtest/gtest.h>

namespace apprelay::tunnel {
namespace {

std::span<const std::byte> bytes(std::string_view s) {
    return std::as_bytes(std::span(s.data(), s.size()));
}

TEST(connector_config, round_trip_sorts_and_dedups_backends) {
    connector_config c{"contoso", "site-a", {"10.0.0.2:80", "10.0.0.1:443", "10.0.0.2:80"}, "", {}};
    std::string body = encode_connector_config(c);
    EXPECT_EQ(body, "tenant contoso\ngroup site-a\nbackend 10.0.0.1:443\nbackend 10.0.0.2:80\n");
    auto d = decode_connector_config(bytes(body));
    ASSERT_TRUE(d);
    EXPECT_EQ(d->tenant, "contoso");
    EXPECT_EQ(d->group, "site-a");
    ASSERT_EQ(d->backends.size(), 2u);
    EXPECT_TRUE(d->allows("10.0.0.1:443"));
    EXPECT_FALSE(d->allows("10.0.0.1:444"));
    EXPECT_FALSE(d->allows(""));
}

TEST(connector_config, fleet_relays_and_region_round_trip_and_bad_ones_are_refused) {
    connector_config c{"contoso", "site-a", {}, "eu-west",
                       {{"relay-b", "10.0.0.2:8444", "", true},
                        {"relay-a", "10.0.0.1:8444", "eu-west", false}}};
    std::string body = encode_connector_config(c);
    EXPECT_EQ(body, "tenant contoso\ngroup site-a\nregion eu-west\n"
                    "relay relay-b 10.0.0.2:8444 - 1\nrelay relay-a 10.0.0.1:8444 eu-west 0\n");
    auto d = decode_connector_config(bytes(body));
    ASSERT_TRUE(d);
    EXPECT_EQ(d->region, "eu-west");
    ASSERT_EQ(d->relays.size(), 2u);
    EXPECT_EQ(d->relays[0], (fleet_relay_info{"relay-a", "10.0.0.1:8444", "eu-west", false}));
    EXPECT_EQ(d->relays[1], (fleet_relay_info{"relay-b", "10.0.0.2:8444", "", true}));
    for (std::string_view bad : {"relay a 1.2.3.4:5 r\n", "relay a 1.2.3.4:5 r 2\n",
                                 "relay a noport r 0\n", "relay a 1.2.3.4:5 r 0 extra\n",
                                 "relay a  r 0\n"}) {
        std::string b = "tenant t\ngroup g\n" + std::string(bad);
        EXPECT_FALSE(decode_connector_config(bytes(b))) << bad;
    }
    std::string many = "tenant t\ngroup g\n";
    for (std::size_t i = 0; i <= k_max_config_relays; ++i) {
        many += "relay r" + std::to_string(i) + " 1.2.3.4:5 - 0\n";
    }
    EXPECT_FALSE(decode_connector_config(bytes(many)));
}

TEST(connector_config, group_without_backends_allows_nothing) {
    auto d = decode_connector_config(bytes("tenant t\ngroup Default\n"));
    ASSERT_TRUE(d);
    EXPECT_FALSE(d->allows("127.0.0.1:80"));
}

TEST(connector_config, unknown_keys_are_ignored) {
    auto d = decode_connector_config(bytes("tenant t\nregion eu\ngroup g\nbackend h:1\n"));
    ASSERT_TRUE(d);
    EXPECT_TRUE(d->allows("h:1"));
}

TEST(connector_config, malformed_bodies_are_refused) {
    for (std::string_view bad : {
             "tenant t\ngroup g",                // last line not terminated
             "tenant t\n",                       // no group
             "group g\n",                        // no tenant
             "tenant t\ngroup g\nbackend\n",     // no value
             "tenant t\ngroup g\n backend x\n",  // empty key
             "tenant t\ngroup g\nbackend \n",    // empty value
             "tenant t\ngroup g\nbackend a\tb\n" // control byte
         }) {
        auto d = decode_connector_config(bytes(bad));
        EXPECT_FALSE(d) << bad;
        if (!d) {
            EXPECT_EQ(d.code(), errc::protocol_error);
        }
    }
    std::string long_line = "tenant t\ngroup g\nbackend " + std::string(400, 'a') + "\n";
    EXPECT_FALSE(decode_connector_config(bytes(long_line)));
}

TEST(connector_config, backend_count_is_capped) {
    std::string body = "tenant t\ngroup g\n";
    for (std::size_t i = 0; i <= k_max_config_backends; ++i) {
        body += "backend h:" + std::to_string(i + 1) + "\n";
    }
    EXPECT_FALSE(decode_connector_config(bytes(body)));
}

} // namespace
} // namespace apprelay::tunnel
