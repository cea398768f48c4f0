// Server and client SSL_CTX construction. Every context is TLS 1.3 only with a fixed list of
// ciphersuites and groups, so a connection's cost and security do not depend on what a peer offers.
//
// SNI (server): the default SSL_CTX carries a servername callback and owns (through ex_data, so it
// lives exactly as long as the SSL_CTX and every SSL that still references it) a table of
// lowercase hostname -> the application's certificate, key and chain (held by a bare
// per-application SSL_CTX that only loads and checks them). The callback puts
// that certificate on the SSL itself (SSL_use_cert_and_key: reference counts only) and stores
// app_index + 1 in the SSL's ex_data, which session::sni_index() reads back. It does not switch
// the SSL to the application's SSL_CTX: SSL_set_SSL_CTX cost ~110 us per handshake here (OpenSSL
// 3.0; bench/micro/tls tls_server_handshake/1), a third of a user session's relay cpu. Every other
// setting (verify mode, client CA store...) stays the default context's.
#include "tls/context.hh"

#include "tls/detail/ossl.hh"
#include "tls/session.hh"

#include <arpa/inet.h>
#include <algorithm>
#include <cstring>
#include <ctime>
#include <map>
#include <new>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

namespace apprelay::tls {

namespace {

// Every TLS 1.3 suite OpenSSL 3 knows (RFC 8446 appendix B.4).
constexpr const char* k_tls13_suites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                          "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_CCM_SHA256",
                                          "TLS_AES_128_CCM_8_SHA256"};
// Session id context: required by OpenSSL whenever the server verifies client certificates.
constexpr unsigned char k_sid_ctx[] = "apprelay";
// RFC 6066 section 3: a DNS host name is at most 255 bytes.
constexpr std::size_t k_max_hostname = 255;
// Leaf + intermediates + root; tenant PKIs are shallow.
constexpr int k_verify_depth = 4;

struct sni_cert {
    SSL_CTX* ctx = nullptr;           // owns the three below
    X509* cert = nullptr;             // SSL_CTX_get0_certificate
    EVP_PKEY* key = nullptr;          // SSL_CTX_get0_privatekey
    STACK_OF(X509)* chain = nullptr;  // SSL_CTX_get0_chain_certs (may be null)
    uintptr_t tagged_index = 0;       // app_index + 1
    bool request_client_cert = true;
    STACK_OF(X509_NAME)* ca_names = nullptr; // owned; null = the listener's list
};

struct sni_table {
    bool unknown_sni_fails = false;
    std::map<std::string, sni_cert, std::less<>> by_name; // lowercase hostname -> certificate

    ~sni_table() {
        for (auto& [name, entry] : by_name) {
            SSL_CTX_free(entry.ctx);
            sk_X509_NAME_pop_free(entry.ca_names, X509_NAME_free);
        }
    }
};

void free_sni_table(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
    delete static_cast<sni_table*>(ptr);
}

int ctx_sni_table_slot() {
    static const int slot = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, &free_sni_table);
    return slot;
}

using detail::set_why;

bool to_lower(std::string_view in, char* out, std::size_t cap) {
    if (in.size() > cap) {
        return false;
    }
    for (std::size_t i = 0; i < in.size(); ++i) {
        char c = in[i];
        out[i] = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    }
    return true;
}

uint64_t now_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec);
}

void free_ticket_keys(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
    delete static_cast<std::shared_ptr<ticket_keys>*>(ptr);
}

int ctx_ticket_keys_slot() {
    static const int slot =
        SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, &free_ticket_keys);
    return slot;
}

bool set_ticket_mac(EVP_MAC_CTX* hctx, unsigned char* hmac_key) {
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, hmac_key, 32),
                           OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    return EVP_MAC_CTX_set_params(hctx, params) == 1;
}

// SSL_CTX_set_tlsext_ticket_key_evp_cb: seal with the current key, open with current or previous.
int on_ticket_key(SSL* ssl, unsigned char name[16], unsigned char iv[16], EVP_CIPHER_CTX* cctx,
                  EVP_MAC_CTX* hctx, int enc) {
    auto* keys = static_cast<std::shared_ptr<ticket_keys>*>(
        SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_ticket_keys_slot()));
    if (keys == nullptr || *keys == nullptr) {
        return -1;
    }
    ticket_keys::key k;
    if (enc != 0) {
        if (!(*keys)->current(&k, now_seconds()) || RAND_bytes(iv, 16) != 1) {
            return -1;
        }
        std::memcpy(name, k.name, sizeof k.name);
        if (EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), nullptr, k.aes, iv) != 1 ||
            !set_ticket_mac(hctx, k.hmac)) {
            return -1;
        }
        return 1;
    }
    int which = (*keys)->find(name, &k, now_seconds());
    if (which < 0) {
        return 0; // unknown or expired key: a full handshake, a fresh ticket
    }
    if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), nullptr, k.aes, iv) != 1 ||
        !set_ticket_mac(hctx, k.hmac)) {
        return -1;
    }
    return which == 0 ? 1 : 2; // 2: valid, but sealed with the previous key: renew it
}

