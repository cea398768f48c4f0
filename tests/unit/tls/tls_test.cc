// tls/: contexts, sessions over memory BIOs, and the in-process CA. Every certificate is issued
// by tls/ca.hh into a fresh temporary directory; client and server talk through pump(), which
// moves ciphertext between the two sessions in memory.
#include "tls/ca.hh"
#include "tls/context.hh"
#include "tls/session.hh"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <random>
#include <string>
#include <sys/stat.h>
#include <vector>

namespace apprelay::tls {
namespace {

namespace fs = std::filesystem;

class pki {
public:
    pki() {
        char tmpl[] = "/tmp/apprelay_tls_test.XXXXXX";
        char* dir = ::mkdtemp(tmpl);
        EXPECT_NE(dir, nullptr);
        _dir = dir;
        auto ca = make_ca("relay-ca", 30, &_why);
        EXPECT_TRUE(ca.ok()) << _why;
        _relay_ca = *ca;
        auto other = make_ca("other-ca", 30, &_why);
        EXPECT_TRUE(other.ok()) << _why;
        _other_ca = *other;
        write("relay-ca.crt", _relay_ca.cert_pem, false);
        write("other-ca.crt", _other_ca.cert_pem, false);
    }
    ~pki() { fs::remove_all(_dir); }

    std::string path(const std::string& name) const { return _dir + "/" + name; }

    void write(const std::string& name, const std::string& pem, bool secret) {
        auto r = write_pem_file(path(name), pem, secret, &_why);
        ASSERT_TRUE(r.ok()) << _why;
    }

    // Issues <name>.crt/<name>.key signed by `ca` and returns their paths.
    cert_source leaf(const std::string& name, const pem_pair& ca, leaf_options opts) {
        auto pair = issue_leaf(ca, opts, &_why);
        EXPECT_TRUE(pair.ok()) << _why;
        write(name + ".crt", pair->cert_pem, false);
        write(name + ".key", pair->key_pem, true);
        return cert_source{path(name + ".crt"), path(name + ".key")};
    }
    cert_source server_leaf(const std::string& name, const std::string& dns) {
        leaf_options o;
        o.common_name = dns;
        o.dns_names = {dns};
        return leaf(name, _relay_ca, o);
    }
    cert_source client_leaf(const std::string& name, const pem_pair& ca, int offset_days = 0,
                            int days = 30) {
        leaf_options o;
        o.common_name = name;
        o.server = false;
        o.client = true;
        o.not_before_offset_days = offset_days;
        o.days = days;
        return leaf(name, ca, o);
    }

