// SIGHUP's plan: which changes of a re-read settings file apply live and which wait for a
// restart (control/reload.hh).
#include "control/reload.hh"

#include <gtest/gtest.h>

using namespace apprelay;

namespace {

control::relay_settings parse(const std::string& body) {
    control::relay_settings s;
    std::string why;
    EXPECT_TRUE(control::parse_settings(body, "/etc/apprelay/relay.toml", &s, &why)) << why;
    return s;
}

const std::string k_base = "[relay]\nuser_listen = \"0.0.0.0:443\"\n";

} // namespace

TEST(reload_plan, unchanged_file_changes_nothing) {
    auto a = parse(k_base);
    auto p = control::plan_reload(a, parse(k_base));
    EXPECT_TRUE(p.live.empty());
    EXPECT_TRUE(p.restart.empty());
}

TEST(reload_plan, limits_read_per_use_apply_live) {
    auto a = parse(k_base);
    auto b = parse(k_base + "[limits]\nidle_timeout_ms = 5000\nuser_buffer_budget_mb = 64\n"
                            "source_open_rate = 7\n");
    auto p = control::plan_reload(a, b);
    EXPECT_TRUE(p.restart.empty());
    EXPECT_EQ(control::describe(p.live),
              "limits.source_open_rate=20000->7 limits.idle_timeout_ms=3600000->5000 "
              "limits.user_buffer_budget_mb=1024->64");
    EXPECT_EQ(p.limits.idle_timeout_ms, 5000u);
    EXPECT_EQ(p.limits.source_open_rate, 7u);
    EXPECT_EQ(p.limits.user_buffer_budget, uint64_t(64) << 20);
}

TEST(reload_plan, limits_agreed_in_hello_ack_wait_for_a_restart) {
    auto a = parse(k_base);
    auto b = parse(k_base + "[limits]\nmax_frame = 32768\nping_interval_ms = 500\n");
    auto p = control::plan_reload(a, b);
    EXPECT_TRUE(p.live.empty());
    EXPECT_EQ(control::describe(p.restart),
              "limits.max_frame=16384->32768 limits.ping_interval_ms=1000->500");
    // The running values stay.
    EXPECT_EQ(p.limits.max_frame, 16384u);
    EXPECT_EQ(p.limits.ping_interval_ms, 1000u);
}

TEST(reload_plan, listeners_store_and_tls_wait_for_a_restart_and_secrets_stay_hidden) {
    auto a = parse(k_base);
    auto b = parse("[relay]\nuser_listen = \"0.0.0.0:8443\"\ncore_map = \"control=0,workers=1\"\n"
                   "[admin]\nlisten = \"127.0.0.1:9000\"\ntoken = \"0123456789abcdef0123\"\n"
                   "[tls]\nuser_groups = \"X25519\"\n[limits]\nopen_retries = 3\n");
    auto p = control::plan_reload(a, b);
    EXPECT_EQ(control::describe(p.live), "limits.open_retries=2->3");
    EXPECT_EQ(control::describe(p.restart),
              "relay.user_listen=0.0.0.0:443->0.0.0.0:8443 "
              "relay.core_map=->control=0,workers=1 admin.listen=->127.0.0.1:9000 "
              "admin.token=(changed) tls.user_groups=X25519:P-256->X25519");
}
