#include "control/store/etcd/etcd_store.hh"
#include "control/store/pem_util.hh"
#include "control/store/sqlite.hh"
#include "tests/support/etcd_cluster.hh"
#include "tls/ca.hh"

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <string>
#include <thread>
#include <vector>

namespace apprelay::control {
namespace {

using kind = store_error::kind;
constexpr int64_t k_now = 1'700'000'000;

// Every behaviour test runs on both stores: SQLite (one host) and etcd (a fleet; one real etcd
// member on loopback for the whole suite, a fresh key prefix per test).
class store_test : public ::testing::TestWithParam<std::string> {
protected:
    static void SetUpTestSuite() {
        std::string why;
        s_etcd = testing::etcd_cluster::start(1, &why);
        ASSERT_NE(s_etcd, nullptr) << why;
    }
    static void TearDownTestSuite() { s_etcd.reset(); }

    void SetUp() override {
        char tmpl[] = "/tmp/apprelay-store-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        _dir = tmpl;
        _path = _dir + "/store.db";
        static int s_n = 0;
        _prefix = "/t" + std::to_string(::getpid()) + "-" + std::to_string(++s_n) + "/";
        _s = open_store();
        ASSERT_NE(_s, nullptr);
    }
    void TearDown() override {
        _s.reset();
        std::filesystem::remove_all(_dir);
    }
    bool sqlite() const { return GetParam() == "sqlite"; }
    etcd::etcd_options etcd_options() const {
        etcd::etcd_options o;
        o.client.endpoints = {s_etcd->endpoint(0)};
        o.prefix = _prefix;
        return o;
    }
    std::unique_ptr<store> open_store(const std::string& server_name = "relay.test") {
        if (sqlite()) {
            auto r = sqlite_store::open(_path, server_name);
            EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.err().message);
            return r.ok() ? std::move(r).value() : nullptr;
        }
        if (s_etcd == nullptr) {
            return nullptr;
        }
        auto r = etcd::etcd_store::open(etcd_options(), server_name);
        EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.err().message);
        return r.ok() ? std::move(r).value() : nullptr;
    }
    uint64_t version() { return _s->config_version().value(); }
    // Runs raw SQL on the file, standing in for an old or damaged database.
    void raw_sql(const std::string& sql) {
        sqlite3* db = nullptr;
        ASSERT_EQ(sqlite3_open(_path.c_str(), &db), SQLITE_OK);
        char* msg = nullptr;
        int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &msg);
        EXPECT_EQ(rc, SQLITE_OK) << (msg != nullptr ? msg : "");
        sqlite3_free(msg);
        sqlite3_close(db);
    }
    void expect_error(const store_error& e, kind k, const std::string& message) {
        EXPECT_EQ(e.k, k) << e.message;
        EXPECT_EQ(e.message, message);
    }
    std::string enroll_one(const std::string& tenant, const std::string& group = "Default") {
        auto t = _s->create_token(tenant, group, 3600, k_now);
        EXPECT_TRUE(t.ok());
        auto c = _s->enroll(t->value.token, "conn", "1.0", signer(), k_now);
        EXPECT_TRUE(c.ok()) << (c.ok() ? "" : c.err().message);
        return c.ok() ? c->value.id : "";
    }
    // What the relay's signer does, minus the CSR: a client certificate from the tenant CA.
    static cert_signer signer() {
        return [](const tls::pem_pair& ca, const std::string& id,
                  const std::string&) -> store_result<signed_cert> {
            tls::leaf_options o;
            o.common_name = id;
            o.server = false;
            o.client = true;
            std::string why;
            auto leaf = tls::issue_leaf(ca, o, &why);
            if (!leaf) {
                return store_error{kind::internal, why};
            }
            return signed_cert{leaf->cert_pem, cert_fingerprint(leaf->cert_pem).value()};
        };
    }
    static app_fields web(const std::string& hostname, const std::string& group = "Default") {
        app_fields f;
        f.hostname = hostname;
        f.backend = "10.0.0.5:8443";
        f.group = group;
        return f;
    }

    static inline std::unique_ptr<testing::etcd_cluster> s_etcd;
    std::string _dir;
    std::string _path;
    std::string _prefix;
    std::unique_ptr<store> _s;
};

#define SQLITE_ONLY()                                                                              \
    if (!sqlite()) {                                                                               \
        GTEST_SKIP() << "the SQLite file itself";                                                  \
    }