    const pem_pair& relay_ca() const { return _relay_ca; }
    const pem_pair& other_ca() const { return _other_ca; }

private:
    std::string _dir;
    std::string _why;
    pem_pair _relay_ca;
    pem_pair _other_ca;
};

// Moves all pending ciphertext from one session to the other; returns bytes moved.
std::size_t transfer(session& from, session& to) {
    std::size_t moved = 0;
    while (from.pending_output_size() > 0) {
        auto out = from.pending_output();
        to.feed(out);
        moved += out.size();
        from.consume_output(out.size());
    }
    return moved;
}

struct outcome {
    errc client = errc::again;
    errc server = errc::again;
};

// Drives both handshakes until both finish or fail (or nothing moves any more).
outcome handshake(session& client, session& server) {
    outcome o;
    for (int round = 0; round < 16; ++round) {
        if (o.client == errc::again) {
            o.client = client.handshake().code();
        }
        std::size_t moved = transfer(client, server);
        if (o.server == errc::again) {
            o.server = server.handshake().code();
        }
        moved += transfer(server, client);
        if (o.client != errc::again && o.server != errc::again && moved == 0) {
            break;
        }
    }
    return o;
}

std::shared_ptr<server_context> make_server(const server_options& opts) {
    std::string why;
    auto r = server_context::create(opts, &why);
    EXPECT_TRUE(r.ok()) << why;
    return r.ok() ? *r : nullptr;
}

std::shared_ptr<client_context> make_client(const client_options& opts) {
    std::string why;
    auto r = client_context::create(opts, &why);
    EXPECT_TRUE(r.ok()) << why;
    return r.ok() ? *r : nullptr;
}

std::vector<std::byte> random_bytes(std::size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<std::byte> v(n);
    for (auto& b : v) {
        b = static_cast<std::byte>(rng());
    }
    return v;
}

// Writes `data` from `from` in chunks of varying odd sizes and reads it at `to` with another set
// of odd buffer sizes, shuttling ciphertext in between.
std::vector<std::byte> stream(session& from, session& to, const std::vector<std::byte>& data) {
    static constexpr std::size_t k_write_sizes[] = {1, 7, 1021, 16383, 16385, 65537, 333};
    static constexpr std::size_t k_read_sizes[] = {3, 4093, 17, 100003, 16384, 1};
    std::vector<std::byte> got;
    std::vector<std::byte> buf(100003);
    std::size_t off = 0;
    std::size_t wi = 0;
    std::size_t ri = 0;
    while (got.size() < data.size()) {
        if (off < data.size()) {
            std::size_t n =
                std::min(k_write_sizes[wi++ % std::size(k_write_sizes)], data.size() - off);
            auto w = from.write(std::span(data).subspan(off, n));
            EXPECT_TRUE(w.ok());
            EXPECT_EQ(*w, n);
            off += n;
        }
        // Hand over ciphertext in odd slices too, so records arrive split.
        while (from.pending_output_size() > 0) {
            auto out = from.pending_output();
            std::size_t n = std::min<std::size_t>(out.size(), 5003);
            to.feed(out.first(n));
            from.consume_output(n);
        }
        for (;;) {
            std::size_t cap = k_read_sizes[ri++ % std::size(k_read_sizes)];
            auto r = to.read(std::span(buf).first(cap));
            if (!r.ok()) {
                EXPECT_EQ(r.code(), errc::again);
                break;
            }
            got.insert(got.end(), buf.begin(), buf.begin() + static_cast<long>(*r));
        }
        if (off >= data.size() && from.pending_output_size() == 0 && to.pending_plaintext() == 0 &&
            got.size() < data.size()) {
            ADD_FAILURE() << "stream stalled at " << got.size() << " of " << data.size();
            break;
        }
    }
    return got;
}

TEST(tls_session, handshake_and_one_mib_both_ways_byte_exact) {
    pki p;
    server_options so;
    so.default_cert = p.server_leaf("relay", "relay.example");
    auto server_ctx = make_server(so);
    client_options co;
    co.ca_pem_path = p.path("relay-ca.crt");
    co.server_name = "relay.example";
    auto client_ctx = make_client(co);
    ASSERT_TRUE(server_ctx && client_ctx);
    auto client = client_ctx->new_session();
    auto server = server_ctx->new_session();
    auto o = handshake(*client, *server);
    ASSERT_EQ(o.client, errc::ok) << client->last_error();
    ASSERT_EQ(o.server, errc::ok) << server->last_error();
    EXPECT_TRUE(client->established());
    EXPECT_TRUE(server->established());
    EXPECT_EQ(server->sni(), "relay.example");
    EXPECT_EQ(server->sni_index(), -1);
    // Without session tickets nothing follows the handshake.
    EXPECT_EQ(server->pending_output_size(), 0u);
    EXPECT_EQ(client->peer_common_name(), "relay.example");

    auto up = random_bytes(1 << 20, 1);
    auto down = random_bytes(1 << 20, 2);
    EXPECT_TRUE(stream(*client, *server, up) == up);
    EXPECT_TRUE(stream(*server, *client, down) == down);
}

TEST(tls_session, sni_selects_app_index_case_insensitively) {
    pki p;
    server_options so;
    so.sni.push_back({"web.example", p.server_leaf("web", "web.example"), 7});
    so.sni.push_back({"db.example", p.server_leaf("db", "db.example"), 3});
    so.unknown_sni_fails = true;
    auto server_ctx = make_server(so);
    struct want {
        const char* name;
        int index;
        const char* cn; // the certificate the client must see
    };
    for (auto [name, index, cn] : {want{"web.example", 7, "web.example"}, want{"DB.Example", 3, "db.example"}}) {
        client_options co;
        co.ca_pem_path = p.path("relay-ca.crt");
        co.server_name = name;
        auto client_ctx = make_client(co);
        auto client = client_ctx->new_session();
        auto server = server_ctx->new_session();
        auto o = handshake(*client, *server);
        ASSERT_EQ(o.server, errc::ok) << server->last_error();
        ASSERT_EQ(o.client, errc::ok) << client->last_error();
        EXPECT_EQ(server->sni_index(), index);
        EXPECT_EQ(server->sni(), name);
        EXPECT_EQ(client->peer_common_name(), cn);
    }
}

TEST(tls_session, unknown_sni_fails_with_unknown_app) {
    pki p;
    server_options so;
    so.sni.push_back({"web.example", p.server_leaf("web", "web.example"), 7});
    so.unknown_sni_fails = true;
    auto server_ctx = make_server(so);
    for (const char* name : {"other.example", ""}) {
        client_options co; // no verification: the server must refuse before any certificate
        co.server_name = name;
        auto client_ctx = make_client(co);
        auto client = client_ctx->new_session();
        auto server = server_ctx->new_session();
        auto o = handshake(*client, *server);
        EXPECT_EQ(o.server, errc::unknown_app) << name;
        EXPECT_EQ(o.client, errc::tls_error) << name;
        // The alert that reached the client is unrecognized_name (112).
        EXPECT_NE(client->last_error().find("unrecognized name"), std::string::npos)
            << client->last_error();
    }
}

struct tls_mtls : ::testing::Test {
    pki p;
    std::shared_ptr<server_context> server_ctx;