// Settings shared by client and server contexts.
bool configure_common(SSL_CTX* ctx, const tls_policy& policy, bool session_tickets) {
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_ciphersuites(ctx, policy.ciphersuites.c_str()) != 1 ||
        SSL_CTX_set1_groups_list(ctx, policy.groups.c_str()) != 1) {
        return false;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    // Memory BIOs never block, so SSL_write always completes; the moving-buffer mode only lifts
    // a pointer-equality check that matters for retried writes.
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    if (!session_tickets) {
        // TLS 1.3 resumption only exists through tickets: with none sent there is no
        // post-handshake NewSessionTicket traffic and nothing to cache.
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx, 0);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    return true;
}

bool load_cert(SSL_CTX* ctx, const cert_source& src, std::string* why) {
    if (SSL_CTX_use_certificate_chain_file(ctx, src.cert_pem_path.c_str()) != 1) {
        set_why(why, detail::describe("cannot load certificate", src.cert_pem_path));
        return false;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, src.key_pem_path.c_str(), SSL_FILETYPE_PEM) != 1) {
        set_why(why, detail::describe("cannot load private key", src.key_pem_path));
        return false;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        set_why(why, detail::describe("private key does not match certificate", src.key_pem_path));
        return false;
    }
    return true;
}

// Optional client certificates: verification runs and its result is kept
// (SSL_get_verify_result), but never aborts the handshake.
int accept_any(int, X509_STORE_CTX*) {
    return 1;
}

// The subjects of the CA certificates in these PEM files, for a CertificateRequest's
// certificate_authorities (so a client holding several identities can pick the right one).
// nullptr on failure, with why set.
STACK_OF(X509_NAME)* read_ca_names(const std::vector<std::string>& paths, std::string* why) {
    STACK_OF(X509_NAME)* names = sk_X509_NAME_new_null();
    if (names == nullptr) {
        set_why(why, "out of memory building a client CA list");
        return nullptr;
    }
    for (const auto& path : paths) {
        if (SSL_add_file_cert_subjects_to_stack(names, path.c_str()) != 1) {
            set_why(why, detail::describe("cannot read client CA names", path));
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            return nullptr;
        }
    }
    return names;
}

bool load_client_cas(SSL_CTX* ctx, const std::vector<std::string>& paths, bool optional,
                     std::string* why) {
    if (paths.empty()) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
        return true;
    }
    for (const auto& path : paths) {
        if (SSL_CTX_load_verify_locations(ctx, path.c_str(), nullptr) != 1) {
            set_why(why, detail::describe("cannot load client CA", path));
            return false;
        }
    }
    STACK_OF(X509_NAME)* names = read_ca_names(paths, why);
    if (names == nullptr) {
        return false;
    }
    SSL_CTX_set_client_CA_list(ctx, names); // takes ownership
    if (optional) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, &accept_any);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    }
    SSL_CTX_set_verify_depth(ctx, k_verify_depth);
    return true;
}

SSL_CTX* new_server_ctx(const server_options& opts, const cert_source* cert, std::string* why) {
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == nullptr) {
        set_why(why, detail::describe("cannot create SSL_CTX", "(server)"));
        return nullptr;
    }
    bool ok = configure_common(ctx, opts.policy, opts.tickets != nullptr) &&
              SSL_CTX_set_session_id_context(ctx, k_sid_ctx, sizeof k_sid_ctx - 1) == 1;
    // Our order of suites and groups, not the client's.
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (ok && opts.tickets != nullptr) {
        // One stateless ticket per connection, sealed with the listener's rotating keys.
        auto* holder = new (std::nothrow) std::shared_ptr<ticket_keys>(opts.tickets);
        ok = holder != nullptr && SSL_CTX_set_ex_data(ctx, ctx_ticket_keys_slot(), holder) == 1;
        if (!ok) {
            delete holder;
        }
        ok = ok && SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, &on_ticket_key) == 1 &&
             SSL_CTX_set_num_tickets(ctx, 1) == 1;
        // Stateless: the ticket carries the session, the server keeps nothing per session.
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL);
    }
    if (!ok) {
        set_why(why, detail::describe("cannot configure TLS 1.3 parameters", "(server)"));
        SSL_CTX_free(ctx);
        return nullptr;
    }
    if ((cert != nullptr && !load_cert(ctx, *cert, why)) ||
        !load_client_cas(ctx, opts.client_ca_pem_paths, opts.client_cert_optional, why)) {
        SSL_CTX_free(ctx);
        return nullptr;
    }
    return ctx;
}

