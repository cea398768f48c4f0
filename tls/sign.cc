// Ed25519 through EVP_DigestSign/EVP_DigestVerify with a NULL digest: OpenSSL 3 signs the whole
// message in one call for Ed25519 (no streaming Update), as RFC 8032's PureEdDSA needs.
#include "tls/sign.hh"

#include "tls/detail/ossl.hh"

#include <memory>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

namespace apprelay::tls {

namespace {

using detail::bio_ptr;
using detail::md_ctx_ptr;
using detail::pkey_ptr;
using detail::set_why;

std::string queued_errors() {
    std::string out;
    detail::drain_errors(&out);
    return out.empty() ? "no PEM key found" : out;
}

// A private key PEM, else a public key PEM; nullptr (and the queue drained) if neither parses.
pkey_ptr read_key(std::string_view pem, bool want_private) {
    bio_ptr bio(BIO_new_mem_buf(pem.data(), int(pem.size())));
    if (!bio) {
        return nullptr;
    }
    pkey_ptr k(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    if (k || want_private) {
        return k;
    }
    ERR_clear_error();
    bio.reset(BIO_new_mem_buf(pem.data(), int(pem.size())));
    return pkey_ptr(bio ? PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr) : nullptr);
}

bool pem_of(EVP_PKEY* k, bool priv, std::string* out) {
    bio_ptr bio(BIO_new(BIO_s_mem()));
    if (!bio) {
        return false;
    }
    int ok = priv ? PEM_write_bio_PrivateKey(bio.get(), k, nullptr, nullptr, 0, nullptr, nullptr)
                  : PEM_write_bio_PUBKEY(bio.get(), k);
    char* data = nullptr;
    long n = BIO_get_mem_data(bio.get(), &data);
    if (ok != 1 || n <= 0 || data == nullptr) {
        return false;
    }
    out->assign(data, std::size_t(n));
    return true;
}

} // namespace

result<ed25519_keys> ed25519_generate(std::string* why) {
    pkey_ptr k(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
    ed25519_keys out;
    if (!k || !pem_of(k.get(), true, &out.private_pem) ||
        !pem_of(k.get(), false, &out.public_pem)) {
        set_why(why, "Ed25519 key generation failed: " + queued_errors());
        return error(errc::tls_error, "key generation failed");
    }
    return out;
}

result<std::string> ed25519_sign(std::string_view private_pem, std::string_view msg,
                                 std::string* why) {
    pkey_ptr k = read_key(private_pem, true);
    if (!k || EVP_PKEY_id(k.get()) != EVP_PKEY_ED25519) {
        set_why(why, k ? "the key is not an Ed25519 private key"
                       : "not a PEM private key: " + queued_errors());
        return error(errc::invalid_argument, "not an Ed25519 private key");
    }
    md_ctx_ptr ctx(EVP_MD_CTX_new());
    std::string sig(k_ed25519_signature_size, '\0');
    std::size_t len = sig.size();
    if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, k.get()) != 1 ||
        EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                       reinterpret_cast<const unsigned char*>(msg.data()), msg.size()) != 1 ||
        len != k_ed25519_signature_size) {
        set_why(why, "Ed25519 signing failed: " + queued_errors());
        return error(errc::tls_error, "signing failed");
    }
    return sig;
}

result<void> ed25519_verify(std::string_view public_pem, std::string_view msg, std::string_view sig,
                            std::string* why) {
    pkey_ptr k = read_key(public_pem, false);
    if (!k || EVP_PKEY_id(k.get()) != EVP_PKEY_ED25519) {
        set_why(why, k ? "the key is not an Ed25519 public key"
                       : "not a PEM public key: " + queued_errors());
        return error(errc::invalid_argument, "not an Ed25519 public key");
    }
    if (sig.size() != k_ed25519_signature_size) {
        set_why(why, "signature is " + std::to_string(sig.size()) + " bytes, Ed25519 needs " +
                         std::to_string(k_ed25519_signature_size));
        return error(errc::cert_rejected, "bad signature size");
    }
    md_ctx_ptr ctx(EVP_MD_CTX_new());
    if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, k.get()) != 1) {
        set_why(why, "Ed25519 verification could not start: " + queued_errors());
        return error(errc::tls_error, "verify init failed");
    }
    int r =
        EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                         reinterpret_cast<const unsigned char*>(msg.data()), msg.size());
    ERR_clear_error();
    if (r != 1) {
        set_why(why, "signature does not verify with this public key");
        return error(errc::cert_rejected, "signature does not verify");
    }
    return {};
}

std::string sha256_hex(std::string_view data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) {
        ERR_clear_error();
        return {};
    }
    static constexpr char k_hex[] = "0123456789abcdef";
    std::string hex(std::size_t(len) * 2, '0');
    for (unsigned int i = 0; i < len; ++i) {
        hex[2 * i] = k_hex[md[i] >> 4];
        hex[2 * i + 1] = k_hex[md[i] & 0xf];
    }
    return hex;
}

} // namespace apprelay::tls