TEST_P(store_test, relay_identity_is_created_once_and_server_cert_follows_the_name) {
    auto a = _s->relay().value();
    EXPECT_EQ(a.server_name, "relay.test");
    EXPECT_EQ(a.ca_fingerprint.size(), 64u);
    EXPECT_TRUE(check_cert_key_pair(a.server_cert_pem, a.server_key_pem).ok());
    _s.reset();
    _s = open_store("relay.test");
    auto b = _s->relay().value();
    EXPECT_EQ(b.ca_fingerprint, a.ca_fingerprint);
    EXPECT_EQ(b.server_cert_pem, a.server_cert_pem);
    _s.reset();
    _s = open_store("other.test");
    auto c = _s->relay().value();
    EXPECT_EQ(c.ca_fingerprint, a.ca_fingerprint);
    EXPECT_EQ(c.server_name, "other.test");
    EXPECT_NE(c.server_cert_pem, a.server_cert_pem);
}

TEST_P(store_test, tenant_is_created_on_first_use_with_its_ca_and_default_group) {
    expect_error(_s->groups("contoso").err(), kind::not_found, "no tenant 'contoso'");
    uint64_t v0 = version();
    auto g = _s->create_group("contoso", "DR", "eu-west", k_now);
    ASSERT_TRUE(g.ok());
    EXPECT_EQ(g->config_version, v0 + 1);
    auto groups = _s->groups("contoso").value();
    ASSERT_EQ(groups.size(), 2u);
    EXPECT_EQ(groups[0].name, "DR");
    EXPECT_EQ(groups[0].region, "eu-west");
    EXPECT_EQ(groups[1].name, "Default");
    auto t = _s->get_tenant("contoso").value();
    EXPECT_EQ(t.ca_fingerprint, cert_fingerprint(t.ca_cert_pem).value());
    EXPECT_EQ(t.created_at, k_now);
}

TEST_P(store_test, refused_group_writes_nothing) {
    ASSERT_TRUE(_s->create_group("contoso", "DR", "", k_now).ok());
    uint64_t v = version();
    expect_error(_s->create_group("contoso", "DR", "", k_now).err(), kind::conflict,
                 "group 'DR' already exists in tenant 'contoso'");
    expect_error(_s->create_group("contoso", "bad name", "", k_now).err(), kind::invalid,
                 "invalid group name 'bad name': names are 1-64 characters of A-Z a-z 0-9 . _ -");
    // A refusal in an unknown tenant does not leave the tenant behind either.
    EXPECT_FALSE(_s->create_group("fabrikam", "", "", k_now).ok());
    EXPECT_FALSE(_s->get_tenant("fabrikam").ok());
    EXPECT_EQ(version(), v);
}

TEST_P(store_test, default_group_cannot_be_deleted_or_renamed) {
    ASSERT_TRUE(_s->create_group("contoso", "DR", "", k_now).ok());
    uint64_t v = version();
    expect_error(_s->delete_group("contoso", "Default", true).err(), kind::refused,
                 "group 'Default' cannot be deleted");
    expect_error(_s->rename_group("contoso", "Default", "Main").err(), kind::refused,
                 "group 'Default' cannot be renamed");
    expect_error(_s->rename_group("contoso", "DR", "Default").err(), kind::conflict,
                 "group 'Default' already exists in tenant 'contoso'");
    expect_error(_s->delete_group("contoso", "X", false).err(), kind::not_found,
                 "no group 'X' in tenant 'contoso'");
    EXPECT_EQ(version(), v);
}

TEST_P(store_test, group_used_by_apps_cannot_be_deleted) {
    ASSERT_TRUE(_s->create_group("contoso", "DR", "", k_now).ok());
    ASSERT_TRUE(_s->create_app("contoso", "payroll", web("payroll.contoso.com", "DR"), k_now));
    ASSERT_TRUE(_s->create_app("contoso", "hr", web("hr.contoso.com", "DR"), k_now));
    uint64_t v = version();
    expect_error(_s->delete_group("contoso", "DR", true).err(), kind::conflict,
                 "group 'DR' is used by apps: hr, payroll");
    EXPECT_EQ(version(), v);
}

