// apprelayctl: request building (paths, percent-encoding, bodies) and human output.
#include "control/ctl/client.hh"
#include "control/ctl/output.hh"

#include <cstdlib>
#include <gtest/gtest.h>

namespace apprelay::ctl {
namespace {

using nlohmann::json;

TEST(ctl_output, connectors_table_is_aligned) {
    const int64_t now = 1'700'000'000;
    json j = json::parse(R"({"connectors": [
        {"id": "c0ffee0000000001", "name": "paris-1", "group": "Default", "version": "0.1.0",
         "status": "active", "tunnels": 2, "fingerprint": "ab", "first_seen": 1,
         "last_seen": 1699999995},
        {"id": "c2", "name": "a-much-longer-name", "group": "eu-west", "version": "0.0.9",
         "status": "inactive", "tunnels": 0, "last_seen": 1699996400},
        {"id": "c3", "group": "eu-west", "status": "inactive", "tunnels": 0, "last_seen": 0}
    ]})");
    // last_seen: now-5 s -> "5s ago"; now-3600 s -> "1h ago"; 0 (never) -> "-".
    EXPECT_EQ(format_connectors(j, now),
              "ID                NAME                GROUP    STATUS    TUNNELS  VERSION  "
              "LAST-SEEN\n"
              "c0ffee0000000001  paris-1             Default  active    2        0.1.0    "
              "5s ago\n"
              "c2                a-much-longer-name  eu-west  inactive  0        0.0.9    "
              "1h ago\n"
              "c3                -                   eu-west  inactive  0        -        -\n");
}

TEST(ctl_output, empty_list_prints_the_header_only) {
    EXPECT_EQ(format_groups(json::parse(R"({"groups": []})")),
              "NAME  REGION  CONNECTORS  ACTIVE  APPS\n");
}

TEST(ctl_output, groups_apps_tenants_and_tokens_tables) {
    json groups = json::parse(R"({"groups": [
        {"name": "Default", "region": "", "connectors": 3, "active": 1, "apps": []},
        {"name": "eu", "region": "eu-west", "connectors": 2, "active": 2, "apps": ["wiki", "git"]}
    ]})");
    EXPECT_EQ(format_groups(groups), "NAME     REGION   CONNECTORS  ACTIVE  APPS\n"
                                     "Default  -        3           1       -\n"
                                     "eu       eu-west  2           2       wiki,git\n");
    json apps = json::parse(R"({"apps": [
        {"name": "wiki", "hostname": "wiki.example.com", "listen_port": null,
         "backend": "10.0.0.5:80", "group": "eu", "access": "user-cert",
         "allowed_user_groups": ["staff", "ops"], "idle_timeout_ms": 0},
        {"name": "chat", "hostname": "chat.example.com", "listen_port": null,
         "backend": "10.0.0.6:80", "group": "eu", "access": "passthrough",
         "allowed_user_groups": [], "idle_timeout_ms": 86400000}
    ]})");
    EXPECT_EQ(format_apps(apps),
              "NAME  HOSTNAME          PORT  BACKEND      GROUP  ACCESS       USER-GROUPS  "
              "IDLE-TIMEOUT-MS\n"
              "wiki  wiki.example.com  -     10.0.0.5:80  eu     user-cert    staff,ops    -\n"
              "chat  chat.example.com  -     10.0.0.6:80  eu     passthrough  -            86400000\n");
    json tenants = json::parse(R"({"tenants": [{"name": "default", "ca_fingerprint": "ab12"}]})");
    EXPECT_EQ(format_tenants(tenants), "NAME     CA-FINGERPRINT\n"
                                       "default  ab12\n");
    // 1700000000 = 2023-11-14 22:13:20 UTC.
    json tokens = json::parse(R"({"tokens": [{"id": "0123456789abcdef", "group": "Default",
        "created_at": 1700000000, "expires_at": 1700003600, "state": "valid"}]})");
    EXPECT_EQ(format_tokens(tokens),
              "ID                GROUP    STATE  CREATED               EXPIRES\n"
              "0123456789abcdef  Default  valid  2023-11-14 22:13:20Z  2023-11-14 23:13:20Z\n");
}

