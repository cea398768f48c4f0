#include "tls/detail/ossl.hh"

#include <cstdio>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

namespace apprelay::tls::detail {

bool drain_errors(std::string* out, int want_reason_a, int want_reason_b) {
    bool wanted = false;
    const char* file = nullptr;
    int line = 0;
    const char* data = nullptr;
    int flags = 0;
    for (;;) {
        unsigned long e = ERR_get_error_all(&file, &line, nullptr, &data, &flags);
        if (e == 0) {
            break;
        }
        int reason = ERR_GET_REASON(e);
        if (ERR_GET_LIB(e) == ERR_LIB_SSL && reason != 0 &&
            (reason == want_reason_a || reason == want_reason_b)) {
            wanted = true;
        }
        if (out == nullptr) {
            continue;
        }
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        if (!out->empty()) {
            out->append("; ");
        }
        out->append(buf);
        if (data != nullptr && (flags & ERR_TXT_STRING) != 0 && data[0] != '\0') {
            out->append(" (");
            out->append(data);
            out->append(")");
        }
    }
    return wanted;
}

std::string describe(const char* what, const std::string& path) {
    std::string msg = what;
    msg.append(" ");
    msg.append(path);
    msg.append(": ");
    std::string reasons;
    drain_errors(&reasons);
    msg.append(reasons.empty() ? "unknown OpenSSL error" : reasons);
    return msg;
}

std::string sha256_hex(X509* cert) {
    if (cert == nullptr) {
        return {};
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (X509_digest(cert, EVP_sha256(), md, &len) != 1) {
        ERR_clear_error();
        return {};
    }
    static constexpr char k_hex[] = "0123456789abcdef";
    std::string hex(len * 2, '0');
    for (unsigned int i = 0; i < len; ++i) {
        hex[2 * i] = k_hex[md[i] >> 4];
        hex[2 * i + 1] = k_hex[md[i] & 0xf];
    }
    return hex;
}

int ssl_app_index_slot() {
    static const int slot = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return slot;
}

int ssl_unknown_sni_slot() {
    static const int slot = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return slot;
}

bool random_serial(X509* cert) {
    // 16 random bytes with the top bit cleared: 127 bits, well above the CA/B Forum's 64.
    unsigned char bytes[16];
    if (RAND_bytes(bytes, sizeof bytes) != 1) {
        return false;
    }
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    BIGNUM* bn = BN_bin2bn(bytes, sizeof bytes, nullptr);
    if (bn == nullptr) {
        return false;
    }
    bool ok = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != nullptr;
    BN_free(bn);
    return ok;
}

} // namespace apprelay::tls::detail