TEST_P(store_test, non_empty_group_is_deleted_only_with_force_which_moves_connectors) {
    ASSERT_TRUE(_s->create_group("contoso", "DR", "", k_now).ok());
    std::string id = enroll_one("contoso", "DR");
    uint64_t v = version();
    expect_error(_s->delete_group("contoso", "DR", false).err(), kind::conflict,
                 "group 'DR' has connectors: " + id + " (force moves them to Default)");
    EXPECT_EQ(version(), v);
    auto moved = _s->delete_group("contoso", "DR", true);
    ASSERT_TRUE(moved.ok());
    EXPECT_EQ(moved->value, std::vector<std::string>{id});
    EXPECT_EQ(moved->config_version, v + 1);
    EXPECT_EQ(_s->connectors("contoso").value().at(0).group, "Default");
    EXPECT_EQ(_s->groups("contoso").value().size(), 1u);
}

TEST_P(store_test, rename_group_keeps_its_connectors_and_apps) {
    ASSERT_TRUE(_s->create_group("contoso", "DR", "", k_now).ok());
    std::string id = enroll_one("contoso", "DR");
    ASSERT_TRUE(_s->create_app("contoso", "hr", web("hr.contoso.com", "DR"), k_now));
    ASSERT_TRUE(_s->rename_group("contoso", "DR", "Backup").ok());
    EXPECT_EQ(_s->connectors("contoso").value().at(0).group, "Backup");
    EXPECT_EQ(_s->apps("contoso").value().at(0).group, "Backup");
}

TEST_P(store_test, move_connector_stays_in_its_tenant) {
    ASSERT_TRUE(_s->create_group("contoso", "DR", "", k_now).ok());
    ASSERT_TRUE(_s->create_group("fabrikam", "DR", "", k_now).ok());
    std::string id = enroll_one("contoso");
    uint64_t v = version();
    expect_error(_s->move_connector("fabrikam", id, "DR").err(), kind::not_found,
                 "no connector '" + id + "' in tenant 'fabrikam'");
    expect_error(_s->move_connector("contoso", id, "Nope").err(), kind::not_found,
                 "no group 'Nope' in tenant 'contoso'");
    EXPECT_EQ(version(), v);
    EXPECT_EQ(_s->move_connector("contoso", id, "DR").value(), v + 1);
    EXPECT_EQ(_s->connectors("contoso").value().at(0).group, "DR");
}

TEST_P(store_test, deleted_connector_is_revoked) {
    std::string id = enroll_one("contoso");
    std::string fp = _s->connectors("contoso").value().at(0).fingerprint;
    ASSERT_TRUE(_s->delete_connector("contoso", id).ok());
    EXPECT_TRUE(_s->connectors("contoso").value().empty());
    auto view = _s->load().value();
    EXPECT_EQ(view.revoked_fingerprints, std::vector<std::string>{fp});
    expect_error(_s->delete_connector("contoso", id).err(), kind::not_found,
                 "no connector '" + id + "' in tenant 'contoso'");
}