// Runs during ClientHello processing; also called when the client sent no SNI.
int on_servername(SSL* ssl, int* alert, void* arg) {
    auto* table = static_cast<sni_table*>(arg);
    const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    char lower[k_max_hostname];
    if (name != nullptr) {
        std::string_view requested(name);
        if (to_lower(requested, lower, sizeof lower)) {
            auto it = table->by_name.find(std::string_view(lower, requested.size()));
            if (it != table->by_name.end()) {
                const sni_cert& e = it->second;
                if (SSL_use_cert_and_key(ssl, e.cert, e.key, e.chain, 1) != 1 ||
                    SSL_set_ex_data(ssl, detail::ssl_app_index_slot(),
                                    reinterpret_cast<void*>(e.tagged_index)) != 1) {
                    *alert = SSL_AD_INTERNAL_ERROR;
                    return SSL_TLSEXT_ERR_ALERT_FATAL;
                }
                // The CertificateRequest is built after this callback, from the SSL's settings.
                if (!e.request_client_cert) {
                    SSL_set_verify(ssl, SSL_VERIFY_NONE, nullptr);
                } else if (e.ca_names != nullptr) {
                    STACK_OF(X509_NAME)* names = SSL_dup_CA_list(e.ca_names);
                    if (names == nullptr) {
                        *alert = SSL_AD_INTERNAL_ERROR;
                        return SSL_TLSEXT_ERR_ALERT_FATAL;
                    }
                    SSL_set_client_CA_list(ssl, names); // takes ownership
                }
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    if (table->unknown_sni_fails) {
        // Marker for session::handshake(): report errc::unknown_app rather than tls_error.
        SSL_set_ex_data(ssl, detail::ssl_unknown_sni_slot(), ssl);
        *alert = SSL_AD_UNRECOGNIZED_NAME; // RFC 6066 section 3: alert 112
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

void free_pin(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
    delete static_cast<std::string*>(ptr);
}

// The pin lives in the SSL_CTX's ex_data so it outlives the client_context for as long as a
// session still references the SSL_CTX.
int ctx_pin_slot() {
    static const int slot = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, &free_pin);
    return slot;
}

// Replaces OpenSSL's chain building for pinned clients: finds the pinned certificate among the
// presented ones and verifies the leaf with it as the only trust anchor. The result goes into
// the handshake's X509_STORE_CTX so SSL_get_verify_result() reports it as usual.
int verify_pinned(X509_STORE_CTX* hs, void* arg) {
    const auto* pin = static_cast<const std::string*>(arg);
    X509* leaf = X509_STORE_CTX_get0_cert(hs);
    STACK_OF(X509)* presented = X509_STORE_CTX_get0_untrusted(hs);
    X509* anchor = nullptr;
    if (leaf != nullptr && detail::sha256_hex(leaf) == *pin) {
        anchor = leaf;
    }
    for (int i = 0; anchor == nullptr && i < sk_X509_num(presented); ++i) {
        X509* c = sk_X509_value(presented, i);
        if (detail::sha256_hex(c) == *pin) {
            anchor = c;
        }
    }
    if (leaf == nullptr || anchor == nullptr) {
        X509_STORE_CTX_set_error(hs, X509_V_ERR_CERT_UNTRUSTED);
        return 0;
    }
    X509_STORE* store = X509_STORE_new();
    X509_STORE_CTX* check = X509_STORE_CTX_new();
    int ok = 0;
    int err = X509_V_ERR_OUT_OF_MEM;
    if (store != nullptr && check != nullptr && X509_STORE_add_cert(store, anchor) == 1 &&
        X509_STORE_CTX_init(check, store, leaf, presented) == 1 &&
        X509_STORE_CTX_set_purpose(check, X509_PURPOSE_SSL_SERVER) == 1) {
        X509_VERIFY_PARAM_set_depth(X509_STORE_CTX_get0_param(check), k_verify_depth);
        ok = X509_verify_cert(check) == 1 ? 1 : 0;
        err = X509_STORE_CTX_get_error(check);
    }
    X509_STORE_CTX_free(check);
    X509_STORE_free(store);
    X509_STORE_CTX_set_error(hs, ok == 1 ? X509_V_OK : err);
    return ok;
}

bool set_pin(SSL_CTX* ctx, const std::string& fingerprint, std::string* why) {
    auto* pin = new (std::nothrow) std::string(fingerprint);
    if (pin == nullptr || SSL_CTX_set_ex_data(ctx, ctx_pin_slot(), pin) != 1) {
        delete pin;
        set_why(why, detail::describe("cannot attach fingerprint pin", "(client)"));
        return false;
    }
    SSL_CTX_set_cert_verify_callback(ctx, &verify_pinned, pin);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    return true;
}

bool is_ip_literal(const std::string& name) {
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, name.c_str(), buf) == 1 ||
           inet_pton(AF_INET6, name.c_str(), buf) == 1;
}

std::unique_ptr<session> wrap(SSL* ssl) {
    if (ssl == nullptr) {
        ERR_clear_error();
        return nullptr;
    }
    auto* s = new (std::nothrow) session(ssl);
    if (s == nullptr) {
        SSL_free(ssl);
        return nullptr;
    }
    return std::unique_ptr<session>(s);
}

} // namespace

std::shared_ptr<ticket_keys> ticket_keys::create(uint32_t rotation_s) {
    std::shared_ptr<ticket_keys> k(new (std::nothrow) ticket_keys(std::max<uint32_t>(rotation_s, 1)));
    if (k == nullptr) {
        return nullptr;
    }
    std::lock_guard lock(k->_mu);
    if (!k->rotate_locked(now_seconds())) {
        return nullptr;
    }
    k->_has_prev = false;
    k->_rotations = 0;
    return k;
}

bool ticket_keys::rotate_locked(uint64_t now_s) {
    key next;
    if (RAND_bytes(next.name, sizeof next.name) != 1 || RAND_bytes(next.aes, sizeof next.aes) != 1 ||
        RAND_bytes(next.hmac, sizeof next.hmac) != 1) {
        return false;
    }
    _prev = _cur;
    _has_prev = true;
    _cur = next;
    _since_s = now_s;
    ++_rotations;
    OPENSSL_cleanse(&next, sizeof next);
    return true;
}

bool ticket_keys::current(key* out, uint64_t now_s) {
    std::lock_guard lock(_mu);
    if (now_s - _since_s >= _rotation_s && !rotate_locked(now_s)) {
        return false;
    }
    *out = _cur;
    return true;
}

int ticket_keys::find(const unsigned char name[16], key* out, uint64_t now_s) {
    std::lock_guard lock(_mu);
    if (now_s - _since_s >= _rotation_s && !rotate_locked(now_s)) {
        return -1;
    }
    if (std::memcmp(name, _cur.name, sizeof _cur.name) == 0) {
        *out = _cur;
        return 0;
    }
    // The previous key opens tickets until the current one is itself replaced.
    if (_has_prev && std::memcmp(name, _prev.name, sizeof _prev.name) == 0) {
        *out = _prev;
        return 1;
    }
    return -1;
}

uint64_t ticket_keys::rotations() const {
    std::lock_guard lock(_mu);
    return _rotations;
}

bool check_policy(const tls_policy& p, std::string* why) {
    if (p.ciphersuites.empty()) {
        set_why(why, "ciphersuites: empty (at least one TLS 1.3 suite)");
        return false;
    }
    std::string_view rest = p.ciphersuites;
    while (!rest.empty()) {
        auto colon = rest.find(':');
        std::string_view name = rest.substr(0, colon);
        rest = colon == std::string_view::npos ? std::string_view{} : rest.substr(colon + 1);
        bool known = false;
        for (const char* s : k_tls13_suites) {
            known = known || name == s;
        }
        if (!known) {
            set_why(why, "ciphersuites: '" + std::string(name) +
                             "' is not a TLS 1.3 cipher suite (TLS_AES_128_GCM_SHA256, "
                             "TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256, "
                             "TLS_AES_128_CCM_SHA256, TLS_AES_128_CCM_8_SHA256)");
            return false;
        }
    }
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == nullptr) {
        set_why(why, "cannot create SSL_CTX");
        return false;
    }
    ERR_clear_error();
    bool ok = !p.groups.empty() && SSL_CTX_set1_groups_list(ctx, p.groups.c_str()) == 1 &&
              SSL_CTX_set_ciphersuites(ctx, p.ciphersuites.c_str()) == 1;
    ERR_clear_error();
    SSL_CTX_free(ctx);
    if (!ok) {
        set_why(why, "groups: '" + p.groups +
                         "' is not a list of groups OpenSSL knows (e.g. X25519:P-256:P-384)");
    }
    return ok;
}

struct server_context::impl {
    sni_table* table = nullptr; // owned by the default SSL_CTX's ex_data
};

result<std::shared_ptr<server_context>> server_context::create(const server_options& opts,
                                                               std::string* why) {
    const bool has_default =
        !opts.default_cert.cert_pem_path.empty() || !opts.default_cert.key_pem_path.empty();
    if (!has_default && opts.sni.empty()) {
        set_why(why, "server context needs a default certificate or at least one SNI entry");
        return error(errc::invalid_argument, "no certificate configured");
    }
    ERR_clear_error();
    SSL_CTX* def = new_server_ctx(opts, has_default ? &opts.default_cert : nullptr, why);
    if (def == nullptr) {
        return error(errc::tls_error, "cannot create server TLS context");
    }
    std::shared_ptr<server_context> sc(new (std::nothrow) server_context());
    auto* table = new (std::nothrow) sni_table();
    auto* pimpl = new (std::nothrow) impl();
    if (sc == nullptr || table == nullptr || pimpl == nullptr) {
        delete table;
        delete pimpl;
        SSL_CTX_free(def);
        set_why(why, "out of memory creating server context");
        return error(errc::no_memory, "cannot create server TLS context");
    }
    sc->_ctx = def;
    sc->_impl.reset(pimpl);
    if (SSL_CTX_set_ex_data(def, ctx_sni_table_slot(), table) != 1) {
        delete table;
        set_why(why, detail::describe("cannot attach SNI table", "(server)"));
        return error(errc::tls_error, "cannot create server TLS context");
    }
    table->unknown_sni_fails = opts.unknown_sni_fails;
    sc->_impl->table = table;

    for (const auto& entry : opts.sni) {
        char lower[k_max_hostname];
        if (entry.hostname.empty() || !to_lower(entry.hostname, lower, sizeof lower)) {
            set_why(why, "invalid SNI hostname '" + entry.hostname + "'");
            return error(errc::invalid_argument, "invalid SNI hostname");
        }
        std::string key(lower, entry.hostname.size());
        if (table->by_name.count(key) != 0) {
            set_why(why, "duplicate SNI hostname '" + entry.hostname + "'");
            return error(errc::invalid_argument, "duplicate SNI hostname");
        }
        // Only a holder for the certificate, key and chain: no TLS settings, no client CAs.
        SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
        if (ctx == nullptr || !load_cert(ctx, entry.cert, why)) {
            if (ctx == nullptr) {
                set_why(why, detail::describe("cannot create SSL_CTX", "(SNI)"));
            }
            SSL_CTX_free(ctx);
            return error(errc::tls_error, "cannot create SNI TLS context");
        }
        sni_cert e;
        e.ctx = ctx;
        e.cert = SSL_CTX_get0_certificate(ctx);
        e.key = SSL_CTX_get0_privatekey(ctx);
        if (SSL_CTX_get0_chain_certs(ctx, &e.chain) != 1 || e.cert == nullptr ||
            e.key == nullptr) {
            SSL_CTX_free(ctx);
            set_why(why, detail::describe("cannot read back certificate", entry.cert.cert_pem_path));
            return error(errc::tls_error, "cannot create SNI TLS context");
        }
        e.tagged_index = static_cast<uintptr_t>(entry.app_index) + 1;
        e.request_client_cert = entry.request_client_cert;
        if (entry.request_client_cert && !entry.client_ca_names_pem_paths.empty()) {
            e.ca_names = read_ca_names(entry.client_ca_names_pem_paths, why);
            if (e.ca_names == nullptr) {
                SSL_CTX_free(ctx);
                return error(errc::tls_error, "cannot create SNI TLS context");
            }
        }
        table->by_name.emplace(std::move(key), e);
    }
    SSL_CTX_set_tlsext_servername_callback(def, &on_servername);
    SSL_CTX_set_tlsext_servername_arg(def, table);
    return sc;
}

server_context::~server_context() {
    // Sessions hold their own references; the table dies with the last of them.
    SSL_CTX_free(static_cast<SSL_CTX*>(_ctx));
}

std::unique_ptr<session> server_context::new_session() const {
    SSL* ssl = SSL_new(static_cast<SSL_CTX*>(_ctx));
    if (ssl != nullptr) {
        SSL_set_accept_state(ssl);
    }
    return wrap(ssl);
}

result<std::shared_ptr<client_context>> client_context::create(const client_options& opts,
                                                               std::string* why) {
    ERR_clear_error();
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == nullptr) {
        set_why(why, detail::describe("cannot create SSL_CTX", "(client)"));
        return error(errc::tls_error, "cannot create client TLS context");
    }
    if (!configure_common(ctx, opts.policy, false)) {
        set_why(why, detail::describe("cannot configure TLS 1.3 parameters", "(client)"));
        SSL_CTX_free(ctx);
        return error(errc::tls_error, "cannot create client TLS context");
    }
    if (!opts.pinned_ca_fingerprint.empty()) {
        if (!opts.ca_pem_path.empty()) {
            set_why(why, "a client context takes either a CA file or a fingerprint pin, not both");
            SSL_CTX_free(ctx);
            return error(errc::invalid_argument, "CA file and pin both set");
        }
        if (!set_pin(ctx, opts.pinned_ca_fingerprint, why)) {
            SSL_CTX_free(ctx);
            return error(errc::tls_error, "cannot set fingerprint pin");
        }
    } else if (!opts.ca_pem_path.empty()) {
        if (SSL_CTX_load_verify_locations(ctx, opts.ca_pem_path.c_str(), nullptr) != 1) {
            set_why(why, detail::describe("cannot load CA", opts.ca_pem_path));
            SSL_CTX_free(ctx);
            return error(errc::tls_error, "cannot load CA");
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
        SSL_CTX_set_verify_depth(ctx, k_verify_depth);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    }
    const cert_source& cc = opts.client_cert;
    if (!cc.cert_pem_path.empty() || !cc.key_pem_path.empty()) {
        if (!load_cert(ctx, cc, why)) {
            SSL_CTX_free(ctx);
            return error(errc::tls_error, "cannot load client certificate");
        }
    }
    std::shared_ptr<client_context> c(new (std::nothrow) client_context());
    if (c == nullptr) {
        SSL_CTX_free(ctx);
        set_why(why, "out of memory creating client context");
        return error(errc::no_memory, "cannot create client TLS context");
    }
    c->_ctx = ctx;
    c->_server_name = opts.server_name;
    return c;
}

client_context::~client_context() {
    SSL_CTX_free(static_cast<SSL_CTX*>(_ctx));
}

std::unique_ptr<session> client_context::new_session() const {
    auto* ctx = static_cast<SSL_CTX*>(_ctx);
    SSL* ssl = SSL_new(ctx);
    if (ssl == nullptr) {
        return wrap(nullptr);
    }
    SSL_set_connect_state(ssl);
    if (!_server_name.empty()) {
        bool ip = is_ip_literal(_server_name);
        bool ok = true;
        // RFC 6066 section 3: literal IP addresses are not permitted in SNI.
        if (!ip) {
            ok = SSL_set_tlsext_host_name(ssl, _server_name.c_str()) == 1;
        }
        if (ok && SSL_CTX_get_verify_mode(ctx) != SSL_VERIFY_NONE) {
            // SSL_set1_host recognises IP literals and checks iPAddress SANs instead.
            SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = SSL_set1_host(ssl, _server_name.c_str()) == 1;
        }
        if (!ok) {
            SSL_free(ssl);
            return wrap(nullptr);
        }
    }
    return wrap(ssl);
}

result<std::string> fingerprint_of_pem_file(const std::string& path, std::string* why) {
    ERR_clear_error();
    BIO* bio = BIO_new_file(path.c_str(), "r");
    if (bio == nullptr) {
        set_why(why, detail::describe("cannot open certificate", path));
        return error(errc::io_error, "cannot open certificate file");
    }
    X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    if (cert == nullptr) {
        set_why(why, detail::describe("cannot parse certificate", path));
        return error(errc::invalid_argument, "cannot parse certificate");
    }
    std::string hex = detail::sha256_hex(cert);
    X509_free(cert);
    if (hex.empty()) {
        set_why(why, "cannot digest certificate " + path);
        return error(errc::tls_error, "cannot digest certificate");
    }
    return hex;
}

} // namespace apprelay::tls
