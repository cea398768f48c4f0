#include "dataplane/tunnel/connector_config.hh"

#include <gtest/gtest.h>

namespace apprelay::tunnel {
namespace {

std::span<const std::byte> bytes(std::string_view s) {
    return std::as_bytes(std::span(s.data(), s.size()));
}

TEST(connector_config, round_trip_sorts_and_dedups_backends) {
    connector_config c{"contoso", "site-a", {"10.0.0.2:80", "10.0.0.1:443", "10.0.0.2:80"}};
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