TEST_P(store_test, app_rules_refuse_and_write_nothing) {
    ASSERT_TRUE(_s->create_app("contoso", "hr", web("hr.contoso.com"), k_now).ok());
    app_fields port_app;
    port_app.listen_port = 2222;
    port_app.backend = "db:5432";
    ASSERT_TRUE(_s->create_app("contoso", "db", port_app, k_now).ok());
    uint64_t v = version();

    expect_error(_s->create_app("contoso", "hr", web("x.contoso.com"), k_now).err(), kind::conflict,
                 "app 'hr' already exists in tenant 'contoso'");
    // SNI is global: another tenant cannot take the hostname or the port.
    expect_error(_s->create_app("fabrikam", "hr", web("HR.contoso.com"), k_now).err(),
                 kind::conflict,
                 "hostname 'hr.contoso.com' is already used by app 'hr' in tenant 'contoso'");
    expect_error(_s->create_app("fabrikam", "db", port_app, k_now).err(), kind::conflict,
                 "listen_port 2222 is already used by app 'db' in tenant 'contoso'");
    app_fields none;
    none.backend = "a:1";
    expect_error(_s->create_app("contoso", "x", none, k_now).err(), kind::invalid,
                 "app 'x' needs a hostname or a listen_port");
    auto bad_backend = web("x.contoso.com");
    bad_backend.backend = "host:0";
    expect_error(_s->create_app("contoso", "x", bad_backend, k_now).err(), kind::invalid,
                 "invalid backend 'host:0' for app 'x': expected host:port with port 1-65535");
    bad_backend.backend = ":80";
    EXPECT_EQ(_s->create_app("contoso", "x", bad_backend, k_now).err().k, kind::invalid);
    auto bad_host = web("-x.contoso.com");
    expect_error(_s->create_app("contoso", "x", bad_host, k_now).err(), kind::invalid,
                 "invalid hostname '-x.contoso.com' for app 'x'");
    auto bad_port = web("x.contoso.com");
    bad_port.listen_port = 70000;
    expect_error(_s->create_app("contoso", "x", bad_port, k_now).err(), kind::invalid,
                 "listen_port 70000 for app 'x' is out of range 0-65535");
    auto user_cert = web("x.contoso.com");
    user_cert.access = access_mode::user_cert;
    expect_error(_s->create_app("contoso", "x", user_cert, k_now).err(), kind::invalid,
                 "app 'x': access user-cert needs allowed_user_groups");
    auto groups_without = web("x.contoso.com");
    groups_without.allowed_user_groups = std::vector<std::string>{"finance"};
    expect_error(_s->create_app("contoso", "x", groups_without, k_now).err(), kind::invalid,
                 "app 'x': allowed_user_groups is only valid with access user-cert");
    expect_error(_s->create_app("contoso", "x", web("x.contoso.com", "DR"), k_now).err(),
                 kind::not_found, "no group 'DR' in tenant 'contoso'");
    auto half = web("x.contoso.com");
    half.cert_pem = "x";
    expect_error(_s->create_app("contoso", "x", half, k_now).err(), kind::invalid,
                 "app 'x': cert_pem and key_pem must be given together");
    EXPECT_EQ(version(), v);
    EXPECT_FALSE(_s->get_tenant("fabrikam").ok());
}

TEST_P(store_test, app_idle_timeout_is_stored_loaded_and_bounded) {
    auto f = web("hr.contoso.com");
    f.idle_timeout_ms = 1500;
    ASSERT_TRUE(_s->create_app("contoso", "hr", f, k_now).ok());
    ASSERT_TRUE(_s->create_app("contoso", "wiki", web("wiki.contoso.com"), k_now).ok());
    auto idle_of = [&](const std::string& name) {
        const store_view view = _s->load().value();
        for (const auto& a : view.apps) {
            if (a.name == name) {
                return int64_t(a.idle_timeout_ms);
            }
        }
        return int64_t(-1);
    };
    EXPECT_EQ(idle_of("hr"), 1500);
    EXPECT_EQ(idle_of("wiki"), 0) << "0 = the relay's [limits] idle_timeout_ms";
    uint64_t v = version();
    for (int64_t bad : {int64_t(1), int64_t(99), int64_t(86'400'001), int64_t(-5)}) {
        app_fields u;
        u.idle_timeout_ms = bad;
        expect_error(_s->update_app("contoso", "hr", u).err(), kind::invalid,
                     "idle_timeout_ms " + std::to_string(bad) +
                         " for app 'hr' is out of range: 0 (the relay's) or 100-86400000");
    }
    EXPECT_EQ(version(), v) << "a refused update writes nothing";
    EXPECT_EQ(idle_of("hr"), 1500);
    app_fields other; // an update that does not name it keeps it
    other.backend = "hr2:80";
    ASSERT_TRUE(_s->update_app("contoso", "hr", other).ok());
    EXPECT_EQ(idle_of("hr"), 1500);
    app_fields clear;
    clear.idle_timeout_ms = 0;
    ASSERT_TRUE(_s->update_app("contoso", "hr", clear).ok());
    EXPECT_EQ(idle_of("hr"), 0);
    EXPECT_GT(version(), v);
}

TEST_P(store_test, issued_app_certificate_is_reissued_when_the_hostname_changes) {
    auto a = _s->create_app("contoso", "hr", web("hr.contoso.com"), k_now);
    ASSERT_TRUE(a.ok());
    EXPECT_TRUE(a->value.cert_issued);
    EXPECT_TRUE(check_cert_key_pair(a->value.cert_pem, a->value.key_pem).ok());
    app_fields f;
    f.backend = "10.0.0.6:443";
    auto same = _s->update_app("contoso", "hr", f);
    ASSERT_TRUE(same.ok());
    EXPECT_EQ(same->value.cert_pem, a->value.cert_pem);
    EXPECT_EQ(same->value.backend_host, "10.0.0.6");
    EXPECT_EQ(same->value.backend_port, 443);
    f.hostname = "people.contoso.com";
    auto moved = _s->update_app("contoso", "hr", f);
    ASSERT_TRUE(moved.ok());
    EXPECT_NE(moved->value.cert_pem, a->value.cert_pem);
    expect_error(_s->update_app("contoso", "nope", f).err(), kind::not_found,
                 "no app 'nope' in tenant 'contoso'");
}

