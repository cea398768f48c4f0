#include "control/api/api.hh"
#include "control/store/pem_util.hh"
#include "control/store/sqlite.hh"
#include "dataplane/base/log.hh"

#include <filesystem>
#include <gtest/gtest.h>
#include <map>
#include <nlohmann/json.hpp>

namespace apprelay::control {
namespace {

using json = nlohmann::json;
constexpr int64_t k_now = 1'700'000'000;

class api_test : public ::testing::Test {
protected:
    void SetUp() override {
        log::set_level(log::level::warn);
        char tmpl[] = "/tmp/apprelay-api-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        _dir = tmpl;
        auto s = sqlite_store::open(_dir + "/store.db", "relay.test");
        ASSERT_TRUE(s.ok());
        _store = std::move(s).value();
        _api = std::make_unique<admin_api>(*_store);
        _live.now = k_now;
        _live.tunnels_of = [](const std::string&) { return 3u; };
        _live.relay_status = {{"version", "0.1.0"}, {"workers", 2}, {"config_stale", false}};
        _live.render_metrics = [] { return std::string("apprelay_up 1\n"); };
    }
    void TearDown() override {
        _api.reset();
        _store.reset();
        std::filesystem::remove_all(_dir);
    }
    http_response call(const std::string& method, const std::string& path,
                       const std::string& body = "",
                       std::vector<std::pair<std::string, std::string>> query = {}) {
        return _api->handle(http_request{method, path, std::move(query), body}, _live);
    }
    // Status and parsed body; the error text for 4xx/5xx.
    json ok(const http_response& r, int status = 200) {
        EXPECT_EQ(r.status, status) << r.body;
        return json::parse(r.body);
    }
    void expect_error(const http_response& r, int status, const std::string& message) {
        EXPECT_EQ(r.status, status) << r.body;
        EXPECT_EQ(json::parse(r.body).value("error", ""), message);
    }
    std::string enroll(const std::string& group = "Default", const std::string& version = "1.0",
                       const std::string& tenant = "contoso", const std::string& name = "conn") {
        auto t = ok(
            call("POST", "/v1/tenants/" + tenant + "/tokens", json{{"group", group}}.dump()), 201);
        cert_signer signer = [](const tls::pem_pair& ca, const std::string& id,
                                const std::string&) -> store_result<signed_cert> {
            tls::leaf_options o;
            o.common_name = id;
            o.server = false;
            o.client = true;
            std::string why;
            auto leaf = tls::issue_leaf(ca, o, &why);
            return signed_cert{leaf->cert_pem, cert_fingerprint(leaf->cert_pem).value()};
        };
        auto c = _store->enroll(t["token"], name, version, signer, k_now);
        EXPECT_TRUE(c.ok());
        return c.ok() ? c->value.id : "";
    }

