// Enrollment end to end on 127.0.0.1 with real TLS: the relay's enrollment server (in-process,
// with a handler that signs with a test tenant CA and knows one token) against the connector's
// register_connector(). The handler counts its calls so "refused before sending" is observable:
// a pin mismatch must never reach it.
#include "control/enroll/server.hh"
#include "dataplane/connector/enroll.hh"
#include "tls/ca.hh"
#include "tls/csr.hh"

#include <arpa/inet.h>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <gtest/gtest.h>
#include <mutex>
#include <netinet/in.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <set>
#include <sys/socket.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace apprelay::connector {
namespace {

namespace fs = std::filesystem;
using clock = std::chrono::steady_clock;

constexpr const char* k_token_id = "0123456789abcdef";
constexpr const char* k_token_secret = "00112233445566778899aabbccddeeff";
constexpr uint16_t k_tunnel_port = 4443;

int bound_socket(uint16_t* port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
    socklen_t len = sizeof sin;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
    *port = ntohs(sin.sin_port);
    return fd;
}

int verify_client_cert(const std::string& ca_pem, const std::string& cert_pem) {
    auto parse = [](const std::string& pem) {
        BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
        X509* c = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
        BIO_free(bio);
        return c;
    };
    X509* ca = parse(ca_pem);
    X509* leaf = parse(cert_pem);
    X509_STORE* store = X509_STORE_new();
    X509_STORE_add_cert(store, ca);
    X509_STORE_CTX* ctx = X509_STORE_CTX_new();
    X509_STORE_CTX_init(ctx, store, leaf, nullptr);
    X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT);
    int rc = X509_verify_cert(ctx) == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    X509_free(leaf);
    X509_free(ca);
    return rc;
}

std::string slurp(const std::string& path) {
    std::string out;
    FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) {
        return out;
    }
    char buf[4096];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
        out.append(buf, n);
    }
    std::fclose(f);
    return out;
}

class enroll_test : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/apprelay_enroll_test.XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        _dir = tmpl;
        auto relay_ca = tls::make_ca("relay-ca", 30, &_why);
        auto tenant_ca = tls::make_ca("acme-ca", 30, &_why);
        auto other_ca = tls::make_ca("other-ca", 30, &_why);
        ASSERT_TRUE(relay_ca.ok() && tenant_ca.ok() && other_ca.ok()) << _why;
        _relay_ca = *relay_ca;
        _tenant_ca = *tenant_ca;
        _other_ca = *other_ca;
        tls::leaf_options lo;
        lo.common_name = "apprelay-relay";
        lo.dns_names = {"apprelay-relay"};
        auto leaf = tls::issue_leaf(_relay_ca, lo, &_why);
        auto foreign_leaf = tls::issue_leaf(_other_ca, lo, &_why);
        ASSERT_TRUE(leaf.ok() && foreign_leaf.ok()) << _why;
        write("chain.pem", leaf->cert_pem + _relay_ca.cert_pem);
        write("leaf-only.pem", leaf->cert_pem);
        write("relay.key", leaf->key_pem);
        // The relay CA is present, but the leaf was issued by another CA.
        write("foreign-chain.pem", foreign_leaf->cert_pem + _relay_ca.cert_pem);
        write("foreign.key", foreign_leaf->key_pem);
        auto fp = tls::fingerprint_of_cert_pem(_relay_ca.cert_pem, &_why);
        auto other_fp = tls::fingerprint_of_cert_pem(_other_ca.cert_pem, &_why);
        ASSERT_TRUE(fp.ok() && other_fp.ok()) << _why;
        _relay_ca_fp = *fp;
        _other_ca_fp = *other_fp;
    }

    void TearDown() override {
        _server.reset();
        fs::remove_all(_dir);
    }

    void write(const std::string& name, const std::string& text) {
        ASSERT_TRUE(tls::write_pem_file(path(name), text, true, &_why).ok()) << _why;
    }
    std::string path(const std::string& name) const { return _dir + "/" + name; }

    std::string token(const std::string& fp, const std::string& id = k_token_id) const {
        return "art1." + id + "." + k_token_secret + "." + fp;
    }

    enroll::enroll_reply handle(const enroll::enroll_request& req) {
        ++_calls;
        {
            std::lock_guard lock(_mu);
            _last = req;
        }
        enroll::enroll_reply r;
        if (req.token != token(_relay_ca_fp)) {
            r.error = "unknown token";
            return r;
        }
        std::string why;
        auto cert = tls::sign_csr(_tenant_ca, req.csr_pem, {"c-0001", "acme", 365}, &why);
        if (!cert.ok()) {
            r.error = "invalid CSR: " + why;
            return r;
        }
        r.ok = true;
        r.connector_id = "c-0001";
        r.tenant = "acme";
        r.group = "Default";
        r.cert_pem = cert->cert_pem;
        r.ca_pem = _relay_ca.cert_pem;
        r.tunnel_port = k_tunnel_port;
        r.server_name = "apprelay-relay";
        return r;
    }

    void start(uint32_t deadline_ms = 5000, uint32_t rate = 20,
               const std::string& chain = "chain.pem", const std::string& key = "relay.key") {
        enroll::server_options so;
        so.listen_fd = bound_socket(&_port);
        so.cert_chain_pem_path = path(chain);
        so.key_pem_path = path(key);
        so.io_deadline_ms = deadline_ms;
        so.max_enrollments_per_s = rate;
        auto s = enroll::server::start(
            so, [this](const enroll::enroll_request& r) { return handle(r); }, &_why);
        ASSERT_TRUE(s.ok()) << _why;
        _server = std::move(*s);
    }

    std::string relay() const { return "127.0.0.1:" + std::to_string(_port); }

    register_options reg(const std::string& tok, const std::string& dir_name = "state") const {
        register_options o;
        o.relay = relay();
        o.token = tok;
        o.state_dir = path(dir_name);
        o.name = "edge-1";
        o.deadline_ms = 5000;
        return o;
    }

    std::string _dir;
    std::string _why;
    tls::pem_pair _relay_ca;
    tls::pem_pair _tenant_ca;
    tls::pem_pair _other_ca;
    std::string _relay_ca_fp;
    std::string _other_ca_fp;
    uint16_t _port = 0;
    std::atomic<int> _calls{0};
    std::mutex _mu;
    enroll::enroll_request _last;
    std::unique_ptr<enroll::server> _server;
};