TEST_P(store_test, uploaded_app_certificate_must_parse_and_match_its_key) {
    std::string why;
    auto ca = tls::make_ca("test CA", 30, &why).value();
    tls::leaf_options o;
    o.common_name = "hr.contoso.com";
    o.dns_names = {"hr.contoso.com"};
    auto leaf = tls::issue_leaf(ca, o, &why).value();
    auto other = tls::issue_leaf(ca, o, &why).value();
    uint64_t v = version();
    auto f = web("hr.contoso.com");
    f.cert_pem = leaf.cert_pem;
    f.key_pem = other.key_pem;
    expect_error(_s->create_app("contoso", "hr", f, k_now).err(), kind::invalid,
                 "app 'hr': private key does not match the certificate");
    f.cert_pem = "garbage";
    expect_error(_s->create_app("contoso", "hr", f, k_now).err(), kind::invalid,
                 "app 'hr': certificate does not parse");
    EXPECT_EQ(version(), v);
    f.cert_pem = leaf.cert_pem;
    f.key_pem = leaf.key_pem;
    auto a = _s->create_app("contoso", "hr", f, k_now);
    ASSERT_TRUE(a.ok());
    EXPECT_FALSE(a->value.cert_issued);
    EXPECT_EQ(a->value.cert_pem, leaf.cert_pem);
}

TEST_P(store_test, delete_app) {
    ASSERT_TRUE(_s->create_app("contoso", "hr", web("hr.contoso.com"), k_now).ok());
    ASSERT_TRUE(_s->delete_app("contoso", "hr").ok());
    EXPECT_TRUE(_s->apps("contoso").value().empty());
    expect_error(_s->delete_app("contoso", "hr").err(), kind::not_found,
                 "no app 'hr' in tenant 'contoso'");
    // The hostname is free again.
    EXPECT_TRUE(_s->create_app("fabrikam", "hr", web("hr.contoso.com"), k_now).ok());
}

TEST_P(store_test, token_has_the_api_format_and_is_listed_without_secret) {
    auto t = _s->create_token("contoso", "Default", 600, k_now);
    ASSERT_TRUE(t.ok());
    const auto& tok = t->value;
    // art1. + 16 + . + 32 + . + 64
    ASSERT_EQ(tok.token.size(), 5u + 16 + 1 + 32 + 1 + 64);
    EXPECT_EQ(tok.token.substr(0, 5), "art1.");
    EXPECT_EQ(tok.token.substr(5, 16), tok.id);
    EXPECT_EQ(tok.token.substr(55), _s->relay().value().ca_fingerprint);
    EXPECT_EQ(tok.expires_at, k_now + 600);
    auto list = _s->tokens("contoso", k_now).value();
    ASSERT_EQ(list.size(), 1u);
    EXPECT_EQ(list[0].state, token_state::valid);
    EXPECT_EQ(_s->tokens("contoso", k_now + 600).value()[0].state, token_state::expired);
    expect_error(_s->create_token("contoso", "DR", 600, k_now).err(), kind::not_found,
                 "no group 'DR' in tenant 'contoso'");
    expect_error(_s->create_token("contoso", "Default", 0, k_now).err(), kind::invalid,
                 "token ttl_s must be positive");
}