    std::string _dir;
    std::unique_ptr<sqlite_store> _store;
    std::unique_ptr<admin_api> _api;
    live_view _live;
};

TEST_F(api_test, status_merges_live_state_with_the_store) {
    auto j = ok(call("GET", "/v1/status"));
    EXPECT_EQ(j["version"], "0.1.0");
    EXPECT_EQ(j["workers"], 2);
    EXPECT_EQ(j["config_version"], _store->config_version().value());
    EXPECT_EQ(j["connectors"]["active"], 0);
    EXPECT_EQ(j["connectors"]["inactive"], 0);
}

TEST_F(api_test, metrics_come_from_the_live_view) {
    auto r = call("GET", "/metrics");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.content_type, "text/plain; version=0.0.4");
    EXPECT_EQ(r.body, "apprelay_up 1\n");
}

TEST_F(api_test, unknown_paths_and_methods) {
    expect_error(call("GET", "/v1/x"), 404, "no such endpoint: GET /v1/x");
    expect_error(call("GET", "/v1/tenants/contoso/widgets"), 404,
                 "no such endpoint: GET /v1/tenants/contoso/widgets");
    expect_error(call("PUT", "/v1/tenants/contoso/groups"), 405,
                 "method PUT not allowed on /v1/tenants/contoso/groups (allowed: GET, POST)");
    expect_error(call("POST", "/v1/status"), 405,
                 "method POST not allowed on /v1/status (allowed: GET)");
}

TEST_F(api_test, tenants_are_created_on_first_post_and_unknown_on_get) {
    expect_error(call("GET", "/v1/tenants/contoso/groups"), 404, "no tenant 'contoso'");
    expect_error(call("GET", "/v1/tenants/contoso/ca"), 404, "no tenant 'contoso'");
    auto g = ok(call("POST", "/v1/tenants/contoso/groups", R"({"name":"DR","region":"eu"})"), 201);
    EXPECT_EQ(g["group"]["name"], "DR");
    EXPECT_EQ(g["config_version"], _store->config_version().value());
    auto ts = ok(call("GET", "/v1/tenants"));
    ASSERT_EQ(ts["tenants"].size(), 1u);
    EXPECT_EQ(ts["tenants"][0]["name"], "contoso");
    auto ca = ok(call("GET", "/v1/tenants/contoso/ca"));
    EXPECT_EQ(ca["ca_fingerprint"], ts["tenants"][0]["ca_fingerprint"]);
    EXPECT_NE(ca["ca_pem"].get<std::string>().find("BEGIN CERTIFICATE"), std::string::npos);
}

TEST_F(api_test, bad_bodies_are_400_with_the_reason) {
    const std::string path = "/v1/tenants/contoso/groups";
    auto r = call("POST", path, R"({"name": )");
    EXPECT_EQ(r.status, 400);
    EXPECT_EQ(json::parse(r.body)["error"].get<std::string>().rfind("malformed JSON at byte 10", 0),
              0u)
        << r.body;
    expect_error(call("POST", path, "[1]"), 400, "request body must be a JSON object");
    expect_error(call("POST", path, R"({"name":"a","colour":1,"size":2})"), 400,
                 "unknown fields 'colour', 'size'");
    expect_error(call("POST", path, R"({"name":5})"), 400, "field 'name' must be a string");
    expect_error(call("POST", path, R"({"region":"eu"})"), 400, "missing field 'name'");
    expect_error(call("POST", path, R"({"name":"a b"})"), 400,
                 "invalid group name 'a b': names are 1-64 characters of A-Z a-z 0-9 . _ -");
    // None of them wrote anything.
    expect_error(call("GET", path), 404, "no tenant 'contoso'");
}

// Regressions found by tests/fuzz/admin_api_fuzz.cc: each was a 500 (or a wrong certificate).
TEST_F(api_test, fuzzer_findings_are_clear_refusals) {
    ok(call("POST", "/v1/tenants/contoso/groups", R"({"name":"g"})"), 201); // creates the tenant
    const std::string users = "/v1/tenants/contoso/users";
    // A number beyond a double's range is malformed JSON, not an exception out of the handler.
    auto r = call("POST", users, R"({"name":"alice","groups":["hr"],"days":9E9999999999})");
    EXPECT_EQ(r.status, 400) << r.body;
    expect_error(call("POST", users, json{{"name", std::string(65, 'a')}, {"groups", {"hr"}}}.dump()),
                 400, "name: required, 1-64 printable characters");
    // A NUL inside a group would have cut the certificate's OU short ("a").
    expect_error(call("POST", users, json{{"name", "alice"}, {"groups", {std::string("a\0b", 3)}}}.dump()),
                 400, "groups: each user group is 1-64 printable characters");
    ok(call("POST", users, json{{"name", "alice"}, {"groups", {"hr"}}}.dump()), 201);
    // A 64-character tenant name gets its CA (the decorated CN would be over 64 characters).
    ok(call("POST", "/v1/tenants/" + std::string(64, 't') + "/groups", R"({"name":"g"})"), 201);
}

TEST_F(api_test, group_lifecycle) {
    ok(call("POST", "/v1/tenants/contoso/groups", R"({"name":"DR"})"), 201);
    expect_error(call("POST", "/v1/tenants/contoso/groups", R"({"name":"DR"})"), 409,
                 "group 'DR' already exists in tenant 'contoso'");
    std::string id = enroll("DR");
    ok(call("POST", "/v1/tenants/contoso/apps",
            R"({"name":"hr","hostname":"hr.contoso.com","backend":"10.0.0.5:443","group":"DR"})"),
       201);
    auto gs = ok(call("GET", "/v1/tenants/contoso/groups"));
    ASSERT_EQ(gs["groups"].size(), 2u);
    EXPECT_EQ(gs["groups"][0]["name"], "DR");
    EXPECT_EQ(gs["groups"][0]["connectors"], 1);
    EXPECT_EQ(gs["groups"][0]["active"], 0);
    EXPECT_EQ(gs["groups"][0]["apps"], json::array({"hr"}));

    expect_error(call("DELETE", "/v1/tenants/contoso/groups/DR"), 409,
                 "group 'DR' is used by apps: hr");
    ok(call("DELETE", "/v1/tenants/contoso/apps/hr"));
    expect_error(call("DELETE", "/v1/tenants/contoso/groups/DR"), 409,
                 "group 'DR' has connectors: " + id + " (force moves them to Default)");
    expect_error(call("DELETE", "/v1/tenants/contoso/groups/DR", "", {{"force", "maybe"}}), 400,
                 "query parameter 'force' must be 1 or 0, not 'maybe'");
    ok(call("PATCH", "/v1/tenants/contoso/groups/DR", R"({"name":"Backup"})"));
    expect_error(call("PATCH", "/v1/tenants/contoso/groups/Default", R"({"name":"X"})"), 422,
                 "group 'Default' cannot be renamed");
    expect_error(call("DELETE", "/v1/tenants/contoso/groups/Default"), 422,
                 "group 'Default' cannot be deleted");
    auto d = ok(call("DELETE", "/v1/tenants/contoso/groups/Backup", "", {{"force", "1"}}));
    EXPECT_EQ(d["moved_connectors"], json::array({id}));
    EXPECT_EQ(d["config_version"], _store->config_version().value());
}

TEST_F(api_test, connectors_list_move_and_delete) {
    ok(call("POST", "/v1/tenants/contoso/groups", R"({"name":"DR"})"), 201);
    std::string id = enroll();
    auto cs = ok(call("GET", "/v1/tenants/contoso/connectors"));
    ASSERT_EQ(cs["connectors"].size(), 1u);
    EXPECT_EQ(cs["connectors"][0]["id"], id);
    EXPECT_EQ(cs["connectors"][0]["tunnels"], 3);
    EXPECT_EQ(cs["connectors"][0]["status"], "inactive");
    EXPECT_EQ(cs["connectors"][0]["first_seen"], k_now);
    ok(call("PATCH", "/v1/tenants/contoso/connectors/" + id, R"({"group":"DR"})"));
    EXPECT_EQ(ok(call("GET", "/v1/tenants/contoso/connectors"))["connectors"][0]["group"], "DR");
    expect_error(call("PATCH", "/v1/tenants/contoso/connectors/" + id, R"({"group":"Nope"})"), 404,
                 "no group 'Nope' in tenant 'contoso'");
    ok(call("DELETE", "/v1/tenants/contoso/connectors/" + id));
    expect_error(call("DELETE", "/v1/tenants/contoso/connectors/" + id), 404,
                 "no connector '" + id + "' in tenant 'contoso'");
    EXPECT_EQ(_store->load().value().revoked_fingerprints.size(), 1u);
}

TEST_F(api_test, apps_create_update_delete) {
    auto a = ok(call("POST", "/v1/tenants/contoso/apps",
                     R"({"name":"hr","hostname":"hr.contoso.com","backend":"10.0.0.5:443"})"),
                201);
    EXPECT_EQ(a["app"]["group"], "Default");
    EXPECT_EQ(a["app"]["access"], "passthrough");
    EXPECT_EQ(a["app"]["backend"], "10.0.0.5:443");
    expect_error(call("POST", "/v1/tenants/contoso/apps", R"({"name":"x","hostname":"x.c"})"), 400,
                 "missing field 'backend'");
    expect_error(call("POST", "/v1/tenants/contoso/apps",
                      R"({"name":"x","hostname":"x.c","backend":"a:1","listen_port":"80"})"),
                 400, "field 'listen_port' must be an integer");
    expect_error(call("POST", "/v1/tenants/contoso/apps",
                      R"({"name":"x","hostname":"x.c","backend":"a:1","access":"open"})"),
                 400, "field 'access' must be 'passthrough' or 'user-cert', not 'open'");
    expect_error(call("POST", "/v1/tenants/fabrikam/apps",
                      R"({"name":"hr","hostname":"hr.contoso.com","backend":"b:1"})"),
                 409, "hostname 'hr.contoso.com' is already used by app 'hr' in tenant 'contoso'");
    auto p =
        ok(call("PATCH", "/v1/tenants/contoso/apps/hr",
                R"({"access":"user-cert","allowed_user_groups":["finance"],"listen_port":8443})"));
    EXPECT_EQ(p["app"]["access"], "user-cert");
    EXPECT_EQ(p["app"]["listen_port"], 8443);
    expect_error(call("PATCH", "/v1/tenants/contoso/apps/hr", R"({"name":"other"})"), 400,
                 "unknown field 'name'");
    expect_error(call("PATCH", "/v1/tenants/contoso/apps/hr", R"({"allowed_user_groups":[1]})"),
                 400, "field 'allowed_user_groups' must be an array of strings");
    auto list = ok(call("GET", "/v1/tenants/contoso/apps"));
    ASSERT_EQ(list["apps"].size(), 1u);
    EXPECT_EQ(list["apps"][0]["allowed_user_groups"], json::array({"finance"}));
    ok(call("DELETE", "/v1/tenants/contoso/apps/hr"));
    expect_error(call("DELETE", "/v1/tenants/contoso/apps/hr"), 404,
                 "no app 'hr' in tenant 'contoso'");
}

TEST_F(api_test, tokens_create_list_revoke) {
    auto t = ok(call("POST", "/v1/tenants/contoso/tokens", ""), 201);
    EXPECT_EQ(t["group"], "Default");
    EXPECT_EQ(t["expires_at"], k_now + 3600);
    EXPECT_EQ(t["token"].get<std::string>().substr(0, 5), "art1.");
    expect_error(call("POST", "/v1/tenants/contoso/tokens", R"({"ttl_s":2592001})"), 400,
                 "ttl_s 2592001 exceeds the maximum of 2592000");
    expect_error(call("POST", "/v1/tenants/contoso/tokens", R"({"group":"DR"})"), 404,
                 "no group 'DR' in tenant 'contoso'");
    auto list = ok(call("GET", "/v1/tenants/contoso/tokens"));
    ASSERT_EQ(list["tokens"].size(), 1u);
    EXPECT_EQ(list["tokens"][0]["state"], "valid");
    EXPECT_FALSE(list["tokens"][0].contains("token"));
    std::string id = t["id"];
    ok(call("DELETE", "/v1/tenants/contoso/tokens/" + id));
    EXPECT_EQ(ok(call("GET", "/v1/tenants/contoso/tokens"))["tokens"][0]["state"], "revoked");
    expect_error(call("DELETE", "/v1/tenants/contoso/tokens/" + id), 409,
                 "token '" + id + "' is already revoked");
    expect_error(call("GET", "/v1/tenants/contoso/tokens/" + id), 405,
                 "method GET not allowed on /v1/tenants/contoso/tokens/" + id +
                     " (allowed: DELETE)");
}

TEST_F(api_test, status_page_is_self_contained_html_with_a_strict_policy) {
    auto r = call("GET", "/");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.content_type, "text/html; charset=utf-8");
    EXPECT_EQ(r.body.rfind("<!DOCTYPE html>", 0), 0u);
    EXPECT_NE(r.body.find("/v1/overview"), std::string::npos);
    EXPECT_NE(r.body.find("</html>"), std::string::npos);
    // Nothing from elsewhere: no external script, style or image.
    EXPECT_EQ(r.body.find("src="), std::string::npos);
    EXPECT_EQ(r.body.find("<link"), std::string::npos);
    // Data reaches the DOM only as text.
    EXPECT_EQ(r.body.find("innerHTML"), std::string::npos);
    std::map<std::string, std::string> h(r.headers.begin(), r.headers.end());
    EXPECT_EQ(h["Content-Security-Policy"],
              "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
              "connect-src 'self'; img-src data:");
    EXPECT_EQ(h["X-Content-Type-Options"], "nosniff");
    EXPECT_EQ(h["Cache-Control"], "no-store");
    expect_error(call("POST", "/"), 405, "method POST not allowed on / (allowed: GET)");
}