TEST(enroll_token, parses_the_documented_format_only) {
    const std::string fp(64, 'a');
    auto t =
        parse_token(std::string("art1.0123456789abcdef.00112233445566778899aabbccddeeff.") + fp);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(t->id, "0123456789abcdef");
    EXPECT_EQ(t->secret, "00112233445566778899aabbccddeeff");
    EXPECT_EQ(t->ca_fingerprint, fp);
    for (const std::string& bad : std::vector<std::string>{
             "", "art1", "art2.0123456789abcdef.00112233445566778899aabbccddeeff." + fp,
             "art1.0123456789ABCDEF.00112233445566778899aabbccddeeff." + fp,
             "art1.0123456789abcde.00112233445566778899aabbccddeeff." + fp,
             "art1.0123456789abcdef.00112233445566778899aabbccddeeff." + fp + "0",
             "art1.0123456789abcdef.00112233445566778899aabbccddeeff",
             "art1.0123456789abcdef.00112233445566778899aabbccddeeff." + fp + ".x"}) {
        EXPECT_FALSE(parse_token(bad).ok()) << bad;
    }
}

TEST_F(enroll_test, register_writes_a_private_state_dir_that_run_can_load) {
    start();
    ::testing::internal::CaptureStderr();
    auto done = register_connector(reg(token(_relay_ca_fp)), &_why);
    // The server logs after sending the reply: joining its thread makes the line complete.
    _server->stop();
    std::string logs = ::testing::internal::GetCapturedStderr();
    ASSERT_TRUE(done.ok()) << _why;
    EXPECT_EQ(done->connector_id, "c-0001");
    EXPECT_EQ(done->tenant, "acme");
    EXPECT_EQ(done->group, "Default");
    EXPECT_EQ(_calls.load(), 1);
    {
        std::lock_guard lock(_mu);
        EXPECT_EQ(_last.name, "edge-1");
        EXPECT_EQ(_last.version, APPRELAY_VERSION);
        EXPECT_EQ(_last.peer.rfind("127.0.0.1:", 0), 0u) << _last.peer;
    }
    // One log line for the enrollment, and the token's secret appears nowhere.
    EXPECT_NE(logs.find("enroll_ok"), std::string::npos) << logs;
    EXPECT_EQ(logs.find(k_token_secret), std::string::npos) << logs;

    struct stat st {};
    ASSERT_EQ(::stat(path("state").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0700u);
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(path("state"))) {
        names.insert(entry.path().filename().string());
        ASSERT_EQ(::stat(entry.path().c_str(), &st), 0);
        EXPECT_EQ(st.st_mode & 07777, 0600u) << entry.path();
    }
    EXPECT_EQ(names, (std::set<std::string>{"ca.pem", "cert.pem", "key.pem", "relay.json"}));
    EXPECT_EQ(verify_client_cert(_tenant_ca.cert_pem, slurp(path("state/cert.pem"))), X509_V_OK);
    EXPECT_EQ(slurp(path("state/ca.pem")), _relay_ca.cert_pem);

    auto st2 = load_state(path("state"), &_why);
    ASSERT_TRUE(st2.ok()) << _why;
    EXPECT_EQ(st2->relay, "127.0.0.1:" + std::to_string(k_tunnel_port));
    EXPECT_EQ(st2->server_name, "apprelay-relay");
    EXPECT_EQ(st2->connector_id, "c-0001");
    EXPECT_EQ(st2->cert_path, path("state") + "/cert.pem");
}