TEST_P(store_test, enrollment_consumes_the_token_once) {
    ASSERT_TRUE(_s->create_group("contoso", "Site1", "", k_now).ok());
    auto t = _s->create_token("contoso", "Site1", 600, k_now).value();
    uint64_t v = t.config_version;
    auto c = _s->enroll(t.value.token, "conn-01", "1.2.3", signer(), k_now + 5);
    ASSERT_TRUE(c.ok()) << c.err().message;
    EXPECT_EQ(c->config_version, v + 1);
    EXPECT_EQ(c->value.tenant, "contoso");
    EXPECT_EQ(c->value.group, "Site1");
    EXPECT_EQ(c->value.first_seen, k_now + 5);
    EXPECT_EQ(c->value.status, connector_status::inactive);
    EXPECT_EQ(c->value.id.size(), 16u);
    auto listed = _s->connectors("contoso").value();
    ASSERT_EQ(listed.size(), 1u);
    EXPECT_EQ(listed[0].fingerprint, cert_fingerprint(listed[0].cert_pem).value());
    EXPECT_EQ(_s->tokens("contoso", k_now).value()[0].state, token_state::used);
    expect_error(_s->enroll(t.value.token, "conn-02", "1.2.3", signer(), k_now + 6).err(),
                 kind::conflict, "token already used");
    expect_error(_s->revoke_token("contoso", t.value.id).err(), kind::conflict,
                 "token '" + t.value.id + "' is already used");
    EXPECT_EQ(version(), v + 1);
    EXPECT_EQ(_s->connectors("contoso").value().size(), 1u);
}

TEST_P(store_test, enrollment_refusals_create_nothing) {
    auto t = _s->create_token("contoso", "Default", 600, k_now).value().value;
    uint64_t v = version();
    expect_error(_s->enroll("art1.nope", "c", "1", signer(), k_now).err(), kind::invalid,
                 "malformed request");
    std::string wrong_secret = t.token;
    wrong_secret[22] = wrong_secret[22] == 'a' ? 'b' : 'a';
    expect_error(_s->enroll(wrong_secret, "c", "1", signer(), k_now).err(), kind::not_found,
                 "unknown token");
    std::string unknown_id = t.token;
    unknown_id[5] = unknown_id[5] == 'a' ? 'b' : 'a';
    expect_error(_s->enroll(unknown_id, "c", "1", signer(), k_now).err(), kind::not_found,
                 "unknown token");
    expect_error(_s->enroll(t.token, "c", "1", signer(), k_now + 600).err(), kind::refused,
                 "token expired");
    expect_error(_s->enroll(t.token, "bad name", "1", signer(), k_now).err(), kind::invalid,
                 "invalid connector name 'bad name': names are 1-64 characters of A-Z a-z 0-9 "
                 ". _ -");
    EXPECT_EQ(version(), v);
    ASSERT_TRUE(_s->revoke_token("contoso", t.id).ok());
    expect_error(_s->enroll(t.token, "c", "1", signer(), k_now).err(), kind::refused,
                 "token revoked");
    expect_error(_s->revoke_token("contoso", t.id).err(), kind::conflict,
                 "token '" + t.id + "' is already revoked");
    expect_error(_s->revoke_token("contoso", "0000000000000000").err(), kind::not_found,
                 "no token '0000000000000000' in tenant 'contoso'");
    EXPECT_EQ(_s->tokens("contoso", k_now).value()[0].state, token_state::revoked);
    EXPECT_TRUE(_s->connectors("contoso").value().empty());
}

TEST_P(store_test, signer_failure_rolls_the_enrollment_back) {
    auto t = _s->create_token("contoso", "Default", 600, k_now).value().value;
    uint64_t v = version();
    cert_signer refuse = [](const tls::pem_pair&, const std::string&,
                            const std::string&) -> store_result<signed_cert> {
        return store_error{kind::invalid, "invalid CSR: CSR requests CA:true"};
    };
    expect_error(_s->enroll(t.token, "c", "1", refuse, k_now).err(), kind::invalid,
                 "invalid CSR: CSR requests CA:true");
    EXPECT_EQ(version(), v);
    EXPECT_TRUE(_s->connectors("contoso").value().empty());
    EXPECT_EQ(_s->tokens("contoso", k_now).value()[0].state, token_state::valid);
    EXPECT_TRUE(_s->enroll(t.token, "c", "1", signer(), k_now).ok());
}

TEST_P(store_test, parallel_redemption_of_one_token_succeeds_once) {
    auto t = _s->create_token("contoso", "Default", 600, k_now).value().value;
    constexpr int k_threads = 2;
    std::atomic<int> ok{0};
    std::atomic<int> used{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < k_threads; ++i) {
        threads.emplace_back([&, i] {
            auto s = open_store();
            ASSERT_NE(s, nullptr);
            auto r = s->enroll(t.token, "c" + std::to_string(i), "1", signer(), k_now);
            if (r.ok()) {
                ++ok;
            } else if (r.err().message == "token already used") {
                ++used;
            }
        });
    }
    for (auto& th : threads) {
        th.join();
    }
    EXPECT_EQ(ok.load(), 1);
    EXPECT_EQ(used.load(), 1);
    EXPECT_EQ(_s->connectors("contoso").value().size(), 1u);
}

