// The relay's configuration file: defaults, paths relative to the file, and each kind of mistake
// refused with a message naming the key.
#include "control/settings.hh"

#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <unistd.h>

using namespace apprelay;

namespace {

class settings : public ::testing::Test {
protected:
    void SetUp() override {
        _dir = std::filesystem::temp_directory_path() /
               ("apprelay-settings-" + std::to_string(::getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::create_directories(_dir);
    }
    void TearDown() override { std::filesystem::remove_all(_dir); }

    // Loads `body`; returns the error message ("" when it loaded).
    std::string load(const std::string& body, control::relay_settings* out = nullptr) {
        auto p = (_dir / "relay.toml").string();
        std::ofstream(p) << body;
        control::relay_settings s;
        std::string why;
        bool ok = control::load_settings(p, &s, &why);
        if (out != nullptr) {
            *out = s;
        }
        return ok ? "" : why;
    }

    std::filesystem::path _dir;
};

} // namespace

TEST_F(settings, minimal_file_gets_defaults_and_relative_state_dir) {
    control::relay_settings s;
    ASSERT_EQ(load("[relay]\nstate_dir = \"state\"\n", &s), "");
    EXPECT_EQ(s.state_dir, (_dir / "state").string());
    EXPECT_EQ(s.admin_socket, (_dir / "state" / "admin.sock").string());
    EXPECT_EQ(s.limits.max_frame, 16u * 1024);
    EXPECT_EQ(s.limits.config_refresh_ms, 120'000u);
    EXPECT_EQ(s.inactive_purge_s, 10 * 24 * 3600);
    EXPECT_EQ(s.server_name, "apprelay-relay");
}

TEST_F(settings, every_section_is_read) {
    control::relay_settings s;
    ASSERT_EQ(load(R"([relay]
user_listen = "127.0.0.1:1"
tunnel_listen = "127.0.0.1:2"
enroll_listen = "127.0.0.1:3"
state_dir = "/tmp/x"
server_name = "relay.example"
[admin]
socket = "a.sock"
listen = "127.0.0.1:9"
token = "0123456789abcdef"
[connectors]
min_version = "0.1.0"
latest_version = "0.2.0"
inactive_purge_s = 5
[limits]
ping_interval_ms = 200
ping_timeout_ms = 900
config_refresh_ms = 500
open_retries = 3
io_coalesce_us = 40
)",
                   &s),
              "");
    EXPECT_EQ(s.enroll_listen, "127.0.0.1:3");
    EXPECT_EQ(s.admin_socket, (_dir / "a.sock").string());
    EXPECT_EQ(s.latest_connector_version, "0.2.0");
    EXPECT_EQ(s.inactive_purge_s, 5);
    EXPECT_EQ(s.limits.ping_interval_ms, 200u);
    EXPECT_EQ(s.limits.config_refresh_ms, 500u);
    EXPECT_EQ(s.limits.open_retries, 3u);
    EXPECT_EQ(s.limits.io_coalesce_us, 40u); // default 0 (off), turned on here
}

TEST_F(settings, mistakes_are_refused_with_the_key_named) {
    EXPECT_EQ(load(""), "[relay]: missing section");
    EXPECT_NE(load("[relay]\n[[tenants]]\nname = \"x\"\n").find("[tenants]: unknown section"),
              std::string::npos);
    EXPECT_EQ(load("[relay]\nuser_lisen = \"127.0.0.1:1\"\n"), "relay.user_lisen: unknown key");
    EXPECT_EQ(load("[relay]\nuser_listen = \"nowhere\"\n"),
              "relay.user_listen: 'nowhere' is not HOST:PORT");
    EXPECT_EQ(load("[relay]\n[admin]\nlisten = \"0.0.0.0:9\"\ntoken = \"0123456789abcdef\"\n"),
              "admin.listen: only loopback addresses (127.0.0.0/8, [::1])");
    EXPECT_EQ(load("[relay]\n[admin]\nlisten = \"127.0.0.1:9\"\n"),
              "admin.token: required with admin.listen, at least 16 characters");
    EXPECT_EQ(load("[relay]\n[limits]\nmax_frame = 70000000\n"),
              "limits.max_frame: expected an integer in 1024..1048576");
    EXPECT_EQ(load("[relay]\n[limits]\nio_coalesce_us = 5000\n"),
              "limits.io_coalesce_us: expected an integer in 0..1000");
    EXPECT_EQ(load("[relay]\n[limits]\nping_interval_ms = 500\nping_timeout_ms = 400\n"),
              "limits.ping_timeout_ms: must be greater than limits.ping_interval_ms");
    EXPECT_EQ(load("[relay]\n[connectors]\nmin_version = \"0.3\"\nlatest_version = \"0.2\"\n"),
              "connectors.latest_version: older than connectors.min_version");
    EXPECT_NE(load("[relay\n").find("relay.toml"), std::string::npos); // parse error names file
}

TEST_F(settings, tls_and_source_limits_are_read_and_checked) {
    control::relay_settings s;
    const std::string k_relay = "[relay]\nstate_dir = \"s\"\n";
    ASSERT_EQ(load("[relay]\nstate_dir = \"s\"\n", &s), "");
    EXPECT_EQ(s.user_tls.ciphersuites.rfind("TLS_AES_128_GCM_SHA256", 0), 0u); // AES-128 first
    EXPECT_EQ(s.user_tls.groups.rfind("X25519", 0), 0u);
    EXPECT_FALSE(s.user_session_tickets);
    EXPECT_EQ(s.user_ticket_keys, nullptr);
    EXPECT_EQ(s.limits.source_open_rate, 20'000u);
    EXPECT_EQ(s.limits.source_abort_rate, 2'000u);
    EXPECT_EQ(s.limits.initial_window, 4u << 20);

    ASSERT_EQ(load(R"([relay]
state_dir = "s"
[tls]
user_ciphersuites = "TLS_CHACHA20_POLY1305_SHA256"
user_groups = "P-256"
tunnel_ciphersuites = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"
user_session_tickets = true
ticket_key_rotation_s = 600
[limits]
source_open_rate = 0
source_abort_rate = 10
source_abort_burst = 20
)",
                   &s),
              "");
    EXPECT_EQ(s.user_tls.ciphersuites, "TLS_CHACHA20_POLY1305_SHA256");
    EXPECT_EQ(s.user_tls.groups, "P-256");
    EXPECT_EQ(s.tunnel_tls.ciphersuites, "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256");
    EXPECT_TRUE(s.user_session_tickets);
    ASSERT_NE(s.user_ticket_keys, nullptr);
    EXPECT_EQ(s.ticket_key_rotation_s, 600u);
    EXPECT_EQ(s.limits.source_open_rate, 0u);
    EXPECT_EQ(s.limits.source_abort_burst, 20u);

    EXPECT_NE(load(k_relay + "[tls]\nuser_ciphersuites = \"AES128-SHA\"\n").find(
                  "tls.user_ciphersuites: 'AES128-SHA' is not a TLS 1.3 cipher suite"),
              std::string::npos);
    EXPECT_NE(load(k_relay + "[tls]\ntunnel_ciphersuites = \"\"\n").find("tls.tunnel_ciphersuites: empty"),
              std::string::npos);
    EXPECT_NE(load(k_relay + "[tls]\nuser_groups = \"P-999\"\n").find("tls.user_groups: 'P-999'"),
              std::string::npos);
    EXPECT_NE(load(k_relay + "[tls]\nuser_session_tickets = 1\n").find("tls.user_session_tickets: expected"),
              std::string::npos);
    EXPECT_NE(load(k_relay + "[tls]\nticket_key_rotation_s = 5\n").find("tls.ticket_key_rotation_s"),
              std::string::npos);
    EXPECT_NE(load(k_relay + "[tls]\nversion = \"1.2\"\n").find("tls.version: unknown key"),
              std::string::npos);
    EXPECT_NE(load(k_relay + "[limits]\nsource_abort_burst = 0\n").find("limits.source_abort_burst"),
              std::string::npos);
}

TEST_F(settings, user_edge_limits_have_defaults_and_bounds) {
    control::relay_settings s;
    ASSERT_EQ(load("[relay]\nstate_dir = \"s\"\n", &s), "");
    EXPECT_EQ(s.limits.max_user_connections, 0u) << "0 = derived from the fd limit at start";
    EXPECT_EQ(s.limits.source_max_connections, 10'000u);
    EXPECT_EQ(s.limits.idle_timeout_ms, 3'600'000u);
    ASSERT_EQ(load("[relay]\nstate_dir = \"s\"\n[limits]\nmax_user_connections = 500\n"
                   "source_max_connections = 0\nidle_timeout_ms = 1500\n",
                   &s),
              "");
    EXPECT_EQ(s.limits.max_user_connections, 500u);
    EXPECT_EQ(s.limits.source_max_connections, 0u);
    EXPECT_EQ(s.limits.idle_timeout_ms, 1500u);
    EXPECT_EQ(load("[relay]\n[limits]\nidle_timeout_ms = 0\n"),
              "limits.idle_timeout_ms: expected an integer in 100..86400000")
        << "an idle timeout is never off";
    EXPECT_EQ(load("[relay]\n[limits]\nsource_max_connections = -1\n"),
              "limits.source_max_connections: expected an integer in 0..10000000");
    EXPECT_EQ(s.limits.user_buffer_budget, uint64_t(1024) << 20) << "1 GiB per worker";
    ASSERT_EQ(load("[relay]\nstate_dir = \"s\"\n[limits]\nuser_buffer_budget_mb = 8\n", &s), "");
    EXPECT_EQ(s.limits.user_buffer_budget, uint64_t(8) << 20);
    ASSERT_EQ(load("[relay]\nstate_dir = \"s\"\n[limits]\nuser_buffer_budget_mb = 0\n", &s), "");
    EXPECT_EQ(s.limits.user_buffer_budget, 0u) << "0 = off";
    EXPECT_EQ(load("[relay]\n[limits]\nuser_buffer_budget_mb = 2000000\n"),
              "limits.user_buffer_budget_mb: expected an integer in 0..1048576");
}

TEST_F(settings, dpdk_backend_is_read_and_checked) {
    control::relay_settings s;
    ASSERT_EQ(load("[relay]\nstate_dir = \"s\"\n", &s), "");
    EXPECT_EQ(s.io, "uring") << "kernel sockets stay the default";

    ASSERT_EQ(load(R"([relay]
io = "dpdk"
user_listen = "0.0.0.0:443"
tunnel_listen = "198.18.0.1:8444"
[dpdk]
vdev = ["net_tap0,iface=arl0"]
no_huge = true
memory_mb = 256
no_pci = true
file_prefix = "relay1"
address = "198.18.0.1/24"
gateway = "198.18.0.254"
mtu = 1500
)",
                   &s),
              "");
    EXPECT_EQ(s.io, "dpdk");
    ASSERT_EQ(s.dpdk.vdev.size(), 1u);
    EXPECT_EQ(s.dpdk.vdev[0], "net_tap0,iface=arl0");
    EXPECT_TRUE(s.dpdk.no_huge);
    EXPECT_EQ(s.dpdk.memory_mb, 256u);
    EXPECT_EQ(s.dpdk.ipv4, (198u << 24) | (18u << 16) | 1u);
    EXPECT_EQ(s.dpdk.prefix_len, 24);
    EXPECT_EQ(s.dpdk.gateway_ipv4, (198u << 24) | (18u << 16) | 254u);

    const std::string head = "[relay]\nio = \"dpdk\"\nuser_listen = \"0.0.0.0:1\"\n"
                             "tunnel_listen = \"0.0.0.0:2\"\n[dpdk]\n";
    EXPECT_NE(load("[relay]\nio = \"xdp\"\n").find("relay.io"), std::string::npos);
    EXPECT_NE(load(head).find("dpdk.address"), std::string::npos) << "address is required";
    EXPECT_NE(load(head + "address = \"198.18.0.1\"\n").find("dpdk.address"), std::string::npos);
    EXPECT_NE(load(head + "address = \"198.18.0.1/33\"\n").find("prefix"), std::string::npos);
    EXPECT_NE(load(head + "address = \"198.18.0.1/24\"\nno_huge = true\n").find("dpdk.memory_mb"),
              std::string::npos);
    EXPECT_NE(load(head + "address = \"198.18.0.1/24\"\nvdev = \"net_tap0\"\n")
                  .find("dpdk.vdev: expected an array"),
              std::string::npos);
    EXPECT_NE(load(head + "address = \"198.18.0.1/24\"\nhugepages = 1\n").find("dpdk.hugepages"),
              std::string::npos);
    auto wrong_host = load("[relay]\nio = \"dpdk\"\nuser_listen = \"127.0.0.1:1\"\n"
                           "tunnel_listen = \"0.0.0.0:2\"\n[dpdk]\naddress = \"198.18.0.1/24\"\n");
    EXPECT_NE(wrong_host.find("relay.user_listen"), std::string::npos) << wrong_host;
}

TEST_F(settings, store_and_fleet_sections) {
    control::relay_settings s;
    ASSERT_EQ(load("[relay]\n", &s), "");
    EXPECT_EQ(s.store.kind, "sqlite"); // one host by default
    ASSERT_EQ(load(R"([relay]
[store]
kind = "etcd"
endpoints = ["10.0.1.1:2379", "etcd-2.example:2379"]
prefix = "/fleet-a/"
ca_file = "etcd-ca.pem"
cert_file = "/etc/apprelay/etcd.pem"
key_file = "etcd.key"
timeout_ms = 1500
[fleet]
node = "relay-1"
region = "eu-west"
address = "10.0.0.1:8444"
lease_ttl_s = 6
)",
                   &s),
              "");
    EXPECT_EQ(s.store.endpoints.size(), 2u);
    EXPECT_EQ(s.store.prefix, "/fleet-a/");
    EXPECT_EQ(s.store.ca_file, (_dir / "etcd-ca.pem").string()); // relative to the file
    EXPECT_EQ(s.store.cert_file, "/etc/apprelay/etcd.pem");
    EXPECT_EQ(s.store.timeout_ms, 1500u);
    EXPECT_EQ(s.fleet.node, "relay-1");
    EXPECT_EQ(s.fleet.lease_ttl_s, 6u);

    EXPECT_EQ(load("[relay]\n[store]\nkind = \"zookeeper\"\n"),
              "store.kind: 'zookeeper' is not \"sqlite\" or \"etcd\"");
    EXPECT_EQ(load("[relay]\n[store]\nkind = \"etcd\"\n"),
              "store.endpoints: required with store.kind = \"etcd\" (host:port of each member)");
    EXPECT_EQ(load("[relay]\n[store]\nkind = \"etcd\"\nendpoints = [\"10.0.0.1\"]\n"),
              "store.endpoints: '10.0.0.1' is not host:port");
    EXPECT_EQ(load("[relay]\n[store]\nprefix = \"/no-slash\"\n"),
              "store.prefix: '/no-slash' must end with '/'");
    EXPECT_EQ(load("[relay]\n[store]\ncert_file = \"c.pem\"\n"),
              "store.cert_file and store.key_file go together");
    EXPECT_EQ(load("[relay]\n[store]\ntimeout_ms = 10\n"),
              "store.timeout_ms: expected an integer in 100..60000");
    EXPECT_EQ(load("[relay]\n[fleet]\nlease_ttl_s = 1\n"),
              "fleet.lease_ttl_s: expected an integer in 2..600");
    EXPECT_EQ(load("[relay]\n[fleet]\nnodes = \"x\"\n"), "fleet.nodes: unknown key");
}
