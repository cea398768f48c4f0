// session: one SSL on a pair of chunk BIOs (tls/detail/chunk_bio.hh). See session.hh for the
// state summary.
//
// Error queue discipline: OpenSSL's error queue is per thread and shared by every session a worker
// runs, so each call into the SSL clears it first, and every failure drains it into _last_error.
// Nothing is left behind for the next session on the thread to misreport.
#include "tls/session.hh"

#include "tls/detail/chunk_bio.hh"
#include "tls/detail/ossl.hh"

#include <climits>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

namespace apprelay::tls {

namespace {

SSL* as_ssl(void* p) {
    return static_cast<SSL*>(p);
}

// SSL_read_ex/SSL_write_ex take size_t; keep every single call below INT_MAX.
constexpr std::size_t k_max_chunk = 1u << 30;

} // namespace

session::session(void* ssl) noexcept : _ssl(ssl), _in(nullptr), _out(nullptr) {
    if (_ssl == nullptr) {
        return;
    }
    detail::chunk_fifo* in = nullptr;
    detail::chunk_fifo* out = nullptr;
    BIO* rbio =
        detail::new_chunk_bio(detail::k_input_chunk_bytes, detail::on_destroy::allocator, &in);
    BIO* wbio = detail::new_chunk_bio(detail::k_output_chunk_bytes, detail::on_destroy::pool, &out);
    if (rbio == nullptr || wbio == nullptr) {
        BIO_free(rbio);
        BIO_free(wbio);
        ERR_clear_error();
        return; // handshake() reports the failure
    }
    SSL_set_bio(as_ssl(_ssl), rbio, wbio); // the SSL owns both BIOs, and they their FIFOs
    _in = in;
    _out = out;
}

session::~session() {
    SSL_free(as_ssl(_ssl));
}

void session::feed(std::span<const std::byte> ciphertext) noexcept {
    if (_in == nullptr) {
        return;
    }
    // Short only when out of memory; the handshake/read that follows will see truncated input
    // and fail authentication, which is the correct outcome.
    (void)_in->append(ciphertext);
}

std::size_t session::buffered_input() const noexcept {
    return _in == nullptr ? 0 : _in->size();
}

result<void> session::handshake() noexcept {
    if (_out == nullptr) {
        _last_error = "session has no SSL or BIOs (out of memory)";
        return error(errc::tls_error, "session not initialised");
    }
    SSL* ssl = as_ssl(_ssl);
    ERR_clear_error();
    int rc = SSL_do_handshake(ssl);
    if (rc == 1) {
        return {};
    }
    int e = SSL_get_error(ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        return errc::again;
    }
    _last_error.clear();
    bool peer_cert_problem = detail::drain_errors(&_last_error, SSL_R_CERTIFICATE_VERIFY_FAILED,
                                                  SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE);
    long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) {
        _last_error.append("; verify: ");
        _last_error.append(X509_verify_cert_error_string(verify));
    }
    if (SSL_get_ex_data(ssl, detail::ssl_unknown_sni_slot()) != nullptr) {
        const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
        _last_error = std::string("unknown SNI '") + (name != nullptr ? name : "") + "'";
        return error(errc::unknown_app, "unknown or missing SNI");
    }
    if (verify != X509_V_OK || peer_cert_problem) {
        if (_last_error.empty()) {
            _last_error = "peer certificate rejected";
        }
        return error(errc::cert_rejected, "peer certificate rejected");
    }
    if (_last_error.empty()) {
        _last_error = "handshake failed (SSL_get_error " + std::to_string(e) + ")";
    }
    return error(errc::tls_error, "TLS handshake failed");
}

bool session::established() const noexcept {
    return _ssl != nullptr && SSL_is_init_finished(as_ssl(_ssl)) == 1;
}

result<std::size_t> session::read(std::span<std::byte> dst) noexcept {
    if (_out == nullptr) {
        return error(errc::tls_error, "session not initialised");
    }
    SSL* ssl = as_ssl(_ssl);
    std::size_t got = 0;
    ERR_clear_error();
    int rc = SSL_read_ex(ssl, dst.data(), std::min(dst.size(), k_max_chunk), &got);
    if (rc == 1) {
        return got;
    }
    int e = SSL_get_error(ssl, rc);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return errc::again;
    case SSL_ERROR_ZERO_RETURN:
        return errc::closed;
    default:
        break;
    }
    _last_error.clear();
    detail::drain_errors(&_last_error);
    if (_last_error.empty()) {
        _last_error = "read failed (SSL_get_error " + std::to_string(e) + ")";
    }
    return error(errc::tls_error, "TLS read failed");
}

std::size_t session::pending_plaintext() const noexcept {
    return _ssl == nullptr ? 0 : static_cast<std::size_t>(SSL_pending(as_ssl(_ssl)));
}