TEST_P(store_test, liveness_updates_do_not_bump_the_config_version) {
    std::string id = enroll_one("contoso");
    uint64_t v = version();
    ASSERT_TRUE(_s->connector_seen(id, "1.1", k_now + 10).ok());
    ASSERT_TRUE(_s->set_connector_status(id, connector_status::active, k_now + 11).ok());
    auto c = _s->connectors("contoso").value().at(0);
    EXPECT_EQ(c.version, "1.1");
    EXPECT_EQ(c.last_seen, k_now + 11);
    EXPECT_EQ(c.status, connector_status::active);
    EXPECT_EQ(_s->count_connectors().value().active, 1u);
    EXPECT_EQ(version(), v);
    expect_error(_s->connector_seen("ffffffffffffffff", "1", k_now).err(), kind::not_found,
                 "no connector 'ffffffffffffffff'");
}

TEST_P(store_test, purge_removes_only_long_inactive_connectors_and_revokes_them) {
    std::string old_inactive = enroll_one("contoso");
    std::string recent = enroll_one("contoso");
    std::string active = enroll_one("contoso");
    constexpr int64_t k_ten_days = 10 * 24 * 3600;
    ASSERT_TRUE(_s->set_connector_status(old_inactive, connector_status::inactive, k_now).ok());
    ASSERT_TRUE(
        _s->set_connector_status(recent, connector_status::inactive, k_now + k_ten_days).ok());
    ASSERT_TRUE(_s->set_connector_status(active, connector_status::active, k_now).ok());
    uint64_t v = version();
    auto p = _s->purge_inactive(k_ten_days, k_now + k_ten_days + 1);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->value, std::vector<std::string>{old_inactive});
    EXPECT_EQ(p->config_version, v + 1);
    EXPECT_EQ(_s->connectors("contoso").value().size(), 2u);
    EXPECT_EQ(_s->load().value().revoked_fingerprints.size(), 1u);
    auto again = _s->purge_inactive(k_ten_days, k_now + k_ten_days + 1);
    EXPECT_TRUE(again->value.empty());
    EXPECT_EQ(again->config_version, v + 1);
}

TEST_P(store_test, data_persists_across_reopen) {
    ASSERT_TRUE(_s->create_group("contoso", "DR", "eu", k_now).ok());
    ASSERT_TRUE(_s->create_app("contoso", "hr", web("hr.contoso.com", "DR"), k_now).ok());
    std::string id = enroll_one("contoso", "DR");
    uint64_t v = version();
    _s.reset();
    _s = open_store();
    EXPECT_EQ(version(), v);
    auto view = _s->load().value();
    EXPECT_EQ(view.config_version, v);
    ASSERT_EQ(view.tenants.size(), 1u);
    EXPECT_EQ(view.groups.size(), 2u);
    ASSERT_EQ(view.apps.size(), 1u);
    EXPECT_EQ(view.apps[0].group, "DR");
    ASSERT_EQ(view.connectors.size(), 1u);
    EXPECT_EQ(view.connectors[0].id, id);
    EXPECT_TRUE(view.warnings.empty());
}

TEST_P(store_test, malformed_app_row_is_skipped_with_a_warning) {
    SQLITE_ONLY();
    ASSERT_TRUE(_s->create_app("contoso", "hr", web("hr.contoso.com"), k_now).ok());
    ASSERT_TRUE(_s->create_app("contoso", "payroll", web("pay.contoso.com"), k_now).ok());
    raw_sql("UPDATE apps SET cert_pem = 'not a certificate' WHERE name = 'hr'");
    auto view = _s->load();
    ASSERT_TRUE(view.ok());
    ASSERT_EQ(view->apps.size(), 1u);
    EXPECT_EQ(view->apps[0].name, "payroll");
    ASSERT_EQ(view->warnings.size(), 1u);
    EXPECT_EQ(view->warnings[0],
              "app 'hr' in tenant 'contoso' skipped: certificate does not parse");
}

