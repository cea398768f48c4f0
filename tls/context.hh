#pragma once
// TLS contexts (OpenSSL 3, TLS 1.3 only). All OpenSSL calls of apprelay live in tls/.
// Contexts are built at start-up or by the control thread (may allocate, may fail with a
// message); sessions are created per connection on a worker from a shared, immutable context.
#include "dataplane/base/result.hh"

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace apprelay::tls {

class session;

// Cipher suites and key-exchange groups, most preferred first. TLS 1.3 only; a server's order
// wins over the client's (a client offering AES-256 first still gets AES-128-GCM).
struct tls_policy {
    std::string ciphersuites =
        "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384";
    std::string groups = "X25519:P-256";
};

// Checks a policy without building a context. why names the bad part: "TLS_RSA_WITH_AES_128_CBC_SHA
// is not a TLS 1.3 cipher suite (TLS_AES_128_GCM_SHA256, ...)", "no such group: P-999".
bool check_policy(const tls_policy& p, std::string* why);

// Session-ticket keys of one listener, shared by every context built for it: the relay rebuilds
// its contexts with every configuration snapshot, and tickets issued before stay valid. The key
// that seals new tickets is replaced every rotation_s; tickets sealed with the one before are
// still accepted (and replaced by a fresh ticket), so a ticket resumes for at most 2 x rotation_s.
// Thread-safe: handshakes on every worker use it (a short lock, never on the data path).
class ticket_keys {
public:
    struct key {
        unsigned char name[16];
        unsigned char aes[32];  // AES-256-CBC
        unsigned char hmac[32]; // HMAC-SHA256
    };
    // rotation_s >= 1. Returns null if the random source fails.
    static std::shared_ptr<ticket_keys> create(uint32_t rotation_s);
    // The key for a new ticket (rotating first when due).
    bool current(key* out, uint64_t now_s);
    // 0: the current key, 1: the previous one (renew the ticket), -1: unknown or expired.
    int find(const unsigned char name[16], key* out, uint64_t now_s);
    uint64_t rotations() const;

private:
    explicit ticket_keys(uint32_t rotation_s) : _rotation_s(rotation_s) {}
    bool rotate_locked(uint64_t now_s);
    mutable std::mutex _mu;
    const uint32_t _rotation_s;
    key _cur{};
    key _prev{};
    bool _has_prev = false;
    uint64_t _since_s = 0;
    uint64_t _rotations = 0;
};

// A certificate chain + private key, loaded from PEM files or PEM text.
struct cert_source {
    std::string cert_pem_path; // leaf first, then intermediates
    std::string key_pem_path;
};

// One SNI entry: the hostname (exact match, case-insensitive) and its certificate.
struct sni_entry {
    std::string hostname;
    cert_source cert;
    uint32_t app_index = 0; // opaque to tls/: handed back by session::sni_index()
    // Listener with client CAs: whether users of this name are asked for a certificate, and
    // the CA files whose subjects that request names (empty: all of the listener's). A name
    // nobody needs a certificate for is not asked: a browser would prompt its user to pick one,
    // and the request would list every tenant's CA to anyone who connects.
    bool request_client_cert = true;
    std::vector<std::string> client_ca_names_pem_paths{};
};

struct server_options {
    // Certificate used when no SNI entry matches and unknown_sni_fails is false, and for the
    // tunnel listener (connectors present SNI of the relay, which is not an app).
    cert_source default_cert;
    std::vector<sni_entry> sni;     // user listener: one per application
    bool unknown_sni_fails = false; // user listener: unknown or missing SNI -> alert 112
    // Mutual TLS: when non-empty, the client must present a certificate chaining to one of these
    // CA files (PEM). Tunnel listener: every tenant CA.
    std::vector<std::string> client_ca_pem_paths;
    // User listener: a client certificate is asked for but not required, and a bad one does not
    // fail the handshake; session::peer_root_fingerprint() is empty unless it verified. Access
    // rules of each app decide afterwards (passthrough apps never look).
    bool client_cert_optional = false;
    tls_policy policy;
    // Non-null: session tickets sealed with these keys (one per connection, stateless on the
    // server); null: no tickets, no resumption.
    std::shared_ptr<ticket_keys> tickets;
};

struct client_options {
    std::string ca_pem_path; // trust anchor for the server (relay CA); empty = no verify
    std::string server_name; // SNI sent and hostname verified (if verify)
    cert_source client_cert; // mutual TLS (connector identity); empty paths = none
    // Enrollment (control/enroll/PROTOCOL.md step 3), instead of ca_pem_path: the server is
    // accepted only if the chain it presents contains a certificate whose SHA-256 (DER, 64
    // lowercase hex) equals this pin and its leaf verifies (purpose TLS server) against that
    // certificate as the only trust anchor. No hostname check: the pin is the identity.
    std::string pinned_ca_fingerprint;
    tls_policy policy;
};

class server_context {
public:
    // Errors name the file and OpenSSL's reason: "cannot load certificate web.crt: ...".
    static result<std::shared_ptr<server_context>> create(const server_options& opts,
                                                          std::string* why);
    ~server_context();
    server_context(const server_context&) = delete;
    server_context& operator=(const server_context&) = delete;

    std::unique_ptr<session> new_session() const;
    void* native() const noexcept { return _ctx; } // SSL_CTX*, for tls/ internals only

    struct impl;

private:
    server_context() = default;
    void* _ctx = nullptr;
    std::unique_ptr<impl> _impl;
};

class client_context {
public:
    static result<std::shared_ptr<client_context>> create(const client_options& opts,
                                                          std::string* why);
    ~client_context();
    client_context(const client_context&) = delete;
    client_context& operator=(const client_context&) = delete;

    std::unique_ptr<session> new_session() const;
    void* native() const noexcept { return _ctx; }

private:
    client_context() = default;
    void* _ctx = nullptr;
    std::string _server_name;
};

// SHA-256 fingerprint of a DER certificate as 64 lowercase hex chars; from a PEM file.
result<std::string> fingerprint_of_pem_file(const std::string& path, std::string* why);

} // namespace apprelay::tls