TEST(ctl_output, token_created_prints_the_token_alone_on_stdout) {
    json j = json::parse(R"({"id": "0123456789abcdef", "token": "art1.0123456789abcdef.s.fp",
                             "group": "Default", "expires_at": 1700003600})");
    rendered r = format_token_created(j);
    EXPECT_EQ(r.out, "art1.0123456789abcdef.s.fp\n");
    EXPECT_EQ(r.err, "token 0123456789abcdef for group Default expires 2023-11-14 23:13:20Z\n");
}

TEST(ctl_output, status_is_key_value_lines) {
    json j = json::parse(R"({"version": "0.1.0", "config_version": 9, "uptime_s": 3725,
        "workers": 2, "user_port": 8443, "tunnel_port": 9443, "enroll_port": 9444,
        "tunnels_up": 4, "latest_connector_version": "0.1.0", "min_connector_version": "0.1.0",
        "config_stale": true, "connectors": {"active": 3, "inactive": 1}})");
    // 3725 s = 1 h 2 min 5 s.
    EXPECT_EQ(format_status(j),
              "version            0.1.0\n"
              "config version     9 (stale: serving the last good configuration)\n"
              "uptime             1h 2m\n"
              "workers            2\n"
              "ports              user 8443, tunnel 9443, enroll 9444\n"
              "tunnels up         4\n"
              "connectors         3 active, 1 inactive\n"
              "connector version  latest 0.1.0, minimum 0.1.0\n");
}

TEST(ctl_output, confirmations_and_errors) {
    EXPECT_EQ(format_confirmation("created group eu", json::parse(R"({"config_version": 12})")),
              "created group eu (config version 12)\n");
    EXPECT_EQ(format_confirmation("deleted app wiki", json::object()), "deleted app wiki\n");
    EXPECT_EQ(format_group_deleted(
                  "eu", json::parse(R"({"moved_connectors": ["c1", "c2"], "config_version": 3})")),
              "deleted group eu (config version 3)\nmoved 2 connector(s) out of it: c1, c2\n");
    EXPECT_EQ(api_error_message(404, R"({"error": "group eu not found in tenant default"})"),
              "group eu not found in tenant default");
    EXPECT_EQ(api_error_message(502, "Bad Gateway\nmore"), "HTTP 502: Bad Gateway");
    EXPECT_EQ(api_error_message(500, ""), "HTTP 500");
    EXPECT_EQ(format_age(100, 100 + 86400 * 3), "3d ago");
    EXPECT_EQ(format_age(200, 100), "now");
}

TEST(ctl_output, listed_names_take_one_field_of_each_listed_object) {
    json j = json::parse(R"({"tokens": [
        {"id": "t1", "state": "valid"}, {"id": "t2", "state": "used"}, {"state": "valid"},
        {"id": 7, "state": "valid"}, {"id": "", "state": "valid"}, "t9", {"id": "t3"},
        {"id": "t4", "state": "valid"}
    ]})");
    EXPECT_EQ(listed_names(j, "tokens", "id", ""),
              (std::vector<std::string>{"t1", "t2", "t3", "t4"}));
    // A state filter drops the objects in another state and those without one.
    EXPECT_EQ(listed_names(j, "tokens", "id", "valid"), (std::vector<std::string>{"t1", "t4"}));
    EXPECT_TRUE(listed_names(j, "groups", "name", "").empty());
    EXPECT_TRUE(
        listed_names(json::parse(R"({"groups": {"name": "g"}})"), "groups", "name", "").empty());
}