TEST_F(api_test, overview_lists_every_tenant_with_its_groups_connectors_apps_and_alerts) {
    _live.relay_status["min_connector_version"] = "1.0";
    _live.relay_status["latest_connector_version"] = "1.2";
    _live.relay_status["config_version"] = 7;
    ok(call("POST", "/v1/tenants/contoso/groups", R"({"name":"Site","region":"<b>eu</b>"})"), 201);
    ok(call("POST", "/v1/tenants/contoso/groups", R"({"name":"Empty"})"), 201);
    std::string a = enroll("Site", "1.0", "contoso", "a");
    std::string b = enroll("Site", "0.9.7", "contoso", "b");
    std::string c = enroll("Default", "1.2", "contoso", "c");
    for (const auto& id : {a, b, c}) {
        ASSERT_TRUE(_store->set_connector_status(id, connector_status::active, k_now).ok());
    }
    ok(call("POST", "/v1/tenants/contoso/apps",
            R"({"name":"hr","hostname":"hr.contoso.com","backend":"10.0.0.5:443","group":"Site"})"),
       201);
    ok(call("POST", "/v1/tenants/fabrikam/apps",
            R"({"name":"web","listen_port":9443,"backend":"10.0.0.6:443"})"),
       201);
    _live.now = k_now + 5;

    auto j = ok(call("GET", "/v1/overview"));
    EXPECT_EQ(j["now"], k_now + 5);
    EXPECT_EQ(j["min_connector_version"], "1.0");
    EXPECT_EQ(j["latest_connector_version"], "1.2");
    EXPECT_EQ(j["config_version"], 7);
    ASSERT_EQ(j["tenants"].size(), 2u);
    const json& contoso = j["tenants"][0];
    EXPECT_EQ(contoso["name"], "contoso");
    // Groups in name order: Default, Empty, Site.
    ASSERT_EQ(contoso["groups"].size(), 3u);
    const json& site = contoso["groups"][2];
    EXPECT_EQ(site["name"], "Site");
    EXPECT_EQ(site["region"], "<b>eu</b>"); // JSON carries it as is; the page sets it as text
    EXPECT_EQ(site["active"], 2);
    EXPECT_EQ(site["apps"], json::array({"hr"}));
    ASSERT_EQ(site["connectors"].size(), 2u);
    std::map<std::string, json> by_name;
    for (const auto& x : site["connectors"]) {
        by_name[x["name"]] = x;
    }
    EXPECT_EQ(by_name["a"]["id"], a);
    EXPECT_EQ(by_name["a"]["status"], "active");
    EXPECT_EQ(by_name["a"]["version"], "1.0");
    EXPECT_EQ(by_name["a"]["tunnels"], 3);
    EXPECT_EQ(by_name["a"]["last_seen"], k_now);
    EXPECT_EQ(by_name["a"]["outdated"], false);
    // 0.9.7 < 1.0 (component by component); c runs 1.2.
    EXPECT_EQ(by_name["b"]["outdated"], true);
    EXPECT_EQ(contoso["groups"][0]["connectors"][0]["outdated"], false); // 1.2
    ASSERT_EQ(contoso["apps"].size(), 1u);
    EXPECT_EQ(contoso["apps"][0], (json{{"name", "hr"},
                                        {"hostname", "hr.contoso.com"},
                                        {"listen_port", 0},
                                        {"group", "Site"}}));
    const json& fabrikam = j["tenants"][1];
    EXPECT_EQ(fabrikam["groups"][0]["connectors"], json::array());
    EXPECT_EQ(fabrikam["apps"][0]["listen_port"], 9443);

    // Alerts: contoso/Default has 1 active connector, b is outdated, fabrikam/Default has none
    // and its app web is therefore unreachable. Empty (no connector, no app) and Site (2
    // active) raise nothing.
    std::vector<std::string> kinds;
    for (const auto& al : j["alerts"]) {
        kinds.push_back(al["kind"].get<std::string>() + " " + al["tenant"].get<std::string>() +
                        " " + al.value("group", "") + " " + al.value("app", ""));
    }
    EXPECT_EQ(kinds, (std::vector<std::string>{"group_not_redundant contoso Default ",
                                               "connector_outdated contoso Site ",
                                               "group_not_redundant fabrikam Default ",
                                               "app_unreachable fabrikam Default web"}));
    EXPECT_EQ(j["alerts"][0]["message"],
              "group Default of tenant contoso has 1 active connector (fewer than 2: no failover)");
    EXPECT_EQ(j["alerts"][1]["connector"], b);
    EXPECT_EQ(j["alerts"][1]["message"], "connector b (" + b + ") in group Site of tenant " +
                                             "contoso runs version 0.9.7, below the minimum 1.0");
    EXPECT_EQ(j["alerts"][3]["message"],
              "app web of tenant fabrikam is unreachable: its group Default has no active "
              "connector");
    expect_error(call("POST", "/v1/overview"), 405,
                 "method POST not allowed on /v1/overview (allowed: GET)");
}

