#pragma once
// Private helpers shared by tls/*.cc: OpenSSL error-queue draining, ex_data slots, hex digests.
// Not part of the public interface; nothing outside tls/ includes this.
#include <memory>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <string>

namespace apprelay::tls::detail {

// Owning pointers for the OpenSSL objects tls/*.cc create.
struct ossl_free {
    void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
    void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
    void operator()(X509* p) const { X509_free(p); }
    void operator()(X509_REQ* p) const { X509_REQ_free(p); }
    void operator()(BIO* p) const { BIO_free(p); }
};
using pkey_ptr = std::unique_ptr<EVP_PKEY, ossl_free>;
using md_ctx_ptr = std::unique_ptr<EVP_MD_CTX, ossl_free>;
using x509_ptr = std::unique_ptr<X509, ossl_free>;
using req_ptr = std::unique_ptr<X509_REQ, ossl_free>;
using bio_ptr = std::unique_ptr<BIO, ossl_free>;

// *why = msg, when the caller asked for a reason.
inline void set_why(std::string* why, std::string msg) {
    if (why != nullptr) {
        *why = std::move(msg);
    }
}

// Appends every queued OpenSSL error ("...: reason") to *out, separated by "; ", and empties the
// thread's queue so the next session on this thread starts clean. Returns true if any error
// in the queue had one of the given SSL reason codes (0 = none wanted).
bool drain_errors(std::string* out, int want_reason_a = 0, int want_reason_b = 0);

// "what path: reason" for creation errors; drains the queue.
std::string describe(const char* what, const std::string& path);

// A random positive serial of 127 bits (RFC 5280 4.1.2.2: positive, at most 20 octets; the top
// byte is never zero, so the encoding is never shorter than it looks). False on RNG failure.
bool random_serial(X509* cert);

// SHA-256 of the DER encoding as 64 lowercase hex chars; empty on failure.
std::string sha256_hex(X509* cert);

// ex_data slots, allocated once per process (thread-safe static initialisation).
// SSL slot: app_index + 1 of the SNI entry the servername callback picked (0 = none).
int ssl_app_index_slot();
// SSL slot: non-null when the servername callback refused the handshake (unknown SNI).
int ssl_unknown_sni_slot();

} // namespace apprelay::tls::detail