TEST(ctl_client, paths_are_percent_encoded) {
    EXPECT_EQ(percent_encode("a b/c?d%e~f.g-h_i"), "a%20b%2Fc%3Fd%25e~f.g-h_i");
    api_call c = group_delete_call("con toso", "eu/west", true);
    EXPECT_EQ(c.method, "DELETE");
    EXPECT_EQ(c.path, "/v1/tenants/con%20toso/groups/eu%2Fwest?force=1");
    EXPECT_TRUE(c.body.empty());
    EXPECT_EQ(tenant_ca_call("x").path, "/v1/tenants/x/ca");
    EXPECT_EQ(status_call().path, "/v1/status");
    EXPECT_EQ(metrics_call().path, "/metrics");
}

TEST(ctl_client, bodies_carry_only_given_fields) {
    app_fields f;
    f.backend = "10.0.0.5:80";
    f.hostname = "wiki.example.com";
    f.listen_port = 8080;
    f.allowed_user_groups = {"staff"};
    api_call create = app_create_call("default", "wiki", f);
    EXPECT_EQ(create.method, "POST");
    EXPECT_EQ(create.path, "/v1/tenants/default/apps");
    EXPECT_EQ(json::parse(create.body), json::parse(R"({"name": "wiki", "backend": "10.0.0.5:80",
        "hostname": "wiki.example.com", "listen_port": 8080, "allowed_user_groups": ["staff"]})"));

    app_fields g;
    g.access = "passthrough";
    api_call update = app_update_call("default", "wiki", g);
    EXPECT_EQ(update.method, "PATCH");
    EXPECT_EQ(update.path, "/v1/tenants/default/apps/wiki");
    EXPECT_EQ(json::parse(update.body), json::parse(R"({"access": "passthrough"})"));

    EXPECT_EQ(json::parse(app_assign_call("default", "wiki", "eu").body),
              json::parse(R"({"group": "eu"})"));
    EXPECT_EQ(json::parse(group_rename_call("default", "a", "b").body),
              json::parse(R"({"name": "b"})"));
    EXPECT_EQ(json::parse(connector_move_call("default", "c1", "Default").body),
              json::parse(R"({"group": "Default"})"));
    EXPECT_EQ(json::parse(token_create_call("default", std::nullopt, std::nullopt).body),
              json::object());
    EXPECT_EQ(json::parse(token_create_call("default", "eu", 600).body),
              json::parse(R"({"group": "eu", "ttl_s": 600})"));
    EXPECT_EQ(json::parse(group_create_call("default", "eu", std::nullopt).body),
              json::parse(R"({"name": "eu"})"));
}

TEST(ctl_client, endpoint_from_options_and_environment) {
    ::unsetenv("APPRELAY_ADMIN_SOCKET");
    ::unsetenv("APPRELAY_ADMIN_TOKEN");
    endpoint ep;
    EXPECT_EQ(resolve_endpoint("", "", "", ep), "");
    EXPECT_EQ(ep.socket_path, "/run/apprelay/admin.sock");
    ::setenv("APPRELAY_ADMIN_SOCKET", "/tmp/env.sock", 1);
    EXPECT_EQ(resolve_endpoint("", "", "", ep), "");
    EXPECT_EQ(ep.socket_path, "/tmp/env.sock");
    EXPECT_EQ(resolve_endpoint("/tmp/opt.sock", "", "", ep), "");
    EXPECT_EQ(ep.socket_path, "/tmp/opt.sock");
    EXPECT_EQ(resolve_endpoint("", "http://127.0.0.1:9", "", ep),
              "--url needs --token or APPRELAY_ADMIN_TOKEN");
    ::setenv("APPRELAY_ADMIN_TOKEN", "tok", 1);
    EXPECT_EQ(resolve_endpoint("", "http://127.0.0.1:9", "", ep), "");
    EXPECT_EQ(ep.token, "tok");
    EXPECT_EQ(ep.where(), "http://127.0.0.1:9");
    EXPECT_NE(resolve_endpoint("", "file:///etc/passwd", "t", ep), "");
    ::unsetenv("APPRELAY_ADMIN_SOCKET");
    ::unsetenv("APPRELAY_ADMIN_TOKEN");
}

} // namespace
} // namespace apprelay::ctl