TEST_F(api_test, overview_shows_a_stopping_connector_as_draining_and_not_active) {
    ok(call("POST", "/v1/tenants/contoso/groups", R"({"name":"Site"})"), 201);
    std::string a = enroll("Site", "1.0", "contoso", "a");
    std::string b = enroll("Site", "1.0", "contoso", "b");
    ASSERT_TRUE(_store->set_connector_status(a, connector_status::active, k_now).ok());
    // b sent GOAWAY: its last tunnel went down (the store says inactive) but is still open.
    _live.tunnels_of = [b](const std::string& id) { return id == b ? 0u : 2u; };
    _live.draining_of = [b](const std::string& id) { return id == b ? 1u : 0u; };
    auto j = ok(call("GET", "/v1/overview"));
    const json& site = j["tenants"][0]["groups"][1];
    ASSERT_EQ(site["name"], "Site");
    EXPECT_EQ(site["active"], 1);
    std::map<std::string, std::string> status;
    for (const auto& x : site["connectors"]) {
        status[x["name"]] = x["status"];
    }
    EXPECT_EQ(status["a"], "active");
    EXPECT_EQ(status["b"], "draining");
    ASSERT_EQ(j["alerts"].size(), 1u);
    EXPECT_EQ(j["alerts"][0]["kind"], "group_not_redundant");
    EXPECT_EQ(j["alerts"][0]["group"], "Site");
}

TEST_F(api_test, exceptions_inside_become_500) {
    _live.render_metrics = []() -> std::string { throw std::runtime_error("boom"); };
    expect_error(call("GET", "/metrics"), 500, "internal error: boom");
}

} // namespace
} // namespace apprelay::control
