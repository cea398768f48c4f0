// The relay's static configuration: a complete file loads; each kind of mistake is refused with a
// message that names the key and the problem.
#include "control/static_config.hh"
#include "tls/ca.hh"
#include "tls/context.hh"

#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <unistd.h>

using namespace apprelay;

namespace {

class static_config : public ::testing::Test {
protected:
    void SetUp() override {
        _dir = std::filesystem::temp_directory_path() /
               ("apprelay-cfg-" + std::to_string(::getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::create_directories(_dir);
        std::string why;
        auto ca = tls::make_ca("contoso CA", 30, &why);
        ASSERT_TRUE(ca.ok()) << why;
        tls::leaf_options lo;
        lo.common_name = "c1";
        lo.server = false;
        lo.client = true;
        auto c1 = tls::issue_leaf(*ca, lo, &why);
        ASSERT_TRUE(c1.ok()) << why;
        ASSERT_TRUE(
            tls::write_pem_file((_dir / "ca.crt").string(), ca->cert_pem, false, &why).ok());
        ASSERT_TRUE(
            tls::write_pem_file((_dir / "c1.crt").string(), c1->cert_pem, false, &why).ok());
    }
    void TearDown() override { std::filesystem::remove_all(_dir); }

    std::string write(const std::string& body) {
        auto p = (_dir / "relay.toml").string();
        std::ofstream(p) << body;
        return p;
    }

    static std::string base() {
        return R"([relay]
user_listen = "127.0.0.1:0"
tunnel_listen = "127.0.0.1:0"
cert = "relay.crt"
key = "relay.key"
[[tenants]]
name = "contoso"
ca = "ca.crt"
[[groups]]
tenant = "contoso"
name = "site-a"
[[connectors]]
tenant = "contoso"
id = "c1"
group = "site-a"
cert = "c1.crt"
)";
    }
    static std::string app(const std::string& group, const std::string& backend = "127.0.0.1:9000",
                           const std::string& host = "web.contoso.test") {
        return "[[apps]]\ntenant = \"contoso\"\nname = \"web\"\nhostname = \"" + host +
               "\"\ncert = \"w.crt\"\nkey = \"w.key\"\nbackend = \"" + backend + "\"\ngroup = \"" +
               group + "\"\n";
    }

    std::filesystem::path _dir;
};

} // namespace

TEST_F(static_config, loads_a_complete_file_with_paths_relative_to_it) {
    control::loaded_config cfg;
    std::string why;
    ASSERT_TRUE(control::load_static_config(write(base() + app("site-a")), &cfg, &why)) << why;
    const auto& s = *cfg.snap;
    ASSERT_EQ(s.tenants.size(), 1u);
    ASSERT_EQ(s.groups.size(), 2u); // Default always exists, plus site-a
    EXPECT_EQ(s.groups[0].name, "Default");
    ASSERT_EQ(s.connectors.size(), 1u);
    EXPECT_EQ(s.groups[s.connectors[0].group].name, "site-a");
    auto fp = tls::fingerprint_of_pem_file((_dir / "c1.crt").string(), &why);
    ASSERT_TRUE(fp.ok());
    EXPECT_EQ(s.connectors[0].fingerprint, *fp);
    EXPECT_EQ(s.connector_by_fingerprint.at(*fp), 0u);
    ASSERT_EQ(s.apps.size(), 1u);
    EXPECT_EQ(s.apps[0].cert_path, (_dir / "w.crt").string());
    EXPECT_EQ(cfg.relay.cert_path, (_dir / "relay.crt").string());
}

TEST_F(static_config, refuses_an_app_in_a_group_that_does_not_exist) {
    control::loaded_config cfg;
    std::string why;
    EXPECT_FALSE(control::load_static_config(write(base() + app("DR")), &cfg, &why));
    EXPECT_NE(why.find("apps[0].group: no group 'DR' in tenant 'contoso'"), std::string::npos)
        << why;
}

TEST_F(static_config, refuses_a_backend_that_is_not_host_port) {
    control::loaded_config cfg;
    std::string why;
    EXPECT_FALSE(control::load_static_config(write(base() + app("site-a", "no-port")), &cfg, &why));
    EXPECT_NE(why.find("apps[0].backend"), std::string::npos) << why;
}

TEST_F(static_config, refuses_two_apps_with_one_hostname) {
    control::loaded_config cfg;
    std::string why;
    EXPECT_FALSE(
        control::load_static_config(write(base() + app("site-a") + app("site-a")), &cfg, &why));
    EXPECT_NE(why.find("already used by app 'web'"), std::string::npos) << why;
}

TEST_F(static_config, refuses_a_connector_of_an_unknown_tenant) {
    control::loaded_config cfg;
    std::string why;
    std::string body =
        base() + "[[connectors]]\ntenant = \"fabrikam\"\nid = \"c9\"\ncert = \"c1.crt\"\n";
    EXPECT_FALSE(control::load_static_config(write(body), &cfg, &why));
    EXPECT_NE(why.find("connectors[1].tenant: no tenant 'fabrikam'"), std::string::npos) << why;
}

TEST_F(static_config, refuses_a_connector_certificate_that_cannot_be_read) {
    control::loaded_config cfg;
    std::string why;
    std::string body =
        base() + "[[connectors]]\ntenant = \"contoso\"\nid = \"c2\"\ncert = \"nope.crt\"\n";
    EXPECT_FALSE(control::load_static_config(write(body), &cfg, &why));
    EXPECT_NE(why.find("connectors[1].cert"), std::string::npos) << why;
}

TEST_F(static_config, refuses_syntax_errors_with_the_line) {
    control::loaded_config cfg;
    std::string why;
    EXPECT_FALSE(control::load_static_config(write("[relay\nx = 1\n"), &cfg, &why));
    EXPECT_NE(why.find("line 1"), std::string::npos) << why;
}

TEST_F(static_config, refuses_a_zero_handshake_timeout) {
    control::loaded_config cfg;
    std::string why;
    EXPECT_FALSE(control::load_static_config(write(base() + "[limits]\nhandshake_timeout_ms = 0\n"),
                                             &cfg, &why));
    EXPECT_NE(why.find("handshake_timeout_ms"), std::string::npos) << why;
}