    void SetUp() override {
        server_options so;
        so.default_cert = p.server_leaf("relay", "relay.example");
        so.client_ca_pem_paths = {p.path("relay-ca.crt")};
        server_ctx = make_server(so);
        ASSERT_TRUE(server_ctx);
    }

    // Connects with the given client identity (empty = none); returns both outcomes.
    outcome connect(const cert_source& identity, std::unique_ptr<session>* server_out) {
        client_options co;
        co.ca_pem_path = p.path("relay-ca.crt");
        co.server_name = "relay.example";
        co.client_cert = identity;
        auto client_ctx = make_client(co);
        auto client = client_ctx->new_session();
        auto server = server_ctx->new_session();
        auto o = handshake(*client, *server);
        *server_out = std::move(server);
        return o;
    }
};

TEST_F(tls_mtls, valid_client_cert_is_accepted_and_fingerprinted) {
    auto id = p.client_leaf("connector-1", p.relay_ca());
    std::unique_ptr<session> server;
    auto o = connect(id, &server);
    ASSERT_EQ(o.server, errc::ok) << server->last_error();
    ASSERT_EQ(o.client, errc::ok);
    std::string why;
    auto fp = fingerprint_of_pem_file(id.cert_pem_path, &why);
    ASSERT_TRUE(fp.ok()) << why;
    EXPECT_EQ(fp->size(), 64u);
    EXPECT_EQ(server->peer_fingerprint(), *fp);
    EXPECT_EQ(server->peer_common_name(), "connector-1");
}

TEST_F(tls_mtls, client_cert_from_another_ca_is_rejected) {
    std::unique_ptr<session> server;
    auto o = connect(p.client_leaf("intruder", p.other_ca()), &server);
    EXPECT_EQ(o.server, errc::cert_rejected);
    EXPECT_NE(server->last_error().find("unable to get local issuer"), std::string::npos)
        << server->last_error();
    EXPECT_TRUE(server->peer_fingerprint().empty());
}

TEST_F(tls_mtls, expired_client_cert_is_rejected) {
    // Valid from 10 days ago for 1 day: expired 9 days ago.
    std::unique_ptr<session> server;
    auto o = connect(p.client_leaf("expired", p.relay_ca(), -10, 1), &server);
    EXPECT_EQ(o.server, errc::cert_rejected);
    EXPECT_NE(server->last_error().find("expired"), std::string::npos) << server->last_error();
}

TEST_F(tls_mtls, missing_client_cert_is_rejected) {
    std::unique_ptr<session> server;
    auto o = connect(cert_source{}, &server);
    EXPECT_EQ(o.server, errc::cert_rejected) << server->last_error();
}

// Names of the CAs in the CertificateRequest a client saw; no entry = no request at all.
std::vector<std::vector<std::string>> g_requests;

int record_request(SSL* ssl, X509**, EVP_PKEY**) {
    std::vector<std::string> names;
    const STACK_OF(X509_NAME)* list = SSL_get_client_CA_list(ssl);
    for (int i = 0; i < sk_X509_NAME_num(list); ++i) {
        char buf[256];
        X509_NAME_oneline(sk_X509_NAME_value(list, i), buf, sizeof buf);
        names.emplace_back(buf);
    }
    g_requests.push_back(std::move(names));
    return 0; // no certificate
}

// A user listener with two CAs (two tenants): a certificate is asked for only on names that
// need one, and the request names only the CAs given for that name.
TEST(tls_session, client_certificate_is_requested_per_name) {
    pki p;
    server_options so;
    so.client_ca_pem_paths = {p.path("relay-ca.crt"), p.path("other-ca.crt")};
    so.client_cert_optional = true;
    so.unknown_sni_fails = true;
    so.sni.push_back({"open.example", p.server_leaf("open", "open.example"), 0, false});
    so.sni.push_back({"sec.example", p.server_leaf("sec", "sec.example"), 1, true,
                      {p.path("other-ca.crt")}});
    so.sni.push_back({"all.example", p.server_leaf("all", "all.example"), 2});
    auto server_ctx = make_server(so);
    ASSERT_TRUE(server_ctx);
    auto requests_for = [&](const std::string& name) {
        client_options co;
        co.ca_pem_path = p.path("relay-ca.crt");
        co.server_name = name;
        auto client_ctx = make_client(co);
        SSL_CTX_set_client_cert_cb(static_cast<SSL_CTX*>(client_ctx->native()), &record_request);
        auto client = client_ctx->new_session();
        auto server = server_ctx->new_session();
        g_requests.clear();
        auto o = handshake(*client, *server);
        EXPECT_EQ(o.client, errc::ok) << name << ": " << client->last_error();
        EXPECT_EQ(o.server, errc::ok) << name << ": " << server->last_error();
        EXPECT_TRUE(server->peer_fingerprint().empty());
        return g_requests;
    };
    EXPECT_TRUE(requests_for("open.example").empty());
    auto sec = requests_for("sec.example");
    ASSERT_EQ(sec.size(), 1u);
    EXPECT_EQ(sec[0], std::vector<std::string>{"/CN=other-ca"});
    auto all = requests_for("all.example");
    ASSERT_EQ(all.size(), 1u);
    EXPECT_EQ(all[0], (std::vector<std::string>{"/CN=relay-ca", "/CN=other-ca"}));
}

TEST(tls_session, a_certificate_asked_for_per_name_still_verifies) {
    pki p;
    server_options so;
    so.client_ca_pem_paths = {p.path("relay-ca.crt"), p.path("other-ca.crt")};
    so.client_cert_optional = true;
    so.sni.push_back({"sec.example", p.server_leaf("sec", "sec.example"), 1, true,
                      {p.path("other-ca.crt")}});
    auto server_ctx = make_server(so);
    ASSERT_TRUE(server_ctx);
    client_options co;
    co.ca_pem_path = p.path("relay-ca.crt");
    co.server_name = "sec.example";
    co.client_cert = p.client_leaf("alice", p.other_ca());
    auto client_ctx = make_client(co);
    auto client = client_ctx->new_session();
    auto server = server_ctx->new_session();
    auto o = handshake(*client, *server);
    ASSERT_EQ(o.server, errc::ok) << server->last_error();
    EXPECT_EQ(server->peer_common_name(), "alice");
    EXPECT_FALSE(server->peer_root_fingerprint().empty());
}

TEST(tls_context, unreadable_ca_names_file_is_refused_with_its_path) {
    pki p;
    server_options so;
    so.client_ca_pem_paths = {p.path("relay-ca.crt")};
    so.client_cert_optional = true;
    so.sni.push_back({"sec.example", p.server_leaf("sec", "sec.example"), 1, true,
                      {p.path("missing-ca.crt")}});
    std::string why;
    auto r = server_context::create(so, &why);
    EXPECT_FALSE(r.ok());
    EXPECT_NE(why.find("missing-ca.crt"), std::string::npos) << why;
}

TEST(tls_session, garbage_and_plaintext_http_fail_with_tls_error) {
    pki p;
    server_options so;
    so.default_cert = p.server_leaf("relay", "relay.example");
    auto server_ctx = make_server(so);
    const std::string http = "GET / HTTP/1.1\r\nHost: relay.example\r\n\r\n";
    auto garbage = random_bytes(512, 3);
    for (auto input : {std::as_bytes(std::span(http)), std::span<const std::byte>(garbage)}) {
        auto server = server_ctx->new_session();
        server->feed(input);
        auto r = server->handshake();
        EXPECT_EQ(r.code(), errc::tls_error);
        EXPECT_FALSE(server->last_error().empty());
        // A failed handshake on one session leaves nothing behind for the next one.
        auto fresh = server_ctx->new_session();
        EXPECT_EQ(fresh->handshake().code(), errc::again);
    }
}

TEST(tls_session, close_notify_reads_as_closed) {
    pki p;
    server_options so;
    so.default_cert = p.server_leaf("relay", "relay.example");
    auto server_ctx = make_server(so);
    client_options co;
    co.ca_pem_path = p.path("relay-ca.crt");
    co.server_name = "relay.example";
    auto client_ctx = make_client(co);
    auto client = client_ctx->new_session();
    auto server = server_ctx->new_session();
    auto o = handshake(*client, *server);
    ASSERT_EQ(o.server, errc::ok);
    const std::string last = "bye";
    ASSERT_TRUE(client->write(std::as_bytes(std::span(last))).ok());
    client->shutdown();
    transfer(*client, *server);
    std::byte buf[64];
    auto r = server->read(buf);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, last.size());
    EXPECT_EQ(server->read(buf).code(), errc::closed);
}

TEST(tls_session, wrong_hostname_fails_on_the_client) {
    pki p;
    server_options so;
    so.default_cert = p.server_leaf("relay", "relay.example");
    auto server_ctx = make_server(so);
    client_options co;
    co.ca_pem_path = p.path("relay-ca.crt");
    co.server_name = "evil.example";
    auto client_ctx = make_client(co);
    auto client = client_ctx->new_session();
    auto server = server_ctx->new_session();
    auto o = handshake(*client, *server);
    EXPECT_EQ(o.client, errc::cert_rejected);
    EXPECT_NE(client->last_error().find("hostname mismatch"), std::string::npos)
        << client->last_error();
    EXPECT_NE(o.server, errc::ok);
}

TEST(tls_context, creation_errors_name_the_file) {
    server_options so;
    so.default_cert = {"/nonexistent/web.crt", "/nonexistent/web.key"};
    std::string why;
    auto r = server_context::create(so, &why);
    EXPECT_EQ(r.code(), errc::tls_error);
    EXPECT_NE(why.find("/nonexistent/web.crt"), std::string::npos) << why;
}

TEST(tls_ca, key_files_are_private) {
    pki p;
    auto id = p.client_leaf("connector-1", p.relay_ca());
    struct stat st {};
    ASSERT_EQ(::stat(id.key_pem_path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    ASSERT_EQ(::stat(id.cert_pem_path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0644u);
}

TEST(ticket_keys, rotate_and_accept_the_previous_key_once) {
    auto k = ticket_keys::create(60);
    ASSERT_NE(k, nullptr);
    const uint64_t t0 = 1'000'000; // far beyond creation: the first call rotates
    ticket_keys::key a, b, c, found;
    ASSERT_TRUE(k->current(&a, t0));
    ASSERT_TRUE(k->current(&b, t0 + 59));
    EXPECT_EQ(std::memcmp(a.name, b.name, 16), 0); // same key within the period
    EXPECT_EQ(k->find(a.name, &found, t0 + 59), 0);
    EXPECT_EQ(std::memcmp(found.aes, a.aes, 32), 0);
    // One period later new tickets get a new key; the old one still opens (renew: 1).
    ASSERT_TRUE(k->current(&c, t0 + 60));
    EXPECT_NE(std::memcmp(a.name, c.name, 16), 0);
    EXPECT_EQ(k->find(c.name, &found, t0 + 60), 0);
    EXPECT_EQ(k->find(a.name, &found, t0 + 61), 1);
    EXPECT_EQ(std::memcmp(found.hmac, a.hmac, 32), 0);
    // Two periods: the first key is gone, unknown names never match.
    EXPECT_EQ(k->find(a.name, &found, t0 + 120), -1);
    unsigned char junk[16] = {1, 2, 3};
    EXPECT_EQ(k->find(junk, &found, t0 + 120), -1);
    EXPECT_GE(k->rotations(), 3u);
}

TEST(tls_policy, only_tls13_suites_and_known_groups) {
    std::string why;
    EXPECT_TRUE(check_policy(tls_policy{}, &why)) << why;
    tls_policy p;
    p.ciphersuites = "TLS_AES_128_GCM_SHA256:ECDHE-RSA-AES128-GCM-SHA256";
    EXPECT_FALSE(check_policy(p, &why));
    EXPECT_NE(why.find("'ECDHE-RSA-AES128-GCM-SHA256' is not a TLS 1.3 cipher suite"),
              std::string::npos)
        << why;
    p = {};
    p.groups = "X25519:nonsense";
    EXPECT_FALSE(check_policy(p, &why));
    EXPECT_NE(why.find("groups:"), std::string::npos) << why;
}

} // namespace
} // namespace apprelay::tls

namespace apprelay::tls {
namespace {

// The per-worker buffer pool gives back what a burst took once it is over (relay worker trims
// every 5 s), keeps what steady traffic keeps using, and never frees a chunk in use.
TEST(chunk_pool, trim_frees_only_chunks_unused_since_the_last_trim) {
    chunk_pool pool;
    std::vector<detail::chunk*> burst;
    for (int i = 0; i < 100; ++i) {
        burst.push_back(pool.get());
        ASSERT_NE(burst.back(), nullptr);
    }
    for (auto* c : burst) {
        pool.put(c);
    }
    EXPECT_EQ(pool.free_chunks(), 100u);
    EXPECT_EQ(pool.trim_unused(16), 0u) << "the first interval saw the pool empty";
    // Steady use of 10 chunks at a time during the next interval.
    for (int round = 0; round < 3; ++round) {
        std::vector<detail::chunk*> in_use;
        for (int i = 0; i < 10; ++i) {
            in_use.push_back(pool.get());
        }
        for (auto* c : in_use) {
            pool.put(c);
        }
    }
    EXPECT_EQ(pool.trim_unused(16), 90u - 16u) << "never fewer than 90 were free: 74 go";
    EXPECT_EQ(pool.free_chunks(), 26u);
    EXPECT_EQ(pool.trim_unused(16), 26u - 16u) << "an idle interval leaves the 16 kept";
    EXPECT_EQ(pool.free_chunks(), 16u);
    EXPECT_EQ(pool.trim_unused(16), 0u);
}

} // namespace
} // namespace apprelay::tls