TEST_F(enroll_test, existing_state_dir_is_made_private) {
    start();
    ASSERT_EQ(::mkdir(path("state").c_str(), 0755), 0);
    ASSERT_TRUE(register_connector(reg(token(_relay_ca_fp)), &_why).ok()) << _why;
    struct stat st {};
    ASSERT_EQ(::stat(path("state").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0700u);
}

TEST_F(enroll_test, token_for_another_ca_is_refused_before_sending) {
    start();
    auto done = register_connector(reg(token(_other_ca_fp)), &_why);
    ASSERT_FALSE(done.ok());
    EXPECT_EQ(done.code(), errc::cert_rejected);
    EXPECT_EQ(_why.rfind(k_pin_mismatch, 0), 0u) << _why;
    EXPECT_EQ(_calls.load(), 0);
    EXPECT_FALSE(fs::exists(path("state")));
}

TEST_F(enroll_test, chain_without_the_pinned_ca_is_refused) {
    start(5000, 20, "leaf-only.pem");
    auto done = register_connector(reg(token(_relay_ca_fp)), &_why);
    EXPECT_EQ(done.code(), errc::cert_rejected) << _why;
    EXPECT_EQ(_calls.load(), 0);
}

TEST_F(enroll_test, leaf_not_issued_by_the_pinned_ca_is_refused) {
    // The pinned CA certificate is in the chain, but it did not sign the leaf.
    start(5000, 20, "foreign-chain.pem", "foreign.key");
    auto done = register_connector(reg(token(_relay_ca_fp)), &_why);
    EXPECT_EQ(done.code(), errc::cert_rejected) << _why;
    EXPECT_EQ(_calls.load(), 0);
}

TEST_F(enroll_test, handler_refusal_reaches_the_client) {
    start();
    auto done = register_connector(reg(token(_relay_ca_fp, "fedcba9876543210")), &_why);
    ASSERT_FALSE(done.ok());
    EXPECT_EQ(done.code(), errc::refused);
    EXPECT_EQ(_why, "unknown token");
    EXPECT_EQ(_calls.load(), 1);
    EXPECT_FALSE(fs::exists(path("state")));
}

TEST_F(enroll_test, malformed_token_is_refused_before_connecting) {
    start();
    auto done = register_connector(reg("art1.nothex"), &_why);
    EXPECT_EQ(done.code(), errc::invalid_argument);
    EXPECT_EQ(_calls.load(), 0);
}

TEST_F(enroll_test, oversize_request_line_is_malformed) {
    start();
    // One byte over the limit: 64 KiB of payload plus the newline.
    std::string line = "{\"token\":\"" + std::string(enroll::k_max_request_line, 'x') + "\"}\n";
    auto reply = exchange_line(relay(), _relay_ca_fp, line, 5000, &_why);
    ASSERT_TRUE(reply.ok()) << _why;
    EXPECT_EQ(*reply, R"({"error":"malformed request","ok":false})");
    EXPECT_EQ(_calls.load(), 0);
}

TEST_F(enroll_test, request_that_is_not_the_documented_json_is_malformed) {
    start();
    for (const char* line :
         {"not json\n", "[1,2]\n", "{\"token\":\"t\"}\n", "{\"token\":1,\"csr_pem\":\"x\"}\n",
          "{\"token\":\"t\",\"csr_pem\":\"x\",\"name\":5}\n"}) {
        auto reply = exchange_line(relay(), _relay_ca_fp, line, 5000, &_why);
        ASSERT_TRUE(reply.ok()) << _why;
        EXPECT_EQ(*reply, R"({"error":"malformed request","ok":false})") << line;
    }
    EXPECT_EQ(_calls.load(), 0);
}

TEST_F(enroll_test, request_at_the_limit_reaches_the_handler) {
    start();
    std::string head = "{\"token\":\"t\",\"csr_pem\":\"";
    std::string tail = "\"}\n";
    std::string line =
        head + std::string(enroll::k_max_request_line - head.size() - tail.size(), 'x') + tail;
    ASSERT_EQ(line.size(), enroll::k_max_request_line);
    auto reply = exchange_line(relay(), _relay_ca_fp, line, 5000, &_why);
    ASSERT_TRUE(reply.ok()) << _why;
    EXPECT_EQ(*reply, R"({"error":"unknown token","ok":false})");
    EXPECT_EQ(_calls.load(), 1);
}

TEST_F(enroll_test, invalid_csr_reason_reaches_the_client) {
    start();
    std::string line = "{\"token\":\"" + token(_relay_ca_fp) + "\",\"csr_pem\":\"junk\"}\n";
    auto reply = exchange_line(relay(), _relay_ca_fp, line, 5000, &_why);
    ASSERT_TRUE(reply.ok()) << _why;
    EXPECT_EQ(*reply,
              R"({"error":"invalid CSR: CSR is not a PEM certificate request","ok":false})");
}

TEST_F(enroll_test, silent_client_does_not_block_the_next_beyond_the_deadline) {
    constexpr uint32_t k_deadline_ms = 300;
    start(k_deadline_ms);
    int idle = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(_port);
    ASSERT_EQ(::connect(idle, reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
    // Let the server accept the silent connection first, so the next one queues behind it.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto t0 = clock::now();
    auto done = register_connector(reg(token(_relay_ca_fp)), &_why);
    auto waited = clock::now() - t0;
    ::close(idle);
    ASSERT_TRUE(done.ok()) << _why;
    // The queued client waits out the rest of the silent one's 300 ms, plus its own ~10 ms of
    // key generation, handshake and signing; 1 s leaves room for a loaded 2-core machine.
    EXPECT_LT(waited, std::chrono::milliseconds(k_deadline_ms + 1000));
    EXPECT_GE(waited, std::chrono::milliseconds(k_deadline_ms - 100));
}

TEST_F(enroll_test, enrollments_beyond_the_rate_get_busy_and_register_tries_again) {
    start(5000, 1); // bucket of one token, refilled once per second
    ASSERT_TRUE(register_connector(reg(token(_relay_ca_fp), "a"), &_why).ok()) << _why;
    // The second arrives with the bucket empty: the relay answers busy (its handler is not
    // called) and register pauses and asks again until the bucket has refilled.
    auto t0 = clock::now();
    auto second = register_connector(reg(token(_relay_ca_fp), "b"), &_why);
    auto waited = clock::now() - t0;
    ASSERT_TRUE(second.ok()) << _why;
    EXPECT_GE(waited, std::chrono::milliseconds(100)); // at least one pause
    EXPECT_LT(waited, std::chrono::milliseconds(7000)); // within its 5 retries
    EXPECT_EQ(_calls.load(), 2);
}

TEST_F(enroll_test, stop_ends_the_thread_fast_even_with_a_client_connected) {
    start();
    int idle = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(_port);
    ASSERT_EQ(::connect(idle, reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto t0 = clock::now();
    _server->stop();
    EXPECT_LT(clock::now() - t0, std::chrono::milliseconds(100));
    ::close(idle);
}

TEST_F(enroll_test, unreachable_relay_fails_within_the_deadline) {
    uint16_t port = 0;
    int fd = bound_socket(&port); // bound, never listening: connect is refused
    register_options o = reg(token(_relay_ca_fp));
    o.relay = "127.0.0.1:" + std::to_string(port);
    auto done = register_connector(o, &_why);
    ::close(fd);
    EXPECT_EQ(done.code(), errc::unreachable) << _why;
    EXPECT_FALSE(fs::exists(path("state")));
}

} // namespace
} // namespace apprelay::connector