result<std::size_t> session::write(std::span<const std::byte> src) noexcept {
    if (_out == nullptr) {
        return error(errc::tls_error, "session not initialised");
    }
    SSL* ssl = as_ssl(_ssl);
    std::size_t done = 0;
    while (done < src.size()) {
        std::size_t n = std::min(src.size() - done, k_max_chunk);
        std::size_t written = 0;
        ERR_clear_error();
        int rc = SSL_write_ex(ssl, src.data() + done, n, &written);
        if (rc == 1) {
            done += written;
            continue;
        }
        int e = SSL_get_error(ssl, rc);
        if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) && done == 0) {
            // Only before the handshake completes: the output BIO never pushes back on writes.
            return errc::again;
        }
        _last_error.clear();
        detail::drain_errors(&_last_error);
        if (_last_error.empty()) {
            _last_error = "write failed (SSL_get_error " + std::to_string(e) + ")";
        }
        return error(errc::tls_error, "TLS write failed");
    }
    return done;
}

void session::shutdown() noexcept {
    if (_out == nullptr) {
        return;
    }
    ERR_clear_error();
    // Returns 0 after queuing close_notify (peer's not yet seen); we never wait for the reply.
    SSL_shutdown(as_ssl(_ssl));
    ERR_clear_error();
}

std::span<const std::byte> session::pending_output() const noexcept {
    return _out == nullptr ? std::span<const std::byte>{} : _out->front();
}

std::size_t session::pending_output_size() const noexcept {
    return _out == nullptr ? 0 : _out->size();
}

void session::consume_output(std::size_t n) noexcept {
    if (_out != nullptr) {
        _out->consume(n);
    }
}

void session::use_chunk_pool(chunk_pool* pool) noexcept {
    if (_out != nullptr) {
        _in->set_pool(pool);
        _out->set_pool(pool);
    }
}

std::string_view session::sni() const noexcept {
    if (_ssl == nullptr) {
        return {};
    }
    const char* name = SSL_get_servername(as_ssl(_ssl), TLSEXT_NAMETYPE_host_name);
    return name == nullptr ? std::string_view{} : std::string_view(name);
}

int64_t session::sni_index() const noexcept {
    if (_ssl == nullptr) {
        return -1;
    }
    // The servername callback stored app_index + 1 (0 / absent = no SNI entry matched).
    auto tagged =
        reinterpret_cast<uintptr_t>(SSL_get_ex_data(as_ssl(_ssl), detail::ssl_app_index_slot()));
    return tagged == 0 ? -1 : static_cast<int64_t>(tagged - 1);
}

std::string session::peer_fingerprint() const {
    if (_ssl == nullptr || SSL_get_verify_result(as_ssl(_ssl)) != X509_V_OK) {
        return {};
    }
    return detail::sha256_hex(SSL_get0_peer_certificate(as_ssl(_ssl)));
}

std::string session::peer_root_fingerprint() const {
    if (_ssl == nullptr || SSL_get0_peer_certificate(as_ssl(_ssl)) == nullptr ||
        SSL_get_verify_result(as_ssl(_ssl)) != X509_V_OK) {
        return {};
    }
    STACK_OF(X509)* chain = SSL_get0_verified_chain(as_ssl(_ssl));
    if (chain == nullptr || sk_X509_num(chain) == 0) {
        return {};
    }
    return detail::sha256_hex(sk_X509_value(chain, sk_X509_num(chain) - 1));
}

std::string session::peer_certificate_problem() const {
    if (_ssl == nullptr || SSL_get0_peer_certificate(as_ssl(_ssl)) == nullptr) {
        return "no certificate";
    }
    const long verify = SSL_get_verify_result(as_ssl(_ssl));
    return verify == X509_V_OK ? std::string() : X509_verify_cert_error_string(verify);
}

std::vector<std::string> session::peer_organizational_units() const {
    std::vector<std::string> out;
    if (_ssl == nullptr || SSL_get_verify_result(as_ssl(_ssl)) != X509_V_OK) {
        return out;
    }
    X509* cert = SSL_get0_peer_certificate(as_ssl(_ssl));
    if (cert == nullptr) {
        return out;
    }
    X509_NAME* subject = X509_get_subject_name(cert);
    for (int idx = X509_NAME_get_index_by_NID(subject, NID_organizationalUnitName, -1); idx >= 0;
         idx = X509_NAME_get_index_by_NID(subject, NID_organizationalUnitName, idx)) {
        ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx));
        unsigned char* utf8 = nullptr;
        int len = ASN1_STRING_to_UTF8(&utf8, data);
        if (len >= 0) {
            out.emplace_back(reinterpret_cast<char*>(utf8), std::size_t(len));
            OPENSSL_free(utf8);
        } else {
            ERR_clear_error();
        }
    }
    return out;
}

std::string session::peer_common_name() const {
    if (_ssl == nullptr || SSL_get_verify_result(as_ssl(_ssl)) != X509_V_OK) {
        return {};
    }
    X509* cert = SSL_get0_peer_certificate(as_ssl(_ssl));
    if (cert == nullptr) {
        return {};
    }
    X509_NAME* subject = X509_get_subject_name(cert);
    int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (idx < 0) {
        return {};
    }
    ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx));
    unsigned char* utf8 = nullptr;
    int len = ASN1_STRING_to_UTF8(&utf8, data);
    if (len < 0) {
        ERR_clear_error();
        return {};
    }
    std::string cn(reinterpret_cast<char*>(utf8), static_cast<std::size_t>(len));
    OPENSSL_free(utf8);
    return cn;
}

std::string session::last_error() const {
    return _last_error;
}

} // namespace apprelay::tls