TEST_P(store_test, version_one_database_is_migrated_and_keeps_its_data) {
    SQLITE_ONLY();
    _s.reset();
    std::filesystem::remove(_path);
    std::string why;
    auto ca = tls::make_ca("old tenant CA", 30, &why).value();
    tls::leaf_options o;
    o.common_name = "hr";
    o.dns_names = {"hr.contoso.com"};
    auto leaf = tls::issue_leaf(ca, o, &why).value();
    std::string fp = cert_fingerprint(ca.cert_pem).value();
    // A file as the first release wrote it: schema version 1, one tenant and one app.
    raw_sql("CREATE TABLE schema_version (version INTEGER NOT NULL);"
            "INSERT INTO schema_version VALUES (1);" +
            std::string(sqlite_store::migrations().at(0)) +
            "INSERT INTO meta VALUES ('config_version', 7);"
            "INSERT INTO tenants VALUES ('contoso', '" +
            ca.cert_pem + "', '" + ca.key_pem + "', '" + fp +
            "', 1);"
            "INSERT INTO groups (id, tenant, name) VALUES (1, 'contoso', 'Default');"
            "INSERT INTO apps (tenant, name, hostname, listen_port, backend_host, backend_port,"
            " group_id, access, allowed_user_groups, cert_pem, key_pem) VALUES ('contoso', 'hr',"
            " 'hr.contoso.com', NULL, '10.0.0.5', 443, 1, 'passthrough', '', '" +
            leaf.cert_pem + "', '" + leaf.key_pem + "');");
    _s = open_store();
    ASSERT_NE(_s, nullptr);
    auto view = _s->load().value();
    // The relay identity is new to this file, so opening bumped the version once.
    EXPECT_EQ(view.config_version, 8u);
    ASSERT_EQ(view.apps.size(), 1u);
    EXPECT_EQ(view.apps[0].hostname, "hr.contoso.com");
    EXPECT_EQ(view.apps[0].cert_pem, leaf.cert_pem);
    EXPECT_FALSE(view.apps[0].cert_issued); // v2 column, default for old rows
    EXPECT_EQ(view.tenants.at(0).ca_fingerprint, fp);
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(_path.c_str(), &db), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT version FROM schema_version", -1, &st, nullptr),
              SQLITE_OK);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    EXPECT_EQ(sqlite3_column_int64(st, 0), static_cast<int64_t>(sqlite_store::migrations().size()));
    sqlite3_finalize(st);
    sqlite3_close(db);
}

TEST_P(store_test, newer_schema_is_refused) {
    SQLITE_ONLY();
    _s.reset();
    raw_sql("UPDATE schema_version SET version = 99");
    auto r = sqlite_store::open(_path, "relay.test");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.err().message, "store schema version 99 is newer than this apprelay supports (" +
                                   std::to_string(sqlite_store::migrations().size()) + ")");
}

TEST_P(store_test, two_threads_writing_concurrently_never_corrupt_the_store) {
    ASSERT_TRUE(_s->create_group("contoso", "DR", "", k_now).ok());
    constexpr int k_writes = 200;
    std::atomic<int> failures{0};
    auto writer = [&](int w) {
        auto s = open_store();
        ASSERT_NE(s, nullptr);
        uint64_t last = 0;
        for (int i = 0; i < k_writes; ++i) {
            auto r = s->create_group(
                "contoso", "g" + std::to_string(w) + "-" + std::to_string(i), "", k_now);
            if (!r.ok() || r->config_version <= last) {
                ++failures;
                ADD_FAILURE() << "write " << i << " of writer " << w << ": "
                              << (r.ok() ? "version went back" : r.err().message);
                continue;
            }
            last = r->config_version;
        }
    };
    uint64_t v = version();
    std::thread a(writer, 0);
    std::thread b(writer, 1);
    a.join();
    b.join();
    EXPECT_EQ(failures.load(), 0);
    // Each of the 400 writes bumped the version exactly once.
    EXPECT_EQ(version(), v + 2 * k_writes);
    EXPECT_EQ(_s->groups("contoso").value().size(), 2u + 2 * k_writes);
    if (!sqlite()) {
        return;
    }
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(_path.c_str(), &db), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, nullptr), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "ok");
    sqlite3_finalize(st);
    sqlite3_close(db);
}

INSTANTIATE_TEST_SUITE_P(stores, store_test, ::testing::Values("sqlite", "etcd"),
                         [](const auto& info) { return info.param; });

} // namespace
} // namespace apprelay::control
