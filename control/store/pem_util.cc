#include "control/store/pem_util.hh"

#include <memory>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <vector>

namespace apprelay::control {

namespace {

struct ossl_free {
    void operator()(BIO* p) const { BIO_free(p); }
    void operator()(X509* p) const { X509_free(p); }
    void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
template <class T> using ossl_ptr = std::unique_ptr<T, ossl_free>;

ossl_ptr<BIO> read_bio(std::string_view pem) {
    return ossl_ptr<BIO>(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

ossl_ptr<X509> parse_cert(std::string_view pem) {
    auto bio = read_bio(pem);
    if (!bio) {
        return nullptr;
    }
    return ossl_ptr<X509>(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

std::string to_hex(const unsigned char* p, std::size_t n) {
    static constexpr char k_digits[] = "0123456789abcdef";
    std::string out(n * 2, '0');
    for (std::size_t i = 0; i < n; ++i) {
        out[2 * i] = k_digits[p[i] >> 4];
        out[2 * i + 1] = k_digits[p[i] & 0xf];
    }
    return out;
}

} // namespace

result<std::string> cert_fingerprint(std::string_view cert_pem) {
    auto cert = parse_cert(cert_pem);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    bool ok = cert && X509_digest(cert.get(), EVP_sha256(), md, &n) == 1;
    // Parse failures leave errors queued; drop them so they are not blamed on a later call.
    ERR_clear_error();
    if (!ok) {
        return error(errc::invalid_argument, "certificate does not parse");
    }
    return to_hex(md, n);
}

result<void> check_cert_key_pair(std::string_view cert_pem, std::string_view key_pem) {
    auto cert = parse_cert(cert_pem);
    auto kbio = read_bio(key_pem);
    ossl_ptr<EVP_PKEY> key(kbio ? PEM_read_bio_PrivateKey(kbio.get(), nullptr, nullptr, nullptr)
                                : nullptr);
    int match = (cert && key) ? X509_check_private_key(cert.get(), key.get()) : 0;
    ERR_clear_error();
    if (!cert) {
        return error(errc::invalid_argument, "certificate does not parse");
    }
    if (!key) {
        return error(errc::invalid_argument, "private key does not parse");
    }
    if (match != 1) {
        return error(errc::invalid_argument, "private key does not match the certificate");
    }
    return ok_result();
}

result<std::string> random_hex(std::size_t bytes) {
    std::vector<unsigned char> buf(bytes);
    if (RAND_bytes(buf.data(), static_cast<int>(buf.size())) != 1) {
        ERR_clear_error();
        return error(errc::io_error, "CSPRNG failed");
    }
    return to_hex(buf.data(), buf.size());
}

std::string sha256(std::string_view data) {
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
    return std::string(reinterpret_cast<const char*>(md), sizeof md);
}

bool equal_const_time(std::string_view a, std::string_view b) {
    return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

} // namespace apprelay::control
