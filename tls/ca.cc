// A small CA on OpenSSL 3: ECDSA P-256 keys, SHA-256 signatures, X.509 v3 extensions set through
// X509V3_EXT_conf_nid so they are encoded exactly as `openssl req/x509` would.
#include "tls/ca.hh"

#include "tls/detail/ossl.hh"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

namespace apprelay::tls {

namespace {

constexpr long k_seconds_per_day = 24L * 60 * 60;

using detail::bio_ptr;
using detail::pkey_ptr;
using detail::set_why;
using detail::x509_ptr;

error fail(std::string* why, const char* what, const std::string& object) {
    set_why(why, detail::describe(what, object));
    return error(errc::tls_error, "certificate authority operation failed");
}

bool bio_to_string(BIO* bio, std::string* out) {
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    if (n < 0 || data == nullptr) {
        return false;
    }
    out->assign(data, static_cast<std::size_t>(n));
    return true;
}

bool add_ext(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str());
    if (ext == nullptr) {
        return false;
    }
    bool ok = X509_add_ext(cert, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

bool set_cn(X509_NAME* name, const std::string& cn) {
    return X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                                      reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                                      0) == 1;
}

// A certificate with version 3, random serial, validity window and public key; unsigned.
x509_ptr new_cert(EVP_PKEY* key, const std::string& cn, long offset_days, long days) {
    x509_ptr cert(X509_new());
    if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1 ||
        !detail::random_serial(cert.get()) ||
        X509_gmtime_adj(X509_getm_notBefore(cert.get()), offset_days * k_seconds_per_day) ==
            nullptr ||
        X509_gmtime_adj(X509_getm_notAfter(cert.get()), (offset_days + days) * k_seconds_per_day) ==
            nullptr ||
        X509_set_pubkey(cert.get(), key) != 1 || !set_cn(X509_get_subject_name(cert.get()), cn)) {
        return nullptr;
    }
    return cert;
}

bool to_pem(X509* cert, EVP_PKEY* key, pem_pair* out) {
    bio_ptr cbio(BIO_new(BIO_s_mem()));
    bio_ptr kbio(BIO_new(BIO_s_mem()));
    return cbio && kbio && PEM_write_bio_X509(cbio.get(), cert) == 1 &&
           PEM_write_bio_PrivateKey(kbio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1 &&
           bio_to_string(cbio.get(), &out->cert_pem) && bio_to_string(kbio.get(), &out->key_pem);
}

} // namespace

result<pem_pair> make_ca(const std::string& common_name, int days, std::string* why) {
    if (common_name.empty() || days <= 0) {
        set_why(why, "make_ca needs a common name and a positive validity");
        return error(errc::invalid_argument, "invalid CA parameters");
    }
    ERR_clear_error();
    pkey_ptr key(EVP_EC_gen("P-256"));
    if (!key) {
        return fail(why, "cannot generate P-256 key for CA", common_name);
    }
    x509_ptr cert = new_cert(key.get(), common_name, 0, days);
    if (!cert || X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get())) != 1) {
        return fail(why, "cannot build CA certificate", common_name);
    }
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
    if (!add_ext(cert.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE") ||
        !add_ext(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign") ||
        !add_ext(cert.get(), &ctx, NID_subject_key_identifier, "hash") ||
        !add_ext(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always")) {
        return fail(why, "cannot add CA extensions", common_name);
    }
    if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0) {
        return fail(why, "cannot self-sign CA", common_name);
    }
    pem_pair out;
    if (!to_pem(cert.get(), key.get(), &out)) {
        return fail(why, "cannot encode CA", common_name);
    }
    return out;
}

result<pem_pair> issue_leaf(const pem_pair& ca, const leaf_options& opts, std::string* why) {
    if (opts.common_name.empty() || opts.days <= 0 || (!opts.server && !opts.client)) {
        set_why(why, "issue_leaf needs a common name, a positive validity and a usage");
        return error(errc::invalid_argument, "invalid leaf parameters");
    }
    ERR_clear_error();
    bio_ptr cbio(BIO_new_mem_buf(ca.cert_pem.data(), static_cast<int>(ca.cert_pem.size())));
    bio_ptr kbio(BIO_new_mem_buf(ca.key_pem.data(), static_cast<int>(ca.key_pem.size())));
    if (!cbio || !kbio) {
        return fail(why, "cannot read CA", "(memory)");
    }
    x509_ptr ca_cert(PEM_read_bio_X509(cbio.get(), nullptr, nullptr, nullptr));
    pkey_ptr ca_key(PEM_read_bio_PrivateKey(kbio.get(), nullptr, nullptr, nullptr));
    if (!ca_cert || !ca_key) {
        return fail(why, "cannot parse CA certificate or key for", opts.common_name);
    }
    pkey_ptr key(EVP_EC_gen("P-256"));
    if (!key) {
        return fail(why, "cannot generate P-256 key for", opts.common_name);
    }
    x509_ptr cert = new_cert(key.get(), opts.common_name, opts.not_before_offset_days, opts.days);
    if (!cert || X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_cert.get())) != 1) {
        return fail(why, "cannot build certificate", opts.common_name);
    }
    for (const auto& ou : opts.organizational_units) {
        if (X509_NAME_add_entry_by_NID(
                X509_get_subject_name(cert.get()), NID_organizationalUnitName, MBSTRING_UTF8,
                reinterpret_cast<const unsigned char*>(ou.c_str()), -1, -1, 0) != 1) {
            return fail(why, "cannot add OU to", opts.common_name);
        }
    }
    std::string eku;
    if (opts.server) {
        eku = "serverAuth";
    }
    if (opts.client) {
        eku += eku.empty() ? "clientAuth" : ",clientAuth";
    }
    std::string san;
    for (const auto& dns : opts.dns_names) {
        san += san.empty() ? "DNS:" : ",DNS:";
        san += dns;
    }
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, ca_cert.get(), cert.get(), nullptr, nullptr, 0);
    if (!add_ext(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE") ||
        !add_ext(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature") ||
        !add_ext(cert.get(), &ctx, NID_ext_key_usage, eku) ||
        !add_ext(cert.get(), &ctx, NID_subject_key_identifier, "hash") ||
        !add_ext(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always") ||
        (!san.empty() && !add_ext(cert.get(), &ctx, NID_subject_alt_name, san))) {
        return fail(why, "cannot add extensions to", opts.common_name);
    }
    if (X509_sign(cert.get(), ca_key.get(), EVP_sha256()) <= 0) {
        return fail(why, "cannot sign", opts.common_name);
    }
    pem_pair out;
    if (!to_pem(cert.get(), key.get(), &out)) {
        return fail(why, "cannot encode", opts.common_name);
    }
    return out;
}

result<void> write_pem_file(const std::string& path, const std::string& pem, bool secret,
                            std::string* why) {
    const mode_t mode = secret ? 0600 : 0644;
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) {
        set_why(why, "cannot open " + path + ": " + std::strerror(errno));
        return error(errc::io_error, "cannot open PEM file");
    }
    // open() honours the umask and leaves an existing file's mode alone: set it explicitly,
    // before any secret byte is written.
    if (::fchmod(fd, mode) != 0) {
        set_why(why, "cannot chmod " + path + ": " + std::strerror(errno));
        ::close(fd);
        return error(errc::io_error, "cannot chmod PEM file");
    }
    std::size_t off = 0;
    while (off < pem.size()) {
        ssize_t n = ::write(fd, pem.data() + off, pem.size() - off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            set_why(why, "cannot write " + path + ": " + std::strerror(errno));
            ::close(fd);
            return error(errc::io_error, "cannot write PEM file");
        }
        off += static_cast<std::size_t>(n);
    }
    if (::close(fd) != 0) {
        set_why(why, "cannot close " + path + ": " + std::strerror(errno));
        return error(errc::io_error, "cannot close PEM file");
    }
    return {};
}

} // namespace apprelay::tls
